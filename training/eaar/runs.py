"""One run, and the sweep over strategies x teachers x seeds that docs/RESULTS.md reports."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llmrec.runs import provenance, table, write_json
from llmrec.training.eaar.model import STRATEGIES
from llmrec.training.eaar.presets import preset as get_preset
from llmrec.training.eaar.trainer import run
from llmrec.training.schema import RecData
from llmrec.training.split import Split

METRICS = ("AUC", "MRR", "nDCG@5", "nDCG@10")


def run_one(
    data: RecData,
    split: Split,
    strategy: str,
    preset: str,
    teacher: str,
    seed: int,
    run_dir: Path,
    steps: int | None = None,
    pooling: str | None = None,
    teacher_dim: int | None = None,
    encoder: str | None = None,
) -> dict:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    mc, tc = get_preset(preset)
    mc.strategy, mc.teacher, tc.seed = strategy, teacher, seed
    if pooling is not None:
        if pooling not in ("additive", "dot"):
            raise ValueError(f"pooling must be 'additive' or 'dot', got {pooling!r}")
        mc.pooling = pooling
    if steps is not None:
        tc.steps = steps
    if encoder is not None:
        mc.encoder = encoder
    if teacher_dim is not None:
        mc.teacher_dim = teacher_dim
    return run(data, split, mc, tc, run_dir)


def sweep(
    data: RecData,
    split: Split,
    teachers: list[str],
    strategies: list[str],
    seeds: int,
    preset: str,
    train_missing: bool,
    dir_for: Callable[[str | None, str, int], Path],
    out: Path,
) -> list[dict]:
    started = time.time()
    rows = []
    combos = [(None, "base")] if "base" in strategies else []
    combos += [(t, s) for t in teachers for s in strategies if s != "base"]
    for teacher, strategy in combos:
        reports = []
        for seed in range(seeds):
            path = dir_for(teacher, strategy, seed) / "report.json"
            if not path.is_file():
                if not train_missing:
                    raise FileNotFoundError(
                        f"{path} is missing; run `llmrec train eaar` or pass --train-missing"
                    )
                print(f"training {strategy} (teacher {teacher}) seed {seed} ...", flush=True)
                run_one(data, split, strategy, preset, teacher or "notellm", seed, path.parent)
            reports.append(json.loads(path.read_text()))
        row = {"strategy": strategy, "teacher": teacher or "-", "seeds": len(reports)}
        for m in METRICS:
            vals = np.array([r[m] for r in reports])
            row[m] = f"{vals.mean():.4f} ± {vals.std(ddof=1) if len(vals) > 1 else 0.0:.4f}"
        row["wall s/run"] = f"{np.mean([r['wall_s'] for r in reports]):.0f}"
        rows.append(row)
    print(table(rows))
    write_json(out, {"rows": rows, **provenance(started)})
    print(f"summary: {out}")
    return rows
