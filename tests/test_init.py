"""Init rules (top-level ``init:``): methods and their statistics, selectors, last rule wins,
a tied tensor initialised once by its owner, errors with codes and positions, and the
same bits on every machine (portable draws), nothing drawn on meta."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write

import modelspec
from modelspec import _init, _initialize
from modelspec._errors import SpecError
from modelspec._source import load_text
from modelspec._spec import parse

ROOT = Path(__file__).resolve().parent.parent
HEAD = "modelspec: 1\n"
WIDE = HEAD + "seed: 5\nmodel:\n  a: {Linear: [1000, 1000]}\n  b: {Linear: [1000, 1000]}\n"


def build(tmp_path: Path, text: str, **kw: object) -> torch.nn.Module:
    return modelspec.build(write(tmp_path, text), **kw)


def errors_of(tmp_path: Path, text: str) -> list[tuple[str, int | None, int | None, str]]:
    with pytest.raises(SpecError) as e:
        build(tmp_path, text)
    return [(d.code, d.line, d.column, ".".join(map(str, d.path))) for d in e.value.diagnostics]


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


# ---------------------------------------------------------------- methods
def test_normal_and_uniform_statistics(tmp_path: Path) -> None:
    m = build(tmp_path, WIDE + "init:\n  - {params: a.weight, normal: {mean: 0.5, std: 2}}\n"
              "  - {params: b.weight, uniform: {low: -3, high: 1}}\n")  # fmt: skip
    a, b = f64(m.a.weight), f64(m.b.weight)  # 1e6 values each
    # standard errors: mean 2/1000, std 2/sqrt(2e6) = 0.0014; tolerances are 5 of them
    assert abs(a.mean().item() - 0.5) < 0.01 and abs(a.std().item() - 2.0) < 0.007
    assert abs(b.mean().item() + 1.0) < 0.006 and abs(b.std().item() - 4 / math.sqrt(12)) < 0.003
    assert b.min().item() >= -3.0 and b.max().item() < 1.0
    assert b.min().item() < -2.999 and b.max().item() > 0.999


def test_every_method_as_torch_defines_it(tmp_path: Path) -> None:
    text = HEAD + "models:\n" + "".join(f"  l{i}: {{Linear: [400, 300]}}\n" for i in range(9)) + (
        "init:\n"
        "  - {params: l0.weight, zeros}\n"
        "  - {params: l1.weight, ones: {}}\n"
        "  - {params: l2.weight, constant: {value: -0.25}}\n"
        "  - {params: l3.weight, xavier_uniform: {gain: 2}}\n"
        "  - {params: l4.weight, xavier_normal}\n"
        "  - {params: l5.weight, kaiming_uniform: {nonlinearity: relu}}\n"
        "  - {params: l6.weight, kaiming_normal: {mode: fan_out, nonlinearity: relu}}\n"
        "  - {params: l7.weight, trunc_normal: {std: 0.5, a: -0.25, b: 0.75}}\n"
        "  - {params: l8.weight, orthogonal: {gain: 3}}\n"
    )  # fmt: skip
    m = build(tmp_path, text)
    w = [f64(getattr(m, f"l{i}").weight) for i in range(9)]  # 300 x 400: fan_in 400, fan_out 300
    assert (w[0] == 0).all() and (w[1] == 1).all() and (w[2] == -0.25).all()
    bound = 2 * math.sqrt(6 / 700)
    assert w[3].abs().max() <= bound and w[3].abs().max() > 0.99 * bound
    assert abs(w[3].std().item() - bound / math.sqrt(3)) < 0.02 * bound
    assert abs(w[4].std().item() - math.sqrt(2 / 700)) / math.sqrt(2 / 700) < 0.02
    bound = math.sqrt(2) * math.sqrt(3 / 400)
    assert w[5].abs().max() <= bound and w[5].abs().max() > 0.99 * bound
    assert abs(w[6].std().item() - math.sqrt(2 / 300)) / math.sqrt(2 / 300) < 0.02
    assert w[7].min() >= -0.25 and w[7].max() <= 0.75 and w[7].min() < -0.249 and w[7].max() > 0.749
    pdf = [math.exp(-((x / 0.5) ** 2) / 2) / math.sqrt(2 * math.pi) for x in (-0.25, 0.75)]
    cut = 0.5 * (math.erf(0.75 / 0.5 / math.sqrt(2)) - math.erf(-0.25 / 0.5 / math.sqrt(2)))
    assert abs(w[7].mean().item() - 0.5 * (pdf[0] - pdf[1]) / cut) < 0.003  # N(0, 0.5^2) cut to [-0.25, 0.75]
    q = w[8] / 3  # 300 x 400: orthonormal rows
    torch.testing.assert_close(q @ q.T, torch.eye(300, dtype=torch.float64), atol=1e-5, rtol=0)
    biases = [f64(getattr(m, f"l{i}").bias) for i in range(9)]  # untouched: Linear's default
    assert all(0 < b.abs().max() <= 1 / math.sqrt(400) for b in biases)


def test_gpt2_scaled_residual_projections(tmp_path: Path) -> None:
    """GPT-2: every Linear N(0, 0.02), the residual projections 0.02 / sqrt(2 * n_layer), biases 0."""
    n_layer = 4
    layer = (
        "    - attn: {c_attn: {Linear: [128, 384]}, c_proj: {Linear: [384, 128]}}\n"
        "      mlp: {c_fc: {Linear: [128, 512]}, c_proj: {Linear: [512, 128]}}\n"
    )
    scaled = 0.02 / math.sqrt(2 * n_layer)
    text = HEAD + "model:\n  h:\n" + layer * n_layer + (
        "init:\n"
        "  - {layer: Linear, normal: {std: 0.02}}\n"
        f"  - {{params: '*.c_proj.weight', normal: {{std: {scaled!r}}}}}\n"
        "  - {params: '*.bias', zeros}\n"
    )  # fmt: skip
    m = build(tmp_path, text)
    named = dict(m.named_parameters())
    proj = torch.cat([f64(p).flatten() for n, p in named.items() if n.endswith("c_proj.weight")])
    other = torch.cat([f64(p).flatten() for n, p in named.items() if n.endswith(("c_attn.weight", "c_fc.weight"))])
    assert len([n for n in named if n.endswith("c_proj.weight")]) == 2 * n_layer
    assert abs(proj.std().item() / scaled - 1) < 0.01 and abs(proj.mean().item()) < 0.0001  # 458,752 values
    assert abs(other.std().item() / 0.02 - 1) < 0.01
    assert all((p == 0).all() for n, p in named.items() if n.endswith(".bias"))


# ---------------------------------------------------------------- semantics
def test_last_matching_rule_wins(tmp_path: Path) -> None:
    base = HEAD + "model:\n  fc: {Linear: [4, 3]}\n  out: {Linear: [3, 2]}\ninit:\n"
    m = build(tmp_path, base + "  - {layer: Linear, constant: {value: 2}}\n  - {params: fc.weight, zeros}\n")
    assert (m.fc.weight == 0).all() and (m.fc.bias == 2).all() and (m.out.weight == 2).all()
    m = build(tmp_path, base + "  - {params: fc.weight, zeros}\n  - {layer: Linear, constant: {value: 2}}\n")
    assert all((p == 2).all() for p in m.parameters())


def test_selectors_combine_with_and(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
blocks:
  enc: {fc: {Linear: [4, 4]}, norm: {LayerNorm: [4]}}
model:
  a: {use: enc}
  head: {Linear: [4, 2]}
init:
  - {block: enc, layer: Linear, params: '*.weight', constant: {value: 7}}
"""
    )
    m = build(tmp_path, text)
    assert (m.a.fc.weight == 7).all()
    assert not (m.a.fc.bias == 7).any() and not (m.head.weight == 7).any() and (m.a.norm.weight == 1).all()


