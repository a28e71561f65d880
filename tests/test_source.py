"""Reading a spec's YAML: limits, encodings, YAML 1.2 core readings and newcomer mistakes.

Every problem is a SpecError whose diagnostic has a stable code, line:column and a hint;
through the CLI it exits 2, prints no traceback and writes nothing.
"""

from __future__ import annotations

import io
import math
import os
import time
from pathlib import Path

import pytest

import modelspec
from modelspec._errors import SpecError
from modelspec._source import MAX_BYTES, MAX_DEPTH, load_text
from modelspec.cli import main

HEAD = "modelspec: 1\n"
LIST = "modelspec: 1\nmodel:\n"

#: name -> (spec text or bytes, code, line, column)
BAD: dict[str, tuple[str | bytes, str, int, int]] = {
    # 1. characters YAML forbids
    "nul-byte": ("modelspec: 1\x00\nmodel: [ReLU]\n", "bad-character", 1, 13),
    "bell-in-name": (HEAD + "name: a\x07b\nmodel: [ReLU]\n", "bad-character", 2, 8),
    "escape-char": (HEAD + "model: [ReLU]\n\x1b[0m\n", "bad-character", 3, 1),
    "utf16-without-bom": ("modelspec: 1\n".encode("utf-16-le"), "bad-character", 1, 2),
    # 4. bytes that are not UTF-8
    "latin1": (HEAD.encode() + "name: caf\xe9\nmodel: [ReLU]\n".encode("latin-1"), "bad-encoding", 2, 10),
    "utf16-with-bom": ((HEAD + "model: [ReLU]\n").encode("utf-16"), "bad-encoding", 1, 1),
    "truncated-utf8": (HEAD.encode() + b"name: \xc3", "bad-encoding", 2, 7),
    # 2. core tags whose value does not fit
    "bool-maybe": (HEAD + 'seed: !!bool "maybe"\nmodel: [ReLU]\n', "bad-value", 2, 7),
    "float-empty": (HEAD + 'seed: !!float ""\nmodel: [ReLU]\n', "bad-value", 2, 7),
    "int-empty-key": (LIST + '  !!int "": ReLU\n', "bad-value", 3, 3),
    "null-with-text": (HEAD + "seed: !!null nothing\nmodel: [ReLU]\n", "bad-value", 2, 7),
    "int-too-long": (HEAD + "seed: " + "9" * 5000 + "\nmodel: [ReLU]\n", "bad-value", 2, 7),
    "bool-yes-tagged": (HEAD + "seed: !!bool yes\nmodel: [ReLU]\n", "bad-value", 2, 7),
    # 3./4. limits
    "deep-flow": (HEAD + "model: " + "[" * 100_000 + "\n", "too-deep", 2, 7 + MAX_DEPTH),
    "deep-block": (
        LIST + "".join("  " * i + "-\n" for i in range(1, MAX_DEPTH + 5)),
        "too-deep",
        2 + MAX_DEPTH,
        2 * MAX_DEPTH + 1,
    ),
    "deep-through-aliases": (
        HEAD + "a: &a " + "[" * 60 + "]" * 60 + "\nmodel: " + "[" * 50 + "*a" + "]" * 50 + "\n",
        "too-deep",
        3,
        57,  # the innermost list holding the alias
    ),
    "alias-bomb": (
        HEAD
        + "a0: &a0 [ReLU, ReLU, ReLU, ReLU, ReLU, ReLU, ReLU, ReLU, ReLU, ReLU]\n"
        + "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9))
        + "model: [ReLU]\n",
        "alias-limit",
        6,  # the entry a4, where the expansion passes the limit
        1,
    ),
    "too-large": (LIST + "  - ReLU\n" * (MAX_BYTES // 9 + 1), "too-large", 1, 1),
    # 5. YAML 1.1 readings that YAML 1.2 reads differently
    "bias-off": (LIST + "  - Linear: {in_features: 2, out_features: 3, bias: off}\n", "ambiguous-value", 3, 53),
    "bidirectional-yes": (
        LIST + "  - LSTM: {input_size: 2, hidden_size: 3, bidirectional: yes}\n",
        "ambiguous-value",
        3,
        58,
    ),
    "capital-no": (LIST + "  - Linear: [2, 3, NO]\n", "ambiguous-value", 3, 20),
    "on-value": (LIST + "  - Linear: [2, 3, On]\n", "ambiguous-value", 3, 20),
    "y-value": (HEAD + "seed: y\nmodel: [ReLU]\n", "ambiguous-value", 2, 7),
    "octal-010": (HEAD + "seed: 010\nmodel: [ReLU]\n", "ambiguous-value", 2, 7),
    "leading-zero-09": (HEAD + "seed: 09\nmodel: [ReLU]\n", "ambiguous-value", 2, 7),
    "sexagesimal": (HEAD + "seed: 1:00\nmodel: [ReLU]\n", "ambiguous-value", 2, 7),
    "underscores": (LIST + "  - Linear: [1_000, 10]\n", "ambiguous-value", 3, 14),
    "binary": (HEAD + "seed: 0b101\nmodel: [ReLU]\n", "ambiguous-value", 2, 7),
    "signed-hex": (HEAD + "seed: -0x1F\nmodel: [ReLU]\n", "ambiguous-value", 2, 7),
    "on-key": (LIST + "  on: ReLU\n", "bad-key", 3, 3),
    "yes-key": (LIST + "  Yes: ReLU\n", "bad-key", 3, 3),
    "true-key": (LIST + "  true: ReLU\n", "bad-key", 3, 3),
    "number-key": (LIST + "  1: ReLU\n", "bad-key", 3, 3),
    # 6. newcomer mistakes
    "tab-indent": (LIST + "\t- ReLU\n", "tab-indent", 3, 1),
    "tab-indent-nested": (LIST + "  - Linear:\n\t    in_features: 2\n", "tab-indent", 4, 1),
    "tab-after-dash": (LIST + "  -\tReLU\n", "tab-indent", 3, 4),
    "item-indented-less": (LIST + "  - ReLU\n - ReLU\n", "yaml-syntax", 4, 2),
    "item-indented-more": (LIST + "  - ReLU\n    - ReLU\n", "yaml-syntax", 4, 5),
    "item-indented-one-more": (LIST + "  - ReLU\n   - Linear: [2, 2]\n", "yaml-syntax", 4, 4),
    "key-indented-less": (LIST + "  - Linear:\n      in_features: 2\n     out_features: 3\n", "yaml-syntax", 5, 6),
    "key-indented-more": (LIST + "  - Linear:\n      in_features: 2\n        out_features: 3\n", "yaml-syntax", 5, 9),
    "key-beside-items": (LIST + "  - ReLU\n  seed: 1\n", "yaml-syntax", 4, 3),
    "no-space-after-colon": (HEAD + "seed:1\nmodel: [ReLU]\n", "yaml-syntax", 2, 5),
    "no-space-after-colon-nested": (
        LIST + "  - Linear:\n      in_features:2\n      out_features: 3\n",
        "yaml-syntax",
        4,
        18,
    ),
    "no-space-after-colon-flow": (LIST + "  - Linear: {in_features:2, out_features: 3}\n", "yaml-syntax", 3, 25),
    "no-space-after-colon-layer": (LIST + "  - Linear:{in_features: 2}\n", "yaml-syntax", 3, 11),
    "no-space-after-dash": (LIST + "  -ReLU\n  - ReLU\n", "yaml-syntax", 3, 3),
    "no-space-after-dash-last": (LIST + "  - ReLU\n  -ReLU\n", "yaml-syntax", 4, 3),
    "no-space-after-dash-layer": (LIST + "  -Linear: [2, 2]\n", "yaml-syntax", 3, 3),
    "unclosed-bracket": (HEAD + "model: [ReLU, ReLU\nseed: 1\n", "yaml-syntax", 2, 8),
    "unclosed-bracket-at-end": (HEAD + "model: [Linear: [1, 2]\n", "yaml-syntax", 2, 8),
    "unclosed-brace": (HEAD + "input: {shape: [2, 4]\nmodel: [ReLU]\n", "yaml-syntax", 2, 8),
    "unclosed-double-quote": (HEAD + 'name: "abc\nmodel: [ReLU]\n', "yaml-syntax", 2, 7),
    "unclosed-single-quote": (HEAD + "name: 'abc\nmodel: [ReLU]\n", "yaml-syntax", 2, 7),
    "extra-bracket": (HEAD + "model: [ReLU]]\n", "yaml-syntax", 2, 14),
    "colon-in-value": (HEAD + "name: a: b\nmodel: [ReLU]\n", "yaml-syntax", 2, 8),
    "key-without-colon": (LIST + "  - ReLU\nseed 1\n", "yaml-syntax", 4, 1),
    "undefined-alias": (HEAD + "model: *layers\n", "yaml-syntax", 2, 8),
    "two-documents": (HEAD + "---\nmodel: [ReLU]\n", "yaml-syntax", 2, 1),
    "list-on-key-line": (HEAD + "model: - ReLU\n", "yaml-syntax", 2, 8),
    "percent-value": (HEAD + "name: %mlp\nmodel: [ReLU]\n", "yaml-syntax", 2, 7),
    "empty-flow-entry": (HEAD + "input: {shape: [, 4]}\nmodel: [ReLU]\n", "yaml-syntax", 2, 17),
    "first-key-without-colon": ("modelspec 1\nmodel: [ReLU]\n", "yaml-syntax", 1, 1),
    "missing-comma-in-braces": (LIST + "  - Linear: {in_features: 2 out_features: 3}\n", "yaml-syntax", 3, 29),
    "indented-first-line": (" modelspec: 1\nmodel: [ReLU]\n", "yaml-syntax", 2, 1),
    "bad-escape": (HEAD + 'name: "a\\qb"\nmodel: [ReLU]\n', "yaml-syntax", 2, 10),
}


def _write(tmp_path: Path, content: str | bytes, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))  # no newline translation: columns stay exact
    return path


@pytest.mark.parametrize("name", sorted(BAD))
def test_diagnostic_has_code_position_and_hint(tmp_path: Path, name: str) -> None:
    content, code, line, column = BAD[name]
    spec = _write(tmp_path, content)
    with pytest.raises(SpecError) as info:
        modelspec.validate(spec)
    first = info.value.diagnostics[0]
    assert (first.code, first.line, first.column) == (code, line, column), str(info.value)
    assert first.file == str(spec)
    assert first.hint, str(info.value)


@pytest.mark.parametrize("name", sorted(BAD))
def test_cli_exits_2_without_traceback_and_writes_nothing(tmp_path: Path, name: str) -> None:
    content, code, line, column = BAD[name]
    spec = _write(tmp_path, content)
    out_dir = tmp_path / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    rc = main(["build", str(spec), "-o", str(out_dir)], stdout=stdout, stderr=stderr)
    err = stderr.getvalue()
    assert rc == 2, err
    assert "Traceback" not in err
    assert f"{spec}:{line}:{column}: error[{code}]" in err, err
    assert "hint: " in err
    assert not out_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.name]


