"""The layer table written as JSON, so that validating a spec does not import torch.

Everything validation reads from ``torch.nn`` (each layer's constructor parameters as
:mod:`modelspec._registry` derives them, its ``forward``'s inputs, its docstring's first
paragraph, the attribute names of the containers a build makes) depends only on the
installed torch and on modelspec's own code. :func:`describe` writes it down once;
:func:`current` reads it back instead of importing torch. The entries read back are
equal to the ones read from the classes; a test checks it for every layer.

Where a description comes from, first found wins:

1. ``modelspec/_layers.json``, shipped for the torch modelspec is tested with
   (``python -m modelspec._description`` rewrites it; a test fails when it is stale);
2. the user cache: ``$MODELSPEC_CACHE_DIR``, else ``$XDG_CACHE_HOME/modelspec``, else
   ``~/.cache/modelspec``; one file per key, written atomically after the first run that
   had to import torch.

A description is used only if its key is this process's: the torch version, modelspec's
version and a hash of the code that derives the table. A missing, stale, corrupt or
unreadable file is passed over silently (torch is imported and a fresh one written,
if the folder can be written). ``MODELSPEC_NO_CACHE=1`` disables both. Installed plugins
(entry points in ``modelspec.layers``) and ``register_layer`` add layers only their code
knows: then the table is read from the classes.
"""

from __future__ import annotations

import collections.abc
import functools
import hashlib
import importlib.metadata
import json
import operator
import os
import sys
import tempfile
import types
import typing
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from . import _plugins
from . import _registry as registry
from ._registry import CONTAINERS, LayerType, Param
from ._version import __version__

__all__ = ["SHIPPED", "Description", "cache_dir", "current", "describe", "key"]

FORMAT = 1
SHIPPED = Path(__file__).with_name("_layers.json")
#: The modules whose code decides what the table holds: a change to one is a new key.
_SOURCES = ("_registry.py", "_description.py", "layers.py")


class Unsupported(Exception):
    """A value the description cannot write down exactly (then the table is read from the classes)."""


# ---------------------------------------------------------------- values and annotations
_SCALARS: dict[Any, str] = {bool: "bool", int: "int", float: "float", str: "str", type(None): "None"}
_SCALAR_TYPES = {v: k for k, v in _SCALARS.items()}
_CONTAINER_TYPES: dict[Any, str] = {list: "list", tuple: "tuple", collections.abc.Sequence: "Sequence"}
_CONTAINER_ORIGINS = {v: k for k, v in _CONTAINER_TYPES.items()}


def _encode_type(annotation: Any) -> Any:
    """``int | None`` -> ``{"or": ["int", "None"]}``: the plain-data annotations _registry makes."""
    if annotation is Ellipsis:
        return "..."
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal and all(type(a) in _SCALARS for a in args):
        return {"Literal": list(args)}
    if origin is typing.Union:
        return {"Union": [_encode_type(a) for a in args]}
    if origin is types.UnionType:
        return {"or": [_encode_type(a) for a in args]}
    if origin in _CONTAINER_TYPES and args:
        return {_CONTAINER_TYPES[origin]: [_encode_type(a) for a in args]}
    raise Unsupported(f"annotation {annotation!r}")


def _decode_type(data: Any) -> Any:
    if isinstance(data, str):
        return Ellipsis if data == "..." else _SCALAR_TYPES[data]
    ((kind, items),) = data.items()
    if kind == "Literal":
        return Literal[tuple(items)]
    args = tuple(_decode_type(a) for a in items)
    if kind == "Union":
        return typing.Union[args]  # noqa: UP007 - as _registry builds it: typing.Union, not X | Y
    if kind == "or":
        return functools.reduce(operator.or_, args)
    return _CONTAINER_ORIGINS[kind][args]


def _encode_value(value: Any) -> Any:
    """A default: scalars as themselves, containers tagged (a tuple stays a tuple)."""
    if type(value) in _SCALARS:
        return value
    if type(value) in (list, tuple):
        return {type(value).__name__: [_encode_value(v) for v in value]}
    # a function, a tensor...: only its being no plain data matters; named without an address
    named = value if callable(value) and hasattr(value, "__qualname__") else type(value)
    return {"object": f"{getattr(named, '__module__', '?')}.{named.__qualname__}"}


class _Opaque:
    """A default that is not plain data (a function, an object), by its name."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Opaque) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _decode_value(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    ((kind, value),) = data.items()
    if kind == "object":
        return _Opaque(value)
    items = [_decode_value(v) for v in value]
    return tuple(items) if kind == "tuple" else items


def _encode_layer(entry: LayerType) -> dict[str, Any]:
    params = []
    for p in entry.params:
        item = {"name": p.name, "required": p.required, "default": _encode_value(p.default),
                "annotation": _encode_type(p.annotation), "opaque": p.opaque}  # fmt: skip
        back = _decode_param(item)
        default_back = back.default == p.default or isinstance(back.default, _Opaque)
        if back != replace(p, default=back.default) or not default_back or repr(back.annotation) != repr(p.annotation):
            raise Unsupported(f"{entry.name}({p.name}) does not read back as written")  # pragma: no cover
        params.append(item)
    inputs = None if entry.inputs is None else [list(i) for i in entry.inputs]
    return {"qualname": entry.qualname, "doc": entry.doc, "params": params, "inputs": inputs}


def _decode_param(data: dict[str, Any]) -> Param:
    return Param(data["name"], data["required"], _decode_value(data["default"]), _decode_type(data["annotation"]),
                 data["opaque"])  # fmt: skip


# ---------------------------------------------------------------- the description
class Description:
    """A layer table read from JSON. Every entry is decoded up front: data that does not
    decode is no description (and a KeyError or TypeError here, never during a check)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._entries: dict[str, LayerType] = {name: _decode_layer(name, d) for name, d in data["layers"].items()}
        self.names: list[str] = sorted(self._entries)
        self.reserved: dict[str, frozenset[str]] = {c: frozenset(data["reserved"][c]) for c in CONTAINERS}
        for names in self.reserved.values():
            if not all(isinstance(n, str) for n in names):
                raise TypeError("reserved names must be strings")

    def layer(self, name: str) -> LayerType | None:
        return self._entries.get(name)


