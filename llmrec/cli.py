"""The `llmrec` command: one subcommand per stage of the data flow (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from llmrec.paths import artifacts_dir

app = typer.Typer(
    help="LLM-enhanced text embeddings for recommendation: data -> train -> eval -> embed -> export -> serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Load, validate and split the data.", no_args_is_help=True)
train_app = typer.Typer(help="Train a model.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a trained model against baselines.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")

ItemsOpt = Annotated[
    Path | None,
    typer.Option(
        help="Items file (.parquet/.jsonl); default: the data of the run this builds on, else MovieLens-100k."
    ),
]
InterOpt = Annotated[
    Path | None,
    typer.Option(help="Interactions file (.parquet/.jsonl); default: the run's data, else MovieLens-100k."),
]
TestFracOpt = Annotated[
    float | None,
    typer.Option(help="Share of interactions, by time, held out for testing (default: the run's, else 0.1)."),
]
NoteLLMDir = Annotated[Path, typer.Option(help="NoteLLM run folder (holds model/).")]


def _fail(error: Exception) -> typer.Exit:
    """A problem the user can fix: one red line, exit status 2, no traceback."""
    typer.secho(f"error: {error}", fg="red", err=True)
    return typer.Exit(2)


def _notellm_dir() -> Path:
    return artifacts_dir() / "notellm"


def _source(
    items: Path | None,
    interactions: Path | None,
    test_fraction: float | None,
    builds_on: Path | None = None,
    stage: str = "",
    items_only: bool = False,
):
    """The data a stage uses (llmrec.training.data_source): the run it builds on recorded it, or the flags
    name it (refused where they name other data than that run's); a problem exits with its message."""
    from llmrec.training.data_source import DataSource, for_stage
    from llmrec.training.schema import SchemaError

    try:
        if builds_on is None:
            return DataSource.given(items, interactions, test_fraction)
        return for_stage(builds_on, items, interactions, test_fraction, stage, items_only)
    except (SchemaError, ValueError, FileNotFoundError) as e:
        raise _fail(e) from None


def _load(source):
    """Load and split the data of `source`; a schema problem exits with its message, not a traceback."""
    from llmrec.runs import git_commit
    from llmrec.training.data_source import load_split
    from llmrec.training.schema import SchemaError
    from llmrec.training.split import SplitConfig

    git_commit()  # pin the commit now: reports written later name the code that was loaded, not a later HEAD
    try:
        data, split = load_split(source)
        return data, SplitConfig(test_fraction=source.test_fraction), split
    except (SchemaError, ValueError, FileNotFoundError) as e:
        raise _fail(e) from None


@data_app.command("stats")
def data_stats(
    items: ItemsOpt = None, interactions: InterOpt = None, test_fraction: TestFracOpt = None
) -> None:
    """Users, items, interactions, train pairs and test pairs of the time split."""
    from llmrec.runs import table
    from llmrec.training.split import split_stats

    data, _, split = _load(_source(items, interactions, test_fraction))
    stats = split_stats(data, split)
    typer.echo(f"dataset: {data.name}")
    typer.echo(table([{"stat": k, "value": v} for k, v in stats.items()]))


@train_app.command("notellm")
def train_notellm(
    preset: Annotated[
        str, typer.Option(help="cpu (2-core laptop, <10 min), gpu (the paper's recipe), tiny (smoke).")
    ] = "cpu",
    steps: Annotated[int | None, typer.Option(help="Override the preset's number of steps.")] = None,
    backbone: Annotated[
        str | None, typer.Option(help="'smollm2', a transformers folder or a .gguf file.")
    ] = None,
    vector_position: Annotated[
        str | None, typer.Option(help="'emb' (paper) or 'before_emb' (released code).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Override the preset's seed.")] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Where the run writes; default artifacts/notellm.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint in run-dir.")] = False,
    items: ItemsOpt = None,
    interactions: InterOpt = None,
    test_fraction: TestFracOpt = 0.1,
) -> None:
    """Train NoteLLM (GCL + CSFT) on the training pairs of the time split."""
    from llmrec.runs import provenance, table, write_json
    from llmrec.training import loss_report
    from llmrec.training.notellm.presets import preset as get_preset
    from llmrec.training.notellm.trainer import NoteLLMTrainer

    started = time.time()
    model_config, train_config = get_preset(preset)
    if steps is not None:
        train_config.steps = steps
    if backbone is not None:
        model_config.backbone = backbone
    if vector_position is not None:
        if vector_position not in ("emb", "before_emb"):
            raise typer.BadParameter("vector-position must be 'emb' or 'before_emb'")
        model_config.vector_position = vector_position
    if seed is not None:
        train_config.seed = seed
    run_dir = (run_dir or _notellm_dir()).resolve()
    source = _source(items, interactions, test_fraction)
    data, split_config, split = _load(source)
    write_json(
        run_dir / "config.json",
        {
            "preset": preset,
            "data": source.record(),
            "split": split_config,
            "model": model_config,
            "train": train_config,
        },
    )
    trainer = NoteLLMTrainer(model_config, train_config, run_dir)
    if resume and not trainer.resume():
        typer.echo(f"no checkpoint in {trainer.ckpt_dir}; starting from scratch")
    history = trainer.train(split.train_pairs, data.items)
    model_dir = trainer.save()
    steps = [vars(h) for h in history]
    summary = loss_report.summarize(steps, train_config.batch_pairs)
    plot = loss_report.plot(
        steps, train_config.batch_pairs, run_dir / "loss.png", title=f"NoteLLM, preset {preset}"
    )
    first, last = history[0], history[-1]
    report = {
        "preset": preset,
        "steps": last.step,
        "train_pairs": len(split.train_pairs),
        "loss_first": first.loss,
        "loss_last": last.loss,
        "l_cl_last": last.l_cl,
        "l_gen_last": last.l_gen,
        "tau_last": last.tau,
        "loss_summary": summary,
        "bf16_autocast": trainer.bf16,
        "trunk_cache": trainer.cache_report(),
        "model_dir": str(model_dir),
        **provenance(started),
    }
    write_json(run_dir / "report.json", report)
    typer.echo("\nlosses, mean per window of steps (chance for the contrastive loss: log(2B-1)):")
    typer.echo(table(summary["windows"]))
    typer.echo(loss_report.verdict(summary, color=sys.stdout.isatty()))
    precision = "bf16 autocast" if trainer.bf16 else "fp32"
    typer.echo(
        f"trained {last.step} steps in {report['wall_s']} s ({precision}); "
        f"peak memory {report['peak_rss_mib']:.0f} MiB; model in {model_dir}; loss curves in {plot}"
    )


@app.command("embed")
def embed(
    run_dir: NoteLLMDir = None,
    out: Annotated[Path | None, typer.Option(help="Output .npy (ids go next to it) or .parquet.")] = None,
    show: Annotated[
        int, typer.Option(help="Print the nearest neighbours of this many of the most interacted items.")
    ] = 3,
    items: ItemsOpt = None,
) -> None:
    """Write L2-normalised NoteLLM vectors for every item; print how spread they are and a few neighbours.

    The vectors are written batch by batch (bounded memory, a progress bar); an interrupted run picks up at
    its last finished batch when started again with the same model and catalogue."""
    import numpy as np
    import torch

    from llmrec.runs import table, write_json
    from llmrec.training import vector_job, vector_sanity
    from llmrec.training.embed_io import save_vectors
    from llmrec.training.encoders import encode_notellm
    from llmrec.training.notellm.model import NoteLLM
    from llmrec.training.schema import SchemaError

    run_dir = run_dir or _notellm_dir()
    source = _source(items, None, None, run_dir, "llmrec embed", items_only=True)
    # the log, where there is one, only to show the most interacted items: embed needs the items alone
    with_log = source.name != "user" or (
        source.interactions is not None and Path(source.interactions).is_file()
    )
    try:
        data = source.load() if with_log else None
        catalogue = data.items if data is not None else source.load_items()
    except (SchemaError, ValueError) as e:
        raise _fail(e) from None
    out = out or run_dir / "item_vectors.npy"
    try:
        model = NoteLLM.load(run_dir / "model")
        ids = catalogue["item_id"].tolist()
        key = vector_job.file_digest(*sorted(p for p in (run_dir / "model").rglob("*") if p.is_file()))
        written = vector_job.run(
            out if out.suffix == ".npy" else out.with_suffix(".npy"),
            ids,
            model.config.emb_dim,
            lambda start, stop: encode_notellm(model, catalogue.iloc[start:stop], progress=False).numpy(),
            batch=256,
            key=key,
            desc="embed notellm",
        )
        vectors = torch.from_numpy(np.array(written))
        path = out if out.suffix == ".npy" else save_vectors(out, ids, vectors.numpy())
    except (FileNotFoundError, ValueError) as e:
        raise _fail(e) from None
    typer.echo(f"wrote {len(vectors)} vectors of {vectors.shape[1]} dims to {path}")
    sanity = vector_sanity.report(vectors, catalogue)
    write_json(run_dir / "vector_sanity.json", sanity)
    typer.echo(
        f"mean pairwise cosine {sanity['mean_pairwise_cosine']:.3f} (near 1: collapsed); top-10 neighbours "
        f"sharing the item's category {100 * sanity['top10_category_agreement']:.1f}% "
        f"(random neighbours: {100 * sanity['random10_category_agreement']:.1f}%); items whose nearest other "
        f"item is above cosine 0.95: {100 * sanity['near_twin_share_0.95']:.1f}% (tight clumps)"
    )
    if show > 0:  # the most interacted items where the interactions are known, else the first ones
        shown = catalogue["item_id"].head(show).tolist()
        if data is not None:
            shown = data.interactions["item_id"].value_counts().index[:show].tolist()
        typer.echo(table(vector_sanity.neighbours(vectors, catalogue, shown)))


@eval_app.command("notellm")
def eval_notellm(
    run_dir: NoteLLMDir = None,
    full_backbone: Annotated[
        bool, typer.Option(help="Also score the untruncated backbone zero-shot (slow on CPU).")
    ] = False,
    minilm_finetuned: Annotated[
        bool, typer.Option(help="Fine-tune all-MiniLM-L6-v2 with GCL on the same pairs (a few minutes).")
    ] = True,
    generation: Annotated[
        bool, typer.Option(help="Generate categories for held-out items (--no-generation: recall only).")
    ] = True,
    items: ItemsOpt = None,
    interactions: InterOpt = None,
    test_fraction: TestFracOpt = None,
) -> None:
    """i2i Recall@k of NoteLLM vs MiniLM and zero-shot backbones; category accuracy on held-out items."""
    from llmrec.training.notellm.evaluate import evaluate_notellm

    run_dir = run_dir or _notellm_dir()
    data, _, split = _load(_source(items, interactions, test_fraction, run_dir, "llmrec eval notellm"))
    try:
        evaluate_notellm(
            run_dir,
            data,
            split,
            full_backbone=full_backbone,
            minilm_finetuned=minilm_finetuned,
            generation=generation,
        )
    except FileNotFoundError as e:
        raise _fail(e) from None


def _eaar_dir(teacher: str | None, strategy: str, seed: int) -> Path:
    return artifacts_dir() / "eaar" / (Path(teacher).stem if teacher else "none") / strategy / f"seed{seed}"


@train_app.command("eaar")
def train_eaar(
    strategy: Annotated[str, typer.Option(help="base (no LLM), eaaf, eaar or eaap.")] = "eaar",
    preset: Annotated[
        str, typer.Option(help="cpu (about a minute), gpu (the paper's settings), tiny (smoke).")
    ] = "cpu",
    teacher: Annotated[
        str, typer.Option(help="'notellm' (llmrec embed output), 'mpnet', or a vector file.")
    ] = "notellm",
    teacher_dim: Annotated[
        int | None, typer.Option(help="The teacher's dimension (default: read from it).")
    ] = None,
    pooling: Annotated[
        str | None, typer.Option(help="Token pooling: 'additive' (released code) or 'dot' (paper).")
    ] = None,
    encoder: Annotated[str | None, typer.Option(help="'minilm' or a BERT-class transformers folder.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for sampling, initialisation and batch order.")] = 0,
    steps: Annotated[int | None, typer.Option(help="Override the preset's steps.")] = None,
    reg_weight: Annotated[float | None, typer.Option(help="w_r of EaaR (preset: 0.1).")] = None,
    history_len: Annotated[int | None, typer.Option(help="History items per user (preset: 10).")] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Default artifacts/eaar/<teacher>/<strategy>/seed<k>.")
    ] = None,
    items: ItemsOpt = None,
    interactions: InterOpt = None,
    test_fraction: TestFracOpt = None,
) -> None:
    """Train one ranker of the GPT4SM family and evaluate it on the held-out impressions: on the NoteLLM
    run's data unless data flags are given (refused for the notellm teacher, whose vectors are of that run)."""
    from llmrec.training.eaar.runs import run_one

    if teacher == "notellm" and strategy != "base":  # the NoteLLM run's vectors teach it: its data only
        source = _source(items, interactions, test_fraction, _notellm_dir(), "llmrec train eaar")
    elif items is None and interactions is None:  # no flags: the pipeline's data, as the other stages
        source = _source(None, None, test_fraction, _notellm_dir(), "llmrec train eaar")
    else:  # a teacher file, mpnet or no teacher: any data
        source = _source(items, interactions, test_fraction)
    data, _, split = _load(source)
    run_dir = run_dir or _eaar_dir(teacher if strategy != "base" else None, strategy, seed)
    try:
        report = run_one(
            data,
            split,
            strategy,
            preset,
            teacher,
            seed,
            run_dir=run_dir,
            overrides={
                "steps": steps,
                "pooling": pooling,
                "teacher_dim": teacher_dim,
                "encoder": encoder,
                "reg_weight": reg_weight,
                "history_len": history_len,
            },
        )
    except (FileNotFoundError, ValueError) as e:
        raise _fail(e) from None
    typer.echo(
        f"{strategy} seed {seed}: AUC {report['AUC']:.4f}  MRR {report['MRR']:.4f}  "
        f"nDCG@5 {report['nDCG@5']:.4f}  nDCG@10 {report['nDCG@10']:.4f}  ({report['wall_s']} s); run in {run_dir}"
    )


