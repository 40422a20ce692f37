from __future__ import annotations

from pathlib import Path

import pytest

from runner import storage
from runner.errors import RunFailed
from runner.rundir.layout import RunDir, find_runs, open_run


def test_metrics_are_rewritten_at_most_once_a_second_but_the_final_write_always_lands(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path))
    assert run.write_metrics([{"epoch": 1}])
    assert not run.write_metrics([{"epoch": 1}, {"epoch": 2}])  # too soon for GCS: skipped
    assert run.read_metrics() == [{"epoch": 1}]
    assert run.write_metrics([{"epoch": 1}, {"epoch": 2}, {"test_acc": 0.9}], final=True)  # waits its turn
    assert run.read_metrics()[-1] == {"test_acc": 0.9}


def test_a_flush_writes_what_the_rate_limit_held_back_and_nothing_else(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path))
    run.flush_metrics()  # nothing held back: nothing written
    assert not (tmp_path / "metrics.jsonl").exists()
    assert run.write_metrics([{"epoch": 1}])
    assert not run.write_metrics([{"epoch": 1}, {"epoch": 2}])
    run.flush_metrics()  # waits its turn
    assert run.read_metrics() == [{"epoch": 1}, {"epoch": 2}]


def test_only_a_run_directory_looks_like_one(tmp_path: Path) -> None:
    assert not RunDir(str(tmp_path)).looks_like_a_run()
    (tmp_path / "spec.toml").write_text("")
    assert RunDir(str(tmp_path)).looks_like_a_run()


def test_a_store_failing_under_a_run_or_prefix_argument_names_that_argument(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Storage's errors name the URL; the caller names where it came from (a RUN argument of
    # `runner status`, a PREFIX of `runner ls`), not checkpoint.dir.
    (tmp_path / "run").mkdir()

    def down(url: str) -> list[str]:
        raise TimeoutError()  # what gcsfs raises once its retries are spent

    monkeypatch.setattr(storage, "list_names", down)
    with pytest.raises(RunFailed, match=r"^RUN: .*/run is unreachable: no answer in time$"):
        open_run(str(tmp_path / "run"))
    with pytest.raises(RunFailed, match=r"^PREFIX: .* is unreachable: no answer in time$"):
        find_runs(str(tmp_path))
