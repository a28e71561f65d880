"""modelspec: validated YAML specs -> PyTorch models with explicit weight tying.

>>> import modelspec
>>> net = modelspec.build("specs/d2l/shared.yaml")
>>> net[2] is net[4]          # one module object at both uses
True

``import modelspec`` does not import torch: each public name is imported from its module on
first use (PEP 562), so ``modelspec validate`` can check a spec without loading PyTorch.
"""

import importlib as _importlib
import typing as _typing

from ._version import __version__

#: public name -> the private module that defines it
_WHERE = {
    "build": "_api",
    "build_info": "_api",
    "compile_spec": "_api",
    "diff": "_api",
    "estimate_memory": "_api",
    "grads": "_api",
    "load": "_api",
    "materialize": "_api",
    "report": "_api",
    "retie": "_api",
    "save": "_api",
    "validate": "_api",
    "write_build": "_api",
    "BuildInfo": "_build",
    "BuildDirError": "_errors",
    "CheckpointError": "_errors",
    "Diagnostic": "_errors",
    "ModelspecError": "_errors",
    "ReportError": "_errors",
    "SpecError": "_errors",
    "SpecWarning": "_errors",
    "TieMismatchError": "_errors",
    "UsageError": "_errors",
    "Report": "_inventory",
    "MemoryEstimate": "_memory",
    "register_layer": "_registry",
}

__all__ = [
    "BuildDirError",
    "BuildInfo",
    "CheckpointError",
    "Diagnostic",
    "MemoryEstimate",
    "ModelspecError",
    "Report",
    "ReportError",
    "SpecError",
    "SpecWarning",
    "TieMismatchError",
    "UsageError",
    "__version__",
    "build",
    "build_info",
    "compile_spec",
    "diff",
    "estimate_memory",
    "grads",
    "load",
    "materialize",
    "register_layer",
    "report",
    "retie",
    "save",
    "validate",
    "write_build",
]


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'modelspec' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next access is a plain attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


if _typing.TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from ._api import (
        build,
        build_info,
        compile_spec,
        diff,
        estimate_memory,
        grads,
        load,
        materialize,
        report,
        retie,
        save,
        validate,
        write_build,
    )
    from ._build import BuildInfo
    from ._errors import (
        BuildDirError,
        CheckpointError,
        Diagnostic,
        ModelspecError,
        ReportError,
        SpecError,
        SpecWarning,
        TieMismatchError,
        UsageError,
    )
    from ._inventory import Report
    from ._memory import MemoryEstimate
    from ._registry import register_layer
