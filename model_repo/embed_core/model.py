"""Triton python model `embed_core`, behind the public ensemble `embed` (llmrec.server.ensembles).

TEXT [b, 1], packed by the gate as TEXT_UTF8 [b, L] and TEXT_LENGTH [b, 1] (contract `Model.core_inputs`)
-> VECTOR [b, d] (llmrec.server.runtime.NoteEmbedder).
Requests of a dynamic batch are checked one by one and embedded together in one onnxruntime call; a
bad request gets its own error response and the others are answered (llmrec.server.batch).
"""

from pathlib import Path

from llmrec.server.batch import input_of, run_batch
from llmrec.server.contract import (
    EMBED,
    TEXT,
    TEXT_LENGTH,
    TEXT_UTF8,
    VECTOR,
    as_item,
    decode_text,
    unpack_texts,
)
from llmrec.server.runtime import NoteEmbedder, instance_device, model_precision


class TritonPythonModel:
    def initialize(self, args):
        folder = Path(args["model_repository"]) / args["model_version"]
        self.embedder = NoteEmbedder(
            folder, precision=model_precision(args["model_config"]), device=instance_device(args)
        )

    def execute(self, requests):
        return run_batch(requests, EMBED, _items, self._embed)

    def _embed(self, items):
        return {VECTOR: self.embedder.embed(items)}


def _items(request):
    texts = unpack_texts(input_of(request, TEXT_UTF8), input_of(request, TEXT_LENGTH), TEXT)
    return [as_item(decode_text(t, f"{TEXT}[{r}]"), f"{TEXT}[{r}]") for r, t in enumerate(texts)]
