"""ONNX export: one initializer per tie group, named by modelspec's canonical name.

PyTorch's exporter (``torch.onnx.export(..., dynamo=True)``) already stores a tensor that
several names reach once, but names it after the *last* alias (``lm_head.weight`` for
GPT-2's tied embedding), and its optimizer, when enabled, folds ``weight.T`` of every
Linear into a new, unnamed initializer and merges initializers that merely hold equal
values (independent LayerNorms, for instance). So the export here:

1. traces with the spec's example inputs (the first dimension made dynamic when the model
   allows it: ``batch``),
2. exports without the optimizer, then folds only constants that read no parameter or
   buffer (shape arithmetic), so every weight stays one named initializer and a
   transposed tie stays a ``Transpose`` node reading its source,
3. renames each initializer to its tie group's canonical name (the first ``state_dict``
   key, as in the checkpoint and the report) and records the tie groups in the file's
   metadata (``modelspec.ties``),
4. checks the result: one initializer per tie group, and any other initializer that
   holds a copy of a parameter (or of its transpose) is reported in
   :attr:`OnnxExport.copies`,
5. writes the file atomically (never over a file modelspec did not write).

Needs the ``onnx`` extra (``pip install 'torch-modelspec[onnx]'``): onnx and onnxscript;
onnxruntime only to run the exported file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ._build import BuildInfo, example_specs
from ._errors import Collector, ModelspecError, UsageError
from ._files import atomic_write_bytes
from ._fmt import MARKER
from ._grads import example_batch
from ._outfile import check_output_file
from ._ties import transposed_map
from ._version import __version__
from ._wrap import unwrap

__all__ = ["INSTALL_HINT", "OnnxCopy", "OnnxExport", "export_module", "export_onnx", "tie_groups"]

INSTALL_HINT = "pip install 'torch-modelspec[onnx]'"
#: ONNX files keep all tensors inline up to protobuf's limit
_MAX_BYTES = 2**31 - 1
#: the doc_string of every file modelspec writes: ``-o FILE`` recognises its own output by it
DOC_STRING = f"{MARKER}: one initializer per tie group, named by its canonical name"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colours in torch's messages
#: loggers (and their children) silenced while exporting
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx", "torch._subclasses",
                  "torch._functorch", "torch._guards", "torch._utils_internal", "onnxscript", "onnx_ir")  # fmt: skip


@dataclass(frozen=True)
class OnnxCopy:
    """An initializer that is not a parameter of the model but holds one's values.

    ``transposed`` says it holds the parameter's values transposed (dims 0 and 1)."""

    initializer: str
    of: str
    transposed: bool


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`modelspec.export_onnx` wrote.

    Attributes:
        path: the ONNX file.
        initializers: ``{canonical name: every alias}`` for each tie group stored as one
            initializer under its canonical name.
        transposed: ``{name read transposed: canonical name of its source}``; in the file a
            ``Transpose`` node reads the source's initializer (see ``copies`` otherwise).
        copies: other initializers holding a parameter's values, i.e. stored twice.
        missing: tie groups the exported graph does not read (no initializer).
        inputs, outputs: the graph's input and output names.
        dynamic_batch: whether the first dimension of every input is symbolic (``batch``).
    """

    path: Path
    initializers: dict[str, tuple[str, ...]]
    transposed: dict[str, str]
    copies: tuple[OnnxCopy, ...]
    missing: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_batch: bool
    opset: int


def _require_extra() -> Any:
    """The onnx-related modules, or ModelspecError ``missing-dependency`` with the install hint."""
    try:
        import onnx  # noqa: F401 - the exporter needs it
        import onnx_ir
        import onnxscript  # noqa: F401 - the exporter needs it
        from onnxscript import optimizer
    except ImportError as e:
        raise ModelspecError(
            f"ONNX export needs onnx and onnxscript, which are not installed ({e.name or e}): {INSTALL_HINT}",
            code="missing-dependency",
        ) from e
    return onnx_ir, optimizer


def tie_groups(module: nn.Module) -> dict[str, tuple[str, ...]]:
    """``{canonical name: every name that reaches the tensor, canonical first}`` for every
    parameter and buffer; canonical is the first ``state_dict`` key (as in the checkpoint)."""
    names: dict[int, list[str]] = {}
    for name, t in module.state_dict(keep_vars=True).items():
        names.setdefault(id(t), []).append(name)
    for name, t in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
        group = names.setdefault(id(t), [])
        if name not in group:
            group.append(name)  # a non-persistent buffer has no state_dict key
    return {g[0]: tuple(g) for g in names.values()}


def _example_inputs(info: BuildInfo | None, model: str) -> tuple[torch.Tensor, ...]:
    if info is None:
        raise UsageError(
            "no inputs given and modelspec does not know this module's spec: pass inputs=(...)", code="no-input"
        )
    examples = example_specs(info.spec, model, Collector())
    if examples is None:
        which = f" of model '{model}'" if model else ""
        raise UsageError(
            f"the spec has no example input{which} to trace the model with: give it 'input: {{shape: [...]}}' "
            "(or examples under 'inputs:')",
            code="no-input",
        )
    return tuple(example_batch(example, None, seed=i) for i, (example, _) in enumerate(examples))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's warnings, log lines (missing torchvision, guards) and what torch.export
    prints to stderr when it fails (a partial graph) are not for the user: a failure becomes
    ``export-failed`` with its message, and library code never prints."""
    names = {n for n in logging.root.manager.loggerDict if n.startswith(_NOISY_LOGGERS)} | set(_NOISY_LOGGERS)
    loggers = [logging.getLogger(n) for n in sorted(names)]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):  # fmt: skip
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export(module: nn.Module, xs: tuple[torch.Tensor, ...], dynamic: bool, opset: int | None) -> Any:
    """``torch.onnx.export`` without the optimizer; the ONNXProgram."""
    from torch.export import Dim

    shapes = tuple({0: Dim.AUTO} if dynamic and x.dim() > 0 else {} for x in xs) if dynamic else None
    with _quiet():
        return torch.onnx.export(
            module, xs, dynamo=True, optimize=False, verbose=False, dynamic_shapes=shapes, opset_version=opset
        )


