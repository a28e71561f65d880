"""The public Python API: orchestrates load -> validate -> resolve -> build -> report/save.

Library code here never prints; it returns values or raises a ModelspecError.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ._build import DTYPES, BuildInfo, build_module, construct_on_meta, example_specs
from ._checkpoint import CHECKPOINT_FILE, Checkpoint, find_checkpoint, open_checkpoint, save_checkpoint, unique_state
from ._consistency import check_report, read_report
from ._diff import Diff, diff_reports
from ._distributed import is_sharded, on_rank0
from ._errors import (
    BuildDirError,
    Collector,
    Diagnostic,
    ReportError,
    SpecPath,
    SpecWarning,
    TieMismatchError,
    UsageError,
)
from ._files import atomic_dir, check_target, recover
from ._flow import generate_code
from ._fmt import human_bytes
from ._grads import GradReport, Loss, example_batch, gradients
from ._html import render_html
from ._inventory import Report, inventory
from ._memory import ITEMSIZE, MemoryEstimate, allocating, available_bytes, estimate_from_entries, tensor_bytes
from ._plugins import import_plugins
from ._process import fault_point
from ._report import render_json, render_md
from ._resolve import Resolved, resolve
from ._shards import INDEX_SUFFIX, parse_size
from ._skeleton import described_skeleton
from ._spec import Spec
from ._ties import OUTSIDE, check_ties, retie_module, transposed_map
from ._validate import Overrides, SpecSource, compile_spec, validate
from ._wrap import INFO as _INFO
from ._wrap import has_ddp, unwrap
from ._yaml_scalars import dump as dump_yaml

__all__ = [
    "CHECKPOINT_FILE",
    "REPORT_JSON",
    "REPORT_MD",
    "SPEC_FILE",
    "build",
    "build_info",
    "compile_spec",
    "diff",
    "estimate_memory",
    "grads",
    "import_plugins",
    "load",
    "materialize",
    "open_target",
    "report",
    "retie",
    "save",
    "validate",
    "write_build",
]

#: ``progress(done_bytes, total_bytes)``, called while checksums and statistics run.
Progress = Callable[[int, int], None]
SPEC_FILE = "spec.yaml"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

#: a limit in bytes, a size such as ``"16GB"``, or ``"available"``: the memory free on the device now
MaxMemory = int | str | None


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    floating = [name for name, dt in DTYPES.items() if dt.is_floating_point]
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype in floating:
        return DTYPES[dtype]
    raise UsageError(f"dtype {dtype!r} cannot hold parameters; choose one of {', '.join(floating)}", code="bad-dtype")


def _parse_device(device: str | torch.device) -> torch.device:
    """A device that exists here, or UsageError ``bad-device`` naming the ones that do.

    Checked before anything is built: torch accepts ``cpu:99`` or ``xla`` as names and
    fails only later, deep inside a layer's constructor.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"unknown device {device!r}; {_devices_here()}", code="bad-device") from e
    if dev.type in ("cpu", "meta"):
        if dev.index not in (None, 0):
            raise UsageError(f"device {str(dev)!r} does not exist; use {dev.type!r}, the only one", code="bad-device")
        return dev
    count = _device_count(dev.type)
    if count == 0:
        raise UsageError(f"device {str(dev)!r} is not available here; {_devices_here()}", code="bad-device")
    if dev.index is not None and dev.index >= count:
        raise UsageError(
            f"device {str(dev)!r} does not exist: {count} {dev.type} device(s) here; {_devices_here()}",
            code="bad-device",
        )
    return dev


def _device_count(kind: str) -> int:
    """How many devices of an accelerator type this PyTorch can use (0: none, or unknown type)."""
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6: one API for every backend
    if accelerator is not None:
        current = accelerator.current_accelerator()
        return accelerator.device_count() if current is not None and current.type == kind else 0
    if kind == "mps":  # torch < 2.6 had no accelerator API; these two are the common ones
        return int(torch.backends.mps.is_available())
    xpu = getattr(torch, "xpu", None)
    return xpu.device_count() if kind == "xpu" and xpu is not None and xpu.is_available() else 0


def _devices_here() -> str:
    """``devices here: 'cpu', 'cuda' ('cuda:0' to 'cuda:1'), 'meta' (...)``, for messages."""
    names = ["'cpu'"]
    for kind in ("cuda", "mps", "xpu"):
        count = _device_count(kind)
        if count:
            names.append(f"'{kind}'" + (f" ('{kind}:0' to '{kind}:{count - 1}')" if count > 1 else ""))
    return "devices here: " + ", ".join([*names, "'meta' (structure only, no memory)"])


def _build(
    resolved: Resolved, device: str | torch.device, dtype: torch.dtype | str | None, *, transfer: bool = True
) -> nn.Module:
    module, info = build_module(resolved, device=_parse_device(device), dtype=_parse_dtype(dtype), transfer=transfer)
    _INFO[module] = info
    return module


