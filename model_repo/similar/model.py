"""Triton python model `similar`: ITEM_ID or TEXT [b, 1], K [b, 1] -> ITEM_IDS, SCORES [b, k].

The item index (llmrec.server.runtime.ItemIndex) is read at load: a malformed index fails this version's
load with the reason, and a server that already serves an older version keeps serving it. Text queries
are embedded by the `embed` model (a BLS call), item-id queries read their vector from the index and
never return themselves. All queries of a dynamic batch share one top-k call (the largest K; smaller
K take a prefix, since results come best first).
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from llmrec.server.batch import fail_batch, parse_each
from llmrec.server.contract import EMBED, BadRequest, as_item, check_k, decode_text
from llmrec.server.runtime import ItemIndex


def _strings(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)


class TritonPythonModel:
    def initialize(self, args):
        self.index = ItemIndex.load(Path(args["model_repository"]) / args["model_version"])

    def _parse(self, request):
        ids, texts = _strings(request, "ITEM_ID"), _strings(request, "TEXT")
        if (ids is None) == (texts is None):
            raise BadRequest("give exactly one of ITEM_ID and TEXT")
        ks = pb_utils.get_input_tensor_by_name(request, "K").as_numpy().reshape(-1)
        if len(set(ks.tolist())) != 1:
            raise BadRequest(f"all rows of a request share one K, got {sorted(set(ks.tolist()))}")
        if ids is not None:
            item_ids = [decode_text(t, f"ITEM_ID[{r}]") for r, t in enumerate(ids)]
            vectors = self.index.vectors_of(item_ids)  # unknown ids raise BadRequest
            return check_k(int(ks[0]), len(self.index) - 1), vectors, item_ids
        items = [as_item(decode_text(t, f"TEXT[{r}]")) for r, t in enumerate(texts)]
        return check_k(int(ks[0]), len(self.index)), texts, [None] * len(items)

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
        responses, parsed = parse_each(requests, self._parse)  # (position, (k, vectors or texts, excluded))
        if not parsed:
            return responses
        try:
            texts = [t for _, (_, q, ex) in parsed if ex[0] is None for t in q]
            embedded = self._embed(texts) if texts else None
            queries, start = [], 0
            for _, (_, q, ex) in parsed:
                if ex[0] is None:
                    queries.append(embedded[start : start + len(q)])
                    start += len(q)
                else:
                    queries.append(q)
            k_max = max(k for _, (k, _, _) in parsed)
            exclude = [e for _, (_, _, ex) in parsed for e in ex]
            ids, scores = self.index.search(np.concatenate(queries), k_max, exclude)
        except Exception as e:  # keep serving: the batch fails with the reason, the model stays up
            return fail_batch(responses, parsed, "similar", e)
        row = 0
        for i, (k, q, _) in parsed:
            rows = slice(row, row + len(q))
            row += len(q)
            out_ids = np.array([r[:k] for r in ids[rows]], dtype=np.object_)
            out_scores = np.ascontiguousarray(scores[rows, :k], dtype=np.float32)
            responses[i] = pb_utils.InferenceResponse(
                [pb_utils.Tensor("ITEM_IDS", out_ids), pb_utils.Tensor("SCORES", out_scores)]
            )
        return responses
