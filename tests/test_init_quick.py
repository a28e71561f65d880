"""Init rules that are plainly valid are read without pydantic, to the same Rule the grammar
gives; anything else goes to the grammar, which words every error."""

from __future__ import annotations

import math
import typing
from pathlib import Path

import pytest
from pydantic_core import PydanticUndefined

from modelspec import _init
from modelspec._errors import Collector
from modelspec._init_grammar import ARGS

ROOT = Path(__file__).resolve().parent.parent

VALID = [
    {"layer": "Linear", "normal": {"std": 0.02}},
    {"layer": ["Linear", "Embedding"], "params": "*.weight", "normal": {"mean": 1, "std": 0}},
    {"params": "*.bias", "zeros": None},
    {"params": ["a.weight"], "ones": {}},
    {"block": "trunk", "constant": {"value": -3}},
    {"params": "*", "uniform": {"low": -1.5, "high": 2}},
    {"params": "*", "xavier_uniform": {"gain": 2.0}},
    {"params": "*", "xavier_normal": None},
    {"params": "*", "kaiming_uniform": {"a": 0.1, "mode": "fan_out", "nonlinearity": "relu"}},
    {"params": "*", "kaiming_normal": {"nonlinearity": "conv_transpose2d"}},
    {"params": "*", "orthogonal": {"gain": 0.5}},
    {"params": "*", "trunc_normal": {"mean": 0, "std": 0.02, "a": -0.04, "b": 0.04}},
    {"params": "*", "normal": {"std": -0.0}},
    {"params": "*", "normal": {"mean": 2**53}},
    {"params": "*", "trunc_normal": {"b": 0.04, "std": 0.02, "a": -0.04}},  # written out of order
]
INVALID_OR_LEFT = [
    {"params": "*", "normal": {"std": -1}},
    {"params": "*", "normal": {"std": math.inf}},
    {"params": "*", "normal": {"std": math.nan}},
    {"params": "*", "normal": {"std": True}},
    {"params": "*", "normal": {"std": "1"}},
    {"params": "*", "normal": {"mean": 2**53 + 1}},
    {"params": "*", "normal": {"mean": 10**400}},
    {"params": "*", "normal": {"sdt": 1}},
    {"params": "*", "normal": [1]},
    {"params": "*", "nromal": {"std": 1}},
    {"params": "*"},
    {"normal": {"std": 1}},
    {"params": "*", "normal": {}, "zeros": None},
    {"params": "", "zeros": None},
    {"params": [], "zeros": None},
    {"params": ["a", ""], "zeros": None},
    {"params": 3, "zeros": None},
    {"layer": None, "zeros": None},
    {"block": None, "zeros": None},
    {"block": 1, "zeros": None},
    {"params": "*", "constant": {}},
    {"params": "*", "constant": None},
    {"params": "*", "uniform": {"low": 2, "high": 1}},
    {"params": "*", "trunc_normal": {"a": 1, "b": 1}},
    {"params": "*", "trunc_normal": {"std": 0.02}},  # [-2, 2] holds it all: valid
    {"params": "*", "trunc_normal": {"mean": 5, "std": 0.1}},  # [-2, 2] holds nothing
    {"params": "*", "kaiming_normal": {"mode": "fan"}},
    {"params": "*", "kaiming_normal": {"nonlinearity": "gelu"}},
    {"params": "*", "rename": {"a": "b"}, "zeros": None},
    {"block": "trunk", "from": "../other"},
    {"block": "trunk", "from": ""},
    {1: "x", "params": "*", "zeros": None},
    "zeros",
    None,
]


def checked(item: object) -> tuple[_init.Rule | None, list[tuple[str, tuple[object, ...], str]]]:
    errors = Collector(file="<spec>")
    rule = _init._checked_rule(item, ("init", 0), errors)
    return rule, [(d.code, d.path, d.message) for d in errors.errors]


@pytest.mark.parametrize("item", VALID + INVALID_OR_LEFT, ids=repr)
def test_the_quick_parse_agrees_with_the_grammar(item: object) -> None:
    quick = _init._quick_rule(item, ("init", 0))
    rule, problems = checked(item)
    assert (rule is None) == bool(problems)
    if rule is None:
        assert quick is None
    else:
        assert quick is None or (quick == rule and list(quick.args.items()) == list(rule.args.items()))
        assert quick is None or quick.forms == rule.forms
    if item in VALID:
        assert quick is not None and rule is not None  # taken without pydantic


def test_the_plain_table_has_the_grammars_arguments_and_defaults() -> None:
    assert list(ARGS) == list(_init.METHODS)
    for method, model in ARGS.items():
        fields = model.model_fields
        assert list(fields) == list(_init.METHODS[method])
        for name, info in fields.items():
            default = _init.METHODS[method][name]
            assert (info.default is PydanticUndefined) == (default is _init.REQUIRED)
            if default is not _init.REQUIRED:
                assert info.default == default and type(info.default) is type(default)
    kaiming = ARGS["kaiming_normal"].model_fields
    assert typing.get_args(kaiming["nonlinearity"].annotation) == _init.NONLINEARITIES
    assert typing.get_args(kaiming["mode"].annotation) == _init._KINDS["mode"]
