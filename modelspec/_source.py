"""Stage 1: YAML text -> plain data + the source position of every node.

A spec is read with YAML 1.2 core-schema semantics, on PyYAML's pure-Python parser and
composer, with these guards (each problem is a Diagnostic with its own code and position):

* limits, each checked before the work it bounds: file size (``too-large``, read at most
  MAX_BYTES + 1 bytes), nesting depth while the parser streams events, before the
  recursive composer sees them (``too-deep``), and nodes added by alias expansion
  (``alias-limit``);
* bytes that are not UTF-8 (``bad-encoding``) and characters YAML forbids, such as NUL
  (``bad-character``), with line:column;
* YAML 1.2 core scalars only: ``true``/``false``, decimal/``0o``/``0x`` integers, floats
  with ``.inf``/``.nan``, ``null``/``~``/empty. Forms that YAML 1.1 (and so PyYAML's
  defaults and many other tools) reads differently, e.g. ``off``, ``yes``, ``010``,
  ``1:00``, ``1_000``, are rejected (``ambiguous-value``) rather than silently read one way
  (see :mod:`._yaml_scalars`).
  An explicit core tag whose value does not fit (``!!bool maybe``) is ``bad-value``;
* duplicate keys are rejected (PyYAML keeps the last silently, pyyaml #165), dates stay
  strings, and only core tags are accepted (``!!python/...`` is ``yaml-tag``);
* an alias ``*x`` is the *same* node as its anchor, so a builder that cached by ``id()``
  would tie weights by accident. Here every occurrence is converted afresh: an alias is
  always an independent copy;
* syntax errors (``yaml-syntax``, ``tab-indent``) and valid YAML that is almost surely a
  typo (``-ReLU``, ``in_features:2``, a list item indented deeper than the one above it)
  get a message in the user's terms and a hint with the fix, see :mod:`._yaml_hints`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml
from yaml.events import CollectionEndEvent, CollectionStartEvent

from ._errors import Collector, Diagnostic, SpecError, SpecPath
from ._yaml_hints import explain_syntax_error, line_col, suspicious_plain_scalar
from ._yaml_scalars import (
    AMBIGUOUS,
    MERGE,
    MISFIT,
    SCALAR_TAGS,
    SINGLE_LETTERS,
    STR,
    ambiguity,
    construct,
    kind,
    misfit_hint,
    resolve_plain,
    show,
    yaml11_reading,
)

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "Document", "load_text", "read_file"]

#: Largest spec file read, in bytes. A 1,000-layer model written out layer by layer is
#: about 60 KB, so this leaves eight times that. It also bounds the work: PyYAML's
#: pure-Python parser reads about 100 KB/s (so 4 MiB would take 40 s and over 1 GB), and a
#: file that never ends (/dev/zero, a pipe) is refused after reading MAX_BYTES + 1 bytes.
MAX_BYTES = 512 * 1024
#: Deepest nesting of lists and mappings, far beyond any real model (a GPT-2 spec nests
#: about 8 deep) and far below Python's recursion limit in the stages that walk the tree.
MAX_DEPTH = 100
#: Most nodes that alias expansion may add: a 1,000-layer spec has ~5,000 nodes in all, and
#: an alias bomb (``a: &a [x, x]``, ``b: &b [*a, *a]``, ...) must stop within a second.
MAX_NODES = 100_000

_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"

# Characters YAML 1.2 allows in a stream (c-printable); the same set PyYAML checks.
_NOT_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_CONTROL_NAMES = {0x00: "NUL", 0x07: "BEL", 0x08: "BACKSPACE", 0x0B: "VT", 0x0C: "FF", 0x1B: "ESC", 0x7F: "DEL"}


class _Limit(Exception):
    """A limit was crossed; stops loading at once (the rest may be huge or deep)."""

    def __init__(self, code: str, message: str, hint: str, at: tuple[int | None, int | None] | None) -> None:
        super().__init__(message)
        self.code, self.message, self.hint, self.at = code, message, hint, at


def _too_deep(at: tuple[int, int]) -> _Limit:
    return _Limit(
        "too-deep",
        f"the spec nests lists and mappings more than {MAX_DEPTH} levels deep",
        "flatten the structure: name a block under 'blocks:' and 'use:' it",
        at,
    )


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core resolution and a depth check on the event stream.

    Scalars are not constructed here: :class:`_Converter` does that from the node tree.
    """

    # None of YAML 1.1's implicit resolvers (booleans 'yes'/'on', octal '010', base-60
    # '1:00', timestamps, '='): :meth:`resolve` decides every plain scalar's tag.
    yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = {}

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            return resolve_plain(value)
        return str(super().resolve(kind, value, implicit))

    def get_event(self) -> Any:
        # The composer recurses once per nesting level and takes every collection's start
        # event before descending into it: counting here stops it before Python's limit.
        event = super().get_event()
        if isinstance(event, CollectionStartEvent):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _too_deep(_pos(event.start_mark))
        elif isinstance(event, CollectionEndEvent):
            self.depth -= 1
        return event


