"""Layers with PyTorch's names and layouts, on top of ``fastcnn.functional``.

Every layer has ``forward(x)`` (also ``__call__``), ``backward(grad_y) -> grad_x``, ``params`` and
``grads`` dicts with the same keys (``"weight"``, ``"bias"``), a ``dtype`` (float32 by default,
float64 allowed) and a ``__repr__`` showing its hyper-parameters. ``backward`` *writes* the
parameter gradients (it does not add to them, unlike PyTorch's ``.grad``) and needs the cache of
the most recent ``forward``.

Buffers: a layer called on its own returns fresh arrays. A ``Sequential`` runs its layers in a
mode where they reuse their output and gradient buffers from one step to the next, so a training
step allocates nothing once the batch shape is known; ``Sequential`` still hands its caller fresh
arrays, and it never changes how its layers behave when they are called directly.
"""

from collections import OrderedDict

import numpy as np

from . import _kernels
from . import functional as F
from .functional import _array, _int, _pair

__all__ = ["Module", "Parameter", "Conv2d", "MaxPool2d", "ReLU", "Flatten", "Linear",
           "Sequential", "CrossEntropyLoss"]


class Parameter:
    """A trainable array and its gradient, as handed to optimisers by ``model.parameters()``.

    ``data`` and ``grad`` are the layer's own arrays (``layer.params[key]``,
    ``layer.grads[key]``): optimisers update ``data`` in place.
    """

    __slots__ = ("name", "data", "grad")

    def __init__(self, name, data, grad):
        self.name = name
        self.data = data
        self.grad = grad

    @property
    def is_weight(self):
        """True for weights (regularised by L2 / weight decay), False for biases."""
        return self.name.rsplit(".", 1)[-1] == "weight"

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype})"


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


class Module:
    """Base class: parameters, buffer management and the call protocol."""

    def __init__(self, dtype=np.float32):
        self.dtype = _check_dtype(dtype)
        self.params = {}
        self.grads = {}
        self._cache = None
        self._buffers = {}

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x):
        """Apply the layer; the result is a fresh array."""
        return self._forward(x, reuse=False)

    def backward(self, grad_y):
        """Gradient with respect to the input (a fresh array); fills ``grads``."""
        return self._backward(grad_y, reuse=False)

    def _forward(self, x, reuse, relu=False):  # pragma: no cover - abstract
        """forward, writing into reused buffers when ``reuse`` (and applying a ReLU if ``relu``,
        for layers that can fuse one)."""
        raise NotImplementedError

    def _backward(self, grad_y, reuse):  # pragma: no cover - abstract
        raise NotImplementedError

    def parameters(self, prefix=""):
        """The layer's parameters as a list of ``Parameter`` (weight first, then bias)."""
        return [Parameter(prefix + key, self.params[key], self.grads[key]) for key in self.params]

    def _buffer(self, key, shape, reuse, dtype=None):
        """An uninitialised array of this shape: the one from the last call when ``reuse``."""
        dtype = self.dtype if dtype is None else dtype
        buf = self._buffers.get(key) if reuse else None
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = np.empty(shape, dtype=dtype)
            if reuse:
                self._buffers[key] = buf
        return buf

    def _input(self, x, channels=None, ndim=4):
        """Check an input array against this layer (ndim, channels, dtype); C-contiguous."""
        x = _array(x, "x")
        if x.dtype != self.dtype:
            raise TypeError(f"{type(self).__name__} has dtype {self.dtype} but x has dtype "
                            f"{x.dtype}; convert with x.astype(np.{self.dtype})")
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{type(self).__name__} expects a {ndim}-D input, got shape {x.shape}")
        if channels is not None and x.shape[1] != channels:
            what = "input features" if ndim == 2 else "input channels"
            raise ValueError(f"{type(self).__name__} expects {channels} {what}, got x of "
                             f"shape {x.shape}")
        return x

    def _grad_input(self, grad_y, shape):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        grad_y = _array(grad_y, "grad_y", None, self.dtype)
        if grad_y.shape != tuple(shape):
            raise ValueError(f"grad_y has shape {grad_y.shape}, expected {tuple(shape)} "
                             "(the shape of the last forward output)")
        return grad_y

    def _init_uniform(self, shape, fan_in, gain, rng):
        bound = gain * np.sqrt(3.0 / fan_in)
        return rng.uniform(-bound, bound, size=shape).astype(self.dtype)


