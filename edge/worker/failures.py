"""Failures of a stage are counted by the caller and logged here once per burst.

A broken encoder or model fails on every call; logging each one would drown the log. The
first failure of a burst is logged with its traceback, later ones only counted, and the
first success after a burst logs how many failed.
"""

from __future__ import annotations

import logging
import sys


class BurstLog:
    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.log = logger
        self.what = what
        self.failures = 0  # in the current burst

    def failed(self, detail: str) -> None:
        self.failures += 1
        if self.failures == 1:
            self.log.error("%s failed (%s); the worker carries on, further failures are "
                           "counted and logged when they stop", self.what, detail,
                           exc_info=sys.exc_info()[0] is not None)

    def ok(self) -> None:
        if self.failures:
            self.log.warning("%s works again after %d failure(s)", self.what, self.failures)
            self.failures = 0