@eval_app.command("eaar")
def eval_eaar(
    teachers: Annotated[str, typer.Option(help="Comma-separated teachers to compare.")] = "notellm,mpnet",
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies.")] = "base,eaaf,eaar,eaap",
    seeds: Annotated[int, typer.Option(help="Seeds per strategy and teacher (mean and spread).")] = 3,
    preset: Annotated[str, typer.Option(help="Preset used for runs that are missing.")] = "cpu",
    train_missing: Annotated[bool, typer.Option(help="Train the runs that have no report yet.")] = True,
    items: ItemsOpt = None,
    interactions: InterOpt = None,
    test_fraction: TestFracOpt = None,
) -> None:
    """The strategies x teachers table: mean and standard deviation over seeds of AUC, MRR, nDCG@5, nDCG@10."""
    from llmrec.training.eaar.runs import sweep

    data, _, split = _load(_source(items, interactions, test_fraction, _notellm_dir(), "llmrec eval eaar"))
    try:
        sweep(
            data,
            split,
            [t for t in teachers.split(",") if t],
            [s for s in strategies.split(",") if s],
            seeds,
            preset,
            train_missing,
            _eaar_dir,
            artifacts_dir() / "eaar" / "summary.json",
        )
    except (FileNotFoundError, ValueError) as e:
        raise _fail(e) from None