def test_multi_model_names_start_with_the_model(tmp_path: Path) -> None:
    text = HEAD + "blocks:\n  s: {Linear: [4, 4]}\nmodels:\n  m1: [{use: s}, {Linear: [4, 2]}]\n" \
        "  m2: [{use: s}, {Linear: [4, 3]}]\ninit:\n  - {params: 'm2.1.*', ones}\n"  # fmt: skip
    m = build(tmp_path, text)
    assert (m.m2[1].weight == 1).all() and (m.m2[1].bias == 1).all() and not (m.m1[1].weight == 1).any()


def test_lazy_layer_name_selects_what_it_becomes(tmp_path: Path) -> None:
    text = HEAD + "input: {shape: [2, 5]}\nmodel:\n  - LazyLinear: {out_features: 3}\n" \
        "init:\n  - {layer: LazyLinear, constant: {value: 0.5}}\n"  # fmt: skip
    m = build(tmp_path, text)
    assert m[0].weight.shape == (3, 5) and (m[0].weight == 0.5).all()


def test_a_tied_tensor_is_initialised_once_by_its_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[tuple[torch.Tensor, str]] = []
    draw = _initialize._draw

    def spy(p: torch.Tensor, rule: _init.Rule, generator: torch.Generator) -> None:
        drawn.append((p, rule.method))
        draw(p, rule, generator)

    text = (
        HEAD
        + """\
blocks:
  shared: {Linear: [4, 4]}
model:
  wte: {Embedding: [10, 4]}
  a: {use: shared}
  b: {use: shared}
  lm_head: {Linear: [4, 10, false]}
ties:
  - {param: lm_head.weight, to: wte.weight}
init:
  - {params: '*', normal: {std: 0.5}}
  - {params: [a.weight, 'b.*'], uniform: {low: -0.1, high: 0.1}}
"""
    )
    monkeypatch.setattr(_initialize, "_draw", spy)
    m = build(tmp_path, text)
    assert m.lm_head.weight is m.wte.weight and m.a is m.b
    names = list(m.named_parameters())  # owners only
    drawn = [(next(n for n, q in names if q is p), method) for p, method in drawn]
    # one draw per unique tensor, in named_parameters() order, each by its owner's name; 'b.*'
    # selects only other names of a's tensors: the second rule acts on a.weight alone
    assert drawn == [("wte.weight", "normal"), ("a.weight", "uniform"), ("a.bias", "normal")]


