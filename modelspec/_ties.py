"""Parameter ties: applied after building, checked on save, restored by :func:`retie`.

A *same* tie makes one ``nn.Parameter`` the value of two modules' attributes
(``lm_head.weight is transformer.wte.weight``): one tensor in ``parameters()``, alias
keys in ``state_dict()`` (as for any shared tensor), and gradients of both uses add up.

A *transposed* tie makes a module read another module's parameter with dims 0 and 1
swapped (a tied autoencoder's decoder reads ``encoder.weight.t()``). PyTorch's
``parametrize`` would leave a dead ``parametrizations.weight.original`` parameter and
rename keys; instead the module keeps its class's behaviour through a small subclass
(``TransposedLinear`` for ``nn.Linear``) whose attribute lookup reads the source's
current parameter on every access, so ``forward`` always sees the live source, with no
copy and no extra parameter. The source module is held as a plain attribute, not a
submodule, so it is not listed twice; ``deepcopy`` and ``pickle`` keep the link.

Ties name parameters by their qualified names in the built module; they are checked
against it (existence with did-you-mean, shapes, dtypes, devices, chains, cycles) and
every problem is reported at the tie's place in the spec.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._errors import Collector, TieMismatchError, did_you_mean

if TYPE_CHECKING:  # checking ties needs no torch: validate runs apply_ties on a skeleton (see _skeleton)
    import torch
    import torch.nn as nn

__all__ = [
    "OUTSIDE",
    "TransposedTie",
    "apply_ties",
    "check_ties",
    "links_of",
    "retie_module",
    "transposed_map",
]

_LINKS = "_modelspec_transposed"
#: what :func:`transposed_map` names a source that is not (or no longer) in the module
OUTSIDE = "<outside the model>"


class TransposedTie:
    """Mixin of the classes a transposed tie gives a module: ``self.<attr>`` reads the
    source module's parameter with dims 0 and 1 swapped."""

    def __getattr__(self, name: str) -> Any:
        links = self.__dict__.get(_LINKS)
        if links is not None and name in links:
            source, attr = links[name]
            return getattr(source, attr).transpose(0, 1)
        return super().__getattr__(name)  # type: ignore[misc]


@functools.cache
def _tied_class(base: type[nn.Module]) -> type[nn.Module]:
    """``TransposedLinear`` for ``nn.Linear``: importable by name, so pickling works."""
    cls = type(f"Transposed{base.__name__}", (TransposedTie, base), {"__module__": __name__})
    cls.__qualname__ = cls.__name__
    return cls


def __getattr__(name: str) -> type[nn.Module]:
    """``modelspec._ties.TransposedLinear`` for unpickling: for the layers a spec can name
    (torch.nn, the layers modelspec ships and registered ones)."""
    if name.startswith("Transposed"):
        from . import _registry as registry  # the registry loads plugins: only when needed

        entry = registry.get_layer(name.removeprefix("Transposed"))
        if entry is not None:
            return _tied_class(entry.cls)
    raise AttributeError(name)


def transposed_map(module: nn.Module) -> dict[str, str]:
    """``{qualified name read transposed: canonical name of the source tensor}``.

    The canonical name is the source tensor's first ``state_dict`` key (as in the
    checkpoint's tie map), e.g. ``{"decoder.weight": "encoder.weight"}``. A link to a
    parameter that is not in ``module`` (its module was replaced) maps to
    ``"<outside the model>.weight"``.
    """
    canonical: dict[int, str] = {}
    for name, t in module.state_dict(keep_vars=True).items():
        canonical.setdefault(id(t), name)
    out: dict[str, str] = {}
    for owner_name, owner in module.named_modules(remove_duplicate=False):
        for attr, (source, source_attr) in owner.__dict__.get(_LINKS, {}).items():
            param = source._parameters.get(source_attr)
            out[_join(owner_name, attr)] = canonical.get(id(param), f"{OUTSIDE}.{source_attr}")
    return out