def _data_key(source) -> str:
    """A folder name per dataset and split, so that runs on other data are never reused for this one."""
    if source.name != "user":
        name = "ml-100k"
    else:
        digest = hashlib.sha1(f"{source.items_sha256}{source.interactions_sha256}".encode()).hexdigest()
        name = f"{Path(source.interactions).stem}-{digest[:8]}"
    return name if source.test_fraction == 0.1 else f"{name}-test{source.test_fraction:g}"


@eval_app.command("eaar-sweep")
def eval_eaar_sweep(
    seeds: Annotated[int, typer.Option(help="Seeds per setting (mean and spread).")] = 3,
    only: Annotated[
        str | None, typer.Option(help="Comma-separated setting names to run (default: the whole sweep).")
    ] = None,
    preset: Annotated[str, typer.Option(help="Preset the settings change.")] = "cpu",
    items: ItemsOpt = None,
    interactions: InterOpt = None,
    test_fraction: TestFracOpt = None,
) -> None:
    """Where does the LLM teacher help? w_r, pooling, steps, history and teacher against the matching base."""
    from llmrec.training.eaar.runs import EAAR_SWEEP, baseline_of, sweep_settings

    settings = list(EAAR_SWEEP)
    if only:
        wanted = [n.strip() for n in only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {s.name for s in settings})
        if unknown:
            raise _fail(ValueError(f"unknown settings {unknown}; the sweep has {[s.name for s in settings]}"))
        bases = {b.name for s in settings if s.name in wanted and (b := baseline_of(s, settings))}
        keep = set(wanted) | bases  # the chosen rows and the base rows they are judged against
        settings = [s for s in settings if s.name in keep]
    source = _source(items, interactions, test_fraction, _notellm_dir(), "llmrec eval eaar-sweep")
    data, _, split = _load(source)
    root = artifacts_dir() / "eaar" / "sweep" / _data_key(source)
    try:
        sweep_settings(data, split, settings, seeds, preset, root, root / "summary.json")
    except (FileNotFoundError, ValueError) as e:
        raise _fail(e) from None


