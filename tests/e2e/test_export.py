"""`runner export`: each format loads back in what other programs use and predicts as the
PyTorch model does, for final weights, a killed run's checkpoint, and a run in a bucket."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch

from runner import storage
from runner.errors import UserError
from runner.rundir.layout import open_run
from runner.use import export as exports
from runner.use.trained import load_trained
from tests.conftest import STEPS_PER_EPOCH
from tests.helpers import REPO, read_weights, runner_cli, same_tensors, upload

# torch deprecates TorchScript for new code; loading it back is what this test is for.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


@pytest.fixture
def runs(trained_runs: dict[str, Path]) -> dict[str, Path]:
    return trained_runs


def _pixels(n: int = 5) -> torch.Tensor:
    """Real test digits (uint8 pixels) as float32: what the exported models take."""
    from runner.data.datasets import load_dataset

    return load_dataset("digits", "data", False, 0.1, 0).test.x[:n].float()


def _same_predictions(logits: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(logits.argmax(1), expected.argmax(1))


def test_safetensors_keeps_the_weights_and_metadata(runs: dict[str, Path], tmp_path: Path) -> None:
    from safetensors import safe_open

    final = runs["finished"] / "final" / "model.safetensors"
    with safe_open(final, "pt") as f:
        written_by_the_run = f.metadata()
    # Final weights, and a checkpoint's (same spec, seed and step), whose metadata is made from its spec.
    for name in ("finished", "killed"):
        exports.export(load_trained(open_run(str(runs[name]))), "safetensors", str(tmp_path / name))
        with safe_open(tmp_path / name, "pt") as f:
            assert f.metadata() == written_by_the_run
        assert same_tensors(read_weights(tmp_path / name), read_weights(final))


def test_torchscript_loads_with_torch_jit_and_predicts_the_same(runs: dict[str, Path], tmp_path: Path) -> None:
    trained = load_trained(open_run(str(runs["killed"])))  # a checkpoint's weights
    assert trained.source.startswith(f"checkpoint at step {STEPS_PER_EPOCH}")
    exports.export(trained, "torchscript", str(tmp_path / "model.pt"))
    files = {"runner.json": ""}
    loaded = torch.jit.load(str(tmp_path / "model.pt"), _extra_files=files)
    assert json.loads(files["runner.json"]) == trained.metadata
    x = _pixels()
    with torch.no_grad():
        _same_predictions(loaded(x), trained.model(x))
        assert loaded(x[:1]).shape == (1, 10)  # any batch size


def test_onnx_passes_the_checker_and_onnxruntime_predicts_the_same(runs: dict[str, Path], tmp_path: Path) -> None:
    import onnx
    import onnxruntime

    trained = load_trained(open_run(str(runs["finished"])))
    exports.export(trained, "onnx", str(tmp_path / "model.onnx"))
    model = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert {p.key: p.value for p in model.metadata_props} == trained.metadata
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixels"]
    x = _pixels()
    with torch.no_grad():
        expected = trained.model(x)
    for batch in (x, x[:1]):  # the batch dimension is dynamic
        (logits,) = session.run(["logits"], {"pixels": batch.numpy()})
        _same_predictions(torch.from_numpy(logits), expected[: len(batch)])


def test_export_command_from_a_bucket(runs: dict[str, Path], bucket: str, tmp_path: Path) -> None:
    run = upload(runs["resumed"], f"{bucket}/runs/resumed")
    result = runner_cli("export", run, "--format", "torchscript", "-o", "out/model.pt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote out/model.pt (torchscript, ")
    assert result.stdout.rstrip().endswith(f"MB) from final weights ({run}/final/model.safetensors)")
    loaded = torch.jit.load(str(tmp_path / "out" / "model.pt"))
    trained = load_trained(open_run(str(runs["resumed"])))
    x = _pixels()
    with torch.no_grad():
        _same_predictions(loaded(x), trained.model(x))
    # And into the bucket, from a checkpoint picked by step: any URL goes.
    older = f"{bucket}/exports/step-{STEPS_PER_EPOCH}.safetensors"
    trained = load_trained(open_run(run), checkpoint=str(STEPS_PER_EPOCH))
    exports.export(trained, "safetensors", older)
    from safetensors.torch import load

    assert same_tensors(load(storage.read_bytes(older)), read_weights(runs["finished"] / "final" / "model.safetensors"))


def test_every_format_is_the_same_bytes_whatever_order_its_metadata_came_in(runs: dict[str, Path]) -> None:
    # Files written before safetensors_file held their metadata in a random order; a checkpoint's
    # is built from its spec. Either way the same model and metadata export to the same bytes.
    import zipfile

    trained = load_trained(open_run(str(runs["finished"])))
    shuffled = dataclasses.replace(trained, metadata=dict(reversed(trained.metadata.items())))
    assert exports.to_safetensors(trained) == exports.to_safetensors(shuffled)
    onnx = exports.to_onnx(trained)
    assert onnx == exports.to_onnx(shuffled)
    # TorchScript numbers its classes per process (___torch_mangle_N): a second trace in one process
    # differs there, so compare what the metadata goes into (`runner export` is a process of its own).
    extras = [zipfile.ZipFile(io.BytesIO(exports.to_torchscript(t))) for t in (trained, shuffled)]
    assert len({z.read(next(n for n in z.namelist() if n.endswith("/extra/runner.json"))) for z in extras}) == 1
    # ONNX: no stack traces naming this checkout's files (the same model from another checkout, the same bytes).
    assert str(REPO).encode() not in onnx and exports.STACK_TRACE.encode() not in onnx


def test_onnx_without_its_packages_names_the_extra_to_install() -> None:
    exports.require(exports.ONNX_MODULES)  # installed with the test extra, so the ONNX test runs in CI
    with pytest.raises(UserError) as caught:
        exports.require(("onnx", "onnxscript_not_installed"))
    assert str(caught.value) == (
        "--format onnx needs the packages onnxscript_not_installed (not installed): pip install 'runner[onnx]'"
    )


def test_a_run_without_weights_yet(tmp_path: Path, runs: dict[str, Path]) -> None:
    started = tmp_path / "started"  # spec.toml written, no checkpoint committed yet
    started.mkdir()
    (started / "spec.toml").write_bytes((runs["finished"] / "spec.toml").read_bytes())
    with pytest.raises(UserError, match=r"started: no weights yet \(no final/model.safetensors and no committed"):
        load_trained(open_run(str(started)))
