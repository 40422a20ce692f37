"""Your own model, `model = "module:factory"`: the reference, the spec's `code`, and the
build of a factory's model with every way it can go wrong (in process; the CLI's exit
codes are in tests/e2e/test_user_model.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from runner.errors import UserError
from runner.models.registry import build_model, options_type
from runner.models.user import build_user_model, check_ref, code_roots
from runner.spec import JobSpec, load_spec, resume_conflicts, validate_spec
from tests.helpers import JOBS

NETS = """\
import torch
from torch import nn


def small(input_shape, num_classes, hidden=8, dropout=0.0, frozen=False):
    c, h, w = input_shape
    net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    net[2].train(not frozen)
    return net


def raises(input_shape, num_classes):
    return helper(num_classes)


def helper(n):
    raise ValueError(f"no net for {n} classes")


def not_a_module(input_shape, num_classes):
    return [nn.Linear(1, 1)]


def wrong_outputs(input_shape, num_classes):
    return nn.Flatten()


NOT_CALLABLE = 3


class Noisy(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.LazyLinear(num_classes)  # its weights are drawn at the first forward pass

    def forward(self, x):
        return self.fc(x.flatten(1)) + torch.rand(1)


def noisy(input_shape, num_classes):
    return Noisy(num_classes)
"""


@pytest.fixture
def nets(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, str]:
    """A module of factories under a name of its own (sys.modules keeps what one test imported)."""
    name = f"nets_{request.node.name.split('[')[0].removeprefix('test_')[:40]}"
    path = tmp_path / f"{name}.py"
    path.write_text(NETS)
    yield name, str(path)
    sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("ref", ["mynets:small", "pkg.sub.mod:build_v2", "_m:_f"])
def test_well_formed_references(ref: str) -> None:
    assert check_ref(ref) == ref


@pytest.mark.parametrize("ref", ["mynets:", ":f", "my-nets:f", "a:b:c", "a.:f", "a:f()", "my nets:f"])
def test_malformed_references_say_how_to_write_one(ref: str) -> None:
    with pytest.raises(ValueError, match=r'write "package\.module:factory"'):
        check_ref(ref)


def spec_with(tmp_path: Path, lines: str) -> Path:
    spec = tmp_path / "job.toml"
    spec.write_text((JOBS / "digits.toml").read_text().replace('model = "cnn"', lines))
    return spec


def test_code_is_resolved_against_the_specs_folder_and_options_are_free_form(tmp_path: Path) -> None:
    (tmp_path / "mynets.py").write_text(NETS)
    (tmp_path / "pkg").mkdir()
    spec = spec_with(tmp_path, 'model = "mynets:small"\ncode = ["mynets.py", "pkg"]\nmodel_options = {hidden = 4}')
    loaded = load_spec(str(spec))
    assert loaded.code == [str(tmp_path / "mynets.py"), str(tmp_path / "pkg")]
    assert loaded.model_options == {"hidden": 4}
    assert code_roots(loaded.code) == [str(tmp_path)]
    # Saved with absolute paths, the spec loads back unchanged from anywhere (the run directory).
    assert validate_spec(loaded.model_dump(), "saved") == loaded


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ('["gone.py"]', r"code: 'gone.py': no such file or folder \(.*gone\.py\); paths are relative to the spec's"),
        ('["notes.txt"]', r"code: 'notes.txt': not a \.py file or a package folder"),
        ('["mynets.py", "sub/mynets.py"]', r"code: 'sub/mynets.py': module name 'mynets' is taken by 'mynets.py'"),
        ('["runner.py"]', r"code: 'runner.py': module name 'runner' is taken by runner itself"),
        ('["random.py"]', r"code: 'random.py': 'random' is a module of Python's standard library; rename yours"),
    ],
)
def test_bad_code_entries_are_named(tmp_path: Path, code: str, message: str) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("mynets.py", "sub/mynets.py", "notes.txt", "runner.py", "random.py"):
        (tmp_path / name).write_text("")
    with pytest.raises(UserError, match=message):
        load_spec(str(spec_with(tmp_path, f'model = "mynets:small"\ncode = {code}')))


def test_a_user_model_is_not_looked_up_among_the_built_in_ones(tmp_path: Path) -> None:
    assert options_type("mynets:small").model_validate({"anything": [1, 2]}).model_extra == {"anything": [1, 2]}
    with pytest.raises(UserError, match=r"model: 'cnn:' is not a model reference"):
        load_spec(str(spec_with(tmp_path, 'model = "cnn:"')))


def test_code_may_move_on_resume_the_model_may_not(tmp_path: Path) -> None:
    (tmp_path / "mynets.py").write_text(NETS)
    spec = load_spec(str(spec_with(tmp_path, 'model = "mynets:small"\ncode = ["mynets.py"]')))
    moved = spec.model_dump(mode="json") | {"code": ["/opt/runner/code/mynets.py"]}
    assert resume_conflicts(moved, spec) == []
    other = spec.model_dump(mode="json") | {"model": "mynets:other"}
    assert resume_conflicts(other, spec) == ["model ('mynets:other' -> 'mynets:small')"]
    assert JobSpec.model_fields["code"].default == []


def test_the_factory_gets_the_shape_classes_and_options_and_its_model_is_used(nets: tuple[str, str]) -> None:
    name, path = nets
    torch.manual_seed(0)
    model = build_model(f"{name}:small", {"hidden": 5, "dropout": 0.5}, (3, 4, 4), 7, [path])
    assert [m.__class__.__name__ for m in model] == ["Flatten", "Linear", "Dropout", "Linear"]
    assert model[1].in_features == 48 and model[1].out_features == 5 and model[3].out_features == 7
    assert model.training  # as the factory made it: the check runs in eval mode, then restores it
    frozen = build_model(f"{name}:small", {"frozen": True}, (3, 4, 4), 7, [path])
    assert [m.training for m in frozen] == [True, True, False, True]  # the factory's frozen dropout stays so


def test_the_check_leaves_the_random_stream_where_the_factory_left_it(nets: tuple[str, str]) -> None:
    """Mutation: without the forked RNG around the check's forward pass, the draws after a
    build differ from those after calling the factory alone (so would dropout's in training)."""
    name, path = nets
    torch.manual_seed(0)
    model = build_model(f"{name}:noisy", {}, (1, 4, 4), 3, [path])
    after_build = torch.rand(4)
    torch.manual_seed(0)
    sys.modules[name].noisy((1, 4, 4), 3)
    assert torch.equal(after_build, torch.rand(4))
    assert model.fc.weight.shape == (3, 16)  # the lazy layer is real now: a state dict loads into it


@pytest.mark.parametrize(
    ("factory", "options", "message"),
    [
        ("raises", {}, r"raised ValueError: no net for 10 classes \(.*nets_\w+\.py, line 17\)$"),
        (
            "small",
            {"depth": 2},
            r"raised TypeError: small\(\) got an unexpected keyword argument 'depth'; check \[model_options\] against its parameters$",
        ),
        ("not_a_module", {}, r"model: nets_\w+:not_a_module returned builtins\.list, not a torch\.nn\.Module$"),
        ("wrong_outputs", {}, r"returned shape \(2, 784\) for inputs of shape \(2, 1, 28, 28\); .* \(2, 10\)"),
        ("absent", {}, r"model: module 'nets_\w+' has no 'absent'; it has: Noisy, helper, .*, wrong_outputs$"),
        ("NOT_CALLABLE", {}, r"model: nets_\w+:NOT_CALLABLE is not callable \(it is int\); name a function"),
    ],
)
def test_each_way_a_factory_fails_is_one_line(nets: tuple[str, str], factory: str, options: dict, message: str) -> None:
    name, path = nets
    with pytest.raises(UserError, match=message) as caught:
        build_user_model(f"{name}:{factory}", options, (1, 28, 28), 10, [path])
    assert "\n" not in str(caught.value)


def test_a_module_that_fails_to_import_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "broken_at_import.py").write_text("import torch\n\nx = 1 / 0\n")
    (tmp_path / "broken_syntax.py").write_text("def f(:\n")
    (tmp_path / "needs_a_package.py").write_text("import no_such_package_here\n")
    code = [str(tmp_path / n) for n in ("broken_at_import.py", "broken_syntax.py", "needs_a_package.py")]
    cases = {
        "broken_at_import": r"importing 'broken_at_import' failed: ZeroDivisionError: division by zero \(.*, line 3\)$",
        "broken_syntax": r"importing 'broken_syntax' failed: SyntaxError: invalid syntax \(.*broken_syntax\.py, line 1\)$",
        "needs_a_package": r"failed: ModuleNotFoundError: No module named 'no_such_package_here' \(.*, line 1\)$",
    }
    for module, message in cases.items():
        with pytest.raises(UserError, match=message):
            build_user_model(f"{module}:f", {}, (1, 8, 8), 10, code)


def test_a_module_that_is_nowhere_says_where_to_put_it() -> None:
    with pytest.raises(UserError, match=r"no module named 'nowhere_nets' \(of nowhere_nets:f\); list its file"):
        build_user_model("nowhere_nets:f", {}, (1, 8, 8), 10)
    # The use side, where the run's code was somewhere this machine does not have.
    with pytest.raises(UserError, match=r"the run's code \(/opt/runner/code/nowhere_nets.py\) is not on this machine"):
        build_user_model("nowhere_nets:f", {}, (1, 8, 8), 10, ["/opt/runner/code/nowhere_nets.py"])


def test_a_notebook_embeds_the_code_as_text_within_a_bound() -> None:
    from runner.backends.notebook import MAX_CODE_BYTES, embedded_code

    assert embedded_code({"mynets.py": b"WIDTH = 3\n"}) == {"mynets.py": "WIDTH = 3\n"}
    with pytest.raises(UserError, match=r"code: pkg/blob.py is not UTF-8 text"):
        embedded_code({"pkg/blob.py": b"\xff\xfe"})
    with pytest.raises(UserError, match=r"more than the 1,000,000 a notebook embeds"):
        embedded_code({"big.py": b"#" * (MAX_CODE_BYTES + 1)})
