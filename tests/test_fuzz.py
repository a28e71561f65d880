"""Property-based fuzzing: generated valid specs, and mutations of their data (and of graph
specs' data), their YAML text, their checkpoints and their reports. Whatever the input, ``validate``, ``build``, ``write_build``
+ ``load`` and ``diff`` either succeed or raise :class:`modelspec.ModelspecError`; the CLI exits
0, 1 or 2, never 70 (internal error).

The default run tries about 2,500 examples; ``pytest -m fuzz tests/test_fuzz.py`` runs the
same properties with ten times as many (the ``fuzz`` marker is deselected by default).
Examples are derandomized and no example database is written, so CI runs are reproducible.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelspec
from modelspec import ModelspecError
from modelspec.cli import main

T = TypeVar("T")

#: examples per property in the default run; the long run (``-m fuzz``) multiplies them by LONG
BUDGET = {"valid": 150, "data": 800, "graph": 300, "text": 800, "build": 40, "checkpoint": 200, "report": 200}
LONG = 10
_COMMON = {
    "derandomize": True,
    "database": None,
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}


def fuzz(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``@fuzz(n)`` on a ``@given`` test: run it with ``n`` examples."""
    return settings(max_examples=examples, **_COMMON)


def fuzz_long(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The same property with ``LONG`` times the examples, only under ``-m fuzz``."""

    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        return pytest.mark.fuzz(settings(max_examples=examples * LONG, **_COMMON)(test))

    return decorate


@contextmanager
def quiet() -> Iterator[None]:
    """Warnings as a user sees them: printed, not raised (pytest turns them into errors, and
    torch's own, e.g. for zero-size layers, would then fail a build that succeeds for users);
    SpecWarning, e.g. an unused block, is not what these tests look at either."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------ valid specs
WIDTH = 4  # blocks map WIDTH features to WIDTH features, so every use fits
CHILD_NAMES = ["enc", "dec", "head", "body", "net", "linear", "mlp", "proj", "act", "norm", "drop", "x_1", "_hidden"]
MODEL_NAMES = ["mlp1", "mlp2", "encoder", "Decoder", "m_3"]


@functools.cache
def _below(n: int) -> st.SearchStrategy[int]:
    return st.integers(0, n - 1)


def pick(draw: st.DrawFn, options: Sequence[T]) -> T:
    """One of ``options``. Strategies are cached: building them per draw costs more than the draw."""
    return options[draw(_below(len(options)))]


def chance(draw: st.DrawFn, one_in: int) -> bool:
    return draw(_below(one_in)) == 0


def gen_layer(draw: st.DrawFn, width: int) -> tuple[Any, int]:
    """One layer taking ``width`` features, written in one of the argument styles."""
    out = 1 + draw(_below(6))
    kind = pick(draw, ["act", "act", "Linear", "Linear", "LazyLinear", "Dropout", "LayerNorm", "BatchNorm1d"])
    if kind == "act":
        return pick(draw, ["ReLU", "Tanh", "GELU", "Identity", "Sigmoid"]), width
    if kind == "Dropout":
        p = pick(draw, [0.0, 0.1, 0.5])
        return pick(draw, [{"Dropout": p}, {"Dropout": {"p": p}}, {"Dropout": [p, False]}]), width
    if kind == "LayerNorm":
        return pick(draw, [{"LayerNorm": width}, {"LayerNorm": [width]}]), width
    if kind == "BatchNorm1d":
        return pick(draw, [{"BatchNorm1d": width}, {"BatchNorm1d": {"num_features": width}}]), width
    if kind == "LazyLinear":
        return pick(draw, [{"LazyLinear": out}, {"LazyLinear": {"out_features": out}}]), out
    bias = pick(draw, [True, False])
    styles = [
        {"Linear": [width, out]},
        {"Linear": {"in_features": width, "out_features": out}},
        {"Linear": [width, {"out_features": out, "bias": bias}]},
        {"Linear": [width, out, bias]},
    ]
    return pick(draw, styles), out


def gen_node(draw: st.DrawFn, width: int, depth: int, blocks: Sequence[str]) -> tuple[Any, int]:
    """A node taking ``width`` features: a layer, a list, named children or a use of a block."""
    kinds = ["layer", "layer"]
    if depth > 0:
        kinds += ["list", "children", "repeat"]
    if blocks and width == WIDTH:
        kinds += ["use", "repeat-use"]
    kind = pick(draw, kinds)
    if kind == "layer":
        return gen_layer(draw, width)
    if kind == "use":
        return {"use": pick(draw, blocks)}, WIDTH
    if kind == "repeat-use":  # the same block N times
        return {"repeat": 1 + draw(_below(3)), "of": {"use": pick(draw, blocks)}}, WIDTH
    if kind == "repeat":  # copies of a node that keeps the width, maybe shared in groups
        item, new_width = gen_node(draw, width, depth - 1, blocks)
        body = item if new_width == width else [item, {"Linear": [new_width, width]}]
        count = 1 + draw(_below(4))
        node = {"repeat": count, "of": body}
        if chance(draw, 3) and not (isinstance(body, dict) and "use" in body):  # a use has nothing to group
            node["groups"] = pick(draw, [1, count, [count]])
        return node, width
    items: list[Any] = []
    for _ in range(1 + draw(_below(3))):
        item, new_width = gen_node(draw, width, depth - 1, blocks)
        items.append(item)
        if new_width == width and chance(draw, 5):
            items.append(item)  # the same object twice: PyYAML writes an anchor and an alias
        width = new_width
    if kind == "list":
        return items, width
    names = list(CHILD_NAMES)
    chosen = [names.pop(draw(_below(len(names)))) for _ in items]
    return dict(zip(chosen, items, strict=True)), width


def _to_width(item: Any, width: int) -> Any:
    """``item`` followed by a Linear back to WIDTH features, if it changed the width."""
    return item if width == WIDTH else [item, {"Linear": [width, WIDTH]}]


_NAME_TEXT = st.text(max_size=12)
_SEEDS = st.integers(0, 2**32)


@st.composite
def valid_spec(draw: st.DrawFn) -> dict[str, Any]:
    """The data of a valid spec (it validates and builds)."""
    spec: dict[str, Any] = {"modelspec": 1}
    if chance(draw, 2):
        spec["name"] = draw(_NAME_TEXT)
    if chance(draw, 2):
        spec["seed"] = draw(_SEEDS)
    spec["input"] = {"shape": [1 + draw(_below(3)), WIDTH]}
    blocks: dict[str, Any] = {}
    for i in range(draw(_below(4))):
        item, width = gen_node(draw, WIDTH, 1, list(blocks))
        blocks[f"b{i}"] = _to_width(item, width)
    if blocks:
        spec["blocks"] = blocks
    if chance(draw, 4):
        names = list(MODEL_NAMES)
        models = [names.pop(draw(_below(len(names)))) for _ in range(1 + draw(_below(3)))]
        spec["models"] = {name: gen_node(draw, WIDTH, 2, list(blocks))[0] for name in models}
    else:
        spec["model"] = gen_node(draw, WIDTH, 2, list(blocks))[0]
    if chance(draw, 3):  # the width as a variable: every WIDTH in the spec becomes '$w' (or an expression)
        spec["vars"] = {"w": WIDTH, "half": "$w // 2"}
        spec = {k: v if k in ("modelspec", "vars") else _with_width_variable(v, draw) for k, v in spec.items()}
    return spec


def _with_width_variable(data: Any, draw: st.DrawFn) -> Any:
    if isinstance(data, dict):
        return {k: _with_width_variable(v, draw) for k, v in data.items()}
    if isinstance(data, list):
        return [_with_width_variable(v, draw) for v in data]
    if data == WIDTH and type(data) is int:
        return pick(draw, ["$w", "$half * 2", "$(w)", "$max(w, 1)"])
    return data


class _Dumper(yaml.SafeDumper):
    """PyYAML's dumper, quoting the YAML 1.1 booleans it leaves plain (y, Y, n, N): modelspec
    refuses those as values, because YAML 1.1 readers take them for booleans."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if value in ("y", "Y", "n", "N") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump(data: Any, flow: bool | None = None) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=flow)


@st.composite
def valid_text(draw: st.DrawFn) -> str:
    return dump(draw(valid_spec()), pick(draw, [False, None, True]))


# ------------------------------------------------------------------ mutations
JUNK_TEXT = st.text(
    st.one_of(
        st.sampled_from([*":-[]{}&*!|>'\"%@`#,?<=~ \t\n\r\\", "\x00", "\x07", "\x1b", "\x7f", "\x85", "\ufeff"]),
        st.characters(codec="utf-8"),
    ),
    max_size=12,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["ReLU", "Linear", "use", "model", "models", "blocks", "input", "shape", "b0", "training", "1e400"]
    ),
)
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=6)  # fmt: skip


def _places(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside ``data`` (the root is ``()``)."""
    yield path
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _places(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _places(v, (*path, i))


def _copy(data: Any) -> Any:
    """A deep copy that keeps shared sub-objects shared (so anchors survive a dump)."""
    memo: dict[int, Any] = {}

    def go(x: Any) -> Any:
        if id(x) in memo:
            return memo[id(x)]
        if isinstance(x, dict):
            memo[id(x)] = out = {}
            out.update((k, go(v)) for k, v in x.items())
            return out
        if isinstance(x, list):
            memo[id(x)] = out_list = []
            out_list.extend(go(v) for v in x)
            return out_list
        return x

    return go(data)


@st.composite
def mutated_data(draw: st.DrawFn) -> Any:
    """A valid spec's data with one to three structural changes."""
    return _mutate(draw, _copy(draw(valid_spec())))


#: Graph specs to mutate: small zoo models and one that uses most graph forms (several typed
#: inputs, free tensors, tuple picks, ops, 'call', a tie).
GRAPH_SEEDS = [
    *(yaml.safe_load((Path(__file__).resolve().parent.parent / "specs" / "zoo" / f).read_text(encoding="utf-8"))
      for f in ("siamese.yaml", "tied_autoencoder.yaml", "unet.yaml")),
    yaml.safe_load("""
modelspec: 1
model:
  inputs: {idx: {shape: [2, 6], dtype: int64}, mask: {shape: [2, 6], dtype: bool}}
  params: {cls: {shape: [1, 1, 8], init: {normal: {std: 0.02}}}}
  buffers: {scale: {shape: [1], init: ones, persistent: false}}
  nodes:
    pos: {arange: {dim: 1}, in: idx}
    emb.tok: {Embedding: [20, 8], in: idx}
    emb.pos: {Embedding: [6, 8], in: pos}
    h: {add: null, in: [emb.tok, emb.pos]}
    qkv: {Linear: [8, 24]}
    parts: {split: [8, {dim: 2}]}
    q: {unflatten: [-1, [2, 4]], in: "parts[0]"}
    k: {unflatten: [-1, [2, 4]], in: "parts[1]"}
    v: {unflatten: [-1, [2, 4]], in: "parts[2]"}
    qt: {transpose: [1, 2], in: q}
    kt: {transpose: [1, 2], in: k}
    vt: {transpose: [1, 2], in: v}
    att: {attention: {is_causal: true}, in: [qt, kt, vt]}
    back: {transpose: [1, 2]}
    flat: {flatten: 2}
    scaled: {mul: null, in: [flat, scale]}
    mask_f: {unsqueeze: -1, in: mask}
    m: {masked_fill: 0.0, in: [scaled, mask_f]}
    last: {select: [1, -1], in: m}
    lstm: {LSTM: [8, 8, {batch_first: true}], in: h}
    first: {select: [1, 0], in: "lstm[0]"}
    both: {add: null, in: [last, first]}
    head: {Linear: [8, 20, {bias: false}]}
    again: {call: head, in: both}
  outputs: [head, again, cls]
ties:
  - {param: head.weight, to: emb.tok.weight}
"""),
]  # fmt: skip


@st.composite
def mutated_graph_data(draw: st.DrawFn) -> Any:
    """A graph spec's data with one to three structural changes."""
    return _mutate(draw, _copy(pick(draw, GRAPH_SEEDS)))


def _mutate(draw: st.DrawFn, data: Any) -> Any:
    for _ in range(draw(st.integers(1, 3))):
        places = list(_places(data))
        path = pick(draw, places)
        op = pick(draw, ["replace", "delete", "rename", "wrap", "insert", "retype"])
        if not path:
            data = draw(JUNK) if op == "replace" else [data] if op == "wrap" else data
            continue
        *head, last = path
        parent = data
        for part in head:
            parent = parent[part]
        value = parent[last]
        if op == "replace":
            parent[last] = draw(JUNK)
        elif op == "delete":
            del parent[last]
        elif op == "rename" and isinstance(parent, dict):
            key = draw(st.one_of(st.text(max_size=10), st.just(str(last).swapcase()), st.just(str(last)[:-1])))
            parent.pop(last)
            parent[key] = value
        elif op == "wrap":
            parent[last] = pick(draw, [[value], {"x": value}, {"Linear": value}, {"use": value}, {"in": value},
                                       {"call": value}, {"nodes": value}])  # fmt: skip
        elif op == "insert" and isinstance(value, dict):
            value[draw(st.text(max_size=8))] = draw(JUNK)
        elif op == "insert" and isinstance(value, list):
            value.insert(draw(st.integers(0, len(value))), draw(JUNK))
        elif op == "retype":
            parent[last] = pick(draw, [str(value), [value], {str(value): None}, None, 0, -1, 1.5, True, "", 2**64])
    return data


_TAGS = ["!!str ", "!!int ", "!!float ", "!!bool ", "!!null ", "!!seq ", "!!map ", "!!binary ", "!!set ",
         "!!python/tuple ", "!local ", "!<tag:example.com,2000:x> "]  # fmt: skip


@st.composite
def mutated_text(draw: st.DrawFn) -> bytes:
    """A valid spec's YAML text with one to three textual changes (may end up not UTF-8)."""
    text = draw(valid_text())
    for _ in range(draw(st.integers(1, 3))):
        lines = text.split("\n")
        pos = draw(st.integers(0, len(text)))
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        op = pick(
            draw,
            ["insert", "delete", "truncate", "dup-line", "swap-lines", "indent", "tag", "anchor", "alias", "replace"],
        )
        if op == "insert":
            text = text[:pos] + draw(JUNK_TEXT) + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 8)) :]
        elif op == "truncate":
            text = text[:pos]
        elif op == "dup-line":  # often a duplicate key
            lines.insert(i, lines[i])
            text = "\n".join(lines)
        elif op == "swap-lines":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif op == "indent":
            lines[i] = pick(draw, [" ", "  ", "\t", ""]) + lines[i].lstrip(" " if chance(draw, 2) else "")
            text = "\n".join(lines)
        elif op == "tag":
            text = _before_value(text, pos, pick(draw, _TAGS))
        elif op == "anchor":
            text = _before_value(text, pos, pick(draw, ["&a ", "&b ", "&a &b ", "& "]))
        elif op == "alias":
            text = _before_value(text, pos, pick(draw, ["*a ", "*b", "*id001 ", "<<: *a\n", "*"]))
        else:
            text = (
                text[:pos] + pick(draw, ["\n", ": ", "- ", "#", "'", "{", "]", "\x00", "0x1", "1e5"]) + text[pos + 1 :]
            )
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:  # a byte that is not UTF-8
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + pick(draw, [b"\xff", b"\xc3", b"\xed\xa0\x80"]) + data[cut:]
    return data


