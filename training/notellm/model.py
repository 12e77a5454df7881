"""The NoteLLM network: a LLaMA-family causal LM, an [EMB] token and a bias-free projection."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from llmrec.server.prompts import EMB_TOKEN, PromptBuilder, PromptConfig
from llmrec.training.backbones import SMOLLM2, resolve_causal_lm
from llmrec.training.notellm.losses import GenerativeContrastiveLoss, generation_loss

# Decoder-only families whose HF models have the layout NoteLLM uses: model.embed_tokens, model.layers, model.norm,
# lm_head. Gemma's embedding scale lives inside embed_tokens, so cached trunk states fed back as inputs_embeds
# are not scaled twice.
CAUSAL_LM_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")


@dataclass
class NoteLLMConfig:
    backbone: str = SMOLLM2  # "smollm2", a transformers folder, or a .gguf file (LLaMA family)
    keep_layers: int | None = None  # keep only the first n decoder layers (None: all of them)
    train_layers: int | None = None  # train only the top n kept layers; the rest and the embeddings freeze
    emb_dim: int = 128  # d: size of the note vector
    # "emb": hidden state at the [EMB] position (paper); "before_emb": the token just before it (released code)
    vector_position: Literal["emb", "before_emb"] = "emb"
    # "pca": start the projection at the top-d principal directions of the items' hidden states, with the
    # common (mean) direction projected out; "random": PyTorch's default init. LLM states at one prompt
    # position are nearly parallel (mean cosine 0.999 for SmolLM2 on ML-100k), so a random projection
    # starts every note at the same vector and short runs cannot escape it.
    projection_init: Literal["pca", "random"] = "pca"
    # Subtract the mean training-item vector before the final L2 norm, fitted once after training (ours, not
    # the paper's): trained note vectors share a large common component (mean pairwise cosine 0.91 over
    # ML-100k), so raw cosines differ only in small residues; centring brings it near 0 with recall unchanged.
    center: bool = True
    # The new [EMB] input row: "mean" of the pretrained rows (the same for every seed), or "sampled" from
    # their mean and covariance (transformers' default). The row stays frozen with the embeddings.
    emb_row_init: Literal["mean", "sampled"] = "sampled"
    tau_init: float = 3.0  # GCL temperature, learnable; the scale is e^tau
    # Centre each training batch's projected vectors on their mean before the norm (ours, not the paper's; at
    # inference the fitted `center` plays that part). Every note shares the prompt and the [EMB] token, so the
    # cheapest way down from a high first loss is to move all vectors together: they collapse onto one and
    # the contrastive loss sits at log(2B - 1). Centred, a common shift changes nothing, and the loss can only
    # fall by telling notes apart (docs/RESULTS.md: one seed in three stalled without it).
    batch_center: bool = False
    alpha: float = 0.01  # weight of the generation loss: L = (L_cl + alpha L_gen) / (1 + alpha)
    prompt: PromptConfig = field(default_factory=PromptConfig)

    @classmethod
    def from_dict(cls, d: dict) -> NoteLLMConfig:
        d = dict(d)
        d["prompt"] = PromptConfig(**d.get("prompt", {}))
        return cls(**d)


def load_causal_lm(config: NoteLLMConfig):
    """Tokenizer with [EMB] added, and the causal LM cut to `keep_layers` with its vocabulary resized."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_causal_lm(config.backbone)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if getattr(lm.config, "model_type", "") not in CAUSAL_LM_TYPES:
        raise ValueError(
            f"{config.backbone}: NoteLLM needs a LLaMA, Mistral, Qwen or Gemma causal LM, got {lm.config.model_type!r}"
        )
    if config.keep_layers is not None:
        total = len(lm.model.layers)
        if not 1 <= config.keep_layers <= total:
            raise ValueError(f"keep_layers={config.keep_layers} but the backbone has {total} layers")
        lm.model.layers = lm.model.layers[: config.keep_layers]
        lm.config.num_hidden_layers = config.keep_layers
        if getattr(lm.config, "layer_types", None):
            lm.config.layer_types = lm.config.layer_types[: config.keep_layers]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if EMB_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [EMB_TOKEN]})
    if lm.get_input_embeddings().num_embeddings < len(tokenizer):
        old = lm.get_input_embeddings().num_embeddings
        if config.emb_row_init == "mean":
            lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            with torch.no_grad():  # tied LM heads share this tensor; untied ones keep their own new rows
                table = lm.get_input_embeddings().weight
                table[old:] = table[:old].mean(0)
        else:
            lm.resize_token_embeddings(len(tokenizer))  # a draw from the embeddings' mean and covariance
    return tokenizer, lm


