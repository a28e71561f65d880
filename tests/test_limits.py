"""Devices that are not here, and sizes that cannot be allocated: clean errors with codes.

Nothing here allocates much: every size is far beyond any machine's address space (so
the allocator refuses at once, without touching memory), or the memory available is
faked to be small. The errors must come from the size check, before allocating.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import D2L, write

import modelspec
from modelspec import SpecError, UsageError
from modelspec import _api as api
from modelspec import _memory as memory
from modelspec.cli import main

HUGE = 10**9  # HUGE x HUGE float32 is 4 EB: more than a 64-bit address space can map
INPUT = f"[{HUGE}, 100000000, 4]"  # 1.6 EB of float32, yet a size PyTorch can describe (meta)


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------ devices
def _unavailable(kind: str) -> bool:
    return api._device_count(kind) == 0


@pytest.mark.parametrize(
    "device",
    [
        "cpu:99",
        "cpu:1",
        "meta:1",
        "nonsense",
        "cuda:99",
        pytest.param("xla", marks=pytest.mark.skipif(not _unavailable("xla"), reason="xla is available here")),
        pytest.param("mps", marks=pytest.mark.skipif(not _unavailable("mps"), reason="mps is available here")),
        pytest.param("xpu", marks=pytest.mark.skipif(not _unavailable("xpu"), reason="xpu is available here")),
        pytest.param("cuda", marks=pytest.mark.skipif(not _unavailable("cuda"), reason="CUDA is available here")),
    ],
)
def test_devices_that_are_not_here_are_refused_before_building(
    device: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("built before the device was checked")

    folder = modelspec.write_build(D2L / "shared.yaml", tmp_path / "folder").out
    monkeypatch.setattr(api, "build_module", no_build)
    for call in (
        lambda: modelspec.build(D2L / "shared.yaml", device=device),
        lambda: modelspec.load(folder, device=device),
        lambda: modelspec.write_build(D2L / "shared.yaml", tmp_path / "out", device=device),
        lambda: api.open_target(D2L / "shared.yaml", device=device),
    ):
        with pytest.raises(UsageError) as info:
            call()
        assert info.value.code == "bad-device"
        assert "'cpu'" in str(info.value) or "'meta'" in str(info.value)  # names what to use instead
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["build", "report"])
def test_cli_bad_device_is_a_usage_error_not_a_spec_error(command: str, tmp_path: Path) -> None:
    device = "xla" if _unavailable("xla") else "cpu:99"
    argv = [command, str(D2L / "shared.yaml"), "--device", device]
    if command == "build":
        argv += ["-o", str(tmp_path / "out")]
    code, out, err = _run(*argv)
    assert code == 2 and "error[bad-device]" in err
    assert "build-error" not in err and "Traceback" not in err and out == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device", ["cpu", "cpu:0", "meta"])
def test_devices_that_are_here_are_accepted(device: str) -> None:
    net = modelspec.build(D2L / "shared.yaml", device=device)
    assert net[2] is net[4]


# ------------------------------------------------------------------ sizes
def test_example_input_too_large_is_refused_before_allocating(tmp_path: Path) -> None:
    spec = write(tmp_path, f"modelspec: 1\ninput: {{shape: {INPUT}}}\nmodel: [{{Linear: [4, 4]}}]\n")
    with pytest.raises(UsageError) as info:
        modelspec.build(spec)
    assert info.value.code == "too-large"
    assert info.value.__cause__ is None  # the size check, not the allocator, said no
    assert "EiB" in str(info.value) and "input.shape" in str(info.value)
    modelspec.build(spec, device="meta")  # structure only: nothing to allocate
    beyond = write(tmp_path, f"modelspec: 1\ninput: {{shape: [{HUGE}, {HUGE}, 16]}}\nmodel: [{{Linear: [16, 4]}}]\n")
    with pytest.raises(UsageError) as info:
        modelspec.build(beyond, device="meta")  # 2^63 bytes and more: no tensor, not even on meta
    assert info.value.code == "too-large"
    code, _, err = _run("report", str(spec))
    assert code == 2 and "error[too-large]" in err and "Traceback" not in err


def test_example_input_against_a_small_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1 << 20)  # pretend 1 MiB is free
    spec = write(tmp_path, "modelspec: 1\ninput: {shape: [1024, 1024]}\nmodel: [{Linear: [1024, 4]}]\n")  # 4 MiB
    with pytest.raises(UsageError) as info:
        modelspec.build(spec)
    assert info.value.code == "too-large" and "4.00 MiB" in str(info.value) and "1.00 MiB" in str(info.value)


def test_allocator_refusal_is_the_same_error_when_memory_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)  # no check beforehand
    spec = write(tmp_path, f"modelspec: 1\ninput: {{shape: {INPUT}}}\nmodel: [{{Linear: [4, 4]}}]\n")
    with pytest.raises(UsageError) as info:
        modelspec.build(spec)
    assert info.value.code == "too-large" and isinstance(info.value.__cause__, RuntimeError)


def test_grads_batch_too_large_is_refused_before_allocating() -> None:
    net = modelspec.build(D2L / "shared.yaml")
    with pytest.raises(UsageError) as info:
        modelspec.grads(net, batch=10**17)
    assert info.value.code == "too-large" and info.value.__cause__ is None and "--batch" in str(info.value)
    code, out, err = _run("grads", str(D2L / "shared.yaml"), "--batch", str(10**17))
    assert code == 2 and "error[too-large]" in err and "Traceback" not in err and out == ""


def test_grads_pass_that_runs_out_of_memory(tmp_path: Path) -> None:
    # the padding makes an activation of 2 x 10^15 floats: built on meta fine, refused in the pass
    spec = write(tmp_path, "modelspec: 1\ninput: {shape: [2, 4]}\n"
                           "model: [{Linear: [4, 4]}, {ConstantPad1d: [1000000000000000, 0.0]}]\n")  # fmt: skip
    code, _, err = _run("grads", str(spec))
    assert code == 2 and "error[too-large]" in err and "Traceback" not in err


def test_layer_too_large_names_its_size_and_meta(tmp_path: Path) -> None:
    spec = write(tmp_path, f"modelspec: 1\ninput: {{shape: [2, {HUGE}]}}\nmodel:\n  - Linear: [{HUGE}, {HUGE}]\n")
    with pytest.raises(SpecError) as info:
        modelspec.build(spec)
    (d,) = info.value.diagnostics
    assert (d.code, d.line, d.column) == ("too-large", 4, 5)
    assert "3.47 EiB" in d.message and d.hint is not None and "--device meta" in d.hint
    rep = modelspec.report(modelspec.build(spec, device="meta"))  # what the hint suggests works
    assert rep.totals.unique_params == HUGE * HUGE + HUGE
    code, _, err = _run("report", str(spec))
    assert code == 2 and "error[too-large]" in err and "build-error" not in err


def test_other_grads_errors_carry_codes() -> None:
    frozen = modelspec.build("modelspec: 1\ninput: {shape: [2, 4]}\nmodel: [ReLU]\n")
    with pytest.raises(UsageError) as info:
        modelspec.grads(frozen)
    assert info.value.code == "no-gradient"
    import torch

    with pytest.raises(UsageError) as info:
        modelspec.grads(modelspec.build(D2L / "shared.yaml"), torch.zeros(2, 5))
    assert info.value.code == "input-mismatch"
    with pytest.raises(UsageError) as info:
        modelspec.grads(torch.nn.Linear(2, 2))
    assert info.value.code == "no-input"
