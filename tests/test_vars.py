"""Variables: ``vars:``, ``$`` expressions, overrides from Python and the command line."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import modelspec
from modelspec import SpecError
from modelspec._errors import Collector
from modelspec._vars import MAX_EXPRESSION, parse_override, substitute

ROOT = Path(__file__).resolve().parent.parent
HEAD = "modelspec: 1\n"


def evaluate(expression: str, **values: object) -> object:
    """The value of one expression, with ``values`` as the spec's variables."""
    errors = Collector()
    out, _ = substitute({"vars": dict(values), "model": {"x": expression}}, errors)
    if errors.errors:
        raise AssertionError(errors.errors)
    return out["model"]["x"]


def failure(expression: str, **values: object) -> str:
    """The code of the error an expression gives."""
    errors = Collector()
    substitute({"vars": dict(values), "model": {"x": expression}}, errors)
    assert len(errors.errors) == 1, errors.items
    return errors.errors[0].code


def diagnostics(text: str, **overrides: object) -> list[modelspec.Diagnostic]:
    with pytest.raises(SpecError) as info:
        modelspec.compile_spec(text, overrides=overrides or None)
    return info.value.diagnostics


# ---------------------------------------------------------------- the evaluator
@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("$d", 768),
        ("$4 * d", 3072),
        ("$(4 * d)", 3072),
        ("$d // h", 64),
        ("$d / h", 64.0),
        ("$d % 7", 768 % 7),
        ("$2 ** 10", 1024),
        ("$-d + 1", -767),
        ("$max(d, 1000)", 1000),
        ("$min(d, h, 3)", 3),
        ("$int(d / 5)", 153),
        ("$round(2.5)", 2),
        ("$abs(-3)", 3),
        ("$float(h)", 12.0),
        ("$sqrt(16)", 4.0),
        ("$ d ", 768),
    ],
)
def test_expressions_evaluate_with_integer_and_float_arithmetic(expression: str, expected: object) -> None:
    got = evaluate(expression, d=768, h=12)
    assert got == expected and type(got) is type(expected)


def test_gpt2_residual_scale_is_computed_like_python() -> None:
    assert evaluate("$0.02 / sqrt(2 * n_layer)", n_layer=12) == 0.02 / math.sqrt(24)


def test_a_variable_may_use_earlier_ones_and_a_double_dollar_is_a_literal() -> None:
    errors = Collector()
    out, values = substitute(
        {"vars": {"d": 8, "ff": "$4 * d", "head": "$ff // 2"}, "model": {"a": "$head", "b": "$$literal"}}, errors
    )
    assert not errors.items
    assert values == {"d": 8, "ff": 32, "head": 16}
    assert out["model"] == {"a": 16, "b": "$literal"}


@pytest.mark.parametrize(
    ("expression", "code"),
    [
        ("$nope", "undefined-variable"),
        ("$d / 0", "division-by-zero"),
        ("$d // 0", "division-by-zero"),
        ("$d % 0", "division-by-zero"),
        ("$2 ** 64", "overflow"),
        ("$9 ** 9 ** 9", "overflow"),  # refused before it is computed
        ("$10.0 ** 400", "overflow"),
        ("$d * 1e308 * 10", "overflow"),
        ("$sqrt(-1)", "math-error"),
        ("$name + 1", "wrong-type"),  # a string in arithmetic
        ("$flag * 2", "wrong-type"),  # a boolean is not a number
        ("$d.real", "bad-expression"),
        ("$__import__('os').system('echo hacked')", "bad-expression"),
        ("$open('/etc/passwd')", "bad-expression"),
        ("$[d][0]", "bad-expression"),
        ("$(lambda: 1)()", "bad-expression"),
        ("$d if d else 1", "bad-expression"),
        ("$d > 1", "bad-expression"),
        ("$'text'", "bad-expression"),
        ("$min(d)", "bad-expression"),
        ("$sqrt", "bad-expression"),
        ("$4 *", "bad-expression"),
        ("$" + "1 + " * MAX_EXPRESSION + "1", "bad-expression"),
    ],
)
def test_bad_expressions_are_errors_not_exceptions(expression: str, code: str) -> None:
    assert failure(expression, d=8, name="x", flag=True) == code


def test_an_expression_never_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "hacked"
    text = HEAD + f"model:\n  - {{Linear: [\"$__import__('os').system('touch {marker}')\", 2]}}\n"
    assert [d.code for d in diagnostics(text)] == ["bad-expression"]
    assert not marker.exists()


def test_errors_point_at_the_expression_with_file_line_and_column() -> None:
    text = HEAD + "vars: {d_model: 8}\nmodel:\n  - {Linear: [$d_modle, $(d_model / 0)]}\n"
    found = diagnostics(text)
    assert [(d.code, d.line, d.column, d.path) for d in found] == [
        ("undefined-variable", 4, 16, ("model", 0, "Linear", 0)),  # at the name, after the '$'
        ("division-by-zero", 4, 27, ("model", 0, "Linear", 1)),  # at the division, inside the parentheses
    ]
    assert "did you mean 'd_model'" in (found[0].hint or "")


