"""While a run trains, the storage libraries' logged retries and tracebacks go to log.txt
as one line each (the first traceback once), never to the terminal."""

from __future__ import annotations

import logging

import pytest

from runner.training.library_logs import library_logs_to


def test_gcsfs_errors_go_to_the_log_as_one_line_and_the_first_traceback_once(capfd: pytest.CaptureFixture) -> None:
    lines: list[str] = []
    gcsfs = logging.getLogger("gcsfs")
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
    assert gcsfs.propagate and not gcsfs.handlers  # restored afterwards
