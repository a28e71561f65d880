"""Custom layers: register_layer, --plugin MODULE, entry points of installed packages.

A custom layer gets what a torch.nn layer gets (argument checks with positions, did-you-mean,
a JSON Schema entry); its name cannot shadow torch.nn or a shipped layer; and only code the
user chose runs: a spec never imports anything. Tests that register in this process restore the
registry afterwards (fixture ``registry``); the CLI and entry points also run in subprocesses
against a fake installed distribution (a dist-info folder on PYTHONPATH).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import torch
from torch import nn

import modelspec
from modelspec import SpecError, UsageError, cli
from modelspec import _registry as registry
from modelspec._schema import render_schemas

ROOT = Path(__file__).resolve().parent.parent
HEAD = "modelspec: 1\nname: t\ninput: {shape: [2, 4]}\n"


class Scale(nn.Module):
    """Multiply by a learned per-feature scale."""

    def __init__(self, dim: int, init: float = 1.0, mode: str = "mul") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


@pytest.fixture
def registry_restored() -> Iterator[None]:
    saved = dict(registry._registered)
    yield
    registry._registered.clear()
    registry._registered.update(saved)
    registry._table.cache_clear()


def _codes(spec: str) -> list[tuple[str, int | None, int | None, str | None]]:
    with pytest.raises(SpecError) as info:
        modelspec.validate(spec)
    return [(d.code, d.line, d.column, d.hint) for d in info.value.diagnostics]


# ---------------------------------------------------------------- register_layer
def test_registered_layer_builds_and_the_table_sees_it(registry_restored: None) -> None:
    spec = HEAD + "model:\n  - Linear: [4, 4]\n  - Scale: {dim: 4, init: 0.5}\n"
    assert [c[0] for c in _codes(spec)] == ["unknown-layer"]  # the table was read before: caches must refresh
    assert modelspec.register_layer(Scale) is Scale
    assert "Scale" in registry.layer_names() and registry.get_layer("Scale").cls is Scale  # type: ignore[union-attr]
    net = modelspec.build(spec)
    assert isinstance(net[1], Scale) and torch.equal(net[1].weight, torch.full((4,), 0.5))
    assert modelspec.register_layer(Scale) is Scale  # the same class again: nothing happens


def test_decorator_with_a_name(registry_restored: None) -> None:
    @modelspec.register_layer(name="Gain")
    class _Gain(Scale):
        pass

    assert _Gain.__name__ == "_Gain" and registry.get_layer("Gain").cls is _Gain  # type: ignore[union-attr]
    assert modelspec.build(HEAD + "model: [{Gain: 4}]\n")[0].weight.shape == (4,)


def test_custom_layer_arguments_are_checked_with_positions(registry_restored: None) -> None:
    modelspec.register_layer(Scale)
    spec = HEAD + 'model:\n  - Scale: {dim: "4", nit: 0.5}\n  - Scale: {init: 2.0}\n  - Scale: [4, 1.0, "x", 5]\n'
    found = {c[:3]: c[3] for c in _codes(spec)}
    assert ("wrong-type", 5, 13) in found  # "4" is not an int
    assert found[("bad-argument", 5, 23)] == "did you mean 'init'?"
    assert ("missing-argument", 6, 5) in found
    assert ("bad-argument", 7, 26) in found  # a fourth value for three parameters
    assert len(found) == 4


def test_did_you_mean_over_custom_names(registry_restored: None) -> None:
    modelspec.register_layer(Scale, name="FeatureScale")
    [(code, line, column, hint)] = _codes(HEAD + "model: [{FeatureScal: 4}]\n")
    assert (code, line, column, hint) == ("unknown-layer", 4, 10, "did you mean 'FeatureScale'?")


def test_unknown_layer_without_a_close_name_points_at_plugins() -> None:
    [(code, line, column, hint)] = _codes(HEAD + "model: [{Zorglub: 4}]\n")
    assert (code, line, column, hint) == ("unknown-layer", 4, 10, registry.UNKNOWN_LAYER_HINT)
    assert "--plugin MODULE" in registry.UNKNOWN_LAYER_HINT


@pytest.mark.parametrize(
    ("cls", "name", "code"),
    [
        (Scale(3), None, "not-a-layer"),  # an instance
        (int, None, "not-a-layer"),
        (lambda: nn.ReLU(), None, "not-a-layer"),
        (Scale, "scale", "bad-layer-name"),  # lower case names children
        (Scale, "My-Scale", "bad-layer-name"),
        (Scale, "", "bad-layer-name"),
        (Scale, "Linear", "shadowed-layer"),
        (Scale, "Sequential", "shadowed-layer"),  # a container keyword
        (Scale, "Parameter", "shadowed-layer"),  # any torch.nn name
        (Scale, "CausalSelfAttention", "shadowed-layer"),  # a shipped layer
    ],
)
def test_register_refuses(registry_restored: None, cls: object, name: str | None, code: str) -> None:
    with pytest.raises(UsageError) as info:
        modelspec.register_layer(cls, name=name)  # type: ignore[arg-type]
    assert info.value.code == code
    assert registry._registered == {}


def test_a_taken_name_is_refused_for_another_class(registry_restored: None) -> None:
    modelspec.register_layer(Scale)

    class Scale2(Scale):
        pass

    with pytest.raises(UsageError) as info:
        modelspec.register_layer(Scale2, name="Scale")
    assert info.value.code == "layer-name-taken"
    assert registry.get_layer("Scale").cls is Scale  # type: ignore[union-attr]
    modelspec.register_layer(Scale, name="ScaleToo")  # one class under two names is fine


# ---------------------------------------------------------------- schema
def test_schema_includes_custom_layers(registry_restored: None) -> None:
    modelspec.register_layer(Scale)
    schema = json.loads(render_schemas()["modelspec.schema.json"])
    entry = schema["$defs"]["layer.Scale"]
    assert entry["description"].startswith(f"{__name__}.Scale(dim, init, mode)")
    assert schema["$defs"]["Layer"]["properties"]["Scale"] == {"$ref": "#/$defs/layer.Scale"}
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"modelspec": 1, "name": "t", "model": [{"Scale": {"dim": 4, "init": 0.5}}]})
    assert not validator.is_valid({"modelspec": 1, "name": "t", "model": [{"Scale": {"dim": "4"}}]})
    assert not validator.is_valid({"modelspec": 1, "name": "t", "model": [{"Scale": {"dims": 4}}]})


def test_committed_schema_has_no_custom_layers() -> None:
    committed = json.loads((ROOT / "schemas" / "modelspec.schema.json").read_text())["$defs"]
    custom = {k for k in committed if k.startswith("layer.")} - {f"layer.{n}" for n in registry._builtin()}
    assert custom == set()


# ---------------------------------------------------------------- load without the plugin
def test_load_of_a_build_whose_plugin_is_missing(tmp_path: Path, registry_restored: None) -> None:
    modelspec.register_layer(Scale)
    modelspec.write_build(HEAD + "model: [{Linear: [4, 4]}, {Scale: 4}]\n", tmp_path / "b")
    assert isinstance(modelspec.load(tmp_path / "b")[1], Scale)
    registry._registered.pop("Scale")
    registry._table.cache_clear()
    with pytest.raises(SpecError) as info:
        modelspec.load(tmp_path / "b")
    [d] = info.value.diagnostics
    assert (d.code, d.file, d.hint) == ("unknown-layer", str(tmp_path / "b" / "spec.yaml"), registry.UNKNOWN_LAYER_HINT)


# ---------------------------------------------------------------- --plugin
def _module(tmp_path: Path, body: str) -> str:
    """A module file in ``tmp_path`` (put on sys.path by the caller) with a fresh name."""
    name = f"plugin_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return name


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("raises", ["raise RuntimeError('no GPU here\\nsecond line')", "import no_such_module_xyz"])
def test_broken_plugin_exits_2_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raises: str) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _module(tmp_path, raises + "\n")
    spec = tmp_path / "s.yaml"
    spec.write_text(HEAD + "model: [{Linear: [4, 4]}]\n")
    code, out, err = _main("build", str(spec), "-o", str(tmp_path / "out"), "--plugin", name)
    assert code == 2 and out == ""
    assert err.startswith(f"modelspec: error[plugin-error]: plugin module '{name}' failed to import: ")
    assert ("RuntimeError: no GPU here\n" if "Runtime" in raises else "ModuleNotFoundError: ") in err
    assert "second line" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_every_spec_command_takes_plugin(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(HEAD + "model: [{Linear: [4, 4]}]\n")
    s = str(spec)
    commands = [["build", s], ["validate", s], ["report", s], ["graph", s], ["grads", s], ["diff", s, s], ["schema"]]
    for command in commands:
        code, _, err = _main(*command, "--plugin", "no_such_plugin_xyz", "--plugin", "modelspec")
        assert (code, err.split(":")[1]) == (2, " error[plugin-error]"), command


def _env(*paths: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*(str(p) for p in paths), str(ROOT)])}


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


PLUGIN = """\
    import torch
    from torch import nn

    import modelspec


    @modelspec.register_layer
    class Scale(nn.Module):
        '''Multiply by a learned per-feature scale.'''

        def __init__(self, dim: int, init: float = 1.0) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.full((dim,), init))

        def forward(self, x):
            return x * self.weight
    """


def test_plugin_option_in_a_subprocess(tmp_path: Path) -> None:
    (tmp_path / "myplug.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "s.yaml").write_text(HEAD + "model:\n  - Linear: [4, 4]\n  - Scale: {dim: 4, init: 0.5}\n")
    env = _env(tmp_path)
    without = _run(["-m", "modelspec", "validate", "s.yaml"], env, tmp_path)
    assert without.returncode == 2 and "error[unknown-layer]" in without.stderr
    built = _run(
        ["-m", "modelspec", "build", "s.yaml", "-o", "out", "--plugin", "myplug", "--format", "json"], env, tmp_path
    )
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["totals"]["unique_params"] == 24
    schema = _run(["-m", "modelspec", "schema", "--plugin", "myplug", "-o", "schemas"], env, tmp_path)
    assert schema.returncode == 0, schema.stderr
    defs = json.loads((tmp_path / "schemas" / "modelspec.schema.json").read_text())["$defs"]
    assert defs["layer.Scale"]["description"].startswith("myplug.Scale(dim, init)")


# ---------------------------------------------------------------- entry points
def _fake_distribution(root: Path, entry_points: str) -> Path:
    """``fakepkg`` 1.0 'installed' in ``root``: a package and its dist-info with entry points.
    ``fakepkg.hidden`` is a module no entry point names: importing it leaves a marker file."""
    (root / "fakepkg").mkdir(parents=True)
    (root / "fakepkg" / "__init__.py").write_text(textwrap.dedent(PLUGIN).replace("@modelspec.register_layer\n", ""))
    (root / "fakepkg" / "hidden.py").write_text(
        "import pathlib\nfrom torch import nn\npathlib.Path(__file__).with_name('IMPORTED').touch()\n"
        "class Hidden(nn.Identity):\n    pass\n"
    )
    info = root / "fakepkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[modelspec.layers]\n" + entry_points)
    return root


ENTRY_POINT_CHECK = """\
import json, sys
import modelspec
from modelspec import SpecError
head = "modelspec: 1\\nname: t\\ninput: {shape: [2, 4]}\\n"
result = {"at_import": "fakepkg" in sys.modules}
modelspec.validate(head + "model: [{Linear: [4, 4]}]\\n")  # names no plugin layer
result["after_plain_spec"] = "fakepkg" in sys.modules
net = modelspec.build(head + "model: [{Linear: [4, 4]}, {FakeScale: {dim: 4, init: 2.0}}]\\n")
result["built"] = [type(m).__module__ + "." + type(m).__name__ for m in net]
try:
    modelspec.validate(head + "model: [{Hidden: null}, {fakepkg.hidden: null}, {FakeScal: 4}]\\n")
