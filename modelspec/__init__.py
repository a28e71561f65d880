"""modelspec: validated YAML specs -> PyTorch models with explicit weight tying.

>>> import modelspec
>>> net = modelspec.build("specs/d2l/shared.yaml")
>>> net[2] is net[4]          # one module object at both uses
True
"""

from ._version import __version__
from .api import build, build_info, compile_spec, diff, grads, load, report, save, validate, write_build
from .build import BuildInfo
from .errors import (
    BuildDirError,
    CheckpointError,
    Diagnostic,
    ModelspecError,
    SpecError,
    SpecWarning,
    TieMismatchError,
    UsageError,
)
from .inventory import Report

__all__ = [
    "BuildDirError",
    "BuildInfo",
    "CheckpointError",
    "Diagnostic",
    "ModelspecError",
    "Report",
    "SpecError",
    "SpecWarning",
    "TieMismatchError",
    "UsageError",
    "__version__",
    "build",
    "build_info",
    "compile_spec",
    "diff",
    "grads",
    "load",
    "report",
    "save",
    "validate",
    "write_build",
]