def test_a_rule_on_aliases_only_names_the_owner(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
model:
  wte: {Embedding: [10, 4]}
  lm_head: {Linear: [4, 10, false]}
ties:
  - {param: lm_head.weight, to: wte.weight}
init:
  - {layer: Linear, zeros}
  - {params: [lm_head.weight], zeros}
"""
    )
    with pytest.raises(SpecError) as e:
        build(tmp_path, text)
    found = [(d.code, d.line, d.column, d.path) for d in e.value.diagnostics]
    assert found == [("init-alias", 8, 5, ("init", 0)), ("init-alias", 9, 15, ("init", 1, "params", 0))]
    assert all("wte.weight" in (d.hint or "") for d in e.value.diagnostics)


def test_default_init_of_other_parameters_is_unchanged(tmp_path: Path) -> None:
    base = HEAD + "seed: 9\nmodel:\n  - Linear: [6, 5]\n  - Linear: [5, 4]\n"
    plain = build(tmp_path, base)
    ruled = build(tmp_path, base + "init:\n  - {params: '0.weight', normal: {std: 3}}\n")
    for name, p in plain.named_parameters():
        same = torch.equal(p, dict(ruled.named_parameters())[name])
        assert same == (name != "0.weight"), name


def test_canonical_form_and_hash(tmp_path: Path) -> None:
    def spec(rules: str) -> modelspec._spec.Spec:  # type: ignore[name-defined]
        return parse(load_text(HEAD + "model: [{Linear: [2, 2]}]\ninit:\n" + rules, "s.yaml"))

    a = spec("  - {params: '*.bias', zeros}\n  - {layer: Linear, normal: {std: 1}}\n")
    b = spec("  - params: ['*.bias']\n    zeros: {}\n  - {layer: [Linear], normal: {std: 1.0}}\n")
    c = spec("  - {params: '*.bias', zeros}\n  - {layer: Linear, normal: {std: 2}}\n")
    none = parse(load_text(HEAD + "model: [{Linear: [2, 2]}]\n", "s.yaml"))
    assert a.sha256 == b.sha256 and len({a.sha256, c.sha256, none.sha256}) == 3
    assert a.to_data()["init"] == [{"params": ["*.bias"], "zeros": {}}, {"layer": ["Linear"], "normal": {"std": 1.0}}]
    assert "init" not in none.to_data()


# ---------------------------------------------------------------- errors
def test_rule_errors_have_codes_and_positions(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
model: [{Linear: [2, 2]}]
init:
  - {normal: {std: 1}}
  - {params: '*', zeros, ones}
  - {params: '*', nromal: {std: 1}}
  - {params: '*', normal: {sdt: 1}}
  - {params: '*', uniform: {low: 1, high: 0}}
  - {params: '*', normal: {std: -1}}
  - {params: 5, zeros}
  - {params: '*', rename: {a: b}, zeros}
  - {params: '*', trunc_normal: {std: 0.01, a: 1, b: 2}}
  - {params: '*', kaiming_normal: {mode: fan_mid}}
  - 3
"""
    )
    found = errors_of(tmp_path, text)
    assert found == [
        ("init-selector", 4, 5, "init.0"),
        ("init-method", 5, 26, "init.1.ones"),
        ("unknown-key", 6, 19, "init.2.nromal"),
        ("unknown-key", 7, 28, "init.3.normal.sdt"),
        ("init-value", 8, 19, "init.4.uniform"),
        ("wrong-type", 9, 28, "init.5.normal.std"),
        ("wrong-type", 10, 6, "init.6.params"),
        ("init-method", 11, 19, "init.7.rename"),
        ("init-value", 12, 19, "init.8.trunc_normal"),
        ("wrong-type", 13, 36, "init.9.kaiming_normal.mode"),
        ("wrong-type", 14, 5, "init.10"),
    ]


