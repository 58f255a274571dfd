"""What a handler raises to steer its job's outcome other than by returning or failing."""
from __future__ import annotations


class PermanentJobError(Exception):
    """Raised by a handler when retrying cannot help (bad input, missing file): the job
    fails at once with this message."""


class NotReady(Exception):
    """Raised by a handler that waits on other jobs (a parent on its children): the job
    is queued again after ``delay_s`` without spending an attempt, keeping its progress."""

    def __init__(self, delay_s: float = 1.0, progress: float | None = None):
        super().__init__(f"not ready; again in {delay_s} s")
        self.delay_s = float(delay_s)
        self.progress = progress