def _before_value(text: str, pos: int, insert: str) -> str:
    """Insert at the first ': ' or '- ' at or after ``pos`` (where a value starts)."""
    for i in range(pos, len(text) - 1):
        if text[i : i + 2] in (": ", "- "):
            return text[: i + 2] + insert + text[i + 2 :]
    return text + insert


# ------------------------------------------------------------------ properties
def check_spec(source: str | Path, device: str = "cpu") -> None:
    """validate and build either succeed or raise ModelspecError.

    Tiny models build faster on the CPU than on meta (meta kernels run through Python
    decompositions), so most examples build on the CPU.
    """
    with quiet():
        try:
            modelspec.validate(source)
        except ModelspecError:
            return
        try:
            modelspec.build(source, device=device)
        except ModelspecError:
            pass


def check_cli(path: Path) -> int:
    """``modelspec validate`` exits 0 or 2: never an internal error, never a traceback."""
    err = io.StringIO()
    with quiet():
        rc = main(["validate", str(path)], stdout=io.StringIO(), stderr=err)
    assert rc in (0, 2), err.getvalue()
    assert "Traceback" not in err.getvalue()
    return rc


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _valid_specs_validate_and_build(data: dict[str, Any]) -> None:
    text = dump(data) + "\n"
    with quiet():
        modelspec.validate(text)
        module = modelspec.build(text, device="meta" if data.get("seed", 0) % 4 == 0 else "cpu")
    assert module is not None


