"""``repeat``: independent copies, one shared block N times, grouped sharing; and
``trainable: false``."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import modelspec
from modelspec import SpecError

HEAD = "modelspec: 1\n"


def codes(text: str) -> list[tuple[str, int | None, int | None]]:
    with pytest.raises(SpecError) as info:
        modelspec.build(text)
    return [(d.code, d.line, d.column) for d in info.value.diagnostics]


def unique(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- independent copies
def test_repeat_makes_independent_copies_with_handwritten_keys() -> None:
    model = modelspec.build(HEAD + "model:\n  h: {repeat: 4, of: [{Linear: [6, 6]}, ReLU]}\n")
    twin = nn.Sequential()
    twin.add_module("h", nn.Sequential(*[nn.Sequential(nn.Linear(6, 6), nn.ReLU()) for _ in range(4)]))
    assert list(model.state_dict()) == list(twin.state_dict())  # h.0.0.weight ... h.3.0.bias
    layers = [model.h[i][0] for i in range(4)]
    assert len({id(m) for m in layers}) == 4 and len({id(m.weight) for m in layers}) == 4
    assert unique(model) == 4 * (36 + 6)
    # each copy is initialized on its own: no two copies hold the same values
    for i in range(4):
        for j in range(i):
            assert not torch.equal(layers[i].weight, layers[j].weight)
    model.load_state_dict(twin.state_dict())  # strict, both ways
    twin.load_state_dict(model.state_dict())
    x = torch.randn(3, 6)
    torch.testing.assert_close(model(x), twin(x), rtol=0, atol=0)


def test_yaml_anchors_inside_a_repeat_still_copy() -> None:
    text = HEAD + "model:\n  - &lin {Linear: [4, 4]}\n  - {repeat: 2, of: *lin}\n"
    model = modelspec.build(text)
    assert model[0] is not model[1][0] and model[1][0] is not model[1][1]
    assert model[0].weight is not model[1][0].weight


# ---------------------------------------------------------------- one shared block
SHARED = HEAD + "blocks:\n  layer: {Linear: [5, 5]}\nmodel:\n  - {repeat: 3, of: {use: layer}}\n  - Tanh\n"


def test_repeating_a_use_places_the_same_object_n_times() -> None:
    model = modelspec.build(SHARED)
    assert model[0][0] is model[0][1] is model[0][2]
    assert unique(model) == 30
    info = modelspec.build_info(model)
    assert info is not None and info.block_sites["layer"] == ("0.0", "0.1", "0.2")


def test_a_shared_repeat_sums_the_gradients_of_every_application() -> None:
    model = modelspec.build(SHARED)
    layer = model[0][0]
    copies = [nn.Linear(5, 5) for _ in range(3)]  # the untied reference: the same values, separate tensors
    for c in copies:
        c.load_state_dict(layer.state_dict())
    x = torch.randn(4, 5, dtype=torch.float32)
    model(x).square().sum().backward()
    y = x
    for c in copies:
        y = c(y)
    torch.tanh(y).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, sum(c.weight.grad for c in copies), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.bias.grad, sum(c.bias.grad for c in copies), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- groups
@pytest.mark.parametrize(
    ("groups", "sizes"), [("3", [4, 4, 4]), ("[4, 4, 4]", [4, 4, 4]), ("[1, 11]", [1, 11]), ("12", [1] * 12)]
)
def test_groups_share_within_a_group_and_not_across(groups: str, sizes: list[int]) -> None:
    model = modelspec.build(HEAD + f"model:\n  h: {{repeat: 12, of: {{Linear: [3, 3]}}, groups: {groups}}}\n")
    h = model.h
    start = 0
    objects = []
    for size in sizes:
        first = h[start]
        assert all(h[i] is first for i in range(start, start + size))
        objects.append(first)
        start += size
    assert len({id(o) for o in objects}) == len(sizes)
    assert unique(model) == len(sizes) * 12


def test_groups_written_as_a_count_or_as_sizes_hash_alike() -> None:
    a = modelspec.compile_spec(HEAD + "model: {repeat: 12, of: ReLU, groups: 3}\n").spec
    b = modelspec.compile_spec(HEAD + "model: {repeat: 12, of: ReLU, groups: [4, 4, 4]}\n").spec
    c = modelspec.compile_spec(HEAD + "model: {repeat: 12, of: ReLU, groups: [4, 8]}\n").spec
    assert a.sha256 == b.sha256 != c.sha256


# ---------------------------------------------------------------- compact canonical form
def test_the_canonical_form_holds_one_node_whatever_the_count() -> None:
    def size(n: int) -> int:
        spec = modelspec.compile_spec(HEAD + f"model: {{h: {{repeat: {n}, of: [{{Linear: [8, 8]}}, GELU]}}}}\n").spec
        return len(json.dumps(spec.to_data(ordered=True)))

    assert size(960) - size(96) == 1  # one more digit, nothing else
    data = modelspec.compile_spec(HEAD + "model: {repeat: 96, of: {Linear: [8, 8]}}\n").spec.to_data()
    assert data["model"] == {"repeat": 96, "of": {"Linear": {"in_features": 8, "out_features": 8}}}
    assert modelspec.compile_spec(HEAD + "model: {repeat: 97, of: {Linear: [8, 8]}}\n").spec.sha256 != (
        modelspec.compile_spec(HEAD + "model: {repeat: 96, of: {Linear: [8, 8]}}\n").spec.sha256
    )


def test_a_repeat_in_a_graph_takes_in() -> None:
    text = HEAD + (
        "model:\n"
        "  inputs: [x]\n"
        "  nodes:\n"
        "    proj: {Linear: [4, 8]}\n"
        "    h: {repeat: 2, of: [{Linear: [8, 8]}, ReLU], in: proj}\n"
        "    out: {add: null, in: [proj, h]}\n"
        "input: {shape: [2, 4]}\n"
    )
    model = modelspec.build(text)
    x = torch.randn(2, 4)
    p = model.proj(x)
    torch.testing.assert_close(model(x), p + model.h(p), rtol=0, atol=0)
    assert "h.1.0.weight" in model.state_dict()


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("{repeat: 0, of: ReLU}", ("bad-argument", 4, 7)),
        ("{repeat: 2.5, of: ReLU}", ("wrong-type", 4, 7)),
        ("{repeat: 100001, of: ReLU}", ("too-large", 4, 7)),
        ("{repeat: 4}", ("missing-key", 4, 3)),
        ("{repeat: 4, of: ReLU, grops: 2}", ("unknown-key", 4, 28)),
        ("{repeat: 4, of: ReLU, groups: 3}", ("bad-repeat", 4, 28)),
        ("{repeat: 4, of: ReLU, groups: [1, 2]}", ("bad-repeat", 4, 28)),
        ("{repeat: 4, of: ReLU, groups: [0, 4]}", ("bad-repeat", 4, 28)),
        ("{repeat: 4, of: {use: b}, groups: 2}", ("bad-repeat", 4, 32)),
        ("{repeat: 4, of: {use: bb}}", ("unknown-block", 4, 23)),
    ],
)
def test_bad_repeats_are_reported_where_they_are_written(model: str, expected: tuple[str, int, int]) -> None:
    text = HEAD + "blocks: {b: ReLU}\nmodel:\n  x: " + model + "\n"
    found = codes(text)
    assert found == [expected], found


def test_an_unknown_key_in_a_repeat_suggests_the_right_one() -> None:
    with pytest.raises(SpecError) as info:
        modelspec.build(HEAD + "model: {repeat: 4, of: ReLU, gruops: 2}\n")
    hints = [d.hint for d in info.value.diagnostics if d.code == "unknown-key"]
    assert hints == ["did you mean 'groups'?"]


# ---------------------------------------------------------------- trainable
def test_trainable_false_freezes_a_layer_a_list_children_a_graph_and_a_repeat() -> None:
    text = HEAD + (
        "model:\n"
        "  a: {Linear: [4, 4], trainable: false}\n"
        "  b: {Sequential: [{Linear: [4, 4]}, ReLU], trainable: false}\n"
        "  c: {x: {Linear: [4, 4]}, trainable: false}\n"
        "  d: {nodes: {fc: {Linear: [4, 4]}}, trainable: false}\n"
        "  e: {repeat: 2, of: {Linear: [4, 4]}, trainable: false}\n"
        "  f: {Linear: [4, 4]}\n"
    )
    model = modelspec.build(text)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if not n.startswith("f.")}
    data = modelspec.compile_spec(text).spec.to_data()
    assert data["model"]["b"] == {"Sequential": [{"Linear": {"in_features": 4, "out_features": 4}}, "ReLU"],
                                  "trainable": False}  # fmt: skip
    again = modelspec.compile_spec(modelspec._yaml_scalars.dump(data)).spec
    assert again.sha256 == modelspec.compile_spec(text).spec.sha256


def test_an_inner_trainable_true_wins_over_the_outer_false() -> None:
    text = HEAD + "model:\n  trunk: {x: {Linear: [4, 4]}, head: {Linear: [4, 2], trainable: true}, trainable: false}\n"
    model = modelspec.build(text)
    assert not model.trunk.x.weight.requires_grad and model.trunk.head.weight.requires_grad


def test_a_frozen_block_is_frozen_at_every_use_and_cannot_be_frozen_at_one() -> None:
    text = HEAD + "blocks:\n  b: {Linear: [4, 4], trainable: false}\nmodel: [{use: b}, {use: b}]\n"
    model = modelspec.build(text)
    assert not model[0].weight.requires_grad
    found = codes(HEAD + "blocks:\n  b: {Linear: [4, 4]}\nmodel: [{use: b, trainable: false}, {use: b}]\n")
    assert found == [("bad-use", 4, 18)]


def test_one_tensor_cannot_be_frozen_at_one_place_and_trained_at_another() -> None:
    shared = HEAD + "blocks:\n  b: {Linear: [4, 4]}\nmodel:\n  x: {y: {use: b}, trainable: false}\n  z: {use: b}\n"
    assert codes(shared) == [("trainable-conflict", 5, 3)]  # once, at the frozen place
    assert [d.code for d in _validate_errors(shared)] == ["trainable-conflict"]  # validate finds it too
    tied = HEAD + (
        "model:\n  enc: {Linear: [4, 4], trainable: false}\n  dec: {Linear: [4, 4]}\n"
        "ties:\n  - {param: dec.weight, to: enc.weight}\n"
    )
    assert [c for c, _, _ in codes(tied)] == ["trainable-conflict"]
    transposed = HEAD + (
        "model:\n  enc: {Linear: [4, 3]}\n  dec: {Linear: [3, 4], trainable: false}\n"
        "ties:\n  - {param: dec.weight, to: enc.weight, transposed: true}\n"
    )
    assert [c for c, _, _ in codes(transposed)] == ["trainable-conflict"]  # dec reads enc's tensor
    both = transposed.replace("enc: {Linear: [4, 3]}", "enc: {Linear: [4, 3], trainable: false}")
    model = modelspec.build(both)
    assert not model.enc.weight.requires_grad and not model.dec.bias.requires_grad


def _validate_errors(text: str) -> list[modelspec.Diagnostic]:
    with pytest.raises(SpecError) as info:
        modelspec.validate(text)
    return info.value.diagnostics


def test_trainable_takes_a_boolean() -> None:
    assert codes(HEAD + "model: {Linear: [4, 4], trainable: no}\n") == [("ambiguous-value", 2, 36)]
    assert codes(HEAD + "model: {Linear: [4, 4], trainable: 0}\n") == [("wrong-type", 2, 25)]


# ---------------------------------------------------------------- in graphs: several inputs, calls
LAYER = "{inputs: [x, scale], nodes: {fc: {Linear: [4, 4], in: x}, out: {mul: null, in: [fc, scale]}}}"
CHAINS = (
    HEAD
    + f"""
