"""The ``modelspec`` command line. Parses arguments, calls :mod:`modelspec.api`, prints.

Exit codes: 0 ok, 1 differences found (``diff``, ``schema --check``), 2 bad input (the
message on stderr says where and why, with a stable code; nothing is written), 70 an
internal error (a bug in modelspec: the message says so and asks for a report).

Each command imports what it needs when it runs: ``validate`` (and ``--help``) import
neither torch nor safetensors, so they start in a fraction of ``import torch``'s time.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NoReturn, TextIO

from ._errors import BuildDirError, Diagnostic, ModelspecError, SpecError, UsageError
from ._plugins import import_plugins
from ._validate import validate
from ._vars import parse_override
from ._version import __version__

if TYPE_CHECKING:
    import torch

__all__ = ["main", "run"]

EXIT_OK, EXIT_DIFF, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 70
FORMATS = ("text", "json", "md")
FORCE_HELP = "replace FILE even if modelspec did not write it (never an input of the command)"
#: _diff.KINDS and _schema.SCHEMA_FILES (a test checks it), written here so that building
#: the parser imports neither of those modules, which import torch
KINDS = ("added", "removed", "renamed", "shape", "dtype", "tie", "value", "trainable")
SCHEMA_FILES = ("modelspec.schema.json", "report.schema.json")


#: True in the ``modelspec`` process itself (run()), not when main() is called in a program
_OWN_PROCESS = False


def _api() -> ModuleType:
    """modelspec._api, which imports torch.

    In the ``modelspec`` process, torch is imported with the cyclic garbage collector off,
    and what the import made (hundreds of thousands of objects, alive until exit) is then
    frozen out of its reach: every full collection during the import, and later while a
    big model is built or reported, would walk them all again (measured: the import a
    quarter faster, and 0.4-0.8 s less CPU for the 70B report). The collector is on again
    before any work is done."""
    if not (_OWN_PROCESS and "torch" not in sys.modules and gc.isenabled()):
        from . import _api as api

        return api
    gc.disable()
    try:
        from . import _api as api
    finally:
        gc.freeze()
        gc.enable()
    return api


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="modelspec",
        formatter_class=fmt,
        description="Turn validated YAML specs into PyTorch models with explicit weight tying.",
        epilog="examples:\n  modelspec build specs/d2l/shared.yaml -o build/shared\n"
        "  modelspec validate specs/d2l/nest_mlp.yaml\n"
        "  modelspec report specs/d2l/shared_mlp.yaml --depth 1\n"
        "  modelspec diff build/v1 build/v2\n"
        "  modelspec grads specs/d2l/shared.yaml\n"
        "  modelspec graph specs/d2l/shared_mlp.yaml --format dot\n"
        "  modelspec export specs/zoo/gpt2.yaml --format onnx -o gpt2.onnx\n"
        "  modelspec schema -o schemas\n\n"
        "exit codes: 0 ok, 1 differences found, 2 bad input, 70 internal error (a bug: please report it)",
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
        "  modelspec build specs/zoo/gpt2.yaml --set n_layer=24 d_model=1024 n_head=16 -o build/gpt2-medium\n"
        "  modelspec build big.yaml --dtype bfloat16\n"
        "  modelspec build big.yaml --max-shard-size 5GB\n"
        "  modelspec build big.yaml --max-memory 16GB",
    )
    b.add_argument("spec", metavar="SPEC", help="the YAML spec")
    b.add_argument("-o", "--out", metavar="DIR", help="output folder (default: build/<spec name>)")
    b.add_argument("--device", default="cpu", help="device to build on (default: cpu)")
    b.add_argument("--dtype", default=None, help="convert parameters to this dtype, e.g. bfloat16")
    b.add_argument(
        "--max-memory",
        metavar="SIZE",
        default="available",
        help="refuse, before allocating, a model whose weights need more than SIZE (e.g. 16GB, 512MiB; "
        "default: the memory available now)",
    )
    b.add_argument("--format", choices=FORMATS, default="text", help="what to print on stdout")
    b.add_argument(
        "--max-shard-size",
        metavar="SIZE",
        help="split a checkpoint larger than SIZE (e.g. 5GB, 500MB, 2GiB) into model-0000K-of-0000N.safetensors "
        "files plus model.safetensors.index.json (default: one file)",
    )
    _add_set(b)
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
    _add_set(v)
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
    s.add_argument("--force", action="store_true", help="with -o: replace schema files modelspec did not write")
    s.set_defaults(func=_cmd_schema)

    r = sub.add_parser(
        "report",
        formatter_class=fmt,
        help="print the parameter inventory (no build folder)",
        description="The inventory of a spec, a build folder or a report.json: every unique tensor "
        "with its aliases,\nshape, dtype, statistics and checksum; ties, blocks and totals.",
        epilog="examples:\n  modelspec report specs/d2l/shared.yaml\n"
        "  modelspec report build/d2l-shared --depth 1\n"
        "  modelspec report big.yaml --device meta --format json\n"
        "  modelspec report specs/d2l/shared_mlp.yaml --format html -o report.html\n"
        "  modelspec report specs/d2l/shared.yaml --histograms plots/ --by block",
    )
    r.add_argument("target", metavar="SPEC|BUILD_DIR|REPORT_JSON")
    r.add_argument("--format", choices=("text", "md", "json", "csv", "html"), default="text")
    r.add_argument("-o", "--out", metavar="FILE", help="write to FILE instead of stdout")
    r.add_argument("--force", action="store_true", help=FORCE_HELP)
    r.add_argument("--depth", type=_natural, metavar="N", help="fold at module depth N (text, md; html: the diagram)")
    r.add_argument("--device", default="cpu", help="device for building a spec; 'meta' gives structure only")
    r.add_argument("--histograms", metavar="DIR", help="also save value histograms as PNG (needs matplotlib)")
    r.add_argument("--by", choices=("tensor", "block"), default="tensor", help="one histogram per tensor or block")
    _add_set(r)
    r.set_defaults(func=_cmd_report)

    d = sub.add_parser(
        "diff",
        formatter_class=fmt,
        help="compare two models; exit 1 if they differ",
        description="Compare A (before) with B (after): each a report.json, a build folder or a spec\n"
        "(specs are built on the meta device: structure only). Exit 0 equal, 1 different, "
        "2 bad input.",
        epilog="examples:\n  modelspec diff build/v1 build/v2\n"
        "  modelspec diff old.yaml new.yaml --format md\n"
        "  modelspec diff a/report.json b/report.json --fail-on added,removed,shape,tie",
    )
    d.add_argument("a", metavar="A")
    d.add_argument("b", metavar="B")
    d.add_argument("--format", choices=FORMATS, default="text")
    d.add_argument("--structure-only", action="store_true", help="ignore values (checksums)")
    d.add_argument(
        "--fail-on",
        type=_kinds,
        default=KINDS,
        metavar="KINDS",
        help=f"comma-separated kinds that make the exit code 1 (default: all of {','.join(KINDS)})",
    )
    d.set_defaults(func=_cmd_diff)

    gr = sub.add_parser(
        "grads",
        formatter_class=fmt,
        help="one backward pass: gradient norms, per-use contributions",
        description="Run one forward and backward pass on a batch shaped like the spec's input and\n"
        "report gradient norms; for every shared block, the gradient each use contributes\n"
        "and that their sum equals .grad.",
        epilog="examples:\n  modelspec grads specs/d2l/shared.yaml\n"
        "  modelspec grads build/d2l-shared --batch 32 --loss mse --format json\n"
        "  modelspec grads spec.yaml --input batch.safetensors",
    )
    gr.add_argument("target", metavar="SPEC|BUILD_DIR")
    gr.add_argument("--batch", type=_positive, metavar="N", help="batch size (replaces the input's first dimension)")
    gr.add_argument("--loss", choices=("sum", "mse"), default="sum", help="sum of outputs, or MSE against zeros")
    gr.add_argument("--seed", type=_seed, default=0, help="seeds the random batch and dropout (default 0)")
    gr.add_argument("--input", metavar="FILE", help="a .safetensors file holding the input tensor")
    gr.add_argument("--format", choices=FORMATS, default="text")
    _add_set(gr)
    gr.set_defaults(func=_cmd_grads)

    gp = sub.add_parser(
        "graph",
        formatter_class=fmt,
        help="draw the architecture (shared blocks drawn once)",
        description="The module tree as a diagram: a shared block is drawn once with an edge from\n"
        "every place that uses it; tied parameters are marked.",
        epilog="examples:\n  modelspec graph specs/d2l/shared_mlp.yaml\n"
        "  modelspec graph specs/d2l/shared.yaml --format dot | dot -Tpng > net.png\n"
        "  modelspec graph build/d2l-shared --format svg -o net.svg --depth 2",
    )
    gp.add_argument("target", metavar="SPEC|BUILD_DIR|REPORT_JSON")
    gp.add_argument("--format", choices=("mermaid", "dot", "svg"), default="mermaid")
    gp.add_argument("--depth", type=_natural, metavar="N", help="fold modules deeper than N")
    gp.add_argument("-o", "--out", metavar="FILE", help="write to FILE instead of stdout")
    gp.add_argument("--force", action="store_true", help=FORCE_HELP)
    _add_set(gp)
    gp.set_defaults(func=_cmd_graph)
    ex = sub.add_parser(
        "export",
        formatter_class=fmt,
        help="export a model to ONNX (one initializer per tie group)",
        description="Export SPEC or BUILD_DIR to an ONNX file, traced with the spec's example input(s),\n"
        "the first dimension dynamic ('batch') when the model allows it. Every tie group is one\n"
        "initializer named by its canonical name; a transposed tie is a Transpose node reading it.\n"
        "Needs the onnx extra: pip install 'torch-modelspec[onnx]'.",
        epilog="examples:\n  modelspec export specs/zoo/tied_autoencoder.yaml --format onnx -o ae.onnx\n"
        "  modelspec export build/gpt2 --format onnx -o gpt2.onnx\n"
        "  modelspec export specs/zoo/gpt2.yaml --format onnx -o gpt2-2l.onnx --set n_layer=2\n"
        "  modelspec export pair.yaml --format onnx --model mlp1 -o mlp1.onnx --static-batch",
    )
    ex.add_argument("target", metavar="SPEC|BUILD_DIR")
    ex.add_argument("--format", choices=("onnx",), default="onnx", help="the file format (default: onnx)")
    ex.add_argument("-o", "--out", metavar="FILE", required=True, help="the file to write (atomically)")
    ex.add_argument("--force", action="store_true", help=FORCE_HELP)
    ex.add_argument("--model", metavar="NAME", help="which model of a spec with 'models:' to export")
    ex.add_argument("--static-batch", action="store_true", help="keep the example's batch size fixed")
    ex.add_argument("--opset", type=_positive, metavar="N", help="ONNX opset version (default: the exporter's)")
    _add_set(ex)
    ex.set_defaults(func=_cmd_export)
    for command in (b, v, s, r, d, gr, gp, ex):
        command.add_argument(
            "--plugin",
            action="append",
            default=[],
            metavar="MODULE",
            help="import MODULE first: it registers custom layers (modelspec.register_layer); repeatable",
        )
    return p


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        type=_override,
        metavar="NAME=VALUE",
        help="override variables of the spec's 'vars:' (e.g. --set n_layer=24 d_model=1024)",
    )


def _override(text: str) -> tuple[str, object]:
    try:
        return parse_override(text)
    except ValueError as e:
        if "=" not in text:  # most likely the spec, after a list of overrides
            raise argparse.ArgumentTypeError(
                f"{text!r} is not NAME=VALUE; --set takes every word after it, so give SPEC before --set"
            ) from None
        raise argparse.ArgumentTypeError(str(e)) from None


def _overrides(args: argparse.Namespace) -> dict[str, object] | None:
    return dict(args.overrides) if getattr(args, "overrides", None) else None


def _natural(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _positive(text: str) -> int:
    value = _natural(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number >= 1, got 0")
    return value


def _seed(text: str) -> int:
    value = _natural(text)
    if value >= 2**64:  # what torch's generators take
        raise argparse.ArgumentTypeError(f"expected a seed below 2**64, got {text}")
    return value


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    return kinds


class _ProgressBar:
    """A one-line progress bar on stderr, shown only when stderr is a terminal and the
    work is large enough to wait for."""

    def __init__(self, err: TextIO, label: str, min_bytes: int = 256 << 20) -> None:
        self.err, self.label, self.min_bytes = err, label, min_bytes
        self.enabled = err.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < self.min_bytes:
            return
        width = 30
        filled = width * done // max(total, 1)
        self.err.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done >> 20}/{total >> 20} MiB")
        self.err.flush()
        if done >= total:
            self.err.write("\n")


def _print_diagnostics(diags: Sequence[Diagnostic], stderr: TextIO) -> None:
    for d in diags:
        print(str(d), file=stderr)


def _cmd_build(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    api = _api()
    from ._report import render_md, summary_line

    spec_path = Path(args.spec)
    target = Path(args.out) if args.out else Path("build") / spec_path.stem
    result = api.write_build(
        spec_path,
        target,
        device=args.device,
        dtype=args.dtype,
        progress=_ProgressBar(err, "checksums"),
        overrides=_overrides(args),
        max_shard_size=args.max_shard_size,
        max_memory=args.max_memory,
    )
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
            f"  {summary_line(result.report)}\n"
            f"  files: {', '.join(sorted(p.name for p in target.iterdir()))}\n"
        )
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        warnings = validate(Path(args.spec), overrides=_overrides(args))
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
    from ._schema import render_schemas, write_schemas

    texts = render_schemas()
    if args.check:
        if not Path(args.check).is_dir():
            raise BuildDirError(f"{args.check} is not a folder", code="not-a-folder")
        stale = [
            name
            for name, text in texts.items()
            if not (Path(args.check) / name).is_file() or (Path(args.check) / name).read_text() != text
        ]
        for name in stale:
            print(f"{Path(args.check) / name} is out of date; run 'modelspec schema -o {args.check}'", file=err)
        return EXIT_DIFF if stale else EXIT_OK
    if args.out:
        for path in write_schemas(Path(args.out), force=args.force):
            print(f"wrote {path}", file=err)
        return EXIT_OK
    out.write(texts[SCHEMA_FILES[0] if args.which == "spec" else SCHEMA_FILES[1]])
    return EXIT_OK


def _emit(text: str, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    """Print ``text`` to stdout, or write it to ``args.out`` atomically (checked again right before)."""
    if args.out is None:
        out.write(text)
    else:
        from ._outfile import write_output_file

        print(f"wrote {write_output_file(args.out, text, inputs=[Path(args.target)], force=args.force)}", file=err)


def _check_out(args: argparse.Namespace) -> None:
    """Refuse an ``-o FILE`` that is in the way before any work is done."""
    if args.out is not None:
        from ._outfile import check_output_file

        check_output_file(args.out, inputs=[Path(args.target)], force=args.force)


def _cmd_report(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    api = _api()
    from ._html import render_html
    from ._report import render_csv, render_json, render_md, render_text

    _check_out(args)
    target = api.open_target(
        args.target, device=args.device, progress=_ProgressBar(err, "checksums"), overrides=_overrides(args)
    )
    rep = target.report
    if args.histograms:
        if target.module is None or rep.device == "meta":
            raise UsageError(
                "histograms need values: give a spec or a build folder, not a report or meta", code="no-values"
            )
        from ._plots import save_histograms

        files = save_histograms(target.module, rep, Path(args.histograms), by=args.by)
        print(f"wrote {len(files)} histogram(s) to {args.histograms}", file=err)
    renderers: dict[str, Callable[[], str]] = {
        "text": lambda: render_text(rep, depth=args.depth),
        "md": lambda: render_md(rep, depth=args.depth),
        "json": lambda: render_json(rep),
        "csv": lambda: render_csv(rep),
        "html": lambda: render_html(rep, depth=args.depth),
    }
    _emit(renderers[args.format](), args, out, err)
    return EXIT_OK


def _cmd_diff(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    api = _api()
    from ._diff import render_diff_json, render_diff_md, render_diff_text

    result = api.diff(args.a, args.b, structure_only=args.structure_only)
    render = {"text": render_diff_text, "md": render_diff_md, "json": render_diff_json}[args.format]
    out.write(render(result))
    return EXIT_OK if result.is_empty(args.fail_on) else EXIT_DIFF


def _cmd_grads(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    api = _api()
    from ._grads import render_grads_text

    target = api.open_target(args.target, overrides=_overrides(args))
    if target.module is None:
        raise UsageError("grads needs a model: give a spec or a build folder, not a report.json", code="no-model")
    x = _read_input(Path(args.input)) if args.input else None
    result = api.grads(target.module, x, batch=args.batch, loss=args.loss, seed=args.seed)
    if args.format == "json":
        out.write(result.model_dump_json(indent=2) + "\n")
    elif args.format == "md":
        out.write("```text\n" + render_grads_text(result) + "```\n")
    else:
        out.write(render_grads_text(result))
    return EXIT_OK


def _read_input(path: Path) -> torch.Tensor:
    """The single tensor in a .safetensors file (named 'input' if there are several)."""
    import safetensors
    import safetensors.torch

    try:
        tensors = safetensors.torch.load_file(str(path))
    except (OSError, safetensors.SafetensorError) as e:
        raise UsageError(f"cannot read input tensor from {path}: {e}", code="unreadable-input") from e
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    if "input" in tensors:
        return tensors["input"]
    raise UsageError(f"{path} holds {len(tensors)} tensors; name the input tensor 'input'", code="ambiguous-input")


def _cmd_graph(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    api = _api()
    from ._graph import to_dot, to_mermaid, to_svg

    _check_out(args)
    rep = api.open_target(args.target, device="meta", overrides=_overrides(args)).report
    render = {"mermaid": to_mermaid, "dot": to_dot, "svg": to_svg}[args.format]
    _emit(render(rep, depth=args.depth), args, out, err)
    return EXIT_OK


def _cmd_export(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    _api()  # imports torch (and lets the collector run again: see _api)
    from ._onnx import export_onnx  # needs the onnx extra: imported only here

    result = export_onnx(
        args.target,
        args.out,
        model_name=args.model,
        dynamic_batch=not args.static_batch,
        opset=args.opset,
        overrides=_overrides(args),
        force=args.force,
    )
    tied = sum(1 for aliases in result.initializers.values() if len(aliases) > 1)
    out.write(
        f"exported {args.target} -> {result.path} (ONNX opset {result.opset})\n"
        f"  {len(result.initializers)} initializers, {tied} of them reached by several names; "
        f"{len(result.transposed)} transposed tie(s) read through Transpose\n"
        f"  inputs: {', '.join(result.inputs)}; batch {'dynamic' if result.dynamic_batch else 'fixed'}\n"
    )
    for copy in result.copies:  # not expected: say so rather than hide it
        what = "transposed copy" if copy.transposed else "copy"
        print(f"modelspec: warning: initializer '{copy.initializer}' is a {what} of '{copy.of}'", file=err)
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
        import_plugins(args.plugin)  # before anything is read or written
        return func(args, out, err)
    except SpecError as e:
        _print_diagnostics(e.diagnostics, err)
        n = len(e.diagnostics)
        wrote = "; nothing was written" if args.command == "build" else ""
        print(f"modelspec: {n} error{'s' if n != 1 else ''}{wrote}", file=err)
        return EXIT_BAD_INPUT
    except ModelspecError as e:
        print(f"modelspec: error[{e.code}]: {e}", file=err)
        return EXIT_BAD_INPUT
    except OSError as e:  # the file system said no: a path, a permission, a full disk
        print(f"modelspec: error[os-error]: {e}", file=err)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("modelspec: interrupted", file=err)
        return 130
    except Exception as e:  # noqa: BLE001 - anything else is modelspec's own bug, not bad input
        print(
            f"modelspec: internal error: {type(e).__name__}: {e}\n"
            "This is a bug in modelspec, not a problem with your input. Please report it with the\n"
            "command line and the spec; run with MODELSPEC_DEBUG=1 for the traceback.",
            file=err,
        )
        if os.environ.get("MODELSPEC_DEBUG"):
            traceback.print_exc(file=err)
        return EXIT_INTERNAL


def run() -> NoReturn:
    """The ``modelspec`` command (console script and ``python -m modelspec``)."""
    global _OWN_PROCESS
    _OWN_PROCESS = True  # torch is imported with the collector off: see _api()
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
