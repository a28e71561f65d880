"""Gradients of tied parameters, made visible: what each use contributes, and their sum.

A shared block used at two places receives, on backward, the sum of the gradients of
both uses. To show the parts, each use site is wrapped for one pass in a recorder
that, on every call, swaps the shared parameters for fresh views of themselves;
autograd routes that call's share of the gradient through its views, where hooks
keep it. One ordinary backward pass, no recomputation. The contributions of all
calls must add up to ``.grad``; the report says by how much they do.

Parameter ties are groups too: a parameter held by two modules (``lm_head.weight is
transformer.wte.weight``) has one use site per holding module. A module that reads a
parameter transposed (a tied autoencoder's decoder) is a use site of its source: its
recorder swaps the source module's parameter for a view, which the decoder then reads
transposed, so the decoder's share lands on the view like any other.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from ._build import DTYPES, BuildInfo
from ._errors import UsageError
from ._fmt import text_table
from ._inventory import FrozenModel, inventory
from ._memory import is_out_of_memory
from ._ties import links_of, transposed_map

__all__ = ["GradReport", "GroupGrads", "SiteGrad", "TensorGrad", "example_batch", "gradients", "render_grads_text"]

Loss = Literal["sum", "mse"]


class TensorGrad(FrozenModel):
    name: str
    aliases: list[str]
    numel: int
    grad_norm: float | None = Field(description="L2 norm of .grad; None when no gradient reached it")


class SiteGrad(FrozenModel):
    """What one call at one use site contributed to each tied tensor's gradient."""

    site: str
    call: int = Field(description="1 for the first call through this site, 2 for the next, ...")
    norms: dict[str, float] = Field(description="tensor -> L2 norm of this call's contribution")
    transposed: bool = Field(False, description="this site reads the tensor transposed (a transposed tie)")


class GroupGrads(FrozenModel):
    """A tie group: its per-use contributions, their sum, and ``.grad``."""

    kind: Literal["module", "parameter", "transposed"]
    block: str | None
    tensors: list[str]
    sites: list[SiteGrad]
    grad_norms: dict[str, float] = Field(description="tensor -> L2 norm of .grad")
    sum_norms: dict[str, float] = Field(description="tensor -> L2 norm of the sum of contributions")
    rel_error: dict[str, float] = Field(description="tensor -> ||sum of contributions - .grad|| / ||.grad||")

    @property
    def max_rel_error(self) -> float:
        return max(self.rel_error.values(), default=0.0)


class GradReport(FrozenModel):
    loss: Loss
    loss_value: float
    input_shape: list[int]  # the first input's
    input_shapes: list[list[int]] = Field(default_factory=list)  # every input's, in order (graphs take several)
    seed: int
    tensors: list[TensorGrad]
    groups: list[GroupGrads]


Holder = tuple[nn.Module, str, str]  # (module holding a parameter, attribute name, canonical name)


class _Group(NamedTuple):
    """A tie group as the recorder needs it: the inventory's, plus transposed readers."""

    kind: str
    block: str | None
    sites: list[str]  # module groups: module names; parameter groups: qualified parameter names
    tensors: list[str]
    transposed: frozenset[str] = frozenset()  # modules (of ``sites``) that read the tensor transposed


def _tie_groups(module: nn.Module, groups: list[Any], aliases: dict[str, list[str]]) -> list[_Group]:
    """The inventory's tie groups, with each transposed tie added to its source's parameter group.

    ``aliases``: canonical parameter name -> every name of it. A parameter that another
    module reads transposed is one group whose sites are every module holding it and
    every module reading it.
    """
    out = [_Group(g.kind, g.block, list(g.sites), list(g.tensors)) for g in groups]
    readers: dict[str, list[str]] = {}
    for name, source in transposed_map(module).items():
        if source in aliases:
            readers.setdefault(source, []).append(name)
    for source, names in readers.items():
        owners = frozenset(n.rpartition(".")[0] for n in names)
        for i, g in enumerate(out):
            if g.kind != "module" and g.tensors == [source]:  # the inventory's transposed (or same) group
                sites = g.sites + [n for n in [*aliases[source], *names] if n not in g.sites]
                out[i] = g._replace(sites=sites, transposed=g.transposed | owners)
                break
        else:
            out.append(_Group("parameter", None, [*aliases[source], *names], [source], owners))
    return out


