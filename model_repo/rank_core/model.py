"""Triton python model `rank_core`, behind the public ensemble `rank` (llmrec.server.ensembles).

HISTORY [b, h], CANDIDATES [b, c] texts -> SCORES [b, c].
EaaR online (llmrec.server.runtime.RankScorer): the exported BERT encoder, then the trained head. Item
vectors are cached by text; all users of a dynamic batch share one encoder pass over their distinct
uncached texts; a bad request gets its own error and the others are scored. The cache's lookups go to
Triton's /metrics as `llmrec_rank_item_cache_lookups_total{result="hit"|"miss"}` and its size as
`llmrec_rank_item_cache_items`.
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from llmrec.server.batch import input_of, run_batch
from llmrec.server.contract import MAX_CANDIDATES, MAX_HISTORY, BadRequest, decode_text
from llmrec.server.runtime import RankScorer, model_precision


def _texts(request, name, limit):
    values = input_of(request, name)
    if values.shape[-1] == 0:
        raise BadRequest(f"{name} is empty: give at least one text")
    if values.shape[-1] > limit:
        raise BadRequest(f"{name} has {values.shape[-1]} texts; the limit is {limit}")
    return [[decode_text(t, f"{name}[{b}][{j}]") for j, t in enumerate(row)] for b, row in enumerate(values)]


class TritonPythonModel:
    def initialize(self, args):
        folder = Path(args["model_repository"]) / args["model_version"]
        self.scorer = RankScorer(folder, precision=model_precision(args["model_config"]))
        labels = {"model": "rank", "version": args["model_version"]}
        # The families must outlive their metrics (Triton refuses to update a metric of a deleted family).
        self.lookups = pb_utils.MetricFamily(
            name="llmrec_rank_item_cache_lookups_total",
            description="rank's item-vector cache lookups, by result (hit or miss)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.items = pb_utils.MetricFamily(
            name="llmrec_rank_item_cache_items",
            description="item vectors held by rank's cache",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self.hits = self.lookups.Metric(labels={**labels, "result": "hit"})
        self.misses = self.lookups.Metric(labels={**labels, "result": "miss"})
        self.size = self.items.Metric(labels=labels)
        self.booked = (0, 0)

    def execute(self, requests):
        responses = run_batch(requests, _users, self.scorer.score, _scores, "rank")
        cache = self.scorer.cache
        try:  # the answers are computed: a metrics failure is logged, never turned into failed requests
            self.hits.increment(cache.hits - self.booked[0])
            self.misses.increment(cache.misses - self.booked[1])
            self.size.set(len(cache))
            self.booked = (cache.hits, cache.misses)
        except Exception as e:
            pb_utils.Logger.log_warn(f"rank: could not update the item-cache metrics: {e}")
        return responses


def _users(request):
    history = _texts(request, "HISTORY", MAX_HISTORY)
    candidates = _texts(request, "CANDIDATES", MAX_CANDIDATES)
    return list(zip(history, candidates, strict=True))


def _scores(results):
    return [pb_utils.Tensor("SCORES", np.ascontiguousarray(np.stack(results), dtype=np.float32))]
