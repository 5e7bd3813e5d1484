"""Element-wise activations, forward beside backward (kernels: ``_kernels/elementwise.pyx``;
twins: ``fastcnn._reference.activation``)."""

import numpy as np

from .. import _kernels
from .._threads import get_num_threads
from ._validate import _array, _check_grad

__all__ = ["relu", "relu_backward"]



def _relu_into(x, y):
    _kernels.elementwise.relu_forward(x.reshape(-1), y.reshape(-1), get_num_threads())
    return y


def _relu_backward_into(grad_y, x, grad_x):
    _kernels.elementwise.relu_backward(grad_y.reshape(-1), x.reshape(-1), grad_x.reshape(-1),
                                       get_num_threads())
    return grad_x


def relu(x):
    """``y = max(x, 0)`` elementwise, any shape; NaN propagates."""
    x = _array(x, "x")
    return _relu_into(x, np.empty_like(x))


def relu_backward(grad_y, x):
    """``grad_x = grad_y * (x > 0)``; ``x`` is the forward input (its output works too)."""
    x = _array(x, "x")
    grad_y = _array(grad_y, "grad_y", None, x.dtype)
    _check_grad(grad_y, x.shape)
    return _relu_backward_into(grad_y, x, np.empty_like(x))