# --- serving -------------------------------------------------------------------------------------
RepoOpt = Annotated[Path | None, typer.Option(help="Model repository (default: artifacts/model_repo).")]
UrlOpt = Annotated[str, typer.Option(help="Triton gRPC address.")]
# The admission proxy's settings, shared by `serve` and `loadtest` (defaults: llmrec.server.admission.Limits,
# spelled out in each signature so that the CLI starts without importing the proxy module).
MaxQueueOpt = Annotated[int, typer.Option(help="Calls the admission proxy lets wait.")]
QueueTimeoutOpt = Annotated[int, typer.Option(help="How long a call may wait at the proxy.")]
OverloadAfterOpt = Annotated[
    int,
    typer.Option(
        help="Calls waiting without a break this long (3/4 of a full queue) = overloaded: the proxy then "
        "holds --overload-in-flight calls and lets --overload-queue wait until the load falls; 0: never."
    ),
]
OverloadInFlightOpt = Annotated[int, typer.Option(help="Calls at the server while overloaded.")]
OverloadQueueOpt = Annotated[
    int, typer.Option(help="Calls the proxy lets wait while overloaded (at least 1 while the mode is on).")
]


def _repo(repo: Path | None) -> Path:
    return repo or artifacts_dir() / "model_repo"


@app.command("export")
def export(
    repo: RepoOpt = None,
    notellm_dir: NoteLLMDir = None,
    ranker_dir: Annotated[
        Path | None, typer.Option(help="EaaR run folder (default: artifacts/eaar/notellm/eaar/seed0).")
    ] = None,
    index: Annotated[
        Path | None,
        typer.Option(help="Item vectors for `similar` (default: the NoteLLM run's item_vectors.npy)."),
    ] = None,
    version: Annotated[
        int, typer.Option(help="Version folder to write (a new one replaces the served one).")
    ] = 1,
    only: Annotated[
        str | None, typer.Option(help="Export only these models, comma-separated: embed, rank, similar.")
    ] = None,
    items: ItemsOpt = None,
    fp16: Annotated[
        bool,
        typer.Option(
            help="Also write fp16 copies of the graphs (fp32 in and out) with their own parity check; "
            'a model runs one with the config parameter precision = "fp16".'
        ),
    ] = False,
    index_kind: Annotated[
        str,
        typer.Option(
            help="similar's index: auto (exact up to 20,000 items, then FAISS HNSW, IVF-PQ past the memory "
            "budget), exact, hnsw, ivf_flat or ivf_pq."
        ),
    ] = "auto",
    recall_floor: Annotated[
        float,
        typer.Option(help="An ANN index whose recall@10 against exact search falls under this is refused."),
    ] = 0.95,
) -> None:
    """ONNX graphs (with a parity check against PyTorch) and the item index -> a Triton model repository."""
    from llmrec.export import repository
    from llmrec.runs import table
    from llmrec.server import contract, item_index
    from llmrec.server.contract import item_text
    from llmrec.training.data_source import DataMismatch, recorded
    from llmrec.training.embed_io import load_vectors

    repo = _repo(repo)
    notellm_dir = notellm_dir or _notellm_dir()
    ranker_dir = ranker_dir or _eaar_dir("notellm", "eaar", 0)
    models = [m for m in (only or ",".join(contract.LOAD_ORDER)).split(",") if m]
    if unknown := set(models) - set(contract.MODELS):
        raise _fail(
            ValueError(f"unknown model(s) {sorted(unknown)}: choose from {', '.join(contract.MODELS)}")
        )
    try:
        spec = item_index.IndexSpec(kind=index_kind, recall_floor=recall_floor)
    except ValueError as e:
        raise _fail(e) from None
    source = _source(items, None, None, notellm_dir, "llmrec export", items_only=True)
    if "rank" in models and (ranked := recorded(ranker_dir)) and ranked.differences(source, items_only=True):
        raise _fail(
            DataMismatch(
                f"the ranker {ranker_dir} was trained on {ranked.describe()}, the NoteLLM run {notellm_dir} on "
                f"{source.describe()}: export runs built on one catalogue"
            )
        )
    try:
        records = source.load_items().to_dict("records")
    except ValueError as e:
        raise _fail(e) from None
    report: dict = {}
    started = time.time()
    try:
        if "embed" in models:
            typer.echo("exporting embed (NoteLLM item encoder) ...")
            report["embed"] = repository.export_embed(repo, notellm_dir, records, version, fp16)
        if "rank" in models:
            typer.echo("exporting rank (EaaR text encoder + head) ...")
            report["rank"] = repository.export_rank(
                repo,
                ranker_dir,
                [r["item_id"] for r in records],
                [item_text(r) for r in records],
                version,
                fp16,
            )
        if "similar" in models:
            ids, vectors = load_vectors(index or notellm_dir / "item_vectors.npy")
            typer.echo(f"exporting similar ({len(ids):,} item vectors) ...")
            report["similar"] = repository.export_index(repo, ids, vectors, version, spec, typer.echo)
    except (FileNotFoundError, ValueError) as e:
        raise _fail(e) from None
    from llmrec.runs import provenance, write_json

    path = write_json(
        artifacts_dir() / "export" / f"parity-v{version}.json", {**report, **provenance(started)}
    )
    rows = [
        {
            "model": m,
            "graph": graph,
            **{k: g[k] for k in ("max_abs", "max_rel", "ok")},
            "batches": len(g["rows"]),
        }
        for m, r in report.items()
        if "rows" in r
        for graph, g in (("fp32", r), ("fp16", r.get("fp16")))
        if g
    ]
    if rows:
        typer.echo(table(rows, ".2e"))
    typer.echo(f"model repository {repo} (version {version}); parity report {path}")


