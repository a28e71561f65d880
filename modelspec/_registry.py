"""The explicit registry of layer types a spec may name.

A spec names layers by their ``torch.nn`` class name. Names resolve only through this
table: no ``eval``, no ``getattr`` on user strings, no dotted imports, so a spec can
never run code of its author's choosing. The table holds every public ``torch.nn``
module class except containers (lists and mappings in the spec build those) and
internal bases.

Each entry knows the constructor's parameters (without the ``device``/``dtype`` factory
arguments, which the builder controls) and checks arguments against them before
anything is built: names, count, required ones, and types from the annotations, using
pydantic in strict JSON mode (so ``"20"`` is not an int but ``[3, 3]`` is a tuple).

Only arguments that are provably plain data reach a constructor. Each parameter's
annotation is split into its plain-data part (numbers, strings, booleans, null, tuples
and lists of them, literals) and the rest (a module, a tensor, a function, any object).
A value must validate against the plain part; a parameter without one cannot be given
in a spec (``unsupported-argument``). Strings that name a function (a Transformer's
``activation``) are limited to the names the constructor knows, and parameters without
a usable annotation take plain data only where their default's type or the small table
:data:`_UNANNOTATED` says so. Nothing is ever passed through unchecked.

Besides ``torch.nn``, the table holds the layers modelspec ships (:mod:`modelspec.layers`)
and those the user's own code adds (:func:`register_layer`, ``--plugin MODULE``, entry
points of installed packages: see :mod:`modelspec._plugins`). They are introspected and
checked exactly like ``torch.nn`` classes. Their names may not shadow a ``torch.nn``
name or a shipped layer, so a spec that names ``Linear`` always means ``nn.Linear``.

Reading the table does not import torch when a description of it is at hand
(:mod:`modelspec._description`: the entries below written as JSON, shipped for the pinned
torch and cached per torch version): validating a spec then costs no ``import torch``. The
entries are the same either way; only :attr:`LayerType.cls` and building import torch.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from . import _plugins
from ._errors import ModelspecError, UsageError

if TYPE_CHECKING:
    import pydantic
    import torch.nn as nn

    from ._description import Description

__all__ = [
    "UNKNOWN_LAYER_HINT",
    "ArgError",
    "LayerType",
    "bind_arguments",
    "get_layer",
    "layer_names",
    "register_layer",
    "reserved_names",
]

#: Public nn classes that are not layers a spec names directly.
_EXCLUDED = frozenset(
    {
        "Module",
        "Container",
        "Sequential",
        "ModuleList",
        "ModuleDict",  # structure
        "ParameterList",
        "ParameterDict",
        "DataParallel",  # wraps a module, needs devices
        "RNNBase",
        "RNNCellBase",  # abstract bases of RNN/LSTM/GRU
        "NLLLoss2d",  # deprecated alias of NLLLoss
    }
)
#: Factory arguments the builder sets; a spec may not.
_FACTORY = frozenset({"device", "dtype"})
_SCALARS = (bool, int, float, str, type(None))

#: Parameters without a usable annotation (none, or ``Any``) whose default says nothing
#: (None): the plain data they take. Anything else unannotated is not accepted.
_UNANNOTATED: dict[tuple[str, str], Any] = {
    ("MultiheadAttention", "embed_dim"): int,
    ("MultiheadAttention", "num_heads"): int,
    ("MultiheadAttention", "kdim"): int | None,
    ("MultiheadAttention", "vdim"): int | None,
}
#: The deprecated flags every loss still takes (unannotated, default None).
_LEGACY_LOSS_FLAGS = {"size_average": bool | None, "reduce": bool | None}
#: Strings a parameter that takes "a string or a function" accepts: the names the
#: constructor resolves itself. Without an entry such a parameter takes no string.
_FUNCTION_NAMES: dict[tuple[str, str], tuple[str, ...]] = {
    ("Transformer", "activation"): ("relu", "gelu"),
    ("TransformerEncoderLayer", "activation"): ("relu", "gelu"),
    ("TransformerDecoderLayer", "activation"): ("relu", "gelu"),
}
#: What ``Any``-typed parameters really take, for the error message.
_OPAQUE: dict[tuple[str, str], str] = {
    ("Transformer", "custom_encoder"): "a module",
    ("Transformer", "custom_decoder"): "a module",
    ("SyncBatchNorm", "process_group"): "a process group",
}


@dataclass(frozen=True)
class Param:
    """One constructor parameter.

    ``annotation`` is the plain-data type a value must validate against (``NoneType``
    when only null can be written). ``opaque`` says what else the constructor takes that a
    spec cannot write (``"a module"``, ``"a tensor"``, ``"a function"``), or is None.
    """

    name: str
    required: bool
    default: Any
    annotation: Any
    opaque: str | None = None

    @property
    def takes_module(self) -> bool:
        """Whether the constructor takes a module here: a spec writes a node (built first)."""
        return self.opaque == "a module"

    @functools.cached_property
    def writable(self) -> bool:
        """Whether a spec can give this parameter a value other than null."""
        if self.annotation is type(None):
            return False
        return _plain_annotation(self.annotation) or self.adapter is not None  # pydantic takes every plain one

    @functools.cached_property
    def adapter(self) -> pydantic.TypeAdapter[Any] | None:
        import pydantic  # only for values the plain checks leave to it, and for the schema

        try:
            return pydantic.TypeAdapter(self.annotation)
        except (pydantic.PydanticSchemaGenerationError, TypeError, NameError):  # pragma: no cover
            return None  # then nothing but null is accepted

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {}
        if self.takes_module:
            any_of: list[dict[str, Any]] = [{"$ref": "#/$defs/Node"}]
            if not self.required:
                any_of.append({"type": "null"})
            return {"anyOf": any_of, "description": "a module: a layer written inline (a template the constructor "
                    "may copy), or {use: block} where the constructor keeps the object"}  # fmt: skip
        if not self.writable:
            schema = {"type": "null"} if not self.required else {"not": {}}
            schema["description"] = f"takes {self.opaque or 'a Python object'}: cannot be written in a spec yet"
            return schema
        assert self.adapter is not None
        import pydantic

        try:
            schema = self.adapter.json_schema()
        except (pydantic.errors.PydanticInvalidForJsonSchema, TypeError):  # pragma: no cover
            schema = {}
        if not self.required and _jsonable(self.default):
            schema["default"] = self.default
        return schema


#: One input of a layer's ``forward`` (after ``self``): name, ``inspect.Parameter`` kind
#: name (``"POSITIONAL_OR_KEYWORD"``), whether it has a default.
Input = tuple[str, str, bool]


@dataclass(frozen=True)
class LayerType:
    """A layer class a spec can name, with the parameters its constructor takes.

    ``inputs`` are its ``forward``'s parameters (None: not inspectable), ``doc`` the first
    paragraph of its docstring. Everything but :attr:`cls` is plain data, so an entry can
    come from the class or from the table's description without importing torch.
    """

    name: str
    qualname: str  # where the class lives: torch.nn.Linear, modelspec.layers.CausalSelfAttention
    params: tuple[Param, ...]
    inputs: tuple[Input, ...] | None
    doc: str

    @property
    def cls(self) -> type[nn.Module]:
        """The class itself (imports torch)."""
        return _table()[self.name]

    @functools.cached_property
    def param_names(self) -> list[str]:  # read for every layer a spec writes: made once per entry
        return [p.name for p in self.params]

    @functools.cached_property
    def module_params(self) -> tuple[tuple[int, Param], ...]:
        """The parameters that take a module, with their positions."""
        return tuple((i, p) for i, p in enumerate(self.params) if p.takes_module)

    def forward_signature(self) -> inspect.Signature | None:
        """The inputs its ``forward`` takes, without ``self`` (None if Python cannot tell)."""
        if self.inputs is None:
            return None
        return inspect.Signature(
            [
                inspect.Parameter(name, getattr(inspect.Parameter, kind), **({"default": None} if has_default else {}))
                for name, kind, has_default in self.inputs
            ]
        )

    def json_schema(self) -> dict[str, Any]:
        """Schema of the value under the layer's key: null, a list or a mapping."""
        if not self.params:
            return {"type": "null", "description": f"{self.qualname}: {self.doc}"}
        description = f"{self.qualname}({', '.join(self.param_names)}): {self.doc}"
        return arguments_schema(self.params, description, ["number", "string", "boolean"])


