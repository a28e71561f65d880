"""Spec mistakes a newcomer makes, and input that must not build: one clear error each,
with its code, line:column, path in the spec and the hint that fits."""

from __future__ import annotations

import inspect
import io
import json
import typing
from pathlib import Path

import jsonschema
import pytest
import torch
from conftest import ROOT, write
from torch import nn

import modelspec
from modelspec import _registry as registry
from modelspec._errors import Diagnostic, SpecError
from modelspec._spec import RESERVED, SpecFile
from modelspec.cli import main

HEAD = "modelspec: 1\n"


def errors_of(tmp_path: Path, text: str) -> list[Diagnostic]:
    """The diagnostics of building ``text`` (validation, then the example pass)."""
    spec = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        modelspec.build(spec)
    return list(info.value.diagnostics)


def only(tmp_path: Path, text: str) -> Diagnostic:
    found = errors_of(tmp_path, text)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def where(d: Diagnostic) -> tuple[str, int | None, int | None]:
    return d.code, d.line, d.column


def cli_build(tmp_path: Path, text: str) -> str:
    """Build through the CLI in-process; check exit 2, no traceback, nothing written."""
    folder = tmp_path / "cli"
    folder.mkdir()
    spec = write(folder, text, "bad.yaml")
    out, err = io.StringIO(), io.StringIO()
    assert main(["build", str(spec), "-o", str(folder / "o")], stdout=out, stderr=err) == 2, err.getvalue()
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue()
    assert out.getvalue() == ""
    assert sorted(p.name for p in folder.iterdir()) == ["bad.yaml"]  # no folder, no temp folder
    return err.getvalue()


# ---------------------------------------------------------------- 1. model names nn.ModuleDict uses
@pytest.mark.parametrize("name", ["training", "forward", "__class__", "keys", "items", "bfloat16"])
def test_model_name_taken_by_module_dict_is_a_bad_name(tmp_path: Path, name: str) -> None:
    d = only(tmp_path, HEAD + "models:\n  ok: [ReLU]\n  " + name + ": [ReLU]\n")
    assert where(d) == ("bad-name", 4, 3)
    assert d.path == ("models", name) and d.hint


def test_model_name_clash_through_the_cli(tmp_path: Path) -> None:
    err = cli_build(tmp_path, HEAD + "models:\n  training: [ReLU]\n")
    assert "bad.yaml:3:3: error[bad-name] models.training:" in err


@pytest.mark.parametrize("name", ["forward", "training", "__class__"])
def test_child_name_taken_by_sequential_is_a_bad_name(tmp_path: Path, name: str) -> None:
    d = only(tmp_path, HEAD + "model:\n  net: ReLU\n  " + name + ": ReLU\n")
    assert where(d) == ("bad-name", 4, 3) and d.path == ("model", name) and d.hint


# ---------------------------------------------------------------- 2. an input dtype no layer takes
def test_integer_input_into_linear_is_rejected_by_the_example_pass(tmp_path: Path) -> None:
    text = HEAD + "input: {shape: [2, 4], dtype: int64}\nmodel:\n  - Linear: [4, 2]\n"
    d = only(tmp_path, text)
    assert where(d) == ("build-error", 4, 5) and d.path == ("model", 0)
    assert "input.dtype" in (d.hint or "")
    err = cli_build(tmp_path, text)
    assert "bad.yaml:4:5: error[build-error] model[0]:" in err and "input.dtype" in err


def test_boolean_input_into_relu_is_rejected(tmp_path: Path) -> None:
    d = only(tmp_path, HEAD + "input: {shape: [2, 4], dtype: bool}\nmodel: [ReLU]\n")
    assert where(d) == ("build-error", 3, 9) and "input.dtype" in (d.hint or "")


def test_token_ids_into_an_embedding_still_build(tmp_path: Path) -> None:
    spec = write(
        tmp_path, HEAD + "input: {shape: [2, 5], dtype: int64}\nmodel: [{Embedding: [10, 4]}, {Linear: [4, 3]}]\n"
    )
    model = modelspec.build(spec)
    assert model(torch.zeros(2, 5, dtype=torch.int64)).shape == (2, 5, 3)


