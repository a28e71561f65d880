"""Variables: named values, ``$``-expressions over them, and overrides.

A spec may declare ``vars:`` at the top level::

    vars:
      d_model: 768
      n_head: 12
      head_dim: $d_model // n_head      # a later variable may use earlier ones

Anywhere a *value* appears (layer and op arguments, shapes, repeat counts, init
arguments, ...), a string that starts with ``$`` is an expression: ``$d_model``,
``$(4 * d_model)``, ``$0.02 / sqrt(2 * n_layer)``. ``$$`` starts a string that begins
with a literal ``$``. Mapping keys, ``name`` and ``description`` are never expressions.

Expressions are evaluated by a small interpreter over Python's expression syntax
(:func:`ast.parse` only parses; nothing is executed): numbers, variable names, ``+ - *
/ // % **``, unary ``-``/``+``, parentheses and the functions in :data:`FUNCTIONS`. No
attribute access, subscripts, other calls, comprehensions or strings in arithmetic.
Integers stay integers (``//``, ``%``); ``/`` gives a float. Results must fit in 64 bits
(integers) or be finite (floats).

:func:`substitute` runs on the plain data *before* the grammar parses it, so the rest of
modelspec sees ordinary numbers; positions are kept, so an error in a substituted value
is reported at the ``$`` scalar. Overrides (``--set d_model=512``, ``overrides=`` in
Python) replace a variable's definition before anything is evaluated, so variables
defined from it follow.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import Collector, SpecPath, did_you_mean
from ._nodes import kind_of
from ._yaml_scalars import construct, resolve_plain

__all__ = ["FUNCTIONS", "MAX_EXPRESSION", "Variables", "parse_override", "substitute"]

#: Longest expression accepted (characters): an expression is a formula, not a program.
MAX_EXPRESSION = 500
_INT_LIMIT = 2**63  # integers must fit int64, as tensor sizes do
_NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"


def _sqrt(x: float) -> float:
    if x < 0:
        raise _EvalError("math-error", f"sqrt of a negative number ({_show(x)})")
    return math.sqrt(x)


def _to_int(x: float) -> int:
    if isinstance(x, float) and not math.isfinite(x):
        raise _EvalError("overflow", f"int({_show(x)}) has no integer value")
    return int(x)


def _round(x: float, digits: int | None = None) -> float:
    return round(x) if digits is None else round(x, digits)


#: The functions an expression may call, with how many arguments each takes.
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "min": (min, 2, 16),
    "max": (max, 2, 16),
    "abs": (abs, 1, 1),
    "sqrt": (_sqrt, 1, 1),
    "int": (_to_int, 1, 1),
    "float": (float, 1, 1),
    "round": (_round, 1, 2),
}
_BINARY: dict[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", lambda a, b: a + b),
    ast.Sub: ("-", lambda a, b: a - b),
    ast.Mult: ("*", lambda a, b: a * b),
    ast.Div: ("/", lambda a, b: a / b),
    ast.FloorDiv: ("//", lambda a, b: a // b),
    ast.Mod: ("%", lambda a, b: a % b),
    ast.Pow: ("**", lambda a, b: a**b),
}


class _EvalError(Exception):
    def __init__(self, code: str, message: str, hint: str | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.hint, self.offset = code, message, hint, offset


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _number(value: Any, what: str, offset: int | None) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _EvalError("wrong-type", f"{what} must be a number, got {kind_of(value)} {_show(value)}", offset=offset)
    return value


def _checked(value: Any, offset: int | None) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT_LIMIT <= value < _INT_LIMIT:
        raise _EvalError("overflow", "the result does not fit in a 64-bit integer", offset=offset)
    if isinstance(value, float) and not math.isfinite(value):
        raise _EvalError("overflow", f"the result is not a finite number ({value})", offset=offset)
    return value


def _power(a: int | float, b: int | float, offset: int | None) -> int | float:
    """``a ** b`` without computing a huge integer first (``9 ** 9 ** 9``)."""
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1 and b * (abs(a).bit_length() - 1) > 64:
        raise _EvalError("overflow", "the result does not fit in a 64-bit integer", offset=offset)
    if a == 0 and b < 0:
        raise _EvalError("division-by-zero", "0 to a negative power", offset=offset)
    try:
        result = a**b
    except OverflowError as e:
        raise _EvalError("overflow", "the result is too large for a float", offset=offset) from e
    if isinstance(result, complex):
        raise _EvalError("math-error", f"{_show(a)} ** {_show(b)} is not a real number", offset=offset)
    return result


@dataclass
class Variables:
    """Defined variables (name -> value, in definition order) and which were read."""

    values: dict[str, Any] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    def evaluate(self, text: str) -> Any:
        """The value of the expression ``text`` (without its ``$``); raises _EvalError."""
        if len(text) > MAX_EXPRESSION:
            raise _EvalError("bad-expression", f"the expression is longer than {MAX_EXPRESSION} characters")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as e:
            raise _EvalError(
                "bad-expression",
                f"cannot read the expression: {e.msg}",
                hint="e.g. '$d_model', '$(4 * d_model)' or '$d_model // n_head'; quote it if it has a comma",
                offset=(e.offset - 1) if e.offset else None,
            ) from None
        lead = len(text) - len(text.lstrip())
        return self._eval(tree.body, lead)

    def _eval(self, node: ast.expr, lead: int) -> Any:
        at = lead + node.col_offset if node.lineno == 1 else None
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return _checked(node.value, at)
        if isinstance(node, ast.Name):
            if node.id not in self.values:
                if node.id in FUNCTIONS:
                    raise _EvalError("bad-expression", f"'{node.id}' is a function: call it, e.g. '{node.id}(...)'",
                                     offset=at)  # fmt: skip
                known = list(self.values)
                raise _EvalError(
                    "undefined-variable",
                    f"undefined variable '{node.id}'",
                    hint=did_you_mean(node.id, known)
                    or (f"defined: {', '.join(known)}" if known else "declare it under 'vars:'"),
                    offset=at,
                )
            self.used.add(node.id)
            return self.values[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = _number(self._eval(node.operand, lead), "the operand of unary minus", at)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            symbol, apply = _BINARY[type(node.op)]
            a = _number(self._eval(node.left, lead), f"the left side of '{symbol}'", at)
            b = _number(self._eval(node.right, lead), f"the right side of '{symbol}'", at)
            if symbol in ("/", "//", "%") and b == 0:
                raise _EvalError("division-by-zero", f"division by zero ('{symbol}')", offset=at)
            if symbol == "**":
                return _checked(_power(a, b, at), at)
            try:
                return _checked(apply(a, b), at)
            except OverflowError as e:
                raise _EvalError("overflow", "the result is too large for a float", offset=at) from e
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
            name = node.func.id
            fn, low, high = FUNCTIONS[name]
            if node.keywords or not low <= len(node.args) <= high:
                takes = f"{low}" if low == high else f"{low} to {high}"
                raise _EvalError("bad-expression", f"{name}() takes {takes} argument(s) and no keywords", offset=at)
            args = [_number(self._eval(a, lead), f"the argument of {name}()", at) for a in node.args]
            try:
                return _checked(fn(*args), at)
            except (OverflowError, ValueError) as e:
                raise _EvalError("overflow", f"{name}() failed: {e}", offset=at) from e
        raise _EvalError("bad-expression", _refusal(node), hint="expressions use numbers, variable names, "
                         f"+ - * / // % ** and {', '.join(FUNCTIONS)}", offset=at)  # fmt: skip


def _refusal(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return "attribute access ('a.b') is not allowed in an expression"
    if isinstance(node, ast.Call):
        return "only these functions can be called: " + ", ".join(FUNCTIONS)
    if isinstance(node, ast.Constant):
        return f"{kind_of(node.value)} literal cannot be used in an expression; use a variable or write the value"
    if isinstance(node, ast.Compare | ast.BoolOp | ast.IfExp):
        return "comparisons and conditions are not allowed in an expression"
    return f"'{type(node).__name__}' is not allowed in an expression"


def parse_override(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` from the command line -> (name, value); the value is read as a YAML
    1.2 scalar (``512`` an integer, ``0.1`` a float, ``true`` a boolean, else a string;
    ``$...`` an expression). Raises ValueError with the reason."""
    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip()
    if not sep or not name:
        raise ValueError(f"{text!r} is not NAME=VALUE (e.g. --set d_model=512)")
    if not (name[0] in _NAME_START and name.replace("_", "a").isalnum() and name.isascii()):
        raise ValueError(f"{name!r} is not a variable name")
    if not raw:
        raise ValueError(f"--set {name}= has no value")
    value = construct(resolve_plain(raw), raw)
    if value is None or type(value) is object:  # null, or ambiguous under YAML 1.1: keep the text
        value = raw
    return name, value


