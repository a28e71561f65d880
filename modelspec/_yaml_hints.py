"""YAML mistakes in a user's terms: PyYAML's syntax errors, and valid YAML that is a typo.

PyYAML reports what its scanner expected ("expected <block end>, but found '-'"); a
newcomer needs what they did wrong and how to fix it ("this list item is at column 2, the
item above it at column 3: line up the '-'"). Each explanation looks at the error's marks
and the lines around them; anything not recognised keeps PyYAML's words and a general hint.
"""

from __future__ import annotations

import re

import yaml

__all__ = ["explain_syntax_error", "line_col", "suspicious_plain_scalar"]

Position = tuple[int, int]

#: Line breaks as PyYAML counts them (the other Unicode breaks are rejected before parsing).
_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
#: ``in_features:2``: a key and a value without the space YAML needs after ':'.
_NO_SPACE_COLON = re.compile(r"(?P<key>[A-Za-z_][\w.]*):(?P<rest>[^\s/\\:][^\n]*)")
#: ``-ReLU``: a list item without the space YAML needs after '-'.
_NO_SPACE_DASH = re.compile(r"-(?P<rest>[A-Za-z_][^\n]*)")
_NOT_A_WORD = re.compile(r"-(?:inf|infinity|nan)", re.IGNORECASE)
#: PyYAML's token names, in words.
_TOKENS = {
    "<stream end>": "the end of the file",
    "<scalar>": "a value",
    "<block mapping start>": "a key",
    "<block sequence start>": "a list item",
    "<block end>": "the end of a block",
    "?": "a key",
}
_GENERAL_HINT = (
    "check the YAML here: indent with spaces only, put a space after ':' and after '-', "
    "and close every bracket and quote"
)


def line_col(text: str, index: int) -> Position:
    """1-based (line, column) of character ``index`` in ``text``, counted as PyYAML does."""
    last_end, line = 0, 1
    for match in _BREAK.finditer(text, 0, index):
        last_end, line = match.end(), line + 1
    return line, index - last_end + 1


def _pos(mark: yaml.Mark) -> Position:
    return mark.line + 1, mark.column + 1


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_item(line: str) -> bool:
    stripped = line.lstrip(" ")
    return stripped == "-" or stripped.startswith(("- ", "-\t"))


def _content_above(lines: list[str], index: int) -> int | None:
    """Index of the nearest line above ``index`` that holds YAML (not blank, not a comment)."""
    for j in range(min(index, len(lines)) - 1, -1, -1):
        stripped = lines[j].strip()
        if stripped and not stripped.startswith("#"):
            return j
    return None


def _sibling_above(lines: list[str], index: int, item: bool) -> int | None:
    """The nearest line above that is a list item (``item``) or a key, and not less indented
    than every line in between: the line the user most likely meant to line up with."""
    j = _content_above(lines, index)
    floor = None
    while j is not None:
        if _is_item(lines[j]) == item and (floor is None or _indent(lines[j]) <= floor):
            return j
        floor = _indent(lines[j]) if floor is None else min(floor, _indent(lines[j]))
        j = _content_above(lines, j)
    return None


def _no_space_colon(line: str, line_no: int) -> tuple[str, str, Position] | None:
    body = line.lstrip(" ")
    if body.startswith("- "):
        body = body[2:].lstrip(" ")
    match = _NO_SPACE_COLON.match(body)
    if match is None:
        return None
    key, rest = match["key"], match["rest"].rstrip()
    column = len(line) - len(body) + len(key) + 1
    shown = f"{key}:{rest}" if len(rest) <= 30 else f"{key}:{rest[:27]}..."
    fix = f"write '{key}: {rest}'" if len(rest) <= 30 and not set(rest) & set("[]{},") else f"write '{key}: ...'"
    return (
        f"'{shown}' needs a space after ':' to be the key '{key}' with a value",
        fix + " with a space after ':', or quote the text",
        (line_no, column),
    )


