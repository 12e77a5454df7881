"""Triton python model `rank`: HISTORY [b, h], CANDIDATES [b, c] texts -> SCORES [b, c].

EaaR online (llmrec.server.runtime.RankScorer): the exported BERT encoder, then the trained head. All
users of a dynamic batch share one encoder pass over their distinct texts; a bad request gets its own
error and the others are scored.
"""

from pathlib import Path

import triton_python_backend_utils as pb_utils

from llmrec.server.batch import run_batch
from llmrec.server.contract import MAX_CANDIDATES, MAX_HISTORY, BadRequest, decode_text
from llmrec.server.runtime import RankScorer


def _texts(request, name, limit):
    values = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
    if values.shape[-1] == 0:
        raise BadRequest(f"{name} is empty: give at least one text")
    if values.shape[-1] > limit:
        raise BadRequest(f"{name} has {values.shape[-1]} texts; the limit is {limit}")
    return [[decode_text(t, f"{name}[{b}][{j}]") for j, t in enumerate(row)] for b, row in enumerate(values)]


class TritonPythonModel:
    def initialize(self, args):
        self.scorer = RankScorer(Path(args["model_repository"]) / args["model_version"])

    def execute(self, requests):
        return run_batch(requests, _users, self.scorer.score, "SCORES", "rank")


def _users(request):
    history = _texts(request, "HISTORY", MAX_HISTORY)
    candidates = _texts(request, "CANDIDATES", MAX_CANDIDATES)
    return list(zip(history, candidates, strict=True))