# ---------------------------------------------------------------- the pass over a spec
_SKIP = frozenset({"name", "description", "vars", "modelspec"})


def substitute(
    data: dict[str, Any], errors: Collector, overrides: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate ``vars:`` (after ``overrides``) and replace every ``$`` expression in
    ``data``. Returns (the substituted data, the variables' final values); problems go
    to ``errors`` at the path and position of the scalar."""
    variables = Variables()
    raw_vars = data.get("vars", {})
    if raw_vars is None:
        raw_vars = {}
    if not isinstance(raw_vars, dict):
        errors.add("wrong-type", f"'vars' maps names to values, got {kind_of(raw_vars)}", ("vars",),
                   hint="e.g. 'vars: {d_model: 768, n_head: 12}'")  # fmt: skip
        raw_vars = {}
    overrides = dict(overrides or {})
    for name in overrides:
        if name not in raw_vars:
            errors.add(
                "unknown-variable",
                f"override '{name}' names no variable of the spec",
                ("vars",) if "vars" in data else (),
                hint=did_you_mean(name, list(raw_vars))
                or (f"variables: {', '.join(raw_vars)}" if raw_vars else "the spec declares no 'vars:'"),
            )
    reads: dict[str, set[str]] = {}  # variable -> the variables its definition read
    for name, raw in raw_vars.items():
        path: SpecPath = ("vars", name)
        if not isinstance(name, str) or not name.isidentifier() or not name.isascii():
            errors.add("bad-name", f"{name!r} is not a variable name", path, hint="e.g. 'd_model'")
            continue
        if name in FUNCTIONS:
            errors.add("bad-name", f"'{name}' is a function of expressions and cannot name a variable", path)
            continue
        given = name in overrides
        value = overrides[name] if given else raw
        where = "--set " + name if given else None
        variables.used = set()
        result = _value(value, path, variables, errors, where)
        reads[name] = variables.used
        if result is _FAILED:
            continue
        if given:
            default = _value(raw, path, Variables(dict(variables.values)), Collector(), None)
            problem = _type_change(default, result)
            if problem:
                errors.add(
                    "wrong-type",
                    f"override '{name}': {problem}",
                    path,
                    hint=f"give {_type_name(default)}, e.g. --set {name}={_show(default)}",
                )
                result = default  # fmt: skip
        if isinstance(result, (list, dict)) or result is None:
            errors.add("wrong-type", f"a variable holds a number, a boolean or a string, got {kind_of(result)}", path)
            continue
        variables.values[name] = result
    variables.used = set()  # uses inside 'vars' do not count
    out = {k: (v if k in _SKIP else _walk(v, (k,), variables, errors)) for k, v in data.items()}
    for name in overrides:
        if name in variables.values and not _reaches(name, variables.used, reads):
            errors.add("unused-variable", f"override '{name}' changes nothing: no expression uses the variable",
                       ("vars", name), severity="warning")  # fmt: skip
    return out, dict(variables.values)


_FAILED = object()


def _value(raw: Any, path: SpecPath, variables: Variables, errors: Collector, where: str | None) -> Any:
    if isinstance(raw, str) and raw.startswith("$") and not raw.startswith("$$"):
        try:
            return variables.evaluate(raw[1:])
        except _EvalError as e:
            _report(e, raw, path, errors, where)
            return _FAILED
    if isinstance(raw, str) and raw.startswith("$$"):
        return raw[1:]
    return raw


def _report(e: _EvalError, raw: str, path: SpecPath, errors: Collector, where: str | None) -> None:
    shown = f"'{raw}'" if len(raw) <= 60 else f"'{raw[:57]}...'"
    message = f"{e.message} (in {shown}" + (f", from {where})" if where else ")")
    at = None
    if where is None and e.offset is not None:
        line, column = errors.position(path)
        if line is not None and column is not None and path in errors.positions:
            at = (line, column + 1 + e.offset)  # the '$', then the offending part (plain scalars)
    errors.add(e.code, message, path, hint=e.hint, at=at)


def _walk(value: Any, path: SpecPath, variables: Variables, errors: Collector) -> Any:
    if isinstance(value, dict):
        return {k: _walk(v, (*path, k), variables, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, (*path, i), variables, errors) for i, v in enumerate(value)]
    if isinstance(value, str) and value.startswith("$"):
        result = _value(value, path, variables, errors, None)
        return None if result is _FAILED else result
    return value


def _type_change(default: Any, new: Any) -> str | None:
    """Why ``new`` cannot replace a variable whose value was ``default`` (or None)."""
    if default is _FAILED:
        return None
    if isinstance(default, bool) or isinstance(new, bool):
        same = isinstance(default, bool) and isinstance(new, bool)
    elif isinstance(default, int):
        same = isinstance(new, int)
    elif isinstance(default, float):
        same = isinstance(new, (int, float))
    else:
        same = type(new) is type(default)
    if same:
        return None
    return f"the variable is {_type_name(default)} ({_show(default)}), got {_type_name(new)} {_show(new)}"


def _type_name(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return "an integer"
    return "a float" if isinstance(value, float) else kind_of(value)


def _reaches(name: str, used: set[str], reads: dict[str, set[str]]) -> bool:
    """Whether the spec's expressions read ``name``, directly or through variables defined from it."""
    feeding = {name}
    for other, read in reads.items():  # definition order: a variable reads only earlier ones
        if read & feeding:
            feeding.add(other)
    return bool(feeding & used)
