"""Stage 2: plain data -> a validated, frozen :class:`Spec`.

The surface grammar (what a user writes) is described by the pydantic model
:class:`SpecFile` (the top level, in :mod:`modelspec._grammar`) plus the node grammar of
:mod:`modelspec._nodes`; ``modelspec schema`` turns both into ``schemas/modelspec.schema.json``.
A top level that is plainly valid is taken without pydantic (:func:`_quick_top`); anything
else goes through ``SpecFile``, which then says what is wrong.

Variables (``vars:`` and ``$`` expressions, :mod:`modelspec._vars`) are substituted on
the plain data first, so the grammar sees plain values.

The keywords in :data:`RESERVED` belong to later versions of the format. They are
refused now, at the top level, as node keys and as child or model names, so that a
spec written today keeps its meaning later.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from . import _nodes
from . import _registry as registry
from ._errors import Collector, Diagnostic, SpecPath, did_you_mean
from ._nodes import (
    RESERVED,
    Children,
    Graph,
    InputSpec,
    Layer,
    Node,
    NodeParser,
    Repeat,
    Seq,
    Use,
    kind_of,
    node_to_data,
    quick_input,
    reserved,
)
from ._source import Document
from ._vars import substitute

if TYPE_CHECKING:
    from ._init import Rule

__all__ = [
    "FORMAT_VERSION",
    "RESERVED",
    "Children",
    "Graph",
    "InputSpec",
    "Layer",
    "Node",
    "Repeat",
    "Seq",
    "Spec",
    "Tie",
    "Use",
    "parse",
]

FORMAT_VERSION = 1
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: The top-level keys, in SpecFile's order (a test checks they are its fields).
TOP_KEYS = ("modelspec", "name", "description", "vars", "seed", "input", "blocks", "model", "models", "ties", "init")


def __getattr__(name: str) -> Any:
    """``RESERVED_MODEL_NAMES`` (nn.ModuleDict's attributes: no model may take one) and
    ``RESERVED_CHILD_NAMES``, read when first used: from the layer table's description, not torch;
    ``SpecFile`` and ``TieSpec``, the grammar's pydantic models (imported when first used)."""
    if name == "RESERVED_MODEL_NAMES":
        return registry.reserved_names("ModuleDict")
    if name == "RESERVED_CHILD_NAMES":
        return _nodes.RESERVED_CHILD_NAMES
    if name in ("SpecFile", "TieSpec"):
        from . import _grammar

        return getattr(_grammar, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Tie:
    """A declared parameter tie, as qualified parameter names of the built module."""

    param: str
    to: str
    transposed: bool
    path: SpecPath

    @property
    def kind(self) -> str:
        return "transposed" if self.transposed else "same"

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"param": self.param, "to": self.to}
        if self.transposed:
            data["transposed"] = True
        return data


@dataclass(frozen=True)
class Spec:
    """A validated spec. ``model`` is set for one model, ``models`` for several."""

    name: str | None
    description: str | None
    seed: int
    input: InputSpec | None
    blocks: dict[str, Node]
    model: Node | None
    models: dict[str, Node] | None
    ties: tuple[Tie, ...] = ()
    init: tuple[Rule, ...] = ()
    vars: dict[str, Any] = field(default_factory=dict)  # the values used (after overrides)
    file: str = "<spec>"
    sha256: str = ""  # canonical_sha256(self), set by parse()
    positions: dict[SpecPath, tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)
    warnings: tuple[Diagnostic, ...] = ()

    @property
    def freezes(self) -> bool:
        """Whether any node says ``trainable:`` (checked by a build on ``meta`` in validate)."""

        def flagged(node: Node) -> bool:
            return getattr(node, "trainable", None) is not None or any(flagged(n) for n in node.subnodes())

        return any(flagged(n) for n in [*self.blocks.values(), *self.roots.values()])

    @property
    def roots(self) -> dict[str, Node]:
        """Models by name; a single ``model`` is keyed ``""``."""
        if self.models is not None:
            return dict(self.models)
        assert self.model is not None
        return {"": self.model}

    def to_data(self, ordered: bool = False) -> dict[str, Any]:
        """The spec in canonical surface form (arguments by name); valid input itself.
        ``ordered``: the form the hash is computed from (a graph's nodes as a list)."""
        data: dict[str, Any] = {"modelspec": FORMAT_VERSION}
        if self.name is not None:
            data["name"] = self.name
        if self.description is not None:
            data["description"] = self.description
        if self.vars:  # absent when empty: specs without variables keep their hash
            data["vars"] = dict(self.vars)
        data["seed"] = self.seed
        if self.input is not None:
            data["input"] = self.input.to_data()
        if self.blocks:
            data["blocks"] = {k: node_to_data(v, ordered) for k, v in self.blocks.items()}
        if self.models is not None:
            data["models"] = {k: node_to_data(v, ordered) for k, v in self.models.items()}
        else:
            data["model"] = node_to_data(self.model, ordered)  # type: ignore[arg-type]
        if self.ties:  # absent when empty: specs without ties keep their hash
            data["ties"] = [t.to_data() for t in self.ties]
        if self.init:  # absent when empty, as ties
            data["init"] = [r.to_data() for r in self.init]
        return data


# ---------------------------------------------------------------- parsing
def parse(doc: Document, overrides: dict[str, Any] | None = None) -> Spec:
    """Validate a loaded document; raise :class:`SpecError` listing every problem.

    ``overrides`` replace the values of the spec's ``vars`` (``--set NAME=VALUE``)."""
    errors = Collector(file=doc.file, positions=doc.positions)
    data = doc.data
    if not isinstance(data, dict):
        errors.add("wrong-type", f"a spec is a mapping, not {kind_of(data)}", hint="start with 'modelspec: 1'")
        errors.raise_if_errors()
    data, values = substitute(data, errors, overrides)
    errors.raise_if_errors()  # a value that failed to evaluate would only cause more errors
    if "modelspec" not in data:
        errors.add(
            "missing-key", "missing the format version key 'modelspec'", hint="add 'modelspec: 1' as the first line"
        )
    elif data["modelspec"] != FORMAT_VERSION or type(data["modelspec"]) is not int:  # 1.0 and true are not 1
        errors.add(
            "unknown-version",
            f"unknown format version {data['modelspec']!r}; this modelspec reads version {FORMAT_VERSION}",
            ("modelspec",),
            hint="set 'modelspec: 1', or upgrade modelspec",
        )
    for key in data:
        if key in RESERVED and key not in TOP_KEYS:
            reserved(errors, key, (key,))
        elif key not in TOP_KEYS:
            errors.add(
                "unknown-key",
                f"unknown top-level key '{key}'",
                (key,),
                hint=did_you_mean(key, TOP_KEYS) or f"allowed: {', '.join(TOP_KEYS)}",
            )
    if "model" in data and "models" in data:
        errors.add("conflicting-keys", "give either 'model' or 'models', not both", ("models",))
    elif "model" not in data and "models" not in data:
        errors.add("missing-key", "the spec defines no model", hint="add 'model:' (or 'models:' for several)")
    known = {k: v for k, v in data.items() if k in TOP_KEYS and k != "init"}  # init: parse_rules
    known["modelspec"] = FORMAT_VERSION  # checked above; go on checking the rest
    top = _quick_top(known) or _checked_top(known, errors)

    # Nodes are checked even when the top level has errors, so all problems come at once.
    parser = NodeParser(errors)
    raw_blocks = known.get("blocks") if isinstance(known.get("blocks"), dict) else {}
    blocks = {name: parser.node(raw, ("blocks", name)) for name, raw in raw_blocks.items()}
    model = parser.node(known["model"], ("model",)) if "model" in known and "models" not in known else None
    models = None
    if "models" in known and known["models"] is None:  # `models:` with nothing after it
        errors.add("wrong-type", "'models' is empty", ("models",), hint="name each model under 'models:'")
    if isinstance(known.get("models"), dict):
        if not known["models"]:
            errors.add("wrong-type", "'models' is empty", ("models",))
        models = {name: parser.node(raw, ("models", name)) for name, raw in known["models"].items()}
        for name in known["models"]:
            if name in RESERVED:
                reserved(errors, name, ("models", name), as_name=True)
            elif name in registry.reserved_names("ModuleDict") and re.match(
                _NAME, name
            ):  # other bad names: pydantic said so
                errors.add(
                    "bad-name",
                    f"'{name}' cannot name a model: nn.ModuleDict, which holds the models, has an attribute '{name}'",
                    ("models", name),
                    hint=f"choose another name, e.g. '{name.strip('_')}_model'",
                )
    rules: tuple[Rule, ...] = ()
    if "init" in data:
        from ._init import parse_rules  # pydantic's models: only for specs that have rules

        rules = parse_rules(data["init"], errors)
    errors.raise_if_errors()
    assert top is not None
    spec = Spec(
        name=top.name,
        description=top.description,
        seed=top.seed,
        input=top.input,
        blocks=blocks,
        model=model,
        models=models,
        ties=top.ties,
        init=rules,
        vars=values,
        file=doc.file,
        positions=doc.positions,
        warnings=tuple(errors.warnings),
    )
    return replace(spec, sha256=canonical_sha256(spec))


@dataclass(frozen=True)
class _Top:
    """What the top level holds besides the nodes (which NodeParser checks)."""

    name: str | None
    description: str | None
    seed: int
    input: InputSpec | None
    ties: tuple[Tie, ...]


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # fullmatch: _NAME as pydantic reads it
_MAX_SEED = 2**64 - 1


def _quick_top(known: dict[str, Any]) -> _Top | None:
    """The top level if it is plainly valid, else None (then ``SpecFile`` checks it and says why).
    Accepts nothing that ``SpecFile`` refuses."""
    name, description = known.get("name"), known.get("description")
    seed, raw_input = known.get("seed", 0), known.get("input")
    if not (name is None or type(name) is str) or not (description is None or type(description) is str):
        return None
    ties = _quick_ties(known.get("ties", []))
    if type(seed) is not int or not 0 <= seed <= _MAX_SEED or ties is None:
        return None
    if type(known.get("vars", {})) is not dict or not all(type(k) is str for k in known.get("vars", {})):
        return None
    for key in ("blocks", "models"):
        names = known.get(key, {} if key == "blocks" else None)
        if names is None and key == "models":
            continue
        if type(names) is not dict or not all(type(k) is str and _NAME_RE.fullmatch(k) for k in names):
            return None
    example = None if raw_input is None else quick_input(raw_input)
    if raw_input is not None and example is None:
        return None
    return _Top(name, description, seed, example, ties)


_PARAM_RE = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")  # fullmatch: TieSpec's pattern for param and to
_TIE_KEYS = frozenset({"param", "to", "transposed"})


def _quick_ties(raw: Any) -> tuple[Tie, ...] | None:
    """``ties:`` if every entry is plainly what ``TieSpec`` accepts, else None."""
    if type(raw) is not list:
        return None
    ties = []
    for i, t in enumerate(raw):
        if type(t) is not dict or not t.keys() <= _TIE_KEYS:
            return None
        param, to, transposed = t.get("param"), t.get("to"), t.get("transposed", False)
        if type(param) is not str or type(to) is not str or type(transposed) is not bool:
            return None
        if not (_PARAM_RE.fullmatch(param) and _PARAM_RE.fullmatch(to)):
            return None
        ties.append(Tie(param, to, transposed, ("ties", i)))
    return tuple(ties)


def _checked_top(known: dict[str, Any], errors: Collector) -> _Top | None:
    """The top level checked by the grammar's ``SpecFile``; None after reporting every problem."""
    import pydantic

    from ._grammar import SpecFile

    try:
        top = SpecFile.model_validate(known)
    except pydantic.ValidationError as e:
        for err in e.errors():
            loc = tuple(err["loc"])
            code = {"missing": "missing-key", "extra_forbidden": "unknown-key"}.get(err["type"], "wrong-type")
            message = f"{err['msg']} (got {kind_of(err.get('input'))})" if code == "wrong-type" else err["msg"]
            errors.add(code, message, loc)
        return None
    example = None if top.input is None else InputSpec(**top.input.model_dump())
    ties = tuple(Tie(t.param, t.to, t.transposed, ("ties", i)) for i, t in enumerate(top.ties))
    return _Top(top.name, top.description, top.seed, example, ties)


def canonical_sha256(spec: Spec) -> str:
    """sha256 of the spec in canonical form: formatting, comments, anchors and the
    positional/keyword style of arguments do not change it; any change to the model does."""
    text = json.dumps(spec.to_data(ordered=True), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
