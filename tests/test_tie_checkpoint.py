"""Parameter ties in build folders: stored once, recorded in the checkpoint's metadata,
verified and restored on load; ``save`` refuses a module whose ties differ from its spec."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import safetensors
import torch
from tie_models import AE, LM, LM_UNTIED, TOKENS, HandAE, HandLM
from torch import nn

import modelspec
from modelspec._checkpoint import DIGEST, FIELDS, metadata_digest
from modelspec._errors import CheckpointError, TieMismatchError

CKPT = "model.safetensors"
X = torch.rand(3, 20, generator=torch.Generator().manual_seed(2))


def _metadata(folder: Path) -> tuple[dict[str, str], list[str]]:
    with safetensors.safe_open(str(folder / CKPT), framework="pt") as f:
        return dict(f.metadata()), sorted(f.keys())


def _trained(spec: str, x: torch.Tensor) -> nn.Module:
    """A built model after one SGD step: values that a fresh build does not have."""
    m = modelspec.build(spec)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m(x).float().pow(2).mean().backward()
    opt.step()
    return m


def _edit(path: Path, *, reseal: bool, **changes: str | None) -> None:
    """Set (``None``: remove) metadata fields in the header, keeping the tensor bytes;
    ``reseal`` also recomputes the digest (a consistent forgery)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header["__metadata__"]
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    if reseal:
        meta[DIGEST] = metadata_digest(meta)
    blob = json.dumps(header).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


# ------------------------------------------------------------------ the checkpoint
def test_transposed_tie_is_recorded_and_covered_by_the_digest(tmp_path: Path) -> None:
    modelspec.write_build(AE, tmp_path / "b")
    meta, names = _metadata(tmp_path / "b")
    assert names == ["decoder.bias", "encoder.bias", "encoder.weight"]  # nothing stored for decoder.weight
    assert json.loads(meta["transposed_ties"]) == {"decoder.weight": "encoder.weight"}
    assert json.loads(meta["ties"]) == {}
    without = {k: v for k, v in meta.items() if k != "transposed_ties"}
    assert metadata_digest(without) != meta[DIGEST] == metadata_digest(meta)


def test_same_tie_is_stored_once_and_other_files_have_no_new_field(tmp_path: Path) -> None:
    modelspec.write_build(LM, tmp_path / "b")
    meta, names = _metadata(tmp_path / "b")
    assert names == ["transformer.ln_f.bias", "transformer.ln_f.weight", "transformer.wte.weight"]
    assert json.loads(meta["ties"]) == {"lm_head.weight": "transformer.wte.weight"}
    assert set(meta) == {*FIELDS, DIGEST}  # exactly the fields of format-2 files written before transposed ties


@pytest.mark.parametrize("spec", ["lm", "ae"])
def test_load_restores_identity_link_and_exact_values(spec: str, tmp_path: Path) -> None:
    text, x = (LM, TOKENS) if spec == "lm" else (AE, X)
    m = _trained(text, x)
    modelspec.save(m, tmp_path / "b", spec=text)
    loaded = modelspec.load(tmp_path / "b")
    if spec == "lm":
        assert loaded.lm_head.weight is loaded.transformer.wte.weight
    else:
        assert type(loaded.decoder).__name__ == "TransposedLinear"
        assert loaded.decoder.weight._base is loaded.encoder.weight
        assert len(list(loaded.parameters())) == 3
    assert list(loaded.state_dict()) == list(m.state_dict())
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert torch.equal(loaded(x), m(x))


def test_edited_transposed_tie_map_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    modelspec.write_build(AE, folder)
    original = (folder / CKPT).read_bytes()
    cases = [  # (edit, resealed, code)
        ({"transposed_ties": '{"decoder.weight": "encoder.bias"}'}, False, "metadata-mismatch"),
        ({"transposed_ties": '{"decoder.weight": "encoder.bias"}'}, True, "tie-mismatch"),
        ({"transposed_ties": None}, True, "tie-mismatch"),  # as a file from before the field: no transposed ties
        ({"transposed_ties": None}, False, "metadata-mismatch"),
        ({"transposed_ties": '{"encoder.weight": "encoder.bias"}'}, True, "metadata-damaged"),  # a stored tensor
        ({"transposed_ties": '{"decoder.weight": "nowhere.weight"}'}, True, "metadata-damaged"),
        ({"transposed_ties": '["decoder.weight"]'}, True, "metadata-damaged"),
    ]
    for changes, resealed, code in cases:
        (folder / CKPT).write_bytes(original)
        _edit(folder / CKPT, reseal=resealed, **changes)
        with pytest.raises(CheckpointError) as e:
            modelspec.load(folder)
        assert e.value.code == code, (changes, resealed)
    (folder / CKPT).write_bytes(original)
    assert modelspec.load(folder).decoder.weight._base is not None


def test_transposed_tie_added_to_a_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    modelspec.write_build(LM, folder)
    _edit(folder / CKPT, reseal=True, transposed_ties='{"lm_head.bias": "transformer.wte.weight"}')
    with pytest.raises(CheckpointError) as e:
        modelspec.load(folder)
    assert e.value.code == "tie-mismatch" and "lm_head.bias" in str(e.value)