class Conv2d(Module):
    """2-D convolution layer, ``y = conv2d(x, weight, bias, stride, padding)``.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : int or (int, int), default 0
    bias : bool, default True
    dtype : float32 (default) or float64
    seed : int or None
        Seed of the Kaiming (He) uniform fan-in initialisation of the weight (biases start at 0).

    Shape
    -----
    Input ``(N, in_channels, H, W)``, output ``(N, out_channels, OH, OW)`` with
    ``OH = (H + 2*padding - KH) // stride + 1``.
    ``weight`` is ``(out_channels, in_channels, KH, KW)``.

    Attributes
    ----------
    compute_input_grad : bool
        False makes ``backward`` skip the input gradient and return None (for a first layer).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 dtype=np.float32, seed=None):
        super().__init__(dtype)
        self.in_channels = _positive(in_channels, "in_channels")
        self.out_channels = _positive(out_channels, "out_channels")
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.compute_input_grad = True
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        rng = np.random.default_rng(seed)
        self.params["weight"] = self._init_uniform(shape, fan_in, np.sqrt(2.0), rng)
        self.grads["weight"] = np.zeros(shape, dtype=self.dtype)
        if bias:
            self.params["bias"] = np.zeros(self.out_channels, dtype=self.dtype)
            self.grads["bias"] = np.zeros(self.out_channels, dtype=self.dtype)
        self._zero_bias = np.zeros(self.out_channels, dtype=self.dtype)

    def output_shape(self, input_shape):
        """``(N, out_channels, OH, OW)`` for an input of shape ``(N, C, H, W)``."""
        OH, OW = F.conv2d_output_size(input_shape[2:], self.kernel_size, self.stride,
                                      self.padding)
        return (input_shape[0], self.out_channels, OH, OW)

    def macs(self, input_shape):
        """Multiply-adds per image: ``OH*OW*KH*KW*C*F``."""
        _, Fo, OH, OW = self.output_shape(input_shape)
        return OH * OW * self.kernel_size[0] * self.kernel_size[1] * self.in_channels * Fo

    def _forward(self, x, reuse, relu=False, pool=None):
        """Also applies a ReLU (``relu``) and then a MaxPool2d layer (``pool``) when given: the
        fused kernel pools each output plane as soon as it is computed."""
        x = self._input(x, self.in_channels)
        bias = self.params.get("bias", self._zero_bias)
        weight = self.params["weight"]
        conv_shape = self.output_shape(x.shape)
        if pool is not None and not F._covers_input(x.shape[2], x.shape[3], *self.kernel_size,
                                                   self.padding):
            y_shape = pool.output_shape(conv_shape)
            y = self._buffer("pool_y", y_shape, reuse)
            argmax = self._buffer("pool_argmax", y_shape, reuse, np.int64)
            F._conv2d_relu_max_pool2d_into(x, weight, bias, y, argmax, self.stride, self.padding,
                                           conv_shape[2:], pool.kernel_size, pool.stride,
                                           pool.padding)
            self._cache = (x, conv_shape)
            pool._forward_fused(conv_shape, y, argmax)
            return y
        y = self._buffer("y", conv_shape, reuse)
        weight_t = None
        if F._covers_input(x.shape[2], x.shape[3], *self.kernel_size, self.padding):
            # A matrix product: the transposed weight goes in a buffer of its own.
            weight_t = self._buffer("weight_t", (weight[0].size, self.out_channels), reuse)
            np.copyto(weight_t, weight.reshape(self.out_channels, -1).T)
        F._conv2d_into(x, weight, bias, y, self.stride, self.padding, relu, weight_t)
        self._cache = (x, y.shape)
        if pool is not None:  # a conv the fused kernel does not cover: pool its output after
            out = pool._forward(y, reuse)
            pool._forward_fused(y.shape, out, pool._cache[1])
            return out
        return y

    def _backward(self, grad_y, reuse):
        """Fill ``grads`` and return the input gradient (None if ``compute_input_grad`` is off)."""
        x, y_shape = self._cache if self._cache is not None else (None, None)
        grad_y = self._grad_input(grad_y, y_shape)
        grad_b = self.grads.get("bias", self._buffer("db", (self.out_channels,), reuse))
        F._conv2d_backward_weight_into(x, grad_y, self.grads["weight"], grad_b, self.stride,
                                       self.padding)
        if not self.compute_input_grad:
            return None
        grad_x = self._buffer("dx", x.shape, reuse)
        return F._conv2d_backward_input_into(grad_y, self.params["weight"], grad_x, self.stride,
                                             self.padding)

    def __repr__(self):
        extra = "" if "bias" in self.params else ", bias=False"
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{extra})")


class MaxPool2d(Module):
    """2-D max-pooling; the forward pass caches the argmax that the backward pass scatters through.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional (default: kernel_size)
    padding : int or (int, int), default 0 (implicit -inf, at most half the kernel)
    """

    def __init__(self, kernel_size, stride=None, padding=0, dtype=np.float32):
        super().__init__(dtype)
        self.kernel_size, self.stride, self.padding = F._pool_args(kernel_size, stride, padding)

    def output_shape(self, input_shape):
        OH, OW = F.conv2d_output_size(input_shape[2:], self.kernel_size, self.stride,
                                      self.padding)
        return tuple(input_shape[:2]) + (OH, OW)

    def _forward(self, x, reuse, relu=False):
        x = self._input(x)
        shape = self.output_shape(x.shape)
        y = self._buffer("y", shape, reuse)
        argmax = self._buffer("argmax", shape, reuse, np.int64)
        F._max_pool2d_into(x, y, argmax, self.kernel_size, self.stride, self.padding)
        self._cache = (x.shape, argmax, None)
        return y

    def _forward_fused(self, x_shape, y, argmax):
        """A Conv2d computed relu + this pooling itself: keep what backward needs."""
        self._cache = (x_shape, argmax, y)

    def _backward(self, grad_y, reuse, relu=False):
        """With ``relu`` (after a fused forward), also the gradient through the preceding ReLU."""
        x_shape, argmax, y = self._cache if self._cache is not None else (None, None, None)
        grad_y = self._grad_input(grad_y, None if argmax is None else argmax.shape)
        grad_x = self._buffer("dx", x_shape, reuse)
        if relu:
            return F._max_pool2d_relu_backward_into(grad_y, argmax, y, grad_x)
        return F._max_pool2d_backward_into(grad_y, argmax, grad_x)

    def __repr__(self):
        return (f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding})")


class ReLU(Module):
    """``y = max(x, 0)``; keeps its output for the backward pass (``y > 0`` iff ``x > 0``)."""

    def _forward(self, x, reuse, relu=False):
        x = self._input(x, ndim=None)
        y = self._buffer("y", x.shape, reuse)
        F._relu_into(x, y)
        self._cache = y
        return y

    def _forward_fused(self, y):
        """The preceding layer already applied the ReLU to y: just remember y for backward."""
        self._cache = y
        return y

    def _backward(self, grad_y, reuse):
        y = self._cache
        grad_y = self._grad_input(grad_y, None if y is None else y.shape)
        grad_x = self._buffer("dx", y.shape, reuse)
        return F._relu_backward_into(grad_y, y, grad_x)

    def __repr__(self):
        return "ReLU()"


class Flatten(Module):
    """Flatten every axis after the first: ``(N, C, H, W) -> (N, C*H*W)`` (a view, no copy)."""

    def _forward(self, x, reuse, relu=False):
        x = self._input(x, ndim=None)
        if x.ndim < 2:
            raise ValueError(f"Flatten expects at least 2-D input, got shape {x.shape}")
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def _backward(self, grad_y, reuse):
        shape = self._cache
        grad_y = self._grad_input(grad_y, None if shape is None else
                                  (shape[0], int(np.prod(shape[1:]))))
        return grad_y.reshape(shape)

    def __repr__(self):
        return "Flatten()"


class Linear(Module):
    """Fully connected layer, ``y = x @ weight.T + bias``.

    The matrix products run on the kernels' own threads (not BLAS), in a fixed order, so they
    are reproducible for any thread count.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    dtype : float32 (default) or float64
    seed : int or None
        Seed of the Kaiming (He) uniform fan-in initialisation (biases start at 0).

    Shape
    -----
    Input ``(N, in_features)``, output ``(N, out_features)``; ``weight`` is
    ``(out_features, in_features)``.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, seed=None):
        super().__init__(dtype)
        self.in_features = _positive(in_features, "in_features")
        self.out_features = _positive(out_features, "out_features")
        self.compute_input_grad = True
        shape = (self.out_features, self.in_features)
        rng = np.random.default_rng(seed)
        self.params["weight"] = self._init_uniform(shape, self.in_features, np.sqrt(2.0), rng)
        self.grads["weight"] = np.zeros(shape, dtype=self.dtype)
        if bias:
            self.params["bias"] = np.zeros(self.out_features, dtype=self.dtype)
            self.grads["bias"] = np.zeros(self.out_features, dtype=self.dtype)

    def output_shape(self, input_shape):
        return (input_shape[0], self.out_features)

    def macs(self, input_shape):
        return self.in_features * self.out_features

    def _forward(self, x, reuse, relu=False):
        x = self._input(x, self.in_features, ndim=2)
        y = self._buffer("y", (x.shape[0], self.out_features), reuse)
        weight_t = self._buffer("weight_t", (self.in_features, self.out_features), reuse)
        np.copyto(weight_t, self.params["weight"].T)
        F._gemm_into(x, weight_t, y)
        if "bias" in self.params:
            y += self.params["bias"]
        self._cache = x
        return y

    def _backward(self, grad_y, reuse):
        x = self._cache
        grad_y = self._grad_input(grad_y, None if x is None else (x.shape[0], self.out_features))
        F._gemm_into(grad_y.T, x, self.grads["weight"])
        if "bias" in self.grads:
            np.sum(grad_y, axis=0, out=self.grads["bias"])
        if not self.compute_input_grad:
            return None
        grad_x = self._buffer("dx", x.shape, reuse)
        return F._gemm_into(grad_y, self.params["weight"], grad_x)

    def __repr__(self):
        extra = "" if "bias" in self.params else ", bias=False"
        return f"Linear(in_features={self.in_features}, out_features={self.out_features}{extra})"