def build(
    source: SpecSource,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    overrides: Overrides | None = None,
    max_memory: MaxMemory = None,
    **variables: Any,
) -> nn.Module:
    """Build the model a spec describes.

    Args:
        source: a path to a YAML spec, or the YAML text itself.
        device: where to allocate; ``"meta"`` gives shapes and counts without memory.
        dtype: convert floating-point parameters after building (e.g. ``torch.bfloat16``).
        overrides: new values for the spec's ``vars`` (``{"n_layer": 24}``); variables
            may also be given as keywords (``n_layer=24``).
        max_memory: refuse, before allocating anything, a model whose weights need more
            bytes than this (an int, or a size such as ``"16GB"``; ``"available"``: the
            memory free on ``device`` now). The estimate comes from a build on ``meta``.

    Returns:
        The model, or an ``nn.ModuleDict`` keyed by model name for a spec with ``models:``.
        Every use of a named block is the same module object.

    Raises:
        SpecError: the spec is invalid; nothing was built.
        SpecError: ``too-large`` (more than ``max_memory``). UsageError: ``bad-size``, ``bad-device``.

    Example:
        >>> net = modelspec.build("specs/d2l/shared.yaml")
        >>> net[2] is net[4]
        True
        >>> gpt2_medium = modelspec.build("specs/zoo/gpt2.yaml", device="meta", n_layer=24, d_model=1024, n_head=16)
    """
    resolved = compile_spec(source, overrides={**(overrides or {}), **variables})
    for w in resolved.spec.warnings:
        warnings.warn(str(w), SpecWarning, stacklevel=2)
    _check_fits(resolved, device, max_memory)
    return _build(resolved, device, dtype)


def estimate_memory(
    source: SpecSource | nn.Module, *, overrides: Overrides | None = None, **variables: Any
) -> MemoryEstimate:
    """What a model takes in memory, per floating dtype, without allocating it.

    Weights (every unique parameter and buffer, each tied tensor once), gradients and
    Adam's two moment buffers, in float32 and bfloat16/float16 (and the model's own dtype
    if it is another); activations are not included. A spec is built on ``meta`` for it.

    Args:
        source: a spec (path or YAML text), or a module (its tensors are counted as they are).
        overrides: new values for the spec's ``vars``; variables may also be keywords.

    Example:
        >>> est = modelspec.estimate_memory("specs/zoo/llama3_70b.yaml")
        >>> est["bfloat16"].weights  # bytes
        141107412992
        >>> est["float32"].training  # weights + gradients + Adam
        1128859303936
    """
    if isinstance(source, nn.Module):
        return _module_estimate(source)
    resolved = compile_spec(source, overrides={**(overrides or {}), **variables})
    module, _ = build_module(resolved, device="meta", transfer=False)
    return _module_estimate(module)


def _module_estimate(module: nn.Module) -> MemoryEstimate:
    params = list(module.parameters())  # each tied tensor once
    buffers = list(module.buffers())
    return estimate_from_entries(
        [(p.numel(), _dtype_name(p.dtype), True, p.requires_grad) for p in params]
        + [(b.numel(), _dtype_name(b.dtype), False, False) for b in buffers]
    )


def _constructed_estimate(resolved: Resolved) -> tuple[MemoryEstimate, tuple[int, SpecPath]]:
    """The estimate from the modules as constructed, before the example pass: a parameter
    that a tie replaces is not counted, nor a lazy layer's (not sized yet). Also returns the
    bytes of the layer holding the most, and where the spec defines it.

    The modules' tensors come from the torch-free skeleton (each layer's tensors by formula,
    microseconds a layer) when every layer is described, else from constructing on meta."""
    made = described_skeleton(resolved)
    if made is not None:
        skel, builder = made
        return _held_estimate(skel, builder.paths, resolved, lambda t: _slot_size(math.prod(t.shape), t.dtype[6:]))
    module, paths = construct_on_meta(resolved)
    return _held_estimate(module, paths, resolved, lambda t: (t.numel(), _dtype_name(t.dtype), t.element_size()))


def _slot_size(numel: int, dtype: str) -> tuple[int, str, int]:
    return numel, dtype, ITEMSIZE[dtype]


def _held_estimate(
    root: Any, paths: dict[int, SpecPath], resolved: Resolved, size: Callable[[Any], tuple[int, str, int]]
) -> tuple[MemoryEstimate, tuple[int, SpecPath]]:
    """:func:`_constructed_estimate` of a module or a skeleton (``size``: a tensor's element
    count, dtype name and bytes per element)."""
    aliases = {t.param for t in resolved.spec.ties}
    names: dict[int, tuple[Any, list[str]]] = {}
    for name, p in root.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), (p, []))[1].append(name)
    counted = {id(p) for p, ns in names.values() if not aliases.intersection(ns) and not _is_unsized(p)}
    largest: tuple[int, SpecPath] = (0, ())
    seen: set[int] = set()
    entries = []
    for m in root.modules():
        held = 0
        for store, is_param in ((m._parameters, True), (m._buffers, False)):
            for t in store.values():
                if t is None or id(t) in seen or (id(t) not in counted if is_param else _is_unsized(t)):
                    continue
                seen.add(id(t))
                numel, dtype, itemsize = size(t)
                held += numel * itemsize
                entries.append((numel, dtype, is_param, is_param and t.requires_grad))
        if held > largest[0]:
            largest = (held, paths.get(id(m), ()))
    return estimate_from_entries(entries), largest