def _decode_layer(name: str, data: Mapping[str, Any]) -> LayerType:
    inputs = None if data["inputs"] is None else tuple((str(n), str(k), bool(d)) for n, k, d in data["inputs"])
    for _, kind, _ in inputs or ():
        if kind not in _KINDS:
            raise ValueError(f"not a kind of parameter: {kind!r}")
    params = tuple(_decode_param(p) for p in data["params"])
    if not isinstance(data["qualname"], str) or not isinstance(data["doc"], str):
        raise TypeError("qualname and doc are strings")
    return LayerType(name, data["qualname"], params, inputs, data["doc"])


#: the names of inspect.Parameter's kinds, as LayerType.inputs holds them
_KINDS = frozenset(("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD", "VAR_POSITIONAL", "KEYWORD_ONLY", "VAR_KEYWORD"))


def key() -> dict[str, Any] | None:
    """What a description must have been made for to be used here; None: none can be
    (torch is not installed, or installed plugins add layers)."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    if importlib.metadata.entry_points(group=_plugins.GROUP):
        return None
    code = hashlib.sha256()
    for name in _SOURCES:
        code.update(Path(__file__).with_name(name).read_bytes())
    # the local label (+cpu, +cu128) names a build of the same Python code: one description fits all
    return {"format": FORMAT, "torch": torch_version.split("+")[0], "modelspec": __version__,
            "python": f"{sys.version_info[0]}.{sys.version_info[1]}", "code": code.hexdigest()[:16]}  # fmt: skip


def describe(k: Mapping[str, Any]) -> dict[str, Any]:
    """The description of the table read from the classes (imports torch), under key ``k``.

    Raises:
        Unsupported: an entry the format cannot write exactly.
    """
    return {
        "key": dict(k),
        "layers": {name: _encode_layer(entry) for name, entry in registry.live_entries().items()},
        "reserved": {c: sorted(names) for c, names in registry.live_reserved_names().items()},
    }


def render(description: Mapping[str, Any]) -> str:
    return json.dumps(description, indent=1, sort_keys=True, ensure_ascii=True) + "\n"


def cache_dir() -> Path:
    """``$MODELSPEC_CACHE_DIR``, else ``$XDG_CACHE_HOME/modelspec``, else ``~/.cache/modelspec``."""
    if os.environ.get("MODELSPEC_CACHE_DIR"):
        return Path(os.environ["MODELSPEC_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "modelspec"
    return Path.home() / ".cache" / "modelspec"


def _cache_file(k: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"layers-{k['torch']}-{digest}.json"


def _read(path: Path, k: Mapping[str, Any]) -> Description | None:
    """The description in ``path`` if it is one for key ``k``; None if absent, stale or corrupt."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("key") != k:
            return None
        return Description(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _store(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; a cache that cannot be written is no error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".layers-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass


_UNSET = object()
_current: Any = _UNSET  # this process's description once found (None: read the classes)


def current() -> Description | None:
    """This process's description: shipped, cached, or made now (importing torch) and cached.
    None: the table must be read from the classes (see the module's docstring). Looked for
    once per process (the environment is read then)."""
    global _current
    if _current is _UNSET:
        _current = _find()
    return _current  # type: ignore[no-any-return]


def _find() -> Description | None:
    if os.environ.get("MODELSPEC_NO_CACHE") == "1":
        return None
    k = key()
    if k is None:
        return None
    found = _read(SHIPPED, k) or _read(_cache_file(k), k)
    if found is not None:
        return found
    try:
        data = describe(k)
    except Unsupported:  # pragma: no cover - an annotation of a future torch: read the classes
        return None
    _store(_cache_file(k), render(data))
    return Description(data)


def main(argv: list[str] | None = None) -> int:
    """``python -m modelspec._description [--check]``: rewrite (or check) the shipped description."""
    args = sys.argv[1:] if argv is None else argv
    k = key()
    if k is None:
        print("cannot describe the layer table here: torch is missing or plugins are installed", file=sys.stderr)
        return 2
    text = render(describe(k))
    if "--check" in args:
        stale = not SHIPPED.is_file() or SHIPPED.read_text(encoding="utf-8") != text
        if stale:
            print(f"{SHIPPED} is out of date; run 'python -m modelspec._description'", file=sys.stderr)
        return int(stale)
    SHIPPED.write_text(text, encoding="utf-8")
    print(f"wrote {SHIPPED}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
