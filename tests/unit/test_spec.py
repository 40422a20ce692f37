from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from runner.errors import UserError
from runner.spec import load_spec, parse_override, resume_conflicts, to_toml, validate_spec
from tests.helpers import JOBS

EXAMPLES = sorted(JOBS.glob("*.toml"))


def test_the_four_example_specs_exist() -> None:
    assert {p.stem for p in EXAMPLES} >= {"cnn", "mlp", "digits", "cifar10"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_spec_parses_and_round_trips(path: Path, tmp_path: Path) -> None:
    spec = load_spec(str(path))
    assert spec.name == path.stem
    assert spec.checkpoint.dir == f"runs/{spec.name}"
    resolved = tmp_path / "resolved.toml"
    resolved.write_text(to_toml(spec))
    assert load_spec(str(resolved)) == spec


def test_defaults_are_filled_in() -> None:
    spec = load_spec(str(JOBS / "digits.toml"))
    assert spec.model_options == {"channels": [32, 64], "hidden": 128, "dropout": [0.25, 0.5]}
    assert spec.precision == "auto" and spec.threads == 0 and spec.data.download is True


def test_mlp_spec_is_the_tutorial_network() -> None:
    assert load_spec(str(JOBS / "mlp.toml")).model_options["hidden"] == [64, 64, 64]


def test_overrides_are_typed_like_the_toml_field() -> None:
    spec = load_spec(
        str(JOBS / "mlp.toml"),
        [
            "epochs=1",
            "lr=0.5",
            "data.root=/mnt/data sets",
            "data.download=false",
            "model_options.hidden=[32]",
            "device=cuda:1",
            "checkpoint.dir=gs://bucket/runs/x",
        ],
    )
    assert spec.epochs == 1 and spec.lr == 0.5
    assert spec.data.root == "/mnt/data sets" and spec.data.download is False
    assert spec.model_options["hidden"] == [32]
    assert spec.device == "cuda:1"
    assert spec.checkpoint.dir == "gs://bucket/runs/x"  # a URL stays a string


def test_a_bare_number_is_a_cpu_or_memory_quantity_as_in_a_manifest() -> None:
    spec = load_spec(str(JOBS / "mlp.toml"), ["resources.cpu=1", "resources.memory=1000000"])
    assert (spec.resources.cpu, spec.resources.memory) == ("1", "1000000")
    with pytest.raises(UserError, match="resources.cpu"):
        load_spec(str(JOBS / "mlp.toml"), ["resources.cpu=true"])


def test_later_override_wins() -> None:
    assert load_spec(str(JOBS / "mlp.toml"), ["epochs=2", "epochs=3"]).epochs == 3


@pytest.mark.parametrize(
    ("text", "keys", "value"),
    [
        ("epochs=3", ["epochs"], 3),
        ("data.root=/x", ["data", "root"], "/x"),
        ("name=my-job", ["name"], "my-job"),
        ("lr=1e-3", ["lr"], 1e-3),
        ("data.download=true", ["data", "download"], True),
        ('name="quoted"', ["name"], "quoted"),
        ("x=a=b", ["x"], "a=b"),
    ],
)
def test_parse_override(text: str, keys: list[str], value: object) -> None:
    assert parse_override(text) == (keys, value)


@pytest.mark.parametrize("text", ["epochs", "=3", "a..b=1", "a b=1"])
def test_malformed_override(text: str) -> None:
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_override(text)


def test_all_errors_are_reported_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\nmodel = "cnn"\nepoch = 3\nlr = -1\n[data]\ndataset = "digits"\n')
    with pytest.raises(UserError) as info:
        load_spec(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert f"{path}: epoch: unknown key (did you mean 'epochs'?)" in message
    assert f"{path}: lr: Input should be greater than 0" in message


def test_an_error_caused_by_an_override_names_the_override() -> None:
    with pytest.raises(UserError, match=r"^--set batch_size=0: batch_size: Input should be greater"):
        load_spec(str(JOBS / "mlp.toml"), ["batch_size=0"])


def test_compile_is_off_by_default_and_may_change_on_resume() -> None:
    spec = load_spec(str(JOBS / "cnn.toml"))
    assert spec.compile is False
    compiled = load_spec(str(JOBS / "cnn.toml"), ["compile=true"])
    assert compiled.compile is True
    # How the model is computed, like device and precision, not what is trained.
    assert resume_conflicts(spec.model_dump(mode="json"), compiled) == []


def test_compile_takes_a_boolean() -> None:
    with pytest.raises(UserError, match=r"^--set compile=maybe: compile: Input should be a valid boolean"):
        load_spec(str(JOBS / "cnn.toml"), ["compile=maybe"])


def test_the_readmes_spec_listing_is_a_valid_spec_naming_every_key() -> None:
    # The README's "The job spec" is where a user looks a key up: it must load, and miss none.
    from runner.spec import _flatten
    from tests.helpers import REPO

    readme = (REPO / "README.md").read_text()
    start = readme.index("```toml", readme.index("## The job spec")) + len("```toml")
    listed = tomllib.loads(readme[start : readme.index("```", start)])
    spec = validate_spec(listed, "README.md")
    # Commented alternatives name the image-folder keys (they are refused for mnist).
    image_folder_only = {"data.image_size", "data.channels", "data.strict", "data.test_fraction", "data.cache"}
    missing = set(_flatten(spec.model_dump(mode="json"))) - set(_flatten(listed)) - image_folder_only
    assert not missing, f"keys the README's spec listing does not show: {sorted(missing)}"
    assert all(key in readme[start : readme.index("```", start)] for key in ("image_size", "channels", "strict"))
