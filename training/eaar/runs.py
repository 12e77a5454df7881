"""One run, and the sweep over strategies x teachers x seeds that docs/RESULTS.md reports."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmrec.runs import provenance, table, to_jsonable, write_json
from llmrec.server.rank_head import STRATEGIES, RankerConfig
from llmrec.training.eaar.presets import RankerTrainConfig
from llmrec.training.eaar.presets import preset as get_preset
from llmrec.training.eaar.teachers import teacher_file
from llmrec.training.eaar.trainer import run
from llmrec.training.schema import RecData
from llmrec.training.split import Split

METRICS = ("AUC", "MRR", "nDCG@5", "nDCG@10")


def configure(
    strategy: str, preset: str, teacher: str, seed: int, overrides: dict | None = None
) -> tuple[RankerConfig, RankerTrainConfig]:
    """The preset, with `overrides` (RankerConfig or RankerTrainConfig field -> value, e.g.
    {"reg_weight": 0.3, "steps": 600}; None values are left out) applied on top."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    mc, tc = get_preset(preset)
    mc.strategy, mc.teacher, tc.seed = strategy, teacher, seed
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "pooling" and value not in ("additive", "dot"):
            raise ValueError(f"pooling must be 'additive' or 'dot', got {value!r}")
        target = mc if hasattr(mc, key) else tc if hasattr(tc, key) else None
        if target is None or key in ("strategy", "teacher", "seed"):
            raise ValueError(f"unknown ranker setting {key!r}")
        setattr(target, key, value)
    mc.__post_init__()
    return mc, tc


def run_one(
    data: RecData,
    split: Split,
    strategy: str,
    preset: str,
    teacher: str,
    seed: int,
    run_dir: Path,
    overrides: dict | None = None,
) -> dict:
    """Train and evaluate one ranker (`configure` says what `overrides` may hold)."""
    mc, tc = configure(strategy, preset, teacher, seed, overrides)
    return run(data, split, mc, tc, run_dir)


def rerun_reason(
    run_dir: Path, mc: RankerConfig, tc: RankerTrainConfig, data_source: dict | None = None
) -> str | None:
    """Why the run in `run_dir` cannot stand for (mc, tc) on `data_source`, or None when it can be reused."""
    report = run_dir / "report.json"
    if not report.is_file():
        return "not run yet"
    config = run_dir / "config.json"
    saved = json.loads(config.read_text()) if config.is_file() else {}
    saved_data = saved.pop("data", None)
    if data_source is not None and saved_data is not None and saved_data != data_source:
        return "it was trained on other data"
    if mc.teacher_dim is None and "model" in saved:
        saved["model"]["teacher_dim"] = None  # a run fills it in from the teacher file
    if saved != to_jsonable({"model": mc, "train": tc}):
        return "its settings differ"
    if mc.uses_teacher:
        vectors = teacher_file(mc.teacher)
        if vectors is not None and vectors.stat().st_mtime > report.stat().st_mtime:
            return f"the teacher vectors {vectors} are newer than it"
    return None


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
        row = {
            "strategy": strategy,
            "teacher": teacher or "-",
            "seeds": len(reports),
            **_metric_cells(reports),
        }
        rows.append(row | {"wall s/run": _wall_cell(reports)})
    return _report(rows, out, started)


@dataclass(frozen=True)
class Setting:
    """One row of the teacher-helps sweep: a strategy, its teacher and what differs from the preset."""

    name: str
    strategy: str = "eaar"
    teacher: str | None = "notellm"
    overrides: dict = field(default_factory=dict)

    @property
    def shared(self) -> dict:
        """The overrides that are not about the teacher: a base row with exactly these is this row's baseline."""
        return {k: v for k, v in self.overrides.items() if k not in TEACHER_KNOBS}


def baseline_of(setting: Setting, settings: list[Setting]) -> Setting | None:
    """The base row `setting` is judged against: a base with the same non-teacher overrides."""
    for s in settings:
        if s.strategy == "base" and s.overrides == setting.shared:
            return s
    return None


TEACHER_KNOBS = ("reg_weight", "pretrain_steps")  # settings that only matter with a teacher