try:  # libyaml, when PyYAML was built with it: the same documents, parsed about 30x faster
    from yaml.cyaml import CParser as _CParser
except ImportError:  # pragma: no cover - a PyYAML without libyaml: the Python loader only
    _CParser = None


if _CParser is not None:

    class _FastLoader(_CParser, yaml.resolver.Resolver):  # type: ignore[misc]
        """libyaml's parser and composer with :class:`_Loader`'s scalar resolution."""

        yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = {}

        def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> str:
            if kind is yaml.ScalarNode and implicit[0]:
                return resolve_plain(value)
            if not self.yaml_path_resolvers:  # none registered: each kind's default tag (called per node)
                return _DEFAULT_TAGS[kind]
            return str(super().resolve(kind, value, implicit))

    _DEFAULT_TAGS = {yaml.ScalarNode: STR, yaml.SequenceNode: _SEQ_TAG, yaml.MappingNode: _MAP_TAG}


#: plain scalars that libyaml and PyYAML may read differently ('Linear:{a: 1}' and '-ReLU'
#: are scalars for one and errors for the other), as are plain scalars over several lines
#: ('ReLU' and a more-indented '- ReLU' below it): a document holding one is read by the
#: Python loader only
_DISPUTED_PLAIN = re.compile(r"[:{}\[\],]|^(?:-(?![0-9.])|\?)")  # not a negative number


def _compose_fast(text: str) -> yaml.Node | None:
    """The node tree by libyaml, or None to leave the text to the Python loader.

    Only a plain-ASCII text within the depth limit, without plain scalars the two parsers may
    disagree on (:data:`_DISPUTED_PLAIN`), that libyaml reads without any error takes this
    path; so does no text with a tab (libyaml accepts 'Linear:\\t{...}' and 'ReLU\\t# x', PyYAML
    does not). Every error, and every position in a non-ASCII text (where libyaml counts
    differently), comes from the Python loader, so messages and positions are the same
    whichever path a spec takes. libyaml refuses to nest deeper than 1,000 levels itself (its
    composer recurses in C), so the tree it returns can be walked for MAX_DEPTH afterwards.
    """
    if _CParser is None or not text.isascii() or "\t" in text:  # libyaml takes tabs PyYAML refuses
        return None
    try:
        loader = _FastLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError:
        return None
    return node if node is not None and _plain_and_shallow(node) else None