class _Recorder(nn.Module):
    """Stands in for the module at one use site during one pass.

    On each call it swaps every tied parameter inside the site for a fresh view of it,
    runs the real module, and swaps back. Autograd then routes this call's share of
    the gradient through the view, where a hook keeps it: the call's contribution,
    with no recomputation. Nested sites work because the inner view is taken of
    whatever the outer call put in place. Each call is recorded for its tie group
    (``group``): two groups with a site in common (a shared block whose weight another
    module reads transposed) each get their own recorder there.
    """

    def __init__(
        self, inner: nn.Module, site: str, holders: list[Holder], calls: list[dict[str, Any]], group: int
    ) -> None:
        super().__init__()
        object.__setattr__(self, "inner", inner)  # not registered: the module tree stays as it was
        self.site, self.holders, self.calls, self.group = site, holders, calls, group

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        call: dict[str, Any] = {
            "site": self.site,
            "group": self.group,
            "n": 1 + sum(c["site"] == self.site and c["group"] == self.group for c in self.calls),
            "grads": {},
        }
        self.calls.append(call)
        views: dict[str, torch.Tensor] = {}
        saved = []
        for holder, attr, canonical in self.holders:
            current = holder._parameters[attr]
            if current is None or not current.requires_grad:
                continue
            if canonical not in views:
                views[canonical] = current.view_as(current)
                views[canonical].register_hook(lambda g, c=canonical: call["grads"].__setitem__(c, g))
            saved.append((holder, attr, current))
            holder._parameters[attr] = views[canonical]  # type: ignore[assignment]
        try:
            return self.inner(*args, **kwargs)
        finally:
            for holder, attr, current in reversed(saved):
                holder._parameters[attr] = current


@contextlib.contextmanager
def _recording(module: nn.Module, groups: list[_Group], calls: list[dict[str, Any]]) -> Iterator[None]:
    """Install a recorder at every use site of every tie group; remove them afterwards.

    Each call is recorded in ``calls`` with the index of its group in ``groups``."""
    modules = dict(module.named_modules(remove_duplicate=False))
    canonical = {id(p): n for n, p in module.named_parameters()}
    installs: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for index, group in enumerate(groups):
            done: set[tuple[int, str]] = set()
            for site in _group_sites(group):
                parent_name, _, key = site.rpartition(".")
                parent = modules[parent_name]
                if not site or (id(parent), key) in done:  # one slot can have several names
                    continue
                done.add((id(parent), key))
                target = modules[site]
                holders = _holders(target, canonical, group.tensors)
                original = parent._modules[key]
                assert original is not None
                parent._modules[key] = _Recorder(original, _site_label(parent, key, modules), holders, calls, index)
                installs.append((parent, key, original))
        yield
    finally:
        for parent, key, original in reversed(installs):
            parent._modules[key] = original


def _holders(target: nn.Module, canonical: dict[int, str], tensors: list[str]) -> list[Holder]:
    """Where the group's tensors are read inside ``target``: its modules' own parameters,
    and the source modules of those that read a parameter transposed."""
    out: list[Holder] = []
    seen: set[tuple[int, str]] = set()
    for m in target.modules():
        held = [(m, attr, p) for attr, p in m._parameters.items()]
        held += [(src, attr, src._parameters.get(attr)) for src, attr in links_of(m).values()]
        for holder, attr, p in held:
            if p is not None and canonical.get(id(p)) in tensors and (id(holder), attr) not in seen:
                seen.add((id(holder), attr))
                out.append((holder, attr, canonical[id(p)]))
    return out


def _site_label(parent: nn.Module, key: str, modules: dict[str, nn.Module]) -> str:
    names = [n for n, m in modules.items() if m is parent]
    return " = ".join(f"{n}.{key}" if n else key for n in names)


