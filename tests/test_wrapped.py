"""Wrapped and copied models: torch.compile, DDP and DataParallel wrappers are looked through by
every function that takes a module, and a built model carries its build information through
copy.deepcopy, pickle and torch.save/torch.load."""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import modelspec
from modelspec._wrap import unwrap

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "specs" / "zoo"
TINY_GPT = {"n_layer": 2, "n_head": 2, "d_model": 16, "vocab": 64, "n_ctx": 16}
SPECS = ["tied_autoencoder", "siamese", "gpt2"]
# importing torch.compile's machinery imports torch.jit's deprecated script_method (torch's own import)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def _build(name: str) -> nn.Module:
    return modelspec.build(ZOO / f"{name}.yaml", **(TINY_GPT if name == "gpt2" else {}))


@pytest.fixture
def gloo(tmp_path: Path) -> Iterator[None]:
    """A one-rank gloo process group in this process (DDP needs one)."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    store = dist.FileStore(str(tmp_path / "gloo-store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _compiled(model: nn.Module) -> nn.Module:
    return torch.compile(model)  # wraps only: nothing is compiled until the first call


def _ddp(model: nn.Module) -> nn.Module:
    return nn.parallel.DistributedDataParallel(model)


WRAPPERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "compile": _compiled,
    "ddp": _ddp,
    "compile(ddp)": lambda m: _compiled(_ddp(m)),
}
PREFIX = {"compile": "_orig_mod.", "ddp": "module.", "compile(ddp)": "_orig_mod.module."}


def _files(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in ("model.safetensors", "report.json", "report.md", "spec.yaml")}


# ---- unwrap ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_unwrap_finds_the_built_model(wrapper: str, gloo: None) -> None:
    model = _build("tied_autoencoder")
    wrapped = WRAPPERS[wrapper](model)
    assert next(iter(wrapped.state_dict())).startswith(PREFIX[wrapper])  # what the wrappers do to names
    assert unwrap(wrapped) is model
    assert unwrap(model) is model


def test_unwrap_data_parallel() -> None:
    model = _build("siamese")
    assert unwrap(nn.DataParallel(model)) is model


# ---- report, save, build_info, retie, grads, materialize on wrapped models -----------------------
@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_report_of_a_wrapped_model_is_the_models_report(name: str, wrapper: str, gloo: None) -> None:
    model = _build(name)
    plain = modelspec.report(model)
    wrapped = modelspec.report(WRAPPERS[wrapper](model))
    assert wrapped == plain
    assert not [n for e in wrapped.tensors for n in e.aliases if n.startswith(("_orig_mod.", "module."))]
    assert wrapped.spec_sha256 is not None  # the build information was found through the wrapper


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_save_of_a_wrapped_model_writes_the_models_folder(name: str, wrapper: str, gloo: None, tmp_path: Path) -> None:
    model = _build(name)
    modelspec.save(model, tmp_path / "plain")
    modelspec.save(WRAPPERS[wrapper](model), tmp_path / "wrapped")  # no spec=: the wrapper is looked through
    assert _files(tmp_path / "wrapped") == _files(tmp_path / "plain")
    loaded = modelspec.load(tmp_path / "wrapped")
    assert list(loaded.state_dict()) == list(model.state_dict())


@pytest.mark.parametrize("wrapper", ["compile", "ddp"])
def test_save_after_training_through_the_wrapper(wrapper: str, gloo: None, tmp_path: Path) -> None:
    model = _build("gpt2")
    # backend="eager": dynamo captures and runs the graph without generating code (seconds, not minutes)
    wrapped = torch.compile(model, backend="eager") if wrapper == "compile" else _ddp(model)
    opt = torch.optim.SGD(modelspec.parameters(wrapped), lr=0.1)
    idx = torch.randint(0, TINY_GPT["vocab"], (2, 8), generator=torch.Generator().manual_seed(0))
    wrapped(idx).square().mean().backward()
    opt.step()
    head, wte = model.get_submodule("lm_head").weight, model.get_submodule("transformer.wte").weight
    assert head is wte  # the tie held through the wrapper and the step
    modelspec.save(wrapped, tmp_path / "wrapped")
    modelspec.save(model, tmp_path / "plain")
    assert _files(tmp_path / "wrapped") == _files(tmp_path / "plain")
    loaded = modelspec.load(tmp_path / "wrapped")
    assert torch.equal(loaded.get_submodule("lm_head").weight, head)


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_build_info_through_a_wrapper(wrapper: str, gloo: None) -> None:
    model = _build("siamese")
    assert modelspec.build_info(WRAPPERS[wrapper](model)) is modelspec.build_info(model)


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_retie_through_a_wrapper(wrapper: str, gloo: None) -> None:
    model = _build("gpt2")
    wrapped = WRAPPERS[wrapper](model)
    head = model.get_submodule("lm_head")
    assert modelspec.retie(wrapped) is wrapped  # the ties hold: nothing to replace, whatever the wrapper
    head.weight = nn.Parameter(model.get_submodule("transformer.wte").weight.detach().clone())  # tie broken
    if "ddp" in wrapper:
        # DDP's reducer holds the Parameters it was given: a replaced one would silently stop syncing
        with pytest.raises(modelspec.UsageError) as e:
            modelspec.retie(wrapped)
        assert e.value.code == "wrapped"
        assert head.weight is not model.get_submodule("transformer.wte").weight  # nothing was changed
        return
    assert modelspec.retie(wrapped) is wrapped
    assert head.weight is model.get_submodule("transformer.wte").weight


def test_grads_of_a_compiled_model_equal_the_models(gloo: None) -> None:
    model = _build("tied_autoencoder")
    plain = modelspec.grads(model)
    for wrapped in (_compiled(model), _ddp(model)):
        assert modelspec.grads(wrapped) == plain  # run eagerly on the model inside: same names and numbers


def test_materialize_through_a_wrapper() -> None:
    direct = _build("tied_autoencoder")
    compiled = _compiled(modelspec.build(ZOO / "tied_autoencoder.yaml", device="meta"))
    assert modelspec.materialize(compiled) is compiled
    for (n, a), (m, b) in zip(unwrap(compiled).state_dict().items(), direct.state_dict().items(), strict=True):
        assert n == m
        assert torch.equal(a, b), n


def test_parameters_through_a_wrapper(gloo: None) -> None:
    model = _build("gpt2")
    assert modelspec.parameters(_ddp(model)) == list(model.parameters())


# ---- build_info survives copies -------------------------------------------------------------------
def _pickled(model: nn.Module) -> nn.Module:
    return pickle.loads(pickle.dumps(model))


def _torch_saved(model: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)  # whole-module pickling: in this test only


COPIES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "deepcopy": copy.deepcopy,
    "pickle": _pickled,
    "torch.save": _torch_saved,
}


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("how", list(COPIES))
def test_build_info_survives_copies(name: str, how: str) -> None:
    model = _build(name)
    copied = COPIES[how](model)
    assert copied is not model
    info, original = modelspec.build_info(copied), modelspec.build_info(model)
    assert info is not None
    assert info.spec.sha256 == original.spec.sha256
    assert info.block_sites == original.block_sites


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("how", list(COPIES))
def test_save_of_a_copy_needs_no_spec(name: str, how: str, tmp_path: Path) -> None:
    model = _build(name)
    copied = COPIES[how](model)
    modelspec.save(model, tmp_path / "original")
    modelspec.save(copied, tmp_path / "copy")  # no spec=, and the folder is new: the copy carries its spec
    assert _files(tmp_path / "copy") == _files(tmp_path / "original")
    assert modelspec.report(copied) == modelspec.report(model)


@pytest.mark.parametrize("name", SPECS)
def test_carrying_build_info_adds_no_state(name: str) -> None:
    model = _build(name)
    keys = list(model.state_dict())
    tensors = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    tensors += [n for n, _ in model.named_buffers(remove_duplicate=False)]
    assert sorted(keys) == sorted(tensors)  # parameters and buffers only: the info is neither
    assert not [k for k in keys if "modelspec" in k]
    assert list(copy.deepcopy(model).state_dict()) == keys
    assert list(_pickled(model).state_dict()) == keys


def test_a_copy_keeps_a_loaded_models_info(tmp_path: Path) -> None:
    modelspec.save(_build("gpt2"), tmp_path / "b")
    loaded = modelspec.load(tmp_path / "b")
    copied = copy.deepcopy(loaded)
    assert modelspec.build_info(copied) is modelspec.build_info(loaded)  # immutable: shared, not copied
    modelspec.save(copied, tmp_path / "c")
    same = ("model.safetensors", "report.json")  # spec.yaml's header names the file it was resolved from
    assert [(tmp_path / "c" / n).read_bytes() for n in same] == [(tmp_path / "b" / n).read_bytes() for n in same]


def test_a_module_modelspec_did_not_build_has_no_info() -> None:
    plain = nn.Sequential(nn.Linear(2, 2))
    assert modelspec.build_info(plain) is None
    assert modelspec.build_info(copy.deepcopy(plain)) is None
    assert modelspec.build_info(_compiled(plain)) is None
