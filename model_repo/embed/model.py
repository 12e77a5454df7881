"""Triton python model `embed`: TEXT [b, 1] -> VECTOR [b, d] (llmrec.server.runtime.NoteEmbedder).

Requests of a dynamic batch are checked one by one: a bad one gets its own error response, the others
are embedded together in one onnxruntime call.
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from llmrec.server.contract import BadRequest, as_item, decode_text
from llmrec.server.runtime import NoteEmbedder


class TritonPythonModel:
    def initialize(self, args):
        self.embedder = NoteEmbedder(Path(args["model_repository"]) / args["model_version"])

    def execute(self, requests):
        responses = [None] * len(requests)
        parsed = []  # (request position, items)
        for i, request in enumerate(requests):
            try:
                texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
                parsed.append((i, [as_item(decode_text(t, f"TEXT[{r}]")) for r, t in enumerate(texts)]))
            except BadRequest as e:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                )
        try:
            vectors = self.embedder.embed([item for _, items in parsed for item in items])
        except Exception as e:  # keep serving: the batch fails with the reason, the model stays up
            error = pb_utils.TritonError(f"embed failed: {type(e).__name__}: {e}")
            for i, _ in parsed:
                responses[i] = pb_utils.InferenceResponse(error=error)
            return responses
        start = 0
        for i, items in parsed:
            out = np.ascontiguousarray(vectors[start : start + len(items)], dtype=np.float32)
            start += len(items)
            responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor("VECTOR", out)])
        return responses
