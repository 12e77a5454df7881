"""One dynamic batch in a Triton python model: check each request, compute the good ones together.

    return run_batch(requests, contract.EMBED, parse, compute)

`parse(request)` turns one request into its rows (a BadRequest refuses it); `compute(rows)` maps the rows
of all good requests to their outputs by name, {output name: one value per row}; each request's response
holds its rows' values of every output of the contract's model, stacked and cast to the contract's type.
The promise kept here: a request's failure stays in that request's response.

- A request `parse` refuses gets its own INVALID_ARG error naming the problem; anything else `parse`
  raises (a bug, or an input no check foresaw) fails that request alone, as INTERNAL.
- If `compute` fails on the batch, each request is computed again on its own, so that only the
  requests that fail alone get an error (BadRequest from `compute` -> INVALID_ARG, else INTERNAL);
  their neighbours are answered. The cost (one pass per request) is paid only on that path.
- Nothing escapes `execute`: an exception out of a python model's execute() under concurrent traffic
  crashed this tritonserver build (SIGSEGV in libtriton_python.so), taking every model down.
- Overload (`Overloaded`, e.g. a BLS call refused by a full queue) is not a fault of any request: the
  whole batch gets UNAVAILABLE at once, which clients retry with backoff, and nothing is recomputed.
- Every error response gets its own TritonError object: one object shared by several responses of a
  batch was part of the same crash.

Triton books a python model's error responses as successes (nv_inference_request_failure stays 0), so
every error response is also counted here, on Triton's /metrics, as
`llmrec_request_errors_total{model, kind="invalid_argument"|"unavailable"|"internal"}`. Imported only inside the
python backend's stub, where `triton_python_backend_utils` exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from llmrec.server.contract import NUMPY_TYPES, BadRequest, Model

MAX_ERROR_CHARS = 1_000  # an error message never echoes a huge input back


class Overloaded(RuntimeError):
    """A model this one calls refused for load (its queue is full or timed out): UNAVAILABLE, retryable."""


def run_batch(
    requests: list,
    model: Model,
    parse: Callable[[object], list],
    compute: Callable[[list], Mapping[str, Sequence]],
) -> list:
    """Exactly one response per request, in order (see the module docstring)."""
    what = model.name
    responses: list = [None] * len(requests)
    try:
        respond = _responder(model)
        parsed = _parse_each(requests, parse, responses, what)
        if parsed:
            try:
                _answer(parsed, compute(_rows(parsed)), respond, responses, what)
            except Overloaded as e:
                for i, _ in parsed:
                    _fail(responses, i, what, e)
            except Exception as e:
                if len(parsed) == 1:
                    _fail(responses, parsed[0][0], what, e)
                else:  # find the request(s) that fail alone; the others are answered
                    for one in parsed:
                        try:
                            _answer([one], compute(one[1]), respond, responses, what)
                        except Exception as e_one:
                            _fail(responses, one[0], what, e_one)
    except Exception as e:  # the last guard: nothing may leave execute()
        for i, response in enumerate(responses):
            if response is None:
                _fail(responses, i, what, e)
    return responses


def input_of(request, name: str, required: bool = True):
    """The named input of a request as a numpy array; None if it is absent and optional."""
    import triton_python_backend_utils as pb_utils

    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise BadRequest(f"input {name!r} is missing")
        return None
    return tensor.as_numpy()


def _responder(model: Model) -> Callable[[Mapping[str, Sequence], int, int], list]:
    """The output tensors of rows [start, stop) of computed results: every output of the contract's
    model, by name, as its type (a missing output is the model's bug: RuntimeError naming it)."""
    import triton_python_backend_utils as pb_utils

    def respond(results: Mapping[str, Sequence], start: int, stop: int) -> list:
        tensors = []
        for tensor in model.outputs:
            if tensor.name not in results:
                raise RuntimeError(f"{model.name} computed no {tensor.name} (it computed {sorted(results)})")
            rows = np.stack([np.asarray(v) for v in results[tensor.name][start:stop]])
            tensors.append(
                pb_utils.Tensor(tensor.name, np.ascontiguousarray(rows, NUMPY_TYPES[tensor.dtype]))
            )
        return tensors

    return respond


def _rows(parsed: list) -> list:
    return [row for _, rows in parsed for row in rows]


def _parse_each(requests: list, parse: Callable, responses: list, what: str) -> list:
    """[(position, rows)] of the requests `parse` accepts; the others get their error response."""
    parsed = []
    for i, request in enumerate(requests):
        try:
            parsed.append((i, parse(request)))
        except Exception as e:
            _fail(responses, i, what, e)
    return parsed


def _answer(
    parsed: list, results: Mapping[str, Sequence], respond: Callable, responses: list, what: str
) -> None:
    import triton_python_backend_utils as pb_utils

    n = len(_rows(parsed))
    if counts := {name: len(values) for name, values in results.items() if len(values) != n}:
        raise RuntimeError(f"{what} computed {counts} results for {n} rows")
    start, answers = 0, []
    for i, rows in parsed:  # all responses built before any is stored: a failure leaves none half-written
        answers.append((i, pb_utils.InferenceResponse(respond(results, start, start + len(rows)))))
        start += len(rows)
    for i, response in answers:
        responses[i] = response


def _fail(responses: list, i: int, what: str, error: Exception) -> None:
    """Request i gets its own error response: INVALID_ARG for a BadRequest, INTERNAL otherwise."""
    import triton_python_backend_utils as pb_utils

    if isinstance(error, BadRequest):
        code, kind, message = pb_utils.TritonError.INVALID_ARG, "invalid_argument", str(error)
    elif isinstance(error, Overloaded):
        code, kind, message = pb_utils.TritonError.UNAVAILABLE, "unavailable", f"{what}: {error}"
    else:
        code, kind = pb_utils.TritonError.INTERNAL, "internal"
        message = f"{what} failed: {type(error).__name__}: {error}"
        pb_utils.Logger.log_error(message[:MAX_ERROR_CHARS])
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + " ..."
    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
    count_errors(what, kind, 1)


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
