"""The machine's own figures during a load run (llmrec.loadtest.machine): /proc/stat per CPU."""

import math
import time

from llmrec.loadtest import machine


def test_counters_of_one_cpu_are_part_of_all_cpus():
    every, first = machine.read_counters(), machine.read_counters({0})
    assert every and first
    busy, steal, total = first
    assert 0 <= busy <= total and 0 <= steal <= total
    assert total <= every[2]


def test_busy_and_steal_shares_between_two_times(tmp_path, monkeypatch):
    """Two fake /proc/stat snapshots a second apart: CPU 1 was busy 60 of 100 jiffies and lost 10 to steal."""
    stat = tmp_path / "stat"
    monkeypatch.setattr(machine, "PROC_STAT", stat)
    line = "cpu{} {} 0 {} {} 0 0 0 {} 0 0"
    stat.write_text(
        "\n".join(
            ["cpu 0 0 0 0 0 0 0 0 0 0", line.format(0, 0, 0, 0, 0), line.format(1, 0, 0, 0, 0), "intr 1"]
        )
    )
    sampler = machine.CpuSampler({1}, period_s=60)
    with sampler:
        stat.write_text(
            "\n".join(
                [
                    "cpu 0 0 0 0 0 0 0 0 0 0",
                    line.format(0, 50, 0, 50, 0),
                    line.format(1, 50, 10, 30, 10),
                    "intr 1",
                ]
            )
        )
    assert len(sampler.samples) == 2
    t0, t1 = sampler.samples[0][0], sampler.samples[1][0]
    assert sampler.between(t0, t1) == {"busy_pct": 60.0, "steal_pct": 10.0}
    assert sampler.between(t0 - 5, t1 + 5) == {"busy_pct": 60.0, "steal_pct": 10.0}  # clamped to the samples


def test_no_samples_give_no_figures():
    sampler = machine.CpuSampler({0})
    assert math.isnan(sampler.between(time.time() - 1, time.time())["steal_pct"])
