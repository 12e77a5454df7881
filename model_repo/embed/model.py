"""Triton python model `embed`: TEXT [b, 1] -> VECTOR [b, d] (llmrec.server.runtime.NoteEmbedder).

Requests of a dynamic batch are checked one by one: a bad one gets its own error response, the others
are embedded together in one onnxruntime call.
"""

from pathlib import Path

import triton_python_backend_utils as pb_utils

from llmrec.server.batch import run_batch
from llmrec.server.contract import as_item, decode_text
from llmrec.server.runtime import NoteEmbedder, model_precision


class TritonPythonModel:
    def initialize(self, args):
        folder = Path(args["model_repository"]) / args["model_version"]
        self.embedder = NoteEmbedder(folder, precision=model_precision(args["model_config"]))

    def execute(self, requests):
        return run_batch(requests, _items, self.embedder.embed, "VECTOR", "embed")


def _items(request):
    texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
    return [as_item(decode_text(t, f"TEXT[{r}]")) for r, t in enumerate(texts)]