def _no_space_dash(line: str, line_no: int) -> tuple[str, str, Position] | None:
    body = line.lstrip(" ")
    match = _NO_SPACE_DASH.match(body)
    if match is None or _NOT_A_WORD.fullmatch(body.split()[0] if body.split() else body):
        return None
    return (
        f"'{body.split()[0]}' is read as a text, not as a list item: '-' needs a space after it",
        f"write '- {match['rest'].rstrip()}'",
        (line_no, len(line) - len(body) + 1),
    )


def explain_syntax_error(error: yaml.MarkedYAMLError, text: str) -> tuple[str, str, str, Position]:
    """(code, message, hint, position) for a PyYAML scanner, parser or composer error."""
    lines = _BREAK.split(text)
    problem, context = error.problem or "", error.context or ""
    pm, cm = error.problem_mark, error.context_mark
    at = _pos(pm) if pm else _pos(cm) if cm else (1, 1)
    row = pm.line if pm else 0
    line = lines[row] if row < len(lines) else ""

    if "'\\t'" in problem and pm is not None:  # "found character '\t' that cannot start any token"
        if line[: pm.column].strip(" \t") == "":
            return (
                "tab-indent",
                "a tab indents this line; YAML indents with spaces only",
                "replace the tab with spaces (set your editor to insert spaces for the Tab key)",
                at,
            )
        return "tab-indent", "a tab cannot separate YAML tokens here", "replace the tab with a space", at

    if context.startswith("while scanning a quoted scalar") and cm is not None:
        quote = text[cm.index] if cm.index < len(text) else '"'
        if "end of stream" in problem or "document separator" in problem:
            return (
                "yaml-syntax",
                f"the text quoted with {quote} here is never closed",
                f"add the closing {quote}",
                _pos(cm),
            )
    if "escape character" in problem:
        return (
            "yaml-syntax",
            f"unknown escape in double quotes: {problem.split('character', 1)[-1].strip()}",
            "write \\\\ for a backslash, or use single quotes, in which a backslash is plain text",
            at,
        )

    flow = re.match(r"expected ',' or '(?P<closer>[\]}])', but got (?P<found>.*)", problem)
    if flow and cm is not None:
        closer = flow["closer"]
        opener = "[" if closer == "]" else "{"
        found = _TOKENS.get(flow["found"].strip("'"), flow["found"])
        if pm is not None and pm.line == cm.line:
            start = pm.column  # back from the ':' to the start of the key it ends
            while start > 0 and line[start - 1] not in " \t,[{":
                start -= 1
            return (
                "yaml-syntax",
                f"a ',' is missing before this entry of the '{opener}' at column {cm.column + 1}",
                f"separate the entries with ', ', and close the '{opener}' with '{closer}'",
                (pm.line + 1, start + 1),
            )
        return (
            "yaml-syntax",
            f"the '{opener}' here is not closed: line {at[0]}, column {at[1]} has {found} "
            f"where ',' or '{closer}' should be",
            f"close it with '{closer}', and separate its entries with ','",
            _pos(cm),
        )

    block_end = re.match(r"expected <block end>, but found '(?P<found>.*)'", problem)
    if block_end and pm is not None:
        return _explain_block_end(block_end["found"], lines, pm, at)

    if problem == "mapping values are not allowed here" and pm is not None:
        explained = _explain_colon(lines, pm, at)
        if explained is not None:
            return explained

    if problem == "could not find expected ':'" and cm is not None:
        key_line = lines[cm.line] if cm.line < len(lines) else ""
        found = _no_space_colon(key_line, cm.line + 1) or _no_space_dash(key_line, cm.line + 1)
        if found is not None:
            return ("yaml-syntax", *found)
        return (
            "yaml-syntax",
            f"line {cm.line + 1} is neither 'key: value' nor a list item '- ...'",
            "write 'key: value' with a space after ':', or '- item' for a list item",
            _pos(cm),
        )

    if problem == "could not find expected ':'" or problem == "mapping values are not allowed here":
        pass  # explained above where recognised; otherwise the general message below
    elif problem == "sequence entries are not allowed here":
        return (
            "yaml-syntax",
            "a list item '- ' cannot start here",
            "start the list on the next line, indented ('model:' then '  - ReLU'), or write it in brackets: [ReLU]",
            at,
        )
    cannot_start = re.match(r"found character '(?P<char>.+)' that cannot start any token", problem)
    if cannot_start:
        char = cannot_start["char"]
        return (
            "yaml-syntax",
            f"'{char}' cannot start a value written without quotes",
            "quote the value ('...') if it is meant as text",
            at,
        )
    for starts, what, hint in (
        ("while scanning an alias", "'*' starts an alias and must be followed by its name", "'*'"),
        ("while scanning an anchor", "'&' starts an anchor and must be followed by its name", "'&'"),
        ("while scanning a block scalar", "'|' and '>' start a block of text on the lines below", "'|' or '>'"),
        ("while scanning a tag", "'!' starts a YAML tag (a spec needs none)", "'!'"),
        ("while parsing a tag", "'!' starts a YAML tag (a spec needs none)", "'!'"),
        ("while scanning a directive", "'%' at the start of a line is a YAML directive", "'%'"),
    ):
        if context.startswith(starts):
            return "yaml-syntax", what, f"quote the value if {hint} is meant as text", at

    if "undefined tag handle" in problem:
        return "yaml-syntax", "'!' starts a YAML tag (a spec needs none)", "quote the value if '!' is meant as text", at
    if context.startswith("while parsing a flow node") and problem.endswith(("found ','", "found ']'", "found '}'")):
        return (
            "yaml-syntax",
            "a value is missing here",
            "write the value, or remove the extra ','",
            at,
        )

    if problem.startswith("expected '<document start>'"):
        first = next(
            (j for j, text_line in enumerate(lines) if text_line.strip() and not text_line.strip().startswith("#")), 0
        )
        return (
            "yaml-syntax",
            f"this line does not line up with the spec's first line (line {first + 1}, column "
            f"{_indent(lines[first]) + 1})",
            "start every top-level key in the same column, usually column 1",
            at,
        )
    undefined = re.match(r"found undefined alias '(?P<name>.*)'", problem)
    if undefined:
        name = undefined["name"]
        return (
            "yaml-syntax",
            f"the alias '*{name}' refers to no anchor '&{name}' above it",
            f"define the anchor first ('key: &{name} ...'), or remove the '*'",
            at,
        )
    if context.startswith("expected a single document"):
        return (
            "yaml-syntax",
            "a spec is one YAML document, but '---' here starts another",
            "remove the '---' line; put each spec in a file of its own",
            at,
        )
    duplicate = re.match(r"found duplicate anchor '(?P<name>.*)'", context)
    if duplicate:
        return (
            "yaml-syntax",
            f"the anchor '&{duplicate['name']}' is defined twice (first at line {cm.line + 1 if cm else '?'})",
            "give each anchor its own name",
            at,
        )
    words = " ".join(p for p in (context, problem) if p) or "invalid YAML"
    return "yaml-syntax", f"YAML syntax error: {words}", _GENERAL_HINT, at