def _is_unsized(t: torch.Tensor) -> bool:
    return isinstance(t, nn.parameter.UninitializedTensorMixin)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_fits(resolved: Resolved, device: str | torch.device, max_memory: MaxMemory) -> None:
    """Refuse a build whose tensors cannot fit, from a build on ``meta`` (nothing allocated).

    Layers are constructed in float32 (a ``dtype`` converts them afterwards), so what
    building needs is the estimate's weights as constructed. Only the constructors run on
    meta (not the example pass): a lazy layer, sized by that pass, is not counted.

    Raises:
        SpecError: ``too-large`` at the layer holding the most, with the estimate and what
            to do instead. UsageError: ``bad-size``, ``bad-device``.
    """
    if max_memory is None:
        return
    dev = _parse_device(device)
    if dev.type == "meta":
        return
    if max_memory == "available":
        limit = available_bytes(dev)
        if limit is None:  # unknown here: the allocator's own refusal is still caught
            return
        where_limit = f"the memory available on {dev}"
    else:
        limit = parse_size(max_memory)
        where_limit = "--max-memory"
    est, (biggest, where) = _constructed_estimate(resolved)
    need = est.current.weights
    if need <= limit:
        return
    spec = resolved.spec
    name = spec.file if spec.file != "<spec>" else "SPEC"
    errors = Collector(file=spec.file, positions=spec.positions)
    errors.add(
        "too-large",
        f"the model needs {human_bytes(need)} for its weights ({est.params:,} parameters in {est.dtype}), more "
        f"than the {human_bytes(limit)} of {where_limit}; nothing was built (this layer holds {human_bytes(biggest)})",
        where,
        hint=f"see its memory without allocating: 'modelspec report {name} --device meta'; in bfloat16 "
        f"(--dtype bfloat16) it keeps {human_bytes(est['bfloat16'].weights)} once built, but its layers are "
        "constructed in float32 first; or allow more with --max-memory SIZE",
    )
    errors.raise_if_errors()


def build_info(module: nn.Module) -> BuildInfo | None:
    """What modelspec knows about a module it built or loaded (None for others).

    The module carries it: it survives ``copy.deepcopy``, pickling and ``torch.compile``,
    DDP and DataParallel wrappers (see :func:`modelspec._wrap.unwrap`)."""
    return _INFO.get(module)


def report(module: nn.Module, *, progress: Progress | None = None) -> Report:
    """The parameter inventory of any module: unique tensors, aliases, ties, totals.

    Modules built or loaded by modelspec also get block names and the spec's hash. A
    model wrapped by ``torch.compile``, DDP or DataParallel is reported as the model
    inside (its own names, without ``_orig_mod.`` or ``module.``). On an FSDP2-sharded
    model every rank must call it: rank 0 gathers the full values and makes the report,
    and every rank returns it.
    """
    module = unwrap(module)
    if is_sharded(module):
        return on_rank0(
            module,
            lambda: _skeleton(module, None, None),
            lambda plain: inventory(plain, _INFO[plain], progress=progress),
            render_json,
            lambda text: read_report(text, "<report from rank 0>"),
        )
    return inventory(module, _INFO.get(module), progress=progress)


def _spec_for(module: nn.Module, spec: SpecSource | None, folder: Path | None) -> Resolved:
    """The spec a module is saved or reported by: ``spec=``, else the module's own build, else
    ``folder/spec.yaml`` (when saving into an existing build folder)."""
    info = _INFO.get(module)
    if spec is not None:
        return compile_spec(spec)
    if info is not None:
        return resolve(info.spec)
    if folder is not None and (folder / SPEC_FILE).is_file():
        return _folder_spec(folder)
    if folder is None:  # report(): no spec to pass
        raise UsageError(
            "modelspec does not know this sharded module's spec: report a model modelspec built or loaded "
            "(or modelspec.save(model, DIR, spec=...) it and report DIR)",
            code="no-spec",
        )
    raise BuildDirError(
        f"modelspec does not know this module's spec and {folder} holds no {SPEC_FILE}: "
        "pass spec=..., or save into the module's existing build folder",
        code="no-spec",
    )


def _skeleton(module: nn.Module, spec: SpecSource | None, folder: Path | None) -> nn.Module:
    """The spec's model on meta, known to modelspec: to hold a sharded model's gathered values."""
    info = _INFO.get(module)
    skeleton, built = build_module(_spec_for(module, spec, folder), device="meta", transfer=False)
    if info is not None and info.spec.sha256 == built.spec.sha256:
        built = replace(built, transfers=info.transfers)
    _INFO[skeleton] = built
    return skeleton


# ------------------------------------------------------------------ build folders
#: bytes, or text like ``"5GB"``, ``"500MB"``, ``"2GiB"``
ShardSize = int | str


