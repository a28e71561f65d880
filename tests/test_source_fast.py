"""libyaml reads a spec's YAML when PyYAML has it; the result is the Python loader's exactly.

The fast path (``_source._compose_fast``) must be invisible: the same data, the same
positions and, for a bad spec, the same diagnostics as the pure-Python loader, which reads
every text the fast path declines."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelspec import _source
from modelspec._errors import SpecError
from modelspec._source import load_text

ROOT = Path(__file__).resolve().parent.parent


def _utf8(path: Path) -> bool:
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # read_file refuses it before load_text sees it
        return False
    return True


TEXTS = sorted(p for p in [*ROOT.glob("specs/**/*.yaml"), *ROOT.glob("tests/corpus/**/*.yaml")] if _utf8(p))

pytestmark = pytest.mark.skipif(_source._CParser is None, reason="this PyYAML was built without libyaml")


def _outcome(text: str) -> object:
    try:
        doc = load_text(text, "spec.yaml")
    except SpecError as e:
        return [(d.code, d.line, d.column, d.path, d.message, d.hint) for d in e.diagnostics]
    return doc.data, doc.positions


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_both_loaders_agree(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = path.read_text(encoding="utf-8")
    fast = _outcome(text)
    monkeypatch.setattr(_source, "_CParser", None)
    assert _outcome(text) == fast


def test_bundled_specs_take_the_fast_path() -> None:
    for path in ROOT.glob("specs/**/*.yaml"):
        assert _source._compose_fast(path.read_text(encoding="utf-8")) is not None, path


@pytest.mark.parametrize(
    "text",
    [
        "modelspec: 1\nmodel:\n  - ReLU\n    - ReLU\n",  # one scalar for libyaml, an error for PyYAML
        "modelspec: 1\nmodel:\n  - Linear:{in_features: 2}\n",
        "modelspec: 1\nmodel:\n-ReLU\n - ReLU\n",
        "modelspec: 1\nmodel: [ReLU\n",  # a syntax error: the Python loader's message
        "modelspec: 1\nname: caf\u00e9\nmodel: [ReLU]\n",  # not ASCII: positions by the Python loader
        "modelspec: 1\nmodel:\n  - Linear:\t{in_features: 2, out_features: 3}\n",  # libyaml takes the tab
        "modelspec: 1\nmodel:\n  - ReLU\t# activation\n",
        "modelspec: 1\nmodel: " + "[" * (_source.MAX_DEPTH + 1) + "]" * (_source.MAX_DEPTH + 1) + "\n",
    ],
    ids=[
        "continued-scalar",
        "colon-brace",
        "leading-dash",
        "syntax-error",
        "non-ascii",
        "tab-after-colon",
        "tab-before-comment",
        "too-deep",
    ],
)
def test_disputed_texts_are_left_to_the_python_loader(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _source._compose_fast(text) is None
    fast = _outcome(text)
    monkeypatch.setattr(_source, "_CParser", None)
    assert _outcome(text) == fast
