"""The model file's bytes, checked before onnxruntime reads them: everything must live inside the file.

ONNX lets a tensor keep its data in another file (data_location EXTERNAL, a relative path in
external_data), and onnxruntime, given a model as bytes, resolves it against the current directory:
a hostile model could pull `.ssh/id_rsa` into its weights and from there into the images. No session
option refuses that, so this walks the protobuf wire format itself (without `onnx`, not a sampler
dependency) through every place a tensor can sit: initializers, sparse initializers, node attributes
(a Constant's value, If/Loop/Scan subgraphs, tensor lists), functions and training graphs, at any
depth. It also refuses EPContext nodes, which can name a file for a provider to load. Fields off the
paths to a tensor (weights included) are skipped by their length: milliseconds for a large model.
"""

from __future__ import annotations

from ganaug.errors import UserError

# onnx.proto field numbers (tests/test_sampler_hostile_models.py checks them against onnx's descriptors).
# For each message: field number -> the message kind it holds, for the fields that can lead to a tensor.
CHILDREN = {
    "model": {7: "graph", 20: "training_info", 25: "function"},
    "training_info": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse_tensor"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse_tensor", 23: "sparse_tensor"},
    "sparse_tensor": {1: "tensor", 2: "tensor"},
    "tensor": {},
}
TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2  # StringStringEntryProto
NODE_OP_TYPE = 4
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
MAX_DEPTH = 100  # nested messages; protobuf's own parsers stop at 100 too
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class _Malformed(Exception):
    pass


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("a number runs past its message")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview, start: int, end: int):
    """(field number, wire type, value) of one message; value is (start, end) for length-delimited fields."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos, end)
        elif wire == _FIXED64 or wire == _FIXED32:
            value, pos = None, pos + (8 if wire == _FIXED64 else 4)
        elif wire == _LENGTH:
            length, pos = _varint(data, pos, end)
            value, pos = (pos, pos + length), pos + length
        else:
            raise _Malformed(f"wire type {wire} in field {number}")
        if pos > end:
            raise _Malformed(f"field {number} runs past its message")
        yield number, wire, value


def _text(data: memoryview, span: tuple[int, int], limit: int = 80) -> str:
    text = bytes(data[span[0] : min(span[1], span[0] + limit)]).decode("utf-8", errors="replace")
    return repr(text + ("..." if span[1] - span[0] > limit else ""))


def _check_tensor(data: memoryview, start: int, end: int, source: str) -> None:
    name, location, external = "", None, False
    for number, wire, value in _fields(data, start, end):
        if number == TENSOR_NAME and wire == _LENGTH:
            name = _text(data, value)
        elif number == TENSOR_DATA_LOCATION and wire == _VARINT and value == EXTERNAL:
            external = True
        elif number == TENSOR_EXTERNAL_DATA and wire == _LENGTH:
            external = True
            entry = {n: v for n, w, v in _fields(data, *value) if w == _LENGTH}
            if ENTRY_KEY in entry and bytes(data[slice(*entry[ENTRY_KEY])]) == b"location" and ENTRY_VALUE in entry:
                location = _text(data, entry[ENTRY_VALUE])
    if external:
        where = f" ({location})" if location else ""
        raise UserError(f"{source}: tensor {name or '(unnamed)'} keeps its data in an external file{where}; a "
                        "ganaug model holds all its weights inside the .onnx file, and this sampler reads nothing else")


def check_self_contained(model: bytes, source: str) -> None:
    """Raise a UserError if the serialised ModelProto refers to data outside itself (or is not one)."""
    data = memoryview(model)
    stack = [("model", 0, len(data), 0)]
    try:
        while stack:
            kind, start, end, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise UserError(f"{source}: the model nests its graphs more than {MAX_DEPTH} messages deep")
            if kind == "tensor":
                _check_tensor(data, start, end, source)
                continue
            children = CHILDREN[kind]
            for number, wire, value in _fields(data, start, end):
                if kind == "node" and number == NODE_OP_TYPE and wire == _LENGTH:
                    if bytes(data[slice(*value)]) == b"EPContext":
                        raise UserError(f"{source}: the model holds an EPContext node (a precompiled execution-"
                                        "provider graph that may load other files); export the plain ONNX graph instead")
                elif number in children and wire == _LENGTH:
                    stack.append((children[number], *value, depth + 1))
    except _Malformed as exc:
        raise UserError(f"cannot load {source} as an ONNX model: not a valid protobuf message ({exc})") from None