def _trace(module: nn.Module, xs: tuple[torch.Tensor, ...], dynamic: bool, opset: int | None) -> Any:
    """Export with a dynamic first dimension when asked and possible, else with the example's shapes.

    A first dimension of 1 is traced at 2: PyTorch treats size 1 as a constant.
    """
    if dynamic and xs and all(x.dim() > 0 for x in xs):
        wider = tuple(x.expand(2, *x.shape[1:]).contiguous() if x.shape[0] == 1 else x for x in xs)
        try:
            with torch.no_grad():
                module(*wider)  # a model fixed to batch 1 fails here; then the example's shape
            program = _export(module, wider, True, opset)
            if all(_symbolic_first(v) for v in program.model.graph.inputs):
                return program
            # the model fixes its batch size: export it at the example's, not at 2
        except Exception:  # noqa: BLE001 - whatever fails at batch 2 is retried as given below
            pass
    try:
        return _export(module, xs, False, opset)
    except Exception as e:
        root: BaseException = e  # the exporter wraps the reason (torch.export's error) in its own
        while root.__cause__ is not None:
            root = root.__cause__
        lines = _ANSI.sub("", str(root)).strip().splitlines()
        raise ModelspecError(
            f"PyTorch could not export this model to ONNX: {type(root).__name__}: {lines[0] if lines else ''}".strip(),
            code="export-failed",
        ) from e


def _symbolic_first(value: Any) -> bool:
    shape = value.shape
    return shape is not None and len(shape) > 0 and not isinstance(shape[0], int)


def _reads_tensor(node: Any, tensor_values: set[int]) -> bool:
    return any(v is not None and id(v) in tensor_values for v in node.inputs)


def _tidy(ir_model: Any, optimizer: Any) -> None:
    """Fold the constants that read no parameter or buffer (shape arithmetic, casts of
    constants); a node that reads a weight (its Transpose, say) stays as it is."""
    graph = ir_model.graph
    weights = {id(v) for v in graph.initializers.values()}
    optimizer.fold_constants_ir(ir_model, should_fold=lambda node: False if _reads_tensor(node, weights) else None)
    optimizer.remove_unused_nodes(ir_model)


