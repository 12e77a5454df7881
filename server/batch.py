"""One dynamic batch in a Triton python model: check each request, compute the good ones together.

A bad request (BadRequest from `parse`) gets its own INVALID_ARG error; the rows of the others go through
`compute` in one call, and each request gets back its own slice of the result. If `compute` itself fails,
the requests of that batch get the reason and the model keeps serving. Imported only inside the python
backend's stub, where `triton_python_backend_utils` exists.
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

    responses, parsed = parse_each(requests, parse)
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


def parse_each(requests: list, parse: Callable[[object], object]) -> tuple[list, list]:
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
    return responses, parsed


def fail_batch(responses: list, parsed: list, what: str, error: Exception) -> list:
    """The batch's computation failed: every parsed request gets the reason; the model stays up."""
    import triton_python_backend_utils as pb_utils

    failure = pb_utils.TritonError(f"{what} failed: {type(error).__name__}: {error}")
    for i, _ in parsed:
        responses[i] = pb_utils.InferenceResponse(error=failure)
    return responses