@app.command("serve")
def serve(
    repo: RepoOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1 keeps it local).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    target: Annotated[
        str, typer.Option(help="cpu (config.pbtxt) or gpu (configs/gpu.pbtxt, needs CUDA).")
    ] = "cpu",
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="PEM certificate: gRPC runs TLS (at the admission proxy with --max-in-flight); HTTP then "
            "listens on 127.0.0.1 only."
        ),
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            help="Serve gRPC through the admission proxy (HAProxy): this many calls at the server at once, "
            "--max-queue more may wait --queue-timeout-ms, the rest are refused at once (UNAVAILABLE)."
        ),
    ] = None,
    max_queue: MaxQueueOpt = 32,
    queue_timeout_ms: QueueTimeoutOpt = 100,
    overload_after_ms: OverloadAfterOpt = 100,
    overload_in_flight: OverloadInFlightOpt = 1,
    overload_queue: OverloadQueueOpt = 2,
    admission_metrics_port: Annotated[
        int, typer.Option(help="The admission proxy's Prometheus metrics port (with --max-in-flight).")
    ] = 8003,
) -> None:
    """Run the embedded tritonserver on the model repository until Ctrl-C or SIGTERM.

    The control API (load/unload, repository index, configs) needs the key in LLMREC_CONTROL_KEY; without
    one, a random key is made and written to <artifacts>/server/control.key (mode 0600)."""
    import os
    import signal
    import subprocess

    from llmrec.server.admission import AdmissionProxy, Limits
    from llmrec.server.client import CONTROL_KEY_ENV
    from llmrec.server.launcher import ServerError, TritonServer

    if (tls_cert is None) != (tls_key is None):
        raise _fail(ValueError("give both --tls-cert and --tls-key, or neither"))
    limits = proxy = None
    if max_in_flight is not None:
        try:
            limits = Limits(
                max_in_flight,
                max_queue,
                queue_timeout_ms,
                overload_after_ms,
                overload_in_flight,
                overload_queue,
            )
        except ValueError as e:
            raise _fail(e) from None

    def interrupt(signum, frame):  # SIGTERM stops like Ctrl-C, also while the server is starting
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    key = os.environ.get(CONTROL_KEY_ENV)
    server = None
    try:
        server = TritonServer(
            _repo(repo),
            host,
            http_port,
            grpc_port if limits is None else None,  # behind the proxy: a free port of the launcher's
            metrics_port,
            target=target,
            control_key=key,
            # Behind the proxy Triton's gRPC stays plain on 127.0.0.1 and the proxy speaks TLS to callers.
            tls=(tls_cert, tls_key) if tls_cert and limits is None else None,
            grpc_host=None if limits is None else "127.0.0.1",
            http_host="127.0.0.1" if tls_cert else None,  # no TLS for HTTP in this build: it stays local
        )
        if key is None:
            key_file = artifacts_dir() / "server" / "control.key"
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.touch(mode=0o600)
            key_file.chmod(0o600)
            key_file.write_text(server.control_key)
        server.start()
        grpc_url = server.grpc_url
        if limits is not None:
            proxy = AdmissionProxy(
                server.grpc_url,
                limits,
                host=host,
                port=grpc_port,
                metrics_port=admission_metrics_port,
                tls=(tls_cert, tls_key) if tls_cert else None,
            ).start()
            grpc_url = (
                f"{proxy.grpc_url} (admission proxy: {proxy.limits.max_in_flight} in flight, "
                f"queue {proxy.limits.max_queue}; its metrics {proxy.metrics_url})"
            )
        for line in server.report():
            typer.echo(line)
        typer.echo(
            f"serving {server.repo}: gRPC {grpc_url}{' (TLS)' if tls_cert else ''}, "
            f"HTTP {server.http_url}, metrics {server.metrics_url}"
        )
        where = f"${CONTROL_KEY_ENV}" if key else f"{key_file} (or set ${CONTROL_KEY_ENV})"
        typer.echo(f"control key: {where}; log: {server.log_path}; Ctrl-C or SIGTERM stops")
        while True:  # until tritonserver exits (seen at once), or the proxy does (seen within a second)
            try:
                server.process.wait(timeout=None if proxy is None else 1.0)
                break
            except subprocess.TimeoutExpired:
                if proxy.process.poll() is not None:
                    break
        if server.process.poll() is None:  # the proxy went: the service is unreachable, stop the rest
            typer.secho(
                f"the admission proxy exited on its own with status {proxy.process.returncode} "
                f"(log: {proxy.log_path})",
                fg="red",
                err=True,
            )
            raise typer.Exit(1)
        typer.secho(
            f"tritonserver exited on its own with status {server.process.returncode} (log: {server.log_path}):\n"
            f"{server.log_tail(20)}",
            fg="red",
            err=True,
        )
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("stopping ...")
    except (ServerError, FileNotFoundError, ValueError) as e:
        raise _fail(e) from None
    finally:
        if proxy is not None:
            proxy.stop()
        if server is not None:
            server.stop()


