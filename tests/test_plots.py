"""Histograms (the optional ``plots`` extra): files per tensor or per block, and the install hint."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import D2L, ROOT
from torch import nn

import modelspec
from modelspec._errors import ModelspecError
from modelspec._plots import INSTALL_HINT, save_histograms


def built(name: str) -> tuple[nn.Module, modelspec.Report]:
    net = modelspec.build(D2L / name)
    return net, modelspec.report(net)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_missing_matplotlib_raises_the_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    net, report = built("net.yaml")
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes `import` raise ImportError
    with pytest.raises(ModelspecError, match=r"pip install 'torch-modelspec\[plots\]'") as info:
        save_histograms(net, report, tmp_path)
    assert isinstance(info.value.__cause__, ImportError)
    assert INSTALL_HINT == "pip install 'torch-modelspec[plots]'"
    assert not list(tmp_path.iterdir())  # nothing written


def test_importing_plots_does_not_import_matplotlib() -> None:
    code = "import sys, modelspec._plots; print('matplotlib' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, not an installed modelspec
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, env=env)
    assert run.stdout.strip() == "False"


def test_one_png_per_unique_tensor(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    net, report = built("shared.yaml")
    paths = save_histograms(net, report, tmp_path / "plots")
    # the shared layer's weight is one tensor: one plot, under its canonical name
    assert [p.name for p in paths] == [f"{e.name}.png" for e in report.tensors]
    assert not (tmp_path / "plots" / "4.weight.png").exists()
    assert sorted(tmp_path.joinpath("plots").iterdir()) == sorted(paths)
    assert all(png_size(p) == (640, 400) for p in paths)


def test_one_png_per_block(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    net, report = built("shared_mlp.yaml")
    paths = save_histograms(net, report, tmp_path, by="block", bins=20)
    assert [p.name for p in paths] == ["shared_layer.png", "_no_block_.png"]
    assert all(png_size(p) == (640, 400) for p in paths)


def test_same_values_same_bytes(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    net, report = built("shared.yaml")
    first = save_histograms(net, report, tmp_path / "a", by="block")
    second = save_histograms(net, report, tmp_path / "b", by="block")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_constant_and_nonfinite_tensors_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    net = nn.Sequential(nn.LayerNorm(4), nn.Linear(2, 2))
    with torch.no_grad():
        net[1].weight.fill_(float("nan"))  # nothing finite: the plot says so instead of failing
    paths = save_histograms(net, modelspec.report(net), tmp_path)
    assert [p.name for p in paths] == ["0.weight.png", "0.bias.png", "1.weight.png", "1.bias.png"]


def test_file_names_are_clean_and_unique(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    net = nn.ModuleDict({"a/b": nn.Linear(1, 1, bias=False), "a_b": nn.Linear(1, 1, bias=False)})
    paths = save_histograms(net, modelspec.report(net), tmp_path)
    assert [p.name for p in paths] == ["a_b.weight.png", "a_b.weight-2.png"]
    assert all(p.parent == tmp_path for p in paths)


def test_bad_arguments_and_mismatched_inputs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    net, report = built("net.yaml")
    with pytest.raises(ModelspecError, match="by must be"):
        save_histograms(net, report, tmp_path, by="layer")  # type: ignore[arg-type]
    with pytest.raises(ModelspecError, match="bins"):
        save_histograms(net, report, tmp_path, bins=0)
    other, _ = built("nest_mlp.yaml")
    with pytest.raises(ModelspecError, match="does not have"):
        save_histograms(other, report, tmp_path)
    with torch.device("meta"):
        meta = nn.Linear(2, 2)
    with pytest.raises(ModelspecError, match="meta"):
        save_histograms(meta, modelspec.report(meta), tmp_path)
