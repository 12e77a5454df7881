"""What the machine did during a load run: from the kernel's per-CPU counters (/proc/stat), how busy the
server's CPUs were and how much of their time the hypervisor gave to other guests (steal); and, from the server's
own processes (tritonserver and its python stubs), how much CPU time they used and how much memory they held. On
a shared VM a server that slows with no change in its load shows as steal here, not in the server's own figures;
a server whose work per call changes shows as its own CPU time per answered call (which other processes on its
CPUs do not move); a server that leaks shows as resident memory that grows at a steady load. The load runner
samples the load generator's CPUs too when it is pinned (load_busy_pct, load_steal_pct), so a report tells a
slowed server from a generator or proxy that fell behind.

    with Sampler(cpus={1}, pid=server_pid) as sampler:  # samples every second in a thread
        ...                                             # the run
    sampler.between(t0, t1)  # {"busy_pct", "steal_pct", "server_cpu_pct", "rss_mib"} over [t0, t1] (time.time())

"""

from __future__ import annotations

import bisect
import math
import threading
import time
from pathlib import Path

import psutil

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


def tree_usage(pid: int) -> tuple[int, float] | None:
    """(resident bytes, CPU seconds used so far) of process `pid` and all its descendants (the server and its
    python stubs); None once it is gone. A child that exits while it is read is left out."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    rss, cpu_s = 0, 0.0
    for process in processes:
        try:
            with process.oneshot():
                rss += process.memory_info().rss
                times = process.cpu_times()
                cpu_s += times.user + times.system
        except psutil.Error:
            continue
    return rss, cpu_s


class Sampler:
    """Samples `read_counters(cpus)`, and `tree_usage(pid)` when a pid is given, every `period_s` in a daemon
    thread while open."""

    def __init__(self, cpus: set[int] | None = None, period_s: float = 1.0, pid: int | None = None):
        self.cpus, self.period_s, self.pid = cpus, period_s, pid
        self.samples: list[tuple[float, tuple[int, int, int]]] = []
        self.usage: list[tuple[float, int, float]] = []  # (time, resident bytes, CPU seconds) while it lives
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="machine-sampler", daemon=True)

    def _sample(self) -> None:
        counters = read_counters(self.cpus)
        if counters is not None:
            self.samples.append((time.time(), counters))
        usage = tree_usage(self.pid) if self.pid is not None else None
        if usage is not None:
            self.usage.append((time.time(), *usage))

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def __enter__(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def between(self, t0: float, t1: float) -> dict:
        """Busy and stolen shares (%) of the sampled CPUs' time between the samples nearest `t0` and `t1`; with
        a pid, the process tree's own CPU time as a share of one CPU (server_cpu_pct, over 100 when it used
        more than one) over the same kind of span, and its largest resident memory (MiB) sampled in [t0, t1],
        or the last sample before when none falls inside (rss_mib)."""
        return self._cpus_between(t0, t1) | (self._tree_between(t0, t1) if self.pid is not None else {})

    def _tree_between(self, t0: float, t1: float) -> dict:
        times = [t for t, _, _ in self.usage]
        if not times:
            return {"server_cpu_pct": math.nan, "rss_mib": math.nan}
        inside = [rss for t, rss, _ in self.usage if t0 <= t <= t1]
        before = max(bisect.bisect_right(times, t0) - 1, 0)
        rss = max(inside) if inside else self.usage[before][1]
        figures = {"server_cpu_pct": math.nan, "rss_mib": round(rss / 2**20, 1)}
        if len(times) >= 2:
            i, j = _nearest(times, t0, t1)
            (a, _, c0), (b, _, c1) = self.usage[i], self.usage[j]
            if b > a and c1 >= c0:  # a stub that exited takes its CPU time with it: no figure then
                figures["server_cpu_pct"] = round(100 * (c1 - c0) / (b - a), 1)
        return figures

    def _cpus_between(self, t0: float, t1: float) -> dict:
        times = [t for t, _ in self.samples]
        if len(times) < 2:
            return {"busy_pct": math.nan, "steal_pct": math.nan}
        i, j = _nearest(times, t0, t1)
        (b0, s0, n0), (b1, s1, n1) = self.samples[i][1], self.samples[j][1]
        total = n1 - n0
        if total <= 0:
            return {"busy_pct": math.nan, "steal_pct": math.nan}
        return {"busy_pct": round(100 * (b1 - b0) / total, 1), "steal_pct": round(100 * (s1 - s0) / total, 1)}


def _nearest(times: list[float], t0: float, t1: float) -> tuple[int, int]:
    """The indices of the first samples at or after `t0` and `t1`, at least one sample apart (of >= 2)."""
    i = min(bisect.bisect_left(times, t0), len(times) - 2)
    return i, max(min(bisect.bisect_left(times, t1), len(times) - 1), i + 1)