@app.command("serve-demo")
def serve_demo(
    repo: RepoOpt = None,
    calls: Annotated[int, typer.Option(help="Calls per model in the latency loop.")] = 30,
    items: ItemsOpt = None,
    interactions: InterOpt = None,
) -> None:
    """Start the embedded server, call similar and rank over gRPC, print tables and a latency summary, stop."""
    from llmrec.server import demo
    from llmrec.server.client import ServingError
    from llmrec.server.launcher import ServerError

    data, _, split = _load(_source(items, interactions, None, _notellm_dir(), "llmrec serve-demo"))
    try:
        demo.run(_repo(repo), data.items, split.train_interactions, split.test_interactions, calls)
    except (ServerError, ServingError, FileNotFoundError) as e:
        raise _fail(e) from None


def _client(url: str):
    from llmrec.server.client import RankingClient

    return RankingClient(url)


@app.command("similar")
def similar(
    item_id: Annotated[str | None, typer.Option("--item", help="A catalogue item id.")] = None,
    text: Annotated[str | None, typer.Option(help="Free text (or a JSON item) instead of an id.")] = None,
    k: Annotated[int, typer.Option(help="How many neighbours.")] = 10,
    url: UrlOpt = "127.0.0.1:8001",
) -> None:
    """The k catalogue items nearest an item or a text, from a running server."""
    from llmrec.runs import table
    from llmrec.server.client import ServingError

    try:
        with _client(url) as client:
            rows = [
                {"rank": i + 1, "item": n.item_id, "cosine": n.score}
                for i, n in enumerate(client.similar(item_id, text, k))
            ]
    except (ServingError, ValueError) as e:
        raise _fail(e) from None
    typer.echo(table(rows, ".4f"))