def arguments_schema(params: tuple[Param, ...], description: str, alone: list[str]) -> dict[str, Any]:
    """The forms a layer's or an op's arguments take: null (when none is required), the
    first argument alone (of the JSON types ``alone``), positional values with keywords in
    a mapping last, or a mapping of keywords."""
    props = {p.name: p.json_schema() for p in params}
    kwargs = {"type": "object", "properties": props, "additionalProperties": False}
    required = [p.name for p in params if p.required]
    return {
        "description": description,
        "anyOf": [
            {"type": "null"} if not required else {"not": {}},
            {"type": alone, "description": "the first argument alone"},
            {
                "type": "array",
                "description": "positional arguments; a mapping last gives keywords",
                "items": {"anyOf": [{"type": ["number", "string", "boolean", "array", "null"]}, kwargs]},
            },
            {**kwargs, "required": required} if required else kwargs,
        ],
    }


class ArgError(Exception):
    """One problem with a layer's arguments; ``where`` is a path suffix inside the layer."""

    def __init__(self, code: str, message: str, where: tuple[str | int, ...] = (), hint: str | None = None):
        super().__init__(message)
        self.code, self.message, self.where, self.hint = code, message, where, hint


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _constructor(cls: type[nn.Module]) -> Any:
    """The callable whose signature describes ``cls(...)``; resolves *args overloads."""
    init = cls.__init__
    sig = inspect.signature(init)
    variadic = {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}
    if any(p.kind in variadic for p in sig.parameters.values()):
        for overload in typing.get_overloads(init):  # RNN, LSTM, GRU declare theirs
            if not any(p.kind in variadic for p in inspect.signature(overload).parameters.values()):
                return overload
        return None  # (*args, **kwargs) that ignores them: Tanh, Sigmoid, Identity, ...
    return init


