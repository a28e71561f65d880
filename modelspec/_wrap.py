"""The model inside its wrappers, and what modelspec knows about it.

Users hand modelspec's functions what they train: ``torch.compile(model)`` (an
``OptimizedModule`` whose ``state_dict`` keys start with ``_orig_mod.``), ``DistributedDataParallel``
or ``DataParallel`` (keys start with ``module.``), or the model itself. :func:`unwrap` finds
the module modelspec built, so reports and checkpoints carry the model's own names.

What modelspec knows about a module it built (its :class:`~modelspec._build.BuildInfo`)
travels *with* the module, as a plain attribute of the root module: it survives
``copy.deepcopy``, ``pickle`` and ``torch.save``/``torch.load`` of the whole module, and it
is not a parameter or buffer, so ``state_dict()`` keys do not change. :data:`INFO` reads
and writes it like a dictionary keyed by module.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch.fx as fx
import torch.nn as nn

if TYPE_CHECKING:
    from ._build import BuildInfo

__all__ = ["ATTRIBUTE", "INFO", "has_ddp", "unwrap"]

#: the attribute of a built model's root module that holds its build information
ATTRIBUTE = "_modelspec_build"
#: ``torch.fx.graph_module._USER_PRESERVED_ATTRIBUTES_KEY``: attributes a GraphModule's deepcopy keeps
_FX_PRESERVED = "_user_preserved_attributes"


def _inner(module: nn.Module) -> nn.Module | None:
    """The module one wrapper holds, or None when ``module`` is not a wrapper modelspec knows."""
    # torch.compile's wrapper: look its class up only if dynamo was imported (importing it costs
    # seconds, and a module cannot be an OptimizedModule unless it was)
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    optimized = getattr(eval_frame, "OptimizedModule", None)
    if optimized is not None and isinstance(module, optimized):
        return module._orig_mod
    if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return module.module
    return None


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``, ``DistributedDataParallel`` and ``DataParallel``
    wrappers, however nested (``module`` itself when it is not wrapped).

    Example:
        >>> unwrap(torch.compile(net)) is net
        True
    """
    seen = {id(module)}
    while (inner := _inner(module)) is not None and id(inner) not in seen:
        seen.add(id(inner))
        module = inner
    return module


def has_ddp(module: nn.Module) -> bool:
    """Whether a DistributedDataParallel wrapper is among ``module``'s wrappers."""
    seen: set[int] = set()
    while id(module) not in seen:
        seen.add(id(module))
        if isinstance(module, nn.parallel.DistributedDataParallel):
            return True
        inner = _inner(module)
        if inner is None:
            return False
        module = inner
    return False


class _Carried:
    """The holder of a module's BuildInfo. A BuildInfo is never changed once made (a new one
    replaces it), so ``copy.deepcopy`` of a model shares it instead of copying its spec."""

    __slots__ = ("info",)

    def __init__(self, info: BuildInfo) -> None:
        self.info = info

    def __deepcopy__(self, memo: dict[int, object]) -> _Carried:
        return self


class _InfoTable:
    """``INFO[module]``: the BuildInfo a module carries, looked up through its wrappers.

    A mapping-like view, not a store: the value lives in the module's ``__dict__`` (set
    directly, so no ``nn.Module.__setattr__`` logic or hooks run).
    """

    def get(self, module: nn.Module) -> BuildInfo | None:
        carried = unwrap(module).__dict__.get(ATTRIBUTE)
        return carried.info if isinstance(carried, _Carried) else None

    def __getitem__(self, module: nn.Module) -> BuildInfo:
        info = self.get(module)
        if info is None:
            raise KeyError(type(module).__name__)
        return info

    def __setitem__(self, module: nn.Module, info: BuildInfo) -> None:
        module = unwrap(module)
        carried = _Carried(info)
        module.__dict__[ATTRIBUTE] = carried
        if isinstance(module, fx.GraphModule):
            # GraphModule.__deepcopy__ re-creates the module and keeps only the attributes listed
            # here (pickling keeps every attribute)
            module.meta.setdefault(_FX_PRESERVED, {})[ATTRIBUTE] = carried

    def __contains__(self, module: object) -> bool:
        return isinstance(module, nn.Module) and self.get(module) is not None


INFO = _InfoTable()