def _explain_block_end(found: str, lines: list[str], pm: yaml.Mark, at: Position) -> tuple[str, str, str, Position]:
    """PyYAML found a token whose indentation fits no open block."""
    if found in ("]", "}"):
        opener = "[" if found == "]" else "{"
        return "yaml-syntax", f"'{found}' closes nothing", f"remove it, or add the matching '{opener}' before it", at
    line = lines[pm.line] if pm.line < len(lines) else ""
    item = found in ("<block sequence start>", "-") or _is_item(line)
    what = "list item" if item else "key"
    above = _content_above(lines, pm.line)
    if not item and above is not None and _is_item(lines[above]) and _indent(lines[above]) == pm.column:
        return (
            "yaml-syntax",
            f"this key is in the column of the list items above it (line {above + 1})",
            "start it with '- ' to make it a list item, or move it left to the column of the key that holds the list",
            at,
        )
    sibling = _sibling_above(lines, pm.line, item)
    if sibling is not None and _indent(lines[sibling]) != pm.column:
        column = _indent(lines[sibling]) + 1
        if item:
            hint = f"line up its '-' with the one on line {sibling + 1} (column {column})"
        else:
            name = lines[sibling].strip().split(":")[0]
            hint = f"line it up with '{name}' on line {sibling + 1} (column {column})"
        return (
            "yaml-syntax",
            f"this {what} starts at column {pm.column + 1}, but the {what} above it (line {sibling + 1}) "
            f"at column {column}",
            hint + "; the entries of one list or mapping must start in the same column",
            at,
        )
    return (
        "yaml-syntax",
        f"this {what} is not lined up with the lines above it",
        "indent it with spaces like the other entries of the same list or mapping",
        at,
    )


