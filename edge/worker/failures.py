"""Failures of a stage are counted by the caller and logged here once per burst.

A broken encoder or model fails on every call; logging each one would drown the log. The
first failure of a burst is logged with its traceback, later ones only counted, and the
first success after a burst logs how many failed.
"""

from __future__ import annotations

import sys

import structlog


class BurstLog:
    def __init__(self, logger: structlog.stdlib.BoundLogger, what: str) -> None:
        self.log = logger
        self.what = what
        self.failures = 0  # in the current burst

    def failed(self, detail: str) -> None:
        self.failures += 1
        if self.failures == 1:
            self.log.error("stage failed; the worker carries on, further failures are counted "
                           "and logged when they stop", stage=self.what, detail=detail,
                           exc_info=sys.exc_info()[0] is not None)

    def ok(self) -> None:
        if self.failures:
            self.log.info("stage works again", stage=self.what, failures=self.failures)
            self.failures = 0