def test_edited_same_tie_map_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    modelspec.write_build(LM, folder)
    _edit(folder / CKPT, reseal=True, ties="{}")
    with pytest.raises(CheckpointError) as e:
        modelspec.load(folder)
    assert e.value.code == "tie-mismatch" and "lm_head.weight" in str(e.value)


# ------------------------------------------------------------------ save
def _refused(module: nn.Module, out: Path, spec: str | None = None) -> TieMismatchError:
    with pytest.raises(TieMismatchError) as e:
        modelspec.save(module, out, spec=spec)
    assert not out.exists()
    assert "None" not in str(e.value)
    return e.value


def test_save_accepts_a_module_whose_ties_match(tmp_path: Path) -> None:
    for i, (text, x) in enumerate(((LM, TOKENS), (AE, X))):
        m = _trained(text, x)
        modelspec.save(m, tmp_path / str(i))
        assert torch.equal(modelspec.load(tmp_path / str(i))(x), m(x))


def test_save_accepts_a_handwritten_tie_registered_in_another_order(tmp_path: Path) -> None:
    hand = HandLM(tied=True, head_first=True)  # 'lm_head.weight' comes first in its state_dict
    assert next(iter(hand.state_dict())) == "lm_head.weight"
    modelspec.save(hand, tmp_path / "b", spec=LM)
    loaded = modelspec.load(tmp_path / "b")
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert torch.equal(loaded(TOKENS), hand(TOKENS))


def test_save_refuses_a_broken_declared_tie(tmp_path: Path) -> None:
    m = modelspec.build(LM)
    m.lm_head.weight = nn.Parameter(m.lm_head.weight.detach().clone())  # same values, separate tensor
    err = _refused(m, tmp_path / "b")
    assert err.code == "tie-mismatch"
    assert "'lm_head.weight'" in str(err) and "'transformer.wte.weight'" in str(err) and "retie" in str(err)


def test_save_refuses_a_hand_made_tie_the_spec_does_not_declare(tmp_path: Path) -> None:
    m = modelspec.build(LM_UNTIED)
    m.lm_head.weight = m.transformer.wte.weight
    for module, spec in ((m, None), (HandLM(tied=True), LM_UNTIED)):
        err = _refused(module, tmp_path / "b", spec)
        assert err.code == "tie-mismatch"
        assert "- {param: lm_head.weight, to: transformer.wte.weight}" in str(err) and "'ties:'" in str(err)


def test_save_suggests_use_for_a_module_placed_twice(tmp_path: Path) -> None:
    spec = "modelspec: 1\ninput: {shape: [2, 4]}\nmodel: [{Linear: [4, 4]}, ReLU, {Linear: [4, 4]}]\n"
    m = modelspec.build(spec)
    m[2] = m[0]
    err = _refused(m, tmp_path / "b")
    assert err.code == "tie-mismatch" and "'use:'" in str(err) and "'2.weight'" in str(err)


def test_save_refuses_broken_transposed_ties(tmp_path: Path) -> None:
    m = modelspec.build(AE)
    m.decoder = nn.Linear(5, 20)  # its own weight again
    err = _refused(m, tmp_path / "b")
    assert err.code == "tie-mismatch" and "'decoder.weight'" in str(err) and "'encoder.weight'" in str(err)
    assert "own" in str(err)

    m = modelspec.build(AE)
    m.encoder = nn.Linear(20, 5)  # the decoder still reads the old encoder's weight
    err = _refused(m, tmp_path / "b")
    assert err.code == "tie-mismatch" and "outside the model" in str(err)

    err = _refused(HandAE(), tmp_path / "b", AE)
    assert err.code == "tie-mismatch" and "'decoder.weight'" in str(err)


def test_save_refuses_a_transposed_tie_the_spec_does_not_declare(tmp_path: Path) -> None:
    untied = AE.split("ties:")[0]
    err = _refused(modelspec.build(AE), tmp_path / "b", untied)
    assert err.code == "tie-mismatch"
    assert "- {param: decoder.weight, to: encoder.weight, transposed: true}" in str(err)


def test_save_accepts_a_module_that_computes_the_transposed_tie_itself(tmp_path: Path) -> None:
    """No tensor and no link under 'decoder.weight' (a handwritten or exported module):
    what is stored is exactly what the spec's model stores."""

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(20, 5)
            self.decoder = nn.Module()
            self.decoder.bias = nn.Parameter(torch.zeros(20))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.encoder(x))
            return nn.functional.linear(h, self.encoder.weight.t(), self.decoder.bias)

    f = Functional()
    modelspec.save(f, tmp_path / "b", spec=AE)
    assert torch.equal(modelspec.load(tmp_path / "b")(X), f(X))


def test_load_reties_the_allocated_skeleton_instead_of_building_again(tmp_path: Path, monkeypatch) -> None:
    """``to_empty`` breaks the tie; load restores it rather than initializing a second model
    (for a GPT-2-sized embedding: 0.4-0.5 s instead of 12-20 s, measured)."""
    import modelspec._api as api

    modelspec.write_build(LM, tmp_path / "b")
    devices = []
    real = api._build

    def counting(resolved, device, dtype, **kw):
        devices.append(str(device))
        return real(resolved, device, dtype, **kw)

    monkeypatch.setattr(api, "_build", counting)
    loaded = modelspec.load(tmp_path / "b")
    assert devices == ["meta"]  # only the skeleton
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