def _explain_colon(lines: list[str], pm: yaml.Mark, at: Position) -> tuple[str, str, str, Position] | None:
    """'mapping values are not allowed here': a ':' inside what YAML reads as a plain value."""
    line = lines[pm.line] if pm.line < len(lines) else ""
    above = _content_above(lines, pm.line)
    if above is not None:
        found = _no_space_colon(lines[above], above + 1)
        if found is not None and _indent(line) >= _indent(lines[above]):
            return ("yaml-syntax", *found)
    if (
        above is not None
        and _indent(line) == _indent(lines[above])
        and ":" not in lines[above]
        and not _is_item(lines[above])
    ):
        return (
            "yaml-syntax",
            f"line {above + 1} has no ':' after its key",
            "write 'key: value' with a space after ':'",
            (above + 1, _indent(lines[above]) + 1),
        )
    before = line[: pm.column]
    if ": " in before or before.rstrip().endswith(":"):
        return (
            "yaml-syntax",
            "a value written without quotes cannot contain ': '",
            "quote the value (name: 'a: b'), or start the nested mapping on a new, indented line",
            at,
        )
    if above is not None and _indent(line) > _indent(lines[above]) and not lines[above].rstrip().endswith(":"):
        item = _is_item(line)
        what = "list item" if item else "key"
        column = _indent(lines[above]) + 1
        return (
            "yaml-syntax",
            f"this {what} is indented more than line {above + 1} above it, so YAML reads it as "
            f"part of that line's value",
            f"indent it like line {above + 1} (column {column}) if it is the next entry",
            (pm.line + 1, _indent(line) + 1),
        )
    return None


def suspicious_plain_scalar(node: yaml.ScalarNode, text: str) -> tuple[str, str, Position] | None:
    """(message, hint, position) when a plain text scalar is almost surely a YAML typo.

    Valid YAML, but not what anyone means in a spec: ``-ReLU`` (a text, not a list item),
    ``in_features:2`` (a text, not a key and value) and a list item indented deeper than
    the one above it, which YAML folds into the text before it (``ReLU - ReLU``).
    """
    start = node.start_mark
    raw_lines = _BREAK.split(text[start.index : node.end_mark.index])
    first = " " * start.column + raw_lines[0]
    found = _no_space_dash(first, start.line + 1) or _no_space_colon(first, start.line + 1)
    if found is not None:
        return found
    for offset, raw in enumerate(raw_lines[1:], 1):
        if _is_item(raw):
            column = _indent(raw) + 1
            return (
                f"this list item is indented more than line {start.line + 1} above it, so YAML reads "
                f"both as the one text {node.value!r}",
                "indent every item of a list by the same number of spaces",
                (start.line + offset + 1, column),
            )
    return None
