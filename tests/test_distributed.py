"""FSDP2 and distributed checkpoints keep ties: ``shard``, ``save``/``report`` of a sharded
model, ``dcp_save``/``dcp_load``.

One test runs 2 gloo ranks on CPU (two subprocesses of this Python) and makes every
distributed check in one run; the others need no process group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import modelspec
from modelspec._distributed import plan

ROOT = Path(__file__).resolve().parent.parent

# A tied embedding/head (one 1000 x 16 tensor), and a block shared by two layers: a
# per-layer policy (units h.0 and h.1) would split both.
LM = """\
modelspec: 1
input: {shape: [2, 6], dtype: int64}
seed: 0
blocks:
  mlp: [{Linear: [16, 16]}, Tanh]
model:
  emb: {Embedding: [1000, 16]}
  h: {repeat: 2, of: [{Linear: [16, 16]}, {use: mlp}]}
  ln: {LayerNorm: 16}
  head: {Linear: [16, 1000, {bias: false}]}
ties:
  - {param: head.weight, to: emb.weight}
"""
AE = (ROOT / "specs/zoo/tied_autoencoder.yaml").read_text(encoding="utf-8")


def per_layer(name: str, module: nn.Module) -> bool:
    return name in ("h.0", "h.1", "encoder", "decoder")


# ------------------------------------------------------------------ units, without a process group
def test_units_keep_each_tie_in_one_unit_whatever_the_policy() -> None:
    lm = modelspec.build(LM, device="meta")
    # the shared block first (it sits in both layers), the tied embedding and head together
    assert plan(lm) == [("emb", "head"), ("h.0.1",), ("",)]
    assert plan(lm, units=per_layer) == [("emb", "head"), ("h.0.1",), ("h.0",), ("h.1",), ("",)]
    # a per-leaf policy may not give the embedding and the head units of their own
    assert plan(lm, units=(nn.Embedding, nn.Linear)) == [("emb", "head"), ("h.0.0",), ("h.0.1.0",), ("h.1.0",), ("",)]
    ae = modelspec.build(AE, device="meta")
    # a transposed tie: the reader and its source's module in one unit; the per-layer units
    # 'encoder' and 'decoder' would each take half of both ties, so they are left out
    want = [("encoder.0", "decoder.2"), ("encoder.2", "decoder.0"), ("",)]
    assert plan(ae) == want
    assert plan(ae, units=per_layer) == want


def test_a_tie_inside_a_shared_block_takes_the_whole_block_into_its_unit() -> None:
    spec = LM.replace(
        "head.weight, to: emb.weight", "head.weight, to: emb.weight}\n  - {param: h.1.0.weight, to: h.0.1.0.weight"
    )
    model = modelspec.build(spec, device="meta")
    assert model.h[1][0].weight is model.h[0][1][0].weight
    # h.1 is left with nothing of its own: not a unit
    assert plan(model, units=per_layer) == [("emb", "head"), ("h.0.1", "h.1.0"), ("h.0",), ("",)]


def test_shard_needs_a_process_group_and_a_model_with_forward() -> None:
    with pytest.raises(modelspec.UsageError) as e:
        modelspec.shard(modelspec.build(LM, device="meta"))
    assert e.value.code == "not-distributed"
    with pytest.raises(modelspec.UsageError) as e:
        modelspec.shard(modelspec.build(ROOT / "specs/d2l/shared_mlp.yaml", device="meta"))  # models: a ModuleDict
    assert e.value.code == "cannot-shard"


# ------------------------------------------------------------------ DCP in one process
def _files_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix == ".distcp")


def _unique_bytes(model: nn.Module) -> int:
    return sum(t.nbytes for t in {id(t): t for t in model.state_dict(keep_vars=True).values()}.values())


def _plain_dcp_save(model: nn.Module, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.save(model.state_dict(), checkpoint_id=str(folder), no_dist=True)


def test_dcp_stores_each_tie_group_once_and_restores_the_ties(tmp_path: Path) -> None:
    model = modelspec.build(LM)
    assert modelspec.dcp_save(model, tmp_path / "ours") == tmp_path / "ours"
    _plain_dcp_save(model, tmp_path / "plain")
    unique = _unique_bytes(model)
    alias_bytes = sum(t.nbytes for t in model.state_dict().values()) - unique
    assert alias_bytes == (1000 * 16 + 16 * 16 + 16) * 4  # the embedding, and the shared block
    ours, plain = _files_bytes(tmp_path / "ours"), _files_bytes(tmp_path / "plain")
    # one copy per tie group: beyond the unique tensors' bytes, only DCP's framing of each
    # (~1.5 kB): far less than a second copy of the embedding's 64,000 bytes
    assert unique < ours < unique + 9 * 2_000
    assert plain - ours >= alias_bytes

    other = modelspec.build(LM.replace("seed: 0", "seed: 1"))
    assert not torch.equal(other.emb.weight, model.emb.weight)
    assert modelspec.dcp_load(other, tmp_path / "ours") is other
    assert other.head.weight is other.emb.weight and other.h[0][1] is other.h[1][1]
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    ae = modelspec.build(AE)  # transposed ties: the reader has no tensor to store
    modelspec.dcp_save(ae, tmp_path / "ae")
    again = modelspec.dcp_load(modelspec.build(AE.replace("seed: 0", "seed: 3")), tmp_path / "ae")
    assert torch.equal(again.decoder[0].weight, ae.encoder[2].weight.t())


def test_dcp_refuses_other_ties_and_folders_it_did_not_write(tmp_path: Path) -> None:
    model = modelspec.build(LM)
    modelspec.dcp_save(model, tmp_path / "c")
    modelspec.dcp_save(model, tmp_path / "c")  # its own folder: written again
    untied = modelspec.build(LM.split("ties:")[0])
    with pytest.raises(modelspec.CheckpointError) as e:
        modelspec.dcp_load(untied, tmp_path / "c")
    assert e.value.code == "tie-mismatch"
    assert "'head.weight'" in str(e.value)
    _plain_dcp_save(model, tmp_path / "plain")
    with pytest.raises(modelspec.CheckpointError) as e:
        modelspec.dcp_load(model, tmp_path / "plain")
    assert e.value.code == "not-modelspec"
    with pytest.raises(modelspec.BuildDirError) as e2:
        modelspec.dcp_save(model, tmp_path / "plain")
    assert e2.value.code == "in-the-way"
    assert not (tmp_path / "plain" / "modelspec-dcp.json").exists()


# ------------------------------------------------------------------ 2 gloo ranks
WORKER = r"""
import json, os, sys
from pathlib import Path
import torch, torch.distributed as dist
import modelspec
from modelspec._distributed import full_state
from torch.distributed.fsdp import FSDPModule