def test_dtype_check_runs_once_more_for_real_not_on_the_whole_batch(tmp_path: Path) -> None:
    # meta kernels do not check dtypes; the real check runs on one example of the batch
    seen: list[tuple[int, ...]] = []
    spec = write(tmp_path, HEAD + "input: {shape: [3, 5], dtype: int64}\nmodel: [{Embedding: [10, 4]}]\n")
    handle = nn.modules.module.register_module_forward_pre_hook(
        lambda m, args: seen.append(tuple(args[0].shape)) if args[0].device.type == "cpu" else None
    )
    try:
        modelspec.build(spec)
    finally:
        handle.remove()
    assert seen == [(1, 5), (1, 5)]  # the Sequential and the Embedding, with a batch of one


# ---------------------------------------------------------------- 3. only plain data reaches a constructor
@pytest.mark.parametrize(
    ("layer", "path"),
    [
        ("CrossEntropyLoss: {weight: [1.0, 2.0]}", ("model", 0, "CrossEntropyLoss", "weight")),
        ("TripletMarginWithDistanceLoss: {distance_function: cosine}", None),
        ("SyncBatchNorm: [4, 0.00001, 0.1, true, true, group]", ("model", 0, "SyncBatchNorm", 5)),
    ],
)
def test_arguments_a_spec_cannot_express_are_unsupported(tmp_path: Path, layer: str, path: tuple | None) -> None:
    d = only(tmp_path, HEAD + "model:\n  - " + layer + "\n")
    assert d.code == "unsupported-argument" and d.line == 3
    if path is not None:
        assert d.path == path


def test_a_module_argument_is_a_node_never_a_string_to_run(tmp_path: Path) -> None:
    """Arguments that take a module are written as nodes (a layer, or a block): a string
    there is a layer type name, looked up in the registry like any other."""
    err = cli_build(tmp_path, HEAD + "model:\n  - Transformer: {custom_encoder: 'rm -rf /'}\n")
    assert "bad.yaml:3:19: error[unknown-layer] model[0].Transformer.custom_encoder:" in err
    d = only(tmp_path, HEAD + "model:\n  - Transformer: {custom_decoder: [1]}\n")
    assert d.code == "wrong-type" and d.path == ("model", 0, "Transformer", "custom_decoder", 0)


@pytest.mark.parametrize(
    ("layer", "path"),
    [
        ("Transformer: {activation: 'rm -rf /'}", ("model", 0, "Transformer", "activation")),
        (
            "TransformerEncoderLayer: [8, 2, {activation: tanh}]",
            ("model", 0, "TransformerEncoderLayer", 2, "activation"),
        ),
        ("MultiheadAttention: [eight, 2]", ("model", 0, "MultiheadAttention", 0)),
        ("MultiheadAttention: {embed_dim: 8, num_heads: 2, kdim: '4'}", ("model", 0, "MultiheadAttention", "kdim")),
        ("CrossEntropyLoss: {size_average: maybe}", ("model", 0, "CrossEntropyLoss", "size_average")),
        ("LayerNorm: {normalized_shape: wide}", ("model", 0, "LayerNorm", "normalized_shape")),
    ],
)
def test_arguments_without_a_usable_annotation_are_checked(tmp_path: Path, layer: str, path: tuple) -> None:
    d = only(tmp_path, HEAD + "model:\n  - " + layer + "\n")
    assert d.code == "wrong-type" and d.path == path and d.line == 3