def test_yaml_12_core_readings() -> None:
    text = HEAD + (
        "a: [true, True, TRUE, false, False, FALSE]\n"
        "b: [0, -3, +7, 0o17, 0x1F, 0x1f]\n"
        "c: [0.5, -1.5, 1e3, 1.0e-3, .5, 1., 01.5, .inf, -.Inf, +.INF]\n"
        "d: [null, Null, NULL, ~]\n"
        "e: ['on', \"yes\", !!str off, !!str 010, 2024-01-01, 12:30:00x, http://x.org/a:b, -inf]\n"
        "f: [!!float 1, !!int 0x10, !!bool TRUE, !!null '']\n"
        "g: .nan\n"
        "empty:\n"
    )
    data = load_text(text).data
    assert data["a"] == [True, True, True, False, False, False]
    assert all(type(v) is bool for v in data["a"])
    assert data["b"] == [0, -3, 7, 15, 31, 31] and all(type(v) is int for v in data["b"])
    assert data["c"][:7] == [0.5, -1.5, 1000.0, 0.001, 0.5, 1.0, 1.5] and all(type(v) is float for v in data["c"])
    assert data["c"][7:] == [math.inf, -math.inf, math.inf]
    assert data["d"] == [None] * 4 and data["empty"] is None
    assert data["e"] == ["on", "yes", "off", "010", "2024-01-01", "12:30:00x", "http://x.org/a:b", "-inf"]
    assert data["f"] == [1.0, 16, True, None] and type(data["f"][0]) is float
    assert math.isnan(data["g"])


