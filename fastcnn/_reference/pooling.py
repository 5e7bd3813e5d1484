"""Pooling references (DESIGN.md section 3)."""

import numpy as np

from ._common import _c, _out_size, _pair
from .conv import im2col

__all__ = ["max_pool2d_loops", "max_pool2d_numpy", "max_pool2d_backward_ref"]

# --------------------------------------------------------------------------------------------
# Max-pooling
# --------------------------------------------------------------------------------------------


def max_pool2d_loops(x, kernel_size, stride=None, padding=0):
    """Max-pooling forward, one window at a time.

    Padding acts as -inf (it is skipped). Ties go to the first element in row-major order; a NaN
    is the maximum and the first NaN of the window wins.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    argmax : ndarray of int64, shape (N, C, OH, OW)
        Flat index ``u*W + v`` of each maximum in its input plane.
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    N, C, H, W = x.shape
    OH, OW = _out_size(H, kh, sh, ph), _out_size(W, kw, sw, pw)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    best, best_index = None, -1
                    for u in range(max(i * sh - ph, 0), min(i * sh - ph + kh, H)):
                        for v in range(max(j * sw - pw, 0), min(j * sw - pw + kw, W)):
                            value = x[n, c, u, v]
                            if (best is None or value > best
                                    or (np.isnan(value) and not np.isnan(best))):
                                best, best_index = value, u * W + v
                    y[n, c, i, j] = best
                    argmax[n, c, i, j] = best_index
    return y, argmax


def max_pool2d_numpy(x, kernel_size, stride=None, padding=0):
    """Vectorised max-pooling forward, same contract as :func:`max_pool2d_loops`.

    The windows are gathered with :func:`im2col` (padding = -inf) and reduced with ``np.argmax``,
    which returns the first maximum and the first NaN.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    argmax : ndarray of int64, shape (N, C, OH, OW)
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    N, C, H, W = x.shape
    cols = im2col(x, (kh, kw), (sh, sw), (ph, pw), pad_value=-np.inf)
    OH, OW = cols.shape[4], cols.shape[5]
    cols = cols.reshape(N, C, kh * kw, OH, OW)
    k = np.argmax(cols, axis=2)  # (N, C, OH, OW): window offset p*kw + q of the max
    y = np.take_along_axis(cols, k[:, :, None], axis=2)[:, :, 0]
    # The same windows over a plane holding its own flat indices u*W + v (-1 in the padding).
    plane = np.arange(H * W, dtype=np.int64).reshape(1, 1, H, W)
    flat = im2col(plane, (kh, kw), (sh, sw), (ph, pw), pad_value=-1).reshape(kh * kw, OH, OW)
    # A window whose real elements are all -inf would report a padding position: take its first
    # real element instead, as the loop version does.
    first_real = np.argmax(flat >= 0, axis=0)  # (OH, OW)
    i_idx, j_idx = np.arange(OH)[:, None], np.arange(OW)[None, :]
    k = np.where(flat[k, i_idx, j_idx] >= 0, k, first_real)
    argmax = flat[k, i_idx, j_idx]
    return y, argmax


def max_pool2d_backward_ref(grad_y, argmax, input_size):
    """Max-pooling backward: ``dx[n, c].flat[argmax[n, c]] += g[n, c]``.

    Overlapping windows that pick the same input element add up.

    Parameters
    ----------
    grad_y : ndarray, shape (N, C, OH, OW)
    argmax : ndarray of int, shape (N, C, OH, OW)
    input_size : (int, int)
        ``(H, W)`` of the forward input.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
    """
    grad_y, argmax = _c(grad_y, argmax)
    H, W = _pair(input_size)
    N, C, OH, OW = grad_y.shape
    dx = np.zeros((N * C, H * W), dtype=grad_y.dtype)
    planes = np.repeat(np.arange(N * C), OH * OW)
    np.add.at(dx, (planes, np.asarray(argmax).reshape(-1)), grad_y.reshape(-1))
    return dx.reshape(N, C, H, W)
