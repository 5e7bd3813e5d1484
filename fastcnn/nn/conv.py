"""Convolution layers (functional: ``fastcnn.functional.conv``; kernels: ``_kernels/conv.pyx``;
formulas: DESIGN.md section 3; tests: ``tests/test_conv.py``).

Each layer owns a workspace for its kernels' scratch, reused from one call to the next: a layer
(so a model) must not run forward/backward from two Python threads at once.
"""

import numpy as np

from .. import _kernels
from .._threads import get_num_threads
from ..functional._validate import _int
from ..functional.conv import (
    _conv2d_backward_input_into,
    _conv2d_backward_weight_into,
    _conv2d_into,
    _fit,
    _geometry,
    _hyper,
    _padding4,
    _plan,
    _transpose_geometry,
    _Workspace,
)
from .module import Module, _positive, _Unbound

__all__ = ["Conv2d", "ConvTranspose2d"]

_PAD_MODES = {"zeros": None, "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _fold(grad_p, pad4, H, W, mode):
    """Adjoint of ``np.pad(x, pad4, mode)`` on the last two axes: each padded position's
    gradient is added to the input position it copies (in a fixed order)."""
    pt, pb, pl, pr = pad4
    rows = np.pad(np.arange(H), (pt, pb), mode=mode)
    cols = np.pad(np.arange(W), (pl, pr), mode=mode)
    g_cols = np.zeros(grad_p.shape[:3] + (W,), dtype=grad_p.dtype)
    np.add.at(g_cols, (slice(None), slice(None), slice(None), cols), grad_p)
    out = np.zeros(grad_p.shape[:2] + (H, W), dtype=grad_p.dtype)
    np.add.at(out, (slice(None), slice(None), rows), g_cols)
    return out


class Conv2d(Module):
    """2-D convolution layer, ``y = conv2d(x, weight, bias, stride, padding, dilation, groups)``
    (PyTorch's ``torch.nn.Conv2d``).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : int, (int, int), 'valid' or 'same', default 0
    dilation : int or (int, int), default 1
    groups : int, default 1, dividing in_channels and out_channels
    bias : bool, default True
    padding_mode : 'zeros' (default), 'reflect', 'replicate' or 'circular'
    dtype : float32 (default) or float64, keyword-only
    seed : int or None, keyword-only
        Seed of the initialisation: Kaiming (He) uniform fan-in for the weight,
        ``U(-sqrt(6/fan_in), sqrt(6/fan_in))`` with ``fan_in = in_channels/groups * KH * KW``;
        biases start at 0.

    Shape
    -----
    Input ``(N, in_channels, H, W)``, output ``(N, out_channels, OH, OW)`` with
    ``OH = (H + pad_top + pad_bottom - dilation*(KH-1) - 1) // stride + 1``.
    ``weight`` is ``(out_channels, in_channels/groups, KH, KW)``.

    Attributes
    ----------
    compute_input_grad : bool
        False makes ``backward`` skip the input gradient and return None (for a first layer).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", *, dtype=np.float32, seed=None):
        super().__init__(dtype=dtype)
        self.in_channels = _positive(in_channels, "in_channels")
        self.out_channels = _positive(out_channels, "out_channels")
        self.kernel_size = _hyper(kernel_size, "kernel_size", 1)
        self.stride = _hyper(stride, "stride", 1)
        self.dilation = _hyper(dilation, "dilation", 1)
        self.groups = _positive(groups, "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"groups={self.groups} must divide in_channels="
                             f"{self.in_channels} and out_channels={self.out_channels}")
        if padding_mode not in _PAD_MODES:
            raise ValueError(f"padding_mode must be one of {tuple(_PAD_MODES)}, got "
                             f"{padding_mode!r}")
        self.padding_mode = padding_mode
        self._pad4 = _padding4(padding, self.kernel_size, self.dilation, self.stride)
        self.padding = padding if isinstance(padding, str) else _hyper(padding, "padding", 0)
        self.compute_input_grad = True
        _init_params(self, (self.out_channels, self.in_channels // self.groups), bias, seed)
        self._zero_bias = np.zeros(self.out_channels, dtype=self.dtype)
        self._zero_bias.flags.writeable = False  # a constant
        self._ws = _Workspace()
        self._geom = None  # (input shape, geometry): validated once per shape
        self._fast = None  # (input shape, output buffer, geometry): see _prepare

    def _geometry(self, shape):
        """The convolution's geometry for an input shape (validated once per shape); with a
        padding_mode other than 'zeros' the padding is applied first (np.pad), then none."""
        if self._geom is None or self._geom[0] != shape:
            pad4, inner = self._pad4, shape
            if self.padding_mode != "zeros":
                pt, pb, pl, pr = pad4
                if self.padding_mode == "reflect" and (max(pt, pb) >= shape[2]
                                                       or max(pl, pr) >= shape[3]):
                    raise ValueError(f"padding {pad4} must be smaller than the input "
                                     f"{shape[2:]} for padding_mode='reflect'")
                inner = shape[:2] + (shape[2] + pt + pb, shape[3] + pl + pr)
                pad4 = (0, 0, 0, 0)
            wshape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
            g = _geometry(inner, wshape, self.stride, 0, self.dilation, self.groups, pad4)
            self._geom = (shape, g)
        return self._geom[1]

    def output_shape(self, input_shape):
        """``(N, out_channels, OH, OW)`` for an input of shape ``(N, C, H, W)``."""
        g = self._geometry(tuple(input_shape))
        return (input_shape[0], self.out_channels, g.OH, g.OW)

    def macs(self, input_shape):
        """Multiply-adds per image: ``OH*OW*KH*KW*C/groups*F``."""
        _, Fo, OH, OW = self.output_shape(input_shape)
        return (OH * OW * self.kernel_size[0] * self.kernel_size[1]
                * (self.in_channels // self.groups) * Fo)

    def _padded(self, x):
        if self.padding_mode == "zeros":
            return x
        pt, pb, pl, pr = self._pad4
        return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), mode=_PAD_MODES[self.padding_mode])

    def _prepare(self, x, reuse):
        """``(x, y)``: the validated C-contiguous input and the output array to write.

        With reused buffers the checks run once per input shape: an ndarray of the shape,
        dtype and layout the last call validated goes straight through (any other input is
        checked again, with the same errors)."""
        fast = self._fast
        if reuse and fast is not None and type(x) is np.ndarray and x.shape == fast[0] and \
                x.dtype == self.dtype and x.flags.c_contiguous:
            return x, fast[1]
        x = self._input(x, self.in_channels)
        y = self._buffer("y", self.output_shape(x.shape), reuse)
        if reuse:
            self._fast = (x.shape, y, self._geometry(x.shape))
        return x, y

    def _forward(self, x, reuse):
        x, y = self._prepare(x, reuse)
        self._conv_into(x, y, reuse, relu=False)
        return y

    def _conv_into(self, x, y, reuse, relu):
        """y = conv(x) (then ReLU when ``relu``, for Sequential's fused steps); x validated.
        Keeps what backward needs."""
        fast = self._fast
        g = fast[2] if fast is not None and fast[1] is y else self._geometry(x.shape)
        xin = x if self.padding_mode == "zeros" else self._padded(x)
        params = self.params
        bias = params.get("bias", self._zero_bias)
        weight = params["weight"]
        # (eval mode: the packed weights are kept and reused while the weight is unchanged)
        _conv2d_into(xin, weight, bias, y, g, relu, self._ws, not self.training)
        self._cache = (x, xin)
        return y

    def _bind(self, shape, relu=False, weights=None):
        """Module._bind; ``relu`` for Sequential's fused Conv-ReLU steps, ``weights`` a function
        giving the (weight, bias) to use instead of the parameters (the Conv-BN fold)."""
        if self.padding_mode != "zeros" or len(shape) != 4 or shape[1] != self.in_channels \
                or shape[0] == 0:
            return None
        g = self._geometry(tuple(shape))
        dtype, wshape = self.dtype, (self.out_channels,) + self.params["weight"].shape[1:]
        y = np.empty((shape[0], self.out_channels, g.OH, g.OW), dtype=dtype)
        plan = _plan(g, "forward", dtype, self._ws)
        bound = plan.bind(y, relu)  # None: the planned call, chosen per weight
        params, zero = self.params, self._zero_bias

        def f(x):
            if weights is None:
                w, b = params["weight"], params.get("bias", zero)
            else:
                w, b = weights()
            if w.shape != wshape or w.dtype != dtype or not w.flags.c_contiguous or \
                    self.padding_mode != "zeros" or type(b) is not np.ndarray or \
                    b.shape != (self.out_channels,) or b.dtype != dtype:
                raise _Unbound
            if bound is not None:
                bound(x, w, b)
            else:
                plan.run(w)(x, w, b, y, relu, True)
            self._cache = (x, x)
            return y

        def links():  # this call as chain links (see Sequential._chain), or None
            if bound is None or self.padding_mode != "zeros":
                return None
            w, b = (params["weight"], params.get("bias", zero)) if weights is None \
                else weights()
            if w.shape != wshape or w.dtype != dtype or not w.flags.c_contiguous or \
                    type(b) is not np.ndarray or b.shape != (self.out_channels,) or \
                    b.dtype != dtype or not b.flags.c_contiguous:
                return None
            cap, owner, checks = bound.link(w, b)
            if weights is None:  # (else the caller checks what the weights came from)
                checks.append(lambda: params.get("weight") is w and
                              params.get("bias", zero) is b)
            return [cap], [owner], checks, [w, b]
        f.links = links
        return f

    def _backward(self, grad_y, reuse):
        """Fill ``grads`` and return the input gradient (None if ``compute_input_grad`` is off)."""
        cache, fast = self._cache, self._fast
        if reuse and cache is not None and fast is not None and cache[0].shape == fast[0] \
                and type(grad_y) is np.ndarray and grad_y.shape == fast[1].shape and \
                grad_y.dtype == self.dtype and grad_y.flags.c_contiguous:
            g = fast[2]  # the gradient of the last (validated) forward's output
        else:
            grad_y = self._grad_input(grad_y, None if cache is None else
                                      self.output_shape(cache[0].shape))
            g = self._geometry(cache[0].shape)
        x, xin = cache
        grad_b = self.grads.get("bias")
        _conv2d_backward_weight_into(xin, grad_y, self.grads["weight"], grad_b, g, self._ws)
        if not self.compute_input_grad:
            return None
        if self.padding_mode == "zeros":
            grad_x = self._buffer("dx", x.shape, reuse)
            return _conv2d_backward_input_into(grad_y, self.params["weight"], grad_x, g,
                                               self._ws)
        grad_p = np.empty(xin.shape, dtype=self.dtype)
        _conv2d_backward_input_into(grad_y, self.params["weight"], grad_p, g, self._ws)
        return _fold(grad_p, self._pad4, x.shape[2], x.shape[3], _PAD_MODES[self.padding_mode])

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else \
                f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if "bias" not in self.params:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class ConvTranspose2d(Module):
    """2-D transposed convolution layer (PyTorch's ``torch.nn.ConvTranspose2d``): the input
    gradient of a convolution used as a forward pass.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : int or (int, int), default 0
    output_padding : int or (int, int), default 0 (smaller than stride or dilation)
    groups : int, default 1
    bias : bool, default True
    dilation : int or (int, int), default 1
    padding_mode : 'zeros' only (as PyTorch)
    dtype, seed : keyword-only; Kaiming (He) uniform weight with
        ``fan_in = out_channels/groups * KH * KW`` (PyTorch's fan-in of this weight), zero bias.

    Shape
    -----
    Input ``(N, in_channels, H, W)``, output ``(N, out_channels, Hout, Wout)`` with
    ``Hout = (H-1)*stride - 2*padding + dilation*(KH-1) + output_padding + 1``.
    ``weight`` is ``(in_channels, out_channels/groups, KH, KW)``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros", *,
                 dtype=np.float32, seed=None):
        super().__init__(dtype=dtype)
        self.in_channels = _positive(in_channels, "in_channels")
        self.out_channels = _positive(out_channels, "out_channels")
        self.kernel_size = _hyper(kernel_size, "kernel_size", 1)
        self.stride = _hyper(stride, "stride", 1)
        if isinstance(padding, str):
            raise ValueError(f"ConvTranspose2d takes an int or a pair as padding, got "
                             f"{padding!r}")
        self.padding = _hyper(padding, "padding", 0)
        self.output_padding = _hyper(output_padding, "output_padding", 0)
        self.dilation = _hyper(dilation, "dilation", 1)
        self.groups = _positive(_int(groups, "groups"), "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"groups={self.groups} must divide in_channels="
                             f"{self.in_channels} and out_channels={self.out_channels}")
        if any(op >= max(s, d) for op, s, d in zip(self.output_padding, self.stride,
                                                  self.dilation)):
            raise ValueError(f"output_padding {self.output_padding} must be smaller than "
                             f"either stride {self.stride} or dilation {self.dilation}")
        if padding_mode != "zeros":
            raise ValueError(f"Only 'zeros' padding mode is supported for ConvTranspose2d, got "
                             f"{padding_mode!r}")
        self.padding_mode = padding_mode
        self.compute_input_grad = True
        _init_params(self, (self.in_channels, self.out_channels // self.groups), bias, seed)
        self._ws = _Workspace()
        self._geom = None

    def _geometry(self, shape):
        if self._geom is None or self._geom[0] != shape:
            g, size = _transpose_geometry(shape, self.params["weight"].shape, self.stride,
                                          self.padding, self.output_padding, self.groups,
                                          self.dilation)
            self._geom = (shape, g, size)
        return self._geom[1], self._geom[2]

    def output_shape(self, input_shape):
        _, size = self._geometry(tuple(input_shape))
        return (input_shape[0], self.out_channels) + size

    def macs(self, input_shape):
        """Multiply-adds per image: ``H*W*KH*KW*in_channels*out_channels/groups``."""
        return (input_shape[2] * input_shape[3] * self.kernel_size[0] * self.kernel_size[1]
                * self.in_channels * (self.out_channels // self.groups))

    def _forward(self, x, reuse):
        x = self._input(x, self.in_channels)
        g, size = self._geometry(x.shape)
        y = self._buffer("y", (x.shape[0], self.out_channels) + size, reuse)
        xin = _fit(x, g.OH, g.OW)
        _conv2d_backward_input_into(xin, self.params["weight"], y, g, self._ws)
        if "bias" in self.params:
            y += self.params["bias"].reshape(1, -1, 1, 1)
        self._cache = (x, xin)
        return y

    def _backward(self, grad_y, reuse):
        cache = self._cache
        grad_y = self._grad_input(grad_y, None if cache is None else
                                  self.output_shape(cache[0].shape))
        x, xin = cache
        g, _ = self._geometry(x.shape)
        _conv2d_backward_weight_into(grad_y, xin, self.grads["weight"], None, g, self._ws)
        if "bias" in self.grads:
            if x.shape[0] == 0:
                self.grads["bias"][...] = 0
            else:
                _kernels.conv.bias_grad(grad_y, self.grads["bias"], get_num_threads())
        if not self.compute_input_grad:
            return None
        dx = self._buffer("dx", (x.shape[0], self.in_channels, g.OH, g.OW), reuse)
        _conv2d_into(grad_y, self.params["weight"], None, dx, g, False, self._ws)
        return _fit(dx, x.shape[2], x.shape[3]) if (g.OH, g.OW) != x.shape[2:] else dx

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if "bias" not in self.params:
            s += ", bias=False"
        return s


def _init_params(layer, channels, bias, seed):
    """Weight ``channels + kernel_size`` with He-uniform fan-in initialisation (fan-in: the
    second axis times the kernel taps) and a zero bias of ``out_channels``, with their
    gradients: shared by Conv2d and ConvTranspose2d, whose weights differ only in layout."""
    shape = tuple(channels) + layer.kernel_size
    fan_in = shape[1] * layer.kernel_size[0] * layer.kernel_size[1]
    rng = np.random.default_rng(seed)
    layer.params["weight"] = layer._init_uniform(shape, fan_in, np.sqrt(2.0), rng)
    layer.grads["weight"] = np.zeros(shape, dtype=layer.dtype)
    if bias:
        layer.params["bias"] = np.zeros(layer.out_channels, dtype=layer.dtype)
        layer.grads["bias"] = np.zeros(layer.out_channels, dtype=layer.dtype)
