"""Hostile model files: external data (a model that reads other files into its weights), EPContext
nodes, deep nesting and broken protobuf are refused before onnxruntime reads anything else."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data
from onnx_models import IR_VERSION, OPSET, make_model

import ganaug.sampler.runtime as modelfile
from ganaug.cli import main
from ganaug.errors import UserError
from ganaug.sampler import Sampler
from ganaug.sampler.runtime import check_self_contained

SECRET = "secrets/key"  # relative: onnxruntime resolves it against the current directory


def _externalise(tensor: TensorProto, location: str = SECRET, length: int | None = None) -> None:
    size = len(tensor.raw_data)
    set_external_data(tensor, location, offset=0, length=length if length is not None else size)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL


def _model_reading_a_secret(tmp_path) -> tuple[str, np.ndarray]:
    """A contract-conforming model whose weight W is read from secrets/key, and that secret."""
    path = make_model(tmp_path / "hostile.onnx", z_dim=8, shape=(8, 8, 1))
    model = onnx.load(path)
    weight = next(t for t in model.graph.initializer if t.name == "W")
    secret = np.random.default_rng(7).standard_normal((8, 64)).astype(np.float32)
    (tmp_path / "secrets").mkdir()
    (tmp_path / SECRET).write_bytes(secret.tobytes())
    _externalise(weight)
    onnx.save(model, path)
    return path, secret


MESSAGES = {"model": onnx.ModelProto, "training_info": onnx.TrainingInfoProto, "function": onnx.FunctionProto,
            "graph": onnx.GraphProto, "node": onnx.NodeProto, "attribute": onnx.AttributeProto,
            "sparse_tensor": onnx.SparseTensorProto, "tensor": onnx.TensorProto}


def test_the_protobuf_field_numbers_are_onnx_s():
    for kind, table in modelfile.CHILDREN.items():
        fields = {f.number: f for f in MESSAGES[kind].DESCRIPTOR.fields}
        for number, child in table.items():
            assert fields[number].message_type is MESSAGES[child].DESCRIPTOR, (kind, number)
    # ...and every field that holds a tensor, directly or through a subgraph, is followed.
    for kind, message in MESSAGES.items():
        for f in message.DESCRIPTOR.fields:
            if f.message_type in {m.DESCRIPTOR for m in MESSAGES.values()}:
                assert modelfile.CHILDREN[kind].get(f.number), (kind, f.name)
    tensor = {f.name: f.number for f in onnx.TensorProto.DESCRIPTOR.fields}
    assert (tensor["name"], tensor["external_data"], tensor["data_location"]) == (
        modelfile.TENSOR_NAME, modelfile.TENSOR_EXTERNAL_DATA, modelfile.TENSOR_DATA_LOCATION)
    entry = {f.name: f.number for f in onnx.StringStringEntryProto.DESCRIPTOR.fields}
    assert (entry["key"], entry["value"]) == (modelfile.ENTRY_KEY, modelfile.ENTRY_VALUE)
    assert onnx.NodeProto.DESCRIPTOR.fields_by_name["op_type"].number == modelfile.NODE_OP_TYPE
    assert TensorProto.EXTERNAL == modelfile.EXTERNAL


def test_a_model_reading_a_file_beside_it_is_refused_and_its_bytes_never_reach_the_output(
    tmp_path, monkeypatch, capsys
):
    path, secret = _model_reading_a_secret(tmp_path)
    monkeypatch.chdir(tmp_path)
    # The threat is real: plain onnxruntime reads the secret into W, and the images carry it.
    session = ort.InferenceSession(open(path, "rb").read(), providers=["CPUExecutionProvider"])
    z = np.eye(2, 8, dtype=np.float32)
    leaked = session.run(["images"], {"z": z, "labels": np.zeros(2, np.int64)})[0]
    embedding = numpy_helper.to_array(next(t for t in onnx.load(path).graph.initializer if t.name == "E"))
    expected = np.round(np.clip((np.tanh(z @ secret + embedding[0]) + 1) * 127.5, 0, 255)).astype(np.uint8)
    assert np.abs(leaked.reshape(2, 64).astype(int) - expected.astype(int)).max() <= 1

    before = sorted(os.listdir(tmp_path))
    assert main(["sample", path, "--n", "4", "--out", "out", "--no-progress"]) == 2
    [line] = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert line == (f"ganaug sample: error: {path}: tensor 'W' keeps its data in an external file "
                    f"('{SECRET}'); a ganaug model holds all its weights inside the .onnx file, "
                    "and this sampler reads nothing else")
    assert sorted(os.listdir(tmp_path)) == before  # no output directory, nothing written anywhere
    with pytest.raises(UserError, match="external file"):
        Sampler.load(path, provider="cpu")


def _graph_with(nodes, initializers=(), sparse=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    return helper.make_graph(nodes, "g", [x], [y], list(initializers), sparse_initializer=list(sparse))


def _serialise(graph, functions=()) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("f", 1)],
                              ir_version=IR_VERSION, functions=list(functions))
    return model.SerializeToString()


def _external_tensor(name: str) -> TensorProto:
    tensor = numpy_helper.from_array(np.ones(1, np.float32), name)
    _externalise(tensor)
    return tensor


def _constant(tensor: TensorProto, output: str = "c"):
    return helper.make_node("Constant", [], [output], value=tensor)


def _if_node(then_graph):
    return helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=_graph_with([]))


def _cases():
    sparse = helper.make_sparse_tensor(_external_tensor("sparse_values"),
                                       numpy_helper.from_array(np.zeros(1, np.int64), "idx"), [4])
    function = helper.make_function("f", "inner", ["x"], ["y"], [_constant(_external_tensor("in_function"), "y")],
                                    [helper.make_opsetid("", OPSET)])
    location_only = numpy_helper.from_array(np.ones(1, np.float32), "location_only")
    set_external_data(location_only, "x.bin")  # external_data entries without data_location = EXTERNAL
    training = onnx.ModelProto()
    training.ParseFromString(_serialise(_graph_with([])))
    training.training_info.add().initialization.CopyFrom(_graph_with([], [_external_tensor("in_training")]))
    return {
        "initializer": (_serialise(_graph_with([], [_external_tensor("init")])), "'init'"),
        "sparse initializer": (_serialise(_graph_with([], sparse=[sparse])), "'sparse_values'"),
        "Constant attribute": (_serialise(_graph_with([_constant(_external_tensor("const"))])), "'const'"),
        "tensor list attribute": (_serialise(_graph_with([helper.make_node(
            "Custom", [], ["c"], domain="f", tensors=[_external_tensor("listed")])])), "'listed'"),
        "If subgraph, two levels down": (_serialise(_graph_with([_if_node(_graph_with([_if_node(
            _graph_with([_constant(_external_tensor("deep"))]))]))])), "'deep'"),
        "function body": (_serialise(_graph_with([helper.make_node("inner", ["x"], ["y"], domain="f")]),
                                     [function]), "'in_function'"),
        "external_data without data_location": (_serialise(_graph_with([], [location_only])), "'location_only'"),
        "training graph": (training.SerializeToString(), "'in_training'"),
    }


@pytest.mark.parametrize("where", list(_cases()))
def test_external_data_is_found_wherever_a_tensor_can_sit(where):
    data, name = _cases()[where]
    with pytest.raises(UserError, match=f"tensor {name} keeps its data in an external file"):
        check_self_contained(data, "m.onnx")
    inline = onnx.ModelProto()
    inline.ParseFromString(data)  # the same model is valid protobuf: only the external data is refused


def test_a_self_contained_model_passes(tmp_path):
    path = make_model(tmp_path / "g.onnx", conv_layers=1)
    check_self_contained(open(path, "rb").read(), path)
    check_self_contained(_serialise(_graph_with([_if_node(_graph_with([_constant(
        numpy_helper.from_array(np.ones(3, np.float32), "inline"))]))])), "m.onnx")


def test_an_ep_context_node_is_refused():
    node = helper.make_node("EPContext", ["x"], ["y"], domain="com.microsoft", ep_cache_context="model.bin",
                            embed_mode=0)
    with pytest.raises(UserError, match="EPContext node"):
        check_self_contained(_serialise(_graph_with([node])), "m.onnx")


def _length_delimited(field: int, payload: bytes) -> bytes:
    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
            value >>= 7
            if not value:
                return bytes(out)

    return varint(field << 3 | 2) + varint(len(payload)) + payload


def test_nesting_is_bounded():
    # Written by hand: onnx's own protobuf refuses to build what a hostile file can simply contain.
    def nested(levels: int) -> bytes:
        graph = b""
        for _ in range(levels):  # graph -> node -> attribute -> graph: three messages a level
            graph = _length_delimited(1, _length_delimited(5, _length_delimited(6, graph)))
        return _length_delimited(7, graph)

    check_self_contained(nested(30), "m.onnx")
    with pytest.raises(UserError, match="nests its graphs more than 100 messages deep"):
        check_self_contained(nested(40), "m.onnx")


@pytest.mark.parametrize("data", [b"\x0f", b"\x3a\x05ab", b"\x3a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
                                  b"\x08\x80"])
def test_broken_protobuf_is_not_an_onnx_model(data):
    with pytest.raises(UserError, match="cannot load m.onnx as an ONNX model: not a valid protobuf message"):
        check_self_contained(data, "m.onnx")


@pytest.mark.parametrize(("text", "depth"), [
    ("[]", 1), ("[1, 2]", 1), ('["[[[", "{{"]', 1), ('["a\\\\", "[["]', 1), ('["\\"[", 2]', 1),
    ('[["a"], {"b": [1]}]', 3), ("1", 0), ("[" * 5000 + "]" * 5000, 5000), ('{"k": "]]]"}', 1),
])
def test_json_nesting_is_measured_outside_strings(text, depth):
    from ganaug import safejson

    assert safejson.nesting_depth(text) == depth
    if depth <= 3:
        assert safejson.loads(text, max_depth=3) == json.loads(text)
    else:
        with pytest.raises(safejson.TooDeep, match=f"nested {depth} levels deep"):
            safejson.loads(text, max_depth=3)
