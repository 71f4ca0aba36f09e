"""Which operators an ONNX file holds, read with protobuf (onnxruntime's own dependency).

The daemon does not import the ``onnx`` package (it costs memory a small box does not have);
the few fields needed here are declared as a protobuf schema of their own, numbered as in
onnx.proto. Every other field of the file is skipped by the parser.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

MAX_SCAN_BYTES = 16 * 2**20  # a file larger than this is not scanned (no small model is)

# Operators whose work is fixed by the sizes of their inputs: no loop, no branch, no output
# whose size comes from a value in the data (Range, Expand, Tile, ConstantOfShape, TopK, ...).
# A model built only of these runs in a time set by its input's shape, whatever the values.
BOUNDED_OPS = frozenset({
    # ai.onnx
    "Abs", "Add", "And", "ArgMax", "ArgMin", "BatchNormalization", "Cast", "Ceil", "Clip", "Concat",
    "DequantizeLinear", "Div", "DynamicQuantizeLinear", "Equal", "Erf", "Exp", "Flatten", "Floor",
    "Gather", "Gelu", "Gemm", "Greater", "GreaterOrEqual", "HardSigmoid", "Identity", "LayerNormalization",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "MatMul", "MatMulInteger", "Max", "Mean",
    "Min", "Mul", "Neg", "Not", "Or", "Pow", "QuantizeLinear", "Reciprocal", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceSum", "Relu", "Reshape", "Round", "Shape", "Sigmoid", "Sign", "Softmax", "Softplus",
    "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Transpose", "Unsqueeze", "Where", "Xor",
    # ai.onnx.ml (scikit-learn exports)
    "ArrayFeatureExtractor", "Binarizer", "LinearClassifier", "LinearRegressor", "Normalizer", "Scaler",
    "TreeEnsembleClassifier", "TreeEnsembleRegressor", "ZipMap",
    # com.microsoft (onnxruntime's quantisation and fusions)
    "DynamicQuantizeMatMul", "FusedMatMul", "MatMulIntegerToFloat", "QGemm",
})


@functools.cache
def _model_class() -> Any:
    """A protobuf class reading the part of onnx.proto's ModelProto that holds the operators."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="agentd_onnx_ops.proto", package="agentd_onnx_ops", syntax="proto2")
    schema: dict[str, list[tuple[str, int, str | None, bool]]] = {  # message -> (field, number as in onnx.proto, message type or None for a string, repeated)
        "Attribute": [("g", 6, "Graph", False), ("graphs", 11, "Graph", True)],
        "Node": [("op_type", 4, None, False), ("attribute", 5, "Attribute", True)],
        "Graph": [("node", 1, "Node", True)],
        "Function": [("node", 7, "Node", True)],
        "Model": [("graph", 7, "Graph", False), ("functions", 25, "Function", True)],
    }
    for name, fields in schema.items():
        m = file.message_type.add(name=name)
        for fname, number, type_name, repeated in fields:
            field = m.field.add(name=fname, number=number, label=fd.LABEL_REPEATED if repeated else fd.LABEL_OPTIONAL)
            if type_name is None:
                field.type = fd.TYPE_STRING
            else:
                field.type, field.type_name = fd.TYPE_MESSAGE, f".agentd_onnx_ops.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("agentd_onnx_ops.Model"))


def op_types(path: Path) -> frozenset[str] | None:
    """Every operator type in the file's graph, its subgraphs and its functions; None when the
    file is larger than MAX_SCAN_BYTES or is not a model protobuf can read."""
    try:
        if path.stat().st_size > MAX_SCAN_BYTES:
            return None
        data = path.read_bytes()
        model = _model_class().FromString(data)
    except Exception:  # protobuf's DecodeError, or an unreadable file: not scanned
        return None
    seen: set[str] = set()
    graphs = [model.graph, *model.functions]
    while graphs:
        for node in graphs.pop().node:
            seen.add(node.op_type)
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    return frozenset(seen)
