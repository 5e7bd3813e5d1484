"""Pooling: forward and backward (kernels: ``_kernels/pool.pyx``; formulas: DESIGN.md section 3;
twins: ``fastcnn._reference.pooling``)."""

import numpy as np

from .. import _kernels
from .._threads import get_num_threads
from ._validate import _array, _nonempty, _pair, conv2d_output_size

__all__ = ["max_pool2d", "max_pool2d_backward"]



def _pool_args(kernel_size, stride, padding):
    kernel = _pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"max-pool padding must be at most half the kernel size, got padding "
                         f"{padding} for kernel_size {kernel}")
    return kernel, stride, padding


def _max_pool2d_into(x, y, argmax, kernel, stride, padding):
    """Kernel call for validated arguments and preallocated y, argmax (int64)."""
    _kernels.pool.maxpool2d_forward(x, y, argmax, kernel[0], kernel[1], stride[0], stride[1],
                                    padding[0], padding[1], get_num_threads())
    return y, argmax


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """2-D max-pooling that also returns where each maximum came from.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        Implicit -inf padding, at most half the kernel size.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    argmax : ndarray of int64, shape (N, C, OH, OW)
        Flat index ``u*W + v`` of each maximum within its input plane ``x[n, c]``. Ties go to the
        first element in row-major order; a NaN is the maximum.
    """
    x = _array(x, "x", 4)
    _nonempty(x.shape, "x")
    kernel, stride, padding = _pool_args(kernel_size, stride, padding)
    N, C, H, W = x.shape
    OH, OW = conv2d_output_size((H, W), kernel, stride, padding)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int64)
    return _max_pool2d_into(x, y, argmax, kernel, stride, padding)


def _check_argmax(argmax, shape, plane_size):
    if not isinstance(argmax, np.ndarray):
        argmax = np.asarray(argmax)
    if argmax.dtype not in (np.int64, np.int32):
        raise TypeError(f"argmax must be an int64 or int32 array, got dtype {argmax.dtype}")
    if argmax.shape != tuple(shape):
        raise ValueError(f"argmax has shape {argmax.shape}, expected {tuple(shape)} "
                         "(the shape of grad_y)")
    if argmax.size:
        lo, hi = int(argmax.min()), int(argmax.max())
        if lo < 0 or hi >= plane_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"argmax holds index {bad}, outside the input plane "
                             f"[0, {plane_size})")
    return np.ascontiguousarray(argmax, dtype=np.int64)


def _max_pool2d_relu_backward_into(grad_y, argmax, y, grad_x):
    """Gradient through ReLU then max-pool, given the pooled output y (mask y > 0)."""
    _kernels.pool.maxpool2d_relu_backward(grad_y, argmax, y, grad_x, get_num_threads())
    return grad_x


def _max_pool2d_backward_into(grad_y, argmax, grad_x):
    """Kernel call for validated arguments (argmax int64, in range) and preallocated grad_x."""
    _kernels.pool.maxpool2d_backward(grad_y, argmax, grad_x, get_num_threads())
    return grad_x


def max_pool2d_backward(grad_y, argmax, input_size):
    """Gradient of max_pool2d: scatter grad_y through the cached argmax.

    ``grad_x[n, c].flat[argmax[n, c, i, j]] += grad_y[n, c, i, j]``; overlapping windows add up.

    Parameters
    ----------
    grad_y : ndarray, shape (N, C, OH, OW)
    argmax : ndarray of int64 or int32, shape (N, C, OH, OW), each in ``[0, H*W)``
    input_size : (int, int)
        ``(H, W)`` of the forward input.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
    """
    grad_y = _array(grad_y, "grad_y", 4)
    H, W = _pair(input_size, "input_size", 1)
    argmax = _check_argmax(argmax, grad_y.shape, H * W)
    N, C = grad_y.shape[:2]
    grad_x = np.empty((N, C, H, W), dtype=grad_y.dtype)
    return _max_pool2d_backward_into(grad_y, argmax, grad_x)
