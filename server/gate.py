"""The gate in front of a public model whose core merges requests (`embed`; contract `Model.merges_requests`):
a python model that passes its inputs through, texts packed as UTF-8 bytes and lengths (contract
`Model.core_inputs`).

Why it exists: this Triton build's python backend checks the framing of BYTES inputs (4-byte length +
bytes per element) while it gathers a dynamic batch, and one request whose last element claims more bytes
than it carries (Triton's own request check lets that through) fails the whole batch: every other request
in it got that request's error. The gate executes one request at a time (its dynamic batcher prefers
batches of 1 and waits for nothing; it is there for the bounded queue), so each request is gathered alone
and such a request fails alone (INVALID_ARGUMENT naming the input); the batched `<model>_core` behind it only
ever sees inputs that passed, and takes no BYTES tensor at all, so a client that calls the core by name
cannot fail a batch that way either. The gate also refuses, by name, a request without a required input
(this build does not check that for python models, and an ensemble would then wait for a tensor that never
comes: "unexpected deadlock"), and a text longer than the contract allows: passed on, a 50 MB text grew
the core's shared memory as well, for good (measured: +930 MB of server memory after five of them).
Wiring: llmrec.server.ensembles. Imported only inside the python backend's stub.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from llmrec.server.contract import MAX_TEXT_BYTES, pack_texts, packed


def _refusal(name: str, values: np.ndarray, per_row: bool) -> str | None:
    """Why a BYTES input cannot pass (an element over the text limit), or None. Elements are named as the
    cores name them: TEXT[r] for one text per row, HISTORY[b][j] for lists (`per_row`)."""
    if values.dtype != np.object_:
        return None
    rows = values.reshape(len(values), -1) if per_row and values.ndim >= 1 else values.reshape(-1, 1)
    for (b, j), value in np.ndenumerate(rows):
        if len(value) > MAX_TEXT_BYTES:
            where = f"[{b}][{j}]" if per_row else f"[{b}]"
            return f"{name}{where} is {len(value)} bytes; the limit is {MAX_TEXT_BYTES}"
    return None


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        inputs = config["input"]
        self.names = [tensor["name"] for tensor in inputs]
        self.required = [tensor["name"] for tensor in inputs if not tensor.get("optional", False)]
        # inputs holding a list of texts per row (dims [-1], e.g. HISTORY) rather than one (dims [1])
        self.lists = {tensor["name"] for tensor in inputs if [int(d) for d in tensor["dims"]] == [-1]}
        # texts that the core takes packed (contract `Model.core_inputs`)
        outputs = {tensor["name"] for tensor in config["output"]}
        self.packed = {name for name in self.names if packed(name)[0] in outputs}

    def execute(self, requests):
        responses = []
        for request in requests:  # one request per call (preferred batch size 1), but any count is handled
            try:
                missing = [n for n in self.required if pb_utils.get_input_tensor_by_name(request, n) is None]
                why = f"input {missing[0]!r} is missing" if missing else None
                tensors = []
                for name in self.names:  # an optional input left out stays out (the core sees it absent)
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is not None and why is None:
                        values = tensor.as_numpy()
                        why = _refusal(name, values, name in self.lists)
                        if name not in self.packed:
                            tensors.append(pb_utils.Tensor(name, values))
                        elif why is None:
                            utf8_name, length_name = packed(name)
                            utf8, lengths = pack_texts(values)
                            tensors += [
                                pb_utils.Tensor(utf8_name, utf8),
                                pb_utils.Tensor(length_name, lengths),
                            ]
                if why is not None:
                    error = pb_utils.TritonError(why, pb_utils.TritonError.INVALID_ARG)
                    responses.append(pb_utils.InferenceResponse(error=error))
                    continue
                responses.append(pb_utils.InferenceResponse(tensors))
            except Exception as e:  # nothing may leave execute() (see llmrec.server.batch)
                error = pb_utils.TritonError(
                    f"gate: {type(e).__name__}: {e}"[:1000], pb_utils.TritonError.INVALID_ARG
                )
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses
