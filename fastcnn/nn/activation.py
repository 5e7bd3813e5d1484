"""Element-wise activations (functional: ``fastcnn.functional.activation``; kernels:
``_kernels/elementwise.pyx``; tests: ``tests/test_activation.py``)."""

from ..functional.activation import _relu_backward_into, _relu_into
from .module import Module

__all__ = ["ReLU"]


class ReLU(Module):
    """``y = max(x, 0)``; keeps its output for the backward pass (``y > 0`` iff ``x > 0``)."""

    def _forward(self, x, reuse):
        x = self._input(x, ndim=None)
        y = self._buffer("y", x.shape, reuse)
        _relu_into(x, y)
        self._cache = y
        return y

    def _backward(self, grad_y, reuse):
        y = self._cache
        grad_y = self._grad_input(grad_y, None if y is None else y.shape)
        grad_x = self._buffer("dx", y.shape, reuse)
        return _relu_backward_into(grad_y, y, grad_x)