def test_quoted_yaml11_words_are_plain_text() -> None:
    data = load_text(HEAD + "'on': 1\n\"yes\": 2\nname: 'off'\n").data
    assert data == {"modelspec": 1, "on": 1, "yes": 2, "name": "off"}


def test_single_letter_keys_are_names() -> None:
    # YAML 1.1 lists y/n as booleans, but PyYAML never read them so; as keys they are names
    data = load_text(HEAD + "model: {x: ReLU, y: ReLU, n: ReLU, N: ReLU}\n").data
    assert list(data["model"]) == ["x", "y", "n", "N"]


def test_ambiguous_values_say_both_readings_and_the_fix() -> None:
    with pytest.raises(SpecError) as info:
        load_text(LIST + "  - Linear: {in_features: 010, out_features: 1:00, bias: off}\n")
    by_column = {d.column: d for d in info.value.diagnostics}
    assert [d.code for d in info.value.diagnostics] == ["ambiguous-value"] * 3
    assert "8" in by_column[27].message and "10" in by_column[27].message
    assert "60" in by_column[46].message and "write 60" in (by_column[46].hint or "")
    assert "write false" in (by_column[58].hint or "") and "quote" in (by_column[58].hint or "")


def test_every_mistake_in_the_tree_is_reported_at_once() -> None:
    with pytest.raises(SpecError) as info:
        load_text(HEAD + "seed: 010\nname: !!bool maybe\nmodel:\n  - Linear: [2, 3, off]\n  - -ReLU\n")
    assert [(d.code, d.line) for d in info.value.diagnostics] == [
        ("ambiguous-value", 2),
        ("bad-value", 3),
        ("ambiguous-value", 5),
        ("yaml-syntax", 6),
    ]


