"""Applying init rules (see :mod:`modelspec._init` for the grammar and semantics) to a built module.

:func:`apply_init` selects each rule's parameters by name, layer class and block, lets the
last matching rule win for each parameter, checks every rule (unmatched selectors, tied
aliases, shapes, transfer sources) and only then initialises each unique parameter once,
by its owner, in ``named_parameters()`` order: drawn portably from the build's generator,
or copied from a verified source checkpoint (``from:``, see :mod:`modelspec._transfer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ._errors import CheckpointError, Collector, closest
from ._init import Rule, with_defaults
from ._init_select import _Params, plan_init
from ._rng import PortableInit, normal_
from ._transfer import Source, Transfer, TransferredTensor, rename

__all__ = ["apply_init"]


def apply_init(
    root: nn.Module,
    rules: Sequence[Rule],
    *,
    spec_file: str,
    block_sites: dict[str, tuple[str, ...]],
    generator: torch.Generator,
    errors: Collector,
    transfer: bool = True,
) -> tuple[Transfer, ...]:
    """Apply ``rules`` to ``root`` in place; return what transfers took.

    Every problem goes to ``errors`` and then nothing is changed. ``transfer=False``
    leaves the parameters of ``from:`` rules as they are, reading nothing (the values
    come from elsewhere, e.g. a build folder being loaded).
    """
    if not rules:
        return ()
    params, winners, owned = plan_init(root, rules, block_sites, errors)
    sources = _check_sources(rules, owned, params, spec_file, errors) if transfer else {}
    if errors.errors:
        return ()
    out = []
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        taken: dict[int, dict[str, torch.Tensor]] = {}
        for i, source in sources.items():
            names = [n for n in owned[i] if winners[n] == i]
            wanted = [source.find(rename(n, rules[i].renames)) for n in names]
            on_meta = any(params.tensors[n].is_meta for n in names)
            data = {} if on_meta else _read(source, [w for w in wanted if w], rules[i], errors)
            taken[i] = data
            ckpt = source.checkpoint
            out.append(
                Transfer(
                    rule=i,
                    source=rules[i].source,  # type: ignore[arg-type]
                    spec_sha256=ckpt.metadata["spec_sha256"],
                    checkpoint_sha256=ckpt.metadata["metadata_sha256"],
                    tensors=[
                        TransferredTensor(name=n, source_name=w, sha256=ckpt.sha256[w])  # type: ignore[index]
                        for n, w in zip(names, wanted, strict=True)
                    ],
                )
            )
        if errors.errors:
            return ()
        for name in params.order:
            i = winners.get(name)
            if i is None:
                continue
            rule, p = rules[i], params.tensors[name]
            if rule.source is not None:
                if i in taken and not p.is_meta:
                    p.copy_(taken[i][source_name(sources[i], name, rule)])
                continue
            _draw(p, rule, generator)
    return tuple(out)


def source_name(source: Source, name: str, rule: Rule) -> str:
    found = source.find(rename(name, rule.renames))
    assert found is not None  # checked by _check_sources
    return found


def _read(source: Source, names: list[str], rule: Rule, errors: Collector) -> dict[str, torch.Tensor]:
    try:
        return source.read(names)
    except CheckpointError as e:
        errors.add(
            "transfer-source",
            f"cannot take tensors from '{rule.source}': {e} [{e.code}]",
            (*rule.path, "from"),
            hint="rebuild the source folder",
        )
        return {}


def _source_folder(spec_file: str, source: str) -> Path:
    base = Path(spec_file).parent if spec_file != "<spec>" else Path()
    return base / source


def _check_sources(
    rules: Sequence[Rule], owned: dict[int, list[str]], params: _Params, spec_file: str, errors: Collector
) -> dict[int, Source]:
    """Open each transfer's source and check that every selected parameter finds its tensor."""
    from ._checkpoint import _ST_DTYPES

    opened: dict[Path, Source | CheckpointError] = {}
    out: dict[int, Source] = {}
    for i, names in owned.items():
        rule = rules[i]
        if rule.source is None:
            continue
        folder = _source_folder(spec_file, rule.source)
        if folder not in opened:
            try:
                opened[folder] = Source(folder)
            except CheckpointError as e:
                opened[folder] = e
        source = opened[folder]
        if isinstance(source, CheckpointError):
            errors.add(
                "transfer-source",
                f"cannot take tensors from '{rule.source}': {source} [{source.code}]",
                (*rule.path, "from"),
                hint="'from' is a build folder written by 'modelspec build', relative to the spec's folder",
            )
            continue
        problems = []
        for n in names:
            theirs = rename(n, rule.renames)
            found = source.find(theirs)
            p = params.tensors[n]
            if found is None:
                near = closest(theirs, [*source.checkpoint.tensors, *source.checkpoint.ties])
                problems.append(f"'{n}': no '{theirs}' in the source" + (f" (did you mean '{near}'?)" if near else ""))
                continue
            dtype, shape = source.dtype_shape(found)
            if tuple(p.shape) != shape:
                problems.append(f"'{n}' {list(p.shape)}: '{found}' is {list(shape)}")
            elif _ST_DTYPES.get(p.dtype) != dtype:
                problems.append(f"'{n}' {str(p.dtype).removeprefix('torch.')}: '{found}' is {dtype}")
        if problems:
            shown = "\n    ".join(problems[:20]) + (
                f"\n    ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            )
            hint = "map our names to the source's with 'rename: {our_prefix: their_prefix}'"
            if rule.renames:
                hint = "check 'rename' and the layer sizes against the source's spec.yaml"
            errors.add(
                "transfer-mismatch",
                f"{len(problems)} of {len(names)} selected parameter(s) find no matching tensor in "
                f"'{rule.source}':\n    {shown}",
                (*rule.path, "from"),
                hint=hint,
            )
            continue
        out[i] = source
    return out


# ---------------------------------------------------------------- the methods
def _draw(p: torch.Tensor, rule: Rule, generator: torch.Generator) -> None:
    """Initialise ``p`` in place by ``rule``'s method, drawing portably from ``generator``."""
    if p.numel() == 0:
        return  # torch.nn.init warns on empty tensors; there is nothing to draw
    args = with_defaults(rule.method, rule.args)
    if rule.method == "orthogonal":
        _orthogonal(p, args["gain"], generator)
    elif rule.method == "trunc_normal":
        _trunc_normal(p, args["mean"], args["std"], args["a"], args["b"], generator)
    else:  # torch.nn.init's own functions, their uniform_/normal_ made portable
        with PortableInit(generator) as mode:
            _torch_init(p, rule.method, args, generator)
        if mode.unportable:  # pragma: no cover - these functions draw only through uniform_/normal_
            raise RuntimeError(f"init drew through unportable ops: {sorted(mode.unportable)}")


def _torch_init(p: torch.Tensor, method: str, args: dict[str, Any], generator: torch.Generator) -> None:
    init = nn.init
    if method == "normal":
        init.normal_(p, args["mean"], args["std"], generator=generator)
    elif method == "uniform":
        init.uniform_(p, args["low"], args["high"], generator=generator)
    elif method == "zeros":
        init.zeros_(p)
    elif method == "ones":
        init.ones_(p)
    elif method == "constant":
        init.constant_(p, args["value"])
    elif method in ("xavier_uniform", "xavier_normal"):
        getattr(init, method + "_")(p, args["gain"], generator=generator)
    elif method in ("kaiming_uniform", "kaiming_normal"):
        getattr(init, method + "_")(p, args["a"], args["mode"], args["nonlinearity"], generator=generator)
    else:  # pragma: no cover - parse_rules admits only METHODS
        raise AssertionError(method)


def _trunc_normal(t: torch.Tensor, mean: float, std: float, a: float, b: float, generator: torch.Generator) -> None:
    """N(mean, std^2) restricted to [a, b]: values outside are redrawn, in C order, until none is left.

    Only portable draws and exact comparisons: the same bits on every machine (the
    bounds are compared in float32, float64 for a float64 tensor)."""
    if t.is_meta:
        return
    calc = torch.float64 if t.dtype == torch.float64 else torch.float32
    buf = torch.empty(t.numel(), dtype=calc, device="cpu")
    normal_(buf, mean, std, generator=generator)
    idx = ((buf < a) | (buf > b)).nonzero().squeeze(1)  # ascending: C order
    while idx.numel():
        fresh = normal_(torch.empty(idx.numel(), dtype=calc, device="cpu"), mean, std, generator=generator)
        buf[idx] = fresh
        idx = idx[(fresh < a) | (fresh > b)]
    t.copy_(buf.view(t.shape))


def _orthogonal(t: torch.Tensor, gain: float, generator: torch.Generator) -> None:
    """torch.nn.init.orthogonal_'s construction from a portable normal matrix, QR in float64 on the CPU.

    Equal across machines to about 1e-6 (LAPACK's last float64 bits may differ), not bitwise."""
    if t.is_meta:
        return
    rows = t.shape[0]
    cols = t.numel() // rows
    flat = normal_(torch.empty(rows, cols, dtype=torch.float64, device="cpu"), 0.0, 1.0, generator=generator)
    if rows < cols:
        flat = flat.t()
    q, r = torch.linalg.qr(flat)
    q = q * torch.sign(torch.diagonal(r))  # makes the decomposition unique, as torch does
    if rows < cols:
        q = q.t()
    t.copy_((q * gain).reshape(t.shape))