def _write_folder(
    module: nn.Module,
    info: BuildInfo,
    out: Path,
    progress: Progress | None = None,
    max_shard_size: ShardSize | None = None,
) -> Report:
    if max_shard_size is not None:
        parse_size(max_shard_size)  # a bad size is refused before the costly report
    rep = inventory(module, info, progress=progress)
    spec_text = _resolved_header(info.spec) + dump_yaml(info.spec.to_data())
    with atomic_dir(out, keep=_spec_files(info.spec)) as tmp:
        (tmp / SPEC_FILE).write_text(spec_text, encoding="utf-8")
        fault_point("wrote-spec")
        hashes = {e.name: e.sha256 for e in rep.tensors if e.sha256}
        save_checkpoint(module, tmp / CHECKPOINT_FILE, spec_sha256=info.spec.sha256, hashes=hashes,
                        transfers=info.transfers, max_shard_size=max_shard_size, sync=False)  # fmt: skip
        fault_point("wrote-checkpoint")
        (tmp / REPORT_JSON).write_text(render_json(rep), encoding="utf-8")
        (tmp / REPORT_MD).write_text(render_md(rep), encoding="utf-8")
        (tmp / REPORT_HTML).write_text(render_html(rep), encoding="utf-8")
        fault_point("wrote-reports")
    return rep


def _spec_files(spec: Spec) -> list[Path]:
    """The spec file a build was made from, which writing the build must never replace."""
    return [Path(spec.file)] if spec.file != "<spec>" and Path(spec.file).is_file() else []


def _resolved_header(spec: Spec) -> str:
    return (
        f"# Resolved by modelspec from {Path(spec.file).name} (canonical sha256 {spec.sha256}).\n"
        "# Positional arguments are bound to their names; anchors and aliases are expanded.\n"
        + ("# Variables are substituted; 'vars' holds the values used.\n" if spec.vars else "")
    )


@dataclass(frozen=True)
class BuildResult:
    """What ``write_build`` produced."""

    module: nn.Module
    report: Report
    out: Path
    warnings: tuple[Diagnostic, ...]


def write_build(
    source: SpecSource,
    out: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    progress: Progress | None = None,
    overrides: Overrides | None = None,
    max_shard_size: ShardSize | None = None,
    max_memory: MaxMemory = None,
) -> BuildResult:
    """Build a spec and write its folder (checkpoint, reports, resolved spec) atomically.

    ``max_memory`` refuses a model too large before anything is allocated or written (see
    :func:`build`; the command line passes ``"available"`` unless told ``--max-memory``).

    Nothing is left behind on error: the folder appears complete or not at all. An
    existing ``out`` is replaced only if it is empty or holds nothing but the files a
    previous build wrote there (as its ``manifest.json`` lists them, unchanged).

    ``max_shard_size`` (bytes, or ``"5GB"``, ``"500MB"``, ``"2GiB"``): a checkpoint whose
    tensors take more is written as ``model-00001-of-0000N.safetensors`` ... plus
    ``model.safetensors.index.json``; by default it is always one ``model.safetensors``.

    Raises:
        BuildDirError: ``out`` is in the way; codes ``not-a-build-folder`` (not written by
            modelspec), ``in-the-way`` (a build folder with something else in it),
            ``would-overwrite-spec`` (it holds the spec being built), ``not-a-folder``.
        SpecError: ``too-large`` (see ``max_memory``).
    """
    if _parse_device(device).type == "meta":
        raise BuildDirError(
            "cannot write a checkpoint of a model on the meta device; use 'modelspec report'", code="meta-device"
        )
    resolved = compile_spec(source, overrides=overrides)
    dt = _parse_dtype(dtype)
    if max_shard_size is not None:
        parse_size(max_shard_size)  # refuse a bad size before the costly build
    recover(out)
    check_target(Path(os.path.abspath(out)), _spec_files(resolved.spec))  # refuse before the costly build
    _check_fits(resolved, device, max_memory)
    module = _build(resolved, device, dt)
    rep = _write_folder(module, _INFO[module], Path(out), progress, max_shard_size)
    return BuildResult(module, rep, Path(out), resolved.spec.warnings)


def _folder_spec(build_dir: Path) -> Resolved:
    recover(build_dir)  # a build killed while replacing this folder: put the old one back, tidy up
    spec_path = build_dir / SPEC_FILE
    if not build_dir.is_dir():
        raise BuildDirError(f"{build_dir} is not a folder", code="not-a-folder")
    if not spec_path.is_file() or find_checkpoint(build_dir) is None:
        raise BuildDirError(
            f"{build_dir} is not a modelspec build folder (needs {SPEC_FILE} and {CHECKPOINT_FILE}, "
            f"or the {CHECKPOINT_FILE}{INDEX_SUFFIX} of its shards)",
            code="not-a-build-folder",
        )
    return compile_spec(spec_path)


