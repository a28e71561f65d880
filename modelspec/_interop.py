"""Tie-aware versions of PyTorch's state dict and parameter functions.

A modelspec checkpoint stores each tensor once, under its canonical name; handwritten code
expects every name its modules register (``lm_head.weight`` *and* ``transformer.wte.weight``).
Plain ``load_state_dict`` copies each key in turn, so when the keys of one tied tensor hold
different values the last one silently wins; and one optimizer per model steps a shared
weight once per model. The functions here fill those gaps:

- :func:`state_dict`: every name of a built model, each alias the same tensor object as its
  canonical name, ready for ``handwritten.load_state_dict(sd, strict=True)``;
- :func:`load_state_dict`: loads into a model, refusing a state dict whose aliases disagree;
- :func:`parameters`: the unique parameters of several models, for one optimizer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn as nn

from ._distributed import is_sharded
from ._errors import TieMismatchError, UsageError
from ._ties import transposed_map
from ._wrap import unwrap

__all__ = ["load_state_dict", "parameters", "state_dict"]

#: the key prefixes ``torch.compile`` and DDP / DataParallel add to the model's names
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def state_dict(
    source: str | os.PathLike[str] | nn.Module, *, transposed: bool = False, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Every ``state_dict`` name of a built model with its value, aliases included.

    Each alias maps to *the same tensor object* as its canonical name, so the dict holds
    each tensor once in memory (``sd["lm_head.weight"] is sd["transformer.wte.weight"]``).

    Args:
        source: a build folder (loaded and verified as :func:`modelspec.load` does) or a
            module (``torch.compile`` and DDP wrappers are looked through).
        transposed: also give each name a transposed tie reads (``decoder.0.weight``, the
            transpose of ``encoder.2.weight``) as a view of its source, for handwritten
            code whose decoder holds its own weight. A model with a transposed tie has no
            parameter under that name, so this is off by default.
        device: where a build folder's tensors are loaded.

    Returns:
        ``{name: tensor}`` in the model's ``state_dict`` order (transposed names last),
        detached from autograd as ``nn.Module.state_dict()`` gives them.

    Example:
        >>> twin = HandwrittenGPT()
        >>> twin.load_state_dict(modelspec.state_dict("build/gpt2"), strict=True)
    """
    if isinstance(source, nn.Module):
        module = unwrap(source)
    else:
        from ._api import load  # the orchestrating module: loads and verifies the folder

        module = load(source, device=device)
    out: dict[str, torch.Tensor] = {}
    value_of: dict[int, torch.Tensor] = {}
    for name, t in module.state_dict(keep_vars=True).items():
        if id(t) not in value_of:
            value_of[id(t)] = t.detach()
        out[name] = value_of[id(t)]
    if transposed:
        for alias, canonical in transposed_map(module).items():
            if canonical in out:  # else the source is outside this module: nothing to give
                out[alias] = out[canonical].transpose(0, 1)
    return out


