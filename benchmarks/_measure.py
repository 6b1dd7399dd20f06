"""Timing and memory helpers shared by the benchmark scripts."""

from __future__ import annotations

import resource
import time


class Clock:
    """Wall and process CPU time (all threads) of a block: on a shared machine the CPU rate is the steadier one."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def rates(self, count: int) -> tuple[float, float]:
        return count / self.wall, count / self.cpu


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