class Sequential(Module):
    """Layers applied in order; parameters named like PyTorch's ``nn.Sequential`` ("0.weight").

    Inside a Sequential, a Conv2d followed by a ReLU applies the ReLU in the convolution's output
    loop, and a Conv2d - ReLU - MaxPool2d triple runs as one kernel that pools each output plane
    as soon as it is computed (the convolution's output is never stored, and the backward pass
    needs no ReLU mask of its own). The results are bitwise those of the separate layers.
    Intermediate buffers are reused across steps; the output returned by ``forward`` and the
    gradient returned by ``backward`` are fresh arrays.
    """

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layer {i} is not a fastcnn layer: {layer!r}")
        dtypes = {layer.dtype for layer in layers}
        if len(dtypes) > 1:
            raise TypeError(f"all layers of a Sequential must share one dtype, got {dtypes}")
        super().__init__(dtypes.pop() if dtypes else np.float32)
        self.layers = list(layers)
        # Runs of layers executed together: (start, n) with n = 3 for Conv2d-ReLU-MaxPool2d,
        # 2 for Conv2d-ReLU, else 1. The layers themselves are not changed.
        self._groups = []
        i = 0
        while i < len(self.layers):
            kinds = [type(layer) for layer in self.layers[i:i + 3]]
            n = 1
            if kinds[:2] == [Conv2d, ReLU]:
                n = 3 if kinds == [Conv2d, ReLU, MaxPool2d] else 2
            self._groups.append((i, n))
            i += n

    @property
    def _fused(self):
        """Indices of the Conv2d layers that apply the following ReLU themselves."""
        return {i for i, n in self._groups if n > 1}

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x, copy=True):
        """Run every layer. ``copy=False`` returns the last layer's reused buffer instead of a
        fresh array (the trainer does this; the array is overwritten by the next forward)."""
        out = x
        for i, n in self._groups:
            layer = self.layers[i]
            if n == 3:
                out = layer._forward(out, reuse=True, relu=True, pool=self.layers[i + 2])
            elif n == 2:
                out = self.layers[i + 1]._forward_fused(layer._forward(out, reuse=True, relu=True))
            else:
                out = layer._forward(out, reuse=True)
        self._cache = True
        return np.array(out, copy=True) if copy else out

    def backward(self, grad_y, copy=True):
        """Backpropagate through every layer; returns the input gradient (None if skipped)."""
        if self._cache is None:
            raise RuntimeError("Sequential.backward called before forward")
        grad = grad_y
        for i, n in reversed(self._groups):
            if n == 3:  # pool and ReLU together, then the conv
                grad = self.layers[i + 2]._backward(grad, reuse=True, relu=True)
            elif n == 2:
                grad = self.layers[i + 1]._backward(grad, reuse=True)
            grad = self.layers[i]._backward(grad, reuse=True)
            if grad is None:
                return None
        return np.array(grad, copy=True) if copy else grad

    def parameters(self, prefix=""):
        return [p for i, layer in enumerate(self.layers)
                for p in layer.parameters(f"{prefix}{i}.")]

    def state_dict(self):
        """Copies of all parameters, keyed and ordered as in PyTorch's ``nn.Sequential``."""
        return OrderedDict((p.name, p.data.copy()) for p in self.parameters())

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters in place (arrays, or anything with ``.numpy()`` such as torch tensors).

        Raises ``KeyError`` listing missing or unexpected keys (when ``strict``) and
        ``ValueError`` on a shape mismatch. Values are cast to the model's dtype.
        """
        params = {p.name: p for p in self.parameters()}
        missing = [k for k in params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in params]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict does not match the model: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        converted = {}
        for name, p in params.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            if value.shape != p.data.shape:
                raise ValueError(f"{name}: shape {value.shape} in state_dict, model has "
                                 f"{p.data.shape}")
            converted[name] = value
        for name, value in converted.items():  # only after every check passed
            np.copyto(params[name].data, value, casting="unsafe")

    def __repr__(self):
        body = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"{type(self).__name__}({body}\n)"


class CrossEntropyLoss(Module):
    """Softmax + cross-entropy, fused and stable for logits of any size, mean over the batch.

    ``L = -(1/N) sum_n log softmax(z)[n, t_n] + 0.5 * l2 * sum ||W||^2`` where the L2 sum runs over
    the weights (not biases) of the parameters passed to ``forward``.

    Parameters
    ----------
    l2 : float, default 0
        L2 regularisation strength.

    Methods
    -------
    forward(logits, labels, params=()) -> float
    backward() -> grad_logits, ``(softmax(z) - onehot(t)) / N``
    backward_l2()
        Add ``l2 * W`` to the ``.grad`` of each weight given to ``forward``; call it after the
        model's backward pass (which writes the gradients). Equivalent to SGD's
        ``weight_decay=l2`` applied to weights only.
    """

    def __init__(self, l2=0.0, dtype=np.float32):
        super().__init__(dtype)
        l2 = float(l2)
        if not np.isfinite(l2) or l2 < 0:
            raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
        self.l2 = l2

    def forward(self, logits, labels, params=()):
        z = _array(logits, "logits", 2)
        if z.shape[0] < 1 or z.shape[1] < 1:
            raise ValueError(f"logits must be (N, num_classes) with N, num_classes >= 1, got "
                             f"shape {z.shape}")
        labels = _labels(labels, z.shape)
        grad = np.empty_like(z)
        loss = float(_kernels.elementwise.softmax_cross_entropy(z, labels, grad))
        weights = [p for p in params if isinstance(p, Parameter) and p.is_weight]
        if self.l2 > 0 and weights:
            # einsum, not BLAS dot: no extra threads, no temporary
            loss += 0.5 * self.l2 * sum(float(np.einsum("i,i->", p.data.ravel(), p.data.ravel()))
                                        for p in weights)
        self._cache = (grad, weights)
        return loss

    def backward(self):
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        return self._cache[0]

    def backward_l2(self):
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward_l2 called before forward")
        if self.l2 > 0:
            for p in self._cache[1]:
                p.grad += self.l2 * p.data

    def __repr__(self):
        return f"CrossEntropyLoss(l2={self.l2})"


def _positive(value, name):
    value = _int(value, name)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _labels(labels, logits_shape):
    """Integer class labels in range, one per row of the logits."""
    labels = np.asarray(labels)
    N, K = logits_shape
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)):
            raise ValueError("labels contain NaN or inf")
        if not np.all(labels == np.round(labels)):
            raise ValueError("labels must be whole numbers (class indices)")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (N,):
        raise ValueError(f"labels must have shape ({N},) to match logits {logits_shape}, got "
                         f"{labels.shape}")
    if N and (labels.min() < 0 or labels.max() >= K):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise ValueError(f"label {bad} is out of range for {K} classes [0, {K})")
    return np.ascontiguousarray(labels, dtype=np.int64)
