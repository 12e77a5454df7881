"""One source of truth: every config.pbtxt and python model says what llmrec.server.contract says."""

import re
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from llmrec.server import contract
from llmrec.server.contract import BadRequest, as_item, check_k, decode_text

REPO = Path(__file__).resolve().parents[2] / "model_repo"
DTYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "INT32": "TYPE_INT32"}


TARGETS = {"cpu": "config.pbtxt", "gpu": "configs/gpu.pbtxt"}


def read_config(model: str, target: str = "cpu") -> model_config_pb2.ModelConfig:
    path = REPO / model / TARGETS[target]
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def tensors(entries) -> set:
    return {
        (t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims), getattr(t, "optional", False))
        for t in entries
    }


def expected(entries) -> set:
    return {(t.name, DTYPES[t.dtype], t.dims, t.optional) for t in entries}


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("name", sorted(contract.MODELS))
def test_config_matches_the_contract(name, target):
    model, config = contract.MODELS[name], read_config(name, target)
    kind = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}[target]
    assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == [kind]
    assert config.name == name and config.backend == "python"
    assert config.max_batch_size == model.max_batch_size
    assert tensors(config.input) == expected(model.inputs)
    assert tensors(config.output) == expected(model.outputs)
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert config.version_policy.latest.num_versions == 1
    for warmup in config.model_warmup:  # warm-up requests name real inputs
        assert set(warmup.inputs) <= {t.name for t in model.inputs}


@pytest.mark.parametrize("name", sorted(contract.MODELS))
def test_python_model_reads_and_writes_only_contract_tensors(name):
    source = (REPO / name / "model.py").read_text()
    model = contract.MODELS[name]
    read = set(re.findall(r'get_input_tensor_by_name\(request, "(\w+)"\)', source))
    read |= set(re.findall(r'_(?:optional|texts)\(request, "(\w+)"', source))
    written = set(re.findall(r'pb_utils\.Tensor\("(\w+)"', source))
    written |= set(re.findall(r'run_batch\(requests, \w+, [\w.]+, "(\w+)"', source))  # llmrec.server.batch
    if name == "similar":
        written.discard("TEXT")  # the input of its BLS call to `embed`
    assert read == {t.name for t in model.inputs}
    assert written == {t.name for t in model.outputs}


def test_no_other_models_in_the_repository():
    assert {p.name for p in REPO.iterdir() if p.is_dir()} == set(contract.MODELS)


def test_text_checks_name_the_problem():
    assert decode_text(b"Toy Story", "TEXT[0]") == "Toy Story"
    with pytest.raises(BadRequest, match=r"TEXT\[0\] is empty"):
        decode_text(b"   ", "TEXT[0]")
    with pytest.raises(BadRequest, match=r"TEXT\[1\] is 1048576 bytes; the limit is 16384"):
        decode_text(b"a" * 2**20, "TEXT[1]")
    with pytest.raises(BadRequest, match=r"not valid UTF-8 \(byte 1\)"):
        decode_text(b"a\xff", "TEXT[0]")


def test_item_texts_are_plain_or_json():
    assert as_item("Heat")["title"] == "Heat"
    item = as_item('{"title": "Heat", "topic": "1990s", "content": "Crime."}')
    assert (item["title"], item["topic"], item["content"]) == ("Heat", "1990s", "Crime.")
    assert as_item("{not json")["title"] == "{not json"
    with pytest.raises(BadRequest, match="needs a non-empty 'title'"):
        as_item('{"topic": "x"}')


def test_k_checks():
    assert check_k(5, 10) == 5
    with pytest.raises(BadRequest, match="K must be positive, got 0"):
        check_k(0, 10)
    with pytest.raises(BadRequest, match="K=11 but only 10 catalogue items"):
        check_k(11, 10)
    with pytest.raises(BadRequest, match="exceeds the limit"):
        check_k(contract.MAX_K + 1, 10**6)