def test_only_values_are_expressions_not_keys_names_or_descriptions() -> None:
    text = HEAD + "name: $x\ndescription: $5 model\nvars: {d: 4}\nmodel: {$net: {Linear: [$d, 2]}}\n"
    spec = modelspec.compile_spec(text.replace("{$net:", "{net:")).spec
    assert spec.name == "$x" and spec.description == "$5 model"


# ---------------------------------------------------------------- overrides
SPEC = HEAD + (
    "vars: {d_model: 8, d_ff: $4 * d_model, n_layer: 2, act: relu, dropout: 0.0}\n"
    "model:\n"
    "  - {repeat: $n_layer, of: [{Linear: [$d_model, $d_ff]}, ReLU, {Linear: [$d_ff, $d_model]}]}\n"
    "  - {Dropout: $dropout}\n"
)


def test_overrides_from_python_change_the_model_and_dependent_variables_follow() -> None:
    base = modelspec.build(SPEC)
    assert len(base[0]) == 2 and base[0][0][0].weight.shape == (32, 8)
    bigger = modelspec.build(SPEC, overrides={"d_model": 16}, n_layer=3)  # a dict and keywords
    assert len(bigger[0]) == 3
    assert bigger[0][2][0].weight.shape == (64, 16)  # d_ff = 4 * d_model followed the override
    assert modelspec.build(SPEC, dropout=0.5)[1].p == 0.5  # an integer-valued float is fine too


def test_the_hash_and_the_recorded_values_change_with_the_overrides() -> None:
    a = modelspec.compile_spec(SPEC).spec
    b = modelspec.compile_spec(SPEC, overrides={"n_layer": 3}).spec
    assert a.sha256 != b.sha256
    assert b.vars == {"d_model": 8, "d_ff": 32, "n_layer": 3, "act": "relu", "dropout": 0.0}
    assert modelspec.compile_spec(SPEC, overrides={"n_layer": 2}).spec.sha256 == a.sha256


def test_an_unknown_override_is_an_error_with_did_you_mean() -> None:
    (d,) = diagnostics(SPEC, n_layers=3)
    assert d.code == "unknown-variable" and "did you mean 'n_layer'" in (d.hint or "")
    assert d.line == 2  # the spec's 'vars:'


@pytest.mark.parametrize(
    ("name", "value"), [("n_layer", 2.5), ("n_layer", "three"), ("n_layer", True), ("dropout", "x"), ("act", 1)]
)
def test_an_override_keeps_the_variables_type(name: str, value: object) -> None:
    (d,) = diagnostics(SPEC, **{name: value})
    assert d.code == "wrong-type" and d.path == ("vars", name)


