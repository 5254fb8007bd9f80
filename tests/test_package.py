"""`tltf package`: a Triton model repository whose config.pbtxt Triton's own ModelConfig protobuf parses, with the
ONNX file's shapes and the batch sizes tltf bench found; a KServe InferenceService checked against KServe's SDK
model tables. (`tltf serve --model-repository` is tested in test_serve.py, beside `tltf serve FILE`.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import cli
from tiny_onnx import write_tiny_classifier

#: rows as `tltf bench --json` writes them: batch 8 and 32 within 90 % of the best images/s, batch 1 not
BENCH = {"results": [
    {"runtime": "onnxruntime", "batch_size": 1, "images_per_s": 400.0, "p50_ms": 2.5},
    {"runtime": "onnxruntime", "batch_size": 8, "images_per_s": 950.0, "p50_ms": 8.4},
    {"runtime": "onnxruntime", "batch_size": 32, "images_per_s": 1000.0, "p50_ms": 32.0},
    {"runtime": "keras", "batch_size": 16, "images_per_s": 5000.0, "p50_ms": 3.2}]}


def model_config_pb2():
    """Triton's ModelConfig protobuf as tritonclient ships it (``tritonclient/grpc/model_config_pb2.py``), loaded
    from its file: the ``tritonclient.grpc`` package would import grpcio, and ``tritonclient[grpc]`` pins
    protobuf<7 (a downgrade of what TensorFlow and onnx use here); the generated module needs protobuf alone."""
    import tritonclient

    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_config(path: Path):
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    return text_format.Parse(path.read_text(), pb2.ModelConfig()), pb2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("package")
    (folder / "bench.json").write_text(json.dumps(BENCH))
    return write_tiny_classifier(folder / "tiny.onnx")


def test_repository_config_parses_as_triton_model_config_with_the_onnx_shapes(tiny, tmp_path):
    import onnxruntime as ort

    repo = tmp_path / "repo"
    result = cli("package", tiny, "--triton", repo, "--name", "flowers", "--bench-json", tiny.parent / "bench.json")
    assert result.exit_code == 0, result.output
    home = repo / "flowers"
    assert (home / "1" / "model.onnx").read_bytes() == tiny.read_bytes()
    config, pb2 = parse_config(home / "config.pbtxt")
    assert config.name == "flowers" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32  # the largest size benched
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]  # within 90 % of the best, keras ignored
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    session = ort.InferenceSession(str(tiny), providers=["CPUExecutionProvider"])
    for tensors, nodes in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in tensors] == [n.name for n in nodes]
        for tensor, node in zip(tensors, nodes):
            assert node.shape[0] == "batch"  # the batch dimension is max_batch_size's, not in dims
            assert list(tensor.dims) == node.shape[1:]
            assert tensor.data_type == pb2.TYPE_FP32
    assert config.output[0].label_filename == "labels.txt"
    assert (home / "labels.txt").read_text().split("\n")[:3] == ["cat", "dog", "fish"]
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    assert "checked with Triton's ModelConfig protobuf" in result.output


def test_a_config_triton_would_reject_is_refused(tmp_path):
    from tltf.deploy.triton import check_config
    from tltf.errors import TltfError

    assert check_config('name: "m" max_batch_size: 4 input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]', "ok")
    with pytest.raises(TltfError, match="bad.pbtxt: Triton's ModelConfig rejects it.*max_batch_sizes"):
        check_config('name: "m" max_batch_sizes: 4', "bad.pbtxt")
    with pytest.raises(TltfError, match="TYPE_FLOAT32"):
        check_config('input [ { name: "x" data_type: TYPE_FLOAT32 } ]', "bad.pbtxt")


def test_open_image_size_comes_from_the_contract_and_a_fixed_batch_means_no_batching(tmp_path):
    """A graph with open height/width gets the contract's image size in dims; a fixed batch dimension gives
    max_batch_size 0, full dims and no dynamic batching (Triton's rule for models that do not batch)."""
    import onnx
    from onnx import TensorProto, helper

    for name, shape in (("open", ["n", "h", "w", 3]), ("fixed", [4, 20, 24, 3])):
        graph = helper.make_graph([helper.make_node("ReduceMean", ["pixels"], ["probabilities"], axes=[1, 2],
                                                    keepdims=0)], name,
                                  [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                                                 [shape[0], 3])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        helper.set_model_props(model, {"image_size": "[20, 24]", "class_names": '["r", "g", "b"]'})
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        (tmp_path / "bench.json").write_text(json.dumps(BENCH))
        assert cli("package", tmp_path / f"{name}.onnx", "--triton", tmp_path / "repo", "--bench-json",
                   tmp_path / "bench.json").exit_code == 0
    opened, _ = parse_config(tmp_path / "repo" / "open" / "config.pbtxt")
    assert list(opened.input[0].dims) == [20, 24, 3] and opened.max_batch_size == 32
    fixed, _ = parse_config(tmp_path / "repo" / "fixed" / "config.pbtxt")
    assert fixed.max_batch_size == 0 and list(fixed.input[0].dims) == [4, 20, 24, 3]
    assert not fixed.HasField("dynamic_batching")


def test_short_bench_chooses_sizes_when_no_json_is_given(tiny, tmp_path):
    result = cli("package", tiny, "--triton", tmp_path / "repo", "--batch-sizes", "1,4")
    assert result.exit_code == 0, result.output
    config, _ = parse_config(tmp_path / "repo" / "tiny" / "config.pbtxt")
    assert config.max_batch_size == 4
    assert set(config.dynamic_batching.preferred_batch_size) <= {1, 4} and config.dynamic_batching.preferred_batch_size


def test_pbtxt_round_trip_and_syntax_errors():
    from tltf.deploy.pbtxt import Enum, as_list, dumps, loads
    from tltf.errors import TltfError

    message = {"name": "m \"q\"", "max_batch_size": 8, "input": [{"name": "x", "data_type": Enum("TYPE_FP32"),
                                                                    "dims": [-1, 3]}],
               "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 100}}
    assert loads(dumps(message)) == message
    written_by_hand = 'name: "m"  # a comment\ninput { name: "a" dims: 3 dims: 4 }\ninput { name: "b" }'
    parsed = loads(written_by_hand)
    assert [i["name"] for i in parsed["input"]] == ["a", "b"] and parsed["input"][0]["dims"] == [3, 4]
    assert as_list(loads("dims: 3")["dims"]) == [3]
    with pytest.raises(TltfError, match="x.pbtxt: expected"):
        loads("input { name: }", "x.pbtxt")


def test_kserve_manifest_validates_and_typos_do_not(tiny, tmp_path):
    import yaml

    from tltf.deploy.kserve import validate
    from tltf.errors import TltfError

    result = cli("package", tiny, "--triton", tmp_path / "repo", "--name", "Tiny_Model", "--bench-json",
                 tiny.parent / "bench.json", "--kserve", "--storage-uri", "s3://models/repo")
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load((tmp_path / "Tiny_Model.inferenceservice.yaml").read_text())
    validate(manifest)
    assert manifest["metadata"]["name"] == "tiny-model"
    model = manifest["spec"]["predictor"]["model"]
    assert model["storageUri"] == "s3://models/repo" and model["runtime"] == "kserve-tritonserver"
    assert model["modelFormat"]["name"] == "onnx" and model["protocolVersion"] == "v2"
    for change, message in (
            (lambda m: m["spec"]["predictor"]["model"].update(storageURI="s3://x"), "has no field 'storageURI'"),
            (lambda m: m["spec"]["predictor"].update(minReplicas="1"), "minReplicas: expected int"),
            (lambda m: m["spec"]["predictor"]["model"]["resources"].update(limits=["2"]), "expected a mapping"),
            (lambda m: m["spec"].pop("predictor"), "V1beta1InferenceServiceSpec requires 'predictor'")):
        bad = json.loads(json.dumps(manifest))
        change(bad)
        with pytest.raises(TltfError, match=message):
            validate(bad)


def test_kserve_tables_come_from_the_sdk_models():
    """The table read out of KServe's SDK has its InferenceService tree (a regenerated table that lost it fails)."""
    from tltf.deploy.kserve_types import MODELS, SDK_VERSION

    assert SDK_VERSION and MODELS["V1beta1InferenceService"]["fields"]["spec"] == "V1beta1InferenceServiceSpec"
    assert MODELS["V1beta1InferenceServiceSpec"]["required"] == ["predictor"]
    assert MODELS["V1beta1ModelSpec"]["fields"]["storageUri"] == "str"


def test_bad_input_is_one_line(tiny, tmp_path):
    missing = cli("package", tmp_path / "none.onnx", "--triton", tmp_path / "repo")
    assert missing.exit_code == 2 and "no such model file" in missing.stderr
    bad_name = cli("package", tiny, "--triton", tmp_path / "repo", "--name", "a/b", "--bench-json",
                   tiny.parent / "bench.json")
    assert bad_name.exit_code == 2 and "--name" in bad_name.stderr and "Traceback" not in bad_name.stderr
    bad_uri = cli("package", tiny, "--triton", tmp_path / "repo", "--bench-json", tiny.parent / "bench.json",
                  "--kserve", "--storage-uri", "not a uri")
    assert bad_uri.exit_code == 2 and "--storage-uri" in bad_uri.stderr
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{")
    assert "not a tltf bench JSON" in cli("package", tiny, "--triton", tmp_path / "repo", "--bench-json",
                                          garbage).stderr


def test_package_runs_without_the_training_stack(tiny, tmp_path):
    """A runtime command: packaging an .onnx file (its short bench included) imports no TensorFlow, Keras or onnx."""
    import os
    import subprocess
    import sys

    from blocked_tf import blocked_tf_env

    env = blocked_tf_env(tmp_path / "blocked")
    env["PYTHONPATH"] += os.pathsep + str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-m", "tltf", "package", str(tiny), "--triton", str(tmp_path / "repo"),
                           "--batch-sizes", "1,2", "--kserve", "--storage-uri", "pvc://models/repo"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "repo" / "tiny" / "config.pbtxt").is_file()
    assert (tmp_path / "tiny.inferenceservice.yaml").is_file()
