"""modelspec: validated YAML specs -> PyTorch models with explicit weight tying.

>>> import modelspec
>>> net = modelspec.build("specs/d2l/shared.yaml")
>>> net[2] is net[4]          # one module object at both uses
True
"""

from ._api import (
    build,
    build_info,
    compile_spec,
    diff,
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
from ._registry import register_layer
from ._version import __version__

__all__ = [
    "BuildDirError",
    "BuildInfo",
    "CheckpointError",
    "Diagnostic",
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