def _make(name: str, cls: type[nn.Module]) -> LayerType:
    import torch.nn as nn

    qualname = f"torch.nn.{name}" if getattr(nn, name, None) is cls else f"{cls.__module__}.{cls.__qualname__}"
    doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    init = _constructor(cls)
    if init is None:
        return LayerType(name, qualname, (), _inputs(cls), doc)
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # noqa: BLE001 - torch's own annotations may not resolve
        hints = {}
    params = []
    for p in list(inspect.signature(init).parameters.values())[1:]:  # skip self
        if p.name in _FACTORY or p.name.startswith("_"):
            continue
        required = p.default is inspect.Parameter.empty
        default = None if required else p.default
        annotation, opaque = _plain_type(name, p.name, hints.get(p.name, Any), required, default)
        params.append(Param(p.name, required, default, annotation, opaque))
    return LayerType(name, qualname, tuple(params), _inputs(cls), doc)


def _inputs(cls: type[nn.Module]) -> tuple[Input, ...] | None:
    try:
        signature = inspect.signature(cls.forward)
    except (TypeError, ValueError):  # pragma: no cover - a forward Python cannot inspect
        return None
    return tuple((p.name, p.kind.name, p.default is not p.empty) for p in list(signature.parameters.values())[1:])


def _plain_type(layer: str, param: str, annotation: Any, required: bool, default: Any) -> tuple[Any, str | None]:
    """The plain-data type a spec may give for a parameter, and what else it takes."""
    if _mentions_any(annotation):  # no usable annotation: the table, then the default's type
        known = _UNANNOTATED.get((layer, param))
        if known is None and not required and default is None:
            known = _LEGACY_LOSS_FLAGS.get(param) if layer.endswith("Loss") else None
        if known is None and not required and type(default) in (bool, int, float, str):
            known = int | float if type(default) is int else type(default)
        if known is not None:
            return known, None
        return type(None), _OPAQUE.get((layer, param), "a Python object")
    plain, other = _split(annotation)
    opaque = other[0] if other else None
    if "a function" in other and str in plain:  # a string here names a function
        plain.remove(str)
        names = _FUNCTION_NAMES.get((layer, param))
        if names:
            plain.append(Literal[names])
    if not [t for t in plain if t is not type(None)]:
        return type(None), opaque or "a Python object"
    return (plain[0] if len(plain) == 1 else typing.Union[tuple(plain)]), opaque  # noqa: UP007


