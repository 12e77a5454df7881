"""NoteLLM training: GCL + CSFT over co-occurrence pairs, with checkpoints and resume.

Steps: (1) seed and build the model, (2) order the pairs into batches without repeated notes,
(3) cache the frozen layers' output per (item, prompt variant) when the lower layers are frozen
(trunk_cache.py), (4) train with AdamW, clipping, warm-up, optional bf16 and checkpointing, (5) fit the
vectors' center on the training items, (6) save the model, config and report.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from llmrec.runs import peak_rss_mib, write_json
from llmrec.server.prompts import collate
from llmrec.training.notellm.losses import combine
from llmrec.training.notellm.model import NoteLLM, NoteLLMConfig
from llmrec.training.notellm.presets import TrainConfig
from llmrec.training.notellm.trunk_cache import TrunkCache


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batches_without_repeats(
    pairs: list[tuple[str, str]], batch_pairs: int, rng: random.Random
) -> list[list[tuple[str, str]]]:
    """Shuffle pairs into batches in which no note appears twice (a repeat would be its own negative)."""
    pending = pairs[:]
    rng.shuffle(pending)
    batches: list[list[tuple[str, str]]] = []
    while len(pending) >= batch_pairs:
        batch, seen, rest = [], set(), []
        for pair in pending:
            if len(batch) < batch_pairs and pair[0] not in seen and pair[1] not in seen:
                batch.append(pair)
                seen.update(pair)
            else:
                rest.append(pair)
        if len(batch) < batch_pairs:
            break  # the leftovers cannot fill a batch without repeats
        batches.append(batch)
        pending = rest
    return batches


@dataclass
class StepLog:
    step: int
    loss: float
    l_cl: float
    l_gen: float
    tau: float
    pairs_per_s: float


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run natively here (faster than fp32): CUDA GPUs with bf16, and CPUs with
    AVX512-BF16 or AMX (oneDNN); elsewhere autocast to bf16 only adds casts."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


class NoteLLMTrainer:
    def __init__(self, model_config: NoteLLMConfig, train_config: TrainConfig, run_dir: Path):
        self.mc, self.tc, self.run_dir = model_config, train_config, run_dir
        seed_everything(train_config.seed)
        self.model = NoteLLM(model_config)
        if train_config.gradient_checkpointing:
            self.model.lm.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.bf16 = native_bf16(self.device) if train_config.bf16 is None else train_config.bf16
        head = list(self.model.project.parameters())
        temperature = list(self.model.gcl.parameters())
        new_ids = {id(p) for p in head + temperature}
        pretrained = [p for p in self.model.parameters() if p.requires_grad and id(p) not in new_ids]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": pretrained, "lr": train_config.lr},
                {"params": head, "lr": train_config.head_lr},
                {
                    "params": temperature,
                    "lr": train_config.head_lr if train_config.tau_lr is None else train_config.tau_lr,
                    "weight_decay": 0.0,
                },  # no pull toward tau = 0
            ],
            weight_decay=train_config.weight_decay,
        )
        for group in self.optimizer.param_groups:
            group["initial_lr"] = group["lr"]  # the schedule scales this; it survives a checkpoint round trip
        self.step = 0
        self.history: list[StepLog] = []
        self.cache: TrunkCache | None = None
        self.cache_s = 0.0

    @property
    def caches_trunk(self) -> bool:
        return self.tc.trunk_cache and self.model.n_frozen > 0

    # --- checkpoints --------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def save_checkpoint(self) -> Path:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.ckpt_dir / f"step_{self.step:06d}.pt"
        # Trainable parameters, plus the input embeddings, which hold the seeded [EMB] row even when frozen.
        trainable = {k: v for k, v in self.model.named_parameters() if v.requires_grad}
        trainable["lm.model.embed_tokens.weight"] = self.model.lm.model.embed_tokens.weight
        state = {
            "step": self.step,
            "model": trainable,
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
            "history": [vars(h) for h in self.history],
        }
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        for old in sorted(self.ckpt_dir.glob("step_*.pt"))[: -self.tc.keep_checkpoints]:
            old.unlink()
        return path

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.ckpt_dir.glob("step_*.pt"))
        return found[-1] if found else None

    def resume(self) -> bool:
        path = self.latest_checkpoint()
        if path is None:
            return False
        state = torch.load(path, map_location=self.device, weights_only=False)
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        if unexpected:
            raise RuntimeError(f"{path} does not match this model (unexpected keys {unexpected[:3]}...)")
        self.optimizer.load_state_dict(state["optimizer"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        self.step = state["step"]
        self.history = [StepLog(**h) for h in state["history"]]
        print(f"resumed from {path} at step {self.step}", flush=True)
        return True

    # --- training -----------------------------------------------------------------------------
    def plan(self, pairs: pd.DataFrame) -> list[list[tuple[str, str]]]:
        """The full, seeded batch order: the same on a resumed run as on an uninterrupted one."""
        rng = random.Random(self.tc.seed)
        pair_list = list(zip(pairs["src"], pairs["dst"], strict=True))
        per_epoch = batches_without_repeats(pair_list, self.tc.batch_pairs, rng)
        if not per_epoch:
            raise ValueError(
                f"{len(pair_list)} training pairs cannot fill one batch of {self.tc.batch_pairs}"
            )
        total = self.tc.steps if self.tc.steps is not None else math.ceil(self.tc.epochs * len(per_epoch))
        order = []
        while len(order) < total:
            order += per_epoch if not order else batches_without_repeats(pair_list, self.tc.batch_pairs, rng)
        return order[:total]

    def lr_scale(self, step: int, total: int) -> float:
        """Linear warm-up, then cosine decay to 10%."""
        if step < self.tc.warmup_steps:
            return (step + 1) / self.tc.warmup_steps
        progress = (step - self.tc.warmup_steps) / max(1, total - self.tc.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    def train(self, pairs: pd.DataFrame, items: pd.DataFrame, stop_at: int | None = None) -> list[StepLog]:
        """Train to the planned number of steps (or stop early at `stop_at`, as an interruption would)."""
        by_id = {r["item_id"]: r for r in items.to_dict("records")}
        order = self.plan(pairs)
        if self.caches_trunk and self.cache is None:
            started = time.perf_counter()
            in_pairs = set(pairs["src"]) | set(pairs["dst"])
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                self.cache = TrunkCache(
                    self.model,
                    [r for r in by_id.values() if r["item_id"] in in_pairs],
                    tag_variants=self.tc.tag_variants,
                    seed=self.tc.seed,
                    dtype=getattr(torch, self.tc.cache_dtype),
                )
            self.cache_s = time.perf_counter() - started
            print(
                f"trunk cache: {len(self.cache.states)} prompts of {len(in_pairs)} items through "
                f"{self.model.n_frozen} frozen layers in {self.cache_s:.0f} s, {self.cache.nbytes / 2**20:.0f} MiB",
                flush=True,
            )
        prompt_rng = random.Random(self.tc.seed + 1)
        for done in range(self.step):  # replay the prompt sampler so a resumed run sees the same prompts
            self._choose(order[done], by_id, prompt_rng)
        if self.step == 0 and self.mc.projection_init == "pca":
            self._init_projection(pairs, items)
        self.model.train()
        bar = tqdm(total=len(order), initial=self.step, desc="notellm", unit="step", dynamic_ncols=True)
        end = len(order) if stop_at is None else min(stop_at, len(order))
        while self.step < end:
            started = time.perf_counter()
            batch = self._batch(self._choose(order[self.step], by_id, prompt_rng))
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * self.lr_scale(self.step, len(order))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                l_cl, l_gen = self.model.losses(batch)
                loss = combine(l_cl, l_gen, self.mc.alpha)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at step {self.step}; lower the learning rate"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.tc.grad_clip
            )
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            log = StepLog(
                self.step,
                loss.item(),
                l_cl.item(),
                l_gen.item(),
                self.model.gcl.tau.item(),
                self.tc.batch_pairs / (time.perf_counter() - started),
            )
            self.history.append(log)
            bar.update(1)
            bar.set_postfix(
                loss=f"{log.loss:.3f}",
                cl=f"{log.l_cl:.3f}",
                gen=f"{log.l_gen:.3f}",
                tau=f"{log.tau:.2f}",
                pairs_s=f"{log.pairs_per_s:.1f}",
                rss=f"{peak_rss_mib():.0f}M",
            )
            if self.step % self.tc.checkpoint_every == 0 or self.step == len(order):
                self.save_checkpoint()
        bar.close()
        if self.step == len(order):
            self.fit_center(pairs, items)
        return self.history

    def _init_projection(self, pairs: pd.DataFrame, items: pd.DataFrame, max_items: int = 512) -> None:
        """PCA-initialise the projection from the training items' raw states (training items only: no leakage)."""
        ids = pd.unique(pd.concat([pairs["src"], pairs["dst"]]))
        rng = np.random.default_rng(self.tc.seed)
        chosen = set(rng.choice(ids, size=min(max_items, len(ids)), replace=False))
        sample = items[items["item_id"].isin(chosen)]
        if len(sample) < self.mc.emb_dim:
            print(
                f"only {len(sample)} training items for a {self.mc.emb_dim}-d PCA: keeping the random projection"
            )
            return
        self.model.init_projection_pca(self._emb_states(sample).to(self.device))

    def fit_center(self, pairs: pd.DataFrame, items: pd.DataFrame) -> None:
        """Set the model's center to the mean projected vector of the training items (only those: no leakage)."""
        if not self.mc.center:
            return
        in_pairs = set(pairs["src"]) | set(pairs["dst"])
        self.model.fit_center(self._emb_states(items[items["item_id"].isin(in_pairs)]).to(self.device))

    @torch.no_grad()
    def _emb_states(self, items: pd.DataFrame) -> torch.Tensor:
        """Raw last-layer states at the vector position (n, H) of the items' embedding prompts."""
        from llmrec.training.encoders import encode_notellm

        was_training = self.model.training
        self.model.eval()
        if self.cache is None:
            states = encode_notellm(self.model, items, project=False, normalize=False)
        else:  # the category prompt's states up to [EMB] are the embedding prompt's (causal): top layers only
            keys = [(i, 0) for i in items["item_id"]]
            parts = []
            for start in range(0, len(keys), 64):
                batch = self.cache.batch(keys[start : start + 64], self.device)
                hidden = self.model.top_states(batch["trunk"], batch["attention_mask"])
                parts.append(self.model.vector_states(hidden, batch["emb_index"]).float())
            states = torch.cat(parts)
        self.model.train(was_training)
        return states

    def _choose(self, pair_batch, by_id, rng: random.Random) -> list:
        """Each note's prompt for this step, [a_1..a_B, b_1..b_B]: a cache key, or a Prompt when uncached."""
        notes = [a for a, _ in pair_batch] + [b for _, b in pair_batch]
        if self.cache is not None:
            return [self.cache.choose(n, rng, self.mc.prompt.tag_fraction) for n in notes]
        return [self.model.prompts.training_prompt(by_id[n], rng) for n in notes]

    def _batch(self, chosen: list) -> dict[str, torch.Tensor]:
        if self.cache is not None:
            return self.cache.batch(chosen, self.device)
        batch = collate(chosen, self.model.tokenizer.pad_token_id)
        return {k: v.to(self.device) for k, v in batch.items()}

    def cache_report(self) -> dict | None:
        if self.cache is None:
            return None
        return {
            "frozen_layers": self.model.n_frozen,
            "prompts": len(self.cache.states),
            "items": len(self.cache.prompts),
            "mib": round(self.cache.nbytes / 2**20, 1),
            "build_s": round(self.cache_s, 1),
        }

    def save(self) -> Path:
        folder = self.run_dir / "model"
        self.model.save(folder)
        write_json(self.run_dir / "history.json", [vars(h) for h in self.history])
        return folder