class NoteLLM(nn.Module):
    """Causal LM + [EMB] note vector (bias-free linear to d, L2-normalised) + the GCL temperature."""

    def __init__(self, config: NoteLLMConfig, tokenizer=None, lm=None):
        super().__init__()
        self.config = config
        if lm is None:
            tokenizer, lm = load_causal_lm(config)
        self.tokenizer = tokenizer
        self.lm = lm
        self.prompts = PromptBuilder(tokenizer, config.prompt)
        self.project = nn.Linear(lm.config.hidden_size, config.emb_dim, bias=False)
        self.register_buffer("center", torch.zeros(config.emb_dim))  # fit_center() sets it after training
        self.gcl = GenerativeContrastiveLoss(config.tau_init)
        self._freeze()

    def _freeze(self) -> None:
        if self.config.train_layers is None:
            return
        layers = self.lm.model.layers
        n = self.config.train_layers
        if not 1 <= n <= len(layers):
            raise ValueError(f"train_layers={n} but the model keeps {len(layers)} layers")
        self.lm.model.embed_tokens.requires_grad_(False)
        for layer in layers[: len(layers) - n]:
            layer.requires_grad_(False)
        # The LM head stays trainable unless it is tied to the frozen input embeddings.
        self.lm.lm_head.requires_grad_(not self.lm.config.tie_word_embeddings)

    @torch.no_grad()
    def init_projection_pca(self, states: torch.Tensor) -> None:
        """Rows of the projection := the top-d principal directions of `states` (n, H), orthogonal to their mean."""
        states = states.double()
        mean = states.mean(0)
        u = mean / mean.norm()
        centred = states - mean
        centred = centred - (centred @ u).unsqueeze(1) * u  # remove what is left along the mean direction
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # rows of vh: principal directions
        d = self.config.emb_dim
        if vh.shape[0] < d:
            raise ValueError(f"PCA init needs at least {d} items, got {states.shape[0]}")
        self.project.weight.copy_(vh[:d].to(self.project.weight.dtype))

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer states after the final norm, (B, T, H)."""
        return self.lm.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state

    # --- the frozen trunk and the trained top (trunk caching) ----------------------------------
    @property
    def n_frozen(self) -> int:
        """Decoder layers below the trained top: their output can be computed once and cached."""
        if self.config.train_layers is None:
            return 0
        return len(self.lm.model.layers) - self.config.train_layers

    @contextmanager
    def _only(self, part: slice, norm: nn.Module) -> Iterator[nn.Module]:
        """The decoder running just layers[part] then `norm`; rotary positions and causal masks stay its own.

        Decoders that mix attention kinds (Gemma 3: sliding and full, each with its own rotary base; Qwen2)
        look up each layer's kind in config.layer_types by its index in the running list, so that list is
        cut the same way.
        """
        decoder = self.lm.model
        config = decoder.config
        layers, final_norm, types = decoder.layers, decoder.norm, getattr(config, "layer_types", None)
        decoder.layers, decoder.norm = layers[part], norm
        if types is not None:
            config.layer_types = types[part]
        try:
            yield decoder
        finally:
            decoder.layers, decoder.norm = layers, final_norm
            if types is not None:
                config.layer_types = types

    @torch.no_grad()
    def trunk_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Output of the embeddings and the frozen layers, (B, T, H): what the trunk cache stores."""
        with self._only(slice(0, self.n_frozen), nn.Identity()) as decoder:
            return decoder(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).last_hidden_state

    def top_states(self, trunk: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The trained top layers and the final norm over trunk states; equals hidden_states() end to end."""
        with self._only(slice(self.n_frozen, None), self.lm.model.norm) as decoder:
            return decoder(
                inputs_embeds=trunk, attention_mask=attention_mask, use_cache=False
            ).last_hidden_state

    def note_vectors(
        self, hidden: torch.Tensor, emb_index: torch.Tensor, batch_center: bool = False
    ) -> torch.Tensor:
        """L2-normalised note vectors (B, d) from the states at (or just before) [EMB], less the fitted center
        (or, with `batch_center`, less the mean of this batch's projected vectors)."""
        projected = self.project(self.vector_states(hidden, emb_index).to(self.project.weight.dtype))
        if batch_center:
            return F.normalize(projected - projected.mean(0, keepdim=True), dim=-1)
        return F.normalize(projected - self.center.to(projected.dtype), dim=-1)

    @torch.no_grad()
    def fit_center(self, states: torch.Tensor) -> None:
        """center := the mean projected vector of `states` (n, H), the training items' raw states at [EMB]."""
        self.center.copy_(self.project(states.to(self.project.weight.dtype)).mean(0))

    def vector_states(self, hidden: torch.Tensor, emb_index: torch.Tensor) -> torch.Tensor:
        """The hidden state (B, H) that becomes the note vector: at [EMB], or just before it."""
        pos = emb_index - 1 if self.config.vector_position == "before_emb" else emb_index
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]

    def losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_cl, L_gen) of a batch of 2B prompts: token ids end to end, or cached trunk states ("trunk")."""
        if "trunk" in batch:
            hidden = self.top_states(batch["trunk"], batch["attention_mask"])
        else:
            hidden = self.hidden_states(batch["input_ids"], batch["attention_mask"])
        # The head and both losses in fp32 even under bf16 autocast: bf16 cosines (8 bits of mantissa) times the
        # GCL scale of about 20 put noise of the size of the positive margin into every logit; with them in bf16
        # the contrastive loss barely left chance on the cpu preset.
        with torch.autocast(hidden.device.type, enabled=False):
            hidden = hidden.float()
            l_cl = self.gcl(
                self.note_vectors(hidden, batch["emb_index"], batch_center=self.config.batch_center)
            )
            return l_cl, generation_loss(hidden, batch["labels"], self.lm.lm_head)

    @torch.no_grad()
    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.hidden_states(batch["input_ids"], batch["attention_mask"])
        return self.note_vectors(hidden, batch["emb_index"])

    # --- persistence -------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """A self-contained model folder: backbone/ (transformers), head.pt, notellm.json."""
        folder.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(folder / "backbone")
        self.tokenizer.save_pretrained(folder / "backbone")
        torch.save(
            {"project": self.project.state_dict(), "gcl": self.gcl.state_dict(), "center": self.center},
            folder / "head.pt",
        )
        config = asdict(self.config) | {"backbone": str((folder / "backbone").resolve()), "keep_layers": None}
        (folder / "notellm.json").write_text(json.dumps(config, indent=2))

    @classmethod
    def load(cls, folder: Path) -> NoteLLM:
        config_path = Path(folder) / "notellm.json"
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{folder} is not a NoteLLM model folder (no notellm.json); train one first"
            )
        config = NoteLLMConfig.from_dict(json.loads(config_path.read_text()))
        config.backbone = str(Path(folder) / "backbone")  # the folder may have moved
        model = cls(config)
        head = torch.load(Path(folder) / "head.pt", map_location="cpu")
        model.project.load_state_dict(head["project"])
        model.gcl.load_state_dict(head["gcl"])
        if "center" in head:  # models saved before centring have none: zeros, the plain normalised vector
            model.center.copy_(head["center"])
        return model.eval()