def test_hints_say_what_was_meant(tmp_path: Path) -> None:
    text = HEAD + "model: [{Linear: [2, 2]}]\ninit:\n  - {params: '*', nromal: {std: 1}}\n"
    with pytest.raises(SpecError) as e:
        build(tmp_path, text)
    (d,) = e.value.diagnostics  # not also "no method": the slip is the problem
    assert d.code == "unknown-key" and "'normal'" in (d.hint or "")


def test_selector_errors_after_building(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
blocks:
  enc: {fc: {Linear: [4, 4]}}
  act: ReLU
model:
  enc: {use: enc}
  act: {use: act}
  head: {Linear: [4, 2]}
init:
  - {params: enc.fc.weigth, zeros}
  - {params: ['*.weight', 'head.bais'], zeros}
  - {layer: Lineer, zeros}
  - {layer: Conv2d, zeros}
  - {block: encc, zeros}
  - {block: act, zeros}
  - {block: enc, params: 'head.*', zeros}
  - {params: '*', xavier_uniform}
"""
    )
    with pytest.raises(SpecError) as e:
        build(tmp_path, text)
    found = [(d.code, d.line, d.column, ".".join(map(str, d.path)), d.hint) for d in e.value.diagnostics]
    assert [f[:4] for f in found] == [
        ("init-unmatched", 10, 6, "init.0.params"),
        ("init-unmatched", 11, 27, "init.1.params.1"),
        ("unknown-layer", 12, 6, "init.2.layer"),
        ("init-unmatched", 13, 6, "init.3.layer"),
        ("unknown-block", 14, 6, "init.4.block"),
        ("init-unmatched", 15, 6, "init.5.block"),
        ("init-unmatched", 16, 5, "init.6"),
        ("init-shape", 17, 19, "init.7.xavier_uniform"),
    ]
    hints = [f[4] or "" for f in found]
    assert "'enc.fc.weight'" in hints[0] and "'head.bias'" in hints[1] and "'Linear'" in hints[2]
    assert "'enc'" in hints[4]


def test_transposed_name_points_at_its_source(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
model:
  encoder: {Linear: [6, 3]}
  decoder: {Linear: [3, 6]}
ties:
  - {param: decoder.weight, to: encoder.weight, transposed: true}
init:
  - {params: decoder.weight, zeros}
"""
    )
    with pytest.raises(SpecError) as e:
        build(tmp_path, text)
    (d,) = e.value.diagnostics
    assert (d.code, d.line) == ("init-unmatched", 8) and "'encoder.weight'" in (d.hint or "")


def test_validate_checks_the_selectors(tmp_path: Path) -> None:
    spec = write(tmp_path, HEAD + "model: [{Linear: [2, 2]}]\ninit:\n  - {params: 'x.*', zeros}\n")
    with pytest.raises(SpecError) as e:
        modelspec.validate(spec)
    assert e.value.codes == ["init-unmatched"]


# ---------------------------------------------------------------- determinism
RULES = """\
init:
  - {layer: Linear, normal: {mean: 0.1, std: 0.02}}
  - {params: '1.*', uniform: {low: -0.5, high: 0.25}}
  - {params: '2.weight', xavier_uniform}
  - {params: '3.weight', kaiming_normal: {nonlinearity: relu}}
  - {params: '4.weight', trunc_normal: {std: 0.03, a: -0.06, b: 0.06}}
  - {params: '*.bias', constant: {value: 0.125}}
  - {params: '5.weight', orthogonal: {gain: 1.5}}
"""
SIZES = (64, 96, 80, 72, 70, 66, 60)
DET = HEAD + "seed: 11\nmodel:\n" + "".join(f"  - Linear: [{a}, {b}]\n" for a, b in itertools.pairwise(SIZES)) + RULES

_PROBE = """
import hashlib, json, sys
import modelspec
m = modelspec.build(sys.argv[1])
out = {n: hashlib.sha256(p.detach().contiguous().numpy().tobytes()).hexdigest() for n, p in m.named_parameters()}
out["orthogonal"] = m[5].weight.detach().double().flatten().tolist()
print(json.dumps(out))
"""


