"""Pooling references (DESIGN.md section 3)."""

import numpy as np

from ._common import _c, _pair
from .conv import im2col

__all__ = ["max_pool2d_loops", "max_pool2d_numpy", "max_pool2d_backward_ref",
           "pool_output_size_ref", "avg_pool2d_loops", "avg_pool2d_backward_loops",
           "adaptive_avg_pool2d_loops", "adaptive_avg_pool2d_backward_loops"]


def pool_output_size_ref(size, kernel, stride, padding, dilation=1, ceil_mode=False):
    """Windows along one axis, PyTorch's rule: ``(size + 2p - d(k-1) - 1) / s + 1`` rounded
    down, or up in ceil mode as long as the last window starts before ``size + p``."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out

# --------------------------------------------------------------------------------------------
# Max-pooling
# --------------------------------------------------------------------------------------------


def max_pool2d_loops(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
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
    dilation : int or (int, int)
        Tap ``(p, q)`` of window ``(i, j)`` reads ``(i*sh - ph + p*dh, j*sw - pw + q*dw)``.
    ceil_mode : bool
        Output size rounded up (:func:`pool_output_size_ref`).

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    argmax : ndarray of int64, shape (N, C, OH, OW)
        Flat index ``u*W + v`` of each maximum in its input plane.
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    N, C, H, W = x.shape
    OH = pool_output_size_ref(H, kh, sh, ph, dh, ceil_mode)
    OW = pool_output_size_ref(W, kw, sw, pw, dw, ceil_mode)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    best, best_index = None, -1
                    rows = [i * sh - ph + p * dh for p in range(kh)]
                    cols = [j * sw - pw + q * dw for q in range(kw)]
                    for u in [u for u in rows if 0 <= u < H]:
                        for v in [v for v in cols if 0 <= v < W]:
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


# --------------------------------------------------------------------------------------------
# Average pooling
# --------------------------------------------------------------------------------------------


def _avg_windows(H, W, kernel_size, stride, padding, ceil_mode, count_include_pad,
                 divisor_override):
    """Yield ``(i, j, rows, cols, divisor)`` for every window of an average pooling: ``rows``
    and ``cols`` the real input ranges it covers, ``divisor`` PyTorch's."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    OH = pool_output_size_ref(H, kh, sh, ph, 1, ceil_mode)
    OW = pool_output_size_ref(W, kw, sw, pw, 1, ceil_mode)
    for i in range(OH):
        for j in range(OW):
            top, left = i * sh - ph, j * sw - pw
            # The window as far as it lies inside the padded input (a ceil-mode window may run
            # past it), then as far as it lies inside the input.
            bottom, right = min(top + kh, H + ph), min(left + kw, W + pw)
            rows = range(max(top, 0), min(bottom, H))
            cols = range(max(left, 0), min(right, W))
            if divisor_override is not None:
                divisor = divisor_override
            elif count_include_pad:
                divisor = (bottom - top) * (right - left)
            else:
                divisor = len(rows) * len(cols)
            yield i, j, rows, cols, divisor, (OH, OW)


def avg_pool2d_loops(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True, divisor_override=None):
    """Average pooling forward, one window at a time: ``y = sum(window) / divisor``.

    The divisor is ``divisor_override`` if given, else the number of window positions inside the
    zero-padded input (``count_include_pad``) or inside the input itself.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    """
    N, C, H, W = x.shape
    windows = list(_avg_windows(H, W, kernel_size, stride, padding, ceil_mode,
                                count_include_pad, divisor_override))
    OH, OW = windows[0][5]
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for i, j, rows, cols, divisor, _ in windows:
                total = x.dtype.type(0)
                for u in rows:
                    for v in cols:
                        total = total + x[n, c, u, v]
                y[n, c, i, j] = total / x.dtype.type(divisor)
    return y


def avg_pool2d_backward_loops(grad_y, input_size, kernel_size, stride=None, padding=0,
                              ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Average pooling backward: ``dx[window] += g / divisor`` for every window, in row-major
    order of the windows.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
    """
    H, W = _pair(input_size)
    N, C = grad_y.shape[:2]
    dx = np.zeros((N, C, H, W), dtype=grad_y.dtype)
    for i, j, rows, cols, divisor, _ in _avg_windows(H, W, kernel_size, stride, padding,
                                                     ceil_mode, count_include_pad,
                                                     divisor_override):
        if len(rows) and len(cols):
            dx[:, :, rows.start:rows.stop, cols.start:cols.stop] += (
                grad_y[:, :, i, j, None, None] / grad_y.dtype.type(divisor))
    return dx


# --------------------------------------------------------------------------------------------
# Adaptive average pooling
# --------------------------------------------------------------------------------------------


def _adaptive_ranges(size, out):
    """Window k covers ``floor(k*size/out) <= u < ceil((k+1)*size/out)``."""
    return [range((k * size) // out, -(-((k + 1) * size) // out)) for k in range(out)]


def adaptive_avg_pool2d_loops(x, output_size):
    """Adaptive average pooling forward: ``y[i, j] = sum(window) / kh / kw`` with the windows of
    :func:`_adaptive_ranges` (any output size; ``None`` keeps the input size).

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    """
    N, C, H, W = x.shape
    OH, OW = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * 2
    OH, OW = (H if OH is None else OH), (W if OW is None else OW)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    for i, rows in enumerate(_adaptive_ranges(H, OH)):
        for j, cols in enumerate(_adaptive_ranges(W, OW)):
            for n in range(N):
                for c in range(C):
                    total = x.dtype.type(0)
                    for u in rows:
                        for v in cols:
                            total = total + x[n, c, u, v]
                    y[n, c, i, j] = total / x.dtype.type(len(rows)) / x.dtype.type(len(cols))
    return y


def adaptive_avg_pool2d_backward_loops(grad_y, input_size):
    """Adaptive average pooling backward: ``dx[window] += g / kh / kw`` window by window.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
    """
    H, W = _pair(input_size)
    N, C, OH, OW = grad_y.shape
    dx = np.zeros((N, C, H, W), dtype=grad_y.dtype)
    t = grad_y.dtype.type
    for i, rows in enumerate(_adaptive_ranges(H, OH)):
        for j, cols in enumerate(_adaptive_ranges(W, OW)):
            dx[:, :, rows.start:rows.stop, cols.start:cols.stop] += (
                grad_y[:, :, i, j, None, None] / t(len(rows)) / t(len(cols)))
    return dx
