"""Triton python model `similar_core`, behind the public ensemble `similar` (llmrec.server.ensembles).

ITEM_ID or TEXT [b, 1] or VECTOR [b, d], K [b, 1] -> ITEM_IDS, SCORES [b, k]. The item index
(llmrec.server.item_index.ItemIndex: exact, or FAISS) is read at load: a malformed index, or one whose
dimension differs from the `embed` model's, fails this version's load with the reason, and a server that
already serves an older version keeps serving it. Text queries are embedded by `embed_core` (a BLS call:
the texts passed this model's checks already), item-id queries read their vector from the index and never
return themselves, vector queries are used as given (normalised). All queries of an execution (one
request's rows on the shipped configs) share one top-k call (the largest K; smaller K take a prefix, since
results come best first); a bad request gets its own error (llmrec.server.batch).
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from llmrec.server import ensembles
from llmrec.server.batch import Overloaded, input_of, run_batch
from llmrec.server.contract import (
    EMBED,
    ITEM_ID,
    ITEM_IDS,
    SCORES,
    SIMILAR,
    TEXT,
    TEXT_LENGTH,
    TEXT_UTF8,
    VECTOR,
    BadRequest,
    K,
    as_item,
    check_k,
    check_vectors,
    decode_text,
    pack_texts,
)
from llmrec.server.item_index import ItemIndex
from llmrec.server.runtime import check_index_matches_embed, instance_device, limit_threads, model_threads


class TritonPythonModel:
    def initialize(self, args):
        self.index = ItemIndex.load(
            Path(args["model_repository"]) / args["model_version"], instance_device(args)
        )
        limit_threads(model_threads(args["model_config"]))  # after the load, which brings FAISS in
        check_index_matches_embed(self.index.dim, Path(args["model_repository"]).parent)

    def _parse(self, request):
        """One row per query: (k, query vector or None, text to embed or None, the item it excludes or None)."""
        ids = input_of(request, ITEM_ID, required=False)
        texts = input_of(request, TEXT, required=False)
        vectors = input_of(request, VECTOR, required=False)
        if sum(x is not None for x in (ids, texts, vectors)) != 1:
            raise BadRequest(f"give exactly one of {ITEM_ID}, {TEXT} and {VECTOR}")
        ks = input_of(request, K).reshape(-1)
        if len(set(ks.tolist())) != 1:
            raise BadRequest(f"all rows of a request share one K, got {sorted(set(ks.tolist()))[:5]}")
        if ids is not None:
            item_ids = [decode_text(t, f"{ITEM_ID}[{r}]") for r, t in enumerate(ids.reshape(-1))]
            k = check_k(int(ks[0]), len(self.index) - 1)
            return [(k, v, None, i) for v, i in zip(self.index.vectors_of(item_ids), item_ids, strict=True)]
        k = check_k(int(ks[0]), len(self.index))
        if vectors is not None:
            return [(k, v, None, None) for v in check_vectors(vectors, self.index.dim)]
        texts = texts.reshape(-1)
        for r, t in enumerate(texts):
            what = f"{TEXT}[{r}]"
            as_item(decode_text(t, what), what)  # refuses what `embed` would
        return [(k, None, t, None) for t in texts]

    def _embed(self, texts):
        out = []
        for start in range(0, len(texts), EMBED.max_batch_size):
            chunk = texts[start : start + EMBED.max_batch_size]
            utf8, lengths = pack_texts(np.asarray(chunk, dtype=np.object_))  # as embed's core takes texts
            response = pb_utils.InferenceRequest(
                model_name=ensembles.core(EMBED.name),
                requested_output_names=[VECTOR],
                inputs=[pb_utils.Tensor(TEXT_UTF8, utf8), pb_utils.Tensor(TEXT_LENGTH, lengths)],
            ).exec()
            if response.has_error():
                error = response.error()
                if error.code() == pb_utils.TritonError.UNAVAILABLE:  # embed's queue is full or timed out
                    raise Overloaded(f"the embed model is overloaded: {error.message()}")
                raise RuntimeError(f"the embed model failed: {error.message()}")
            vectors = pb_utils.get_output_tensor_by_name(response, VECTOR).as_numpy()
            if vectors.shape != (len(chunk), self.index.dim):
                raise RuntimeError(
                    f"the embed model gave vectors of shape {vectors.shape}, the index has {self.index.dim}-d"
                )
            out.append(vectors)
        return np.concatenate(out)

    def _search(self, rows):
        """The ids and scores of each row, its own k of them."""
        texts = [text for _, _, text, _ in rows if text is not None]
        embedded = iter(self._embed(texts) if texts else ())
        queries = np.stack([next(embedded) if text is not None else v for _, v, text, _ in rows])
        k_max = max(k for k, _, _, _ in rows)
        ids, scores = self.index.search(queries, k_max, [exclude for _, _, _, exclude in rows])
        ks = [k for k, _, _, _ in rows]
        return {
            ITEM_IDS: [np.asarray(i[:k], dtype=np.object_) for k, i in zip(ks, ids, strict=True)],
            SCORES: [s[:k] for k, s in zip(ks, scores, strict=True)],
        }

    def execute(self, requests):
        return run_batch(requests, SIMILAR, self._parse, self._search)
