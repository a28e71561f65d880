"""Applying init rules (see :mod:`modelspec._init` for the grammar and semantics) to a built module.

:func:`apply_init` selects each rule's parameters by name, layer class and block, lets the
last matching rule win for each parameter, checks every rule (unmatched selectors, tied
aliases, shapes, transfer sources) and only then initialises each unique parameter once,
by its owner, in ``named_parameters()`` order: drawn portably from the build's generator,
or copied from a verified source checkpoint (``from:``, see :mod:`modelspec._transfer`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import _registry as registry
from ._errors import CheckpointError, Collector, closest, did_you_mean
from ._init import FAN_METHODS, METHODS, SELECTORS, Rule
from ._rng import PortableInit, normal_
from ._ties import transposed_map
from ._transfer import Source, Transfer, TransferredTensor, rename

__all__ = ["apply_init"]


@dataclass
class _Params:
    """The parameters of a built module, by name: aliases, owners and their order."""

    tensors: dict[str, nn.Parameter]  # every name (alias or owner) -> its parameter
    owner: dict[str, str]  # every name -> its tensor's canonical name
    order: list[str]  # canonical names in named_parameters() order
    ancestors: dict[str, tuple[str, ...]]  # name -> the modules holding it, outermost ('') first

    @classmethod
    def of(cls, root: nn.Module) -> _Params:
        tensors = dict(root.named_parameters(remove_duplicate=False))
        first: dict[int, str] = {}
        owner = {n: first.setdefault(id(p), n) for n, p in tensors.items()}
        order = [n for n in tensors if owner[n] == n]
        ancestors = {}
        for n in tensors:
            parts = n.split(".")[:-1]
            ancestors[n] = ("", *(".".join(parts[: k + 1]) for k in range(len(parts))))
        return cls(tensors, owner, order, ancestors)

    def under(self, sites: set[str]) -> set[str]:
        """Names inside any of the modules ``sites`` ('' is the root)."""
        return {n for n, mods in self.ancestors.items() if any(m in sites for m in mods)}


def _has_wildcard(glob: str) -> bool:
    return any(c in glob for c in "*?[")


def _glob_hint(glob: str, params: _Params, transposed: dict[str, str]) -> str:
    if glob in transposed:
        return f"'{glob}' reads '{transposed[glob]}' transposed and is no parameter: select '{transposed[glob]}'"
    match = closest(glob, params.tensors)
    if match is None and _has_wildcard(glob):  # '*.c_proj.weigth': compare the literal tail
        tail = re.split(r"[*?\[\]]", glob)[-1].lstrip(".")
        ends = {n.split(".")[-1] for n in params.tensors}
        near = closest(tail.split(".")[-1], ends) if tail else None
        if near is not None:
            return f"no name ends like '{tail}'; did you mean '{near}'?"
    if match is not None:
        return f"did you mean '{match}'?"
    some = ", ".join(f"'{n}'" for n in params.order[:3])
    return f"names are state_dict keys ({len(params.order)} parameters, e.g. {some}); '*' matches across dots"


def _layer_classes(name: str) -> tuple[type, ...] | None:
    entry = registry.get_layer(name)
    if entry is None:
        return None
    becomes = getattr(entry.cls, "cls_to_become", None)  # LazyLinear -> Linear once sized
    return (entry.cls, becomes) if isinstance(becomes, type) else (entry.cls,)


def _select(
    rule: Rule,
    params: _Params,
    modules: dict[str, nn.Module],
    block_sites: dict[str, tuple[str, ...]],
    transposed: dict[str, str],
    errors: Collector,
) -> set[str] | None:
    """The names (aliases and owners) a rule's selectors select together; None after an error."""
    chosen: list[set[str]] = []
    failed = False
    if rule.params:
        union: set[str] = set()
        for j, glob in enumerate(rule.params):
            where = (*rule.path, "params", j) if rule.forms.get("params") else (*rule.path, "params")
            found = {n for n in params.tensors if fnmatch.fnmatchcase(n, glob)}
            if not found:
                errors.add(
                    "init-unmatched", f"'{glob}' matches no parameter", where, hint=_glob_hint(glob, params, transposed)
                )
                failed = True
            elif not _has_wildcard(glob) and params.owner[glob] != glob:
                owner = params.owner[glob]
                errors.add(
                    "init-alias",
                    f"'{glob}' is the tensor '{owner}' under another name",
                    where,
                    hint=f"a tied tensor is initialised once, by its owner: select '{owner}'",
                )
                failed = True
            union |= found
        chosen.append(union)
    if rule.layers:
        union = set()
        for j, name in enumerate(rule.layers):
            where = (*rule.path, "layer", j) if rule.forms.get("layer") else (*rule.path, "layer")
            classes = _layer_classes(name)
            if classes is None:
                errors.add(
                    "unknown-layer",
                    f"unknown layer type '{name}'",
                    where,
                    hint=did_you_mean(name, registry.layer_names()) or "a layer type name, e.g. Linear",
                )
                failed = True
                continue
            sites = {q for q, m in modules.items() if isinstance(m, classes)}
            found = params.under(sites)
            if not found:
                what = f"no {name} in the model" if not sites else f"the {name} layers hold no parameter"
                errors.add("init-unmatched", f"'layer: {name}' matches no parameter: {what}", where)
                failed = True
            union |= found
        chosen.append(union)
    if rule.block is not None:
        where = (*rule.path, "block")
        if rule.block not in block_sites:
            errors.add(
                "unknown-block",
                f"there is no block '{rule.block}'",
                where,
                hint=did_you_mean(rule.block, block_sites) or "blocks are the names under 'blocks:'",
            )
            failed = True
        else:
            found = params.under(set(block_sites[rule.block]))
            if not found:
                why = "it is never used" if not block_sites[rule.block] else "it holds no parameter"
                errors.add("init-unmatched", f"'block: {rule.block}' matches no parameter: {why}", where)
                failed = True
            chosen.append(found)
    if failed:
        return None
    selected = set.intersection(*chosen)
    if not selected:
        errors.add(
            "init-unmatched",
            f"{' and '.join(k for k in SELECTORS if _given(rule, k))} select no parameter together",
            rule.path,
            hint="each selector matches something, but not the same parameters",
        )
        return None
    return selected