def save(
    module: nn.Module,
    build_dir: str | os.PathLike[str],
    *,
    spec: SpecSource | None = None,
    max_shard_size: ShardSize | None = None,
) -> Path:
    """Write a build folder for ``module``'s current values (e.g. after training).

    The spec comes from ``spec=``, else from the module's own build (kept through
    ``copy.deepcopy`` and pickling), else from ``build_dir/spec.yaml``. A model wrapped by
    ``torch.compile``, DDP or DataParallel is saved as the model inside. The module must
    still have exactly the tensors and ties its spec declares. ``max_shard_size``: as for
    :func:`write_build`; the folder is replaced whole, so shards of an earlier save never
    survive.

    Raises:
        TieMismatchError: sharing, names or shapes no longer match the spec: ``tie-mismatch``
            (a declared tie is broken, e.g. by ``load_state_dict(assign=True)``: see
            :func:`retie`; or the module ties what the spec does not: the message gives the
            ``ties:`` entry to add), ``names-mismatch``, ``shape-mismatch``.
        BuildDirError: ``build_dir`` holds something modelspec did not write (as for ``write_build``).

    On an FSDP2-sharded model every rank must call it: rank 0 gathers the full values and
    writes the folder, the other ranks write nothing (and raise rank 0's error, if any).
    """
    module = unwrap(module)  # torch.compile / DDP: save the model inside, under its own names
    if is_sharded(module):
        # rank 0 writes the folder from the gathered values; every rank returns its path
        return on_rank0(
            module,
            lambda: _skeleton(module, spec, Path(build_dir)),
            lambda p: save(p, build_dir, spec=spec, max_shard_size=max_shard_size),
            str,
            Path,
        )
    out = Path(build_dir)
    recover(out)
    resolved = _spec_for(module, spec, out)
    expected, info = build_module(resolved, device="meta", transfer=False)  # structure only
    own = _INFO.get(module)
    if own is not None and own.spec.sha256 == info.spec.sha256:
        info = replace(info, transfers=own.transfers)  # where its initial values came from
    _check_same_structure(module, expected)
    if unique_state(module)[1] != unique_state(expected)[1] or transposed_map(module) != transposed_map(expected):
        # The same ties, but the module registers its children in another order (another name
        # of a tied tensor comes first), or it computes a transposed tie in its own forward:
        # write the values as the spec's model holds them.
        module = _in_spec_order(module, expected, resolved.spec)
    _write_folder(module, info, out, max_shard_size=max_shard_size)
    return out


def _in_spec_order(module: nn.Module, expected: nn.Module, spec: Spec) -> nn.Module:
    """``expected`` (the spec's model on meta) holding ``module``'s values, dtypes and
    ``requires_grad`` flags: its traversal order gives the canonical names."""
    device = next(iter(module.state_dict().values()), torch.empty(0)).device
    target = expected.to_empty(device=device)
    retie_module(target, spec.ties, verify=False)  # to_empty breaks parameter ties
    mine = {
        **dict(module.named_parameters(remove_duplicate=False)),
        **dict(module.named_buffers(remove_duplicate=False)),
    }
    theirs = {
        **dict(target.named_parameters(remove_duplicate=False)),
        **dict(target.named_buffers(remove_duplicate=False)),
    }
    with torch.no_grad():
        for name, t in theirs.items():
            src = mine.get(name)
            if src is None:
                continue
            if t.dtype != src.dtype:
                t.data = torch.empty_like(src)  # keeps the object, and so the ties
            t.copy_(src)
            if isinstance(t, nn.Parameter):
                t.requires_grad_(src.requires_grad)
    return target


def _check_same_structure(module: nn.Module, expected: nn.Module) -> None:
    """Refuse ``module`` unless it has the tensor names, ties and shapes of ``expected``
    (the spec's model on meta). Ties are compared as groups of names, so the order in
    which a module registers its children does not matter."""
    have_t, have_ties = unique_state(module)
    want_t, want_ties = unique_state(expected)
    have_names, want_names = set(have_t) | set(have_ties), set(want_t) | set(want_ties)
    problems = _transposed_problems(transposed_map(module), transposed_map(expected), have_names)
    code = "tie-mismatch"
    if problems:
        pass
    elif have_names != want_names:
        missing, extra = sorted(want_names - have_names), sorted(have_names - want_names)
        problems.append(f"state_dict keys differ (missing {missing[:5]}, unexpected {extra[:5]})")
        code = "names-mismatch"
    else:
        problems = _same_tie_problems(module, have_ties, want_ties)
        if not problems:
            code = "shape-mismatch"
            have_all = {**have_t, **{alias: have_t[canonical] for alias, canonical in have_ties.items()}}
            for name, t in want_t.items():
                if tuple(have_all[name].shape) != tuple(t.shape):
                    problems.append(f"'{name}' has shape {list(have_all[name].shape)}, the spec gives {list(t.shape)}")
    if problems:
        raise TieMismatchError("the module no longer matches its spec: " + "; ".join(problems[:8]), code=code)


_RETIE_HINT = " (modelspec.retie(model) restores the spec's ties)"


