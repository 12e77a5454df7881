"""Build a Triton model repository from trained runs: graphs, tokenizers, head, index, code, configs.

    <repo>/<model>/, <repo>/embed_gate/       the public ensembles and embed's gate (llmrec.server.ensembles)
    <repo>/<model>_core/config.pbtxt          the `cpu` target: the contract + model_repo/<model>_core/cpu.pbtxt
    <repo>/<model>_core/configs/gpu.pbtxt     the `gpu` target (tritonserver --model-config-name=gpu)
    <repo>/<model>_core/<version>/model.py    from model_repo/<model>_core/ (package data)
    <repo>/<model>_core/<version>/...         the exported files (names: llmrec.server.runtime)
    <repo>/<model>_core/warmup/...            warm-up requests named in config.pbtxt

Every graph is checked against PyTorch before it is written (parity.py); the report goes to
<artifacts>/export/parity-v<version>.json (`llmrec export`). A new `similar` version holds a new index; loading it replaces the
served one (version_policy latest 1), and a bad index fails that load while the old version keeps serving.

Publishing: a version is written into a hidden folder (.<version>.tmp), checked (parity, the index against
the embed model's dimension), sealed with a manifest of its files' sizes and checksums
(llmrec.server.versions), and only then renamed into place; a server restarted later serves the newest
version whose files still match its manifest and that loads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from llmrec.export import parity
from llmrec.export.graphs import NoteEncoderGraph, TextEncoderGraph, to_onnx
from llmrec.paths import artifacts_dir
from llmrec.server import ensembles, item_index, runtime, tokenizer, versions
from llmrec.server.contract import MODELS


def version_folder(repo: Path, model: str, version: int) -> Path:
    """The hidden folder that version `version` of public model `model` is written into (its core's),
    with the core's configs (llmrec.server.ensembles.core_config), code and warm-up files, and the
    model's ensemble (and gate, if it has one) in place."""
    ensembles.write(repo, model)
    spec = MODELS[model]
    model = ensembles.core(model)
    source = ensembles.sources() / model / "model.py"
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing: the installation is incomplete")
    folder = repo / model / str(version)
    tmp = folder.with_name(f".{version}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for target, path in ensembles.TARGETS.items():
        (repo / model / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / model / path).write_text(ensembles.core_config(spec, target))
    shutil.copy2(source, tmp / "model.py")
    for tensor, _, values in ensembles.warmup_inputs(spec):
        (repo / model / "warmup").mkdir(exist_ok=True)
        (repo / model / "warmup" / ensembles.warmup_file(tensor.name)).write_bytes(values)
    return tmp


def publish(tmp: Path) -> Path:
    """Seal a finished, checked version folder and move it into place (a server polling the repository
    never sees half a version)."""
    final = tmp.with_name(tmp.name[1:].removesuffix(".tmp"))
    versions.seal(tmp, final.parent.name, int(final.name))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def to_fp16(fp32_graph: Path, fp16_graph: Path) -> None:
    """An fp16 copy of a graph that keeps fp32 inputs and outputs (onnxruntime's float16 converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(fp32_graph)), keep_io_types=True), str(fp16_graph))
    onnx.checker.check_model(str(fp16_graph), full_check=True)


def export_embed(
    repo: Path, notellm_dir: Path, items: list[dict], version: int = 1, fp16: bool = False
) -> dict:
    """NoteLLM item encoder -> <repo>/embed/<version>/; returns the parity summary (with `fp16`: the fp32
    graph's, plus the fp16 graph's under "fp16")."""
    from llmrec.server.prompts import collate
    from llmrec.training.notellm.model import NoteLLM

    model = NoteLLM.load(notellm_dir / "model").eval()
    model.lm.config._attn_implementation = "eager"  # the exporter traces eager attention
    folder = version_folder(repo, "embed", version)
    example = collate([model.prompts.embedding_prompt(i) for i in items[:2]], model.tokenizer.pad_token_id)
    to_onnx(
        NoteEncoderGraph(model),
        {"input_ids": example["input_ids"], "emb_index": example["emb_index"]},
        "vector",
        folder / runtime.NOTELLM_ONNX,
        {"input_ids": {0: "batch", 1: "seq"}, "emb_index": {0: "batch"}},
    )
    tokenizer.save(model.tokenizer, folder / runtime.TOKENIZER)
    meta = {"emb_dim": model.config.emb_dim, "prompt": asdict(model.config.prompt)}
    (folder / runtime.NOTELLM_META).write_text(json.dumps(meta, indent=2))
    embedder = runtime.NoteEmbedder(folder)
    for item in items:  # the server's tokenizer must give the very ids training used
        if embedder.prompts.embedding_prompt(item) != model.prompts.embedding_prompt(item):
            raise ValueError(f"the serving tokenizer disagrees with training on item {item['item_id']!r}")
    chunks = parity.batches(items)
    wants = []
    for chunk in chunks:
        batch = collate([model.prompts.embedding_prompt(i) for i in chunk], model.tokenizer.pad_token_id)
        wants.append((int(batch["input_ids"].shape[1]), model.encode(batch).numpy()))

    def check(embedder: runtime.NoteEmbedder, tolerance: float, graph: str) -> dict:
        rows = [
            {"batch": len(chunk), "seq": seq} | parity.compare(embedder.embed(chunk), want, tolerance)
            for chunk, (seq, want) in zip(chunks, wants, strict=True)
        ]
        return parity.summary(rows, graph)

    report = check(embedder, parity.FP32_TOLERANCE, "embed")
    if fp16:
        to_fp16(folder / runtime.NOTELLM_ONNX, runtime.graph_path(folder, runtime.NOTELLM_ONNX, "fp16"))
        report["fp16"] = check(runtime.NoteEmbedder(folder, "fp16"), parity.FP16_TOLERANCE, "embed fp16")
    publish(folder)
    return report


def export_rank(
    repo: Path,
    ranker_dir: Path,
    ids: list[str],
    texts: list[str],
    version: int = 1,
    fp16: bool = False,
    work_dir: Path | None = None,
) -> dict:
    """EaaR text encoder + head -> <repo>/rank/<version>/, with the catalogue's item vectors by id (`ids`,
    `texts`: the catalogue, in one order) computed through the exported graph by a resumable batch job
    (llmrec.training.vector_job; its partial file lives in `work_dir`, default
    <artifacts>/export/work). Returns the parity summary (with `fp16`: the fp32 graph's, plus the fp16 graph's under
    "fp16")."""
    from llmrec.training import vector_job

    if len(ids) != len(texts) or len(set(ids)) != len(ids):
        raise ValueError(
            f"rank export needs one text per distinct item id: {len(set(ids))} ids, {len(texts)} texts"
        )
    from llmrec.training.eaar.model import Ranker

    ranker = Ranker.load(ranker_dir)
    encoder = ranker.encoder
    folder = version_folder(repo, "rank", version)
    example = encoder.tokenize(texts[:2])
    to_onnx(
        TextEncoderGraph(encoder.bert),
        {k: example[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
        "token_states",
        folder / runtime.ENCODER_ONNX,
        {k: {0: "batch", 1: "seq"} for k in ("input_ids", "attention_mask", "token_type_ids")},
    )
    tokenizer.save(encoder.tokenizer, folder / runtime.TOKENIZER)
    (folder / runtime.RANKER_META).write_text(json.dumps(asdict(ranker.config), indent=2))
    torch.save({"hidden": encoder.hidden, "params": ranker.head_state()}, folder / runtime.RANKER_HEAD)
    scorer = runtime.RankScorer(folder, warm=False)
    want_ids = encoder.tokenize(texts)
    got_ids = scorer.tokenize(texts)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        if not np.array_equal(got_ids[key], want_ids[key].numpy()):
            raise ValueError(f"the serving tokenizer disagrees with training on {key}")
    chunks = parity.batches(texts, sizes=(1, 8, 32))
    with torch.no_grad():
        wants = [encoder.encode_texts(chunk)[0].numpy() for chunk in chunks]

    def check(scorer: runtime.RankScorer, tolerance: float, graph: str) -> dict:
        rows = [
            {"batch": len(chunk), "seq": int(want.shape[1])}
            | parity.compare(scorer.encode(chunk)[0].cpu().numpy(), want, tolerance)
            for chunk, want in zip(chunks, wants, strict=True)
        ]
        return parity.summary(rows, graph)

    report = check(scorer, parity.FP32_TOLERANCE, "rank encoder")
    if fp16:
        to_fp16(folder / runtime.ENCODER_ONNX, runtime.graph_path(folder, runtime.ENCODER_ONNX, "fp16"))
        fp16_scorer = runtime.RankScorer(folder, warm=False, precision="fp16")
        report["fp16"] = check(fp16_scorer, parity.FP16_TOLERANCE, "rank encoder fp16")
    (folder / runtime.RANK_CATALOGUE).write_text(json.dumps(texts))  # rank warms its item cache with these
    weights = vector_job.file_digest(*sorted(p for p in Path(ranker_dir).rglob("*") if p.is_file()))
    key = weights + hashlib.sha256(json.dumps(texts).encode()).hexdigest()  # same model, same texts
    work = Path(work_dir or artifacts_dir() / "export" / "work") / f"rank-items-v{version}.npy"
    dim = int(scorer.compute_item_vectors(texts[:1]).shape[1])
    vector_job.run(
        work,
        list(ids),
        dim,
        lambda start, stop: scorer.compute_item_vectors(texts[start:stop]).float().cpu().numpy(),
        batch=64,
        key=key,
        desc="rank item vectors",
    )
    shutil.move(work, folder / runtime.RANK_ITEMS)
    shutil.move(work.with_suffix(".ids.json"), folder / runtime.RANK_ITEM_IDS)
    publish(folder)
    return report


def export_index(
    repo: Path,
    ids: list[str],
    vectors: np.ndarray,
    version: int = 1,
    spec: item_index.IndexSpec | None = None,
    log=print,
) -> dict:
    """The catalogue's vectors -> <repo>/similar/<version>/: exact, or a FAISS index tuned and gated on its
    recall against exact search (llmrec.server.item_index); returns index.json's content. Checked as the
    server will check it: an index of another dimension than the repository's embed model is refused."""
    runtime.check_index_matches_embed(int(np.asarray(vectors).shape[-1]), repo)
    folder = version_folder(repo, "similar", version)
    meta = item_index.write(folder, ids, vectors, spec or item_index.IndexSpec(), log)
    item_index.ItemIndex.load(folder)
    publish(folder)
    return meta


def without_batching(repo: Path, dest: Path) -> Path:
    """A copy of the repository whose configs drop dynamic batching (and with it the queue policy, which
    lives inside it); version folders are symlinks."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    shutil.rmtree(dest, ignore_errors=True)
    for model_dir in repo.iterdir():
        if not (model_dir / "config.pbtxt").is_file():
            continue
        target = dest / model_dir.name
        target.mkdir(parents=True)
        for config_path in (model_dir / "config.pbtxt", *model_dir.glob("configs/*.pbtxt")):
            config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
            config.ClearField("dynamic_batching")
            out = target / config_path.relative_to(model_dir)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text_format.MessageToString(config))
        for child in model_dir.iterdir():
            if child.is_dir() and child.name != "configs":
                (target / child.name).symlink_to(child.resolve())
    return dest