def links_of(module: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """``{attribute: (source module, source attribute)}`` for each attribute of ``module``
    (not of its children) that reads another module's parameter transposed."""
    return dict(module.__dict__.get(_LINKS, {}))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _split(name: str) -> tuple[str, str]:
    owner, _, attr = name.rpartition(".")
    return owner, attr


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _make_transposed(owner: nn.Module, attr: str, source: nn.Module, source_attr: str) -> None:
    if not isinstance(owner, TransposedTie):
        owner.__class__ = _tied_class(type(owner))
    owner._parameters.pop(attr, None)
    links = owner.__dict__.setdefault(_LINKS, {})
    links[attr] = (source, source_attr)


def apply_ties(root: nn.Module, ties: Sequence[Any], errors: Collector) -> None:
    """Make each declared tie true in ``root``; report every problem in ``errors``."""
    params = dict(root.named_parameters(remove_duplicate=False))
    buffers = {n for n, _ in root.named_buffers(remove_duplicate=False)}
    targets: dict[str, Any] = {}
    ok = []
    for tie in ties:
        bad = False
        for role, name in (("param", tie.param), ("to", tie.to)):
            if name not in params:
                what = "a buffer, not a parameter" if name in buffers else "not a parameter of the model"
                hint = did_you_mean(name, params) or "names are state_dict keys, e.g. 'lm_head.weight'"
                errors.add("unknown-param", f"'{name}' is {what}", (*tie.path, role), hint=hint)
                bad = True
        if tie.param in targets:
            errors.add("duplicate-tie", f"'{tie.param}' is tied twice", (*tie.path, "param"),
                       hint="a parameter can be tied to one other; tie the others to the same one")  # fmt: skip
            bad = True
        if bad:
            continue
        targets[tie.param] = tie
        ok.append(tie)
    # chains: a -> b, b -> c ties a to c; a cycle is an error
    for tie in ok:
        seen = [tie.param]
        cur = tie
        while cur.to in targets and not cur.transposed:
            nxt = targets[cur.to]
            if nxt.param in seen or nxt.to in seen:
                errors.add("tie-cycle", f"ties form a circle: {' -> '.join([*seen, nxt.to])}", tie.path)
                break
            seen.append(nxt.param)
            cur = nxt
    for tie in ok:
        a, b = params[tie.param], params[tie.to]
        if a is b:
            errors.add("already-tied", f"'{tie.param}' and '{tie.to}' are already one parameter", tie.path,
                       hint="they are in one shared block: remove the tie")  # fmt: skip
            continue
        want = [b.shape[1], b.shape[0], *b.shape[2:]] if tie.transposed and b.dim() >= 2 else _shape(b)
        if tie.transposed and b.dim() < 2:
            errors.add("tie-shape", f"'{tie.to}' {_shape(b)} has fewer than 2 dims and cannot be transposed",
                       tie.path)  # fmt: skip
        elif _shape(a) != want:
            kind = " transposed" if tie.transposed else ""
            errors.add(
                "tie-shape",
                f"'{tie.param}' {_shape(a)} cannot be '{tie.to}' {_shape(b)}{kind}: it would need shape {want}",
                tie.path,
                hint="make the layers' sizes agree" + ("" if tie.transposed else ", or set 'transposed: true'"),
            )
        elif a.dtype != b.dtype or a.device != b.device:
            errors.add("tie-dtype", f"'{tie.param}' is {a.dtype} on {a.device}, '{tie.to}' is {b.dtype} on {b.device}",
                       tie.path)  # fmt: skip
    for tie in ok:
        if tie.to in targets and targets[tie.to].transposed:
            source = targets[tie.to].to
            errors.add(
                "tie-chain",
                f"'{tie.to}' reads '{source}' transposed and holds no tensor of its own: '{tie.param}' cannot be it",
                (*tie.path, "to"),
                hint=f"tie '{tie.param}' to '{source}'" + ("" if tie.transposed else " (transposed: true)"),
            )
    if errors.errors:
        return

    def final(name: str) -> str:  # a -> b and b -> c: a, b and c are c's parameter
        while name in targets:
            name = targets[name].to
        return name

    for tie in ok:
        owner_name, attr = _split(tie.param)
        owner = root.get_submodule(owner_name)
        source_name, source_attr = _split(tie.to)
        if tie.transposed:  # reads the source module's attribute live: later ties there are seen
            _make_transposed(owner, attr, root.get_submodule(source_name), source_attr)
        else:
            owner._parameters[attr] = root.get_parameter(final(tie.to))


def check_ties(module: nn.Module, ties: Sequence[Any]) -> list[str]:
    """How ``module`` differs from the declared ties: one line per broken tie, naming both."""
    problems = []
    for tie in ties:
        owner_name, attr = _split(tie.param)
        source_name, source_attr = _split(tie.to)
        try:
            owner = module.get_submodule(owner_name)
            source_owner = module.get_submodule(source_name)
        except AttributeError:
            problems.append(f"'{tie.param}' or '{tie.to}' is not in the module")
            continue
        source = source_owner._parameters.get(source_attr)
        if tie.transposed:
            link = owner.__dict__.get(_LINKS, {}).get(attr)
            if owner._parameters.get(attr) is not None:
                problems.append(f"'{tie.param}' should read '{tie.to}' transposed but has its own tensor")
            elif link is None:
                problems.append(f"'{tie.param}' should read '{tie.to}' transposed but does not")
            elif link[0] is not source_owner or link[1] != source_attr:
                problems.append(f"'{tie.param}' should read '{tie.to}' transposed but reads a tensor outside the model")
        else:
            mine = owner._parameters.get(attr)
            if mine is None or source is None or mine is not source:
                problems.append(f"'{tie.param}' should be the same parameter as '{tie.to}' but is a separate one")
    return problems


def retie_module(module: nn.Module, ties: Sequence[Any], *, verify: bool = True) -> int:
    """Restore declared ties broken by ``to_empty``/``load_state_dict(assign=True)``/...

    With ``verify``, a broken tie is restored only when both tensors hold the same
    values (transposed: the one is the other transposed); otherwise TieMismatchError
    names both. Returns how many ties were restored.
    """
    same = {t.param: t for t in ties if not t.transposed}

    def hops(name: str) -> int:  # a -> b -> c: b -> c is restored first, then a -> b
        seen: set[str] = set()
        while name in same and name not in seen:
            seen.add(name)
            name = same[name].to
        return len(seen)

    import torch

    restored = 0
    for tie in sorted(ties, key=lambda t: hops(t.to)):
        if not check_ties(module, [tie]):
            continue
        owner_name, attr = _split(tie.param)
        source_name, source_attr = _split(tie.to)
        try:
            owner = module.get_submodule(owner_name)
            source_owner = module.get_submodule(source_name)
        except AttributeError as e:
            raise TieMismatchError(f"cannot retie '{tie.param}' to '{tie.to}': {e}", code="tie-missing") from e
        source = source_owner._parameters.get(source_attr)
        mine = owner._parameters.get(attr)
        if mine is None and tie.transposed and attr in links_of(owner):
            mine = getattr(owner, attr)  # what it reads now: a module that is no longer in the model
        if source is None or mine is None:
            raise TieMismatchError(
                f"cannot retie '{tie.param}' to '{tie.to}': "
                f"'{tie.to if source is None else tie.param}' is not a parameter there",
                code="tie-missing",
            )
        expect = source.detach().transpose(0, 1) if tie.transposed else source.detach()
        if mine.shape != expect.shape:
            raise TieMismatchError(
                f"cannot retie '{tie.param}' {list(mine.shape)} to '{tie.to}' {list(source.shape)}: shapes differ",
                code="tie-shape",
            )
        if verify and mine.device.type != "meta" and not torch.equal(mine.detach(), expect):
            raise TieMismatchError(
                f"cannot retie '{tie.param}' to '{tie.to}': their values differ "
                "(load the weights first, or pass verify=False to keep the values of "
                f"'{tie.to}')",
                code="tie-values",
            )
        if tie.transposed:
            _make_transposed(owner, attr, source_owner, source_attr)
        else:
            owner._parameters[attr] = source
        restored += 1
    return restored
