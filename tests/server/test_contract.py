"""One source of truth: the contract generates every config's tensors; nothing else spells a tensor name."""

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from llmrec.server import contract, ensembles, runtime
from llmrec.server.contract import BadRequest, as_item, check_k, check_vectors, decode_text

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "model_repo"
TENSOR_NAMES = {t.name for m in contract.MODELS.values() for t in (*m.inputs, *m.core_inputs, *m.outputs)}


def read_config(model: str, target: str = "cpu") -> model_config_pb2.ModelConfig:
    """The generated config of a public model's core on `target` (what export writes)."""
    return text_format.Parse(
        ensembles.core_config(contract.MODELS[model], target), model_config_pb2.ModelConfig()
    )


def tensors(entries) -> set:
    return {
        (t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims), getattr(t, "optional", False))
        for t in entries
    }


def expected(entries, all_optional: bool = False) -> set:
    return {(t.name, contract.CONFIG_TYPES[t.dtype], t.dims, t.optional or all_optional) for t in entries}


@pytest.mark.parametrize("target", sorted(ensembles.TARGETS))
@pytest.mark.parametrize("name", sorted(contract.MODELS))
def test_config_matches_the_contract(name, target):
    model, config = contract.MODELS[name], read_config(name, target)
    kind = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}[target]
    assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == [kind]
    assert config.name == ensembles.core(name) and config.backend == "python"
    assert config.max_batch_size == model.max_batch_size
    # a core without a gate is the ensemble's only step: it takes every input as optional and refuses a
    # missing required one itself (declared required, the ensemble would wait for it: "unexpected deadlock")
    assert tensors(config.input) == expected(model.core_inputs, all_optional=not model.merges_requests)
    assert {t.name for t in config.input if t.allow_ragged_batch} == {
        t.name for t in model.core_inputs if t.ragged
    }
    if model.merges_requests:  # no BYTES framing for this build's python backend to fail a whole batch on
        assert all(t.dtype != "BYTES" for t in model.core_inputs)
    assert tensors(config.output) == expected(model.outputs)
    assert config.HasField("dynamic_batching")  # the delay is per model
    batcher = config.dynamic_batching
    if not model.merges_requests:  # on every target: one request per execution (no gate in front of it)
        assert list(batcher.preferred_batch_size) == [1] and batcher.max_queue_delay_microseconds == 0
        # its instances are the parallelism: one CPU thread each (else idle instances spin on the cores)
        assert config.parameters["threads"].string_value == "1"
    # no core has a queue policy (with one, this Triton build's batcher stalls queued requests up to 500 ms:
    # ARCHITECTURE.md); a gate's is a bound that refuses with UNAVAILABLE
    assert not batcher.HasField("default_queue_policy")
    if model.merges_requests:
        policy = text_format.Parse(ensembles.gate_config(model), model_config_pb2.ModelConfig())
        policy = policy.dynamic_batching.default_queue_policy
        assert 0 < policy.max_queue_size <= 1024
        assert 0 < policy.default_timeout_microseconds <= 1_000_000
        assert model_config_pb2.ModelQueuePolicy.TimeoutAction.Name(policy.timeout_action) == "REJECT"
    assert config.version_policy.latest.num_versions == 1
    warmups = {w.name: w for w in config.model_warmup}
    assert len(warmups) == (1 if model.warmup else 0)
    for warmup in warmups.values():  # warm-up requests feed real inputs, from the files export writes
        assert {k: (list(v.dims), v.input_data_file) for k, v in warmup.inputs.items()} == {
            t.name: (dims, ensembles.warmup_file(t.name)) for t, dims, _ in ensembles.warmup_inputs(model)
        }
        assert set(warmup.inputs) <= {t.name for t in model.core_inputs}


@pytest.mark.parametrize("target", sorted(ensembles.TARGETS))
@pytest.mark.parametrize("name", sorted(contract.MODELS))
def test_checked_in_settings_hold_no_tensors(name, target):
    """model_repo/<core>/<target>.pbtxt carries per-target settings only: the rest is the contract's."""
    settings = (REPO / ensembles.core(name) / f"{target}.pbtxt").read_text()
    config = text_format.Parse(settings, model_config_pb2.ModelConfig())
    assert (config.name, config.backend, config.max_batch_size) == ("", "", 0)
    assert not (config.input or config.output or config.model_warmup)


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every plain string literal of a Python file (f-strings are not literals)."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.STRING and not re.match(r"^[rbuRBU]*[fF]", token.string):
            try:
                found.append((token.start[0], ast.literal_eval(token.string)))
            except (ValueError, SyntaxError):
                continue
    return found