class LoadResult(NamedTuple):
    """What :func:`load_state_dict` did not load: ``missing`` names of the model that got no
    value (neither from their own key nor from an alias) and ``unexpected`` keys."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def load_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], *, strict: bool = True) -> LoadResult:
    """Copy ``sd``'s values into ``model``, keeping every tie, after checking that the keys
    of each tied tensor agree.

    Plain ``model.load_state_dict(sd)`` copies every key in turn: when two keys of one tied
    tensor hold different values, the last one silently wins. Here that is an error. A tied
    tensor needs only one of its names in ``sd`` (a modelspec checkpoint stores it once, under
    its canonical name); the others are filled from it. A key a transposed tie reads
    (``decoder.0.weight``) is accepted as the transpose of its source's value. Values are
    copied into the existing tensors (never ``assign=True``, which breaks parameter ties).

    Args:
        model: the model to load into; ``torch.compile`` and DDP wrappers are looked through,
            and ``sd`` may carry their key prefix (``_orig_mod.``, ``module.``).
        sd: ``{name: tensor}``, e.g. from a handwritten model's ``state_dict()`` or
            :func:`state_dict`.
        strict: every tensor of ``model`` must get a value and every key must be one of its
            names (as in PyTorch). With ``strict=False`` both are returned instead.

    Returns:
        ``(missing_keys, unexpected_keys)``, both empty with ``strict=True``.

    Raises:
        TieMismatchError: ``aliases-disagree`` (keys of one tied tensor hold different
            values: the message names them and gives the largest difference);
            ``shape-mismatch``; with ``strict``, ``names-mismatch`` (missing or unexpected keys).
        UsageError: ``sharded`` for an FSDP2-sharded model (use :func:`modelspec.dcp_load`).
    """
    model = unwrap(model)
    if is_sharded(model):  # plain load_state_dict cannot copy into DTensors
        raise UsageError(
            "load_state_dict cannot load into an FSDP2-sharded model: use modelspec.dcp_load, or load the "
            "state dict before modelspec.shard",
            code="sharded",
        )
    own = model.state_dict(keep_vars=True)
    sd = _without_wrapper_prefix(sd, own)
    groups: dict[int, list[str]] = {}
    for name, t in own.items():
        groups.setdefault(id(t), []).append(name)
    transposed = {a: c for a, c in transposed_map(model).items() if c in own}
    # every value offered for each tensor, as (key, value in the tensor's own layout)
    offered: dict[int, list[tuple[str, torch.Tensor]]] = {}
    unexpected: list[str] = []
    for key, value in sd.items():
        if key in own:
            offered.setdefault(id(own[key]), []).append((key, value))
        elif key in transposed and value.dim() >= 2:
            offered.setdefault(id(own[transposed[key]]), []).append((key, value.transpose(0, 1)))
        else:
            unexpected.append(key)
    problems = []
    for tid, values in offered.items():
        target = own[groups[tid][0]]
        for key, value in values:
            if value.shape != target.shape:
                shown = "transposed " if key in transposed else ""
                problems.append(f"'{key}': {shown}shape {list(value.shape)}, the model's is {list(target.shape)}")
    if problems:
        raise TieMismatchError("cannot load: " + "; ".join(problems[:8]), code="shape-mismatch")
    disagree = [_disagreement(values) for values in offered.values() if len(values) > 1]
    disagree = [d for d in disagree if d]
    if disagree:
        raise TieMismatchError(
            "the keys of a tied tensor hold different values (one tensor cannot take both): "
            + "; ".join(disagree[:8])
            + ("" if len(disagree) <= 8 else f"; and {len(disagree) - 8} more"),
            code="aliases-disagree",
        )
    missing = [name for tid, names in groups.items() if tid not in offered for name in names]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {_names(unexpected)}")
        raise TieMismatchError("the state dict does not fit the model: " + "; ".join(parts), code="names-mismatch")
    filled = {name: offered[tid][0][1] for tid, names in groups.items() if tid in offered for name in names}
    # copy_ into the existing tensors: one tied tensor receives the same value under each name
    model.load_state_dict(filled, strict=False)
    return LoadResult(missing, unexpected)


def _without_wrapper_prefix(
    sd: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> Mapping[str, torch.Tensor]:
    """``sd`` with a torch.compile / DDP key prefix removed, when every key has it and the
    model's own names do not."""
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd) and not all(k.startswith(prefix) for k in own):
            return _without_wrapper_prefix({k.removeprefix(prefix): v for k, v in sd.items()}, own)
    return sd


def _disagreement(values: list[tuple[str, torch.Tensor]]) -> str:
    """'a' and 'b' differ by at most X, for the first key whose value differs from the first one's."""
    first_key, first = values[0]
    for key, value in values[1:]:
        if not torch.equal(first, value):
            if first.dtype != value.dtype:
                return f"'{first_key}' ({first.dtype}) and '{key}' ({value.dtype}) have different dtypes"
            if first.is_floating_point() or first.is_complex():
                largest = (first.double() - value.double()).abs().nan_to_num(float("inf")).max().item()
            else:
                largest = (first.long() - value.long()).abs().max().item()
            return f"'{first_key}' and '{key}' differ by up to {largest:.6g}"
    return ""


def _names(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:8])
    return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def parameters(*models: nn.Module) -> list[nn.Parameter]:
    """The parameters of several models, each tensor once, for one optimizer.

    Two models that share a block hold the same ``nn.Parameter`` objects; an optimizer per
    model would step a shared weight once for each model (twice as far), and one optimizer
    given both lists warns about duplicates. Wrapped models (``torch.compile``, DDP) are
    looked through. Order: the first model's ``parameters()``, then each new one of the next.

    Example:
        >>> pair = modelspec.build("specs/d2l/shared_mlp.yaml")
        >>> opt = torch.optim.SGD(modelspec.parameters(pair["mlp1"], pair["mlp2"]), lr=0.1)
    """
    seen: set[int] = set()
    out: list[nn.Parameter] = []
    for model in models:
        for p in unwrap(model).parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out
