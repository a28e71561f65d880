"""Validation's own cost: the plain-Python checks agree with pydantic, and do the work once.

Validating a spec checks every argument against its parameter's annotation. pydantic (strict,
from JSON) is the reference; the registry answers the common cases itself and must never give
another answer than pydantic would (a value, its type, or a refusal).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from modelspec import _ops
from modelspec import _registry as registry
from modelspec._validate import validate

SAMPLES = [0, 1, -1, 3, 7, 2.5, 0.0, 1.0, -0.5, 1e-5, True, False, None, "", "relu", "gelu", "same", "valid",
           "zeros", "mean", "sum", "none", "bilinear", "\u00e9", [], [1, 2], [3, 3], [1, 2, 3], [0, 1, 2, 3], [1.5, 2],
           [1, 2.0], [1, None], [True], [None], ["a"], [[1, 2]], (1, 2), {"a": 1}, 2**60, 2**70, -(2**70),
           float("nan"), float("inf")]  # fmt: skip


def _params() -> list[registry.Param]:
    params = [p for name in registry.layer_names() for p in registry.get_layer(name).params]  # type: ignore[union-attr]
    return params + [p for op in _ops.OPS.values() for p in op.params]


def _same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))  # type: ignore[arg-type]


def test_quick_check_agrees_with_pydantic_for_every_parameter() -> None:
    answered = 0
    for p in _params():
        if not p.writable:
            continue
        for value in SAMPLES:
            quick = registry._quick(p.annotation, value) if registry._plain_annotation(p.annotation) else None
            if quick is None or quick is registry._UNSURE:
                continue
            answered += 1
            assert p.adapter is not None
            try:
                expected = p.adapter.validate_json(json.dumps(value), strict=True)
            except pydantic.ValidationError:
                assert quick is registry._REJECT, (p, value, quick)
                continue
            assert quick is not registry._REJECT, (p, value, expected)
            assert _same(quick, expected), (p, value, quick, expected)
    assert answered > 10_000  # most parameters are plain: the check must cover them


@pytest.mark.parametrize(
    ("annotation", "value"),
    [(int, 2**60), (float, float("nan")), (str, "\ud800"), (int | float, 3), (float | int, 1)],
)
def test_unsure_cases_are_left_to_pydantic(annotation: object, value: object) -> None:
    # big integers, nan, text JSON cannot carry, and unions that two members accept
    assert registry._quick(annotation, value) is registry._UNSURE


def _deep(layers: int) -> str:
    lines = ["modelspec: 1", "name: deep", "input: {shape: [2, 64]}", "model:"]
    lines += ["  - Linear: {in_features: 64, out_features: 64}" if i % 2 == 0 else "  - ReLU" for i in range(layers)]
    return "\n".join(lines) + "\n"


def test_valid_arguments_do_not_go_through_pydantic(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = pydantic.TypeAdapter.validate_json

    def counted(self: pydantic.TypeAdapter[object], *args: object, **kwargs: object) -> object:
        calls.append(args)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pydantic.TypeAdapter, "validate_json", counted)
    validate(_deep(200))
    assert calls == []


# ---------------------------------------------------------------- the grammar outside nodes
INPUTS = [{"shape": [2, 4]}, {"shape": [1], "dtype": "int64"}, {"shape": []}, {"shape": [0]}, {"shape": [2, True]},
          {"shape": [2.0]}, {"shape": (2, 4)}, {"shape": [2], "dtype": "float"}, {"shape": [2], "dtype": None},
          {"shape": [2], "extra": 1}, {"dtype": "float32"}, {}, None, [2, 4], "x", {"shape": [2**70]}]  # fmt: skip
TENSORS = [{"shape": [1]}, {"shape": []}, {"shape": [0, 3], "dtype": "int8"}, {"shape": [1], "init": "ones"},
           {"shape": [1], "init": "twos"}, {"shape": [1], "init": {"normal": {"std": 0.02}}},
           {"shape": [1], "init": {"uniform": {"low": -1}}}, {"shape": [1], "persistent": False},
           {"shape": [1], "persistent": 0}, {"shape": [-1]}, {"shape": [1], "dtype": "bool"}, {"shape": "1"},
           {"shape": [1], "init": None}, {"shape": [1], "size": 1}, None]  # fmt: skip


@pytest.mark.parametrize("raw", INPUTS)
def test_quick_input_agrees_with_the_grammar(raw: object) -> None:
    from modelspec import _grammar, _nodes

    quick = _nodes.quick_input(raw)
    try:
        expected = _nodes.InputSpec(**_grammar.InputSpec.model_validate(raw).model_dump())
    except pydantic.ValidationError:
        assert quick is None
        return
    assert quick is None or quick == expected


@pytest.mark.parametrize("raw", TENSORS)
def test_quick_tensor_agrees_with_the_grammar(raw: object) -> None:
    from modelspec import _grammar, _nodes

    quick = _nodes._quick_tensor(raw)
    try:
        expected = _nodes.TensorSpec(**_grammar.TensorSpec.model_validate(raw).model_dump())
    except pydantic.ValidationError:
        assert quick is None
        return
    assert quick is None or quick == expected
    assert expected.to_data() == _grammar.TensorSpec.model_validate(raw).model_dump()


TOPS = [{}, {"name": "x", "description": "d", "seed": 3}, {"seed": 2**64 - 1}, {"seed": 2**64}, {"seed": -1},
        {"seed": True}, {"seed": 1.0}, {"name": 1}, {"name": None}, {"vars": {"a": 1}}, {"vars": None},
        {"blocks": {"enc": "ReLU"}}, {"blocks": {"Enc_1": None}}, {"blocks": {"1enc": "ReLU"}},
        {"blocks": {"enc\n": "ReLU"}}, {"blocks": None}, {"models": None}, {"models": {"a": "ReLU"}},
        {"models": {"a-b": "ReLU"}}, {"ties": []}, {"ties": [{"param": "a.weight", "to": "b.weight"}]},
        {"input": {"shape": [2, 4]}}, {"input": {"shape": [2, 4], "dtype": "int4"}}, {"input": None},
        {"ties": [{"param": "a.0.weight", "to": "b.weight", "transposed": True}, {"param": "c", "to": "d"}]},
        {"ties": [{"param": "a.weight", "to": "b.weight", "transposed": 1}]}, {"ties": [{"param": "a.weight"}]},
        {"ties": [{"param": "a..weight", "to": "b"}]}, {"ties": [{"param": "a.weight\n", "to": "b"}]},
        {"ties": [{"param": "a-b", "to": "b"}]}, {"ties": [{"param": "a", "to": "b", "kind": "same"}]},
        {"ties": [{"param": 1, "to": "b"}]}, {"ties": [None]}, {"ties": None}, {"ties": {"param": "a", "to": "b"}},
        {"ties": [{"param": "é", "to": "b"}]}]  # fmt: skip


@pytest.mark.parametrize("extra", TOPS)
def test_quick_top_level_agrees_with_the_grammar(extra: dict[str, object]) -> None:
    from modelspec import _errors, _spec

    known = {"modelspec": 1, "model": "ReLU", **extra}
    quick = _spec._quick_top(known)
    errors = _errors.Collector(file="<spec>")
    checked = _spec._checked_top(known, errors)
    assert (checked is None) == bool(errors.items)
    if checked is None:
        assert quick is None
    else:
        assert quick is None or quick == checked
        if extra.get("ties") and all(type(t) is dict and "kind" not in t for t in extra["ties"]):  # type: ignore[attr-defined]
            assert quick is not None  # plainly valid ties are taken without pydantic


def test_top_level_keys_are_the_grammars() -> None:
    from modelspec._grammar import SpecFile
    from modelspec._spec import TOP_KEYS

    assert tuple(SpecFile.model_fields) == TOP_KEYS


# ---------------------------------------------------------------- a whole validate process
ROOT = Path(__file__).resolve().parent.parent


def test_validating_any_bundled_spec_imports_neither_torch_nor_pydantic() -> None:
    # ties, trainable and init rules are checked on the torch-free skeleton (test_validate_tiefree),
    # and plainly valid values without pydantic (here and test_init_quick)
    specs = sorted((ROOT / "specs").rglob("*.yaml"))
    assert {s.stem for s in specs} >= {"gpt2", "bert", "tied_autoencoder", "resnet18", "llama3_70b"}
    code = (
        "import sys\nfrom modelspec.cli import main\n"
        f"for spec in {[str(s) for s in specs]!r}:\n"
        "    assert main(['validate', spec]) == 0, spec\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'pydantic', 'pydantic_core'}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MODELSPEC_NO_CACHE"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_free_tensor_drawn_at_random_keeps_its_init(tmp_path: Path) -> None:
    from modelspec._validate import compile_spec

    text = ("modelspec: 1\nmodel:\n  params: {w: {shape: [2], init: {normal: {std: 0.5}}}, "
            "b: {shape: [2], init: {uniform: {low: -1}}}}\n  nodes: {h: {add: null, in: [x, w]}, z: {add: null, in: [h, b]}}\n")  # fmt: skip
    data = compile_spec(text).spec.to_data()
    assert data["model"]["params"] == {
        "w": {"shape": [2], "dtype": "float32", "init": {"normal": {"mean": 0.0, "std": 0.5}}},
        "b": {"shape": [2], "dtype": "float32", "init": {"uniform": {"low": -1.0, "high": 1.0}}},
    }
