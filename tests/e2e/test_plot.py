"""`runner plot`: curves of finished, resumed, killed and bucket runs, overlaid in one image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import storage
from runner.errors import UserError
from runner.rundir.layout import open_run
from runner.use import plot as plots
from tests.helpers import runner_cli, upload

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runs(trained_runs: dict[str, Path]) -> dict[str, Path]:
    return trained_runs


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG)
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # the IHDR chunk


def _test_acc(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["test_acc"]


def test_plot_command_overlays_runs_in_one_png(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    result = runner_cli("plot", "finished", "resumed", "killed", "-o", str(out), cwd=runs["finished"].parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {out}: finished, resumed, killed\n"
    data = out.read_bytes()
    assert _png_size(data) == (1100, 420) and len(data) < 150_000


def test_each_run_is_named_in_the_legend_with_its_curves_and_test_result(runs: dict[str, Path]) -> None:
    curves = [plots.read_curves(open_run(str(runs[name]))) for name in ("finished", "resumed", "killed")]
    loss, acc = plots.figure(curves).axes
    assert [t.get_text() for t in loss.get_legend().get_texts()] == [
        f"{runs['finished']} (test {_test_acc(runs['finished']):.1%})",
        f"{runs['resumed']} (test {_test_acc(runs['resumed']):.1%})",
        str(runs["killed"]),  # no test result: it never finished
    ]
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["train", "val", "test"]
    # Per run: a train and a val line on each axis; a test star for the two that finished.
    assert len(loss.lines) == len(acc.lines) == 3 * 2 + 2
    finished_train, finished_val, finished_test, resumed_train = loss.lines[:4]
    assert list(resumed_train.get_xdata()) == [1, 2] and list(finished_test.get_xdata()) == [1]
    assert finished_val.get_linestyle() == "--" and finished_train.get_color() == finished_test.get_color()
    by_step = plots.figure(curves[1:2], x="step").axes[0]
    assert list(by_step.lines[0].get_xdata()) == [41, 82] and by_step.get_xlabel() == "step"


def test_plot_of_runs_in_a_bucket_into_the_bucket(runs: dict[str, Path], bucket: str) -> None:
    remote = [open_run(upload(runs[name], f"{bucket}/runs/{name}")) for name in ("resumed", "killed")]
    plots.plot_runs(remote, f"{bucket}/plots/curves.svg")
    assert storage.read_bytes(f"{bucket}/plots/curves.svg").startswith(b"<?xml")
    result = runner_cli("plot", remote[0].url, "-o", "curves.png", cwd=runs["finished"].parent)
    assert result.returncode == 0, result.stderr


def test_a_run_without_metrics_yet_and_a_file_that_is_not_an_image(runs: dict[str, Path], tmp_path: Path) -> None:
    started = tmp_path / "started"  # training began: spec.toml, no epoch finished
    started.mkdir()
    (started / "spec.toml").write_bytes((runs["finished"] / "spec.toml").read_bytes())
    result = runner_cli("plot", str(runs["finished"]), "started", "-o", "curves.png", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: started: no metrics yet (no metrics.jsonl: the run has not finished an epoch)\n"
    with pytest.raises(UserError, match=r"-o curves.txt: name an image file ending in .png, .svg, .pdf"):
        plots.plot_runs([open_run(str(runs["finished"]))], "curves.txt")
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("kind", ["png", "svg", "pdf"])
def test_the_same_runs_plot_to_the_same_bytes(runs: dict[str, Path], tmp_path: Path, kind: str) -> None:
    import time

    written = []
    for name in ("a", "b"):
        plots.plot_runs([open_run(str(runs["finished"]))], str(tmp_path / f"{name}.{kind}"))
        written.append((tmp_path / f"{name}.{kind}").read_bytes())
        time.sleep(1.1)  # a PDF's creation date counts seconds
    assert written[0] == written[1]  # no dates, no random SVG ids
