"""One dynamic batch in a Triton python model: check each request, compute the good ones together.

A bad request (BadRequest from `parse`) gets its own INVALID_ARG error; the rows of the others go through
`compute` in one call, and each request gets back its own slice of the result. If `compute` itself fails,
the requests of that batch get the reason and the model keeps serving. Imported only inside the python
backend's stub, where `triton_python_backend_utils` exists.

Triton books a python model's error responses as successes (nv_inference_request_failure stays 0), so
every error response is also counted here, on Triton's /metrics, as
`llmrec_request_errors_total{model, kind="invalid_argument"|"internal"}`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from llmrec.server.contract import BadRequest


def run_batch(
    requests: list,
    parse: Callable[[object], list],
    compute: Callable[[list], Sequence],
    output: str,
    what: str,
) -> list:
    """Responses for `requests`: `parse` turns one request into its rows, `compute` maps all rows to one
    result row each, and request i gets its rows' results as the FP32 tensor `output`."""
    import triton_python_backend_utils as pb_utils

    responses, parsed = parse_each(requests, parse, what)
    if not parsed:
        return responses
    try:
        results = compute([row for _, rows in parsed for row in rows])
    except Exception as e:  # keep serving: the batch fails with the reason, the model stays up
        return fail_batch(responses, parsed, what, e)
    start = 0
    for i, rows in parsed:
        out = np.ascontiguousarray(np.asarray(results[start : start + len(rows)]), dtype=np.float32)
        start += len(rows)
        responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(output, out)])
    return responses


def parse_each(requests: list, parse: Callable[[object], object], what: str) -> tuple[list, list]:
    """(responses, parsed): an INVALID_ARG error response for each request `parse` refuses (BadRequest),
    None for the others, and (position, parse(request)) for each of those."""
    import triton_python_backend_utils as pb_utils

    responses: list = [None] * len(requests)
    parsed = []
    for i, request in enumerate(requests):
        try:
            parsed.append((i, parse(request)))
        except BadRequest as e:
            responses[i] = pb_utils.InferenceResponse(
                error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
            )
    count_errors(what, "invalid_argument", len(requests) - len(parsed))
    return responses, parsed


def fail_batch(responses: list, parsed: list, what: str, error: Exception) -> list:
    """The batch's computation failed: every parsed request gets the reason; the model stays up."""
    import triton_python_backend_utils as pb_utils

    failure = pb_utils.TritonError(f"{what} failed: {type(error).__name__}: {error}")
    for i, _ in parsed:
        responses[i] = pb_utils.InferenceResponse(error=failure)
    count_errors(what, "internal", len(parsed))
    return responses


_ERROR_METRICS: dict = {}  # the family and its metrics, made at the first error (one model per stub process)


def count_errors(what: str, kind: str, n: int) -> None:
    """Add n error responses of model `what` to llmrec_request_errors_total; a metrics failure is logged."""
    if n <= 0:
        return
    import triton_python_backend_utils as pb_utils

    try:
        if "family" not in _ERROR_METRICS:  # kept alive here: Triton refuses metrics of a deleted family
            _ERROR_METRICS["family"] = pb_utils.MetricFamily(
                name="llmrec_request_errors_total",
                description="error responses of the llmrec python models, by kind",
                kind=pb_utils.MetricFamily.COUNTER,
            )
        if (what, kind) not in _ERROR_METRICS:
            _ERROR_METRICS[what, kind] = _ERROR_METRICS["family"].Metric(labels={"model": what, "kind": kind})
        _ERROR_METRICS[what, kind].increment(n)
    except Exception as e:
        pb_utils.Logger.log_warn(f"{what}: could not count {n} error responses on /metrics: {e}")
