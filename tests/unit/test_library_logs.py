"""While a run trains, the storage libraries' logged retries and tracebacks go to log.txt
as one line each (the first traceback once), never to the terminal."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from runner.training.library_logs import library_logs_to


def test_gcsfs_errors_go_to_the_log_as_one_line_and_the_first_traceback_once(capfd: pytest.CaptureFixture) -> None:
    lines: list[str] = []
    gcsfs = logging.getLogger("gcsfs")
    before = list(gcsfs.handlers)
    with library_logs_to(lines.append):
        for attempt in range(3):
            try:
                raise ConnectionResetError(f"reset by peer, attempt {attempt}")
            except ConnectionResetError as e:
                gcsfs.exception(f"_request out of retries on exception: {e}")  # what gcsfs/retry.py does
        logging.getLogger("fsspec").warning("a warning\nover two lines")
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # nothing on the terminal
    headlines = [line for line in lines if not line.startswith("  ")]
    assert headlines == [
        *(f"gcsfs: _request out of retries on exception: reset by peer, attempt {n}" for n in range(3)),
        "fsspec: a warning",
    ]
    traceback = [line for line in lines if line.startswith("  ")]
    assert traceback[0] == "  Traceback (most recent call last):" and sum("Traceback" in t for t in traceback) == 1
    assert gcsfs.propagate and gcsfs.handlers == before  # restored afterwards


def test_outside_a_run_the_storage_libraries_tracebacks_stay_off_the_terminal() -> None:
    # eval, predict, a data.root in a bucket: runner's own line says what failed. Without a handler
    # of their own, gcsfs's logger.exception records reach Python's last-resort stderr handler.
    code = """if True:
        import logging
        import runner.storage
        try:
            raise ConnectionError("Cannot connect to host storage.googleapis.com:443")
        except ConnectionError as e:
            logging.getLogger("gcsfs").exception(f"_request out of retries on exception: {e}")
        logging.getLogger("fsspec").warning("a warning")
    """
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
