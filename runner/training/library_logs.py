"""While a run trains, the storage libraries' warnings go to log.txt, one line each."""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable, Iterator

from runner.storage import LIBRARY_LOGGERS


@contextlib.contextmanager
def library_logs_to(log: Callable[[str], None]) -> Iterator[None]:
    """While a run trains, the storage libraries' warnings go to log.txt as one line each (the
    first traceback with them, once), never to the terminal, where a person reads runner's
    own one-line account of the same event."""
    handler = _OneLineHandler(log)
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [(logger, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False  # not to the root logger, nor Python's last-resort stderr handler
    try:
        yield
    finally:
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate


class _OneLineHandler(logging.Handler):
    def __init__(self, log: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.write, self.traced = log, False

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # logging must never stop training
            self.write(f"{record.name}: {(record.getMessage().strip().splitlines() or [''])[0]}")
            if record.exc_info and not self.traced:
                self.traced = True
                for line in "".join(traceback.format_exception(*record.exc_info)).rstrip().splitlines():
                    self.write(f"  {line}")