@pytest.mark.parametrize(
    "layer",
    [
        "Transformer: {d_model: 8, nhead: 2, num_encoder_layers: 1, num_decoder_layers: 1, activation: gelu, batch_first: true}",
        "TransformerEncoderLayer: [8, 2, {activation: relu}]",
        "Conv2d: [3, 4, 3, {padding: same}]",
        "RNN: [4, 8, {nonlinearity: relu}]",
        "MultiheadAttention: {embed_dim: 8, num_heads: 2, kdim: 4, vdim: 4}",
        "LayerNorm: [[4, 8]]",
        "Unflatten: [1, [2, 2]]",
        "CrossEntropyLoss: {weight: null, reduction: sum}",
        "GELU: {approximate: tanh}",
    ],
)
def test_legitimate_strings_and_plain_values_still_work(tmp_path: Path, layer: str) -> None:
    modelspec.build(write(tmp_path, HEAD + "model:\n  - " + layer + "\n"))


def _raw_members(annotation: object) -> list[object]:
    if typing.get_origin(annotation) in (typing.Union, __import__("types").UnionType):
        return [m for a in typing.get_args(annotation) for m in _raw_members(a)]
    return [annotation]


def _takes_code(member: object) -> bool:
    """Whether an annotation member lets a constructor receive a module, a function or an object."""
    origin = typing.get_origin(member) or member
    if member is typing.Any or origin is typing.Any:
        return True
    if origin is __import__("collections.abc").abc.Callable:
        return True
    return inspect.isclass(origin) and (issubclass(origin, nn.Module) or origin is object)


ODD = ["rm -rf /", {"ReLU": None}, {"TransformerEncoderLayer": [8, 2]}]


def test_no_parameter_that_takes_a_module_or_function_accepts_a_string_or_a_mapping() -> None:
    checked = 0
    for name in registry.layer_names():
        entry = registry.get_layer(name)
        assert entry is not None
        init = registry._constructor(entry.cls)
        if init is None:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 - as the registry does
            hints = {}
        for p in entry.params:
            raw = _raw_members(hints.get(p.name, typing.Any))
            for value in ODD:
                _, problems = registry.bind_arguments(entry, [], {p.name: value})
                accepted = not any(e.where[:1] == (p.name,) for e in problems)
                if isinstance(value, dict):
                    assert not accepted, f"{name}.{p.name} accepts a mapping"
                elif accepted:  # a string gets through only where the annotation says str, and nothing else
                    assert str in raw and not any(_takes_code(m) for m in raw), f"{name}.{p.name} accepts {value!r}"
            if any(_takes_code(m) for m in raw):
                checked += 1
    assert checked >= 10  # Transformer's custom_encoder/decoder and activation, norms, layers, process_group ...


def test_every_parameter_is_checked_never_passed_through() -> None:
    for name in registry.layer_names():
        entry = registry.get_layer(name)
        assert entry is not None
        for p in entry.params:
            assert p.adapter is not None, f"{name}.{p.name}"
            if p.writable:
                assert p.annotation is not type(None)
            else:
                assert p.opaque, f"{name}.{p.name} is not writable but says not why"


# ---------------------------------------------------------------- 4. arguments at the indent of the type
def test_arguments_at_the_indent_of_the_layer_type_give_one_error_with_the_fix(tmp_path: Path) -> None:
    text = HEAD + "model:\n  - Linear:\n    in_features: 20\n    out_features: 64\n"
    d = only(tmp_path, text)
    assert where(d) == ("bad-indent", 3, 5) and d.path == ("model", 0)
    assert d.hint == "indent 'in_features' and 'out_features' 2 more spaces, under 'Linear:'"
    err = cli_build(tmp_path, text)
    assert "bad.yaml:3:5: error[bad-indent] model[0]:" in err and "1 error" in err


def test_misindented_arguments_in_named_children_and_their_own_mistakes(tmp_path: Path) -> None:
    text = HEAD + "model:\n  enc:\n    Linear:\n    in_features: 20\n    out_feature: 64\n"
    found = errors_of(tmp_path, text)
    assert [where(d) for d in found] == [("bad-indent", 4, 5), ("bad-argument", 6, 5)]
    assert found[0].hint == "indent 'in_features' and 'out_feature' 2 more spaces, under 'Linear:'"
    assert found[1].hint == "did you mean 'out_features'?"


