"""Dense layers: the kernels' own deterministic matrix product (``_kernels/conv.pyx: gemm``;
twin: ``fastcnn._reference.linear``)."""

import numpy as np

from .. import _kernels
from .._threads import get_num_threads
from ._validate import _array, _check_grad

__all__ = ["linear", "linear_backward"]


def _gemm_into(a, b, c):
    """c = a @ b with the kernels' matrix product (deterministic, on the kernels' threads).

    ``b`` and ``c`` are C-contiguous; ``a`` is C-contiguous or the transpose of a C-contiguous
    array (read through strides, not copied).
    """
    M, K = a.shape
    if a.flags.c_contiguous:
        flat, sa_m, sa_k = a.reshape(-1), K, 1
    elif a.T.flags.c_contiguous:
        flat, sa_m, sa_k = a.T.reshape(-1), 1, M
    else:
        flat, sa_m, sa_k = np.ascontiguousarray(a).reshape(-1), K, 1
    _kernels.conv.gemm(flat, sa_m, sa_k, M, K, b, c, get_num_threads())
    return c


def _linear_into(x, weight, c):
    """c = x @ weight.T (a dense layer's product): x (M, K) and weight (N, K) read by rows, as
    they are held (kernel ``gemm_nt``: no transposed copy of the weight). Each element is one
    dot product in a fixed order, whatever M and the thread count."""
    _kernels.conv.gemm_nt(np.ascontiguousarray(x), np.ascontiguousarray(weight), c,
                          get_num_threads())
    return c


def _bind_linear(weight, bias, c, relu=False):
    """f(x): ``c = x @ weight.T`` (+ bias, then max(., 0) if relu) for C-contiguous x of c's
    rows, with weight (C-contiguous), bias and c fixed: a bound kernel call
    (``_kernels/_bound.pxi``), bitwise ``_linear_into`` then NumPy's add and maximum."""
    return _kernels.conv.BoundLinear(weight, bias, c, relu, get_num_threads())


def linear(x, weight, bias=None):
    """``y = x @ weight.T + bias``.

    Parameters
    ----------
    x : ndarray, shape (N, in_features), float32 or float64
    weight : ndarray, shape (out_features, in_features), same dtype
    bias : ndarray, shape (out_features,), optional

    Returns
    -------
    y : ndarray, shape (N, out_features)
    """
    x = _array(x, "x", 2)
    weight = _array(weight, "weight", 2, x.dtype)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight expects {weight.shape[1]} input features (shape {weight.shape}) "
                         f"but x has {x.shape[1]} (shape {x.shape})")
    y = np.empty((x.shape[0], weight.shape[0]), dtype=x.dtype)
    _linear_into(x, weight, y)
    if bias is not None:
        bias = _array(bias, "bias", 1, x.dtype)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {bias.shape}")
        y += bias
    return y


def linear_backward(x, weight, grad_y):
    """Gradients of ``linear``: ``(grad_x, grad_weight, grad_bias)`` with
    ``grad_x = grad_y @ weight``, ``grad_weight = grad_y.T @ x``, ``grad_bias = grad_y.sum(0)``."""
    x = _array(x, "x", 2)
    weight = _array(weight, "weight", 2, x.dtype)
    grad_y = _array(grad_y, "grad_y", 2, x.dtype)
    _check_grad(grad_y, (x.shape[0], weight.shape[0]))
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight expects {weight.shape[1]} input features, x has {x.shape[1]}")
    grad_x = np.empty_like(x)
    grad_w = np.empty_like(weight)
    _gemm_into(grad_y, weight, grad_x)
    _gemm_into(grad_y.T, x, grad_w)
    return grad_x, grad_w, grad_y.sum(axis=0)