def test_nesting_up_to_the_limit_is_accepted() -> None:
    depth = MAX_DEPTH - 1  # the root mapping is one level
    data = load_text(HEAD + "x: " + "[" * depth + "]" * depth + "\n").data
    for _ in range(depth):
        data = data["x"] if isinstance(data, dict) else data[0]
    assert data == []


def test_text_over_the_size_limit_is_refused_before_parsing() -> None:
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_text("[" * (MAX_BYTES + 1))
    assert info.value.codes == ["too-large"]
    with pytest.raises(SpecError) as info:
        load_text("# " + "é" * (MAX_BYTES // 2))  # fewer characters than the limit, more bytes
    assert info.value.codes == ["too-large"]
    assert time.perf_counter() - start < 2.0


def test_dev_zero_and_a_50_mb_file_are_refused_quickly(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("w", encoding="utf-8") as f:
        f.write(LIST)
        chunk = "  - Linear: {in_features: 64, out_features: 64}\n" * 20_000
        while f.tell() < 50_000_000:
            f.write(chunk)
    sources = [big] + ([Path("/dev/zero")] if os.path.exists("/dev/zero") else [])
    for source in sources:
        start = time.perf_counter()
        err = io.StringIO()
        rc = main(["build", str(source), "-o", str(tmp_path / "out")], stdout=io.StringIO(), stderr=err)
        elapsed = time.perf_counter() - start
        assert rc == 2 and "error[too-large]" in err.getvalue() and "Traceback" not in err.getvalue()
        assert elapsed < 2.0, f"{source}: {elapsed:.2f} s"
    assert not (tmp_path / "out").exists()


def test_alias_bomb_stops_within_seconds() -> None:
    text = HEAD + "a0: &a0 [x, x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]\n" for i in range(1, 60))
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_text(text)
    assert info.value.codes == ["alias-limit"]
    assert time.perf_counter() - start < 10.0  # ~1 s alone; generous for a loaded machine


def test_aliases_within_the_limit_are_independent_copies() -> None:
    data = load_text(HEAD + "base: &b {Linear: [2, 2]}\nmodel: [*b, *b]\n").data
    assert data["model"] == [data["base"], data["base"]]
    assert data["model"][0] is not data["model"][1] and data["model"][0] is not data["base"]


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    spec = _write(tmp_path, (HEAD + "input: {shape: [2, 4]}\nmodel: [ReLU]\n").encode("utf-8-sig"))
    assert modelspec.validate(spec) == []


def test_unreadable_path_is_a_file_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        modelspec.validate(tmp_path)  # a folder
    assert info.value.codes == ["file-error"] and info.value.diagnostics[0].hint
