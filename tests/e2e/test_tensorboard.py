"""TensorBoard's event files, read back with TensorBoard's own readers: plugin_event_multiplexer,
what `tensorboard --logdir` serves when it reads in Python (`--load_fast=false`; a gs:// folder
through fsspec when TensorFlow is absent, here against the GCS emulator), and the `tensorboard`
command's default reader, its data server (which drops float64 scalars, and ignores the
restart marker a resumed attempt writes)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote
from urllib.request import urlopen

import numpy as np
import pytest

from runner.backends.ports import listen_port
from runner.rundir.layout import RunDir
from tests.helpers import JOBS, REPO

# 41 steps an epoch, a checkpoint every 3; the training loss of every step is logged (a run of
# 82 steps has fewer than 300).
SPEC = [
    "--set=device=cpu",
    "--set=threads=1",
    "--set=batch_size=32",
    "--set=checkpoint.every_steps=3",
    "--quiet",
]
STEPS_PER_EPOCH, STEPS = 41, 82
EPOCH_TAGS = {f"epoch/{key}" for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "samples_per_s")}
INSTALL = "pip install 'runner[tensorboard]'"


def start(run_dir: str, cwd: Path, epochs: int = 2, runner: tuple[str, ...] = ("-m", "runner")) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *runner, "run", str(JOBS / "digits.toml"), *SPEC, f"--set=epochs={epochs}",
         f"--set=checkpoint.dir={run_dir}"],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def read_board(logdir: str) -> tuple[dict[str, list[tuple[int, Any]]], dict[str, Any]]:
    """The one run under `logdir` as TensorBoard serves it: each tag's (step, value) points, in
    order (the value None but for scalars), and the hparams plugin's data by tag."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from tensorboard.util.tensor_util import make_ndarray

    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    (run,) = multiplexer.Runs()
    assert run == "tensorboard" or run.endswith("/tensorboard"), run
    scalars = multiplexer.PluginRunToTagToContent("scalars")[run]
    points = {
        tag: [
            (e.step, make_ndarray(e.tensor_proto).item() if tag in scalars else None)
            for e in multiplexer.Tensors(run, tag)
        ]
        for tag in multiplexer.Runs()[run]["tensors"]
    }
    hparams = {
        tag: HParamsPluginData.FromString(content)
        for tag, content in multiplexer.PluginRunToTagToContent("hparams")[run].items()
    }
    return points, hparams


