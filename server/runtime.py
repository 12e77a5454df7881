"""What the public models compute, as plain Python over onnxruntime sessions and the kernels' dispatch.

The python-backend models in model_repo/ are thin adapters around these classes (request tensors in,
responses out); the in-process benchmark runs the very same classes without a server. Each class loads
from one version folder of the model repository, whose file names are defined here (and written by
llmrec.export.repository).
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from llmrec.server import ensembles, versions
from llmrec.server.tokenizer import ServingTokenizer

NOTELLM_ONNX = "notellm.onnx"
NOTELLM_META = "notellm.json"  # emb_dim and the prompt config
ENCODER_ONNX = "encoder.onnx"
RANKER_META = "ranker.json"  # the RankerConfig
RANKER_HEAD = "head.pt"  # the head's parameters
TOKENIZER = "tokenizer"  # tokenizer.json + special_tokens.json (llmrec.server.tokenizer)
PRECISIONS = ("fp32", "fp16")  # fp16: `llmrec export --fp16` also writes <graph>.fp16.onnx (fp32 in and out)
RANK_CATALOGUE = "catalogue.json"  # the catalogue's item texts: rank warms its item-vector cache with them

# Items whose rank vectors stay cached per model instance (LLMREC_RANK_CACHE_ITEMS overrides; 0 turns it off).
RANK_CACHE_ITEMS = 20_000


def graph_path(folder: Path, name: str, precision: str = "fp32") -> Path:
    """<folder>/<name> for fp32, <folder>/<stem>.fp16.onnx for fp16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return Path(folder) / (name if precision == "fp32" else name.replace(".onnx", f".{precision}.onnx"))


def model_precision(model_config: str | dict) -> str:
    """The `precision` parameter of a Triton model config (the JSON that initialize() receives); fp32 if unset."""
    config = json.loads(model_config) if isinstance(model_config, str) else model_config
    value = config.get("parameters", {}).get("precision", {}).get("string_value", "fp32")
    if value not in PRECISIONS:
        raise ValueError(f"config parameter precision must be one of {PRECISIONS}, got {value!r}")
    return value


def _session(path: Path):
    import onnxruntime as ort

    if not path.is_file():
        fp16 = ".fp16." in path.name
        how = "`llmrec export --fp16`" if fp16 else "`llmrec export`"
        raise FileNotFoundError(f"{path} is missing: run {how} to build the model repository")
    options = ort.SessionOptions()
    threads = int(os.environ.get("LLMREC_ORT_THREADS", "0"))  # 0: onnxruntime's default (all cores)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # CUDA where this onnxruntime build has it (the GPU image), else the CPU.
    providers = [
        p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()
    ]
    return ort.InferenceSession(str(path), options, providers=providers)


class NoteEmbedder:
    """Item texts -> NoteLLM vectors: the training prompt cut after [EMB], through the exported graph."""

    def __init__(self, folder: Path, precision: str = "fp32"):
        from llmrec.training.notellm.prompts import PromptBuilder, PromptConfig

        folder = Path(folder)
        meta = json.loads((folder / NOTELLM_META).read_text())
        tokenizer = ServingTokenizer(folder / TOKENIZER)
        self.prompts = PromptBuilder(tokenizer, PromptConfig(**meta["prompt"]))
        self.pad_id = tokenizer.pad_token_id
        self.dim = int(meta["emb_dim"])
        self.session = _session(graph_path(folder, NOTELLM_ONNX, precision))

    def inputs(self, items: list[dict]) -> dict[str, np.ndarray]:
        from llmrec.training.notellm.prompts import collate

        batch = collate([self.prompts.embedding_prompt(item) for item in items], self.pad_id)
        return {"input_ids": batch["input_ids"].numpy(), "emb_index": batch["emb_index"].numpy()}

    def embed(self, items: list[dict]) -> np.ndarray:
        """(n, d) float32, L2-normalised."""
        if not items:
            return np.zeros((0, self.dim), np.float32)
        return self.session.run(None, self.inputs(items))[0]