except SpecError as e:
    result["errors"] = [[d.code, d.hint] for d in e.diagnostics]
result["hidden_imported"] = "fakepkg.hidden" in sys.modules
print(json.dumps(result))
"""


def test_entry_points_load_lazily_and_never_from_a_spec(tmp_path: Path) -> None:
    site = _fake_distribution(tmp_path / "site", "FakeScale = fakepkg:Scale\n")
    run = _run(["-c", ENTRY_POINT_CHECK], _env(site), tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["at_import"] is False  # import modelspec loads no plugin
    assert result["after_plain_spec"] is True  # the first registry use loads them all
    assert result["built"] == ["torch.nn.modules.linear.Linear", "fakepkg.Scale"]
    assert result["errors"][0][0] == "unknown-layer"  # Hidden: a class in fakepkg.hidden, not declared
    assert "bad-name" in [code for code, _ in result["errors"]]  # a module path is no layer name
    assert result["errors"][-1] == ["unknown-layer", "did you mean 'FakeScale'?"]
    assert result["hidden_imported"] is False and not (site / "fakepkg" / "IMPORTED").exists()


def test_broken_entry_points_are_named_with_their_distribution(tmp_path: Path) -> None:
    site = _fake_distribution(
        tmp_path / "site", "Broken = fakepkg.missing:Layer\nFakeScale = fakepkg:Scale\nLinear = fakepkg:Scale\n"
    )
    (tmp_path / "s.yaml").write_text(HEAD + "model: [{Linear: [4, 4]}]\n")
    run = _run(["-m", "modelspec", "build", "s.yaml", "-o", "out"], _env(site), tmp_path)
    assert run.returncode == 2
    first, *rest = run.stderr.splitlines()
    assert first.startswith(
        "modelspec: error[plugin-error]: entry point 'Broken = fakepkg.missing:Layer' of fakepkg 1.0:"
    )
    assert "ModuleNotFoundError" in first and "Traceback" not in run.stderr
    assert "entry point 'Linear = fakepkg:Scale' of fakepkg 1.0: UsageError[shadowed-layer]" in first
    assert rest == [] and not (tmp_path / "out").exists()


def test_the_readme_examples_run(registry_restored: None) -> None:
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Custom layers (plugins)") : text.index("## Python API")]
    [python] = re.findall(r"```python\n(.*?)```", section, re.S)
    [shipped] = re.findall(r"```yaml\n(.*?)```", section, re.S)
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(python, namespace)  # the README's own example
    net = namespace["net"]
    assert isinstance(net, nn.Sequential) and type(net[1]).__name__ == "Scale"
    nested = "".join(f"    {line}\n" for line in shipped.splitlines())
    built = modelspec.build(f"modelspec: 1\ninput: {{shape: [1, 3, 768]}}\nmodel:\n  nodes:\n{nested}")
    assert built(torch.zeros(1, 3, 768)).shape == (1, 3, 768)


class Projection(nn.Linear):
    """A custom layer with a weight that a transposed tie can read."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)


def test_a_transposed_tie_onto_a_custom_layer_survives_pickle(registry_restored: None) -> None:
    import pickle

    modelspec.register_layer(Projection)
    text = HEAD + (
        "model:\n  enc: {Projection: [4, 3]}\n  dec: {Projection: [3, 4]}\n"
        "ties:\n  - {param: dec.weight, to: enc.weight, transposed: true}\n"
    )
    model = modelspec.build(text)
    assert type(model.dec).__name__ == "TransposedProjection"
    again = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        again.enc.weight.mul_(2.0)
    torch.testing.assert_close(again.dec.weight, again.enc.weight.t(), rtol=0, atol=0)