def _transposed_problems(have: dict[str, str], want: dict[str, str], have_names: set[str]) -> list[str]:
    """How the module's transposed ties differ from the spec's.

    A declared one that the module neither links nor holds a tensor for is accepted: the
    module computes with the source directly (a handwritten or exported model), and
    what is saved is exactly what the spec's model stores.
    """
    problems = []
    for name, source in sorted(want.items()):
        if name in have and have[name] != source:
            now = "a parameter outside the model" if have[name].startswith(OUTSIDE) else f"'{have[name]}'"
            problems.append(f"'{name}' should read '{source}' transposed but reads {now}{_RETIE_HINT}")
        elif name not in have and name in have_names:
            problems.append(f"'{name}' should read '{source}' transposed but is a tensor of its own{_RETIE_HINT}")
    for name, source in sorted(have.items()):
        if name not in want:
            problems.append(
                f"'{name}' reads '{source}' transposed but the spec declares no such tie: "
                f"add '- {{param: {name}, to: {source}, transposed: true}}' under 'ties:'"
            )
    return problems


def _groups(ties: dict[str, str]) -> dict[str, frozenset[str]]:
    """name -> every name of its tensor, from an ``{alias: canonical}`` map."""
    members: dict[str, set[str]] = {}
    for alias, canonical in ties.items():
        members.setdefault(canonical, {canonical}).add(alias)
    return {n: frozenset(g) for g in members.values() for n in g}


def _same_tie_problems(module: nn.Module, have: dict[str, str], want: dict[str, str]) -> list[str]:
    """Names that should be one tensor and are not, and names that are one tensor but should not be."""
    have_g, want_g = _groups(have), _groups(want)
    problems = []
    for alias, canonical in want.items():
        if have_g.get(alias, {alias}) != have_g.get(canonical, {canonical}):
            problems.append(f"'{alias}' should be the same tensor as '{canonical}' but is separate{_RETIE_HINT}")
    for alias, canonical in have.items():
        if want_g.get(alias, {alias}) != want_g.get(canonical, {canonical}):
            owner, other = (module.get_submodule(n.rpartition(".")[0]) for n in (alias, canonical))
            fix = (
                "make that module a named block used at both places ('use:')"
                if owner is other
                else f"add '- {{param: {alias}, to: {canonical}}}' under 'ties:'"
            )
            problems.append(f"'{alias}' and '{canonical}' are the same tensor, but the spec does not tie them: {fix}")
    return problems


def retie(model: nn.Module, *, spec: SpecSource | None = None, verify: bool = True) -> nn.Module:
    """Restore the parameter ties a spec declares on ``model``, in place.

    Some PyTorch operations silently replace a tied parameter by a separate one:
    ``to_empty(device=...)`` of a model built on ``meta``, ``load_state_dict(sd,
    assign=True)``, reloading a ``torch.export`` program. ``retie`` makes each declared
    tie true again (one ``nn.Parameter``; for a transposed tie the module reads its
    source again and drops its own copy). Ties that hold are left alone.

    Args:
        model: a module built or loaded by modelspec, or any module with the spec's
            parameter names when ``spec`` is given.
        spec: the spec (path or YAML text) whose ``ties:`` to restore; by default the
            one ``model`` was built from.
        verify: restore a tie only if both tensors hold the same values (transposed:
            one is the other transposed). ``False`` keeps the values of each tie's
            ``to`` (right after ``to_empty``, when values are not yet meaningful).

    Returns:
        ``model``, for chaining: ``model = modelspec.retie(model.to_empty(device="cuda"), verify=False)``.

    Raises:
        TieMismatchError: ``tie-values`` (with ``verify``, the two tensors differ),
            ``tie-shape``, ``tie-missing`` (a name is not a parameter of ``model``).
        UsageError: ``no-spec`` (not built by modelspec and no ``spec`` given).
        SpecError: ``spec`` is not a valid spec.

    Example:
        >>> model = modelspec.build("gpt.yaml", device="meta").to_empty(device="cpu")
        >>> model.lm_head.weight is model.transformer.wte.weight
        False
        >>> model.load_state_dict(weights)  # both alias keys hold the same values
        >>> modelspec.retie(model).lm_head.weight is model.transformer.wte.weight
        True
    """
    inner = unwrap(model)  # torch.compile / DDP: the model inside holds the parameters
    if spec is not None:
        ties = compile_spec(spec).spec.ties
    else:
        info = _INFO.get(inner)
        if info is None:
            raise UsageError(
                "modelspec does not know this module's spec: pass spec=... (the spec's path or text)", code="no-spec"
            )
        ties = info.spec.ties
    if has_ddp(model) and check_ties(inner, ties):
        # retie puts new Parameter objects in: DDP's reducer would go on syncing the old ones
        raise UsageError(
            "retie replaces parameters, which DistributedDataParallel would no longer synchronize: retie the "
            "model first, then wrap it in DDP",
            code="wrapped",
        )
    retie_module(inner, ties, verify=verify)
    problems = check_ties(inner, ties)
    if problems:  # e.g. a module between them was replaced by one that cannot hold the tie
        raise TieMismatchError("cannot restore the ties: " + "; ".join(problems[:8]), code="tie-mismatch")
    return model


