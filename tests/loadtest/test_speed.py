"""The machine's speed during a load run (llmrec.loadtest.speed): a fixed piece of work timed in CPU ms by a
child process pinned to the server's CPUs."""

import math
import os
import statistics
import subprocess
import sys

import psutil

from llmrec.loadtest import speed


def test_the_probe_times_the_work_on_its_cpu_and_leaves_no_process():
    cpu = max(os.sched_getaffinity(0))
    with speed.Probe({cpu}, period_s=0.2) as probe:
        child = psutil.Process(probe._process.pid)
        probe.wait_for(4, timeout_s=20)
        assert child.cpu_affinity() == [cpu]
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert len(probe.samples) >= 4, probe.samples
    times = [t for t, _ in probe.samples]
    assert times == sorted(times) and all(0.1 < ms < 1_000 for _, ms in probe.samples), probe.samples
    assert probe.between(times[0], times[-1])["machine_ms"] > 0


def test_a_span_gets_the_median_inside_it_or_the_nearest_sample():
    probe = speed.Probe()
    assert math.isnan(probe.between(0.0, 10.0)["machine_ms"])  # nothing sampled yet
    probe.samples = [(10.0, 4.0), (15.0, 5.0), (20.0, 9.0), (25.0, 4.5)]
    assert probe.between(9.0, 21.0) == {"machine_ms": 5.0}  # 4, 5, 9
    assert probe.between(16.0, 17.0) == {"machine_ms": 5.0}  # none inside: 15 s is nearest
    assert probe.between(24.0, 99.0) == {"machine_ms": 4.5}


def test_a_busy_neighbour_on_the_cpu_does_not_move_the_figure():
    """CPU time, not wall time: a second process spinning on the probe's CPU halves the probe's share of it,
    not the figure (within the noise of a shared VM)."""
    cpu = min(os.sched_getaffinity(0))

    def median_of_next(probe: speed.Probe, count: int) -> float:
        start = len(probe.samples)
        probe.wait_for(start + count, timeout_s=30)
        return statistics.median(ms for _, ms in probe.samples[start:])

    with speed.Probe({cpu}, period_s=0.05) as probe:
        median_of_next(probe, 2)  # started, arrays paged in
        alone = median_of_next(probe, 9)
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            psutil.Process(hog.pid).cpu_affinity([cpu])
            shared = median_of_next(probe, 9)
        finally:
            hog.kill()
            hog.wait()
    assert 0.6 < shared / alone < 1.6, (alone, shared)