rank, out = int(sys.argv[1]), Path(sys.argv[2])
dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=rank, world_size=2)
LM, AE = json.loads(sys.argv[3])
units = lambda name, m: name in ("h.0", "h.1", "encoder", "decoder")
res = {}

def train(model, x, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        model(x).float().square().mean().backward()
        opt.step()
        opt.zero_grad()

def max_diff(full, reference):
    ref = reference.state_dict()
    assert set(full) == set(ref), (sorted(full), sorted(ref))
    return max((full[k] - ref[k]).abs().max().item() for k in ref)

g = torch.Generator().manual_seed(0)
tokens, x = torch.randint(0, 1000, (4, 6), generator=g), torch.randn(4, 64, generator=g)
mine = slice(2 * rank, 2 * rank + 2)  # each rank its half of the batch; FSDP averages the gradients

# FSDP2 with a per-layer policy that would split the shared block and the tied head
lm = modelspec.shard(modelspec.build(LM), units=units)
res["units"] = sorted(n for n, m in lm.named_modules() if isinstance(m, FSDPModule))
train(lm, tokens[mine])
res["lm_tied"] = lm.head.weight is lm.emb.weight and lm.h[0][1] is lm.h[1][1]
res["lm_dtensor"] = type(lm.emb.weight).__name__
full = full_state(lm)
if rank == 0:
    ref = modelspec.build(LM)
    train(ref, tokens)
    res["lm_diff"] = max_diff(full, ref)
    torch.save({k: v.clone() for k, v in full.items()}, out / "lm_full.pt")
else:
    res["lm_full_empty"] = full == {}

ae = modelspec.shard(modelspec.build(AE), units=units)
train(ae, x[mine])
res["ae_tied"] = ae.decoder[0].weight.shape == (32, 16) and "weight" not in ae.decoder[0]._parameters
full = full_state(ae)
if rank == 0:
    ref = modelspec.build(AE)
    train(ref, x)
    res["ae_diff"] = max_diff(full, ref)

# save and report: rank 0 gathers and writes; rank 1's folder is never written
res["saved"] = str(modelspec.save(lm, out / f"build{rank}"))
rep = modelspec.report(lm)
(out / f"report{rank}.json").write_text(rep.model_dump_json(), encoding="utf-8")
try:
    modelspec.report(modelspec.shard(torch.nn.Sequential(torch.nn.Linear(4, 4))))
except modelspec.UsageError as e:
    res["unknown_code"] = e.code
try:
    modelspec.save(lm, out / "build0" / "report.md")  # a file, not a folder: fails on rank 0
except modelspec.ModelspecError as e:
    res["save_error"] = [type(e).__name__, e.code]

# DCP: one copy per tie group, ties restored on load into a fresh sharded model
modelspec.dcp_save(lm, out / "dcp")
fresh = modelspec.shard(modelspec.build(LM.replace("seed: 0", "seed: 5")), units=units)
modelspec.dcp_load(fresh, out / "dcp")
res["dcp_tied"] = fresh.head.weight is fresh.emb.weight and fresh.h[0][1] is fresh.h[1][1]
after = full_state(fresh)
if rank == 0:
    before = torch.load(out / "lm_full.pt")
    res["dcp_equal"] = sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)