def load(build_dir: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from a build folder and load its weights.

    Rebuilds from the folder's resolved spec (so every tie comes back as object
    identity) and loads ``model.safetensors`` (or its shards) without pickle. Before anything is
    allocated it verifies the checkpoint's header and metadata (every field present,
    their digest, each tensor's recorded dtype and shape, the data layout), that it was
    written for this spec.yaml, and its tie map, names and shapes against the model;
    then each tensor's sha256.

    Raises:
        BuildDirError: not a build folder. CheckpointError: the checkpoint is damaged,
        edited, or does not match the spec (``code`` says which check failed).
    """
    return _load(Path(build_dir), _parse_device(device))[0]


def _load(folder: Path, device: torch.device) -> tuple[nn.Module, Checkpoint]:
    """``load``, also returning the verified checkpoint (its metadata need not be read again)."""
    resolved = _folder_spec(folder)
    path = find_checkpoint(folder)
    if path is None:  # removed since _folder_spec looked
        raise BuildDirError(f"{folder} has no {CHECKPOINT_FILE}", code="not-a-build-folder")
    ckpt = open_checkpoint(path)  # header and metadata only (of every shard): no tensor data yet
    ckpt.check_spec(resolved.spec.sha256)  # an edited spec.yaml (say, an enormous layer) stops here
    skeleton = _build(resolved, "meta", None, transfer=False)  # the values come from the checkpoint
    ckpt.check_structure(skeleton)  # ties, names, shapes: still nothing allocated
    module = _allocate(resolved, device, skeleton)
    ckpt.load_into(module)  # each tensor takes the dtype it was saved in; sha256 checked first
    _INFO[module] = replace(_INFO[module], transfers=ckpt.transfers)
    return module, ckpt


def _allocate(resolved: Resolved, device: torch.device, skeleton: nn.Module) -> nn.Module:
    """The model with uninitialized storage: ``skeleton`` (built on meta) given real memory.

    Falls back to a normal build when that cannot keep every tensor and tie (a
    non-persistent buffer has no value in the checkpoint). ``to_empty`` breaks
    parameter-level ties: they are restored from the spec.
    """
    _, ties = unique_state(skeleton)
    transposed = transposed_map(skeleton)
    has_volatile = any(getattr(m, "_non_persistent_buffers_set", None) for m in skeleton.modules())
    if not has_volatile:
        info = _INFO[skeleton]
        module = skeleton.to_empty(device=device)
        retie_module(module, resolved.spec.ties, verify=False)  # to_empty breaks parameter ties; values come next
        if unique_state(module)[1] == ties and transposed_map(module) == transposed:
            _INFO[module] = info
            return module
    return _build(resolved, device, None, transfer=False)


def materialize(model: nn.Module, *, device: str | torch.device = "cpu") -> nn.Module:
    """Give a model built on ``meta`` the values ``build`` would give it on ``device``.

    The values are those of ``modelspec.build(spec, device=device)``, bit for bit: the
    same seed, default and rule-based initialization, ties and frozen parameters. The
    module objects stay the ones you hold (hooks, wrappers and references to submodules
    keep working); their parameters and buffers are replaced in place, so shared blocks
    and ties hold as before.

    Raises:
        UsageError: ``no-spec`` (not a model modelspec built), ``bad-device``,
            ``structure-changed`` (its modules, parameters or buffers differ from the spec's).

    Example:
        >>> model = modelspec.build("specs/zoo/gpt2.yaml", device="meta")
        >>> model = modelspec.materialize(model)  # the same weights as a direct build
    """
    wrapper, model = model, unwrap(model)  # torch.compile / DDP: the model inside
    info = _INFO.get(model)
    if info is None:
        raise UsageError(
            "modelspec does not know this module's spec: materialize a model from modelspec.build(..., device='meta')",
            code="no-spec",
        )
    dev = _parse_device(device)
    if dev.type == "meta":
        raise UsageError("materialize gives real values: choose a device other than 'meta'", code="bad-device")
    floating = {p.dtype for p in model.parameters() if p.is_floating_point()}
    dtype = next(iter(floating)) if len(floating) == 1 and floating != {torch.float32} else None
    fresh, _ = build_module(resolve(info.spec), device=dev, dtype=dtype)
    ours = dict(model.named_modules(remove_duplicate=False))
    theirs = dict(fresh.named_modules(remove_duplicate=False))
    problems = [n or "(the model)" for n in ours.keys() ^ theirs.keys()]
    for n, m in ours.items():
        other = theirs.get(n)
        # fx gives every GraphModule a class of its own: compare class names
        if other is not None and (
            type(m).__name__ != type(other).__name__
            or set(m._parameters) != set(other._parameters)
            or set(m._buffers) != set(other._buffers)
        ):
            problems.append(f"{n or '(the model)'} ({type(m).__name__})")
    if problems:
        shown = ", ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise UsageError(f"the model no longer has the structure its spec builds: {shown}", code="structure-changed")
    for name, module in ours.items():
        source = theirs[name]
        for key in module._parameters:
            module._parameters[key] = source._parameters[key]  # the same objects: ties carry over
        for key in module._buffers:
            module._buffers[key] = source._buffers[key]
    generate_code(model)  # built on meta, its forwards waited for a first call
    return wrapper


# ------------------------------------------------------------------ reports, diffs, gradients
@dataclass(frozen=True)
class Target:
    """A thing a command can inspect: a spec, a build folder, or a report.json.

    ``module`` is None for a report.json; ``weights`` loads a tensor by canonical name
    when real values are at hand (a build folder).
    """

    report: Report
    module: nn.Module | None
    weights: Callable[[str], torch.Tensor] | None


def open_target(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    overrides: Overrides | None = None,
) -> Target:
    """Open ``path``: a spec (built on ``device``; ``meta`` for structure only), a build
    folder (loaded and verified), or a ``report.json`` (read and checked for consistency).

    Raises:
        UsageError: ``bad-device``. ReportError: a report.json that is malformed or
        contradicts itself (``bad-report``, with the JSON path of each problem).
    """
    _parse_device(device)  # before anything is read or built, whatever the target
    p = Path(path)
    if not p.exists():
        recover(p)  # a build killed between its two renames: the old folder comes back
    if overrides and (p.is_dir() or p.suffix == ".json"):
        raise UsageError(f"{p}: variables can be set for a spec only, not for a build folder or a report",
                         code="bad-usage")  # fmt: skip
    if p.is_dir():
        module, ckpt = _load(p, torch.device("cpu"))

        held = {k: v.detach() for k, v in unique_state(module)[0].items()}  # load just verified them

        def weights(name: str) -> torch.Tensor:
            return held[name]

        # load_into just checked every sha256: not computed again
        rep = inventory(module, _INFO.get(module), progress=progress, known_hashes=ckpt.sha256)
        return Target(rep, module, weights)
    if p.suffix == ".json":
        try:
            data = p.read_bytes()
        except OSError as e:
            raise ReportError(f"cannot read {p}: {e.strerror}", code="file-error") from e
        return Target(read_report(data, str(p)), None, None)  # schema and consistency checked
    module = _build(compile_spec(p, overrides=overrides), device, None)
    return Target(report(module, progress=progress), module, None)


def diff(a: str | os.PathLike[str] | Report, b: str | os.PathLike[str] | Report, *,
         structure_only: bool = False) -> Diff:  # fmt: skip
    """Compare two models: reports, build folders or specs (specs are built on ``meta``).

    When both sides are build folders, value changes carry the relative L2 change and
    the max abs change per tensor.
    """
    ra, wa = _diff_side(a)
    rb, wb = _diff_side(b)
    return diff_reports(ra, rb, structure_only=structure_only, weights_a=wa, weights_b=wb)


def _diff_side(side: str | os.PathLike[str] | Report) -> tuple[Report, Callable[[str], torch.Tensor] | None]:
    """A side of a diff: its report, and its weights when it is a build folder."""
    if isinstance(side, Report):
        check_report(side)
        return side, None
    path = Path(side)
    is_spec = not path.is_dir() and path.suffix != ".json"
    target = open_target(path, device="meta" if is_spec else "cpu")  # a spec: structure only
    return target.report, target.weights


def grads(module: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...] | None = None, *, batch: int | None = None,
          loss: Loss = "sum", seed: int = 0) -> GradReport:  # fmt: skip
    """One forward/backward pass; gradient norms and each shared block's per-use contributions.

    Args:
        x: the input (a tuple for a graph with several inputs); by default a random batch
            shaped like the spec's example input(s) (``batch`` replaces their first
            dimension), seeded by ``seed``.
        loss: ``"sum"`` of the outputs, or ``"mse"`` against zeros.

    Raises:
        UsageError: ``no-input`` (no ``x`` and no example input in the spec), ``too-large``
        (the batch or the pass does not fit in memory: checked before allocating),
        or the input does not fit the model.
    """
    module = unwrap(module)  # the model inside, run eagerly: hooks see its own module names
    info = _INFO.get(module)
    if x is not None:
        return gradients(module, x, loss=loss, seed=seed, info=info)
    if info is None:
        raise UsageError("no input given and modelspec does not know this module's spec", code="no-input")
    inputs: dict[str, tuple[torch.Tensor, ...]] = {}
    for name in info.spec.roots:
        examples = example_specs(info.spec, name, Collector())
        if examples is None:
            which = f" of model '{name}'" if name else ""
            raise UsageError(f"no input given and the spec has no example input{which}", code="no-input")
        batches = []
        for i, (example, _) in enumerate(examples):
            shape = [batch if d == 0 and batch is not None else n for d, n in enumerate(example.shape)]
            dtype = DTYPES[example.dtype]
            with allocating(tensor_bytes(shape, dtype), torch.device("cpu"), f"a batch {shape} {example.dtype}",
                            "use a smaller batch (--batch N)"):  # fmt: skip
                batches.append(example_batch(example, batch, seed + i))
        inputs[name] = tuple(batches)
    if info.spec.models is None:
        only = inputs[""]
        return gradients(module, only[0] if len(only) == 1 else only, loss=loss, seed=seed, info=info)
    return gradients(module, inputs, loss=loss, seed=seed, info=info)
