"""FSDP2 with ties kept: sharding units from the tie graph, and gathering a sharded model.

``fully_shard`` groups parameters into units, bottom-up: each call manages the parameters
under its module(s) that no earlier call took. A tie split across two units fails: a
parameter tie (``lm_head.weight is wte.weight``) in two units raises ``ValueError``, a
shared block inside two per-layer units a cryptic ``TypeError: Invariant encountered``,
and a transposed tie whose reader is not in its source's unit reads a sharded DTensor.
:func:`shard` derives the units from the ties first:

- each *shared block* (a module placed at two or more places) is a unit of its own, made
  before the units that contain its places;
- the modules that hold one tied parameter, and a module that reads a parameter
  transposed together with that parameter's module, are ONE unit (``fully_shard([a, b])``);
  a module inside a shared block counts as that block;
- then the per-layer units asked for (``units=``), each skipped where it would take part
  of a tie (the tie wins), or where it would hold no parameter of its own;
- then the root.

On an FSDP2 model ``save`` and ``report`` call :func:`on_rank0`: every rank takes part in
gathering the full state dict onto rank 0 (``get_model_state_dict`` with
``full_state_dict=True, cpu_offload=True``); rank 0 fills a plain copy of the model with it
and does the work; the other ranks write nothing and get rank 0's answer (or its error).
"""

from __future__ import annotations

import heapq
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn as nn

from . import _errors
from ._errors import ModelspecError, TieMismatchError, UsageError
from ._ties import links_of, transposed_map

__all__ = ["full_state", "is_sharded", "on_rank0", "plan", "shard"]

#: which submodules get a unit of their own: classes, or ``(name, module) -> bool``
Units = type[nn.Module] | tuple[type[nn.Module], ...] | Callable[[str, nn.Module], bool] | None
T = TypeVar("T")


# ------------------------------------------------------------------ planning the units
class _Tree:
    """Every module once (pre-order), its first name, its subtree, and its use sites."""

    def __init__(self, model: nn.Module) -> None:
        self.modules: list[nn.Module] = []
        self.name: dict[int, str] = {}
        sites: dict[int, set[tuple[int, str]]] = {}
        for name, m in model.named_modules(remove_duplicate=False):
            if id(m) not in self.name:
                self.name[id(m)] = name
                self.modules.append(m)
        self.index = {id(m): i for i, m in enumerate(self.modules)}
        for m in self.modules:
            for key, child in m._modules.items():
                if child is not None:
                    sites.setdefault(id(child), set()).add((id(m), key))
        self.below: dict[int, set[int]] = {id(m): {id(d) for d in m.modules()} - {id(m)} for m in self.modules}
        # a shared block: one object placed at two or more (parent, key) slots, holding parameters
        self.shared = [m for m in self.modules if len(sites.get(id(m), ())) > 1 and _has_params(m)]

    def lift(self, m: nn.Module) -> nn.Module:
        """The innermost shared block around ``m`` (``m`` itself if it is one), else ``m``."""
        around = [s for s in self.shared if s is m or id(m) in self.below[id(s)]]
        return min(around, key=lambda s: len(self.below[id(s)])) if around else m


def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def _tie_groups(tree: _Tree) -> list[list[nn.Module]]:
    """Modules that must be in one unit: union-find over the tie graph."""
    parent: dict[int, int] = {}
    objs: dict[int, nn.Module] = {}

    def find(i: int) -> int:
        while parent.setdefault(i, i) != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: nn.Module, b: nn.Module) -> None:
        a, b = tree.lift(a), tree.lift(b)
        objs[id(a)], objs[id(b)] = a, b
        parent[find(id(a))] = find(id(b))

    for s in tree.shared:
        union(s, s)
    holders: dict[int, nn.Module] = {}
    for m in tree.modules:
        for p in m._parameters.values():
            if p is not None:
                union(holders.setdefault(id(p), m), m)
        for source, _ in links_of(m).values():
            if id(source) in tree.name:  # a source outside the model: nothing to keep together
                union(m, source)
    groups: dict[int, list[nn.Module]] = {}
    for i, m in objs.items():
        groups.setdefault(find(i), []).append(m)
    out = []
    for members in groups.values():
        if len(members) == 1 and members[0] not in tree.shared:
            continue  # a module that is in no tie
        top = [m for m in members if not any(id(m) in tree.below[id(o)] for o in members if o is not m)]
        out.append(sorted(top, key=lambda m: tree.index[id(m)]))
    return out


def _wanted(units: Units, name: str, m: nn.Module) -> bool:
    if units is None:
        return False
    if isinstance(units, type | tuple):
        return isinstance(m, units)
    return bool(units(name, m))


