"""Triton python model `embed_core`, behind the public ensemble `embed` (llmrec.server.ensembles).

TEXT [b, 1] -> VECTOR [b, d] (llmrec.server.runtime.NoteEmbedder).
Requests of a dynamic batch are checked one by one and embedded together in one onnxruntime call; a
bad request gets its own error response and the others are answered (llmrec.server.batch).
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from llmrec.server.batch import input_of, run_batch
from llmrec.server.contract import as_item, decode_text
from llmrec.server.runtime import NoteEmbedder, model_precision


class TritonPythonModel:
    def initialize(self, args):
        folder = Path(args["model_repository"]) / args["model_version"]
        self.embedder = NoteEmbedder(folder, precision=model_precision(args["model_config"]))

    def execute(self, requests):
        return run_batch(requests, _items, self.embedder.embed, _vectors, "embed")


def _items(request):
    texts = input_of(request, "TEXT").reshape(-1)
    return [as_item(decode_text(t, f"TEXT[{r}]"), f"TEXT[{r}]") for r, t in enumerate(texts)]


def _vectors(results):
    return [pb_utils.Tensor("VECTOR", np.ascontiguousarray(np.asarray(results), dtype=np.float32))]
