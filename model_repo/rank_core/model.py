"""Triton python model `rank_core`, behind the public ensemble `rank` (llmrec.server.ensembles).

HISTORY or HISTORY_IDS [b, h], CANDIDATES or CANDIDATE_IDS [b, c] (texts or catalogue item ids) -> SCORES [b, c].
EaaR online (llmrec.server.runtime.RankScorer): the exported BERT encoder, then the trained head. Item
vectors are cached by text, and read by id from the vectors export computed; all users of an execution
(one request's rows on the shipped configs) share one encoder pass over their distinct uncached texts; a
bad request gets its own error and the others are scored. The cache's lookups go to Triton's /metrics as
`llmrec_rank_item_cache_lookups_total{result="hit"|"miss"}` and its size as `llmrec_rank_item_cache_items`.
"""

from pathlib import Path

import triton_python_backend_utils as pb_utils

from llmrec.server.batch import input_of, run_batch
from llmrec.server.contract import (
    CANDIDATE_IDS,
    CANDIDATES,
    HISTORY,
    HISTORY_IDS,
    MAX_CANDIDATES,
    MAX_HISTORY,
    RANK,
    SCORES,
    BadRequest,
    decode_text,
)
from llmrec.server.runtime import (
    ById,
    RankScorer,
    instance_device,
    limit_threads,
    model_precision,
    model_threads,
)


def _side(request, scorer: RankScorer, texts_name: str, ids_name: str, limit: int) -> list:
    """One side of each row of a request: its texts, or ById of its item ids (checked against the catalogue)."""
    texts, ids = input_of(request, texts_name, required=False), input_of(request, ids_name, required=False)
    if (texts is None) == (ids is None):
        raise BadRequest(f"give exactly one of {texts_name} and {ids_name}")
    name, values = (texts_name, texts) if ids is None else (ids_name, ids)
    if values.shape[-1] == 0:
        raise BadRequest(f"{name} is empty: give at least one item")
    if values.shape[-1] > limit:
        raise BadRequest(f"{name} has {values.shape[-1]} items; the limit is {limit}")
    rows = [[decode_text(t, f"{name}[{b}][{j}]") for j, t in enumerate(row)] for b, row in enumerate(values)]
    if ids is None:
        return rows
    scorer.check_ids([i for row in rows for i in row], name)
    return [ById(row) for row in rows]


class TritonPythonModel:
    def initialize(self, args):
        folder = Path(args["model_repository"]) / args["model_version"]
        threads = model_threads(args["model_config"])
        limit_threads(threads)
        self.scorer = RankScorer(
            folder,
            precision=model_precision(args["model_config"]),
            threads=threads,
            device=instance_device(args),
        )
        # one cache per instance: its own series (dashboards sum them)
        labels = {"model": "rank", "version": args["model_version"], "instance": args["model_instance_name"]}
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
        responses = run_batch(requests, RANK, self._users, self._score)
        cache = self.scorer.cache
        try:  # the answers are computed: a metrics failure is logged, never turned into failed requests
            self.hits.increment(cache.hits - self.booked[0])
            self.misses.increment(cache.misses - self.booked[1])
            self.size.set(len(cache))
            self.booked = (cache.hits, cache.misses)
        except Exception as e:
            pb_utils.Logger.log_warn(f"rank: could not update the item-cache metrics: {e}")
        return responses

    def _users(self, request):
        history = _side(request, self.scorer, HISTORY, HISTORY_IDS, MAX_HISTORY)
        candidates = _side(request, self.scorer, CANDIDATES, CANDIDATE_IDS, MAX_CANDIDATES)
        return list(zip(history, candidates, strict=True))

    def _score(self, users):
        return {SCORES: self.scorer.score(users)}
