"""The two graphs that leave PyTorch, and the one way they are exported (torch.onnx, dynamo, opset 18).

NoteLLM item encoder: prompted ids (b, t) + [EMB] position (b,) -> L2-normalised note vector (b, d)
  (projection, less the fitted center, then the L2 norm: NoteLLM.note_vectors).
  Prompts are right-padded and the LM is causal, so the state at [EMB] never sees padding: the graph needs
  no attention mask, and the whole LM runs with the causal mask alone.
EaaR text encoder: ids, attention mask, token types (b, t) -> token states (b, t, h), what the serving head
  pools (the head, with the kernels behind it, stays in PyTorch: runtime.RankScorer).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

OPSET = 18


class NoteEncoderGraph(nn.Module):
    def __init__(self, notellm):
        super().__init__()
        self.lm = notellm.lm.model
        self.project = notellm.project
        self.register_buffer("center", notellm.center.detach().clone())
        self.offset = 1 if notellm.config.vector_position == "before_emb" else 0

    def forward(self, input_ids: torch.Tensor, emb_index: torch.Tensor) -> torch.Tensor:
        hidden = self.lm(input_ids=input_ids, use_cache=False).last_hidden_state  # (b, t, H)
        pos = (emb_index - self.offset).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return F.normalize(self.project(torch.gather(hidden, 1, pos).squeeze(1)) - self.center, dim=-1)


class TextEncoderGraph(nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        return self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state


def to_onnx(
    module: nn.Module,
    example: dict[str, torch.Tensor],
    output: str,
    path: Path,
    dynamic: dict[str, dict[int, str]],
) -> Path:
    """Export with named dynamic axes, then check the file with onnx.checker (a malformed graph raises)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dims: dict[str, torch.export.Dim] = {}
    shapes = {
        name: {axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in axes.items()}
        for name, axes in dynamic.items()
    }
    module.eval()
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (),
            kwargs=example,
            input_names=list(example),
            output_names=[output],
            opset_version=OPSET,
            dynamic_shapes=shapes,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return path