def _probe(spec: Path, env: dict[str, str]) -> dict[str, object]:
    run = subprocess.run([sys.executable, "-c", _PROBE, str(spec)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **env}, check=True)  # fmt: skip
    return json.loads(run.stdout)


def test_same_bits_twice_and_on_every_simd_level(tmp_path: Path) -> None:
    spec = write(tmp_path, DET)
    a, b = modelspec.build(spec), modelspec.build(spec)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert sha(p) == sha(q), name
    here = {n: sha(p) for n, p in a.named_parameters()}
    plain = _probe(spec, {})
    scalar = _probe(spec, {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"})
    ortho = [plain.pop("orthogonal"), scalar.pop("orthogonal")]
    for name in here:  # orthogonal's QR is only equal to ~1e-6 across machines: compared below
        if name != "5.weight":
            assert plain[name] == here[name] == scalar[name], name
    mine = f64(a[5].weight).flatten()
    for values in ortho:
        torch.testing.assert_close(torch.tensor(values, dtype=torch.float64), mine, atol=1e-6, rtol=0)


def test_global_rng_state_is_untouched(tmp_path: Path) -> None:
    spec = write(tmp_path, DET)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    modelspec.build(spec)
    assert torch.equal(torch.rand(3), expected)


def test_meta_build_draws_and_allocates_nothing(tmp_path: Path) -> None:
    """A 3 x 160 GB model with every kind of rule: instant on meta, and nothing was drawn."""
    text = (
        HEAD
        + "model:\n"
        + "".join("  - Linear: [200000, 200000]\n" for _ in range(3))
        + """\
init:
  - {params: '0.weight', orthogonal}
  - {params: '1.weight', trunc_normal: {std: 0.02, a: -0.04, b: 0.04}}
  - {params: '2.weight', kaiming_uniform}
  - {params: '*.bias', normal: {std: 0.1}}
"""
    )
    spec = write(tmp_path, text)
    m = modelspec.build(spec, device="meta")
    assert all(p.is_meta for p in m.parameters())
    assert modelspec.report(m).totals.unique_params == 3 * (200000 * 200000 + 200000)
    assert modelspec.validate(spec) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_bits_on_cuda(tmp_path: Path) -> None:
    spec = write(tmp_path, DET)
    cpu, gpu = modelspec.build(spec), modelspec.build(spec, device="cuda")
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        if name == "5.weight":
            torch.testing.assert_close(q.cpu(), p, atol=1e-6, rtol=0)
        else:
            assert sha(p) == sha(q.cpu()), name


def test_readme_rules_build(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Initialisation, freezing and transfer") : text.index("## Command line")]
    rules = section.split("```yaml\n")[1].split("```")[0]
    model = """\
modelspec: 1
vars: {n_layer: 12}
input: {shape: [2, 3], dtype: int64}
blocks:
  head: {Linear: [8, 10]}
model:
  wte: {Embedding: [10, 8]}
  h: [{attn: {c_proj: {Linear: [8, 8]}}}]
  head: {use: head}
"""
    m = build(tmp_path, model + rules)
    assert (m.h[0].attn.c_proj.bias == 0).all() and abs(m.wte.weight.std().item() - 0.02) < 0.01


def test_scaled_std_from_variables_and_overrides(tmp_path: Path) -> None:
    text = """\
modelspec: 1
vars: {n_layer: 2, d: 256}
model:
  h: {repeat: $n_layer, of: {c_fc: {Linear: [$d, $d]}, c_proj: {Linear: [$d, $d]}}}
init:
  - {layer: Linear, normal: {std: 0.02}}
  - {params: '*.c_proj.weight', normal: {std: $0.02 / sqrt(2 * n_layer)}}
"""
    spec = write(tmp_path, text)
    for n_layer in (2, 8):
        m = modelspec.build(spec, overrides={"n_layer": n_layer})
        proj = torch.cat([f64(p).flatten() for n, p in m.named_parameters() if n.endswith("c_proj.weight")])
        assert len(m.h) == n_layer and abs(proj.std().item() / (0.02 / math.sqrt(2 * n_layer)) - 1) < 0.02
        assert abs(f64(m.h[0].c_fc.weight).std().item() / 0.02 - 1) < 0.02


def test_meta_then_materialize_gives_the_same_bits(tmp_path: Path) -> None:
    spec = write(tmp_path, DET)
    direct = modelspec.build(spec)
    later = modelspec.materialize(modelspec.build(spec, device="meta"))
    for (name, p), q in zip(direct.named_parameters(), later.parameters(), strict=True):
        assert sha(p) == sha(q), name