def test_an_override_that_no_expression_reads_is_a_warning() -> None:
    text = HEAD + "vars: {unused: 1, d: 2}\nmodel: {Linear: [$d, 2]}\n"
    spec = modelspec.compile_spec(text, overrides={"unused": 3}).spec
    assert [w.code for w in spec.warnings] == ["unused-variable"]
    assert not modelspec.compile_spec(text, overrides={"d": 3}).spec.warnings
    chained = HEAD + "vars: {d: 2, ff: $4 * d, spare: $d + 1}\nmodel: {Linear: [$ff, 2]}\n"
    assert not modelspec.compile_spec(chained, overrides={"d": 3}).spec.warnings  # read through ff
    assert [w.code for w in modelspec.compile_spec(chained, overrides={"spare": 1}).spec.warnings] == [
        "unused-variable"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("d_model=512", ("d_model", 512)),
        ("p=0.1", ("p", 0.1)),
        ("flag=true", ("flag", True)),
        ("act=gelu", ("act", "gelu")),
        ("d_ff=$4 * d_model", ("d_ff", "$4 * d_model")),
    ],
)
def test_command_line_values_are_read_as_yaml_scalars(text: str, expected: tuple[str, object]) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["d_model", "=3", "1x=3", "d="])
def test_malformed_command_line_overrides_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_override(text)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "modelspec", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_set_on_the_command_line_builds_and_records_the_values(tmp_path: Path) -> None:
    spec = tmp_path / "net.yaml"
    spec.write_text(SPEC)
    done = _cli("build", str(spec), "-o", "out", "--set", "n_layer=3", "d_model=4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "out" / "spec.yaml").read_text()
    assert "n_layer: 3" in written and "d_ff: 16" in written
    model = modelspec.load(tmp_path / "out")  # the folder's spec reproduces the build
    assert len(model[0]) == 3 and model[0][0][0].weight.shape == (16, 4)
    torch.testing.assert_close(
        model.state_dict(), modelspec.build(SPEC, n_layer=3, d_model=4).state_dict(), rtol=0, atol=0
    )
    for command in ("validate", "report", "graph"):
        done = _cli(command, str(spec), "--set", "n_layer=1", cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)


def test_bad_overrides_on_the_command_line_exit_2_and_write_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "net.yaml"
    spec.write_text(SPEC)
    done = _cli("build", str(spec), "-o", "out", "--set", "n_layr=3", cwd=tmp_path)
    assert done.returncode == 2
    assert "error[unknown-variable]" in done.stderr and "did you mean 'n_layer'" in done.stderr
    assert not (tmp_path / "out").exists()
    done = _cli("build", str(spec), "--set", "n_layer", cwd=tmp_path)
    assert done.returncode == 2 and "NAME=VALUE" in done.stderr
    done = _cli("build", str(spec), "-o", "out2", cwd=tmp_path)
    assert done.returncode == 0
    done = _cli("report", "out2", "--set", "n_layer=3", cwd=tmp_path)
    assert done.returncode == 2 and "for a spec only" in done.stderr


# ---------------------------------------------------------------- properties of the evaluator
_NUMBERS = st.one_of(st.integers(-(2**64), 2**64), st.floats(allow_nan=False, allow_infinity=False, width=64))
_OPS = ("+", "-", "*", "/", "//", "%", "**")
Tree = tuple  # ("num", value) | ("var", name) | ("neg", tree) | (op, left, right)


@st.composite
def _arithmetic(draw: st.DrawFn, depth: int = 3) -> Tree:
    """Random arithmetic over numbers and the variables a, b."""
    if depth == 0 or draw(st.booleans()):
        return draw(st.one_of(st.sampled_from([("var", "a"), ("var", "b")]), _NUMBERS.map(lambda v: ("num", v))))
    if draw(st.integers(0, 4)) == 0:
        return ("neg", draw(_arithmetic(depth - 1)))
    return (draw(st.sampled_from(_OPS)), draw(_arithmetic(depth - 1)), draw(_arithmetic(depth - 1)))


def _text(tree: Tree) -> str:
    if tree[0] == "num":
        return repr(tree[1])
    if tree[0] == "var":
        return tree[1]
    if tree[0] == "neg":
        return f"-({_text(tree[1])})"
    return f"({_text(tree[1])}) {tree[0]} ({_text(tree[2])})"


class _Refused(Exception):
    pass


def _oracle(tree: Tree, env: dict[str, object]) -> object:
    """Python's own arithmetic, with the rule the evaluator adds: every value on the way fits
    in a 64-bit integer or is a finite float (powers that could not are refused up front)."""
    if tree[0] == "num":
        value = tree[1]
    elif tree[0] == "var":
        value = env[tree[1]]
    elif tree[0] == "neg":
        value = -_oracle(tree[1], env)  # type: ignore[operator]
    else:
        a, b = _oracle(tree[1], env), _oracle(tree[2], env)
        if tree[0] == "**" and isinstance(a, int) and isinstance(b, int) and b > 64 and abs(a) > 1:
            raise _Refused
        try:
            value = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,  # type: ignore[operator]
                     "//": lambda: a // b, "%": lambda: a % b, "**": lambda: a**b}[tree[0]]()  # type: ignore[operator]  # fmt: skip
        except (ZeroDivisionError, OverflowError, ValueError) as e:
            raise _Refused from e
    if isinstance(value, complex) or (isinstance(value, int) and not -(2**63) <= value < 2**63):
        raise _Refused
    if isinstance(value, float) and not math.isfinite(value):
        raise _Refused
    return value


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(_arithmetic(), st.integers(-1000, 1000), st.floats(-1e6, 1e6))
def test_arithmetic_agrees_with_python_or_is_a_stated_error(tree: Tree, a: int, b: float) -> None:
    errors = Collector()
    out, _ = substitute({"vars": {"a": a, "b": b}, "model": {"x": "$" + _text(tree)}}, errors)
    try:
        expected = _oracle(tree, {"a": a, "b": b})
    except _Refused:
        assert [d.code for d in errors.errors] in (["division-by-zero"], ["overflow"], ["math-error"]), errors.items
        return
    assert not errors.items, (tree, errors.items)
    got = out["model"]["x"]
    assert type(got) is type(expected) and got == expected, (_text(tree), got, expected)


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(st.text(max_size=60))
def test_any_text_after_a_dollar_is_a_value_or_a_diagnostic(text: str) -> None:
    errors = Collector()
    substitute({"vars": {"a": 1}, "model": {"x": "$" + text}}, errors)
    assert all(d.code in ("undefined-variable", "bad-expression", "wrong-type", "division-by-zero", "overflow",
                          "math-error") for d in errors.items)  # fmt: skip
