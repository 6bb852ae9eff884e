"""Step figures: wall time and peak memory, including the processes a step starts."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from infra.resources import measured

HOLD = 400_000_000  # bytes a child process holds (every page touched, so resident)


def _holder(seconds: float) -> list[str]:
    return [sys.executable, "-c",
            f"import time; b = bytearray({HOLD}); b[::4096] = b'x' * len(b[::4096]); time.sleep({seconds})"]


def test_peak_memory_counts_the_processes_the_step_started():
    own = psutil.Process().memory_info().rss
    with measured("child", interval=0.1) as fig:
        subprocess.run(_holder(1.5), check=True)
    assert fig.seconds >= 1.5
    assert fig.peak_rss_gb * 1e9 >= own + HOLD * 0.9


def test_processes_running_before_the_step_are_not_its_own():
    before = subprocess.Popen(_holder(60))
    try:
        child = psutil.Process(before.pid)
        deadline = time.monotonic() + 30
        while child.memory_info().rss < HOLD * 0.9 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.memory_info().rss >= HOLD * 0.9
        with measured("own", interval=0.05) as fig:
            time.sleep(0.3)
        assert fig.peak_rss_gb * 1e9 < psutil.Process().memory_info().rss + HOLD * 0.5
    finally:
        before.kill()
        before.wait()