def test_layer_beside_a_child_is_still_a_bad_layer(tmp_path: Path) -> None:
    found = errors_of(tmp_path, HEAD + "model:\n  - Linear:\n    encoder: ReLU\n")
    assert "bad-layer" in [d.code for d in found] and "bad-indent" not in [d.code for d in found]


# ---------------------------------------------------------------- 5. one typo, one error
def test_a_misspelt_required_argument_is_reported_once(tmp_path: Path) -> None:
    d = only(tmp_path, HEAD + "model:\n  - Conv2d: {in_channels: 1, out_channels: 4, kernal_size: 3}\n")
    assert where(d) == ("bad-argument", 3, 47) and d.hint == "did you mean 'kernel_size'?"


def test_a_missing_argument_unrelated_to_the_typo_is_still_reported(tmp_path: Path) -> None:
    found = errors_of(tmp_path, HEAD + "model:\n  - Conv2d: {in_channels: 1, kernal_size: 3}\n")
    assert sorted(d.code for d in found) == ["bad-argument", "missing-argument"]
    assert "out_channels" in next(d.message for d in found if d.code == "missing-argument")


# ---------------------------------------------------------------- 6. the hint that fits, at the use site
@pytest.mark.parametrize(
    ("text", "at", "phrase"),
    [
        ("input: {shape: [2, 4]}\nmodel:\n  - Embedding: [10, 4]\n", (4, 5), "input.dtype: int64"),
        ("input: {shape: [2, 3, 4]}\nmodel:\n  - LSTM: [4, 8]\n  - Linear: [8, 2]\n", (5, 5), "returns a tuple"),
        ("input: {shape: [2, 3, 4]}\nmodel:\n  - MultiheadAttention: [4, 2]\n", (4, 5), "several inputs"),
        ("input: {shape: [2, 4]}\nmodel:\n  - Linear: [5, 3]\n", (4, 5), "in_features=5"),
        ("input: {shape: [2, 4], dtype: int64}\nmodel:\n  - Embedding: [10, 4]\n  - Embedding: [10, 4]\n",
         (5, 5), "the layer before it returns floats"),
    ],
)  # fmt: skip
def test_example_pass_failure_gets_the_hint_that_fits(tmp_path: Path, text: str, at: tuple, phrase: str) -> None:
    d = only(tmp_path, HEAD + text)
    assert (d.code, d.line, d.column) == ("build-error", *at)
    assert phrase in (d.hint or ""), d
    if phrase != "in_features=5":
        assert "layer sizes" not in (d.hint or "")


def test_tuple_hint_names_the_layer_that_returns_it(tmp_path: Path) -> None:
    d = only(tmp_path, HEAD + "input: {shape: [2, 3, 4]}\nmodel:\n  - LSTM: [4, 8]\n  - Linear: [8, 2]\n")
    assert (d.hint or "").startswith("LSTM at model[0] returns a tuple") and "data-flow graphs" in (d.hint or "")


def test_failure_inside_a_block_is_reported_where_it_is_used(tmp_path: Path) -> None:
    text = (
        HEAD
        + "input: {shape: [2, 4]}\n"
        + "blocks:\n  fine: [{Linear: [4, 4]}, ReLU]\n  wide: {Linear: [8, 4]}\n"
        + "model:\n  - use: fine\n  - use: fine\n  - use: wide\n"
    )
    d = only(tmp_path, text)
    assert where(d) == ("build-error", 9, 5) and d.path == ("model", 2)
    assert "block 'wide'" in d.message and "blocks.wide" in d.message
    err = cli_build(tmp_path, text)
    assert "bad.yaml:9:5: error[build-error] model[2]:" in err


def test_failure_in_a_nested_block_of_one_model_of_several(tmp_path: Path) -> None:
    text = (
        HEAD
        + "input: {shape: [2, 4]}\n"
        + "blocks:\n  outer: [ReLU, {use: inner}]\n  inner: {x: {Linear: [5, 3]}}\n"
        + "models:\n  a: [ReLU]\n  b: {enc: {use: outer}}\n"
    )
    d = only(tmp_path, text)
    assert where(d) == ("build-error", 8, 7) and d.path == ("models", "b", "enc")
    assert "block 'outer' > block 'inner' (at blocks.inner.x)" in d.message and "model 'b'" in d.message


