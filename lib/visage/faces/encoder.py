"""dlib's face-recognition ResNet (the 128-d embedding), run by ONNX Runtime.

Why: dlib-bin's CPU convolutions run without BLAS; the same network with the same
weights in ONNX Runtime computes a face's embedding several times faster, and
describing faces was about half of an ingest's CPU time (bench/bench_vs_fr.py).
Nothing is retrained or downloaded: the weights are read from the very file
dlib loads (`dlib_face_recognition_resnet_model_v1.dat`, face-recognition-models),
and the embeddings match dlib's to float rounding (tests/faces/test_encoder.py:
distance under 1e-4, where dlib's same-person limit is 0.6).

The file is dlib's own serialization of the network in dlib's
dnn_face_recognition_ex.cpp: layers are written from the input up, each as its
name and parameters (ints: a control byte giving the length and sign, then
little-endian bytes; tensors: version, 4 dimensions, then raw little-endian
float32). Tags and skips (the residual wiring) are not written; the wiring is
that example's: blocks of con-affine-relu-con-affine whose input is added back
(through a 2x2 average pool when the block strides 2)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

CHIP_SIZE = 150
# Layer names as dlib serializes them (each a dlib string: length int, then bytes).
_LAYER = re.compile(rb"\x01(?:\x05con_4|\x07affine_|\x05relu_|\x09add_prev_|\x0aavg_pool_2|\x0amax_pool_2|\x04fc_2)")


class ModelFormatError(ValueError):
    """The model file is not the network this reader knows."""


@dataclass
class _Layer:
    kind: str
    tensor: np.ndarray | None = None
    ints: list[int] = field(default_factory=list)


class _Reader:
    def __init__(self, data: bytes, at: int = 0) -> None:
        self.data, self.at = data, at

    def int(self) -> int:
        control = self.data[self.at]
        size = control & 0x0F
        value = int.from_bytes(self.data[self.at + 1:self.at + 1 + size], "little")
        self.at += 1 + size
        return -value if control & 0x80 else value

    def float(self) -> float:  # dlib writes a float as mantissa and exponent ints
        mantissa = self.int()
        return mantissa * 2.0 ** self.int()

    def name(self) -> str:
        length = self.int()
        text = self.data[self.at:self.at + length].decode("ascii")
        self.at += length
        return text

    def tensor(self) -> np.ndarray:
        if self.int() != 2:
            raise ModelFormatError("unknown tensor version")
        dims = [self.int() for _ in range(4)]
        count = int(np.prod(dims))
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.at)
        self.at += 4 * count
        return values.astype(np.float32)


def read_dlib_resnet(data: bytes) -> tuple[np.ndarray, list[_Layer]]:
    """(input mean per RGB channel, layers in forward order)."""
    start = data.find(b"input_rgb_image_sized")
    if start < 0:
        raise ModelFormatError("no input_rgb_image_sized layer: not dlib's face recognition ResNet")
    reader = _Reader(data, start + len("input_rgb_image_sized"))
    mean = np.array([reader.float() for _ in range(3)], dtype=np.float32)
    layers: list[_Layer] = []
    while (match := _LAYER.search(data, reader.at)) is not None:
        reader.at = match.start()
        kind = reader.name()
        layer = _Layer(kind)
        if kind == "con_4":
            layer.tensor = reader.tensor()
            layer.ints = [reader.int() for _ in range(7)]  # filters, rows, cols, strides y/x, paddings y/x
        elif kind == "affine_":
            layer.tensor = reader.tensor()  # gamma for every channel, then beta
        elif kind in ("avg_pool_2", "max_pool_2"):
            layer.ints = [reader.int() for _ in range(6)]  # rows, cols (0: everything), strides, paddings
        elif kind == "fc_2":
            outputs, inputs = reader.int(), reader.int()
            layer.ints = [outputs, inputs]
            layer.tensor = reader.tensor()[:inputs * outputs]  # no bias (fc_no_bias)
        layers.append(layer)
    return mean, layers


class _Graph:
    """Builds the ONNX graph while tracking each value's (channels, rows, cols)."""

    def __init__(self) -> None:
        self.nodes, self.weights, self.shapes = [], [], {}
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}{self._count}"

    def constant(self, stem: str, array: np.ndarray) -> str:
        from onnx import numpy_helper
        name = self.name(stem)
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], shape: tuple[int, int, int] | None, **attributes) -> str:
        from onnx import helper
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attributes))
        self.shapes[out] = shape
        return out

    def relu(self, x: str) -> str:
        return self.op("Relu", [x], self.shapes[x])

    def conv_affine(self, x: str, con: _Layer, affine: _Layer) -> str:
        """A convolution with the affine layer after it folded into its weights."""
        filters, rows, cols, stride_y, stride_x, pad_y, pad_x = con.ints
        channels, height, width = self.shapes[x]
        weights = con.tensor[:filters * channels * rows * cols].reshape(filters, channels, rows, cols)
        bias = con.tensor[filters * channels * rows * cols:]
        bias = bias if bias.size == filters else np.zeros(filters, np.float32)
        gamma, beta = affine.tensor[:filters], affine.tensor[filters:]
        shape = (filters, (height + 2 * pad_y - rows) // stride_y + 1, (width + 2 * pad_x - cols) // stride_x + 1)
        return self.op("Conv", [x, self.constant("w", weights * gamma[:, None, None, None]),
                                self.constant("b", bias * gamma + beta)], shape,
                       kernel_shape=[rows, cols], strides=[stride_y, stride_x], pads=[pad_y, pad_x, pad_y, pad_x])

    def pool(self, x: str, layer: _Layer, op_type: str) -> str:
        rows, cols, stride_y, stride_x, pad_y, pad_x = layer.ints
        channels, height, width = self.shapes[x]
        if rows == 0:  # avg_pool_everything
            return self.op("GlobalAveragePool", [x], (channels, 1, 1))
        shape = (channels, (height + 2 * pad_y - rows) // stride_y + 1, (width + 2 * pad_x - cols) // stride_x + 1)
        return self.op(op_type, [x], shape, kernel_shape=[rows, cols], strides=[stride_y, stride_x],
                       pads=[pad_y, pad_x, pad_y, pad_x])

    def add(self, a: str, b: str) -> str:
        """dlib's add_prev: tensors of different sizes are added as if the smaller
        were zero-padded at its end (channels, rows, cols)."""
        shape = tuple(max(sa, sb) for sa, sb in zip(self.shapes[a], self.shapes[b]))
        a, b = (self._pad_to(value, shape) for value in (a, b))
        return self.op("Add", [a, b], shape)

    def _pad_to(self, x: str, shape: tuple[int, int, int]) -> str:
        if self.shapes[x] == shape:
            return x
        from onnx import numpy_helper
        ends = [0] + [want - have for want, have in zip(shape, self.shapes[x])]
        pads = self.name("pads")  # ONNX order: every axis' start, then every axis' end
        self.weights.append(numpy_helper.from_array(np.array([0, 0, 0, 0] + ends, dtype=np.int64), pads))
        return self.op("Pad", [x, pads], shape)


def build_onnx(data: bytes) -> bytes:
    """The ONNX model (bytes) of dlib's ResNet in `data`: input "chips" N x 3 x 150 x 150
    float32 (RGB, already centred and scaled as dlib's input layer does), output
    "embeddings" N x 128."""
    from onnx import TensorProto, helper
    mean, layers = read_dlib_resnet(data)
    kinds = [layer.kind for layer in layers]
    graph = _Graph()
    graph.shapes["chips"] = (3, CHIP_SIZE, CHIP_SIZE)
    at = 0

    def take(*expected: str) -> list[_Layer]:
        nonlocal at
        if kinds[at:at + len(expected)] != list(expected):
            raise ModelFormatError(f"unexpected layers at {at}: {kinds[at:at + len(expected)]}, wanted {expected}")
        at += len(expected)
        return layers[at - len(expected):at]

    con, affine, _, pool = take("con_4", "affine_", "relu_", "max_pool_2")
    x = graph.pool(graph.relu(graph.conv_affine("chips", con, affine)), pool, "MaxPool")
    while at < len(kinds) and kinds[at] == "con_4":  # one residual block
        con1, affine1, _, con2, affine2 = take("con_4", "affine_", "relu_", "con_4", "affine_")
        inner = graph.conv_affine(x, con1, affine1)
        inner = graph.conv_affine(graph.relu(inner), con2, affine2)
        shortcut = graph.pool(x, take("avg_pool_2")[0], "AveragePool") if kinds[at] == "avg_pool_2" else x
        take("add_prev_", "relu_")
        x = graph.relu(graph.add(inner, shortcut))
    x = graph.pool(x, take("avg_pool_2")[0], "AveragePool")
    (fc,) = take("fc_2")
    outputs, inputs = fc.ints
    if at != len(layers) or graph.shapes[x][0] != inputs:
        raise ModelFormatError("the network does not end in avg_pool_everything and fc_no_bias as expected")
    flat = graph.op("Flatten", [x], None)
    # dlib's fc weights are inputs x outputs: output = input · W
    graph.nodes.append(helper.make_node("MatMul", [flat, graph.constant("fc", fc.tensor.reshape(inputs, outputs))],
                                        ["embeddings"]))
    model = helper.make_model(
        helper.make_graph(graph.nodes, "dlib_face_recognition_resnet_model_v1",
                          [helper.make_tensor_value_info("chips", TensorProto.FLOAT, ["n", 3, CHIP_SIZE, CHIP_SIZE])],
                          [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["n", outputs])],
                          graph.weights),
        opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="input_mean_rgb", value=",".join(repr(float(v)) for v in mean))
    return model.SerializeToString()


class OnnxFaceEncoder:
    """Embeddings of aligned 150x150 RGB face chips (dlib.get_face_chip's), as
    dlib.face_recognition_model_v1.compute_face_descriptor computes them."""

    def __init__(self, model_file: str, threads: int = 1) -> None:
        import onnxruntime
        with open(model_file, "rb") as handle:
            data = handle.read()
        self._mean = read_dlib_resnet(data)[0]
        options = onnxruntime.SessionOptions()
        # One worker process per core already: more threads per process would only contend.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(build_onnx(data), options, providers=["CPUExecutionProvider"])

    def describe(self, chips: list[np.ndarray]) -> np.ndarray:
        """N x 128 float32 for N chips (150 x 150 x 3 uint8, RGB); all in one run."""
        if not chips:
            return np.zeros((0, 128), np.float32)
        batch = (np.stack(chips).astype(np.float32) - self._mean) / 256.0  # dlib's input_rgb_image layer
        return self._session.run(["embeddings"], {"chips": np.ascontiguousarray(batch.transpose(0, 3, 1, 2))})[0]
