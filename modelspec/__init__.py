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
    "compile_spec": "_validate",
    "diff": "_api",
    "estimate_memory": "_api",
    "export_onnx": "_onnx",
    "grads": "_api",
    "load": "_api",
    "load_state_dict": "_interop",
    "parameters": "_interop",
    "state_dict": "_interop",
    "materialize": "_api",
    "report": "_api",
    "retie": "_api",
    "save": "_api",
    "validate": "_validate",
    "write_build": "_api",
    "dcp_load": "_dcp",
    "dcp_save": "_dcp",
    "shard": "_distributed",
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
    "dcp_load",
    "dcp_save",
    "diff",
    "estimate_memory",
    "export_onnx",
    "grads",
    "load",
    "load_state_dict",
    "materialize",
    "parameters",
    "register_layer",
    "report",
    "retie",
    "save",
    "shard",
    "state_dict",
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
        diff,
        estimate_memory,
        grads,
        load,
        materialize,
        report,
        retie,
        save,
        write_build,
    )
    from ._build import BuildInfo
    from ._dcp import dcp_load, dcp_save
    from ._distributed import shard
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
    from ._interop import load_state_dict, parameters, state_dict
    from ._inventory import Report
    from ._memory import MemoryEstimate
    from ._onnx import export_onnx
    from ._registry import register_layer
    from ._validate import compile_spec, validate
