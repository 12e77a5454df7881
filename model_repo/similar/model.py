"""Triton python model `similar`: ITEM_ID or TEXT [b, 1] or VECTOR [b, d], K [b, 1] -> ITEM_IDS, SCORES [b, k].

The item index (llmrec.server.runtime.ItemIndex) is read at load: a malformed index fails this version's
load with the reason, and a server that already serves an older version keeps serving it. Text queries
are embedded by the `embed` model (a BLS call), item-id queries read their vector from the index and
never return themselves, vector queries are used as given (normalised). All queries of a dynamic batch
share one top-k call (the largest K; smaller K take a prefix, since results come best first).
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from llmrec.server.batch import fail_batch, parse_each
from llmrec.server.contract import EMBED, BadRequest, as_item, check_k, check_vectors, decode_text
from llmrec.server.runtime import ItemIndex


def _optional(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        self.index = ItemIndex.load(Path(args["model_repository"]) / args["model_version"])

    def _parse(self, request):
        """(k, query vectors or None, texts to embed or None, the item each row excludes or None)."""
        ids, texts = _optional(request, "ITEM_ID"), _optional(request, "TEXT")
        vectors = _optional(request, "VECTOR")
        if sum(x is not None for x in (ids, texts, vectors)) != 1:
            raise BadRequest("give exactly one of ITEM_ID, TEXT and VECTOR")
        ks = pb_utils.get_input_tensor_by_name(request, "K").as_numpy().reshape(-1)
        if len(set(ks.tolist())) != 1:
            raise BadRequest(f"all rows of a request share one K, got {sorted(set(ks.tolist()))}")
        if ids is not None:
            item_ids = [decode_text(t, f"ITEM_ID[{r}]") for r, t in enumerate(ids.reshape(-1))]
            vectors = self.index.vectors_of(item_ids)  # unknown ids raise BadRequest
            return check_k(int(ks[0]), len(self.index) - 1), vectors, None, item_ids
        if vectors is not None:
            vectors = check_vectors(vectors, self.index.dim)
            return check_k(int(ks[0]), len(self.index)), vectors, None, [None] * len(vectors)
        texts = texts.reshape(-1)
        for r, t in enumerate(texts):
            as_item(decode_text(t, f"TEXT[{r}]"))  # refuses what `embed` would
        return check_k(int(ks[0]), len(self.index)), None, texts, [None] * len(texts)

    def _embed(self, texts):
        out = []
        for start in range(0, len(texts), EMBED.max_batch_size):
            chunk = np.asarray(texts[start : start + EMBED.max_batch_size], dtype=np.object_).reshape(-1, 1)
            response = pb_utils.InferenceRequest(
                model_name="embed", requested_output_names=["VECTOR"], inputs=[pb_utils.Tensor("TEXT", chunk)]
            ).exec()
            if response.has_error():
                raise RuntimeError(f"the embed model failed: {response.error().message()}")
            out.append(pb_utils.get_output_tensor_by_name(response, "VECTOR").as_numpy())
        return np.concatenate(out)

    def execute(self, requests):
        # parsed: (position, (k, query vectors, texts to embed, excluded items))
        responses, parsed = parse_each(requests, self._parse, "similar")
        if not parsed:
            return responses
        try:
            texts = [t for _, (_, _, q, _) in parsed if q is not None for t in q]
            embedded = self._embed(texts) if texts else None
            queries, start = [], 0
            for _, (_, vectors, q, _) in parsed:
                if q is not None:
                    queries.append(embedded[start : start + len(q)])
                    start += len(q)
                else:
                    queries.append(vectors)
            k_max = max(k for _, (k, _, _, _) in parsed)
            exclude = [e for _, (_, _, _, ex) in parsed for e in ex]
            ids, scores = self.index.search(np.concatenate(queries), k_max, exclude)
        except Exception as e:  # keep serving: the batch fails with the reason, the model stays up
            return fail_batch(responses, parsed, "similar", e)
        row = 0
        for i, (k, _, _, ex) in parsed:
            rows = slice(row, row + len(ex))
            row += len(ex)
            out_ids = np.array([r[:k] for r in ids[rows]], dtype=np.object_)
            out_scores = np.ascontiguousarray(scores[rows, :k], dtype=np.float32)
            responses[i] = pb_utils.InferenceResponse(
                [pb_utils.Tensor("ITEM_IDS", out_ids), pb_utils.Tensor("SCORES", out_scores)]
            )
        return responses
