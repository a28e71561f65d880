"""The node grammar of issue 7 (graphs, ops, module arguments) leaves v1 specs' canonical
hashes unchanged: build folders and reports made before it still match their specs.

The hashes below were computed with the code at commit 8686ceb (the last commit before the
grammar was rewritten), from a plain checkout of that commit (``git archive 8686ceb``), by
``modelspec.compile_spec(...).spec.sha256``. They are hard-coded on purpose: a change to the
canonical form of any v1 node kind makes this test fail.
"""

from __future__ import annotations

import pytest
from conftest import D2L

import modelspec

BEFORE_GRAPHS = {
    "nest_mlp.yaml": "10df7c5dd3485ee7995232b5a006788908485fcd8bd1801e87ca33705001b013",
    "net.yaml": "bbcd873a0270a8a948a28cea8d253728f7b4e327a7cf1ea46b639cd574ffeb6c",
    "shared.yaml": "c83d1467a2c4e161f98372a9b43571878252ed1d79b040e1ef583c98ca1fc18a",
    "shared_mlp.yaml": "90c526c8e53ccc7feb6d9e17f29daec334b6bce22d4082801371ddeebd2791de",
}

#: v1 forms the bundled specs do not use: positional arguments with keywords last, named
#: children inside a block, several models, int64 input, a layer giving a tuple.
TEXTS = {
    "conv": "modelspec: 1\nname: c\nseed: 3\ninput: {shape: [1, 3, 8, 8]}\nmodel:\n"
    "  - Conv2d: [3, 16, {kernel_size: 3, padding: 1}]\n  - {BatchNorm2d: 16}\n  - ReLU\n"
    "  - {Flatten: {start_dim: 1}}\n  - {LazyLinear: 10}\n",
    "children": "modelspec: 1\ndescription: nested\nblocks:\n"
    "  body: {net: [{Linear: [4, 4]}, Tanh], head: {Linear: {in_features: 4, out_features: 2, bias: false}}}\n"
    "models:\n  a: [{use: body}, {Dropout: 0.1}]\n  b: {use: body}\n",
    "embed": "modelspec: 1\ninput: {shape: [2, 5], dtype: int64}\nmodel:\n"
    "  - {Embedding: [10, 4, {padding_idx: 0}]}\n  - {LSTM: {input_size: 4, hidden_size: 3, batch_first: true}}\n",
}
TEXT_BEFORE_GRAPHS = {
    "conv": "1610197884d145c0a5fa9f35a458fc275a11877a978b2ab5b6cce63c064a1bac",
    "children": "51bf0d8c667daec65584434eca8ca37e534dc7dc07f59ca5cfa7226fa2044a9b",
    "embed": "34db03e84a785130a61f10866f28c7e32a10e6e472da3075ef7bf763a3a2759c",
}


@pytest.mark.parametrize("name", sorted(BEFORE_GRAPHS))
def test_bundled_v1_spec_hash_is_unchanged(name: str) -> None:
    assert modelspec.compile_spec(D2L / name).spec.sha256 == BEFORE_GRAPHS[name]


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_v1_forms_hash_is_unchanged(name: str) -> None:
    assert modelspec.compile_spec(TEXTS[name]).spec.sha256 == TEXT_BEFORE_GRAPHS[name]