def _mentions_any(annotation: Any) -> bool:
    return annotation is Any or any(a is Any for a in typing.get_args(annotation))


def _split(annotation: Any) -> tuple[list[Any], list[str]]:
    """Split an annotation into plain-data members and descriptions of the others."""
    import torch

    if annotation is torch.Size:
        return [tuple[int, ...]], []
    if annotation in _SCALARS:
        return [annotation], []
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        plain: list[Any] = []
        other: list[str] = []
        for arg in args:
            p, o = _split(arg)
            plain += [t for t in p if t not in plain]
            other += [t for t in o if t not in other]
        return plain, other
    if origin is Literal:
        return ([annotation], []) if all(type(a) in _SCALARS for a in args) else ([], ["a Python object"])
    if origin in (list, tuple, collections.abc.Sequence) and args:
        items: list[Any] = []
        for arg in args:
            if arg is Ellipsis:
                items.append(arg)
                continue
            p, o = _split(arg)
            if o or not p:  # e.g. list[Tensor]
                return [], [_what(arg)]
            items.append(p[0] if len(p) == 1 else typing.Union[tuple(p)])  # noqa: UP007
        return [origin[tuple(items)]], []
    return [], [_what(annotation)]


def _what(annotation: Any) -> str:
    """A reader's word for a non-plain annotation."""
    import torch
    import torch.nn as nn

    origin = typing.get_origin(annotation) or annotation
    if inspect.isclass(origin) and issubclass(origin, nn.Module):
        return "a module"
    if inspect.isclass(origin) and issubclass(origin, torch.Tensor):
        return "a tensor"
    if origin is collections.abc.Callable:
        return "a function"
    return "a Python object"


@functools.cache
def _builtin() -> Mapping[str, type[nn.Module]]:
    """The layers every spec may name: torch.nn's, then the ones modelspec ships."""
    import torch.nn as nn

    from . import layers  # imports torch.nn.functional only: kept out of modelspec's import

    table = {}
    for name in dir(nn):
        obj = getattr(nn, name)
        if not name.startswith("_") and inspect.isclass(obj) and issubclass(obj, nn.Module) and name not in _EXCLUDED:
            table[name] = obj
    for name in layers.__all__:
        table[name] = getattr(layers, name)
    return table


#: Layers added by :func:`register_layer` and by entry points, by name.
_registered: dict[str, type[nn.Module]] = {}
_entry_points_loaded = False
_LAYER_NAME = re.compile(r"[A-Z][A-Za-z0-9_]*\Z")

#: The hint for a layer name that is not registered and close to none that is.
UNKNOWN_LAYER_HINT = (
    "no such layer in torch.nn or modelspec.layers; if a plugin provides it, name its module with "
    "'--plugin MODULE' (in Python: import it), or install the package that declares it"
)


