"""The machine's own speed during a load run: a fixed piece of work, timed in CPU milliseconds every few seconds
on the server's CPUs by a small process of its own. On a shared VM the cost of the same work moves by a quarter
within minutes with no steal to show for it (the hypervisor's neighbours share caches, memory bandwidth and
clocks); the server's CPU time per answered call moves with it. Beside that cost, this figure tells a machine
that slowed (both move together) from a server whose work per call grew (only the server's moves).

    with Probe(cpus={1}) as probe:   # a child process pinned to CPU 1, one sample every 5 s
        ...                          # the run
    probe.between(t0, t1)            # {"machine_ms": median CPU ms of the work sampled in [t0, t1]}

The work is a mix like a query's: a small float32 matrix product (compute, in cache), a pass over 16 MB
(memory bandwidth) and an interpreter loop, on one thread: about 4 ms of CPU on a 2026 EPYC core, timed
3 times per sample, so one sample every 5 s takes 0.25% of a CPU. CPU time, not wall time: waiting for the CPU behind the server does not count, so the figure
is the same at any load unless the machine itself changed.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time

PERIOD_S = 5.0
REPEATS = 3  # each sample: the median of this many timings of the work
# BLAS, OpenMP and friends on one thread: the work is timed on one CPU and must not spill onto others
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def work_ms(state: dict) -> float:
    """The CPU time (ms) of one run of the fixed work, on arrays made once (`state`)."""
    import numpy as np

    if not state:
        rng = np.random.default_rng(0)
        state["a"] = rng.standard_normal((128, 128), dtype=np.float32)
        state["big"] = rng.standard_normal(1 << 22, dtype=np.float32)  # 16 MB
        state["out"] = np.empty_like(state["big"])
    a, big, out = state["a"], state["big"], state["out"]
    started = time.process_time()
    for _ in range(8):
        a @ a
    np.multiply(big, 1.0001, out=out)
    float(out.sum())
    total = 0
    for i in range(20_000):
        total += i % 7
    return (time.process_time() - started) * 1e3


def main(argv: list[str] | None = None) -> None:
    """The probe's process: pins itself, then prints `{"t": unix time, "ms": CPU ms}` per sample until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", default="", help="comma-separated CPUs to run on (default: any)")
    parser.add_argument("--period", type=float, default=PERIOD_S)
    args = parser.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    state: dict = {}
    work_ms(state)  # the first run pages the arrays in
    while True:
        ms = statistics.median(work_ms(state) for _ in range(REPEATS))
        print(json.dumps({"t": time.time(), "ms": round(ms, 3)}), flush=True)
        time.sleep(args.period)


class Probe:
    """Runs `main` in a child process on `cpus` while open and keeps its samples [(unix time, CPU ms)]."""

    def __init__(self, cpus: set[int] | None = None, period_s: float = PERIOD_S):
        self.cpus, self.period_s = cpus, period_s
        self.samples: list[tuple[float, float]] = []
        self._sampled = threading.Condition()
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Probe:
        command = [sys.executable, "-m", "llmrec.loadtest.speed", "--period", str(self.period_s)]
        if self.cpus:
            command += ["--cpus", ",".join(str(c) for c in sorted(self.cpus))]
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ | ONE_THREAD
        )
        self._reader = threading.Thread(target=self._read, name="speed-probe", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            sample = json.loads(line)
            with self._sampled:
                self.samples.append((sample["t"], sample["ms"]))
                self._sampled.notify_all()

    def wait_for(self, count: int, timeout_s: float) -> bool:
        """Whether `count` samples arrived within `timeout_s`."""
        with self._sampled:
            return self._sampled.wait_for(lambda: len(self.samples) >= count, timeout_s)

    def __exit__(self, *exc) -> None:
        self._process.kill()
        self._process.wait()
        self._reader.join(timeout=5)

    def between(self, t0: float, t1: float) -> dict:
        """The median CPU ms of the work sampled in [t0, t1], or of the sample nearest the span when none falls
        inside (a span shorter than the period); NaN before the first sample."""
        if not self.samples:
            return {"machine_ms": math.nan}
        times = [t for t, _ in self.samples]
        inside = [
            ms for t, ms in self.samples[bisect.bisect_left(times, t0) : bisect.bisect_right(times, t1)]
        ]
        if not inside:
            nearest = min(range(len(times)), key=lambda i: min(abs(times[i] - t0), abs(times[i] - t1)))
            inside = [self.samples[nearest][1]]
        return {"machine_ms": round(statistics.median(inside), 3)}


if __name__ == "__main__":
    main()
