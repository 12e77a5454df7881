"""The served python models import only what serving needs: numpy, onnxruntime, torch, tokenizers, FAISS and
the project's serving code. Each model.py is loaded, initialised on a real exported version and asked one
request in a fresh interpreter where transformers, pandas, scikit-learn and llmrec.training cannot be
imported (a stand-in for the python backend's `triton_python_backend_utils` carries the tensors)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from llmrec.server import contract, ensembles

BLOCKED = ("transformers", "pandas", "sklearn", "llmrec.training")

# What the models use of the python backend's module, kept to plain Python.
PB_UTILS = """
import numpy as np

class Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)
    def name(self):
        return self._name
    def as_numpy(self):
        return self._array

class TritonError:
    INVALID_ARG, INTERNAL, UNAVAILABLE = 3, 13, 14
    def __init__(self, message, code=13):
        self._message, self._code = message, code
    def message(self):
        return self._message
    def code(self):
        return self._code

class InferenceResponse:
    def __init__(self, output_tensors=(), error=None):
        self.output_tensors, self.error = list(output_tensors), error

def get_input_tensor_by_name(request, name):
    return Tensor(name, request[name]) if name in request else None

class Logger:
    log_error = log_warn = log_info = staticmethod(lambda message: None)

class MetricFamily:
    COUNTER, GAUGE = "counter", "gauge"
    def __init__(self, name, description, kind):
        pass
    def Metric(self, labels):
        return _Metric()

class _Metric:
    def increment(self, n):
        pass
    def set(self, value):
        pass
"""

RUN = """
import importlib.abc, importlib.util, json, sys
import numpy as np

blocked, stub, model_py, args, request, dtypes = json.loads(sys.argv[1])

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in blocked):
            raise ImportError(f"{name} is blocked: a served model must not import it")

sys.meta_path.insert(0, Block())
sys.path.insert(0, stub)
spec = importlib.util.spec_from_file_location("served_model", model_py)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
model = module.TritonPythonModel()
model.initialize(args)
def tensor(name, rows):
    if isinstance(rows[0][0], str):
        rows = [[x.encode() for x in row] for row in rows]
    return np.array(rows, dtype=dtypes[name])

(response,) = model.execute([{name: tensor(name, rows) for name, rows in request.items()}])
if response.error is not None:
    raise SystemExit(f"error response: {response.error.message()}")
print(json.dumps({
    "outputs": {t.name(): list(t.as_numpy().shape) for t in response.output_tensors},
    "loaded": sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in blocked)),
}))
"""

UTF8, LENGTHS = contract.pack_texts(np.array([["Movie 1"]], dtype=np.object_))  # as embed's gate sends it
REQUESTS = {
    "embed": {contract.TEXT_UTF8: UTF8.tolist(), contract.TEXT_LENGTH: LENGTHS.tolist()},
    "similar": {contract.ITEM_ID: [["3"]], contract.K: [[4]]},
    "rank": {
        contract.HISTORY: [["Movie 1", "Movie 2"]],
        contract.CANDIDATES: [["Movie 3", "Movie 4", "Movie 5"]],
    },
}
SHAPES = {
    "embed": {contract.VECTOR: [1, 16]},
    "similar": {contract.ITEM_IDS: [1, 4], contract.SCORES: [1, 4]},
    "rank": {contract.SCORES: [1, 3]},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(contract.MODELS))
def test_a_served_model_runs_without_training_code(name, tiny_repo, tmp_path):
    core = ensembles.core(name)
    (tmp_path / "triton_python_backend_utils.py").write_text(PB_UTILS)
    config = text_format.Parse(
        ensembles.core_config(contract.MODELS[name], "cpu"), model_config_pb2.ModelConfig()
    )
    args = {
        "model_repository": str(tiny_repo["repo"] / core),
        "model_version": "1",
        "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
        "model_instance_name": f"{core}_0",
        "model_instance_kind": "CPU",
        "model_instance_device_id": "0",
    }
    model = contract.MODELS[name]
    dtypes = {t.name: np.dtype(contract.NUMPY_TYPES[t.dtype]).name for t in model.core_inputs}
    payload = [
        BLOCKED,
        str(tmp_path),
        str(tiny_repo["repo"] / core / "1" / "model.py"),
        args,
        REQUESTS[name],
        dtypes,
    ]
    run = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps(payload)], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["outputs"] == SHAPES[name]