@fuzz(BUDGET["valid"])
@given(valid_spec())
def test_valid_specs_validate_and_build(data: dict[str, Any]) -> None:
    _valid_specs_validate_and_build(data)


@fuzz_long(BUDGET["valid"])
@given(valid_spec())
def test_valid_specs_validate_and_build_long(data: dict[str, Any]) -> None:
    _valid_specs_validate_and_build(data)


def _mutated_data(data: Any) -> None:
    check_spec(dump(data) + "\n")  # a newline: always read as YAML text, never as a path


@fuzz(BUDGET["data"])
@given(mutated_data())
def test_mutated_spec_data(data: Any) -> None:
    _mutated_data(data)


@fuzz(BUDGET["graph"])
@given(mutated_graph_data())
def test_mutated_graph_spec_data(data: Any) -> None:
    _mutated_data(data)


@fuzz_long(BUDGET["graph"])
@given(mutated_graph_data())
def test_mutated_graph_spec_data_long(data: Any) -> None:
    _mutated_data(data)


@fuzz_long(BUDGET["data"])
@given(mutated_data())
def test_mutated_spec_data_long(data: Any) -> None:
    _mutated_data(data)


def _mutated_text(scratch: Path, data: bytes) -> None:
    path = scratch / "spec.yaml"
    path.write_bytes(data)
    if check_cli(path) == 0:
        with quiet():
            try:
                modelspec.build(path)
            except ModelspecError:
                pass