def _given(rule: Rule, key: str) -> bool:
    return bool(rule.params) if key == "params" else bool(rule.layers) if key == "layer" else rule.block is not None


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
    params = _Params.of(root)
    modules = dict(root.named_modules(remove_duplicate=False))
    transposed = transposed_map(root)
    winners: dict[str, int] = {}
    owned: dict[int, list[str]] = {}
    for i, rule in enumerate(rules):
        selected = _select(rule, params, modules, block_sites, transposed, errors)
        if selected is None:
            continue
        mine = [n for n in params.order if n in selected]
        if not mine:
            owners = sorted({params.owner[n] for n in selected})
            example = sorted(selected)[0]
            errors.add(
                "init-alias",
                f"the rule selects only names of tied tensors owned elsewhere, e.g. '{example}' (owner "
                f"'{params.owner[example]}')",
                rule.path,
                hint="a tied tensor is initialised once, by its owner: select "
                + ", ".join(f"'{o}'" for o in owners[:3]),
            )
            continue
        owned[i] = mine
        for n in mine:
            winners[n] = i
    _check_shapes(rules, winners, params, errors)
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


def _check_shapes(rules: Sequence[Rule], winners: dict[str, int], params: _Params, errors: Collector) -> None:
    """Fan-based methods need a weight of at least 2 dims: report each rule's offenders once."""
    flat: dict[int, list[str]] = {}
    for name, i in winners.items():
        if rules[i].method in FAN_METHODS and params.tensors[name].dim() < 2:
            flat.setdefault(i, []).append(name)
    for i, names in flat.items():
        rule = rules[i]
        shown = ", ".join(f"'{n}' {list(params.tensors[n].shape)}" for n in names[:4])
        more = f" and {len(names) - 4} more" if len(names) > 4 else ""
        errors.add(
            "init-shape",
            f"{rule.method} needs parameters of at least 2 dims (fan in and out): {shown}{more}",
            (*rule.path, rule.method),
            hint="select the weights, e.g. add 'params: \"*.weight\"'",
        )


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
    args = METHODS[rule.method].model_validate(rule.args).model_dump()  # defaults filled in
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
