"""Convolution layers (functional: ``fastcnn.functional.conv``; kernels: ``_kernels/conv.pyx``;
formulas: DESIGN.md section 3; tests: ``tests/test_conv.py``)."""

import numpy as np

from ..functional._validate import _covers_input, _pair, conv2d_output_size
from ..functional.conv import (
    _conv2d_backward_input_into,
    _conv2d_backward_weight_into,
    _conv2d_into,
)
from .module import Module, _positive

__all__ = ["Conv2d"]


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
                 *, dtype=np.float32, seed=None):
        super().__init__(dtype=dtype)
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
        OH, OW = conv2d_output_size(input_shape[2:], self.kernel_size, self.stride,
                                      self.padding)
        return (input_shape[0], self.out_channels, OH, OW)

    def macs(self, input_shape):
        """Multiply-adds per image: ``OH*OW*KH*KW*C*F``."""
        _, Fo, OH, OW = self.output_shape(input_shape)
        return OH * OW * self.kernel_size[0] * self.kernel_size[1] * self.in_channels * Fo

    def _forward(self, x, reuse):
        x = self._input(x, self.in_channels)
        y = self._buffer("y", self.output_shape(x.shape), reuse)
        self._conv_into(x, y, reuse, relu=False)
        self._cache = x
        return y

    def _conv_into(self, x, y, reuse, relu):
        """y = conv(x) (then ReLU when ``relu``, for Sequential's fused steps); x validated."""
        bias = self.params.get("bias", self._zero_bias)
        weight = self.params["weight"]
        weight_t = None
        if _covers_input(x.shape[2], x.shape[3], *self.kernel_size, self.padding):
            # A matrix product: the transposed weight goes in a work array of its own.
            weight_t = self._buffer("weight_t", (weight[0].size, self.out_channels), reuse)
            np.copyto(weight_t, weight.reshape(self.out_channels, -1).T)
        _conv2d_into(x, weight, bias, y, self.stride, self.padding, relu, weight_t)
        return y

    def _backward(self, grad_y, reuse):
        """Fill ``grads`` and return the input gradient (None if ``compute_input_grad`` is off)."""
        x = self._cache
        grad_y = self._grad_input(grad_y, None if x is None else self.output_shape(x.shape))
        grad_b = self.grads.get("bias", self._buffer("db", (self.out_channels,), reuse))
        _conv2d_backward_weight_into(x, grad_y, self.grads["weight"], grad_b, self.stride,
                                       self.padding)
        if not self.compute_input_grad:
            return None
        grad_x = self._buffer("dx", x.shape, reuse)
        return _conv2d_backward_input_into(grad_y, self.params["weight"], grad_x, self.stride,
                                             self.padding)

    def extra_repr(self):
        extra = "" if "bias" in self.params else ", bias=False"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{extra}")
