"""The layer table's description does not depend on what ran before in the process."""

from __future__ import annotations

import torch

from modelspec import _description


def test_torch_compile_does_not_change_the_description() -> None:
    # dynamo marks nn.Module classes when it first compiles one (a class attribute named
    # ___needs_generation_tag_patch): that once made the shipped description look stale
    compiled = torch.compile(torch.nn.Sequential(torch.nn.Linear(2, 2)), backend="eager")
    compiled(torch.zeros(1, 2))
    assert any(n.startswith("___") for n in dir(torch.nn.Sequential()))  # the mark this test is about
    assert _description.main(["--check"]) == 0
