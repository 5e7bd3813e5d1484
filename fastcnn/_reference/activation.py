"""Element-wise activation and softmax references, forward beside backward.

Plain NumPy (and ``math.erfc`` for GELU), evaluated in float64 and rounded once to the input
dtype; they assume valid input. Which of the forward input ``x`` or output ``y`` each backward
takes matches ``fastcnn.functional.activation``.
"""

import math

import numpy as np

__all__ = ["relu_ref", "relu_backward_ref", "leaky_relu_ref", "leaky_relu_backward_ref",
           "elu_ref", "elu_backward_ref", "gelu_ref", "gelu_backward_ref", "tanh_ref",
           "tanh_backward_ref", "sigmoid_ref", "sigmoid_backward_ref", "softmax_ref",
           "softmax_backward_ref", "log_softmax_ref", "log_softmax_backward_ref"]


def _d(a):
    return np.asarray(a, dtype=np.float64)


def relu_ref(x):
    """``y = max(x, 0)``; NaN stays NaN. Any shape."""
    return np.maximum(x, np.zeros((), dtype=x.dtype))


def relu_backward_ref(grad_y, x):
    """``dx = g * (x > 0)``, written as a select so that ``x <= 0`` (and NaN) gives exactly 0.
    Any shape."""
    return np.where(x > 0, grad_y, np.zeros((), dtype=grad_y.dtype))


def leaky_relu_ref(x, negative_slope=0.01):
    """``y = x if x > 0 else slope * x``."""
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


def leaky_relu_backward_ref(grad_y, x, negative_slope=0.01):
    return np.where(x > 0, grad_y, grad_y * grad_y.dtype.type(negative_slope))


def elu_ref(x, alpha=1.0):
    """``y = x if x > 0 else alpha * expm1(x)``."""
    with np.errstate(over="ignore", invalid="ignore"):
        y = np.where(_d(x) > 0, _d(x), alpha * np.expm1(np.minimum(_d(x), 0)))
    return np.where(np.isnan(x), x, y.astype(x.dtype))


def elu_backward_ref(grad_y, x, alpha=1.0):
    """``dx = g if x > 0 else g * alpha * exp(x)``; NaN where x is NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        d = np.where(_d(x) <= 0, _d(grad_y) * (alpha * np.exp(np.minimum(_d(x), 0))), _d(grad_y))
        d = np.where(np.isnan(x), np.nan, d)
    return d.astype(grad_y.dtype)


_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _phi_cdf(x):
    return 0.5 * _erfc(-_d(x) / math.sqrt(2.0)) if np.size(x) else _d(x)


def gelu_ref(x, approximate="none"):
    """``y = x * Phi(x)``, ``Phi(x) = erfc(-x/sqrt 2)/2``; or the tanh form."""
    xd = _d(x)
    with np.errstate(over="ignore", invalid="ignore"):
        if approximate == "tanh":
            u = math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)
            y = xd * (0.5 * (1 + np.tanh(u)))
            y = np.where(u < 0, xd * np.exp(2 * u) / (1 + np.exp(2 * u)), y)
        else:
            y = xd * _phi_cdf(xd)
    return y.astype(x.dtype)


def gelu_backward_ref(grad_y, x, approximate="none"):
    xd = _d(x)
    with np.errstate(over="ignore", invalid="ignore"):
        if approximate == "tanh":
            # 0.5 (1 + tanh u) = s and 1 - tanh(u)^2 = 4 s (1 - s), s = sigmoid(2u): no
            # cancellation for negative u
            k = math.sqrt(2 / math.pi)
            u = k * (xd + 0.044715 * xd ** 3)
            s = sigmoid_ref(2 * u)
            d = s + 2 * xd * s * (1 - s) * k * (1 + 3 * 0.044715 * xd * xd)
            d = np.where(s * (1 - s) == 0, s, d)
        else:
            d = _phi_cdf(xd) + xd * np.exp(-0.5 * xd * xd) / math.sqrt(2 * math.pi)
    return (_d(grad_y) * d).astype(grad_y.dtype)


def tanh_ref(x):
    return np.tanh(_d(x)).astype(x.dtype)


def tanh_backward_ref(grad_y, y):
    """``dx = g * (1 - y^2)`` from the forward output ``y``."""
    return (_d(grad_y) * (1 - _d(y) ** 2)).astype(grad_y.dtype)


def sigmoid_ref(x):
    xd = _d(x)
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(xd))
    return np.where(xd >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def sigmoid_backward_ref(grad_y, y):
    """``dx = g * y * (1 - y)`` from the forward output ``y``."""
    return (_d(grad_y) * _d(y) * (1 - _d(y))).astype(grad_y.dtype)


def softmax_ref(x, dim):
    xd = _d(x)
    if xd.size == 0:
        return np.array(x, copy=True)
    z = xd - np.max(xd, axis=dim, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=dim, keepdims=True)).astype(x.dtype)


def softmax_backward_ref(grad_y, y, dim):
    g, yd = _d(grad_y), _d(y)
    return (yd * (g - np.sum(g * yd, axis=dim, keepdims=True))).astype(y.dtype)


def log_softmax_ref(x, dim):
    xd = _d(x)
    if xd.size == 0:
        return np.array(x, copy=True)
    z = xd - np.max(xd, axis=dim, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=dim, keepdims=True))).astype(x.dtype)


def log_softmax_backward_ref(grad_y, y, dim):
    g = _d(grad_y)
    return (g - np.exp(_d(y)) * np.sum(g, axis=dim, keepdims=True)).astype(y.dtype)