def test_the_same_block_failing_at_its_first_use_is_reported_there(tmp_path: Path) -> None:
    # the block fits at neither use: the first use the input reaches is the one reported
    text = HEAD + "input: {shape: [2, 4]}\nblocks:\n  b: {Linear: [3, 3]}\nmodel:\n  - ReLU\n  - use: b\n  - use: b\n"
    d = only(tmp_path, text)
    assert where(d) == ("build-error", 7, 5) and d.path == ("model", 1)


# ---------------------------------------------------------------- 7. reserved keywords
@pytest.mark.parametrize("key", sorted(set(RESERVED) - set(SpecFile.model_fields)))  # 'init' is a key now
def test_reserved_keyword_at_the_top_level(tmp_path: Path, key: str) -> None:
    d = only(tmp_path, HEAD + f"{key}: 1\nmodel: [ReLU]\n")
    assert where(d) == ("reserved", 2, 1) and d.path == (key,) and "not supported yet" in d.message


@pytest.mark.parametrize("key", sorted(RESERVED))
def test_reserved_keyword_as_a_node_key_or_child_name(tmp_path: Path, key: str) -> None:
    beside_layer = only(tmp_path, HEAD + f"model:\n  - Linear: [2, 2]\n    {key}: 3\n")
    assert where(beside_layer) == ("reserved", 4, 5) and beside_layer.path == ("model", 0, key)
    as_child = only(tmp_path, HEAD + f"model:\n  net: ReLU\n  {key}: ReLU\n")
    assert where(as_child) == ("reserved", 4, 3)


@pytest.mark.parametrize("key", ["plugins", "overrides"])
def test_reserved_keyword_as_a_model_name(tmp_path: Path, key: str) -> None:
    d = only(tmp_path, HEAD + f"models:\n  {key}: [ReLU]\n")
    assert where(d) == ("reserved", 3, 3) and d.path == ("models", key)


def test_reserved_keyword_gives_no_follow_on_errors(tmp_path: Path) -> None:
    d = only(tmp_path, HEAD + "model:\n  - overrides: 12\n    block: {Linear: [2, 2]}\n")
    assert where(d) == ("reserved", 3, 5)
    err = cli_build(tmp_path, HEAD + "plugins:\n  - [head.weight, emb.weight]\nmodel: [ReLU]\n")
    assert "bad.yaml:2:1: error[reserved] plugins:" in err


def test_arguments_named_like_a_reserved_keyword_stay_arguments(tmp_path: Path) -> None:
    model = modelspec.build(write(tmp_path, HEAD + "model:\n  - PReLU: {init: 0.5}\n"))
    assert model[0].weight.detach().tolist() == [0.5]


# ---------------------------------------------------------------- 8. the schema agrees
def test_schema_rejects_reserved_and_taken_names_and_unwritable_arguments() -> None:
    schema = json.loads((ROOT / "schemas" / "modelspec.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    bad = [
        {"modelspec": 1, "models": {"training": ["ReLU"]}},
        {"modelspec": 1, "models": {"plugins": ["ReLU"]}},
        {"modelspec": 1, "model": {"inputs": "ReLU"}},
        {"modelspec": 1, "model": {"forward": "ReLU"}},
        {"modelspec": 1, "plugins": {"a": 1}, "model": ["ReLU"]},
        {"modelspec": 1, "model": [{"Transformer": {"custom_encoder": "rm -rf /"}}]},
        {"modelspec": 1, "model": [{"Transformer": {"activation": "rm -rf /"}}]},
    ]
    for doc in bad:
        assert list(validator.iter_errors(doc)), doc
    good = {
        "modelspec": 1,
        "models": {"mlp": {"net": ["ReLU"]}},
        "blocks": {"b": {"Transformer": {"activation": "gelu"}}},
    }
    assert list(validator.iter_errors(good)) == []
