"""The one timing hook of a diarization run: every stage is timed the same way, reported to
the caller's hook as it ends, and kept for the result's ``info["timings"]``."""
from __future__ import annotations

import contextlib
import time
from typing import Callable

#: called with a stage's name and its wall seconds when the stage ends
StageHook = Callable[[str, float], None]


class StageClock:
    """Wall seconds per stage since the run started. A stage nested in another is counted
    in its own time, not in the enclosing stage's."""

    def __init__(self, hook: StageHook | None = None):
        self._hook = hook
        self._started = time.perf_counter()
        self._seconds: dict[str, float] = {}
        # per open stage (the run itself at the bottom): seconds spent in stages nested in it
        self._nested = [0.0]

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        self._nested.append(0.0)
        yield
        elapsed = time.perf_counter() - start
        own = elapsed - self._nested.pop()
        self._nested[-1] += elapsed
        self._seconds[name] = own
        if self._hook is not None:
            self._hook(name, own)

    def timings(self, names: dict[str, str]) -> dict[str, float]:
        """Seconds (to 0.1 ms) of the stages timed so far under their ``names`` (stages not
        named there are left out), in the order they ended, then ``total_s`` for the run."""
        out = {names[stage]: seconds for stage, seconds in self._seconds.items() if stage in names}
        out["total_s"] = time.perf_counter() - self._started
        return {key: round(seconds, 4) for key, seconds in out.items()}
