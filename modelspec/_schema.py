"""JSON Schemas generated from the pydantic models (and, for layers, the registry).

``schemas/modelspec.schema.json`` lets editors complete and check specs: layer names,
and each layer's argument names and types. ``schemas/report.schema.json`` describes
``report.json``. Both are committed; a test fails when they drift from the code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ._files import make_folder
from ._grammar import NODE_MARKER, SpecFile
from ._inventory import Report
from ._nodes import RESERVED, schema_defs
from ._outfile import check_output_file, write_output_file
from ._spec import _NAME, RESERVED_MODEL_NAMES

__all__ = ["SCHEMA_FILES", "render_schemas", "report_schema", "spec_schema"]

_BASE = "https://github.com/modelspec/modelspec/schemas/"
SCHEMA_FILES = ("modelspec.schema.json", "report.schema.json")
_EXPRESSION = r"^\$(?!\$)"  # a '$' expression over the spec's vars (not '$$', an escaped '$')


def _link_nodes(value: Any) -> Any:
    """Replace the node marker left by ``SpecFile`` with a reference to ``#/$defs/Node``."""
    if isinstance(value, dict):
        if value.get(NODE_MARKER):
            return {"$ref": "#/$defs/Node"}
        return {k: _link_nodes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_link_nodes(v) for v in value]
    return value


def spec_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file."""
    schema = _link_nodes(SpecFile.model_json_schema())
    models = next(s for s in schema["properties"]["models"]["anyOf"] if s.get("type") == "object")
    taken = sorted(n for n in {*RESERVED, *RESERVED_MODEL_NAMES} if re.match(_NAME, n))
    models["propertyNames"] = {"pattern": _NAME, "not": {"enum": taken}}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = _BASE + SCHEMA_FILES[0]
    schema.setdefault("$defs", {}).update(schema_defs())
    fixed = {k: schema["properties"].pop(k) for k in ("modelspec", "name", "description")}
    schema = _expressions(schema)
    schema["properties"].update(fixed)  # never expressions
    schema["properties"]["vars"] = {
        "type": "object",
        "description": "variables: name -> number, boolean, string or an expression over earlier ones; "
        "'$name' or '$(expression)' uses them anywhere a value goes; override with --set NAME=VALUE",
        "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "additionalProperties": {"type": ["number", "boolean", "string"]},
    }
    schema["$defs"]["Expression"] = {
        "type": "string",
        "pattern": _EXPRESSION,
        "description": "an expression over the spec's vars, e.g. $d_model, $(4 * d_model), $d_model // n_head",
    }
    return schema


def _expressions(value: Any) -> Any:
    """Let every number, boolean and enumerated non-string value also be a ``$``
    expression (strings already are): variables are substituted before a spec is checked.
    (An expression where the schema lists the strings allowed is flagged by an editor,
    not by modelspec.)"""
    if isinstance(value, dict):
        kind = value.get("type")
        kinds = set(kind) if isinstance(kind, list) else {kind}
        scalar = bool(kinds & {"integer", "number", "boolean"}) and "string" not in kinds
        if ("enum" in value or "const" in value) and "string" not in kinds:
            return {"anyOf": [value, {"$ref": "#/$defs/Expression"}]}
        if scalar and "pattern" not in value:  # 'pattern' applies to strings only: compact and exact
            return {**value, "type": [*sorted(kinds - {None}), "string"], "pattern": _EXPRESSION}
        return {k: v if k in ("propertyNames", "required") else _expressions(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expressions(v) for v in value]
    return value


def report_schema() -> dict[str, Any]:
    """The JSON Schema of ``report.json``."""
    schema = Report.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = _BASE + SCHEMA_FILES[1]
    return schema


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _dump(schema: dict[str, Any]) -> str:
    """Keys sorted, except that ``$schema`` and ``$id`` come first: they say what the file is
    within its first lines (``schema -o`` recognises its own files by them)."""
    head = {k: schema[k] for k in ("$schema", "$id")}
    return json.dumps({**head, **_sorted({k: v for k, v in schema.items() if k not in head})}, indent=2) + "\n"


def render_schemas() -> dict[str, str]:
    """File name -> text, exactly as committed under ``schemas/``."""
    return {SCHEMA_FILES[0]: _dump(spec_schema()), SCHEMA_FILES[1]: _dump(report_schema())}


def write_schemas(folder: Path, *, force: bool = False) -> list[Path]:
    """Write both schemas into ``folder``; each file there must be absent, empty or a modelspec schema.

    Raises:
        BuildDirError: ``in-the-way`` (a file there that modelspec did not write, unless
            ``force``; nothing is written), ``not-a-file``, ``not-a-folder``.
    """
    make_folder(folder)
    texts = render_schemas()
    for name in texts:  # all checked before either is written
        check_output_file(folder / name, force=force)
    return [write_output_file(folder / name, text, force=force) for name, text in texts.items()]