def example_batch(spec_input: Any, batch: int | None = None, seed: int = 0) -> torch.Tensor:
    """A random batch shaped like the spec's example input (integers are zeros)."""
    shape = list(spec_input.shape)
    if batch is not None:
        shape[0] = batch
    dtype = DTYPES[spec_input.dtype]
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    return torch.rand(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


Inputs = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, tuple[torch.Tensor, ...]]


def _forward(module: nn.Module, x: Inputs) -> list[torch.Tensor]:
    """Run each model on its inputs: one tensor, a tuple (a graph with several inputs), or,
    for several models, a tuple per model name."""

    def run(m: nn.Module, inputs: Any) -> Any:
        return m(*inputs) if isinstance(inputs, tuple) else m(inputs)

    if isinstance(module, nn.ModuleDict):
        return [run(m, x[name] if isinstance(x, dict) else x) for name, m in module.items()]
    return [run(module, x)]


def _shapes(x: Inputs) -> list[list[int]]:
    if isinstance(x, dict):
        return [shape for v in x.values() for shape in _shapes(v)]
    return [list(t.shape) for t in (x if isinstance(x, tuple) else (x,))]


def _describe(x: Inputs) -> str:
    if isinstance(x, dict):
        return "; ".join(f"{name}: {_describe(v)}" for name, v in x.items())
    tensors = x if isinstance(x, tuple) else (x,)
    shown = ", ".join(f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in tensors)
    return f"the input{'s' if len(tensors) > 1 else ''} {shown}"


def _norm(t: torch.Tensor | None) -> float:
    return 0.0 if t is None else float(torch.linalg.vector_norm(t.detach().double()))


def gradients(module: nn.Module, x: Inputs, *, loss: Loss = "sum", seed: int = 0,
              info: BuildInfo | None = None) -> GradReport:  # fmt: skip
    """One forward and backward pass on ``x``; per-tensor gradient norms and, for every
    tie group, each use's contribution and how closely their sum matches ``.grad``.

    The pass runs in the module's current mode (``train()`` by default: dropout is
    active, seeded by ``seed``). Buffers such as BatchNorm running statistics are put
    back afterwards; existing ``.grad`` values are replaced by this pass's.

    Raises:
        UsageError: ``no-gradient`` (no parameter is trainable), ``input-mismatch``
        (``x`` does not fit the model), ``too-large`` (the pass ran out of memory).
    """
    structure = inventory(module, info, values=False)
    params = dict(module.named_parameters())
    if not any(p.requires_grad for p in params.values()):
        raise UsageError("the model has no trainable parameters: there is no gradient to show", code="no-gradient")
    calls: list[dict[str, Any]] = []
    tie_groups = _tie_groups(module, structure.tie_groups, {e.name: e.aliases for e in structure.tensors})
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    module.zero_grad(set_to_none=True)
    try:
        with torch.random.fork_rng(devices=[]), _recording(module, tie_groups, calls):
            torch.manual_seed(seed)
            described = _describe(x)
            try:
                try:
                    outs = _forward(module, x)
                except Exception as e:
                    if is_out_of_memory(e):
                        raise
                    first = (str(e).strip().splitlines() or [""])[0]
                    raise UsageError(
                        f"{described} does not fit the model: {type(e).__name__}: {first}", code="input-mismatch"
                    ) from e
                total = sum(o.float().sum() if loss == "sum" else F.mse_loss(o.float(), torch.zeros_like(o.float()))
                            for o in outs)  # fmt: skip
                assert isinstance(total, torch.Tensor)
                total.backward()
            except (RuntimeError, MemoryError) as e:
                if not is_out_of_memory(e):
                    raise
                raise UsageError(
                    f"the pass on {described} ran out of memory; use a smaller batch (--batch N)", code="too-large"
                ) from e
    finally:
        with torch.no_grad():
            for b, saved in buffers:  # the pass must not change running statistics
                b.copy_(saved)
    # A tensor inside nested shared blocks belongs to several groups; it is checked in
    # the one with the most use sites (the innermost), whose uses account for all of it.
    home: dict[str, int] = {}
    for i, g in enumerate(tie_groups):
        for n in g.tensors:
            if n not in home or len(g.sites) > len(tie_groups[home[n]].sites):
                home[n] = i
    groups = [
        _group_grads(g, [n for n in g.tensors if home[n] == i], [c for c in calls if c["group"] == i], params)
        for i, g in enumerate(tie_groups)
        if any(home[n] == i for n in g.tensors)
    ]
    tensors = [
        TensorGrad(name=e.name, aliases=e.aliases, numel=e.numel,
                   grad_norm=_norm(params[e.name].grad) if params[e.name].grad is not None else None)
        for e in structure.tensors if e.kind == "parameter"
    ]  # fmt: skip
    return GradReport(
        loss=loss,
        loss_value=float(total.detach()),
        input_shape=_shapes(x)[0],
        input_shapes=_shapes(x),
        seed=seed,
        tensors=tensors,
        groups=groups,
    )