@fuzz(BUDGET["text"])
@given(data=mutated_text())
def test_mutated_spec_text(scratch: Path, data: bytes) -> None:
    _mutated_text(scratch, data)


@fuzz_long(BUDGET["text"])
@given(data=mutated_text())
def test_mutated_spec_text_long(scratch: Path, data: bytes) -> None:
    _mutated_text(scratch, data)


def _build_load_diff(scratch: Path, a: dict[str, Any], b: dict[str, Any]) -> None:
    """A build folder loads back with the same report; diff of two specs or folders never crashes."""
    for name, data in (("a", a), ("b", b)):
        (scratch / f"{name}.yaml").write_text(dump(data), encoding="utf-8")
    out = scratch / "build-a"
    shutil.rmtree(out, ignore_errors=True)
    with quiet():
        written = modelspec.write_build(scratch / "a.yaml", out)
        loaded = modelspec.load(out)
        assert modelspec.report(loaded).model_dump() == written.report.model_dump()
        assert modelspec.diff(out, out).is_empty()
        modelspec.diff(scratch / "a.yaml", scratch / "b.yaml")
        modelspec.diff(out / "report.json", scratch / "b.yaml")


@fuzz(BUDGET["build"])
@given(a=valid_spec(), b=valid_spec())
def test_build_load_diff(scratch: Path, a: dict[str, Any], b: dict[str, Any]) -> None:
    _build_load_diff(scratch, a, b)


