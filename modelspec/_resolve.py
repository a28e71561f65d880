"""Stage 3: a Spec -> a Resolved spec whose block references are known to be sound.

Checks that every ``use`` names a declared block, that no block uses itself (directly
or through others: the cycle is spelled out), and warns about blocks never used. The
result orders blocks so that each is built after the blocks it uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ._errors import Collector, did_you_mean
from ._spec import Children, Layer, Node, Seq, Spec, Use

__all__ = ["Resolved", "iter_uses", "resolve"]


@dataclass(frozen=True)
class Resolved:
    """A spec whose references resolve; ``order`` lists blocks dependencies-first."""

    spec: Spec
    order: tuple[str, ...]


def iter_uses(node: Node) -> Iterator[Use]:
    """Every ``use`` inside ``node``, in document order."""
    if isinstance(node, Use):
        yield node
    elif isinstance(node, Seq):
        for item in node.items:
            yield from iter_uses(item)
    elif isinstance(node, Children):
        for _, child in node.children:
            yield from iter_uses(child)
    else:
        assert isinstance(node, Layer)


def resolve(spec: Spec) -> Resolved:
    """Check block references; raise :class:`SpecError` on unknown or cyclic ones."""
    errors = Collector(file=spec.file, positions=spec.positions)
    errors.items.extend(spec.warnings)
    deps = {name: [u for u in iter_uses(node)] for name, node in spec.blocks.items()}
    used: set[str] = set()
    for node in [*spec.roots.values(), *spec.blocks.values()]:
        for use in iter_uses(node):
            if use.block in spec.blocks:
                used.add(use.block)
            else:  # also `use: ''`: the parser only checks that it is a string
                errors.add(
                    "unknown-block",
                    f"unknown block '{use.block}'",
                    use.path,
                    hint=did_you_mean(use.block, spec.blocks)
                    or (f"declared blocks: {', '.join(spec.blocks)}" if spec.blocks else "declare it under 'blocks:'"),
                )

    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*trail[trail.index(name) :], name]
            where = next(u.path for u in deps[trail[-1]] if u.block == name)
            errors.add(
                "block-cycle",
                f"block '{name}' uses itself: {' -> '.join(cycle)}",
                where,
                hint="a block cannot contain itself; use a different block inside it",
            )
            return
        state[name] = 1
        for use in deps[name]:
            if use.block in spec.blocks:
                visit(use.block, [*trail, name])
        state[name] = 2
        order.append(name)

    for name in spec.blocks:
        visit(name, [])
    for name in spec.blocks:
        if name not in used:
            errors.add(
                "unused-block",
                f"block '{name}' is declared but never used",
                ("blocks", name),
                hint=f"remove it, or place it with '{{use: {name}}}'",
                severity="warning",
            )
    errors.raise_if_errors()
    return Resolved(spec=_with_warnings(spec, errors), order=tuple(order))


def _with_warnings(spec: Spec, errors: Collector) -> Spec:
    from dataclasses import replace

    return replace(spec, warnings=tuple(errors.warnings))
