"""Pooling layers (functional: ``fastcnn.functional.pooling``; kernels: ``_kernels/pool.pyx``;
formulas: DESIGN.md section 3; tests: ``tests/test_pooling.py``)."""

import numpy as np

from ..functional._validate import conv2d_output_size
from ..functional.pooling import _max_pool2d_backward_into, _max_pool2d_into, _pool_args
from .module import Module

__all__ = ["MaxPool2d"]


class MaxPool2d(Module):
    """2-D max-pooling; the forward pass caches the argmax that the backward pass scatters through.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional (default: kernel_size)
    padding : int or (int, int), default 0 (implicit -inf, at most half the kernel)
    """

    def __init__(self, kernel_size, stride=None, padding=0, *, dtype=np.float32):
        super().__init__(dtype=dtype)
        self.kernel_size, self.stride, self.padding = _pool_args(kernel_size, stride, padding)

    def output_shape(self, input_shape):
        OH, OW = conv2d_output_size(input_shape[2:], self.kernel_size, self.stride,
                                      self.padding)
        return tuple(input_shape[:2]) + (OH, OW)

    def _forward(self, x, reuse):
        x = self._input(x)
        shape = self.output_shape(x.shape)
        y = self._buffer("y", shape, reuse)
        argmax = self._buffer("argmax", shape, reuse, np.int64)
        _max_pool2d_into(x, y, argmax, self.kernel_size, self.stride, self.padding)
        self._cache = (x.shape, argmax)
        return y

    def _backward(self, grad_y, reuse):
        x_shape, argmax = self._cache if self._cache is not None else (None, None)
        grad_y = self._grad_input(grad_y, None if argmax is None else argmax.shape)
        grad_x = self._buffer("dx", x_shape, reuse)
        return _max_pool2d_backward_into(grad_y, argmax, grad_x)


    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
