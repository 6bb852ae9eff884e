"""Wall time and peak memory of a step, for the reports of long flows (the nightly shows them per step).

Peak memory is the largest resident set size sampled while the step runs (every ``interval`` seconds, and
at its end): the process's, including what earlier steps still hold, plus that of the processes the step
started (e.g. the gates' child process), summed at each sample. Processes that were already running when the
step began (Prefect's temporary API server) are not the step's and are left out.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import psutil


@dataclass
class StepFigures:
    step: str
    seconds: float = 0.0
    peak_rss_gb: float = 0.0


@contextmanager
def measured(step: str, interval: float = 0.2):
    """``with measured("rebuild") as fig: ...``; ``fig`` holds the figures once the block exits (also when
    it raises)."""
    proc = psutil.Process()
    before = {p.pid for p in proc.children(recursive=True)}
    fig = StepFigures(step)
    stop = threading.Event()

    def rss() -> int:
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            if child.pid not in before:
                try:
                    total += child.memory_info().rss
                except psutil.Error:  # it ended between the listing and the reading
                    pass
        return total

    peak = [rss()]

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample, name=f"measure-{step}", daemon=True)
    t0 = time.perf_counter()
    sampler.start()
    try:
        yield fig
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], rss())
        fig.seconds = time.perf_counter() - t0
        fig.peak_rss_gb = peak[0] / 1e9


__all__ = ["StepFigures", "measured"]
