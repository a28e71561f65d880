"""Stage 2: plain data -> a validated, frozen :class:`Spec`.

The surface grammar (what a user writes) is described by the pydantic model
:class:`SpecFile` plus the node grammar below; ``modelspec schema`` turns both into
``schemas/modelspec.schema.json``. A *node* is one of:

=====================================  ==============================================
``ReLU``                               a layer without arguments (bare class name)
``{Linear: [20, 64]}``                 a layer with positional arguments
``{LazyLinear: {out_features: 8}}``    a layer with keyword arguments
``{Conv2d: [3, 16, {padding: 1}]}``    positional arguments, then keywords
``{LazyLinear: 8}``                    a single positional argument
``[node, node, ...]``                  ``nn.Sequential`` (children ``0``, ``1``, ...)
``{net: node, linear: node}``          named children, run in order (lowercase names)
``{use: shared}``                      the named block ``shared``: the same object
=====================================  ==============================================

Mapping keys that start with an upper-case letter are layer types; lower-case keys are
child names. That keeps the two apart and lets a typo ``Lienar`` be reported as an
unknown layer with a suggestion instead of being taken for a child.

The keywords in :data:`RESERVED` belong to later versions of the format (repeats, ties,
data-flow graphs, variables, ...). They are refused now, at the top level, as node keys
and as child or model names, so that a spec written today keeps its meaning later.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import pydantic
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from . import _registry as registry
from ._errors import Collector, Diagnostic, SpecPath, did_you_mean
from ._source import Document

__all__ = [
    "FORMAT_VERSION",
    "RESERVED",
    "RESERVED_CHILD_NAMES",
    "RESERVED_MODEL_NAMES",
    "Children",
    "InputSpec",
    "Layer",
    "Node",
    "Seq",
    "Spec",
    "SpecFile",
    "Use",
    "parse",
]

FORMAT_VERSION = 1
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_CHILD = re.compile(r"^[a-z_][A-Za-z0-9_]*$")
#: Keywords of later format versions -> what they will do, and what to write today.
RESERVED: dict[str, tuple[str, str]] = {
    "repeat": ("repeating a node", "write the copies out; a YAML anchor and aliases give independent copies"),
    "ties": ("parameter-level ties", "share a whole block by name with '{use: block}'"),
    "tie": ("parameter-level ties", "share a whole block by name with '{use: block}'"),
    "inputs": ("data-flow graphs", "a list runs its layers in order, each taking the previous one's output"),
    "outputs": ("data-flow graphs", "a list runs its layers in order, each taking the previous one's output"),
    "nodes": ("data-flow graphs", "a list runs its layers in order, each taking the previous one's output"),
    "vars": ("variables", "write the values out"),
    "init": ("initialization settings", "set 'seed'; initialize further in Python after modelspec.build"),
    "trainable": ("freezing parameters", "call requires_grad_(False) in Python after modelspec.build"),
    "params": ("parameter settings", "remove it"),
    "buffers": ("buffer settings", "remove it"),
    "plugins": ("plugins", "remove it: layers come from torch.nn only"),
    "overrides": ("overriding parts of a spec", "edit the spec itself"),
}
#: Names nn.Sequential / nn.ModuleDict use themselves: no child or model can take them.
RESERVED_CHILD_NAMES = frozenset(dir(nn.Sequential())) | {"use"}
RESERVED_MODEL_NAMES = frozenset(dir(nn.ModuleDict()))
DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")

# Nodes are parsed by _NodeParser, not pydantic; the schema module swaps this marker
# for a reference to the node grammar it generates from the registry.
NODE_MARKER = "x-modelspec-node"
_CONTAINER_HINTS = {
    "Sequential": "a YAML list builds nn.Sequential: write the layers as a list",
    "ModuleList": "a YAML list builds nn.Sequential: write the layers as a list",
    "ModuleDict": "a mapping of lower-case names builds named children",
}
_NodeJSON = Annotated[Any, WithJsonSchema({NODE_MARKER: True})]
_Name = Annotated[str, Field(pattern=_NAME)]


class InputSpec(BaseModel):
    """The example input: sizes lazy layers at build time and drives ``grads``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # "8" is not a size
    shape: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, description="e.g. [2, 4]: batch 2, 4 features")
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]