def _plain_and_shallow(root: yaml.Node) -> bool:
    """Whether no collection of the tree nests deeper than MAX_DEPTH and no plain scalar is a
    disputed one. Walked in document order, each node once: an anchored node's first visit is
    its definition, at the depth PyYAML's event count gives it (aliases add no depth)."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, int]] = [(root, 0)]
    disputed = _DISPUTED_PLAIN.search
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            if not node.style and (node.end_mark.line > node.start_mark.line or disputed(node.value)):
                return False
            continue
        depth += 1
        if depth > MAX_DEPTH:
            return False
        if isinstance(node, yaml.MappingNode):
            for key, value in reversed(node.value):  # popped in document order: key, value, next key
                stack.append((value, depth))
                stack.append((key, depth))
        else:
            stack.extend([(child, depth) for child in reversed(node.value)])
    return True


@dataclass(frozen=True)
class Document:
    """A loaded spec: plain data, the (line, column) of every node, and the file name."""

    data: Any
    positions: dict[SpecPath, tuple[int, int]]
    file: str


def read_file(path: Path) -> str:
    """The text of the spec file at ``path``: at most MAX_BYTES of UTF-8.

    Raises:
        SpecError: ``file-error`` (cannot be read), ``too-large``, ``bad-encoding``.
    """
    file = str(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)  # never more: /dev/zero or a pipe that never ends
    except OSError as e:
        reason = e.strerror or str(e)
        raise SpecError(
            [Diagnostic("file-error", f"cannot read the spec: {reason}", file=file, hint="check the path")]
        ) from e
    if len(data) > MAX_BYTES:
        raise SpecError([_too_large(file)])
    return decode(data, file)


def decode(data: bytes, file: str = "<spec>") -> str:
    """``data`` as UTF-8 text; ``bad-encoding`` at the first byte that is not UTF-8."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError(
            [
                Diagnostic(
                    "bad-encoding",
                    "the spec is UTF-16 text; modelspec reads UTF-8 only",
                    file=file,
                    line=1,
                    column=1,
                    hint="save the file as UTF-8",
                )
            ]
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start].decode("utf-8")  # valid up to the first bad byte
        line, column = line_col(before, len(before))
        raise SpecError(
            [
                Diagnostic(
                    "bad-encoding",
                    f"byte 0x{data[e.start]:02X} is not valid UTF-8 ({e.reason})",
                    file=file,
                    line=line,
                    column=column,
                    hint="save the file as UTF-8 (e.g. in your editor's 'Save with Encoding')",
                )
            ]
        ) from e


def _too_large(file: str) -> Diagnostic:
    return Diagnostic(
        "too-large",
        f"the spec is larger than {MAX_BYTES // 1024:,} KiB, more than any model needs",
        file=file,
        line=1,
        column=1,
        hint="is this the right file? Name repeated parts once under 'blocks:' and 'use:' them",
    )


def _bad_character(text: str, file: str) -> Diagnostic | None:
    match = _NOT_PRINTABLE.search(text)
    if match is None:
        return None
    char = match.group()
    code = ord(char)
    name = _CONTROL_NAMES.get(code) or unicodedata.name(char, "control character" if code < 0xA0 else "")
    what = f"U+{code:04X}" + (f" ({name})" if name else "")
    others = len(_NOT_PRINTABLE.findall(text)) - 1
    more = f"; {others:,} more in the file" if others else ""
    if code == 0:
        hint = "remove it: NUL bytes mean the file is binary or UTF-16; save the spec as UTF-8 text"
    elif 0xD800 <= code <= 0xDFFF:
        hint = "remove it: a lone surrogate is not a character"
    else:
        hint = f'remove it; to put it in a text, write an escape in double quotes: "\\x{code:02x}"'
        if code > 0xFF:
            hint = f'remove it; to put it in a text, write an escape in double quotes: "\\u{code:04x}"'
    line, column = line_col(text, match.start())
    return Diagnostic(
        "bad-character", f"the character {what} is not allowed in YAML{more}", (), file, line, column, hint
    )