blocks:
  layer: {LAYER}
model:
  inputs: {{x: {{shape: [2, 4]}}, s: {{shape: [2, 4]}}}}
  nodes:
    first: {{use: layer, in: [x, s]}}
    again: {{repeat: 3, of: {{call: first}}, in: [first, s]}}
    copies: {{repeat: 2, of: {LAYER}, in: [again, s]}}
"""
)


def test_a_repeat_with_several_inputs_chains_its_copies_and_passes_the_rest_along() -> None:
    model = modelspec.build(CHAINS)
    x, s = torch.randn(2, 4), torch.randn(2, 4)
    h = model.first(x, s)
    for _ in range(3):
        h = model.first(h, s)  # a repeated call: the one module, no new parameters
    for copy in model.copies:
        h = copy(h, s)
    torch.testing.assert_close(model(x, s), h, rtol=0, atol=0)
    assert list(model.state_dict()) == [
        f"{m}.fc.{t}" for m in ("first", "copies.0", "copies.1") for t in ("weight", "bias")
    ]
    assert model.copies[0] is not model.copies[1]
    assert "again_1 = self.first(again_0, s)" in model.code  # the generated forward, unrolled


def test_a_repeated_call_adds_up_the_gradients_of_every_call() -> None:
    model = modelspec.build(CHAINS)
    x, s = torch.randn(2, 4), torch.randn(2, 4)
    model(x, s).sum().backward()
    layer = model.first.fc
    copies = [nn.Linear(4, 4) for _ in range(4)]  # the first use and its three calls, untied
    for c in copies:
        c.load_state_dict(layer.state_dict())
    h = x
    for c in copies:
        h = c(h) * s
    for c in model.copies:
        h = c(h, s)
    h.sum().backward()
    torch.testing.assert_close(layer.weight.grad, sum(c.weight.grad for c in copies), rtol=1e-5, atol=1e-6)


def test_a_repeated_call_keeps_its_compact_canonical_form() -> None:
    data = modelspec.compile_spec(CHAINS).spec.to_data()
    assert data["model"]["nodes"]["again"] == {"repeat": 3, "of": {"call": "first"}, "in": ["first", "s"]}
    again = modelspec.compile_spec(modelspec._yaml_scalars.dump(data)).spec
    assert again.sha256 == modelspec.compile_spec(CHAINS).spec.sha256


@pytest.mark.parametrize(
    ("entry", "code"),
    [
        ("{repeat: 3, of: {call: nope}, in: [first, s]}", "unknown-layer-node"),
        ("{repeat: 3, of: {call: first}, groups: 3, in: [first, s]}", "bad-repeat"),
        ("{repeat: 3, of: {call: first}, trainable: false, in: [first, s]}", "bad-call"),
        ("{repeat: 0, of: {call: first}, in: [first, s]}", "bad-argument"),
        ("{repeat: 3, of: {call: first}, in: {x: first, scale: s}}", "bad-repeat"),
        ("{repeat: 3, of: {call: first}, in: [first]}", "bad-arity"),
    ],
)
def test_bad_repeated_calls(entry: str, code: str) -> None:
    text = CHAINS.replace("{repeat: 3, of: {call: first}, in: [first, s]}", entry)
    with pytest.raises(SpecError) as info:
        modelspec.validate(text)
    assert code in [d.code for d in info.value.diagnostics], info.value.diagnostics