def test_no_tensor_name_or_config_type_is_spelt_outside_the_contract():
    """Renaming a tensor or changing its type is one edit in server/contract.py: no tracked file spells a
    tensor name as a string of its own, or a config data type (export generates every config)."""
    files = subprocess.run(
        ["git", "ls-files", "*.py", "*.pbtxt", "*.yml", "*.yaml", "*.json", "*.cfg"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    config_types = re.compile("|".join(contract.CONFIG_TYPES.values()))
    quoted = re.compile("|".join(rf'"{n}"' for n in TENSOR_NAMES))
    found = []
    for name in files:
        path = ROOT / name
        if name == "server/contract.py" or not path.is_file():
            continue
        text = path.read_text()
        found += [f"{name}: {m.group()}" for m in config_types.finditer(text)]
        if path.suffix == ".py":
            found += [f"{name}:{line}: {v!r}" for line, v in _string_literals(path) if v in TENSOR_NAMES]
        else:
            found += [f"{name}: {m.group()}" for m in quoted.finditer(text)]
    assert not found, "spelt outside server/contract.py (use its constants):\n" + "\n".join(found)


def _names_used(source: str) -> tuple[set, set]:
    """Tensor names a python model reads (input_of / _side arguments) and writes (keys of the dicts its
    compute returns), as contract constants resolved to their values."""
    read, written = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = {"input_of": node.args[1:2], "_side": node.args[2:4]}.get(node.func.id, [])
            read |= {getattr(contract, a.id) for a in args if isinstance(a, ast.Name) and a.id.isupper()}
        if isinstance(node, ast.Dict):
            written |= {
                getattr(contract, k.id) for k in node.keys if isinstance(k, ast.Name) and k.id.isupper()
            }
    return read, written


@pytest.mark.parametrize("name", sorted(contract.MODELS))
def test_python_model_reads_and_writes_only_contract_tensors(name):
    read, written = _names_used((REPO / ensembles.core(name) / "model.py").read_text())
    model = contract.MODELS[name]
    assert read == {t.name for t in model.core_inputs}
    assert written == {t.name for t in model.outputs}


def test_no_other_models_in_the_repository():
    folders = {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert folders == {ensembles.core(m) for m in contract.MODELS}


@pytest.mark.parametrize("name", sorted(contract.MODELS))
def test_the_generated_ensemble_and_gate_carry_the_contract(name):
    model = contract.MODELS[name]
    parse = lambda text: text_format.Parse(text, model_config_pb2.ModelConfig())  # noqa: E731
    ensemble = parse(ensembles.ensemble_config(model))
    assert ensemble.name == name and ensemble.platform == "ensemble"
    assert ensemble.max_batch_size == model.max_batch_size
    # the ensemble takes every input as optional; the gate (or a core without one) refuses a missing one
    assert tensors(ensemble.input) == {(n, d, dims, True) for n, d, dims, _ in expected(model.inputs)}
    assert tensors(ensemble.output) == expected(model.outputs)
    names = {t.name for t in model.inputs}
    outputs = {t.name: t.name for t in model.outputs}
    if not model.merges_requests:  # straight to the core, which runs one request per execution
        (only,) = ensemble.ensemble_scheduling.step
        assert only.model_name == ensembles.core(name)
        assert dict(only.input_map) == {n: n for n in names} and dict(only.output_map) == outputs
        return
    gate = parse(ensembles.gate_config(model))
    assert gate.max_batch_size == model.max_batch_size
    assert tensors(gate.input) == expected(model.inputs)
    # every input goes through the gate, one request per execution, and only then to the core, texts packed
    assert {t.name for t in gate.input} == names
    assert tensors(gate.output) == {
        (t.name, contract.CONFIG_TYPES[t.dtype], t.dims, False) for t in model.core_inputs
    }
    batcher = gate.dynamic_batching  # there for its bounded queue: it never merges requests
    assert list(batcher.preferred_batch_size) == [1] and batcher.max_queue_delay_microseconds == 0
    assert (
        model_config_pb2.ModelQueuePolicy.TimeoutAction.Name(batcher.default_queue_policy.timeout_action)
        == "REJECT"
    )
    assert 0 < batcher.default_queue_policy.max_queue_size <= 1024
    first, second = ensemble.ensemble_scheduling.step
    assert (first.model_name, second.model_name) == (ensembles.gate(name), ensembles.core(name))
    assert dict(first.input_map) == {n: n for n in names}
    assert dict(second.input_map) == dict(first.output_map)
    assert set(second.input_map) == {t.name for t in model.core_inputs}
    assert dict(second.output_map) == outputs


def test_only_a_core_that_merges_requests_gets_a_gate(tmp_path):
    """Export writes a gate where the core merges requests and removes one an older layout left."""
    (tmp_path / "similar_gate" / "1").mkdir(parents=True)
    for name in contract.MODELS:
        ensembles.write(tmp_path, name)
    gates = {p.name for p in tmp_path.iterdir() if p.name.endswith("_gate")}
    assert gates == {ensembles.gate(m.name) for m in contract.MODELS.values() if m.merges_requests}
    assert gates == {"embed_gate"}


def test_texts_pack_and_unpack_for_a_core_that_merges_requests():
    texts = np.array([["Heat"], ["Amélie (2001)"], [""], ["x" * 300]], dtype=np.object_)
    utf8, lengths = contract.pack_texts(texts)
    assert utf8.dtype == np.uint8 and utf8.shape == (4, 300) and lengths.dtype == np.int32
    assert lengths[:, 0].tolist() == [4, len("Amélie (2001)".encode()), 0, 300]
    assert contract.unpack_texts(utf8, lengths, contract.TEXT) == [t.encode() for t in texts[:, 0]]
    assert contract.pack_texts(np.array([[b""]], dtype=np.object_))[0].shape == (
        1,
        1,
    )  # never a 0-wide tensor


@pytest.mark.parametrize(
    "utf8, lengths, message",
    [
        (
            np.zeros((1, 4), np.uint8),
            np.array([[5]], np.int32),
            "TEXT_LENGTH[0] is 5; TEXT_UTF8 rows hold 4 bytes",
        ),
        (np.zeros((2, 4), np.uint8), np.array([[1], [-1]], np.int32), "TEXT_LENGTH[1] is -1"),
        (
            np.zeros((2, 4), np.uint8),
            np.array([[1]], np.int32),
            "TEXT_UTF8 must be [b, L] and TEXT_LENGTH [b, 1]",
        ),
        (np.zeros(4, np.uint8), np.array([[1]], np.int32), "got [4] and [1, 1]"),
    ],
)
def test_unpacking_names_what_does_not_fit(utf8, lengths, message):
    with pytest.raises(BadRequest, match=re.escape(message)):
        contract.unpack_texts(utf8, lengths, contract.TEXT)


def test_the_threads_parameter_is_read_and_checked():
    config = {"parameters": {"threads": {"string_value": "2"}}}
    assert runtime.model_threads(config) == 2 and runtime.model_threads("{}") is None
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            runtime.model_threads({"parameters": {"threads": {"string_value": bad}}})


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


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"title": ' + "[" * 5000 + "]" * 5000 + "}", r"TEXT\[0\] is JSON nested too deeply"),
        ('{"title": ' + "1" * 5000 + "}", r"TEXT\[0\] is JSON that cannot be read: Exceeds the limit"),
        ('{"title": {"a": 1}}', r"TEXT\[0\]: field 'title' must be a string, got dict"),
        ('{"title": "x", "content": [1, 2]}', r"field 'content' must be a string, got list"),
    ],
    ids=["nested", "5000 digits", "dict title", "list content"],
)
def test_malformed_json_item_texts_are_refused_by_name(text, message):
    with pytest.raises(BadRequest, match=message):
        as_item(text, "TEXT[0]")


def test_numbers_in_json_fields_are_read_as_text():
    assert as_item('{"title": 1984, "topic": 2.5}') | {"category": "", "tags": []} == {
        "title": "1984",
        "topic": "2.5",
        "content": "",
        "category": "",
        "tags": [],
    }


@pytest.mark.parametrize("scale", [1e30, 1e-44, 1.0, 3e38])
def test_query_vectors_keep_their_direction_at_any_scale(scale):
    direction = np.array([[3.0, -4.0, 0.0, 12.0]]) / 13.0
    vectors = (direction * scale).astype(np.float32)
    got = check_vectors(vectors, 4)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, direction, atol=1e-6 if scale > 1e-40 else 0.2)


def test_k_checks():
    assert check_k(5, 10) == 5
    with pytest.raises(BadRequest, match="K must be positive, got 0"):
        check_k(0, 10)
    with pytest.raises(BadRequest, match="K=11 but only 10 catalogue items"):
        check_k(11, 10)
    with pytest.raises(BadRequest, match="exceeds the limit"):
        check_k(contract.MAX_K + 1, 10**6)


def test_an_instance_computes_where_its_instance_group_says():
    """The device comes from Triton's instance (kind, device id), not from what the host has."""
    assert runtime.instance_device({"model_instance_kind": "CPU", "model_instance_device_id": "0"}) == "cpu"
    gpu = {
        "model_instance_kind": "GPU",
        "model_instance_device_id": "1",
        "model_instance_name": "rank_core_0",
    }
    if torch.cuda.is_available():
        assert runtime.instance_device(gpu) == "cuda:1"
    else:
        with pytest.raises(
            RuntimeError, match="'rank_core_0' is KIND_GPU but this torch sees no CUDA device"
        ):
            runtime.instance_device(gpu)