def _group_sites(group: _Group) -> list[str]:
    if group.kind == "module":
        return list(group.sites)
    return [alias.rpartition(".")[0] for alias in group.sites]  # the modules holding the parameter


def _group_grads(
    group: _Group, tensors: list[str], calls: list[dict[str, Any]], params: dict[str, nn.Parameter]
) -> GroupGrads:
    names = [n for n in tensors if n in params]
    sites = [c for c in calls if set(c["site"].split(" = ")) & set(_group_sites(group))]
    sums = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    for c in sites:
        for n in names:
            if n in c["grads"]:
                sums[n] += c["grads"][n].double()
    rel = {}
    for n in names:
        grad = params[n].grad
        grad64 = grad.double() if grad is not None else torch.zeros_like(sums[n])
        denom, err = _norm(grad64), _norm(sums[n] - grad64)
        rel[n] = err / denom if denom > 0 else (0.0 if err == 0 else math.inf)
    return GroupGrads(
        kind=group.kind, block=group.block, tensors=names,
        sites=[SiteGrad(site=c["site"], call=c["n"], norms={n: _norm(c["grads"].get(n)) for n in names},
                        transposed=bool(set(c["site"].split(" = ")) & group.transposed)) for c in sites],
        grad_norms={n: _norm(params[n].grad) for n in names},
        sum_norms={n: _norm(sums[n]) for n in names}, rel_error=rel,
    )  # fmt: skip


def render_grads_text(r: GradReport) -> str:
    """Gradient norms per tensor, then each tie group's per-use contributions and their sum."""
    shapes = r.input_shapes or [r.input_shape]
    on = f"input {shapes[0]}" if len(shapes) == 1 else "inputs " + ", ".join(map(str, shapes))
    out = [f"loss '{r.loss}' = {r.loss_value:.6g} on {on} (seed {r.seed})", ""]
    rows = [[t.name + (f" (+{len(t.aliases) - 1})" if len(t.aliases) > 1 else ""), f"{t.numel:,}",
             "—" if t.grad_norm is None else f"{t.grad_norm:.6g}"] for t in r.tensors]  # fmt: skip
    out.append(text_table(["tensor", "numel", "|grad|"], rows, right={1, 2}, max_width={0: 60}))
    for g in r.groups:
        out += ["", f"tie group {('block ' + repr(g.block)) if g.block else g.kind}: per-use contributions"]
        for n in g.tensors:
            out.append(f"  {n}")
            for s in g.sites:
                call = (" (transposed)" if s.transposed else "") + (f" (call {s.call})" if s.call > 1 else "")
                out.append(f"    from {s.site}{call}: |contribution| {s.norms[n]:.6g}")
            rel = f"(relative difference {g.rel_error[n]:.2g})"
            out.append(f"    |sum of contributions|  {g.sum_norms[n]:.6g}")
            out.append(f"    |.grad|                 {g.grad_norms[n]:.6g}   {rel}")
    return "\n".join(out) + "\n"
