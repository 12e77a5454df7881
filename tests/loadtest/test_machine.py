"""The machine's own figures during a load run (llmrec.loadtest.machine): /proc/stat per CPU, and the resident
memory and CPU time of the server's process tree."""

import math
import os
import subprocess
import sys
import time

import psutil

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
    sampler = machine.Sampler({1}, period_s=60)
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
    sampler = machine.Sampler({0})
    assert math.isnan(sampler.between(time.time() - 1, time.time())["steal_pct"])


def test_the_memory_and_cpu_time_of_a_process_tree_count_its_children():
    """What a soak reads for tritonserver and its python stubs: a parent that holds ~64 MiB in a child, and a
    child that keeps one CPU busy."""
    holder = "import time; x = b'1' * (64 * 2**20); time.sleep(30)"
    spinner = "import time\nwhile True: pass"
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         f"[subprocess.Popen([sys.executable, '-c', c]) for c in ({holder!r}, {spinner!r})]; time.sleep(30)"]
    )  # fmt: skip
    try:
        deadline = time.time() + 20
        while time.time() < deadline and len(psutil.Process(parent.pid).children()) < 2:
            time.sleep(0.05)
        time.sleep(1.0)  # the holder touches its 64 MiB
        alone = psutil.Process(parent.pid).memory_info().rss
        assert machine.tree_usage(parent.pid)[0] - alone > 60 * 2**20
        with machine.Sampler({0}, period_s=0.5, pid=parent.pid) as sampler:
            time.sleep(2.0)
        t0, t1 = sampler.usage[0][0], sampler.usage[-1][0]
        figures = sampler.between(t0, t1)
        assert figures["rss_mib"] > 60
        assert 30 < figures["server_cpu_pct"] < 210  # the spinner's CPU, however much of one it was given
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()
    assert machine.tree_usage(parent.pid) is None  # gone: no figure rather than a wrong one


def test_the_memory_of_a_span_is_its_peak_or_the_last_before_it():
    sampler = machine.Sampler(pid=1)
    sampler.usage = [(10.0, 100 * 2**20, 1.0), (11.0, 300 * 2**20, 1.5), (12.0, 200 * 2**20, 2.5)]
    figures = sampler.between(10.0, 12.0)
    assert figures["rss_mib"] == 300.0 and figures["server_cpu_pct"] == 75.0  # 1.5 CPU seconds in 2 s
    assert sampler.between(11.5, 11.5)["rss_mib"] == 300.0  # no sample inside: the last before
    assert sampler.between(11.0, 12.0)["server_cpu_pct"] == 100.0
    sampler.usage.append((13.0, 200 * 2**20, 0.5))  # a stub exited with its CPU time: no figure
    assert math.isnan(sampler.between(12.0, 13.0)["server_cpu_pct"])


def test_a_sampler_without_a_pid_reports_no_server_figures():
    with machine.Sampler({0}, period_s=60) as sampler:
        pass
    figures = sampler.between(time.time() - 1, time.time())
    assert "rss_mib" not in figures and "server_cpu_pct" not in figures and sampler.usage == []
    assert machine.tree_usage(os.getpid())[0] > 0