def load_text(text: str, file: str = "<spec>") -> Document:
    """Parse YAML ``text``; raise :class:`~modelspec.errors.SpecError` on any problem.

    All problems found in the tree are reported together, each with file:line:col.
    """
    if len(text) > MAX_BYTES or (len(text) > MAX_BYTES // 4 and len(text.encode("utf-8", "replace")) > MAX_BYTES):
        raise SpecError([_too_large(file)])
    bad = _bad_character(text, file)
    if bad is not None:
        raise SpecError([bad])
    errors = Collector(file=file)
    node = _compose_fast(text)
    if node is not None:
        return _convert(node, text, errors, file)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except _Limit as e:
        errors.add(e.code, e.message, hint=e.hint, at=e.at)
        errors.raise_if_errors()
        raise AssertionError("unreachable") from e
    except yaml.MarkedYAMLError as e:
        code, message, hint, at = explain_syntax_error(e, text)
        errors.add(code, message, hint=hint, at=at)
        errors.raise_if_errors()
        raise AssertionError("unreachable") from e
    except yaml.YAMLError as e:  # unmarked (a reader error): the checks above should catch these first
        errors.add("yaml-syntax", f"YAML error: {e}", hint="check the file is a UTF-8 YAML text", at=(1, 1))
        errors.raise_if_errors()
        raise AssertionError("unreachable") from e
    finally:
        loader.dispose()

    if node is None:
        errors.add("empty-spec", "the spec is empty", hint="start with 'modelspec: 1'", at=(1, 1))
        errors.raise_if_errors()
    return _convert(node, text, errors, file)


def _convert(node: yaml.Node, text: str, errors: Collector, file: str) -> Document:
    converter = _Converter(text, errors)
    try:
        data = converter.convert(node, ())
    except _Limit as e:
        errors.items.clear()  # what was found before the limit may be an artefact of it
        errors.add(e.code, e.message, hint=e.hint, at=e.at)
    errors.raise_if_errors()
    return Document(data=data, positions=errors.positions, file=file)


class _Converter:
    """Node tree -> plain data, recording positions; every alias occurrence is a fresh copy."""

    def __init__(self, text: str, errors: Collector) -> None:
        self.text = text
        self.errors = errors
        self.seen: set[int] = set()
        self.copies = 0  # nodes added by alias expansion
        self.alias_site: tuple[int | None, int | None] | None = None

    def convert(self, node: yaml.Node, path: SpecPath) -> Any:
        if id(node) not in self.seen:
            self.seen.add(id(node))
            return self._convert(node, path)
        # Reached again through an alias (or a merge): a copy. Errors point at the entry
        # holding the outermost alias, not at the anchor the copy came from.
        outer = self.alias_site is None
        if outer:
            self.alias_site = self.errors.position(path) if path else _pos(node.start_mark)
        try:
            return self._convert(node, path)
        finally:
            if outer:
                self.alias_site = None

    def _convert(self, node: yaml.Node, path: SpecPath) -> Any:
        if self.alias_site is not None:
            self.copies += 1
            if self.copies > MAX_NODES:
                raise _Limit(
                    "alias-limit",
                    f"aliases expand the spec by more than {MAX_NODES:,} nodes",
                    "write the structure out, or use fewer aliases",
                    self.alias_site,
                )
        positions = self.errors.positions
        if path not in positions:  # a mapping's value: its key's position is recorded already
            positions[path] = _pos(node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if len(path) >= MAX_DEPTH:  # aliases can nest deeper than the text does
            raise _too_deep(self.alias_site or self.errors.position(path))
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
            if key_node.tag == MERGE:  # '<<: *base' copies keys, explicit keys win
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    value = self.convert(source, path)
                    if not isinstance(value, dict):
                        self.errors.add(
                            "yaml-merge",
                            "'<<' must merge a mapping",
                            path,
                            hint="merge an anchored mapping: 'base: &base {...}', then '<<: *base'",
                        )
                        continue
                    for k, v in value.items():
                        merged.setdefault(k, v)
                continue
            key = self._key(key_node, path)
            if key is None:
                continue
            if key in out:
                first = self.errors.positions.get((*path, key))
                where = f" (first at line {first[0]})" if first else ""
                self.errors.add(
                    "duplicate-key",
                    f"duplicate key '{key}'{where}; YAML would silently keep only the last",
                    (*path, key),
                    hint="remove or rename one of them",
                    at=_pos(key_node.start_mark),
                )
                continue
            # A key's position is its key token, so errors point at the name the user typed.
            self.errors.positions[(*path, key)] = _pos(key_node.start_mark)
            out[key] = self.convert(value_node, (*path, key))
        for k, v in merged.items():
            out.setdefault(k, v)
        return out

    def _key(self, node: yaml.Node, path: SpecPath) -> str | None:
        """A mapping key as a name, or None after reporting why it is not one."""
        at = _pos(node.start_mark)
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (*SCALAR_TAGS, AMBIGUOUS):
            self.errors.add(
                "bad-key",
                "mapping keys must be plain names, not lists, mappings or tagged values",
                path,
                hint="write a name before the ':' ('? ' at the start of a line begins a complex key)",
                at=at,
            )
            return None
        if node.tag == AMBIGUOUS and node.value in SINGLE_LETTERS:
            return node.value  # 'x', 'y', 'n' are names; PyYAML never read them as booleans
        if node.tag == AMBIGUOUS:
            self.errors.add(
                "bad-key",
                f"the key {show(node.value)} means {yaml11_reading(node.value)} in YAML 1.1 and the text "
                f"{show(node.value)} in YAML 1.2; tools disagree on it",
                path,
                hint=f"quote it: '{node.value}'",
                at=at,
            )
            return None
        if node.tag == STR:
            return str(self._scalar(node, path, at=at))
        key = construct(node.tag, node.value)
        if key is MISFIT:
            self._misfit(node, path, at)
            return None
        shown = "null" if key is None else repr(key)
        self.errors.add(
            "bad-key",
            f"the key {show(node.value)} is read by YAML as {kind(node.tag)} {shown}, not as a name",
            path,
            hint=f"quote it: '{node.value}'",
            at=at,
        )
        return None

    def _scalar(self, node: yaml.ScalarNode, path: SpecPath, at: tuple[int, int] | None = None) -> Any:
        tag, value = node.tag, node.value
        if tag == AMBIGUOUS:
            self._ambiguous(node, path, at or _pos(node.start_mark))
            return None
        if tag not in SCALAR_TAGS:
            self._bad_tag(node, path)
            return None
        if tag == STR:
            if node.style is None:  # plain: catch valid YAML that is almost surely a typo
                found = suspicious_plain_scalar(node, self.text)
                if found is not None:
                    message, hint, where = found
                    self.errors.add("yaml-syntax", message, path, hint=hint, at=where)
            return value
        result = construct(tag, value)
        if result is MISFIT:
            self._misfit(node, path, at or _pos(node.start_mark))
            return None
        return result

    def _misfit(self, node: yaml.ScalarNode, path: SpecPath, at: tuple[int, int]) -> None:
        self.errors.add(
            "bad-value",
            f"{show(node.value)} is not a YAML 1.2 {kind(node.tag)} (tag '!!{node.tag.rsplit(':', 1)[-1]}')",
            path,
            hint=misfit_hint(node.tag),
            at=at,
        )

    def _ambiguous(self, node: yaml.ScalarNode, path: SpecPath, at: tuple[int, int]) -> None:
        message, hint = ambiguity(node.value)
        self.errors.add("ambiguous-value", message, path, hint=hint, at=at)

    def _bad_tag(self, node: yaml.Node, path: SpecPath) -> None:
        self.errors.add(
            "yaml-tag",
            f"YAML tag '{node.tag}' is not allowed in a spec",
            path,
            hint="specs hold plain data only; remove the tag",
            at=_pos(node.start_mark),
        )


def _pos(mark: yaml.Mark) -> tuple[int, int]:
    """1-based (line, column) of a PyYAML mark."""
    return mark.line + 1, mark.column + 1