def served(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the one run under `logdir` as the `tensorboard` command serves them with its
    default reader, the data server (`--load_fast=true` insists on it), over its HTTP API."""
    port = listen_port()  # bound by tensorboard once started: not one a connection can take meanwhile
    command = [sys.executable, "-m", "tensorboard.main", f"--logdir={logdir}", f"--port={port}", "--host=127.0.0.1",
               "--load_fast=true", "--reload_interval=1"]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, tags = time.monotonic() + 30, {}
        while "final/test_acc" not in tags:  # until the whole run is loaded
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, f"tensorboard served no final/test_acc in 30 s, but {tags}"
            time.sleep(0.2)
            with contextlib.suppress(OSError, ValueError):  # not listening yet
                (run, tags), *others = json.load(urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags")).items()
        assert not others
        get = lambda tag: urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run={run}&tag={quote(tag)}")  # noqa: E731
        return {tag: [(step, value) for _, step, value in json.load(get(tag))] for tag in tags}
    finally:
        server.kill()
        server.communicate()


def check_epochs_and_steps(scalars: dict[str, list[tuple[int, Any]]], metrics: list[dict[str, Any]]) -> None:
    """Each epoch scalar: one point per epoch, at its step, equal to metrics.jsonl's record (as
    float32, TensorBoard's scalars); the training loss of every step once, in order; the test results."""
    *epochs, final = metrics
    assert [r["step"] for r in epochs] == [STEPS_PER_EPOCH, STEPS]
    for tag in EPOCH_TAGS:
        assert scalars[tag] == [(r["step"], np.float32(r[tag.removeprefix("epoch/")])) for r in epochs], tag
    steps = [step for step, _ in scalars["step/train_loss"]]
    assert steps == list(range(1, STEPS + 1))
    assert all(math.isfinite(loss) and 0 < loss < 5 for _, loss in scalars["step/train_loss"])
    assert scalars["final/test_acc"] == [(STEPS, np.float32(final["test_acc"]))]
    assert scalars["final/test_loss"] == [(STEPS, np.float32(final["test_loss"]))]


def test_a_run_logs_its_epochs_steps_test_results_and_hyperparameters(tmp_path: Path) -> None:
    finish(start("run", tmp_path))
    scalars, hparams = read_board(str(tmp_path / "run"))

    hparams_tags = {f"_hparams_/{name}" for name in ("experiment", "session_start_info", "session_end_info")}
    assert set(scalars) == EPOCH_TAGS | {"step/train_loss", "final/test_acc", "final/test_loss"} | hparams_tags
    check_epochs_and_steps(scalars, RunDir(str(tmp_path / "run")).read_metrics())
    experiment = hparams["_hparams_/experiment"].experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["final/test_acc"]
    values = hparams["_hparams_/session_start_info"].session_start_info.hparams
    assert values["model"].string_value == "cnn" and values["optimizer"].string_value == "adam"
    assert values["lr"].number_value == 0.001 and values["batch_size"].number_value == 32
    assert values["epochs"].number_value == 2 and values["precision"].string_value == "fp32"
    assert json.loads(values["model_options"].string_value)  # the CNN's options, resolved
    assert hparams["_hparams_/session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS
    assert [p.name for p in (tmp_path / "run" / "tensorboard").iterdir()] == ["events.out.tfevents.00000001.runner"]


def test_a_run_in_a_bucket_is_read_by_tensorboard_from_the_bucket(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorBoard reads gs:// through fsspec (gcsfs) when TensorFlow is absent; gcsfs talks to
    the emulator that STORAGE_EMULATOR_HOST names, over HTTP."""
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # see runner/storage.py
    run_dir = f"{bucket}/runs/digits"
    finish(start(run_dir, tmp_path))
    scalars, hparams = read_board(run_dir)

    check_epochs_and_steps(scalars, RunDir(run_dir).read_metrics())
    assert "_hparams_/session_start_info" in hparams


def newest_checkpoint_step(run_dir: str) -> int:
    entries = RunDir(run_dir).checkpoint_index().refresh()
    return entries[0].step if entries else 0


def logged_steps(run_dir: Path) -> list[int]:
    """The steps of the training loss in the run's event files, read as they are now."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [
        event.step
        for path in sorted((run_dir / "tensorboard").glob("*tfevents*"))
        for event in EventFileLoader(str(path)).Load()
        if any(value.tag == "step/train_loss" for value in event.summary.value)
    ]


def test_a_run_killed_past_a_checkpoint_and_resumed_logs_each_step_once(tmp_path: Path) -> None:
    """SIGKILL once the event file holds steps past the newest checkpoint (mid-epoch): those
    the resumed attempt trains again, and its points must replace the orphaned ones, not add
    to them (its file begins with a SessionLog START at the checkpoint's step + 1)."""
    run_dir, orphaned = tmp_path / "run", []
    for _ in range(4):  # a checkpoint can commit between the look and the kill: then again
        proc = start("run", tmp_path)
        deadline = time.monotonic() + 120
        while proc.poll() is None:
            newest = newest_checkpoint_step(str(run_dir))
            logged = max(logged_steps(run_dir), default=0)
            if 3 <= newest < logged < STEPS_PER_EPOCH:
                proc.kill()
                break
            assert time.monotonic() < deadline, "no checkpoint mid-epoch"
            time.sleep(0.01)
        out, _ = proc.communicate(timeout=60)
        if proc.returncode == 0:  # it trained past the moment unseen (a busy machine): again, from scratch
            shutil.rmtree(run_dir)
            continue
        assert proc.returncode == -9, out  # killed, not finished
        newest, logged = newest_checkpoint_step(str(run_dir)), max(logged_steps(run_dir))
        if logged > newest:
            orphaned = list(range(newest + 1, logged + 1))
            break
    assert orphaned, "every kill came right after a checkpoint: no step was logged past one"
    out = finish(start("run", tmp_path))
    assert f"resumed from step {orphaned[0] - 1} (epoch 1, batch {orphaned[0] - 1})" in out, out

    scalars, hparams = read_board(str(run_dir))
    assert "_hparams_/session_start_info" in hparams
    for tag, points in scalars.items():  # the hyperparameters' too: logged by the first attempt alone
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), (tag, steps)  # each once, in order
    metrics = RunDir(str(run_dir)).read_metrics()
    check_epochs_and_steps(scalars, metrics)
    assert len(list((run_dir / "tensorboard").iterdir())) >= 2  # a file per attempt
    # The default reader: no restart marker, but a step logged again replaces that tag's points
    # from it on, and the resumed attempt logged every orphaned step again.
    by_server = served(run_dir)
    assert by_server == {tag: points for tag, points in scalars.items() if not tag.startswith("_hparams_/")}


def test_without_tensorboard_a_run_trains_and_says_once_how_to_get_it(tmp_path: Path) -> None:
    # `python -m runner` in which `import tensorboard` fails for real: None in sys.modules makes
    # the import system raise ModuleNotFoundError, as it does where the package is not installed.
    blocked = "import runpy, sys; sys.modules['tensorboard'] = None; runpy.run_module('runner', alter_sys=True)"
    out = finish(start("run", tmp_path, epochs=1, runner=("-c", blocked)))
    assert out.count(INSTALL) == 1, out
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    assert not (tmp_path / "run" / "tensorboard").exists()
