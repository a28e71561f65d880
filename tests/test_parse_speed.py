"""Validation's own cost: the plain-Python checks agree with pydantic, and do the work once.

Validating a spec checks every argument against its parameter's annotation. pydantic (strict,
from JSON) is the reference; the registry answers the common cases itself and must never give
another answer than pydantic would (a value, its type, or a refusal).
"""

from __future__ import annotations

import json
import math

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
