"""Export of fastcnn models to ONNX, built node by node with the ``onnx`` package's helpers.

Each layer class has an emitter in ``_EMITTERS`` (keyed by class name) that appends the ONNX nodes
computing the layer in evaluation mode: batch norm from its running statistics, dropout left out.
Nodes and tensors are named after the layer's kind and rank (``conv1``, ``conv1.weight``,
``relu1``, ``fc2.bias``); each node's ``doc_string`` gives the layer's index in the model (the
prefix of its ``state_dict`` keys) and its repr. The model's input transform (zero padding, then
per-channel ``(x - mean) / std``, as ``fastcnn predict`` prepares images) becomes the first nodes,
so the exported graph takes the same raw pixels; the batch dimension is symbolic (``N``).
"""

import json
import math

import numpy as np

from ..io import write_atomic
from ._common import chain, require

__all__ = ["export_onnx", "MIN_OPSET"]

#: Softmax before opset 13 flattened its input to 2-D: the export needs 13 or later.
MIN_OPSET = 13

#: Layers that compute nothing in evaluation mode.
_PASS_THROUGH = ("Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                 "FeatureAlphaDropout")

#: Node-name stems of the layer kinds (the class name in lower case otherwise).
_STEMS = {"Conv2d": "conv", "ConvTranspose2d": "convtranspose", "Linear": "fc",
          "MaxPool2d": "maxpool", "AvgPool2d": "avgpool", "AdaptiveAvgPool2d": "adaptiveavgpool",
          "AdaptiveMaxPool2d": "adaptivemaxpool", "BatchNorm1d": "bn", "BatchNorm2d": "bn"}

#: Keys of an input transform: see ``_emit_transform``.
_TRANSFORM_KEYS = ("mean", "std", "pad")


def _pair(value, name):
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return (int(value[0]),) * 2
        if len(value) == 2:
            return (int(value[0]), int(value[1]))
        raise ValueError(f"{name} must be an int or a pair, got {value!r}")
    return (int(value),) * 2


def _hp(layer, name, default=None):
    """A hyper-parameter of `layer`: its (normalised) attribute, else its constructor argument."""
    if hasattr(layer, name):
        return getattr(layer, name)
    return layer.init_args().get(name, default)


class _Graph:
    """The nodes and initialisers being built, with readable unique names."""

    def __init__(self, onnx, opset):
        self.onnx = onnx
        self.opset = opset
        self.nodes = []
        self.initializers = []
        self._stems = {}

    def stem(self, kind):
        """``conv1``, ``conv2``, ...: the next name for a layer of this kind."""
        self._stems[kind] = self._stems.get(kind, 0) + 1
        return f"{kind}{self._stems[kind]}"

    def const(self, name, array, dtype=np.float32):
        array = np.ascontiguousarray(array, dtype=dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op, inputs, output, doc=None, **attrs):
        node = self.onnx.helper.make_node(op, list(inputs), [output], name=output, **attrs)
        if doc:
            node.doc_string = doc
        self.nodes.append(node)
        return output


class ExportError(ValueError):
    """A model (or an option) that ONNX cannot express, or that the exporter does not know."""


# ------------------------------------------------------------------------------------------
# Emitters: (graph, layer, input name, input shape (1, ...), stem, doc) -> output name


def _conv_pads(layer, kernel, dilation):
    padding = layer.init_args().get("padding", _hp(layer, "padding", 0))
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding == "same":  # as torch: the extra row/column of an even window goes last
            total = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return [total[0] // 2, total[1] // 2, total[0] - total[0] // 2,
                    total[1] - total[1] // 2]
        raise ExportError(f"padding={padding!r} is not 'same', 'valid' or a number")
    ph, pw = _pair(_hp(layer, "padding", 0), "padding")
    return [ph, pw, ph, pw]


def _pad_node(g, x, pads, mode, stem, doc):
    """Explicit padding of H and W (``pads`` = [top, left, bottom, right])."""
    top, left, bottom, right = pads
    amounts = g.const(f"{stem}.pads", [0, 0, top, left, 0, 0, bottom, right], np.int64)
    return g.node("Pad", [x, amounts], f"{stem}/pad", doc, mode=mode)


_PADDING_MODES = {"reflect": ("reflect", MIN_OPSET), "replicate": ("edge", MIN_OPSET),
                  "circular": ("wrap", 19)}


def _conv(g, layer, x, shape, stem, doc):
    kernel = _pair(_hp(layer, "kernel_size"), "kernel_size")
    stride = _pair(_hp(layer, "stride", 1), "stride")
    dilation = _pair(_hp(layer, "dilation", 1), "dilation")
    groups = int(_hp(layer, "groups", 1))
    pads = _conv_pads(layer, kernel, dilation)
    mode = _hp(layer, "padding_mode", "zeros")
    if mode != "zeros":
        if mode not in _PADDING_MODES:
            raise ExportError(f"padding_mode={mode!r} has no ONNX equivalent")
        onnx_mode, needs = _PADDING_MODES[mode]
        if g.opset < needs:
            raise ExportError(f"padding_mode={mode!r} needs opset {needs} or later (Pad "
                              f"mode={onnx_mode!r}), got opset {g.opset}")
        if any(pads):
            x = _pad_node(g, x, pads, onnx_mode, stem, doc)
        pads = [0, 0, 0, 0]
    inputs = [x, g.const(f"{stem}.weight", layer.params["weight"])]
    if "bias" in layer.params:
        inputs.append(g.const(f"{stem}.bias", layer.params["bias"]))
    return g.node("Conv", inputs, stem, doc, kernel_shape=list(kernel), strides=list(stride),
                  pads=pads, dilations=list(dilation), group=groups)


def _conv_transpose(g, layer, x, shape, stem, doc):
    kernel = _pair(_hp(layer, "kernel_size"), "kernel_size")
    ph, pw = _pair(_hp(layer, "padding", 0), "padding")
    mode = _hp(layer, "padding_mode", "zeros")
    if mode != "zeros":
        raise ExportError(f"padding_mode={mode!r} (torch accepts only 'zeros' here)")
    inputs = [x, g.const(f"{stem}.weight", layer.params["weight"])]
    if "bias" in layer.params:
        inputs.append(g.const(f"{stem}.bias", layer.params["bias"]))
    return g.node("ConvTranspose", inputs, stem, doc, kernel_shape=list(kernel),
                  strides=list(_pair(_hp(layer, "stride", 1), "stride")),
                  pads=[ph, pw, ph, pw],
                  output_padding=list(_pair(_hp(layer, "output_padding", 0), "output_padding")),
                  dilations=list(_pair(_hp(layer, "dilation", 1), "dilation")),
                  group=int(_hp(layer, "groups", 1)))


def _linear(g, layer, x, shape, stem, doc):
    weight = layer.params["weight"]
    bias = layer.params.get("bias")
    if len(shape) == 2:
        inputs = [x, g.const(f"{stem}.weight", weight)]
        if bias is not None:
            inputs.append(g.const(f"{stem}.bias", bias))
        return g.node("Gemm", inputs, stem, doc, transB=1)
    # Over the last axis of a higher-rank input (as torch's Linear): x @ W.T (+ b).
    y = g.node("MatMul", [x, g.const(f"{stem}.weight_t", weight.T)],
               stem if bias is None else f"{stem}/matmul", doc)
    if bias is not None:
        y = g.node("Add", [y, g.const(f"{stem}.bias", bias)], stem, doc)
    return y


def _flatten(g, layer, x, shape, stem, doc):
    ndim = len(shape)
    start, end = int(_hp(layer, "start_dim", 1)), int(_hp(layer, "end_dim", -1))
    start, end = start % ndim, end % ndim
    if start == 0:
        raise ExportError("Flatten over the batch axis (start_dim=0) cannot keep the batch "
                          "dimension dynamic")
    if end == ndim - 1:
        return g.node("Flatten", [x], stem, doc, axis=start)
    target = [0] * start + [-1] + list(shape[end + 1:])
    return g.node("Reshape", [x, g.const(f"{stem}.shape", target, np.int64)], stem, doc)


def _simple(op, **fixed):
    def emit(g, layer, x, shape, stem, doc):
        attrs = {key: type(default)(_hp(layer, arg, default))
                 for key, (arg, default) in fixed.items()}
        return g.node(op, [x], stem, doc, **attrs)
    return emit


def _gelu(g, layer, x, shape, stem, doc):
    approximate = _hp(layer, "approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ExportError(f"GELU approximate={approximate!r} is not 'none' or 'tanh'")
    if g.opset >= 20:
        return g.node("Gelu", [x], stem, doc, approximate=approximate)
    half = g.const(f"{stem}.half", 0.5)
    one = g.const(f"{stem}.one", 1.0)
    if approximate == "none":  # 0.5 x (1 + erf(x / sqrt(2)))
        t = g.node("Mul", [x, g.const(f"{stem}.rsqrt2", 1 / math.sqrt(2))], f"{stem}/scale",
                   doc)
        t = g.node("Erf", [t], f"{stem}/erf", doc)
    else:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = g.node("Mul", [x, g.node("Mul", [x, x], f"{stem}/square", doc)], f"{stem}/cube",
                      doc)
        t = g.node("Mul", [cube, g.const(f"{stem}.coef", 0.044715)], f"{stem}/cubic", doc)
        t = g.node("Add", [x, t], f"{stem}/inner", doc)
        t = g.node("Mul", [t, g.const(f"{stem}.sqrt2pi", math.sqrt(2 / math.pi))],
                   f"{stem}/scale", doc)
        t = g.node("Tanh", [t], f"{stem}/tanh", doc)
    t = g.node("Add", [t, one], f"{stem}/plus1", doc)
    t = g.node("Mul", [x, t], f"{stem}/times_x", doc)
    return g.node("Mul", [t, half], stem, doc)


def _softmax(op):
    def emit(g, layer, x, shape, stem, doc):
        dim = _hp(layer, "dim", None)
        if dim is None:  # torch's implicit choice (deprecated there)
            dim = 0 if len(shape) in (0, 1, 3) else 1
        return g.node(op, [x], stem, doc, axis=int(dim))
    return emit


def _batch_norm(g, layer, x, shape, stem, doc):
    if not _hp(layer, "track_running_stats", True) or "running_mean" not in layer.buffers:
        raise ExportError("batch norm without running statistics normalises by the batch's "
                          "own statistics in evaluation mode, which an inference graph does "
                          "not express; build it with track_running_stats=True")
    channels = layer.buffers["running_mean"].shape[0]
    scale = layer.params.get("weight", np.ones(channels))
    shift = layer.params.get("bias", np.zeros(channels))
    inputs = [x, g.const(f"{stem}.weight", scale), g.const(f"{stem}.bias", shift),
              g.const(f"{stem}.running_mean", layer.buffers["running_mean"]),
              g.const(f"{stem}.running_var", layer.buffers["running_var"])]
    return g.node("BatchNormalization", inputs, stem, doc,
                  epsilon=float(_hp(layer, "eps", 1e-5)))


def _pool_geometry(layer, shape, dilation=(1, 1)):
    """Kernel, strides and ``[top, left, bottom, right]`` pads of a pooling layer, with
    ``ceil_mode`` spelt out as bottom/right padding (and ``ceil_mode=0`` in the graph): torch
    drops a last window that would start in the padding, which ONNX's ``ceil_mode`` (and its
    shape inference) do not; the output size is torch's."""
    kernel = _pair(_hp(layer, "kernel_size"), "kernel_size")
    stride = _hp(layer, "stride", None)
    stride = kernel if stride is None else _pair(stride, "stride")
    pad = _pair(_hp(layer, "padding", 0), "padding")
    ceil = bool(_hp(layer, "ceil_mode", False))
    ends = []
    for size, k, s, p, d in zip(shape[2:], kernel, stride, pad, dilation):
        span = d * (k - 1) + 1
        if ceil:
            out = -(-(size + 2 * p - span) // s) + 1
            if (out - 1) * s >= size + p:
                out -= 1
            # ONNX's floor formula with this end padding gives torch's size (symmetric padding
            # already does when the ceiling adds no window).
            ends.append(max(p, (out - 1) * s + span - size - p))
        else:  # the floor formula is the same on both sides
            ends.append(p)
    return kernel, stride, [pad[0], pad[1], ends[0], ends[1]]


def _max_pool(g, layer, x, shape, stem, doc):
    if _hp(layer, "return_indices", False):
        raise ExportError("MaxPool2d with return_indices=True returns two tensors; a chain "
                          "passes one")
    dilation = _pair(_hp(layer, "dilation", 1), "dilation")
    kernel, stride, pads = _pool_geometry(layer, shape, dilation)
    return g.node("MaxPool", [x], stem, doc, kernel_shape=list(kernel), strides=list(stride),
                  pads=pads, dilations=list(dilation))


def _avg_pool(g, layer, x, shape, stem, doc):
    if _hp(layer, "divisor_override", None) is not None:
        raise ExportError("AvgPool2d divisor_override has no ONNX AveragePool equivalent")
    kernel, stride, pads = _pool_geometry(layer, shape)
    include_pad = bool(_hp(layer, "count_include_pad", True))
    if include_pad and (pads[2] > pads[0] or pads[3] > pads[1]):
        # A ceil_mode window reaching past the padding: torch divides by the part of the
        # window inside the padded input. Pad explicitly, then count only the padded input.
        if any(pads[:2]):
            x = _pad_node(g, x, pads[:2] * 2, "constant", stem, doc)
        pads = [0, 0, pads[2] - pads[0], pads[3] - pads[1]]
        include_pad = False
    return g.node("AveragePool", [x], stem, doc, kernel_shape=list(kernel),
                  strides=list(stride), pads=pads, count_include_pad=int(include_pad))


def _adaptive_size(layer, shape):
    size = _hp(layer, "output_size")
    if not isinstance(size, (tuple, list)):
        size = (size, size)
    return tuple(int(shape[2 + i] if s is None else s) for i, s in enumerate(size))


def _bins(n_in, n_out):
    """Averaging matrix ``(n_out, n_in)`` of adaptive pooling along one axis: bin ``i`` covers
    ``[floor(i*n_in/n_out), ceil((i+1)*n_in/n_out))``, as torch."""
    a = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        a[i, lo:hi] = 1.0 / (hi - lo)
    return a


def _adaptive_avg_pool(g, layer, x, shape, stem, doc):
    (H, W), (oh, ow) = shape[2:], _adaptive_size(layer, shape)
    if (oh, ow) == (1, 1):
        return g.node("GlobalAveragePool", [x], stem, doc)
    if H % oh == 0 and W % ow == 0:  # equal, disjoint bins: an ordinary average pool
        kernel = [H // oh, W // ow]
        return g.node("AveragePool", [x], stem, doc, kernel_shape=kernel, strides=kernel)
    # Overlapping bins of unequal sizes: the average is linear, y = A_h @ x @ A_w.T.
    t = g.node("MatMul", [x, g.const(f"{stem}.bins_w", _bins(W, ow).T)], f"{stem}/cols", doc)
    return g.node("MatMul", [g.const(f"{stem}.bins_h", _bins(H, oh)), t], stem, doc)


def _adaptive_max_pool(g, layer, x, shape, stem, doc):
    if _hp(layer, "return_indices", False):
        raise ExportError("AdaptiveMaxPool2d with return_indices=True returns two tensors")
    (H, W), (oh, ow) = shape[2:], _adaptive_size(layer, shape)
    if (oh, ow) == (1, 1):
        return g.node("GlobalMaxPool", [x], stem, doc)
    if H % oh == 0 and W % ow == 0:
        kernel = [H // oh, W // ow]
        return g.node("MaxPool", [x], stem, doc, kernel_shape=kernel, strides=kernel)
    raise ExportError(f"adaptive max pooling of {H}x{W} to {oh}x{ow} (bins of unequal sizes) "
                      f"has no ONNX operator; pick an output size that divides the input")


_EMITTERS = {
    "Conv2d": _conv,
    "ConvTranspose2d": _conv_transpose,
    "Linear": _linear,
    "Flatten": _flatten,
    "ReLU": _simple("Relu"),
    "Tanh": _simple("Tanh"),
    "Sigmoid": _simple("Sigmoid"),
    "LeakyReLU": _simple("LeakyRelu", alpha=("negative_slope", 0.01)),
    "ELU": _simple("Elu", alpha=("alpha", 1.0)),
    "GELU": _gelu,
    "Softmax": _softmax("Softmax"),
    "LogSoftmax": _softmax("LogSoftmax"),
    "BatchNorm1d": _batch_norm,
    "BatchNorm2d": _batch_norm,
    "MaxPool2d": _max_pool,
    "AvgPool2d": _avg_pool,
    "AdaptiveAvgPool2d": _adaptive_avg_pool,
    "AdaptiveMaxPool2d": _adaptive_max_pool,
}


def exportable():
    """Names of the layer classes the exporter knows (pass-through ones included)."""
    return sorted(set(_EMITTERS) | set(_PASS_THROUGH))


def _output_shape(layer, shape):
    if type(layer).__name__ == "Flatten" and not hasattr(layer, "start_dim"):
        return (shape[0], int(np.prod(shape[1:])))
    return tuple(layer.output_shape(shape))


# ------------------------------------------------------------------------------------------
# The input transform


def _check_transform(transform, channels):
    """``(mean, std, (ph, pw))`` of an input transform, validated; mean/std as ``(C,)``.
    Takes a model's ``InputTransform`` (fastcnn.models.transform) or the dict form
    ``{"mean", "std", "pad"}``."""
    if hasattr(transform, "padding") and hasattr(transform, "mean"):  # an InputTransform
        transform = {"mean": transform.mean, "std": transform.std, "pad": transform.padding}
    if not hasattr(transform, "get"):
        raise ExportError(f"input_transform must be a dict with keys {_TRANSFORM_KEYS}, got "
                          f"{transform!r}")
    unknown = sorted(set(transform) - set(_TRANSFORM_KEYS))
    if unknown:
        raise ExportError(f"input_transform has keys {unknown} the exporter does not know "
                          f"(it knows {list(_TRANSFORM_KEYS)}); exporting without them would "
                          f"change the model's predictions")
    stats = []
    for key, neutral in (("mean", 0.0), ("std", 1.0)):
        value = transform.get(key)
        value = np.full(channels, neutral) if value is None else \
            np.asarray(value, dtype=np.float64).reshape(-1)
        if value.size == 1:
            value = np.full(channels, value[0])
        if value.size != channels or not np.all(np.isfinite(value)):
            raise ExportError(f"input_transform {key} {transform.get(key)!r} does not give one "
                              f"finite value per input channel ({channels})")
        stats.append(value)
    if np.any(stats[1] <= 0):
        raise ExportError(f"input_transform std {transform.get('std')!r} must be > 0")
    pad = transform.get("pad") or 0
    pad = _pair(pad, "input_transform pad")
    if min(pad) < 0:
        raise ExportError(f"input_transform pad {transform.get('pad')!r} must be >= 0")
    return stats[0], stats[1], pad


def _emit_transform(g, transform, shape):
    """Zero padding then ``(x - mean) / std`` per channel (what the data loaders and ``fastcnn
    predict`` do, in that order); returns (output name, raw per-image input shape)."""
    if len(shape) != 3:
        raise ExportError(f"an input transform needs image inputs (C, H, W), the model's "
                          f"input shape is {shape}")
    C, H, W = shape
    mean, std, (ph, pw) = _check_transform(transform, C)
    raw = (C, H - 2 * ph, W - 2 * pw)
    if min(raw) < 1:
        raise ExportError(f"input_transform pad {(ph, pw)} leaves no pixels of the model's "
                          f"input shape {shape}")
    x, doc = "input", "input transform: zero padding, then (x - mean) / std per channel"
    if ph or pw:
        x = _pad_node(g, x, [ph, pw, ph, pw], "constant", "transform", doc)
    if np.any(mean != 0):
        x = g.node("Sub", [x, g.const("transform.mean", mean.reshape(1, C, 1, 1))],
                   "transform/sub_mean", doc)
    if np.any(std != 1):
        x = g.node("Div", [x, g.const("transform.std", std.reshape(1, C, 1, 1))],
                   "transform/div_std", doc)
    return x, raw


# ------------------------------------------------------------------------------------------
# The model


def _version():
    from .. import __version__

    return __version__


def export_onnx(model, path, input_shape=None, opset=17, *, classes=None, input_transform=None):
    """Write `model` as an ONNX file that ONNX Runtime (or OpenCV, a browser runtime) can run.

    The graph computes the model in evaluation mode (batch norm from its running statistics,
    dropout left out), whatever mode the model is in, in float32, for any batch size.

    Parameters
    ----------
    model : fastcnn.Sequential or a single layer
        Nested Sequentials are flattened. Every layer must be one the exporter knows
        (``fastcnn.interop._onnx.exportable()``).
    path : str or os.PathLike
        The ``.onnx`` file, written atomically (an existing file is replaced only once the new
        one is complete).
    input_shape : tuple of int, optional
        The network's per-image input shape, ``(C, H, W)`` for images (``(F,)`` for a network
        of Linear layers); default ``model.input_shape``.
    opset : int, default 17
        ONNX opset, from 13 to the newest the installed ``onnx`` knows. GELU is one ``Gelu``
        node from opset 20 and is spelt out with ``Erf`` (or ``Tanh``) before.
    classes : sequence of str, optional
        Class names stored in the metadata (``"classes"``, a JSON list); default
        ``model.classes`` if the model has them.
    input_transform : dict, optional
        ``{"mean": m, "std": s, "pad": p}`` (each optional; ``m``, ``s`` a number or one per
        channel, ``p`` an int or ``(ph, pw)``): the graph first pads its input with ``p`` zeros
        on each side, then computes ``(x - m) / s`` per channel, so it takes the same raw
        pixels as ``fastcnn predict``. Default ``model.input_transform`` if present.

    Returns
    -------
    onnx.ModelProto
        The model written (already checked with ``onnx.checker.check_model(full_check=True)``).

    Raises
    ------
    ImportError
        If ``onnx`` is not installed (``pip install "fastcnn[onnx]"``).
    TypeError
        If `model` is not a fastcnn model.
    ValueError
        Naming the layer and the reason, for a layer or setting ONNX cannot express (or the
        exporter does not know), a bad `opset`, `input_shape` or `input_transform`.

    Shape
    -----
    Graph input ``"input"``: ``(N, C, H - 2*ph, W - 2*pw)`` (``N`` symbolic); graph output
    ``"output"``: the model's output for ``N`` images.
    """
    onnx = require("onnx", '"fastcnn[onnx]"', "ONNX export")
    layers = chain(model)
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or \
            not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be an integer from {MIN_OPSET} to {newest} (the newest "
                         f"the installed onnx {onnx.__version__} knows), got {opset!r}")
    opset = int(opset)
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ValueError("the model has no input_shape: pass input_shape=(C, H, W)")
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"input_shape must be the per-image shape, (C, H, W) for images, with "
                         f"positive sizes, got {input_shape}")
    if classes is None:
        classes = getattr(model, "classes", None)
    if input_transform is None:
        input_transform = getattr(model, "input_transform", None)

    g = _Graph(onnx, opset)
    try:
        x, raw_shape = ("input", input_shape) if input_transform is None else \
            _emit_transform(g, input_transform, input_shape)
    except ExportError as exc:
        raise ValueError(str(exc)) from None
    shape = (1,) + input_shape
    for path_, layer in layers:
        name = type(layer).__name__
        where = f"{name} at index {path_}"
        if name in _PASS_THROUGH:
            shape = _output_shape(layer, shape)
            continue
        if name not in _EMITTERS:
            raise ValueError(f"{type(layer).__module__}.{name} at index {path_} cannot be "
                             f"exported to ONNX; exportable layers: {', '.join(exportable())}")
        stem = g.stem(_STEMS.get(name, name.lower()))
        doc = f"layer {path_}: {layer!r}"
        try:
            x = _EMITTERS[name](g, layer, x, shape, stem, doc)
            shape = _output_shape(layer, shape)
        except ExportError as exc:
            raise ValueError(f"{where} cannot be exported to ONNX: {exc}") from None
    if g.nodes and g.nodes[-1].output[0] == x and x != "input":
        g.nodes[-1].output[0] = "output"  # the last layer's node writes the graph's output
    else:
        g.node("Identity", [x], "output")

    helper, TensorProto = onnx.helper, onnx.TensorProto
    graph = helper.make_graph(
        g.nodes, type(model).__name__,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *raw_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", *shape[1:]])],
        initializer=g.initializers)
    opset_id = helper.make_opsetid("", opset)
    proto = helper.make_model(graph, opset_imports=[opset_id], producer_name="fastcnn",
                              producer_version=_version(),
                              ir_version=helper.find_min_ir_version_for([opset_id]))
    proto.doc_string = (f"{type(model).__name__} exported by fastcnn {_version()}: "
                        f"input (N, {', '.join(map(str, raw_shape))}) float32 raw pixels"
                        f"{' (transformed in the graph)' if input_transform else ''}; "
                        f"evaluation-mode output")
    meta = {"input_shape": json.dumps(list(raw_shape)),
            "model_input_shape": json.dumps(list(input_shape))}
    if classes is not None:
        meta["classes"] = json.dumps([str(c) for c in classes])
    if input_transform is not None:
        mean, std, pad = _check_transform(input_transform, input_shape[0])
        meta["input_transform"] = json.dumps({"mean": mean.tolist(), "std": std.tolist(),
                                              "pad": list(pad)})
    helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    write_atomic(path, lambda f: f.write(proto.SerializeToString()))
    return proto