def _ordered(tree: _Tree, groups: list[list[nn.Module]]) -> list[list[nn.Module]]:
    """Bottom-up: a group comes before every group with a member around one of its members."""
    group_of = {id(m): gi for gi, g in enumerate(groups) for m in g}
    later: list[set[int]] = [set() for _ in groups]  # gi -> the groups around it
    waits = [0] * len(groups)  # gi -> how many groups inside it are not placed yet
    for gi, g in enumerate(groups):
        inside = {group_of[i] for m in g for i in tree.below[id(m)] if i in group_of} - {gi}
        for gj in inside:
            later[gj].add(gi)
        waits[gi] = len(inside)
    ready = [(tree.index[id(g[0])], gi) for gi, g in enumerate(groups) if waits[gi] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, gi = heapq.heappop(ready)
        order.append(gi)
        for gj in later[gi]:
            waits[gj] -= 1
            if waits[gj] == 0:
                heapq.heappush(ready, (tree.index[id(groups[gj][0])], gj))
    if len(order) < len(groups):
        names = [[tree.name[id(m)] for m in g] for gi, g in enumerate(groups) if gi not in set(order)]
        raise UsageError(f"the ties nest into each other and cannot be sharded bottom-up: {names[:4]}",
                         code="cannot-shard")  # fmt: skip
    return [groups[gi] for gi in order]


def _split_ties(tree: _Tree, groups: list[list[nn.Module]]) -> dict[int, str]:
    """Simulate ``fully_shard`` in this order: {group index: a tie it splits}."""
    owner: dict[int, int] = {}  # id(module) -> the group that manages it
    for gi, members in enumerate(groups):
        stack = list(members)
        while stack:  # what fully_shard manages: below its modules, up to modules already sharded
            m = stack.pop()
            if id(m) in owner:
                continue
            owner[id(m)] = gi
            stack.extend(c for c in m.children() if id(c) not in owner)
    split: dict[int, str] = {}
    held: dict[int, tuple[int, str]] = {}
    for m in tree.modules:
        g = owner[id(m)]
        for key, p in m._parameters.items():
            if p is None:
                continue
            first = held.setdefault(id(p), (g, _join(tree.name[id(m)], key)))
            if first[0] != g:
                what = f"'{first[1]}' is '{_join(tree.name[id(m)], key)}'"
                split.setdefault(first[0], what)
                split.setdefault(g, what)
        for attr, (source, _) in links_of(m).items():
            if owner.get(id(source), g) != g:
                what = f"'{_join(tree.name[id(m)], attr)}' reads '{tree.name[id(source)]}' transposed"
                split.setdefault(owner[id(source)], what)
                split.setdefault(g, what)
    return split


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _plan(model: nn.Module, units: Units) -> list[list[nn.Module]]:
    tree = _Tree(model)
    ties = [g for g in _tie_groups(tree) if model not in g]  # a tie that holds the root: the root's unit
    in_ties = {id(m) for g in ties for m in g}
    chosen = [[m] for m in tree.modules[1:] if id(m) not in in_ties and _wanted(units, tree.name[id(m)], m)]
    while True:
        groups = [*_ordered(tree, ties + chosen), [model]]
        split = _split_ties(tree, groups)
        if not split:
            break
        drop = {id(groups[i][0]) for i in split if groups[i] in chosen}
        if not drop:
            raise UsageError(f"cannot keep a tie in one FSDP unit: {next(iter(split.values()))}", code="cannot-shard")
        chosen = [g for g in chosen if id(g[0]) not in drop]
    # a chosen unit whose parameters all went to units made before it would be empty
    taken: set[int] = set()
    out = []
    for g in groups:
        own = {id(p) for m in g for p in m.parameters()} - taken
        if own or g[0] is model:
            out.append(g)
        taken |= own
    return out


def plan(model: nn.Module, *, units: Units = None) -> list[tuple[str, ...]]:
    """The units :func:`shard` makes, in order, each as the first names of its modules
    (``""`` is the root, always last). Needs no process group."""
    tree = _Tree(model)
    return [tuple(tree.name[id(m)] for m in g) for g in _plan(model, units)]


def shard(model: nn.Module, *, units: Units = None, **fully_shard_kwargs: Any) -> nn.Module:
    """Apply FSDP2's ``fully_shard`` with units that never split a tie.

    Each shared block is a unit of its own; the modules holding one tied parameter (or
    reading it transposed) are one unit; then each submodule that ``units`` selects,
    unless it would take part of a tie; then ``model``. Call it on every rank, after
    ``torch.distributed.init_process_group``.

    Args:
        model: a module (built by modelspec or not).
        units: per-layer units: a module class or tuple of classes, or a function
            ``(name, module) -> bool``. By default only the units the ties need, and the root.
        **fully_shard_kwargs: passed to every ``fully_shard`` call (``mesh``,
            ``reshard_after_forward``, ``mp_policy``, ...).

    Returns:
        ``model``, sharded in place (its parameters are DTensors; ties stay one tensor).

    Raises:
        UsageError: ``not-distributed`` (no process group), ``cannot-shard`` (a tie cannot be
            kept in one unit).

    Example:
        >>> layer = lambda name, module: name.startswith("transformer.h.") and name.count(".") == 2
        >>> model = modelspec.shard(modelspec.build("specs/zoo/gpt2.yaml"), units=layer)
        >>> # units: [transformer.wte + lm_head], transformer.h.0, ..., transformer.h.11, the root
    """
    import torch.distributed as dist

    if isinstance(model, nn.ModuleDict | nn.ModuleList):  # fully_shard needs the root's forward
        raise UsageError(
            f"shard needs the module that runs the model, not a {type(model).__name__} "
            "(a spec with 'models:' builds one): shard a module whose forward calls them",
            code="cannot-shard",
        )
    if not dist.is_available() or not dist.is_initialized():
        raise UsageError("shard needs torch.distributed.init_process_group() first (on every rank)",
                         code="not-distributed")  # fmt: skip
    from torch.distributed.fsdp import fully_shard

    for group in _plan(model, units):
        fully_shard(group if len(group) > 1 else group[0], **fully_shard_kwargs)
    return model


# ------------------------------------------------------------------ gathering a sharded model
def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter or buffer of ``module`` is a DTensor (FSDP2, tensor parallel)."""
    if "torch.distributed.tensor" not in sys.modules:  # nothing can be a DTensor: stay cheap
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(t, DTensor) for t in (*module.parameters(), *module.buffers()))


def full_state(module: nn.Module) -> dict[str, torch.Tensor] | None:
    """``None`` if ``module`` is not sharded; else its full state dict on CPU on rank 0
    and ``{}`` on the other ranks. Every rank must call it (it is a collective)."""
    if not is_sharded(module):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def fill(skeleton: nn.Module, sharded: nn.Module, full: dict[str, torch.Tensor]) -> nn.Module:
    """``skeleton`` (the same model on meta) holding ``full``'s values, with ``sharded``'s ties.

    The tensors are set, not copied: memory stays at one copy of the model.
    """
    mine = dict(sharded.state_dict(keep_vars=True))
    theirs = set(skeleton.state_dict(keep_vars=True))
    if set(mine) != theirs or set(full) != theirs:
        missing, extra = sorted(theirs - set(mine)), sorted(set(mine) - theirs)
        raise TieMismatchError(f"state_dict keys differ from the spec's (missing {missing[:5]}, unexpected "
                               f"{extra[:5]})", code="names-mismatch")  # fmt: skip
    if transposed_map(sharded) != transposed_map(skeleton):
        raise TieMismatchError("the model's transposed ties differ from its spec's", code="tie-mismatch")
    made: dict[int, torch.Tensor] = {}
    for name, t in mine.items():
        value = made.get(id(t))
        if value is None:
            value = full[name]
            if isinstance(t, nn.Parameter):
                value = nn.Parameter(value, requires_grad=t.requires_grad)
            made[id(t)] = value
        owner, _, key = name.rpartition(".")
        m = skeleton.get_submodule(owner)
        if key in m._parameters:
            m._parameters[key] = value
        else:
            m._buffers[key] = value
    volatile = dict(sharded.named_buffers(remove_duplicate=False))
    for name, b in skeleton.named_buffers(remove_duplicate=False):
        if b.device.type == "meta":  # not in the state dict: a non-persistent buffer (FSDP2 keeps buffers whole)
            owner, _, key = name.rpartition(".")
            skeleton.get_submodule(owner)._buffers[key] = volatile[name].detach().to("cpu", copy=True)
    return skeleton


def on_rank0(
    module: nn.Module,
    skeleton: Callable[[], nn.Module],
    work: Callable[[nn.Module], T],
    encode: Callable[[T], str],
    decode: Callable[[str], T],
) -> T:
    """Gather ``module``'s full state onto rank 0, run ``work`` there on a plain copy
    (``skeleton()`` filled by :func:`fill`), and give every rank its result.

    The other ranks get ``decode(encode(result))``; an error on rank 0 is raised on every
    rank (a ModelspecError of the same class and code). Every rank must call it.
    """
    import torch.distributed as dist

    full = full_state(module) or {}  # {} on the ranks other than 0
    rank = dist.get_rank()
    outcome: dict[str, Any] = {}
    result: T | None = None
    failure: BaseException | None = None
    if rank == 0:
        try:
            result = work(fill(skeleton(), module, full))
            outcome = {"ok": encode(result)}
        except ModelspecError as e:
            failure = e
            outcome = {"error": type(e).__name__, "code": e.code, "message": str(e)}
        except Exception as e:  # noqa: BLE001 - the other ranks must not wait forever
            failure = e
            outcome = {"error": "", "code": "internal", "message": f"{type(e).__name__}: {e}"}
    del full
    text = _broadcast(json.dumps(outcome) if rank == 0 else "")
    if rank == 0:
        if failure is not None:
            raise failure
        return result  # type: ignore[return-value]
    shared = json.loads(text)
    if "ok" in shared:
        return decode(shared["ok"])
    cls = getattr(_errors, shared["error"], None)
    message = f"on rank 0: {shared['message']}"
    if isinstance(cls, type) and issubclass(cls, ModelspecError) and cls is not _errors.SpecError:
        raise cls(message, code=shared["code"])
    raise ModelspecError(message, code=shared["code"])


def _broadcast(text: str) -> str:
    """Rank 0's ``text`` on every rank, as bytes in tensors (no pickle)."""
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    raw = text.encode("utf-8")
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buf = data.to(device) if dist.get_rank() == 0 else torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buf, src=0)
    return bytes(buf.cpu().tolist()).decode("utf-8")
