"""What a contrastive run learned, told honestly: windowed loss means against chance, and a plot.

A combined loss falling says little: NoteLLM's generation loss drops from ~40 to ~1 in a few dozen steps while
its contrastive loss can sit at chance. In-batch InfoNCE over 2B notes with the pair partner as the only
positive scores log(2B - 1) when the vectors carry no information, so each window's mean contrastive loss is
shown next to that figure, and a run whose last 10% of steps stays within `min_margin` of it is flagged.
"""

from __future__ import annotations

import math
from pathlib import Path

RED, RESET = "\033[31m", "\033[0m"


def chance_loss(batch_pairs: int) -> float:
    """In-batch InfoNCE of uninformative vectors: 2B - 1 equally likely candidates for the positive."""
    return math.log(2 * batch_pairs - 1)


def windowed(values: list[float], windows: int = 10) -> list[tuple[int, int, float]]:
    """(first step, last step, mean) over `windows` consecutive, near-equal windows (1-based steps)."""
    n = len(values)
    if n == 0:
        return []
    bounds = sorted({round(i * n / windows) for i in range(windows + 1)})
    return [(a + 1, b, sum(values[a:b]) / (b - a)) for a, b in zip(bounds, bounds[1:], strict=False)]


def summarize(history: list[dict], batch_pairs: int, min_margin: float = 0.1, windows: int = 10) -> dict:
    """Windowed means of each loss, and the contrastive loss of the first and last 10% of steps against chance."""
    if not history:
        raise ValueError("no training steps to summarise")
    chance = chance_loss(batch_pairs)
    l_cl = [h["l_cl"] for h in history]
    tail = max(1, len(l_cl) // 10)
    last = sum(l_cl[-tail:]) / tail
    first = sum(l_cl[:tail]) / tail
    rows = []
    for key in ("l_cl", "l_gen", "loss"):
        for i, (a, b, mean) in enumerate(windowed([h[key] for h in history], windows)):
            if key == "l_cl":
                rows.append({"steps": f"{a}-{b}", "l_cl": mean})
            else:
                rows[i][key] = mean
    for row in rows:
        row["l_cl - chance"] = row["l_cl"] - chance
    return {
        "chance_l_cl": chance,
        "l_cl_first_10pct": first,
        "l_cl_last_10pct": last,
        "below_chance_last_10pct": chance - last,
        "learned": chance - last >= min_margin,
        "windows": rows,
    }


def verdict(summary: dict, color: bool = True) -> str:
    """One line: how far below chance the contrastive loss ended; in red when it never left chance."""
    line = (
        f"contrastive loss, mean of the last 10% of steps: {summary['l_cl_last_10pct']:.3f} "
        f"(first 10%: {summary['l_cl_first_10pct']:.3f}; chance log(2B-1) = {summary['chance_l_cl']:.3f}; "
        f"{summary['below_chance_last_10pct']:+.3f} below it)"
    )
    if summary["learned"]:
        return line
    warning = (
        "WARNING: the contrastive loss never left chance; the vectors have not learned from the pairs. "
        + line
    )
    return f"{RED}{warning}{RESET}" if color else warning


def plot(history: list[dict], batch_pairs: int, path: Path, title: str = "NoteLLM training") -> Path:
    """PNG of the per-step losses, their moving means and the chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, (ax_cl, ax_gen) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((ax_cl, "l_cl", "contrastive (GCL)"), (ax_gen, "l_gen", "generation (CSFT)")):
        values = [h[key] for h in history]
        width = max(1, len(values) // 20)
        smooth = [
            sum(values[max(0, i - width + 1) : i + 1]) / len(values[max(0, i - width + 1) : i + 1])
            for i in range(len(values))
        ]
        ax.plot(steps, values, color="0.75", linewidth=0.8, label="per step")
        ax.plot(steps, smooth, color="C0", linewidth=1.8, label=f"mean of {width} steps")
        ax.set_xlabel("step")
        ax.set_title(label)
    ax_cl.axhline(
        chance_loss(batch_pairs), color="C3", linestyle="--", label=f"chance log(2B-1), B={batch_pairs}"
    )
    ax_gen.set_yscale("log")
    ax_cl.legend(fontsize=8)
    ax_gen.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