class SpecFile(BaseModel):
    """A modelspec file: one model (``model``) or several sharing blocks (``models``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, title="modelspec")
    modelspec: Literal[1] = Field(description="format version of this file")
    name: str | None = Field(None, description="a name for reports")
    description: str | None = None
    seed: Annotated[int, Field(ge=0, le=2**64 - 1)] = Field(0, description="seeds parameter initialization")
    input: InputSpec | None = Field(None, description="example input; needed for Lazy* layers")
    blocks: dict[_Name, _NodeJSON] = Field(
        default_factory=dict, description="named blocks: built once, the same object at every 'use'"
    )
    model: _NodeJSON | None = Field(None, description="the model (give this or 'models')")
    models: dict[_Name, _NodeJSON] | None = Field(
        None, description="several models, built into an nn.ModuleDict; they may share blocks"
    )


# ---------------------------------------------------------------- the node IR
@dataclass(frozen=True)
class Layer:
    """One ``torch.nn`` layer. ``arguments`` are as written (JSON), bound by name."""

    type: str
    arguments: dict[str, Any]
    values: dict[str, Any]  # the same, validated for the constructor (tuples, ...)
    path: SpecPath


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]
    path: SpecPath


@dataclass(frozen=True)
class Children:
    children: tuple[tuple[str, Node], ...]
    path: SpecPath


@dataclass(frozen=True)
class Use:
    block: str
    path: SpecPath


Node = Layer | Seq | Children | Use


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
    file: str = "<spec>"
    sha256: str = ""  # canonical_sha256(self), set by parse()
    positions: dict[SpecPath, tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)
    warnings: tuple[Diagnostic, ...] = ()

    @property
    def roots(self) -> dict[str, Node]:
        """Models by name; a single ``model`` is keyed ``""``."""
        if self.models is not None:
            return dict(self.models)
        assert self.model is not None
        return {"": self.model}

    def to_data(self) -> dict[str, Any]:
        """The spec in canonical surface form (arguments by name); valid input itself."""
        data: dict[str, Any] = {"modelspec": FORMAT_VERSION}
        if self.name is not None:
            data["name"] = self.name
        if self.description is not None:
            data["description"] = self.description
        data["seed"] = self.seed
        if self.input is not None:
            data["input"] = self.input.model_dump()
        if self.blocks:
            data["blocks"] = {k: node_to_data(v) for k, v in self.blocks.items()}
        if self.models is not None:
            data["models"] = {k: node_to_data(v) for k, v in self.models.items()}
        else:
            data["model"] = node_to_data(self.model)  # type: ignore[arg-type]
        return data


def node_to_data(node: Node) -> Any:
    if isinstance(node, Layer):
        return {node.type: dict(node.arguments)} if node.arguments else node.type
    if isinstance(node, Seq):
        return [node_to_data(n) for n in node.items]
    if isinstance(node, Children):
        return {k: node_to_data(v) for k, v in node.children}
    return {"use": node.block}


# ---------------------------------------------------------------- parsing
def parse(doc: Document) -> Spec:
    """Validate a loaded document; raise :class:`SpecError` listing every problem."""
    errors = Collector(file=doc.file, positions=doc.positions)
    data = doc.data
    if not isinstance(data, dict):
        errors.add("wrong-type", f"a spec is a mapping, not {_kind(data)}", hint="start with 'modelspec: 1'")
        errors.raise_if_errors()
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
        if key in RESERVED:
            _reserved(errors, key, (key,))
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
    known = {k: v for k, v in data.items() if k in SpecFile.model_fields}
    known["modelspec"] = FORMAT_VERSION  # checked above; go on checking the rest
    top: SpecFile | None = None
    try:
        top = SpecFile.model_validate(known)
    except pydantic.ValidationError as e:
        for err in e.errors():
            loc = tuple(err["loc"])
            code = {"missing": "missing-key", "extra_forbidden": "unknown-key"}.get(err["type"], "wrong-type")
            message = f"{err['msg']} (got {_kind(err.get('input'))})" if code == "wrong-type" else err["msg"]
            errors.add(code, message, loc)

    # Nodes are checked even when the top level has errors, so all problems come at once.
    parser = _NodeParser(errors)
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
                _reserved(errors, name, ("models", name), as_name=True)
            elif name in RESERVED_MODEL_NAMES and re.match(_NAME, name):  # other bad names: pydantic said so
                errors.add(
                    "bad-name",
                    f"'{name}' cannot name a model: nn.ModuleDict, which holds the models, has an attribute '{name}'",
                    ("models", name),
                    hint=f"choose another name, e.g. '{name.strip('_')}_model'",
                )
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
        file=doc.file,
        positions=doc.positions,
        warnings=tuple(errors.warnings),
    )
    return replace(spec, sha256=canonical_sha256(spec))


def canonical_sha256(spec: Spec) -> str:
    """sha256 of the spec in canonical form: formatting, comments, anchors and the
    positional/keyword style of arguments do not change it; any change to the model does."""
    text = json.dumps(spec.to_data(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _reserved(errors: Collector, key: str, path: SpecPath, *, as_name: bool = False) -> None:
    purpose, instead = RESERVED[key]
    if as_name:
        hint = "choose another name"
    elif len(path) > 1:  # a node key: meant as the keyword, or as a child's name
        hint = f"{instead}; to name a child, choose another name"
    else:
        hint = instead
    errors.add(
        "reserved",
        f"'{key}' is not supported yet: the keyword is reserved for {purpose} in a later version of modelspec",
        path,
        hint=hint,
    )


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


class _NodeParser:
    def __init__(self, errors: Collector) -> None:
        self.errors = errors

    def node(self, raw: Any, path: SpecPath) -> Node:
        if isinstance(raw, str):
            return self.layer(raw, None, path, path)
        if isinstance(raw, list):
            if not raw:
                self.errors.add("empty-node", "an empty list builds nothing", path, hint="list at least one layer")
            return Seq(tuple(self.node(item, (*path, i)) for i, item in enumerate(raw)), path)
        if isinstance(raw, dict):
            return self.mapping(raw, path)
        self.errors.add(
            "wrong-type",
            f"expected a layer, a list or a mapping, got {_kind(raw)} {raw!r}",
            path,
            hint="write a layer as 'ReLU' or '{Linear: [20, 64]}'",
        )
        return Seq((), path)

    def mapping(self, raw: dict[str, Any], path: SpecPath) -> Node:
        if not raw:
            self.errors.add("empty-node", "an empty mapping builds nothing", path)
            return Seq((), path)
        if any(k in RESERVED for k in raw):
            for key in raw:
                if key in RESERVED:
                    _reserved(self.errors, key, (*path, key))
            raw = {k: v for k, v in raw.items() if k not in RESERVED}  # check what is left
            if not raw:
                return Seq((), path)
        if "use" in raw:
            if len(raw) > 1:
                others = ", ".join(k for k in raw if k != "use")
                self.errors.add(
                    "bad-use",
                    f"'use' stands alone; also found: {others}",
                    path,
                    hint="to combine a block with other layers, put both in a list",
                )
            if not isinstance(raw["use"], str):
                self.errors.add("wrong-type", f"'use' takes a block name, got {_kind(raw['use'])}", (*path, "use"))
                return Use("", (*path, "use"))
            return Use(raw["use"], (*path, "use"))
        types = [k for k in raw if k[:1].isupper()]
        if types:
            slipped = self.misindented(raw, types, path)
            if slipped is not None:
                return slipped
            if len(raw) > 1:
                self.errors.add(
                    "bad-layer",
                    f"a layer is a mapping with one key, the layer type; found {', '.join(raw)}",
                    path,
                    hint="put several layers in a list, or give children lower-case names",
                )
            return self.layer(types[0], raw[types[0]], path, (*path, types[0]))
        children = []
        for name, value in raw.items():
            if name in RESERVED_CHILD_NAMES:
                self.errors.add(
                    "bad-name",
                    f"'{name}' cannot name a child: nn.Sequential, which holds the children, has an attribute '{name}'",
                    (*path, name),
                    hint=f"choose another name, e.g. '{name.strip('_')}_layer'",
                )
            elif not _CHILD.match(name):
                self.errors.add(
                    "bad-name",
                    f"'{name}' is not a valid child name",
                    (*path, name),
                    hint=did_you_mean(name, registry.layer_names())
                    or "child names are lower-case identifiers, e.g. 'encoder'",
                )
            children.append((name, self.node(value, (*path, name))))
        return Children(tuple(children), path)

    def misindented(self, raw: dict[str, Any], types: list[str], path: SpecPath) -> Node | None:
        """The classic slip: a layer's arguments at the indent of its type, not under it::

            - Linear:
              in_features: 20      # YAML reads {Linear: null, in_features: 20, ...}

        One error at the layer with the fix, then the arguments are checked as meant.
        """
        entry = registry.get_layer(types[0])
        others = [k for k in raw if k != types[0]]
        if (
            len(types) != 1
            or raw[types[0]] is not None
            or not others
            or entry is None
            or not all(_CHILD.match(k) for k in others)
            or not any(k in entry.param_names for k in others)
        ):
            return None
        names = _and([f"'{k}'" for k in others])
        type_at = self.errors.positions.get((*path, types[0]))
        arg_at = self.errors.positions.get((*path, others[0]))
        more = type_at[1] + 2 - arg_at[1] if type_at and arg_at and type_at[0] < arg_at[0] else 0
        fix = f"indent {names} {more} more spaces, under '{types[0]}:'" if more > 0 else None
        self.errors.add(
            "bad-indent",
            f"the arguments of '{types[0]}' are not indented under it: YAML reads {names} "
            f"as keys beside '{types[0]}', which then has no arguments",
            path,
            hint=fix or f"write them as '{types[0]}: {{{', '.join(f'{k}: ...' for k in others)}}}'",
            at=type_at,
        )
        return self.layer(types[0], {k: raw[k] for k in others}, path, path)

    def layer(self, type_name: str, value: Any, path: SpecPath, arg_path: SpecPath) -> Node:
        entry = registry.get_layer(type_name)
        if entry is None:
            hint = _CONTAINER_HINTS.get(type_name) or did_you_mean(type_name, registry.layer_names())
            if hint is None and type_name[:1].islower():
                hint = "layer types are torch.nn class names, e.g. 'ReLU'; named children go in a mapping"
            at = self.errors.position(arg_path)  # the type name the user typed
            self.errors.add("unknown-layer", f"unknown layer type '{type_name}'", path, hint=hint,
                            at=at if at[0] is not None else None)  # fmt: skip
            return Layer(type_name, {}, {}, path)
        if value is None:
            args, kwargs = [], {}
        elif isinstance(value, list):
            args = list(value)
            kwargs = args.pop() if args and isinstance(args[-1], dict) else {}
        elif isinstance(value, dict):
            args, kwargs = [], value
        else:
            args, kwargs = [value], {}
        values, problems = registry.bind_arguments(entry, args, kwargs)
        for p in problems:
            where = p.where
            if where and isinstance(where[0], str) and isinstance(value, list):
                where = (len(value) - 1, *where)  # keywords sit in the list's last item
            self.errors.add(p.code, p.message, (*arg_path, *where), hint=p.hint)
        arguments = {name: _as_written(args, kwargs, entry.param_names, name) for name in values}
        return Layer(type_name, arguments, values, path)


def _as_written(args: list[Any], kwargs: dict[str, Any], names: list[str], name: str) -> Any:
    i = names.index(name)
    return args[i] if i < len(args) else kwargs[name]
