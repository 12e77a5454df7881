"""What the machine did during a load run, from the kernel's per-CPU counters (/proc/stat): how busy the
server's CPUs were, and how much of their time the hypervisor gave to other guests (steal). On a shared VM
a server that slows with no change in its load shows as steal here, not in the server's own figures. The
load runner samples the load generator's CPUs too when it is pinned (load_busy_pct, load_steal_pct), so a
report tells a slowed server from a generator or proxy that fell behind.

    with CpuSampler(cpus={1}) as sampler:       # samples every second in a thread
        ...                                     # the run
    sampler.between(t0, t1)                     # {"busy_pct": ..., "steal_pct": ...} over [t0, t1] (time.time())
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from pathlib import Path

PROC_STAT = Path("/proc/stat")
# /proc/stat columns after the name: user nice system idle iowait irq softirq steal (guest time is in user).
_BUSY, _IDLE, _STEAL = (0, 1, 2, 5, 6), (3, 4), 7


def read_counters(cpus: set[int] | None = None) -> tuple[int, int, int] | None:
    """(busy, steal, total) jiffies summed over `cpus` (every CPU when None); None without /proc/stat."""
    try:
        lines = PROC_STAT.read_text().splitlines()
    except OSError:
        return None
    busy = steal = total = 0
    for line in lines:
        name, *values = line.split()
        if not name.startswith("cpu"):
            break
        if name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        numbers = [int(v) for v in values[:8]]
        busy += sum(numbers[i] for i in _BUSY)
        steal += numbers[_STEAL]
        total += sum(numbers)
    return busy, steal, total


class CpuSampler:
    """Samples `read_counters(cpus)` every `period_s` in a daemon thread while open."""

    def __init__(self, cpus: set[int] | None = None, period_s: float = 1.0):
        self.cpus, self.period_s = cpus, period_s
        self.samples: list[tuple[float, tuple[int, int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        counters = read_counters(self.cpus)
        if counters is not None:
            self.samples.append((time.time(), counters))

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def between(self, t0: float, t1: float) -> dict:
        """Busy and stolen shares (%) of the sampled CPUs' time between the samples nearest `t0` and `t1`."""
        times = [t for t, _ in self.samples]
        if len(times) < 2:
            return {"busy_pct": math.nan, "steal_pct": math.nan}
        i = min(bisect.bisect_left(times, t0), len(times) - 2)
        j = max(min(bisect.bisect_left(times, t1), len(times) - 1), i + 1)
        (b0, s0, n0), (b1, s1, n1) = self.samples[i][1], self.samples[j][1]
        total = n1 - n0
        if total <= 0:
            return {"busy_pct": math.nan, "steal_pct": math.nan}
        return {"busy_pct": round(100 * (b1 - b0) / total, 1), "steal_pct": round(100 * (s1 - s0) / total, 1)}
