"""Convolution references: loop version and im2col + matmul version (DESIGN.md section 3)."""

import numpy as np

from ._common import _c, _out_size, _pad, _pair

__all__ = [
    "conv2d_loops", "conv2d_backward_input_loops", "conv2d_backward_weight_loops", "im2col",
    "col2im", "conv2d_im2col", "conv2d_backward_input_im2col", "conv2d_backward_weight_im2col",
    "conv2d_general_loops", "conv2d_backward_input_general_loops",
    "conv2d_backward_weight_general_loops", "im2col_general", "col2im_general",
    "conv2d_general_im2col", "conv2d_backward_input_general_im2col",
    "conv2d_backward_weight_general_im2col",
]

# --------------------------------------------------------------------------------------------
# Convolution, loop version
# --------------------------------------------------------------------------------------------


def conv2d_loops(x, weight, bias=None, stride=1, padding=0):
    """Convolution forward (a correlation), one output position at a time.

    ``y[n, f, i, j] = b[f] + sum_{c,p,q} w[f, c, p, q] * xp[n, c, i*sh + p, j*sw + q]``

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    weight : ndarray, shape (F, C, KH, KW)
    bias : ndarray, shape (F,), optional
    stride, padding : int or (int, int)

    Returns
    -------
    y : ndarray, shape (N, F, OH, OW)
    """
    x, weight, bias = _c(x, weight, bias)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    N, _, H, W = x.shape
    F, _, KH, KW = weight.shape
    OH, OW = _out_size(H, KH, sh, ph), _out_size(W, KW, sw, pw)
    xp = _pad(x, ph, pw)
    y = np.zeros((N, F, OH, OW), dtype=x.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                window = xp[n, :, i * sh:i * sh + KH, j * sw:j * sw + KW]  # (C, KH, KW)
                y[n, :, i, j] = np.sum(weight * window, axis=(1, 2, 3))  # all F at once
    if bias is not None:
        y += bias.reshape(1, F, 1, 1)
    return y


def conv2d_backward_input_loops(grad_y, weight, input_size, stride=1, padding=0):
    """Input gradient of :func:`conv2d_loops`, scattering each output position back.

    The forward pass reads window ``(i, j)`` of ``xp`` once per output element, so the gradient
    adds ``sum_f g[n, f, i, j] * w[f]`` into that window; cropping the padding gives ``dx``. Rows
    and columns of ``xp`` that no window reached get a zero gradient.

    Parameters
    ----------
    grad_y : ndarray, shape (N, F, OH, OW)
    weight : ndarray, shape (F, C, KH, KW)
    input_size : (int, int)
        ``(H, W)`` of the forward input.
    stride, padding : int or (int, int)

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
    """
    grad_y, weight = _c(grad_y, weight)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    H, W = _pair(input_size)
    N, F, OH, OW = grad_y.shape
    _, C, KH, KW = weight.shape
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=grad_y.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                g = grad_y[n, :, i, j].reshape(F, 1, 1, 1)
                dxp[n, :, i * sh:i * sh + KH, j * sw:j * sw + KW] += np.sum(g * weight, axis=0)
    return dxp[:, :, ph:ph + H, pw:pw + W].copy()


def conv2d_backward_weight_loops(x, grad_y, kernel_size, stride=1, padding=0):
    """Weight and bias gradients of :func:`conv2d_loops`, one output position at a time.

    ``dw[f, c, p, q] = sum_{n,i,j} g[n, f, i, j] * xp[n, c, i*sh + p, j*sw + q]`` and
    ``db[f] = sum_{n,i,j} g[n, f, i, j]``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    grad_y : ndarray, shape (N, F, OH, OW)
    kernel_size : int or (int, int)
        ``(KH, KW)``.
    stride, padding : int or (int, int)

    Returns
    -------
    grad_weight : ndarray, shape (F, C, KH, KW)
    grad_bias : ndarray, shape (F,)
    """
    x, grad_y = _c(x, grad_y)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    KH, KW = _pair(kernel_size)
    N, C = x.shape[:2]
    _, F, OH, OW = grad_y.shape
    xp = _pad(x, ph, pw)
    dw = np.zeros((F, C, KH, KW), dtype=x.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                window = xp[n, :, i * sh:i * sh + KH, j * sw:j * sw + KW]  # (C, KH, KW)
                dw += grad_y[n, :, i, j].reshape(F, 1, 1, 1) * window
    db = grad_y.sum(axis=(0, 2, 3))
    return dw, db


# --------------------------------------------------------------------------------------------
# Convolution, im2col + matmul version
# --------------------------------------------------------------------------------------------


def im2col(x, kernel_size, stride=1, padding=0, pad_value=0.0):
    """Copy every window of the padded input into a column.

    ``cols[n, c, p, q, i, j] = xp[n, c, i*sh + p, j*sw + q]``

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size, stride, padding : int or (int, int)
    pad_value : float
        Value of the padding (0 for convolution, -inf for max-pooling).

    Returns
    -------
    cols : ndarray, shape (N, C, KH, KW, OH, OW)
        Reshape to ``(N, C*KH*KW, OH*OW)`` for the usual column matrix.
    """
    KH, KW = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    N, C, H, W = x.shape
    OH, OW = _out_size(H, KH, sh, ph), _out_size(W, KW, sw, pw)
    xp = _pad(x, ph, pw, pad_value)
    cols = np.empty((N, C, KH, KW, OH, OW), dtype=x.dtype)
    for p in range(KH):
        for q in range(KW):
            cols[:, :, p, q] = xp[:, :, p:p + sh * OH:sh, q:q + sw * OW:sw]
    return cols


def col2im(cols, input_size, stride=1, padding=0):
    """Add every column back into the window it came from (the adjoint of :func:`im2col`).

    Parameters
    ----------
    cols : ndarray, shape (N, C, KH, KW, OH, OW)
    input_size : (int, int)
        ``(H, W)`` of the unpadded input.
    stride, padding : int or (int, int)

    Returns
    -------
    x : ndarray, shape (N, C, H, W)
        Padding rows and columns are dropped.
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    H, W = _pair(input_size)
    N, C, KH, KW, OH, OW = cols.shape
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for p in range(KH):
        for q in range(KW):
            xp[:, :, p:p + sh * OH:sh, q:q + sw * OW:sw] += cols[:, :, p, q]
    return xp[:, :, ph:ph + H, pw:pw + W].copy()


def conv2d_im2col(x, weight, bias=None, stride=1, padding=0):
    """Convolution forward as ``y[n] = W (F, C*KH*KW) @ cols[n] (C*KH*KW, OH*OW)``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    weight : ndarray, shape (F, C, KH, KW)
    bias : ndarray, shape (F,), optional
    stride, padding : int or (int, int)

    Returns
    -------
    y : ndarray, shape (N, F, OH, OW)
    """
    x, weight, bias = _c(x, weight, bias)
    F, C, KH, KW = weight.shape
    cols = im2col(x, (KH, KW), stride, padding)
    N, OH, OW = cols.shape[0], cols.shape[4], cols.shape[5]
    y = np.matmul(weight.reshape(F, C * KH * KW), cols.reshape(N, C * KH * KW, OH * OW))
    if bias is not None:
        y += bias.reshape(1, F, 1)
    return y.reshape(N, F, OH, OW)


def conv2d_backward_input_im2col(grad_y, weight, input_size, stride=1, padding=0):
    """Input gradient as ``col2im(W^T (C*KH*KW, F) @ g[n] (F, OH*OW))``.

    Parameters
    ----------
    grad_y : ndarray, shape (N, F, OH, OW)
    weight : ndarray, shape (F, C, KH, KW)
    input_size : (int, int)
        ``(H, W)`` of the forward input.
    stride, padding : int or (int, int)

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
    """
    grad_y, weight = _c(grad_y, weight)
    N, F, OH, OW = grad_y.shape
    _, C, KH, KW = weight.shape
    dcols = np.matmul(weight.reshape(F, C * KH * KW).T, grad_y.reshape(N, F, OH * OW))
    return col2im(dcols.reshape(N, C, KH, KW, OH, OW), input_size, stride, padding)


def conv2d_backward_weight_im2col(x, grad_y, kernel_size, stride=1, padding=0):
    """Weight and bias gradients as ``dw = sum_n g[n] (F, OH*OW) @ cols[n]^T (OH*OW, C*KH*KW)``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    grad_y : ndarray, shape (N, F, OH, OW)
    kernel_size : int or (int, int)
        ``(KH, KW)``.
    stride, padding : int or (int, int)

    Returns
    -------
    grad_weight : ndarray, shape (F, C, KH, KW)
    grad_bias : ndarray, shape (F,)
    """
    x, grad_y = _c(x, grad_y)
    KH, KW = _pair(kernel_size)
    N, C = x.shape[:2]
    _, F, OH, OW = grad_y.shape
    cols = im2col(x, (KH, KW), stride, padding).reshape(N, C * KH * KW, OH * OW)
    g = grad_y.reshape(N, F, OH * OW)
    dw = np.tensordot(g, cols, axes=([0, 2], [0, 2]))  # (F, C*KH*KW)
    return dw.reshape(F, C, KH, KW), grad_y.sum(axis=(0, 2, 3))


# --------------------------------------------------------------------------------------------
# General convolution (asymmetric padding, dilation, groups): loops and im2col, independently
# --------------------------------------------------------------------------------------------
# ``pad4`` is (top, bottom, left, right); ``xp`` is x zero-padded by it. Filter f of group
# g = f // (F/G) sees channels g*C/G .. (g+1)*C/G - 1; tap (p, q) of output (i, j) reads
# xp[.., i*sh + p*dh, j*sw + q*dw].


def _pad_4(x, pad4):
    pt, pb, pl, pr = pad4
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))


def _general_size(H, W, KH, KW, stride, pad4, dilation):
    pt, pb, pl, pr = pad4
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    return ((H + pt + pb - dh * (KH - 1) - 1) // sh + 1,
            (W + pl + pr - dw * (KW - 1) - 1) // sw + 1)


def _window(xp, n, i, j, KH, KW, stride, dilation):
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    return xp[n, :, i * sh:i * sh + dh * (KH - 1) + 1:dh, j * sw:j * sw + dw * (KW - 1) + 1:dw]


def conv2d_general_loops(x, weight, bias=None, stride=1, pad4=(0, 0, 0, 0), dilation=1,
                         groups=1):
    """Convolution forward with dilation and groups, one output position at a time.

    ``y[n,f,i,j] = b[f] + sum_{c,p,q} w[f,c,p,q] * xp[n, g*C/G + c, i*sh + p*dh, j*sw + q*dw]``
    """
    x, weight, bias = _c(x, weight, bias)
    N, C, H, W = x.shape
    F, Cg, KH, KW = weight.shape
    Fg = F // groups
    OH, OW = _general_size(H, W, KH, KW, stride, pad4, dilation)
    xp = _pad_4(x, pad4)
    y = np.zeros((N, F, OH, OW), dtype=x.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                win = _window(xp, n, i, j, KH, KW, stride, dilation)
                for g in range(groups):
                    y[n, g * Fg:(g + 1) * Fg, i, j] = np.sum(
                        weight[g * Fg:(g + 1) * Fg] * win[g * Cg:(g + 1) * Cg], axis=(1, 2, 3))
    if bias is not None:
        y += bias.reshape(1, F, 1, 1)
    return y


def conv2d_backward_input_general_loops(grad_y, weight, input_size, stride=1,
                                        pad4=(0, 0, 0, 0), dilation=1, groups=1):
    """Input gradient of :func:`conv2d_general_loops`: each output position scatters
    ``sum_f g[n,f,i,j] * w[f]`` back into the window it read; the padding is cropped."""
    grad_y, weight = _c(grad_y, weight)
    H, W = _pair(input_size)
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    N, F, OH, OW = grad_y.shape
    _, Cg, KH, KW = weight.shape
    Fg = F // groups
    pt, pb, pl, pr = pad4
    dxp = np.zeros((N, Cg * groups, H + pt + pb, W + pl + pr), dtype=grad_y.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                for g in range(groups):
                    gv = grad_y[n, g * Fg:(g + 1) * Fg, i, j].reshape(Fg, 1, 1, 1)
                    dxp[n, g * Cg:(g + 1) * Cg, i * sh:i * sh + dh * (KH - 1) + 1:dh,
                        j * sw:j * sw + dw * (KW - 1) + 1:dw] += np.sum(
                            gv * weight[g * Fg:(g + 1) * Fg], axis=0)
    return dxp[:, :, pt:pt + H, pl:pl + W].copy()


def conv2d_backward_weight_general_loops(x, grad_y, kernel_size, stride=1, pad4=(0, 0, 0, 0),
                                         dilation=1, groups=1):
    """Weight and bias gradients of :func:`conv2d_general_loops`."""
    x, grad_y = _c(x, grad_y)
    KH, KW = _pair(kernel_size)
    N, C = x.shape[:2]
    _, F, OH, OW = grad_y.shape
    Fg, Cg = F // groups, C // groups
    xp = _pad_4(x, pad4)
    dw = np.zeros((F, Cg, KH, KW), dtype=x.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                win = _window(xp, n, i, j, KH, KW, stride, dilation)
                for g in range(groups):
                    dw[g * Fg:(g + 1) * Fg] += (grad_y[n, g * Fg:(g + 1) * Fg, i, j]
                                                .reshape(Fg, 1, 1, 1) * win[g * Cg:(g + 1) * Cg])
    return dw, grad_y.sum(axis=(0, 2, 3))


def im2col_general(x, kernel_size, stride=1, pad4=(0, 0, 0, 0), dilation=1):
    """``cols[n, c, p, q, i, j] = xp[n, c, i*sh + p*dh, j*sw + q*dw]``."""
    KH, KW = _pair(kernel_size)
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    N, C, H, W = x.shape
    OH, OW = _general_size(H, W, KH, KW, stride, pad4, dilation)
    xp = _pad_4(x, pad4)
    cols = np.empty((N, C, KH, KW, OH, OW), dtype=x.dtype)
    for p in range(KH):
        for q in range(KW):
            cols[:, :, p, q] = xp[:, :, p * dh:p * dh + sh * (OH - 1) + 1:sh,
                                  q * dw:q * dw + sw * (OW - 1) + 1:sw]
    return cols


def col2im_general(cols, input_size, stride=1, pad4=(0, 0, 0, 0), dilation=1):
    """The adjoint of :func:`im2col_general` (padding dropped)."""
    H, W = _pair(input_size)
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    N, C, KH, KW, OH, OW = cols.shape
    pt, pb, pl, pr = pad4
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr), dtype=cols.dtype)
    for p in range(KH):
        for q in range(KW):
            xp[:, :, p * dh:p * dh + sh * (OH - 1) + 1:sh,
               q * dw:q * dw + sw * (OW - 1) + 1:sw] += cols[:, :, p, q]
    return xp[:, :, pt:pt + H, pl:pl + W].copy()


def conv2d_general_im2col(x, weight, bias=None, stride=1, pad4=(0, 0, 0, 0), dilation=1,
                          groups=1):
    """Forward as one matrix product per group: ``y[n, gF] = W[gF] @ cols[n, gC]``."""
    x, weight, bias = _c(x, weight, bias)
    F, Cg, KH, KW = weight.shape
    cols = im2col_general(x, (KH, KW), stride, pad4, dilation)
    N, C, _, _, OH, OW = cols.shape
    cols = cols.reshape(N, groups, Cg * KH * KW, OH * OW)
    wg = weight.reshape(groups, F // groups, Cg * KH * KW)
    y = np.einsum("gfk,ngkt->ngft", wg, cols).reshape(N, F, OH, OW)
    if bias is not None:
        y = y + bias.reshape(1, F, 1, 1)
    return y


def conv2d_backward_input_general_im2col(grad_y, weight, input_size, stride=1,
                                         pad4=(0, 0, 0, 0), dilation=1, groups=1):
    """Input gradient as ``col2im(W[g]^T @ g[n, gF])`` per group."""
    grad_y, weight = _c(grad_y, weight)
    N, F, OH, OW = grad_y.shape
    _, Cg, KH, KW = weight.shape
    wg = weight.reshape(groups, F // groups, Cg * KH * KW)
    gg = grad_y.reshape(N, groups, F // groups, OH * OW)
    dcols = np.einsum("gfk,ngft->ngkt", wg, gg).reshape(N, groups * Cg, KH, KW, OH, OW)
    return col2im_general(dcols, input_size, stride, pad4, dilation)


def conv2d_backward_weight_general_im2col(x, grad_y, kernel_size, stride=1,
                                          pad4=(0, 0, 0, 0), dilation=1, groups=1):
    """Weight gradient as ``sum_n g[n, gF] @ cols[n, gC]^T`` per group."""
    x, grad_y = _c(x, grad_y)
    KH, KW = _pair(kernel_size)
    N, C = x.shape[:2]
    _, F, OH, OW = grad_y.shape
    Cg = C // groups
    cols = im2col_general(x, (KH, KW), stride, pad4, dilation).reshape(
        N, groups, Cg * KH * KW, OH * OW)
    gg = grad_y.reshape(N, groups, F // groups, OH * OW)
    dw = np.einsum("ngft,ngkt->gfk", gg, cols).reshape(F, Cg, KH, KW)
    return dw, grad_y.sum(axis=(0, 2, 3))
