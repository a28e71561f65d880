"""The ``modelspec`` command line. Parses arguments, calls :mod:`modelspec.api`, prints.

Exit codes: 0 ok, 1 differences found (``schema --check``), 2 bad input (the message
on stderr says where and why; nothing is written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from . import api
from ._version import __version__
from .errors import Diagnostic, ModelspecError, SpecError
from .report import render_md
from .schema import SCHEMA_FILES, render_schemas, write_schemas

__all__ = ["main"]

EXIT_OK, EXIT_DIFF, EXIT_BAD_INPUT = 0, 1, 2
FORMATS = ("text", "json", "md")


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="modelspec",
        formatter_class=fmt,
        description="Turn validated YAML specs into PyTorch models with explicit weight tying.",
        epilog="examples:\n  modelspec build specs/d2l/shared.yaml -o build/shared\n"
        "  modelspec validate specs/d2l/nest_mlp.yaml\n  modelspec schema -o schemas\n\n"
        "exit codes: 0 ok, 1 differences found, 2 bad input",
    )
    p.add_argument("--version", action="version", version=f"modelspec {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    b = sub.add_parser(
        "build",
        formatter_class=fmt,
        help="build a spec into a folder: checkpoint, reports, spec",
        description="Validate SPEC, build the model, and write a build folder atomically:\n"
        "model.safetensors, report.json, report.md and spec.yaml (resolved).",
        epilog="examples:\n  modelspec build specs/d2l/shared.yaml\n"
        "  modelspec build specs/d2l/shared_mlp.yaml -o out/mlp --format json\n"
        "  modelspec build big.yaml --dtype bfloat16",
    )
    b.add_argument("spec", metavar="SPEC", help="the YAML spec")
    b.add_argument("-o", "--out", metavar="DIR", help="output folder (default: build/<spec name>)")
    b.add_argument("--device", default="cpu", help="device to build on (default: cpu)")
    b.add_argument("--dtype", default=None, help="convert parameters to this dtype, e.g. bfloat16")
    b.add_argument("--format", choices=FORMATS, default="text", help="what to print on stdout")
    b.set_defaults(func=_cmd_build)

    v = sub.add_parser(
        "validate",
        formatter_class=fmt,
        help="check a spec without building it",
        description="Check SPEC: YAML, keys, layer types, arguments, blocks. Exit 0 if valid, 2 if not.",
        epilog="examples:\n  modelspec validate specs/d2l/shared.yaml\n  modelspec validate spec.yaml --format json",
    )
    v.add_argument("spec", metavar="SPEC")
    v.add_argument("--format", choices=FORMATS, default="text")
    v.set_defaults(func=_cmd_validate)

    s = sub.add_parser(
        "schema",
        formatter_class=fmt,
        help="print or write the JSON Schemas",
        description="Print a JSON Schema, write both to a folder, or check committed ones.",
        epilog="examples:\n  modelspec schema spec > modelspec.schema.json\n"
        "  modelspec schema -o schemas\n  modelspec schema --check schemas",
    )
    s.add_argument("which", nargs="?", choices=("spec", "report"), default="spec")
    g = s.add_mutually_exclusive_group()
    g.add_argument("-o", "--out", metavar="DIR", help=f"write {' and '.join(SCHEMA_FILES)} to DIR")
    g.add_argument("--check", metavar="DIR", help="exit 1 if DIR's schemas differ from the code's")
    s.set_defaults(func=_cmd_schema)
    return p


def _print_diagnostics(diags: Sequence[Diagnostic], stderr: TextIO) -> None:
    for d in diags:
        print(str(d), file=stderr)


def _cmd_build(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    spec_path = Path(args.spec)
    target = Path(args.out) if args.out else Path("build") / spec_path.stem
    result = api.write_build(spec_path, target, device=args.device, dtype=args.dtype)
    _print_diagnostics(result.warnings, err)
    t = result.report.totals
    if args.format == "json":
        out.write(
            json.dumps(
                {"out": str(target), "files": sorted(p.name for p in target.iterdir()), "totals": t.model_dump()},
                indent=2,
            )
            + "\n"
        )
    elif args.format == "md":
        out.write(render_md(result.report))
    else:
        out.write(
            f"built {spec_path} -> {target}/\n"
            f"  {t.unique_params:,} parameters in {t.unique_tensors} tensors"
            f" (naive count {t.naive_params:,}; sharing saves {t.saved_by_sharing:,})\n"
            f"  files: {', '.join(sorted(p.name for p in target.iterdir()))}\n"
        )
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        warnings = api.validate(Path(args.spec))
    except SpecError as e:
        if args.format == "json":
            out.write(json.dumps({"valid": False, "errors": [d.to_dict() for d in e.diagnostics]}, indent=2) + "\n")
        raise
    _print_diagnostics(warnings, err)
    if args.format == "json":
        out.write(json.dumps({"valid": True, "warnings": [d.to_dict() for d in warnings]}, indent=2) + "\n")
    else:
        out.write(f"{args.spec}: valid" + (f" ({len(warnings)} warning(s))" if warnings else "") + "\n")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    texts = render_schemas()
    if args.check:
        stale = [
            name
            for name, text in texts.items()
            if not (Path(args.check) / name).is_file() or (Path(args.check) / name).read_text() != text
        ]
        for name in stale:
            print(f"{Path(args.check) / name} is out of date; run 'modelspec schema -o {args.check}'", file=err)
        return EXIT_DIFF if stale else EXIT_OK
    if args.out:
        for path in write_schemas(Path(args.out)):
            print(f"wrote {path}", file=err)
        return EXIT_OK
    out.write(texts[SCHEMA_FILES[0] if args.which == "spec" else SCHEMA_FILES[1]])
    return EXIT_OK


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the CLI; return the exit code. Streams are injectable for tests."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = _parser()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (exit 2)
        return int(e.code or 0)
    func: Callable[[argparse.Namespace, TextIO, TextIO], int] = args.func
    try:
        return func(args, out, err)
    except SpecError as e:
        _print_diagnostics(e.diagnostics, err)
        n = len(e.diagnostics)
        print(f"modelspec: {n} error{'s' if n != 1 else ''}; nothing was written", file=err)
        return EXIT_BAD_INPUT
    except (ModelspecError, ValueError) as e:
        print(f"modelspec: error: {e}", file=err)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("modelspec: interrupted", file=err)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
