"""The windowed loss summary: window bounds, chance, the verdict and the plot."""

import math

import pytest

from llmrec.training import loss_report


def steps(l_cl: list[float]) -> list[dict]:
    return [{"step": i + 1, "l_cl": v, "l_gen": 2.0, "loss": v + 0.01} for i, v in enumerate(l_cl)]


def test_windows_cover_every_step_once():
    got = loss_report.windowed([float(i) for i in range(1, 11)], windows=3)
    assert [(a, b) for a, b, _ in got] == [(1, 3), (4, 7), (8, 10)]
    assert got[0][2] == pytest.approx(2.0) and got[2][2] == pytest.approx(9.0)
    assert [(a, b) for a, b, _ in loss_report.windowed([1.0, 2.0], windows=10)] == [(1, 1), (2, 2)]


def test_summary_against_chance():
    chance = math.log(31)  # B = 16
    assert loss_report.chance_loss(16) == pytest.approx(chance)
    learned = loss_report.summarize(steps([chance] * 90 + [chance - 1.0] * 10), batch_pairs=16, windows=4)
    assert learned["l_cl_last_10pct"] == pytest.approx(chance - 1.0)
    assert learned["l_cl_first_10pct"] == pytest.approx(chance)
    assert learned["below_chance_last_10pct"] == pytest.approx(1.0) and learned["learned"]
    assert len(learned["windows"]) == 4 and learned["windows"][0]["l_cl - chance"] == pytest.approx(0.0)
    assert set(learned["windows"][0]) == {"steps", "l_cl", "l_gen", "loss", "l_cl - chance"}
    assert "WARNING" not in loss_report.verdict(learned)

    stuck = loss_report.summarize(steps([chance - 0.02] * 50), batch_pairs=16)
    assert not stuck["learned"]
    line = loss_report.verdict(stuck, color=True)
    assert "never left chance" in line and line.startswith(loss_report.RED)
    assert not loss_report.verdict(stuck, color=False).startswith(loss_report.RED)
    with pytest.raises(ValueError):
        loss_report.summarize([], batch_pairs=16)


def test_plot_writes_a_png(tmp_path):
    path = loss_report.plot(steps([3.4 - 0.01 * i for i in range(40)]), 16, tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