@app.command("rank")
def rank(
    history: Annotated[
        list[str] | None, typer.Option(help="A text the user engaged with (repeat the option).")
    ] = None,
    candidate: Annotated[
        list[str] | None, typer.Option(help="A candidate text to score (repeat the option).")
    ] = None,
    history_id: Annotated[
        list[str] | None, typer.Option(help="A catalogue item id instead of a history text (repeat).")
    ] = None,
    candidate_id: Annotated[
        list[str] | None, typer.Option(help="A catalogue item id instead of a candidate text (repeat).")
    ] = None,
    url: UrlOpt = "127.0.0.1:8001",
) -> None:
    """Score candidates for a user's history with the served EaaR ranker; items as texts or catalogue ids."""
    from llmrec.runs import table
    from llmrec.server.client import ServingError

    try:
        with _client(url) as client:
            scores = client.rank(history, candidate, history_ids=history_id, candidate_ids=candidate_id)
    except (ServingError, ValueError) as e:
        raise _fail(e) from None
    candidate = candidate or candidate_id
    rows = sorted(
        ({"candidate": c, "score": float(s)} for c, s in zip(candidate, scores, strict=True)),
        key=lambda r: -r["score"],
    )
    typer.echo(table(rows, ".4f"))


@app.command("reload")
def reload(
    model: Annotated[str, typer.Argument(help="A public model: embed, similar or rank.")],
    url: UrlOpt = "127.0.0.1:8001",
) -> None:
    """Re-read a model's versions from the repository: its newest version replaces the served one (a
    version that fails to load leaves the old one serving, and this says why). Needs the control key in
    LLMREC_CONTROL_KEY."""
    from llmrec.server import contract
    from llmrec.server.client import ServingError

    if model not in contract.MODELS:
        raise _fail(ValueError(f"unknown model {model!r}: expected one of {', '.join(contract.MODELS)}"))
    try:
        with _client(url) as client:
            client.reload(model)
            typer.echo(f"{model}: reloaded; ready: {client.health()['models'][model]}")
    except ServingError as e:
        raise _fail(e) from None


@app.command("health")
def health(url: UrlOpt = "127.0.0.1:8001") -> None:
    """Is the server live and ready, and is each public model ready? Exit status 1 if not."""
    with _client(url) as client:
        state = client.health()
    typer.echo(f"live: {state['live']}  ready: {state['ready']}")
    for model, ready in state["models"].items():
        typer.echo(f"  {model}: {'ready' if ready else 'NOT ready'}")
    if not (state["ready"] and all(state["models"].values())):
        raise typer.Exit(1)


def _cpu_set(spec: str) -> set[int]:
    """'0', '0,2' or '1-3' -> the CPU numbers, each one this process may run on."""
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise ValueError(f"CPU list {spec!r}: expected numbers and ranges like 0,2-3")
        cpus |= set(range(int(first), int(last or first) + 1))
    if missing := cpus - os.sched_getaffinity(0):
        raise ValueError(f"CPU list {spec!r}: this process cannot run on CPU(s) {sorted(missing)}")
    return cpus