@fuzz_long(BUDGET["build"])
@given(a=valid_spec(), b=valid_spec())
def test_build_load_diff_long(scratch: Path, a: dict[str, Any], b: dict[str, Any]) -> None:
    _build_load_diff(scratch, a, b)


# ---- damaged checkpoints and reports of one fixed build
FOLDER_SPEC = """\
modelspec: 1
input: {shape: [2, 4]}
blocks:
  shared: [{Linear: [4, 4]}, ReLU]
model:
  enc: {use: shared}
  norm: {BatchNorm1d: 4}
  again: {use: shared}
  head: {Linear: [4, 2, false]}
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    (root / "spec.yaml").write_text(FOLDER_SPEC, encoding="utf-8")
    modelspec.write_build(root / "spec.yaml", root / "good")
    return root


@st.composite
def damaged_checkpoint(draw: st.DrawFn, raw: bytes) -> bytes:
    """The checkpoint ``raw`` with its bytes or its JSON header changed."""
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    op = pick(draw, ["bytes", "bytes", "header", "header", "header", "length"])
    if op == "bytes":
        out = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(st.integers(0, 255))
        if chance(draw, 2):
            out = out[: draw(st.integers(0, len(out)))]
        return bytes(out)
    if op == "length":
        return struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + raw[8:]
    places = [p for p in _places(header) if p]
    for _ in range(draw(st.integers(1, 3))):
        path = pick(draw, places)
        parent = header
        for part in path[:-1]:
            parent = parent[part]
        if path[-1] not in (parent if isinstance(parent, dict) else range(len(parent))):
            continue
        choice = pick(draw, ["junk", "delete", "json-junk", "number"])
        if choice == "delete":
            del parent[path[-1]]
        elif choice == "json-junk":  # metadata values are JSON text inside strings
            parent[path[-1]] = json.dumps(draw(JUNK))
        elif choice == "number":
            parent[path[-1]] = draw(st.integers(-(2**63), 2**64))
        else:
            parent[path[-1]] = draw(JUNK)
        places = [p for p in _places(header) if p]
        if not places:
            break
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + data


def _damaged_checkpoint(folder: Path, scratch: Path, data: st.DataObject) -> None:
    good = folder / "good"
    work = scratch / "damaged"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(good, work)
    (work / "model.safetensors").write_bytes(data.draw(damaged_checkpoint((good / "model.safetensors").read_bytes())))
    try:
        module = modelspec.load(work)
    except ModelspecError:
        return
    # what loads must be what was saved: every tensor's bytes still match their checksums
    assert modelspec.report(module).model_dump()["tensors"] == json.loads((good / "report.json").read_text())["tensors"]


@fuzz(BUDGET["checkpoint"])
@given(data=st.data())
def test_damaged_checkpoint(folder: Path, scratch: Path, data: st.DataObject) -> None:
    _damaged_checkpoint(folder, scratch, data)


@fuzz_long(BUDGET["checkpoint"])
@given(data=st.data())
def test_damaged_checkpoint_long(folder: Path, scratch: Path, data: st.DataObject) -> None:
    _damaged_checkpoint(folder, scratch, data)


@st.composite
def damaged_report(draw: st.DrawFn, report: dict[str, Any]) -> bytes:
    """report.json with values replaced, removed or retyped, or its text cut."""
    data = _copy(report)
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in _places(data) if p]
        if not places:
            break
        path = pick(draw, places)
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        op = pick(draw, ["junk", "delete", "number", "duplicate"])
        if op == "delete":
            del parent[path[-1]]
        elif op == "number":
            parent[path[-1]] = draw(st.one_of(st.integers(-(2**80), 2**80), st.floats()))
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(parent[path[-1]])
        else:
            parent[path[-1]] = draw(JUNK)
    text = json.dumps(data, allow_nan=True).encode()
    if draw(st.integers(0, 5)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


def _damaged_report(folder: Path, scratch: Path, data: st.DataObject) -> None:
    good = folder / "good" / "report.json"
    path = scratch / "report.json"
    path.write_bytes(data.draw(damaged_report(json.loads(good.read_text()))))
    for a, b in ((good, path), (path, good)):
        try:
            result = modelspec.diff(a, b)
        except ModelspecError:
            continue
        assert isinstance(result.is_empty(), bool)
    err = io.StringIO()
    rc = main(["report", str(path)], stdout=io.StringIO(), stderr=err)
    assert rc in (0, 2), err.getvalue()


@fuzz(BUDGET["report"])
@given(data=st.data())
def test_damaged_report(folder: Path, scratch: Path, data: st.DataObject) -> None:
    _damaged_report(folder, scratch, data)


@fuzz_long(BUDGET["report"])
@given(data=st.data())
def test_damaged_report_long(folder: Path, scratch: Path, data: st.DataObject) -> None:
    _damaged_report(folder, scratch, data)


def test_default_budget_is_at_least_2000_examples() -> None:
    assert sum(BUDGET.values()) >= 2000
    assert sum(BUDGET.values()) * LONG >= 20_000
