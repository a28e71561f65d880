"""build's fit check estimates from the torch-free skeleton when every layer is described,
and gets exactly what constructing the modules on meta gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelspec import _api
from modelspec._build import construct_on_meta
from modelspec._skeleton import described_skeleton
from modelspec._validate import compile_spec

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").rglob("*.yaml"))


def on_meta(path: Path) -> tuple[object, tuple[int, tuple[object, ...]]]:
    resolved = compile_spec(path)
    module, paths = construct_on_meta(resolved)
    return _api._held_estimate(
        module, paths, resolved, lambda t: (t.numel(), _api._dtype_name(t.dtype), t.element_size())
    )


@pytest.mark.parametrize("path", SPECS, ids=[str(p.relative_to(ROOT / "specs")) for p in SPECS])
def test_the_skeleton_estimate_equals_the_meta_one(path: Path) -> None:
    resolved = compile_spec(path)
    if described_skeleton(resolved) is None:
        pytest.skip("a layer is not described: the fit check constructs on meta")
    assert _api._constructed_estimate(resolved) == on_meta(path)


def test_most_bundled_specs_take_the_skeleton_path() -> None:
    described = [p for p in SPECS if described_skeleton(compile_spec(p)) is not None]
    assert {"lenet.yaml", "resnet18.yaml", "gpt2.yaml", "llama3_70b.yaml"} <= {p.name for p in described}


def test_a_lazy_layer_falls_back_to_meta() -> None:
    spec = "modelspec: 1\ninput: {shape: [2, 5]}\nmodel:\n  - LazyLinear: [3]\n  - Linear: [3, 4]\n"
    resolved = compile_spec(spec)
    assert described_skeleton(resolved) is None
    est, (largest, _) = _api._constructed_estimate(resolved)
    assert est.params == 3 * 4 + 4  # the lazy layer is not sized yet: not counted
    assert largest == (3 * 4 + 4) * 4


def test_another_default_dtype_is_estimated_from_the_built_modules() -> None:
    resolved = compile_spec(ROOT / "specs" / "zoo" / "lenet.yaml")
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert described_skeleton(resolved) is None  # the formulas make float32
        est, _ = _api._constructed_estimate(resolved)
        assert est.dtype == "float64"
    finally:
        torch.set_default_dtype(before)