def _load_entry_points() -> None:
    """Register every entry point of ``modelspec.layers``, once: all of them, whatever the spec names."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # first: a plugin that consults the registry while imported must not recurse
    try:
        _plugins.load_entry_points(lambda obj, name: register_layer(obj, name=name))
    except ModelspecError:
        _entry_points_loaded = False  # fail the same way next time, never with half the plugins
        raise


@functools.cache
def _table() -> Mapping[str, type[nn.Module]]:
    _load_entry_points()
    return {**_builtin(), **_registered}


M = TypeVar("M", bound="type[nn.Module]")


@overload
def register_layer(cls: M, *, name: str | None = None) -> M: ...
@overload
def register_layer(cls: None = None, *, name: str | None = None) -> Callable[[M], M]: ...
def register_layer(cls: M | None = None, *, name: str | None = None) -> M | Callable[[M], M]:
    """Let specs name ``cls``, an ``nn.Module`` subclass, as a layer type ``name``.

    The constructor is introspected as for ``torch.nn`` classes: a spec's arguments are
    checked against its parameters and their annotations (annotate them with plain types:
    ``int``, ``float``, ``bool``, ``str``, tuples, lists, literals), misspelt names get a
    did-you-mean, and ``modelspec schema`` describes the layer. Usable as a decorator::

        @modelspec.register_layer
        class Scale(nn.Module):
            def __init__(self, dim: int, init: float = 1.0) -> None: ...

    Args:
        cls: the layer class. name: the name specs use (default ``cls.__name__``), an
            upper-case identifier. Registering the same class under the same name again
            does nothing.

    Returns:
        ``cls`` (without ``cls``: a decorator that registers its class under ``name``).

    Raises:
        UsageError: ``not-a-layer`` (not an nn.Module subclass), ``bad-layer-name``,
            ``shadowed-layer`` (the name is torch.nn's or a shipped layer's),
            ``layer-name-taken`` (another class is registered under the name).
    """
    if cls is None:
        return lambda c: register_layer(c, name=name)
    import torch.nn as nn

    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise UsageError(f"register_layer takes an nn.Module subclass, got {cls!r}", code="not-a-layer")
    name = cls.__name__ if name is None else name
    if not isinstance(name, str) or not _LAYER_NAME.match(name):
        raise UsageError(
            f"layer name {name!r} is not an upper-case identifier (spec keys in lower case name children)",
            code="bad-layer-name",
        )
    if hasattr(nn, name) or name in _builtin():
        where = "torch.nn" if hasattr(nn, name) else "modelspec.layers"
        raise UsageError(
            f"layer name '{name}' would shadow {where}.{name}: a spec naming it must keep meaning that class",
            code="shadowed-layer",
        )
    taken = _registered.get(name)
    if taken is cls:
        return cls
    if taken is not None:
        raise UsageError(
            f"layer name '{name}' is taken by {taken.__module__}.{taken.__qualname__}; "
            f"register {cls.__module__}.{cls.__qualname__} under another name (name=...)",
            code="layer-name-taken",
        )
    _registered[name] = cls
    _table.cache_clear()  # layer_names, get_layer and the schema read the table afresh
    return cls


def _described() -> Description | None:
    """The table's description, when it describes this table: not once ``register_layer``
    (or ``--plugin``) added layers, nor with ``MODELSPEC_NO_CACHE=1``. None: read the classes."""
    if _registered:
        return None
    global _description_module
    if _description_module is None:
        from . import _description  # imports this module: imported when first needed

        _description_module = _description
    return _description_module.current()


_description_module: types.ModuleType | None = None


def layer_names() -> list[str]:
    """Every layer type name a spec may use, sorted."""
    described = _described()
    return described.names if described is not None else sorted(_table())


def get_layer(name: str) -> LayerType | None:
    """The registry entry for ``name``, or None if it is not a known layer type."""
    described = _described()
    if described is not None:
        return described.layer(name)
    cls = _table().get(name)
    return None if cls is None else _entry(name, cls)


#: What :func:`reserved_names` can be asked about: the containers a build makes.
CONTAINERS = ("Sequential", "ModuleDict", "GraphModule")


def reserved_names(container: str) -> frozenset[str]:
    """The attribute names of an empty ``nn.Sequential``, ``nn.ModuleDict`` or
    ``fx.GraphModule`` (one of :data:`CONTAINERS`): no child, model or graph node may take one."""
    described = _described()
    return described.reserved[container] if described is not None else live_reserved_names()[container]


@functools.cache
def live_reserved_names() -> dict[str, frozenset[str]]:
    """:func:`reserved_names` read from torch's classes."""
    import torch.fx as fx
    import torch.nn as nn

    def names(obj: object) -> frozenset[str]:
        # torch.compile marks nn.Module classes at run time (``___needs_generation_tag_patch``):
        # such names are no part of the classes and would make the table depend on what ran before
        return frozenset(n for n in dir(obj) if not n.startswith("___"))

    return {
        "Sequential": names(nn.Sequential()),
        "ModuleDict": names(nn.ModuleDict()),
        "GraphModule": names(fx.GraphModule(nn.Module(), fx.Graph())),
    }


def live_entries() -> dict[str, LayerType]:
    """Every entry, read from the classes (imports torch): what the description holds."""
    return {name: _entry(name, cls) for name, cls in sorted(_table().items())}