@app.command("loadtest")
def loadtest(
    scenario: Annotated[
        str, typer.Option(help="smoke, steady, ramp, spike, soak, perf or full (ramp + spike + perf).")
    ] = "full",
    duration: Annotated[float, typer.Option(help="Seconds per run (per ramp step).")] = 20.0,
    models: Annotated[str, typer.Option(help="Models to load, comma-separated.")] = "rank,similar",
    rate: Annotated[
        float | None,
        typer.Option(help="Offered req/s (steady), the ramp's first step, or the spike's saturation."),
    ] = None,
    p99_bound_ms: Annotated[
        float | None,
        typer.Option(
            help="The ramp's p99 bound for every model (default: rank 100, similar 100, embed 200)."
        ),
    ] = None,
    batching: Annotated[
        bool, typer.Option(help="Dynamic batching as exported (--no-batching: a copy without).")
    ] = True,
    repo: RepoOpt = None,
    url: Annotated[
        str | None, typer.Option(help="Attach to this gRPC address instead of starting a server.")
    ] = None,
    metrics_url: Annotated[
        str | None, typer.Option(help="Triton metrics URL of the attached server.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Default artifacts/loadtest/<scenario>[-no-batching].")
    ] = None,
    rank_by: Annotated[
        str, typer.Option(help="rank's items as texts or as catalogue item ids (locust users).")
    ] = "texts",
    server_cpus: Annotated[
        str | None,
        typer.Option(help="Pin the server to these CPUs (e.g. 1 or 2-3); with --load-cpus for locust's."),
    ] = None,
    load_cpus: Annotated[
        str | None, typer.Option(help="Pin the load generator to these CPUs (e.g. 0), apart from the server.")
    ] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            help="Send the load through the admission proxy (HAProxy) holding this many calls "
            "at the server; the excess waits (--max-queue) or is refused at once."
        ),
    ] = None,
    max_queue: MaxQueueOpt = 32,
    queue_timeout_ms: QueueTimeoutOpt = 100,
    overload_after_ms: OverloadAfterOpt = 100,
    overload_in_flight: OverloadInFlightOpt = 1,
    overload_queue: OverloadQueueOpt = 2,
    admission_cpus: Annotated[
        str | None, typer.Option(help="Pin the admission proxy to these CPUs (default: unpinned).")
    ] = None,
    arrivals: Annotated[
        str | None,
        typer.Option(
            help="spike and soak: evenly spaced calls or a Poisson stream (default: even for the spike, "
            "poisson for the soak)."
        ),
    ] = None,
) -> None:
    """Load test the served models with locust gRPC users and perf_analyzer; table and plots."""
    from llmrec.loadtest.suite import LoadTestFailed, run_suite
    from llmrec.server.launcher import ServerError

    chosen = [m for m in models.split(",") if m]
    if unknown := set(chosen) - {"rank", "similar", "embed"}:
        raise _fail(ValueError(f"unknown model(s) {sorted(unknown)}: choose from rank, similar, embed"))
    if rank_by not in ("texts", "ids"):
        raise _fail(ValueError(f"--rank-by must be texts or ids, got {rank_by!r}"))
    if arrivals not in (None, "even", "poisson"):
        raise _fail(ValueError(f"--arrivals must be even or poisson, got {arrivals!r}"))
    os.environ["LLMREC_LOAD_RANK_BY"] = rank_by  # read by the locust processes (llmrec.loadtest.locustfile)
    out = out or artifacts_dir() / "loadtest" / (scenario + ("" if batching else "-no-batching"))
    cpus = None
    if server_cpus or load_cpus:
        if not (server_cpus and load_cpus):
            raise _fail(ValueError("--server-cpus and --load-cpus go together"))
        try:
            cpus = (_cpu_set(server_cpus), _cpu_set(load_cpus))
            if shared := cpus[0] & cpus[1]:
                raise ValueError(f"--server-cpus and --load-cpus share CPU(s) {sorted(shared)}")
        except ValueError as e:
            raise _fail(e) from None
    admission = proxy_cpus = None
    if max_in_flight is not None:
        from llmrec.server.admission import Limits

        if url:
            raise _fail(
                ValueError("--max-in-flight starts a proxy in front of the embedded server, not of --url")
            )
        try:
            admission = Limits(
                max_in_flight,
                max_queue,
                queue_timeout_ms,
                overload_after_ms,
                overload_in_flight,
                overload_queue,
            )
            proxy_cpus = _cpu_set(admission_cpus) if admission_cpus else None
        except ValueError as e:
            raise _fail(e) from None
    try:
        run_suite(
            scenario, _repo(repo), out, chosen, duration, rate, p99_bound_ms, batching, url, metrics_url,
            cpus=cpus, admission=admission, admission_cpus=proxy_cpus, arrivals=arrivals,
        )  # fmt: skip
    except (LoadTestFailed, ServerError, FileNotFoundError, ValueError, RuntimeError) as e:
        raise _fail(e) from None
    typer.echo(f"report: {out}")


if __name__ == "__main__":
    app()
