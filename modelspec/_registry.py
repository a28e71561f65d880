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
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic
import torch.nn as nn

__all__ = ["ArgError", "LayerType", "bind_arguments", "get_layer", "layer_names"]

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
_NO_CHECK = object()


@dataclass(frozen=True)
class Param:
    name: str
    required: bool
    default: Any
    annotation: Any  # a type pydantic can check, or _NO_CHECK

    @functools.cached_property
    def adapter(self) -> pydantic.TypeAdapter[Any] | None:
        if self.annotation is _NO_CHECK:
            return None
        try:
            return pydantic.TypeAdapter(self.annotation)
        except (pydantic.PydanticSchemaGenerationError, TypeError, NameError):
            return None

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {}
        if self.adapter is not None:
            try:
                schema = self.adapter.json_schema()
            except (pydantic.errors.PydanticInvalidForJsonSchema, TypeError):
                schema = {}
        if not self.required and _jsonable(self.default):
            schema["default"] = self.default
        return schema


@dataclass(frozen=True)
class LayerType:
    """A layer class a spec can name, with the parameters its constructor takes."""

    name: str
    cls: type[nn.Module]
    params: tuple[Param, ...]

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def json_schema(self) -> dict[str, Any]:
        """Schema of the value under the layer's key: null, a list or a mapping."""
        doc = (inspect.getdoc(self.cls) or "").split("\n\n")[0].replace("\n", " ")
        if not self.params:
            return {"type": "null", "description": f"torch.nn.{self.name}: {doc}"}
        props = {p.name: p.json_schema() for p in self.params}
        kwargs = {"type": "object", "properties": props, "additionalProperties": False}
        required = [p.name for p in self.params if p.required]
        return {
            "description": f"torch.nn.{self.name}({', '.join(self.param_names)}): {doc}",
            "anyOf": [
                {"type": "null"} if not required else {"not": {}},
                {"type": ["number", "string", "boolean"], "description": "the first argument alone"},
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
    init = _constructor(cls)
    if init is None:
        return LayerType(name, cls, ())
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # noqa: BLE001 - torch's own annotations may not resolve
        hints = {}
    params = []
    for p in list(inspect.signature(init).parameters.values())[1:]:  # skip self
        if p.name in _FACTORY or p.name.startswith("_"):
            continue
        required = p.default is inspect.Parameter.empty
        annotation = hints.get(p.name, _NO_CHECK)
        if annotation is _NO_CHECK and not required and type(p.default) in (bool, int, float, str):
            annotation = type(p.default) if type(p.default) is not int else int | float
        params.append(Param(p.name, required, None if required else p.default, annotation))
    return LayerType(name, cls, tuple(params))


@functools.cache
def _table() -> Mapping[str, type[nn.Module]]:
    table = {}
    for name in dir(nn):
        obj = getattr(nn, name)
        if not name.startswith("_") and inspect.isclass(obj) and issubclass(obj, nn.Module) and name not in _EXCLUDED:
            table[name] = obj
    return table


def layer_names() -> list[str]:
    """Every layer type name a spec may use, sorted."""
    return sorted(_table())


@functools.cache
def get_layer(name: str) -> LayerType | None:
    """The registry entry for ``name``, or None if it is not a known layer type."""
    cls = _table().get(name)
    return None if cls is None else _make(name, cls)


def bind_arguments(layer: LayerType, args: list[Any], kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[ArgError]]:
    """Check ``args``/``kwargs`` against ``layer``'s constructor.

    Returns the arguments bound by name (validated values, e.g. lists made tuples where
    the constructor wants tuples) and every problem found.
    """
    from ._errors import did_you_mean

    errors: list[ArgError] = []
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
        if key in _FACTORY:
            errors.append(
                ArgError(
                    "bad-argument",
                    f"'{key}' is set by the build, not the spec",
                    (key,),
                    hint=f"pass {key}= to modelspec.build or --{key} to the CLI",
                )
            )
        elif key not in names:
            errors.append(
                ArgError(
                    "bad-argument",
                    f"{layer.name} has no argument '{key}'",
                    (key,),
                    hint=did_you_mean(key, names) or f"it takes: {', '.join(names) or 'none'}",
                )
            )
        elif key in bound:
            errors.append(ArgError("bad-argument", f"argument '{key}' given twice (by position and by name)", (key,)))
        else:
            bound[key] = (value, (key,))
    for p in layer.params:
        if p.required and p.name not in bound:
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
    for p in layer.params:
        if _takes_module(p.annotation) and (p.required or p.name in bound):
            errors.append(ArgError(
                "unsupported-argument", f"{layer.name} takes a module as '{p.name}'",
                bound[p.name][1] if p.name in bound else (),
                hint="modules as constructor arguments cannot be written in a spec yet",
            ))  # fmt: skip
            bound.pop(p.name, None)
    for name, (value, where) in bound.items():
        adapter = by_name[name].adapter
        if adapter is None:
            out[name] = value
            continue
        try:
            out[name] = adapter.validate_json(json.dumps(value), strict=True)
        except pydantic.ValidationError as e:
            first = e.errors()[0]
            errors.append(
                ArgError(
                    "wrong-type",
                    f"argument '{name}' = {value!r}: {first['msg']}",
                    where,
                    hint=_type_hint(by_name[name]),
                )
            )
        except (TypeError, ValueError):
            errors.append(ArgError("wrong-type", f"argument '{name}' = {value!r} is not plain data", where))
    return out, errors


def _takes_module(annotation: Any) -> bool:
    """Whether an annotation names an nn.Module class (also inside Optional/Union)."""
    if isinstance(annotation, type):
        return issubclass(annotation, nn.Module)
    return any(_takes_module(arg) for arg in typing.get_args(annotation))


def _type_hint(p: Param) -> str | None:
    ann = p.annotation
    if ann is _NO_CHECK:
        return None
    text = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
    return f"'{p.name}' takes {text}"