@functools.cache
def _entry(name: str, cls: type[nn.Module]) -> LayerType:
    return _make(name, cls)


# ---------------------------------------------------------------- checking values quickly
# Every argument a spec writes is checked against its parameter's plain-data annotation. pydantic
# (strict, JSON mode) is the reference; for the common cases (numbers, strings, booleans, null,
# literals, tuples and lists of them, unions of those) :func:`_quick` gives the same answer
# without it, and says when it cannot be sure. A value it does not accept goes to pydantic,
# which makes the error message, so messages come from one place.
_REJECT = object()  # pydantic surely refuses the value
_UNSURE = object()  # ask pydantic
#: Integers a float parameter converts exactly (pydantic's JSON reading, float(i), agree on these).
_EXACT_INT = 2**53
_JSON_TYPES = (bool, int, float, str, type(None), list, tuple, dict)


def _plain_annotation(annotation: Any) -> bool:
    """Whether :func:`_quick` understands ``annotation`` (pydantic then surely makes a validator for it)."""
    try:
        return _plain(annotation)
    except TypeError:  # unhashable
        return False


@functools.cache
def _plain(annotation: Any) -> bool:
    if annotation in _SCALARS:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return all(type(a) in (str, int, bool, type(None)) for a in args)
    if origin in (typing.Union, types.UnionType):
        return all(_plain(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _plain(args[0])
    if origin in (tuple, list) and args and Ellipsis not in args:
        return (origin is tuple or len(args) == 1) and all(_plain(a) for a in args)
    return False


def _quick(annotation: Any, value: Any) -> Any:
    """The value pydantic returns for ``value`` validated against ``annotation`` (strict, from
    JSON), or ``_REJECT`` where it surely fails, or ``_UNSURE``. Never a different answer."""
    t = type(value)
    if t not in _JSON_TYPES:
        return _UNSURE
    if annotation is int:
        if t is int:
            return value if -_EXACT_INT < value < _EXACT_INT else _UNSURE
        return _REJECT
    if annotation is float:
        if t is float:
            return value if value - value == 0 else _UNSURE  # nan and inf: ask
        if t is int:
            return float(value) if -_EXACT_INT < value < _EXACT_INT else _UNSURE
        return _REJECT
    if annotation is bool or annotation is type(None):
        return value if t is annotation else _REJECT
    if annotation is str:
        if t is str:
            return value if value.isascii() else _UNSURE  # a lone surrogate does not survive JSON
        return _REJECT
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        for a in args:
            if type(a) is t and a == value:
                return a
        return _UNSURE if any(a == value for a in args) else _REJECT  # 1 == 1.0 == True: ask
    if origin is typing.Union or origin is types.UnionType:
        found: list[Any] = []
        for a in args:
            got = _quick(a, value)
            if got is _UNSURE:
                return _UNSURE
            if got is not _REJECT:
                found.append(got)
        if not found:
            return _REJECT
        first = found[0]
        return first if all(type(f) is type(first) and f == first for f in found) else _UNSURE
    if origin is tuple or origin is list:
        if t is not list and t is not tuple:
            return _REJECT if t in (bool, int, float, str, type(None), dict) else _UNSURE
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            kinds = (args[0],) * len(value)
        elif len(args) == len(value):
            kinds = args
        else:
            return _REJECT
        items = []
        for a, v in zip(kinds, value, strict=True):
            got = _quick(a, v)
            if got is _UNSURE or got is _REJECT:
                return got
            items.append(got)
        return tuple(items) if origin is tuple else items
    return _UNSURE


def _validate(p: Param, value: Any) -> tuple[Any, str | None]:
    """``value`` checked against ``p``'s annotation (strict, as JSON): (the value, None), or
    (None, pydantic's first message). Raises TypeError or ValueError for what is not JSON."""
    got = _quick(p.annotation, value) if _plain_annotation(p.annotation) else _UNSURE
    if got is not _UNSURE and got is not _REJECT:
        return got, None
    import pydantic

    assert p.adapter is not None  # an unwritable parameter was dropped, or its value is null
    try:
        return p.adapter.validate_json(json.dumps(value), strict=True), None
    except pydantic.ValidationError as e:
        return None, e.errors()[0]["msg"]


def bind_arguments(
    layer: Any, args: list[Any], kwargs: dict[str, Any], *, modules: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], list[ArgError]]:
    """Check ``args``/``kwargs`` against ``layer``'s parameters (a :class:`LayerType`, or
    anything with ``name``, ``params`` and ``param_names``, such as an op).

    Returns the arguments bound by name (validated values, e.g. lists made tuples where
    the constructor wants tuples) and every problem found. Parameters named in
    ``modules`` were given as nodes (parsed by the caller): they count as given and are
    not returned.
    """
    if not args and not kwargs and not modules and not any(p.required for p in layer.params):
        return {}, []  # 'ReLU': nothing given, nothing needed
    errors: list[ArgError] = []
    meant: set[str] = set()  # parameters an unknown keyword is a slip for: not also "missing"
    bound: dict[str, Any] = {}
    names = layer.param_names
    if len(args) > len(names):
        errors.append(
            ArgError(
                "bad-argument",
                f"{layer.name} takes {len(names)} argument{'s' if len(names) != 1 else ''} but {len(args)} were given",
                (len(names),),
                hint=f"{layer.name}({', '.join(names)})" if names else f"write '{layer.name}' alone",
            )
        )
    for i, (value, name) in enumerate(zip(args, names, strict=False)):
        bound[name] = (value, (i,))
    for key, value in kwargs.items():
        if key in _FACTORY and key not in names:  # an op may take one (`to: {dtype: ...}`)
            errors.append(
                ArgError(
                    "bad-argument",
                    f"'{key}' is set by the build, not the spec",
                    (key,),
                    hint=f"pass {key}= to modelspec.build or --{key} to the CLI",
                )
            )
        elif key not in names:
            from ._errors import closest

            match = closest(key, names)
            if match is not None:
                meant.add(match)
            errors.append(
                ArgError(
                    "bad-argument",
                    f"{layer.name} has no argument '{key}'",
                    (key,),
                    hint=f"did you mean '{match}'?" if match else f"it takes: {', '.join(names) or 'none'}",
                )
            )
        elif key in bound:
            errors.append(ArgError("bad-argument", f"argument '{key}' given twice (by position and by name)", (key,)))
        else:
            bound[key] = (value, (key,))
    for p in layer.params:
        if p.required and p.name not in bound and p.name not in meant and p.name not in modules:
            errors.append(
                ArgError(
                    "missing-argument",
                    f"{layer.name} needs argument '{p.name}'",
                    (),
                    hint=f"{layer.name}({', '.join(names)})",
                )
            )
    out: dict[str, Any] = {}
    by_name = {p.name: p for p in layer.params}
    for name in modules:
        bound.pop(name, None)
    for p in layer.params:
        if p.name in modules:
            continue
        given = p.name in bound and bound[p.name][0] is not None
        if not p.writable and (p.required or given):
            errors.append(ArgError(
                "unsupported-argument", f"{layer.name} takes {p.opaque or 'a Python object'} as '{p.name}'",
                bound[p.name][1] if p.name in bound else (),
                hint=f"{_plural(p.opaque)} cannot be written in a spec yet"
                + ("" if p.required else f"; leave '{p.name}' out"),
            ))  # fmt: skip
            bound.pop(p.name, None)
    for name, (value, where) in bound.items():
        try:
            checked, problem = _validate(by_name[name], value)
        except (TypeError, ValueError):
            errors.append(ArgError("wrong-type", f"argument '{name}' = {value!r} is not plain data", where))
            continue
        if problem is None:
            out[name] = checked
        else:
            errors.append(
                ArgError(
                    "wrong-type", f"argument '{name}' = {value!r}: {problem}", where, hint=_type_hint(by_name[name])
                )
            )
    return out, errors


def _type_hint(p: Param) -> str | None:
    ann = p.annotation
    if typing.get_origin(ann) is Literal:
        text = "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
    else:
        text = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
    if p.opaque is not None:
        text += f" ({_plural(p.opaque)} cannot be written in a spec)"
    return f"'{p.name}' takes {text}"


def _plural(what: str | None) -> str:
    """'a module' -> 'modules'."""
    return (what or "a Python object").removeprefix("a ").removeprefix("an ") + "s"
