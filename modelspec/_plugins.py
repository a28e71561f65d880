"""Where layer classes from outside modelspec come from: code the user chose to run.

A spec never imports anything (rule 9). Layers that ``torch.nn`` and :mod:`modelspec.layers`
lack reach the registry in exactly three ways, each decided outside the spec:

* ``modelspec.register_layer(cls)`` in the user's own Python code;
* a module named on the command line, ``--plugin MODULE``, imported before the command
  reads anything (:func:`import_plugins`); it calls ``register_layer`` when imported;
* installed packages that declare entry points in the group ``modelspec.layers``
  (``pyproject.toml``: ``[project.entry-points."modelspec.layers"] MyLayer =
  "mypkg.layers:MyLayer"``). All of them are loaded once, the first time the registry is
  consulted (:func:`load_entry_points`): which ones load never depends on a spec's content.

A plugin that fails to import is a ``ModelspecError`` with code ``plugin-error`` that names
the module (or the distribution and entry point) and the exception's first line.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Sequence
from typing import Any

from ._errors import ModelspecError, first_line

__all__ = ["GROUP", "import_plugins", "load_entry_points", "plugin_error"]

GROUP = "modelspec.layers"
_HINT = "is the module installed, or its folder on PYTHONPATH?"


def plugin_error(message: str) -> ModelspecError:
    return ModelspecError(message, code="plugin-error")


def import_plugins(modules: Sequence[str]) -> None:
    """Import each module named with ``--plugin`` (it registers its layers when imported).

    Raises:
        ModelspecError: ``plugin-error``, naming the module and the exception's first line.
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:
            raise plugin_error(f"plugin module '{name}' failed to import: {first_line(e)}"
                               + (f" ({_HINT})" if isinstance(e, ModuleNotFoundError) else "")) from e  # fmt: skip


def _label(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    owner = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"entry point '{ep.name} = {ep.value}' of {owner}"


def load_entry_points(register: Callable[[Any, str], object]) -> None:
    """Load every entry point of the group ``modelspec.layers`` (sorted by name) and pass
    each object to ``register(obj, name)``, which checks the name and the class.

    Raises:
        ModelspecError: ``plugin-error`` naming every entry point that failed to load or
            to register, with its distribution.
    """
    problems: list[str] = []
    cause: BaseException | None = None
    seen: set[tuple[str, str]] = set()
    for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: (e.name, e.value)):
        if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        try:
            register(ep.load(), ep.name)
        except Exception as e:  # noqa: BLE001 - a broken plugin is reported by name, not as a traceback
            problems.append(f"{_label(ep)}: {first_line(e)}")
            cause = cause or e
    if problems:
        raise plugin_error("; ".join(problems)) from cause
