"""Which parameters each init rule selects, and the checks on that: torch-free.

The selection reads only names, layer types, shapes and which names are one tensor, so it
runs alike on a built module (:func:`modelspec._initialize.apply_init`, which then draws
the values) and on its skeleton (:mod:`modelspec._skeleton`, for ``modelspec validate``
without torch): one implementation, the same diagnostics.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _registry as registry
from ._errors import Collector, closest, did_you_mean
from ._init import FAN_METHODS, SELECTORS, Rule
from ._skeleton import Skel
from ._ties import transposed_map

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = ["plan_init"]


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


def _instances(modules: dict[str, Any], name: str) -> set[str] | None:
    """The qualified names of the modules that are ``name`` layers, as ``isinstance`` says
    (subclasses too; ``LazyLinear`` also matches the ``Linear`` it becomes once sized), or
    None when ``name`` is no layer type. A skeleton's module lists the types it is."""
    entry = registry.get_layer(name)
    if entry is None:
        return None
    found = set()
    classes: tuple[type, ...] | None = None
    names = {name, lazy_becomes(name)}
    for q, m in modules.items():
        if isinstance(m, Skel):
            if m.isa & names:
                found.add(q)
            continue
        if classes is None:
            becomes = getattr(entry.cls, "cls_to_become", None)  # LazyLinear -> Linear once sized
            classes = (entry.cls, becomes) if isinstance(becomes, type) else (entry.cls,)
        if isinstance(m, classes):
            found.add(q)
    return found


def lazy_becomes(name: str) -> str:
    """The layer type a lazy layer type becomes once sized (``LazyConv2d`` -> ``Conv2d``), else ``name``."""
    return name[4:] if name.startswith("Lazy") and registry.get_layer(name[4:]) is not None else name


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
            sites = _instances(modules, name)
            if sites is None:
                errors.add(
                    "unknown-layer",
                    f"unknown layer type '{name}'",
                    where,
                    hint=did_you_mean(name, registry.layer_names()) or "a layer type name, e.g. Linear",
                )
                failed = True
                continue
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


# ----
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


def plan_init(
    root: Any, rules: Sequence[Rule], block_sites: dict[str, tuple[str, ...]], errors: Collector
) -> tuple[_Params, dict[str, int], dict[int, list[str]]]:
    """Select each rule's parameters in ``root`` (a module or a skeleton) and check them.

    Returns the parameters by name, the winning rule of each canonical name (the last rule
    that selects it) and each rule's canonical names; every problem goes to ``errors``.
    """
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
    return params, winners, owned
