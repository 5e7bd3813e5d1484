"""Import of ONNX graphs that are a chain of operators fastcnn has layers for.

The inverse of ``export_onnx`` where one exists: each node takes the previous node's output (and
constant initialisers) and maps to one layer, looked up by name in ``fastcnn.nn`` when the graph
is read, so a layer fastcnn gains is importable with one entry in ``_IMPORTERS``. The input
transform ``export_onnx`` writes (a leading constant ``Pad``, ``Sub``, ``Div``) is read back as
``model.input_transform``; ``metadata_props["classes"]`` as ``model.classes``.
"""

import json

import numpy as np

from .. import nn
from ._common import require

__all__ = ["import_onnx"]


class _Unsupported(ValueError):
    pass


def _layer(name, *args, **kwargs):
    cls = getattr(nn, name, None)
    if cls is None:
        raise _Unsupported(f"it maps to {name}, which this version of fastcnn does not have")
    try:
        return cls(*args, **kwargs)
    except TypeError as exc:  # an argument this version's layer does not take
        raise _Unsupported(f"it maps to {name}({', '.join(map(repr, args))}, "
                           f"{', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): "
                           f"{exc}") from None


def _symmetric(pads, what):
    pads = list(pads) or [0, 0, 0, 0]
    if pads[:2] != pads[2:]:
        raise _Unsupported(f"asymmetric {what} {pads} (fastcnn pads both sides alike)")
    return tuple(pads[:2])


def _nondefault(**kwargs):
    """Keyword arguments without those at their default, so layers that lack an argument
    (dilation, groups, ...) are still built when it is not used."""
    defaults = {"dilation": (1, 1), "groups": 1, "ceil_mode": False, "count_include_pad": True}
    return {k: v for k, v in kwargs.items() if k not in defaults or v != defaults[k]}


def _conv(node, attrs, inputs, dims, dtype):
    weight = inputs[1]
    F, Cg, KH, KW = weight.shape
    groups = attrs.get("group", 1)
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise _Unsupported("auto_pad (write explicit pads)")
    layer = _layer("Conv2d", Cg * groups, F, (KH, KW), stride=tuple(attrs.get("strides", (1, 1))),
                   padding=_symmetric(attrs.get("pads", ()), "pads"),
                   bias=len(inputs) > 2 and inputs[2] is not None, dtype=dtype,
                   **_nondefault(dilation=tuple(attrs.get("dilations", (1, 1))), groups=groups))
    state = {"weight": weight}
    if len(inputs) > 2:
        state["bias"] = inputs[2]
    return layer, state


def _gemm(node, attrs, inputs, dims, dtype):
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        raise _Unsupported("Gemm with transA, alpha or beta (only x @ W.T + b is a Linear)")
    weight = inputs[1] if attrs.get("transB", 0) else inputs[1].T
    bias = inputs[2] if len(inputs) > 2 else None
    if bias is not None and bias.shape != (weight.shape[0],):
        raise _Unsupported(f"Gemm bias of shape {bias.shape} (a Linear's is (out_features,))")
    layer = _layer("Linear", weight.shape[1], weight.shape[0], bias=bias is not None,
                   dtype=dtype)
    return layer, {"weight": weight, **({"bias": bias} if bias is not None else {})}


