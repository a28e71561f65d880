"""Stage 1: YAML text -> plain data + the source position of every node.

PyYAML's ``safe_load`` is safe against code execution but has three traps for a model
spec, all handled here on the composed node tree instead of the constructed objects:

* duplicate keys are kept last-wins, silently (pyyaml #165): rejected here;
* ``2024-01-01`` becomes a ``datetime.date``: the timestamp resolver is switched off;
* an alias ``*x`` constructs to the *same* Python object as its anchor, so a builder that
  cached by ``id()`` would tie weights by accident. Here every occurrence is converted
  afresh, so an alias is always an independent copy. Expansion is capped, which also
  defuses alias bombs and recursive anchors.

Only the core YAML tags are accepted (``!!python/...`` and custom tags are errors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from ._errors import Collector, SpecPath

__all__ = ["MAX_DEPTH", "MAX_NODES", "Document", "load_text"]

#: Cap on the number of nodes after alias expansion (a 1,000-layer spec has ~5,000).
MAX_NODES = 1_000_000
#: Cap on nesting depth, far beyond any real model, far below Python's recursion limit.
MAX_DEPTH = 150

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null")}
_SEQ_TAG = _CORE + "seq"
_MAP_TAG = _CORE + "map"
_MERGE_TAG = _CORE + "merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader without the timestamp resolver (dates stay strings)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _CORE + "timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True)
class Document:
    """A loaded spec: plain data, the (line, column) of every node, and the file name."""

    data: Any
    positions: dict[SpecPath, tuple[int, int]]
    file: str


class _TooBig(Exception):
    pass


def load_text(text: str, file: str = "<spec>") -> Document:
    """Parse YAML ``text``; raise :class:`~modelspec.errors.SpecError` on any problem.

    All problems found in the tree are reported together, each with file:line:col.
    """
    errors = Collector(file=file)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        problem = " ".join(p for p in (e.context, e.problem) if p) or "invalid YAML"
        errors.add(
            "yaml-syntax",
            f"YAML syntax error: {problem}",
            at=(line, col) if line is not None else None,
        )
        errors.raise_if_errors()
        raise AssertionError("unreachable") from e
    except yaml.YAMLError as e:  # reader errors (e.g. control characters)
        errors.add("yaml-syntax", f"YAML error: {e}")
        errors.raise_if_errors()
        raise AssertionError("unreachable") from e
    finally:
        loader.dispose()

    if node is None:
        errors.add("empty-spec", "the spec is empty", hint="start with 'modelspec: 1'", at=(1, 1))
        errors.raise_if_errors()
    converter = _Converter(loader, errors)
    try:
        data = converter.convert(node, ())
    except _TooBig as e:
        errors.add("alias-limit", str(e), hint="write the structure out, or use fewer aliases")
    errors.raise_if_errors()
    return Document(data=data, positions=errors.positions, file=file)


class _Converter:
    def __init__(self, loader: _Loader, errors: Collector) -> None:
        self.loader = loader
        self.errors = errors
        self.count = 0

    def convert(self, node: yaml.Node, path: SpecPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig(f"the spec expands to more than {MAX_NODES:,} nodes (alias expansion)")
        if len(path) > MAX_DEPTH:
            raise _TooBig(f"the spec nests deeper than {MAX_DEPTH} levels")
        self.errors.positions.setdefault(path, _mark(node))
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _SCALAR_TAGS:
                self._bad_tag(node, path)
                return None
            return self.loader.construct_object(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                self._bad_tag(node, path)
            return [self.convert(child, (*path, i)) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                self._bad_tag(node, path)
            return self._mapping(node, path)
        raise AssertionError(f"unknown YAML node {node!r}")  # pragma: no cover

    def _mapping(self, node: yaml.MappingNode, path: SpecPath) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # '<<: *base' copies keys, explicit keys win
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    value = self.convert(source, path)
                    if not isinstance(value, dict):
                        self.errors.add("yaml-merge", "'<<' must merge a mapping", path)
                        continue
                    for k, v in value.items():
                        merged.setdefault(k, v)
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                self.errors.add("bad-key", "mapping keys must be plain scalars", path, at=_mark(key_node))
                continue
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):  # YAML 1.1 reads `on`, `no`, `1` as bool or number
                self.errors.add(
                    "bad-key",
                    f"the key {key_node.value!r} is read by YAML as {type(key).__name__} {key!r}, not as a name",
                    path,
                    hint=f"quote it: '{key_node.value}'",
                    at=_mark(key_node),
                )
                continue
            if key in out:
                first = self.errors.positions.get((*path, key))
                where = f" (first at line {first[0]})" if first else ""
                self.errors.add(
                    "duplicate-key",
                    f"duplicate key '{key}'{where}; YAML would silently keep only the last",
                    (*path, key),
                    hint="remove or rename one of them",
                    at=_mark(key_node),
                )
                continue
            # A key's position is its key token, so errors point at the name the user typed.
            self.errors.positions[(*path, key)] = _mark(key_node)
            out[key] = self.convert(value_node, (*path, key))
        for k, v in merged.items():
            out.setdefault(k, v)
        return out

    def _bad_tag(self, node: yaml.Node, path: SpecPath) -> None:
        self.errors.add(
            "yaml-tag",
            f"YAML tag '{node.tag}' is not allowed in a spec",
            path,
            hint="specs hold plain data only; remove the tag",
        )


def _mark(node: yaml.Node) -> tuple[int, int]:
    """1-based (line, column) where ``node`` starts."""
    return node.start_mark.line + 1, node.start_mark.column + 1