# Issue 11's question: is there a setting where the LLM teacher helps? w_r, the pooling form, more steps on
# the cached encoder, a longer history, and the teacher (NoteLLM vs all-mpnet-base-v2). Each non-base row has
# a base row with the same non-teacher settings.
EAAR_SWEEP: tuple[Setting, ...] = (
    Setting("base", "base", None),
    # w_r = 0: EaaR's item vector [W_c e_0, pooled] with no teacher at all; what the architecture alone costs
    *(Setting(f"eaar w_r={w}", overrides={"reg_weight": w}) for w in (0.0, 0.01, 0.1, 0.3, 1.0)),
    Setting("eaar w_r=0.3 mpnet", teacher="mpnet", overrides={"reg_weight": 0.3}),
    Setting("eaaf", "eaaf"),
    Setting("base pooling=dot", "base", None, {"pooling": "dot"}),
    Setting("eaar w_r=0.3 pooling=dot", overrides={"reg_weight": 0.3, "pooling": "dot"}),
    Setting("base steps=600", "base", None, {"steps": 600}),
    Setting("eaar w_r=0.3 steps=600", overrides={"reg_weight": 0.3, "steps": 600}),
    Setting("base history_len=30", "base", None, {"history_len": 30}),
    Setting("eaar w_r=0.3 history_len=30", overrides={"reg_weight": 0.3, "history_len": 30}),
)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._=-" else "_" for c in name)


def sweep_settings(
    data: RecData,
    split: Split,
    settings: list[Setting],
    seeds: int,
    preset: str,
    root: Path,
    out: Path,
) -> list[dict]:
    """Every setting x seed (a run already in `root` is reused unless its settings differ or the teacher
    vectors are newer than it), then a table of mean ± sd per setting with
    its AUC difference to the matching base row, in standard deviations of that base."""
    started = time.time()
    if len({s.name for s in settings}) != len(settings):
        raise ValueError("setting names must be unique")
    orphans = [s.name for s in settings if s.strategy != "base" and baseline_of(s, settings) is None]
    if orphans:
        raise ValueError(f"settings {orphans} have no base row with the same non-teacher settings")
    results: dict[str, list[dict]] = {}
    total = len(settings) * seeds
    done = 0
    for setting in settings:
        results[setting.name] = []
        for seed in range(seeds):
            run_dir = root / _slug(setting.name) / f"seed{seed}"
            mc, tc = configure(
                setting.strategy, preset, setting.teacher or "notellm", seed, setting.overrides
            )
            done += 1
            reason = rerun_reason(run_dir, mc, tc, data.source)
            if reason is not None:
                print(f"[{done}/{total}] {setting.name} seed {seed} ({reason}) ...", flush=True)
                report = run(data, split, mc, tc, run_dir)
                print(f"[{done}/{total}] {setting.name} seed {seed}: AUC {report['AUC']:.4f}", flush=True)
            results[setting.name].append(json.loads((run_dir / "report.json").read_text()))
    rows = []
    for setting in settings:
        auc = np.array([r["AUC"] for r in results[setting.name]])
        row = {"setting": setting.name, "teacher": setting.teacher or "-", "seeds": len(auc)}
        row |= _metric_cells(results[setting.name])
        if setting.strategy == "base":
            row["AUC - base"] = "-"
            row["in base sd"] = "-"
        else:
            base = np.array([r["AUC"] for r in results[baseline_of(setting, settings).name]])
            diff = auc.mean() - base.mean()
            row["AUC - base"] = f"{diff:+.4f}"
            row["in base sd"] = f"{diff / _sd(base):+.1f}" if _sd(base) > 0 else "-"
        rows.append(row | {"wall s/run": _wall_cell(results[setting.name])})
    return _report(rows, out, started)


def _sd(vals: np.ndarray) -> float:
    return float(vals.std(ddof=1)) if len(vals) > 1 else 0.0


def _metric_cells(reports: list[dict]) -> dict[str, str]:
    """'mean ± sd' over the seeds' reports, per metric."""
    cells = {}
    for m in METRICS:
        vals = np.array([r[m] for r in reports])
        cells[m] = f"{vals.mean():.4f} ± {_sd(vals):.4f}"
    return cells


def _wall_cell(reports: list[dict]) -> str:
    return f"{np.mean([r['wall_s'] for r in reports]):.0f}"


def _report(rows: list[dict], out: Path, started: float) -> list[dict]:
    print(table(rows))
    write_json(out, {"rows": rows, **provenance(started)})
    print(f"summary: {out}")
    return rows