def _ceil_padding(pads, dims, kernel, strides, dilations):
    """Pads ``[top, left, bottom, right]`` with more at the end read back as torch's
    ``ceil_mode=True`` (as ``export_onnx`` writes it), if that gives the same output size."""
    begin, end = list(pads[:2]), list(pads[2:])
    if dims is None or len(dims) != 4 or None in dims[2:]:
        raise _Unsupported(f"asymmetric pads {list(pads)} (fastcnn pads both sides alike)")
    for size, b, e, k, s, d in zip(dims[2:], begin, end, kernel, strides, dilations):
        span = d * (k - 1) + 1
        onnx_out = (size + b + e - span) // s + 1
        torch_out = -(-(size + 2 * b - span) // s) + 1
        if (torch_out - 1) * s >= size + b:
            torch_out -= 1
        if e < b or onnx_out != torch_out:
            raise _Unsupported(f"asymmetric pads {list(pads)} (fastcnn pads both sides alike)")
    return tuple(begin)


def _pool(name):
    def build(node, attrs, inputs, dims, dtype):
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise _Unsupported("auto_pad (write explicit pads)")
        kernel = tuple(attrs["kernel_shape"])
        strides = tuple(attrs.get("strides", (1, 1)))
        dilations = tuple(attrs.get("dilations", (1, 1)))
        pads = list(attrs.get("pads", ())) or [0, 0, 0, 0]
        ceil = bool(attrs.get("ceil_mode", 0))
        if pads[:2] == pads[2:]:
            padding = tuple(pads[:2])
        elif not ceil:
            padding, ceil = _ceil_padding(pads, dims, kernel, strides, dilations), True
        else:
            raise _Unsupported(f"asymmetric pads {pads} with ceil_mode=1")
        extra = {"ceil_mode": ceil}
        if name == "MaxPool2d":
            extra["dilation"] = dilations
        else:
            extra["count_include_pad"] = bool(attrs.get("count_include_pad", 0))
        return _layer(name, kernel, stride=strides, padding=padding, dtype=dtype,
                      **_nondefault(**extra)), {}
    return build


def _flatten(node, attrs, inputs, dims, dtype):
    if attrs.get("axis", 1) != 1:
        raise _Unsupported(f"Flatten axis={attrs.get('axis')} (fastcnn flattens from axis 1)")
    return _layer("Flatten", dtype=dtype), {}


def _batch_norm(node, attrs, inputs, dims, dtype):
    scale, bias, mean, var = inputs[1:5]
    name = "BatchNorm1d" if dims is not None and len(dims) in (2, 3) else "BatchNorm2d"
    layer = _layer(name, scale.shape[0], eps=attrs.get("epsilon", 1e-5), dtype=dtype)
    return layer, {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var}


def _plain(name, **attr_to_arg):
    def build(node, attrs, inputs, dims, dtype):
        kwargs = {arg: attrs[key] for key, arg in attr_to_arg.items() if key in attrs}
        return _layer(name, dtype=dtype, **kwargs), {}
    return build


def _gelu(node, attrs, inputs, dims, dtype):
    approximate = attrs.get("approximate", "none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    return _layer("GELU", approximate=approximate, dtype=dtype), {}


_IMPORTERS = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MaxPool": _pool("MaxPool2d"),
    "AveragePool": _pool("AvgPool2d"),
    "GlobalAveragePool": lambda n, a, i, r, d: (_layer("AdaptiveAvgPool2d", 1, dtype=d), {}),
    "Flatten": _flatten,
    "BatchNormalization": _batch_norm,
    "Relu": _plain("ReLU"),
    "Tanh": _plain("Tanh"),
    "Sigmoid": _plain("Sigmoid"),
    "LeakyRelu": _plain("LeakyReLU", alpha="negative_slope"),
    "Elu": _plain("ELU", alpha="alpha"),
    "Gelu": _gelu,
    "Softmax": _plain("Softmax", axis="dim"),
    "LogSoftmax": _plain("LogSoftmax", axis="dim"),
}

_SKIPPED = ("Identity", "Dropout")


def _attributes(onnx, node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def import_onnx(path):
    """Read an ONNX file whose graph is a chain of supported operators as a fastcnn model.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    fastcnn.Sequential
        In evaluation mode, float32, with ``input_shape`` (the network's ``(C, H, W)`` when the
        graph input has static sizes), ``classes`` (from the metadata, if any) and
        ``input_transform`` (if the graph starts with the transform ``export_onnx`` writes).

    Raises
    ------
    ImportError
        If ``onnx`` is not installed.
    ValueError
        Naming the first node that is not a supported operator, or not part of a chain.

    Shape
    -----
    As the graph's input and output.
    """
    onnx = require("onnx", '"fastcnn[onnx]"', "ONNX import")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    proto = onnx.shape_inference.infer_shapes(proto)
    graph = proto.graph
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = onnx.numpy_helper.to_array(_attributes(onnx, node)["value"])
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                       for d in v.type.tensor_type.shape.dim]
              for v in list(graph.value_info) + list(graph.input)}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError(f"{path}: the graph has {len(inputs)} inputs and {len(graph.output)} "
                         f"outputs; a chain has one of each")
    current = inputs[0].name
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim]
    transform, layers, states = {}, [], []
    for index, node in enumerate(n for n in graph.node if n.op_type != "Constant"):
        where = f"{path}: node {index} ({node.op_type} {node.name!r})"
        data_inputs = [i for i in node.input if i and i not in consts]
        if data_inputs != [current] or node.input[0] != current:
            raise ValueError(f"{where} does not take the previous node's output alone: the "
                             f"graph is not a chain")
        attrs = _attributes(onnx, node)
        try:
            if not layers and _read_transform(node, attrs, consts, transform):
                pass
            elif node.op_type in _SKIPPED:
                pass
            elif node.op_type in _IMPORTERS:
                values = [consts.get(i) for i in node.input]
                layer, state = _IMPORTERS[node.op_type](node, attrs, values,
                                                        shapes.get(current), np.float32)
                layers.append(layer)
                states.append(state)
            else:
                raise _Unsupported(f"it is not supported; supported: "
                                   f"{', '.join(sorted(_IMPORTERS))}")
        except _Unsupported as exc:
            raise ValueError(f"{where}: {exc}") from None
        current = node.output[0]
    if current != graph.output[0].name:
        raise ValueError(f"{path}: the graph's output is not its last node's")
    model = nn.Sequential(*layers)
    for layer, state in zip(layers, states):
        layer.load_state_dict({k: np.asarray(v) for k, v in state.items()}, strict=False)
    model.eval()
    pad = transform.get("pad", (0, 0))
    if len(dims) == 4 and None not in dims[1:]:
        model.input_shape = (dims[1], dims[2] + 2 * pad[0], dims[3] + 2 * pad[1])
    if transform:
        from ..models.transform import InputTransform

        mean, std = transform.get("mean"), transform.get("std")
        model.input_transform = InputTransform(
            padding=tuple(pad), mean=None if mean is None else list(np.ravel(mean)),
            std=None if std is None else list(np.ravel(std)))
    meta = {p.key: p.value for p in proto.metadata_props}
    if "classes" in meta:
        model.classes = json.loads(meta["classes"])
    return model


def _read_transform(node, attrs, consts, transform):
    """Record a leading Pad (zeros) / Sub / Div by per-channel constants in `transform`; False
    if `node` is not one of them."""
    op = node.op_type
    if op == "Pad" and "pad" not in transform and "mean" not in transform \
            and "std" not in transform:
        pads = consts.get(node.input[1])
        mode = attrs.get("mode", b"constant")
        value = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else 0
        if pads is None or mode not in (b"constant", "constant") or np.any(value != 0):
            return False
        pads = [int(p) for p in pads]
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or pads[2:4] != pads[6:8]:
            return False
        transform["pad"] = (pads[2], pads[3])
        return True
    key = {"Sub": "mean", "Div": "std"}.get(op)
    if key is None or key in transform or (key == "mean" and "std" in transform):
        return False
    value = consts.get(node.input[1])
    if value is None or value.ndim != 4 or value.shape[0] != 1 or value.shape[2:] != (1, 1):
        return False
    transform[key] = [float(v) for v in value.reshape(-1)]
    return True
