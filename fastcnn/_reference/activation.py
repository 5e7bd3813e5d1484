"""Element-wise activation references, forward beside backward."""

import numpy as np

__all__ = ["relu_ref", "relu_backward_ref"]


def relu_ref(x):
    """``y = max(x, 0)``; NaN stays NaN. Any shape."""
    return np.maximum(x, np.zeros((), dtype=x.dtype))


def relu_backward_ref(grad_y, x):
    """``dx = g * (x > 0)``, written as a select so that ``x <= 0`` gives exactly 0. Any shape."""
    return np.where(x > 0, grad_y, np.zeros((), dtype=grad_y.dtype))