def _rename(graph: Any, groups: dict[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    """Give each initializer that is an alias its group's canonical name; return the
    ``(initializer, canonical)`` pairs that could not be renamed (a second initializer of
    the same group)."""
    canonical_of = {alias: canonical for canonical, aliases in groups.items() for alias in aliases}
    clashes = []
    for name in list(graph.initializers):
        canonical = canonical_of.get(name)
        if canonical is None or canonical == name:
            continue
        if canonical in graph.initializers:
            clashes.append((name, canonical))
            continue
        graph.initializers[name].name = canonical  # onnx_ir moves the initializer entry too
    return clashes


def _copies(graph: Any, module: nn.Module, groups: dict[str, tuple[str, ...]]) -> list[OnnxCopy]:
    """Initializers not named after a tie group that hold a parameter's or buffer's values
    (or their transpose): tensors the file stores twice. Constant fills (all elements
    equal) are not counted: a zero bias matches every freshly initialized bias."""
    by_shape: dict[tuple[int, ...], list[tuple[str, torch.Tensor]]] = {}
    state = dict(module.state_dict(keep_vars=True))
    state.update(dict(module.named_buffers(remove_duplicate=False)))
    for canonical in groups:
        t = state.get(canonical)
        if t is None or t.dim() == 0 or t.numel() < 2:
            continue
        by_shape.setdefault(tuple(t.shape), []).append((canonical, t))
    found = []
    for name, value in graph.initializers.items():
        if name in groups or value.const_value is None:
            continue
        shape = tuple(value.shape or ())
        candidates = [(c, t, False) for c, t in by_shape.get(shape, [])]
        if len(shape) >= 2:
            swapped = (shape[1], shape[0], *shape[2:])
            candidates += [(c, t, True) for c, t in by_shape.get(swapped, [])]
        if not candidates:
            continue
        array = value.const_value.numpy()  # bfloat16 and float8 come as ml_dtypes arrays: compared in float64
        if array.dtype.kind == "c" or bool((array == array.flat[0]).all()):
            continue  # a constant fill (the zero bias the exporter gives a Conv without one) proves nothing
        wide = array.astype(np.float64)
        for canonical, t, transposed in candidates:
            ref = t.detach().to("cpu")
            ref = ref.transpose(0, 1) if transposed else ref
            if str(ref.dtype).removeprefix("torch.") == str(array.dtype) and np.array_equal(
                ref.to(torch.float64).numpy(), wide
            ):
                found.append(OnnxCopy(name, canonical, transposed))
                break
    return found


def _symbolic_batch(graph: Any, onnx_ir: Any) -> bool:
    """Name the inputs' symbolic first dimension ``batch`` everywhere; whether every input has one."""
    firsts = []
    for v in graph.inputs:
        dims = list(v.shape) if v.shape is not None else []
        firsts.append(dims[0] if dims else None)
    if not firsts or not all(isinstance(d, onnx_ir.SymbolicDim) and d.value for d in firsts):
        return False
    old = {d.value for d in firsts}
    if len(old) != 1:
        return True
    values = [*graph.inputs, *graph.outputs, *(o for node in graph for o in node.outputs)]
    for v in values:
        if v.shape is None:
            continue
        dims = [onnx_ir.SymbolicDim("batch") if isinstance(d, onnx_ir.SymbolicDim) and d.value in old else d
                for d in v.shape]  # fmt: skip
        v.shape = onnx_ir.Shape(dims)
    return True


def _name_outputs(graph: Any) -> None:
    """``output`` (``output_0``, ``output_1``, ... for several) instead of the exporter's
    ``linear_3``; a name some other value holds is left alone."""
    outputs = list(graph.outputs)
    taken = {v.name for v in [*graph.inputs, *graph.initializers.values()]}
    taken |= {o.name for node in graph for o in node.outputs}
    for i, value in enumerate(outputs):
        new = "output" if len(outputs) == 1 else f"output_{i}"
        if new not in taken and value not in graph.inputs and not value.is_initializer():
            value.name = new
            taken.add(new)


def export_module(
    module: nn.Module,
    path: str | os.PathLike[str],
    *,
    info: BuildInfo | None,
    model: str = "",
    inputs: Sequence[torch.Tensor] | None = None,
    dynamic_batch: bool = True,
    opset: int | None = None,
    force: bool = False,
    keep: Sequence[Path] = (),
) -> OnnxExport:
    """Export ``module`` to ``path`` (see the module docstring); ``keep``: inputs never overwritten."""
    onnx_ir, optimizer = _require_extra()
    check_output_file(path, inputs=keep, force=force)
    xs = tuple(inputs) if inputs is not None else _example_inputs(info, model)
    groups = tie_groups(module)
    was_training = module.training
    module.eval()
    try:
        program = _trace(module, xs, dynamic_batch, opset)
    finally:
        module.train(was_training)
    ir_model = program.model
    graph = ir_model.graph
    _tidy(ir_model, optimizer)
    clashes = _rename(graph, groups)
    copies = [OnnxCopy(a, c, False) for a, c in clashes] + _copies(graph, module, groups)
    dynamic = _symbolic_batch(graph, onnx_ir)
    _name_outputs(graph)
    ties = {c: list(a) for c, a in groups.items() if len(a) > 1}
    ir_model.doc_string = DOC_STRING
    ir_model.metadata_props.update({
        "modelspec.version": __version__,
        "modelspec.ties": json.dumps(ties, sort_keys=True),
        "modelspec.transposed": json.dumps(transposed_map(module), sort_keys=True),
        **({"modelspec.spec_sha256": info.spec.sha256} if info is not None else {}),
    })  # fmt: skip
    proto = onnx_ir.serde.serialize_model(ir_model)
    if proto.ByteSize() > _MAX_BYTES:
        raise UsageError(
            f"the exported model is {proto.ByteSize():,} bytes; one ONNX file holds at most 2 GiB",
            code="too-large",
        )
    check_output_file(path, inputs=keep, force=force)  # again: the export took a while
    written = atomic_write_bytes(path, proto.SerializeToString())
    stored = {c: groups[c] for c in groups if c in graph.initializers}
    return OnnxExport(
        path=written,
        initializers=stored,
        transposed=transposed_map(module),
        copies=tuple(copies),
        missing=tuple(c for c in groups if c not in graph.initializers),
        inputs=tuple(v.name for v in graph.inputs),
        outputs=tuple(v.name for v in graph.outputs),
        dynamic_batch=dynamic,
        opset=ir_model.opset_imports.get("", 0),
    )


def export_onnx(
    model: nn.Module | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    inputs: Sequence[torch.Tensor] | None = None,
    model_name: str | None = None,
    dynamic_batch: bool = True,
    opset: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
) -> OnnxExport:
    """Export a model to an ONNX file that stores each tie group once, under its canonical name.

    Args:
        model: a module (built or loaded by modelspec, or any module when ``inputs`` is
            given), a build folder, or a spec (path or YAML text; built on the CPU).
        path: the ``.onnx`` file to write (atomically; an existing file only if modelspec
            wrote it, or with ``force``).
        inputs: tensors to trace with; by default the spec's example inputs.
        model_name: which model of a spec with ``models:`` to export.
        dynamic_batch: make the first dimension of every input symbolic (``batch``) when
            the model allows it; otherwise the example's shapes are fixed.
        opset: the ONNX opset (default: the exporter's).
        overrides: values for the spec's ``vars`` (a spec only).
        force: replace ``path`` even if modelspec did not write it.

    Returns:
        :class:`OnnxExport`: the initializers per tie group, transposed reads, and any
        copy of a parameter the file holds (``copies``; empty for every bundled spec).

    Raises:
        ModelspecError: ``missing-dependency`` (onnx/onnxscript not installed; install the
            ``onnx`` extra), ``export-failed`` (PyTorch cannot export the model).
        UsageError: ``no-input`` (no ``inputs`` and no example input in the spec),
            ``no-model`` (``models:`` spec without ``model_name``, or an unknown one), ``too-large``.
        BuildDirError: ``path`` is in the way or is an input.
        SpecError: the spec is invalid.

    Example:
        >>> result = modelspec.export_onnx("specs/zoo/gpt2.yaml", "gpt2.onnx", overrides={"n_layer": 2})
        >>> result.initializers["transformer.wte.weight"]
        ('transformer.wte.weight', 'lm_head.weight')
    """
    from . import _api as api

    _require_extra()  # before the (possibly long) build
    keep: list[Path] = []
    if isinstance(model, nn.Module):
        if overrides:
            raise UsageError("overrides apply to a spec, not to a built module", code="bad-usage")
        module = unwrap(model)  # torch.compile / DDP: the model inside, under its own names
    else:
        source = Path(model) if isinstance(model, os.PathLike) or "\n" not in str(model) else None
        if source is not None and source.exists():
            keep.append(source)
        check_output_file(path, inputs=keep, force=force)  # before the build
        if source is not None and source.is_dir():
            if overrides:
                raise UsageError(f"{source}: variables can be set for a spec only, not for a build folder",
                                 code="bad-usage")  # fmt: skip
            module = api.load(source)
        else:
            module = api.build(model, overrides=overrides)  # type: ignore[arg-type]
    info = api.build_info(module)
    name = ""
    if isinstance(module, nn.ModuleDict) and info is not None and info.spec.models is not None:
        names = list(info.spec.roots)
        if model_name is None or model_name not in names:
            given = "" if model_name is None else f"'{model_name}' is not one of them; "
            raise UsageError(f"the spec defines models {', '.join(names)}: {given}choose one (--model NAME)",
                             code="no-model")  # fmt: skip
        name, module = model_name, module[model_name]
    elif model_name is not None:
        raise UsageError(f"model '{model_name}' given, but the spec defines a single model", code="no-model")
    return export_module(module, path, info=info, model=name, inputs=inputs, dynamic_batch=dynamic_batch,
                         opset=opset, force=force, keep=keep)  # fmt: skip
