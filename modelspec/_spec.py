"""Stage 2: plain data -> a validated, frozen :class:`Spec`.

The surface grammar (what a user writes) is described by the pydantic model
:class:`SpecFile` (the top level) plus the node grammar of :mod:`modelspec._nodes`;
``modelspec schema`` turns both into ``schemas/modelspec.schema.json``.

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
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from . import _nodes
from . import _registry as registry
from ._errors import Collector, Diagnostic, SpecPath, did_you_mean
from ._init import InitRule, Rule, parse_rules
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
    reserved,
)
from ._source import Document
from ._vars import substitute

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
    "SpecFile",
    "Tie",
    "Use",
    "parse",
]

FORMAT_VERSION = 1
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def __getattr__(name: str) -> frozenset[str]:
    """``RESERVED_MODEL_NAMES`` (nn.ModuleDict's attributes: no model may take one) and
    ``RESERVED_CHILD_NAMES``, read when first used: from the layer table's description, not torch."""
    if name == "RESERVED_MODEL_NAMES":
        return registry.reserved_names("ModuleDict")
    if name == "RESERVED_CHILD_NAMES":
        return _nodes.RESERVED_CHILD_NAMES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Nodes are parsed by NodeParser, not pydantic; the schema module swaps this marker
# for a reference to the node grammar it generates from the registry.
NODE_MARKER = "x-modelspec-node"
_NodeJSON = Annotated[Any, WithJsonSchema({NODE_MARKER: True})]
_Name = Annotated[str, Field(pattern=_NAME)]
_PARAM = r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$"


class TieSpec(BaseModel):
    """One parameter tie: ``param`` is ``to`` (or ``to`` transposed) after building."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, title="Tie")
    param: str = Field(pattern=_PARAM, description="the parameter that becomes the other, e.g. lm_head.weight")
    to: str = Field(pattern=_PARAM, description="the parameter it is, e.g. transformer.wte.weight")
    transposed: bool = Field(
        False, description="true: 'param' reads 'to' with dims 0 and 1 swapped (a tied autoencoder's decoder)"
    )


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


class SpecFile(BaseModel):
    """A modelspec file: one model (``model``) or several sharing blocks (``models``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, title="modelspec")
    modelspec: Literal[1] = Field(description="format version of this file")
    name: str | None = Field(None, description="a name for reports")
    description: str | None = None
    vars: dict[str, Any] = Field(default_factory=dict, description="variables (see _vars)")
    seed: Annotated[int, Field(ge=0, le=2**64 - 1)] = Field(0, description="seeds parameter initialization")
    input: InputSpec | None = Field(None, description="example input; needed for Lazy* layers")
    blocks: dict[_Name, _NodeJSON] = Field(
        default_factory=dict, description="named blocks: built once, the same object at every 'use'"
    )
    model: _NodeJSON | None = Field(None, description="the model (give this or 'models')")
    models: dict[_Name, _NodeJSON] | None = Field(
        None, description="several models, built into an nn.ModuleDict; they may share blocks"
    )
    ties: list[TieSpec] = Field(
        default_factory=list,
        description="parameter ties: each 'param' becomes 'to' (the same nn.Parameter), or reads it transposed",
    )
    init: list[InitRule] = Field(
        default_factory=list,
        description="init rules, applied in order after the default init; for each parameter the last match wins",
    )


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
            data["input"] = self.input.model_dump()
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
        if key in RESERVED and key not in SpecFile.model_fields:
            reserved(errors, key, (key,))
        elif key not in SpecFile.model_fields:
            errors.add(
                "unknown-key",
                f"unknown top-level key '{key}'",
                (key,),
                hint=did_you_mean(key, SpecFile.model_fields) or f"allowed: {', '.join(SpecFile.model_fields)}",
            )
    if "model" in data and "models" in data:
        errors.add("conflicting-keys", "give either 'model' or 'models', not both", ("models",))
    elif "model" not in data and "models" not in data:
        errors.add("missing-key", "the spec defines no model", hint="add 'model:' (or 'models:' for several)")
    known = {k: v for k, v in data.items() if k in SpecFile.model_fields and k != "init"}  # init: parse_rules
    known["modelspec"] = FORMAT_VERSION  # checked above; go on checking the rest
    top: SpecFile | None = None
    try:
        top = SpecFile.model_validate(known)
    except pydantic.ValidationError as e:
        for err in e.errors():
            loc = tuple(err["loc"])
            code = {"missing": "missing-key", "extra_forbidden": "unknown-key"}.get(err["type"], "wrong-type")
            message = f"{err['msg']} (got {kind_of(err.get('input'))})" if code == "wrong-type" else err["msg"]
            errors.add(code, message, loc)

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
    rules = parse_rules(data["init"], errors) if "init" in data else ()
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
        ties=tuple(Tie(t.param, t.to, t.transposed, ("ties", i)) for i, t in enumerate(top.ties)),
        init=rules,
        vars=values,
        file=doc.file,
        positions=doc.positions,
        warnings=tuple(errors.warnings),
    )
    return replace(spec, sha256=canonical_sha256(spec))


def canonical_sha256(spec: Spec) -> str:
    """sha256 of the spec in canonical form: formatting, comments, anchors and the
    positional/keyword style of arguments do not change it; any change to the model does."""
    text = json.dumps(spec.to_data(ordered=True), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