(out / f"rank{rank}.json").write_text(json.dumps(res), encoding="utf-8")
dist.destroy_process_group()
"""


def test_two_gloo_ranks_shard_save_report_and_checkpoint_with_ties(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [tmp_path, json.dumps([LM, AE])]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(rank), *map(str, args)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1))

    # units: the shared block and the tied pair are units; the layers too (the policy)
    assert r0["units"] == r1["units"] == ["", "emb", "h.0", "h.0.1", "h.1", "head"]
    assert r0["lm_tied"] and r1["lm_tied"] and r0["lm_dtensor"] == "DTensor"
    # 3 SGD steps on 2 ranks equal one process on the whole batch, up to float32 sums in another
    # order, which 3 steps at lr 0.5 amplify and which depend on the CPU's SIMD width (2.3e-5 measured
    # with ATEN_CPU_CAPABILITY=default); the ties themselves are checked by identity
    assert r0["lm_diff"] < 1e-4
    assert r0["ae_diff"] < 1e-4 and r0["ae_tied"] and r1["ae_tied"]
    assert r1["lm_full_empty"]

    # save: the normal build folder from rank 0, nothing from rank 1 (whose path is ignored)
    assert r0["saved"] == r1["saved"] == str(tmp_path / "build0")
    assert not (tmp_path / "build1").exists()
    loaded = modelspec.load(tmp_path / "build0")
    assert loaded.head.weight is loaded.emb.weight and loaded.h[0][1] is loaded.h[1][1]
    trained = torch.load(tmp_path / "lm_full.pt")
    for name, t in loaded.state_dict().items():
        assert torch.equal(t, trained[name]), name
    # report: every rank gets rank 0's report, which is the saved folder's
    reports = [modelspec.Report.model_validate_json((tmp_path / f"report{r}.json").read_text()) for r in (0, 1)]
    assert reports[0] == reports[1]
    assert reports[0].tensors == modelspec.report(loaded).tensors
    assert r0["unknown_code"] == r1["unknown_code"] == "no-spec"
    assert r0["save_error"] == r1["save_error"] == ["BuildDirError", r0["save_error"][1]]

    # DCP: one copy of each tie group on disk, and the ties hold after loading
    assert r0["dcp_tied"] and r1["dcp_tied"] and r0["dcp_equal"]
    unique = _unique_bytes(loaded)
    assert unique < _files_bytes(tmp_path / "dcp") < unique + 2 * 9 * 2_000  # each rank frames its shards