def embed_dim(repo: Path) -> tuple[int, int] | None:
    """(version, vector dimension) of the newest `embed` version in a model repository that has its
    metadata; None where the repository has no `embed` model."""
    folder = Path(repo) / ensembles.core("embed")
    if not folder.is_dir():
        return None
    for version in versions.versions(folder):
        meta = folder / str(version) / NOTELLM_META
        try:
            return version, int(json.loads(meta.read_text())["emb_dim"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a broken version: the server skips it too
    return None


def check_index_matches_embed(dim: int, repo: Path) -> None:
    """An index must have the dimension of the vectors `embed` gives, or every text query would fail."""
    found = embed_dim(repo)
    if found is not None and found[1] != dim:
        raise ValueError(
            f"the item index is {dim}-d but the embed model (version {found[0]}) gives {found[1]}-d "
            "vectors: export the index from the NoteLLM run the embed model was exported from"
        )


class VectorCache:
    """Least-recently-used map of item text -> item vector, bounded in entries; counts hits and misses.

    Not an approximation: an item's vector depends only on its text and the version's weights (up to the
    float rounding of the batch it was computed in), and a cache lives in one model instance, which serves
    one version.
    """

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.lock = threading.Lock()  # the in-process benchmark shares one scorer between threads

    def lookup(self, texts: list[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """(the cached vectors among `texts`, the texts still to compute); distinct texts in, counted once."""
        found, missing = {}, []
        with self.lock:
            for text in texts:
                vector = self.entries.get(text)
                if vector is None:
                    missing.append(text)
                else:
                    self.entries.move_to_end(text)
                    found[text] = vector
            self.hits += len(found)
            self.misses += len(missing)
        return found, missing

    def store(self, texts: list[str], vectors: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        with self.lock:
            for text, vector in zip(texts[-self.capacity :], vectors[-self.capacity :], strict=True):
                self.entries[text] = vector.clone()  # a row view would keep its whole batch alive
                self.entries.move_to_end(text)
            while len(self.entries) > self.capacity:
                self.entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self.entries)


def catalogue_texts(path: Path) -> list[str]:
    """The item texts of catalogue.json; a malformed file is a ValueError that names it."""
    try:
        texts = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"catalogue {path} is not valid JSON: {e}") from None
    if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"catalogue {path} must be a JSON list of non-empty item texts")
    return texts


class RankScorer:
    """EaaR online: item texts -> exported BERT encoder -> the trained head (pooling, user attention, dot).

    Item vectors are cached by text (VectorCache): a catalogue item is encoded once per model instance,
    so a request costs the user attention and the dot products, not a BERT pass per item. With `warm`,
    the catalogue texts exported beside the model (catalogue.json) are encoded at load, up to the
    cache's capacity, so that the first requests after a (re)load are as fast as the rest.
    """

    def __init__(
        self, folder: Path, cache_items: int | None = None, warm: bool = True, precision: str = "fp32"
    ):
        from llmrec.training.eaar.model import Ranker, RankerConfig

        folder = Path(folder)
        self.config = RankerConfig(**json.loads((folder / RANKER_META).read_text()))
        self.tokenize = ServingTokenizer(folder / TOKENIZER).padded(self.config.max_tokens)
        self.session = _session(graph_path(folder, ENCODER_ONNX, precision))
        state = torch.load(folder / RANKER_HEAD, map_location="cpu")
        hidden = int(state["hidden"])
        self.head = Ranker(self.config, None, None, hidden=hidden)
        self.head.load_state_dict(state["params"], strict=True)
        self.head.eval()
        if torch.cuda.is_available():
            self.head.cuda()
        self.device = next(self.head.parameters()).device
        self.input_names = {i.name for i in self.session.get_inputs()}
        if cache_items is None:
            cache_items = int(os.environ.get("LLMREC_RANK_CACHE_ITEMS", RANK_CACHE_ITEMS))
        self.cache = VectorCache(cache_items)
        if warm and (folder / RANK_CATALOGUE).is_file():
            self.warm(catalogue_texts(folder / RANK_CATALOGUE))

    def warm(self, texts: list[str], batch: int = 64) -> None:
        """Encode `texts` into the cache (the first `capacity` of them); lookups stay uncounted."""
        texts = list(dict.fromkeys(texts))[: self.cache.capacity]
        for start in range(0, len(texts), batch):
            self.item_vectors(texts[start : start + batch])
        self.cache.hits = self.cache.misses = 0

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (n, T, H) and mask (n, T) of item texts, from the exported encoder."""
        enc = self.tokenize(texts)
        feeds = {k: v for k, v in enc.items() if k in self.input_names}
        states = self.session.run(None, feeds)[0]
        return torch.from_numpy(states).to(self.device), torch.from_numpy(enc["attention_mask"]).to(
            self.device
        )

    @torch.no_grad()
    def item_vectors(self, texts: list[str]) -> torch.Tensor:
        """(n, D) vectors of distinct item texts: cached ones looked up, the rest in one encoder pass."""
        found, missing = self.cache.lookup(texts)
        if missing:
            tokens, mask = self.encode(missing)
            computed, _ = self.head.pool_items(tokens, mask)
            self.cache.store(missing, computed)
            found.update(zip(missing, computed, strict=True))
        return torch.stack([found[t] for t in texts])

    @torch.no_grad()
    def score(self, users: list[tuple[list[str], list[str]]]) -> list[np.ndarray]:
        """One score per candidate for each (history texts, candidate texts); all users in one encoder pass."""
        if not users:
            return []
        unique = sorted({t for hist, cands in users for t in (*hist, *cands)})
        where = {t: i for i, t in enumerate(unique)}
        vectors = self.item_vectors(unique)  # (n, D)
        width = max(len(hist) for hist, _ in users)
        rows = torch.zeros(len(users), width, dtype=torch.long, device=self.device)
        valid = torch.zeros(len(users), width, dtype=torch.bool, device=self.device)
        for b, (hist, _) in enumerate(users):
            rows[b, : len(hist)] = torch.tensor([where[t] for t in hist], device=self.device)
            valid[b, : len(hist)] = True
        user = self.head.user_vectors(vectors[rows], valid)  # (B, D)
        out = []
        for b, (_, cands) in enumerate(users):
            cand = vectors[torch.tensor([where[t] for t in cands], device=self.device)]
            out.append((cand @ user[b]).float().cpu().numpy())
        return out
