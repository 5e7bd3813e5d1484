"""Validated functional API over the compiled kernels.

Every public function here checks its arguments in Python (raising ``ValueError`` or ``TypeError``
that names the offending value or shape), makes inputs C-contiguous (non-contiguous and read-only
arrays are accepted and copied only when needed), allocates the outputs and calls a kernel from
``fastcnn._kernels`` with the current thread count. Arrays are NCHW; one call uses one dtype,
float32 or float64, and returns that dtype.

Shapes (``stride``, ``padding`` and ``kernel_size`` take an int or an ``(h, w)`` pair)::

    x (N, C, H, W)   weight (F, C, KH, KW)   bias (F,)   y (N, F, OH, OW)
    OH = (H + 2*padding_h - KH) // stride_h + 1
    OW = (W + 2*padding_w - KW) // stride_w + 1
"""

import operator

import numpy as np

from . import _kernels
from ._threads import get_num_threads

__all__ = [
    "conv2d", "conv2d_backward_input", "conv2d_backward_weight",
    "max_pool2d", "max_pool2d_backward", "relu", "relu_backward",
    "conv2d_output_size",
]

_FLOATS = (np.float32, np.float64)


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------

def _int(value, name):
    """An int from an int-like value (not bool, not float); TypeError otherwise."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None


def _pair(value, name, minimum):
    """Normalise an int or an (h, w) pair of ints, each >= minimum."""
    if isinstance(value, (tuple, list, np.ndarray)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {value!r}")
        pair = (_int(value[0], name), _int(value[1], name))
    else:
        v = _int(value, name)
        pair = (v, v)
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def _array(a, name, ndim=None, dtype=None):
    """Check a floating array's type, dtype and ndim; return it C-contiguous."""
    if not isinstance(a, np.ndarray):
        if a is None:
            raise TypeError(f"{name} must be an array, got None")
        a = np.asarray(a)
    if a.dtype.type not in _FLOATS:
        raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but the other inputs are {np.dtype(dtype)}; "
                        "all arrays of a call must share one dtype")
    if ndim is not None and a.ndim != ndim:
        what = "4-D (N, C, H, W)" if ndim == 4 else f"{ndim}-D"
        raise ValueError(f"{name} must be {what}, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _nonempty(shape, name, first=1):
    """Every axis from `first` on must be non-empty."""
    if any(s < 1 for s in shape[first:]):
        raise ValueError(f"{name} has an empty dimension: shape {shape}")


def conv2d_output_size(input_size, kernel_size, stride=1, padding=0):
    """(OH, OW) of a convolution or pooling; ValueError if the kernel does not fit.

    ``OH = (H + 2*padding - KH) // stride + 1`` and the same for the width.
    """
    (H, W) = _pair(input_size, "input_size", 1)
    (KH, KW) = _pair(kernel_size, "kernel_size", 1)
    (sh, sw) = _pair(stride, "stride", 1)
    (ph, pw) = _pair(padding, "padding", 0)
    if KH > H + 2 * ph or KW > W + 2 * pw:
        raise ValueError(f"kernel {(KH, KW)} is larger than the padded input "
                         f"{(H + 2 * ph, W + 2 * pw)} (input {(H, W)}, padding {(ph, pw)})")
    return (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1


def _check_grad(grad_y, expected, name="grad_y"):
    if grad_y.shape != tuple(expected):
        raise ValueError(f"{name} has shape {grad_y.shape}, expected {tuple(expected)}")


def _covers_input(H, W, KH, KW, padding):
    """True when one window covers the whole unpadded input: the conv is a matrix product."""
    return padding == (0, 0) and KH == H and KW == W


# ---------------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------------

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


def _conv2d_into(x, weight, bias, y, stride, padding, relu=False, weight_t=None):
    """y = conv2d(x, weight, bias) [then ReLU]; arguments already validated, y preallocated.

    When one window covers the whole input (LeNet's C5), the convolution is exactly the matrix
    product ``x.reshape(N, C*H*W) @ weight.reshape(F, C*H*W).T``; ``weight_t`` may hold that
    transposed weight, else it is made here.
    """
    N, C, H, W = x.shape
    F, _, KH, KW = weight.shape
    if bias is None:
        bias = np.zeros(F, dtype=x.dtype)
    if _covers_input(H, W, KH, KW, padding):
        if weight_t is None:
            weight_t = np.ascontiguousarray(weight.reshape(F, -1).T)
        y2 = y.reshape(N, F)
        _gemm_into(x.reshape(N, C * H * W), weight_t, y2)
        y2 += bias
        if relu:
            np.maximum(y2, 0, out=y2)  # NaN stays NaN
        return y
    _kernels.conv.conv2d_forward(x, weight, bias, y, stride[0], stride[1], padding[0], padding[1],
                                 bool(relu), get_num_threads())
    return y


def _conv2d_backward_input_into(grad_y, weight, grad_x, stride, padding):
    """grad_x = input gradient; arguments already validated, grad_x preallocated."""
    N, C, H, W = grad_x.shape
    F, _, KH, KW = weight.shape
    if _covers_input(H, W, KH, KW, padding):
        _gemm_into(grad_y.reshape(N, F), weight.reshape(F, -1), grad_x.reshape(N, C * H * W))
        return grad_x
    _kernels.conv.conv2d_backward_input(grad_y, weight, grad_x, stride[0], stride[1],
                                        padding[0], padding[1], get_num_threads())
    return grad_x


def _conv2d_backward_weight_into(x, grad_y, grad_w, grad_b, stride, padding):
    """(grad_w, grad_b) = weight and bias gradients; arguments validated, outputs preallocated."""
    N, C, H, W = x.shape
    F, _, KH, KW = grad_w.shape
    if _covers_input(H, W, KH, KW, padding):
        g2 = grad_y.reshape(N, F)
        _gemm_into(g2.T, x.reshape(N, C * H * W), grad_w.reshape(F, -1))
        np.sum(g2, axis=0, out=grad_b)
        return grad_w, grad_b
    _kernels.conv.conv2d_backward_weight(x, grad_y, grad_w, grad_b, stride[0], stride[1],
                                         padding[0], padding[1], get_num_threads())
    return grad_w, grad_b


def _conv_args(x, weight, stride, padding):
    x = _array(x, "x", 4)
    weight = _array(weight, "weight", 4, x.dtype)
    stride = _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    _nonempty(x.shape, "x")
    _nonempty(weight.shape, "weight", 0)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight expects {weight.shape[1]} input channels (shape {weight.shape}) "
                         f"but x has {x.shape[1]} (shape {x.shape})")
    return x, weight, stride, padding


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D convolution (cross-correlation, as in PyTorch), computed directly (no im2col).

    ``y[n,f,i,j] = bias[f] + sum_{c,p,q} weight[f,c,p,q] * xp[n,c,i*sh+p,j*sw+q]`` where ``xp``
    is ``x`` zero-padded by ``padding``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    weight : ndarray, shape (F, C, KH, KW), same dtype
    bias : ndarray, shape (F,), same dtype, optional
    stride : int or (int, int), >= 1
    padding : int or (int, int), >= 0

    Returns
    -------
    y : ndarray, shape (N, F, OH, OW)

    Shape
    -----
    ``OH = (H + 2*padding - KH) // stride + 1``, ``OW = (W + 2*padding - KW) // stride + 1``.
    """
    x, weight, stride, padding = _conv_args(x, weight, stride, padding)
    N, C, H, W = x.shape
    F, _, KH, KW = weight.shape
    if bias is not None:
        bias = _array(bias, "bias", 1, x.dtype)
        if bias.shape != (F,):
            raise ValueError(f"bias must have shape ({F},) to match weight {weight.shape}, "
                             f"got {bias.shape}")
    OH, OW = conv2d_output_size((H, W), (KH, KW), stride, padding)
    y = np.empty((N, F, OH, OW), dtype=x.dtype)
    return _conv2d_into(x, weight, bias, y, stride, padding)


def conv2d_backward_input(grad_y, weight, input_size, stride=1, padding=0):
    """Gradient of conv2d with respect to its input.

    The correlation of the zero-padded (and, for stride > 1, zero-dilated) output gradient with
    the kernel rotated by 180 degrees, cropped by ``padding`` (DESIGN.md section 3).

    Parameters
    ----------
    grad_y : ndarray, shape (N, F, OH, OW)
    weight : ndarray, shape (F, C, KH, KW), same dtype
    input_size : (int, int)
        ``(H, W)`` of the forward input: with stride > 1 several sizes give the same OH, OW.
    stride, padding : int or (int, int)

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
    """
    grad_y = _array(grad_y, "grad_y", 4)
    weight = _array(weight, "weight", 4, grad_y.dtype)
    _nonempty(weight.shape, "weight", 0)
    H, W = _pair(input_size, "input_size", 1)
    stride = _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    F, C, KH, KW = weight.shape
    OH, OW = conv2d_output_size((H, W), (KH, KW), stride, padding)
    _check_grad(grad_y, (grad_y.shape[0], F, OH, OW))
    grad_x = np.empty((grad_y.shape[0], C, H, W), dtype=grad_y.dtype)
    return _conv2d_backward_input_into(grad_y, weight, grad_x, stride, padding)


def conv2d_backward_weight(x, grad_y, kernel_size, stride=1, padding=0):
    """Gradients of conv2d with respect to its weight and bias.

    ``grad_weight[f,c,p,q] = sum_{n,i,j} grad_y[n,f,i,j] * xp[n,c,i*sh+p,j*sw+q]`` (the correlation
    of the padded input with the output gradient) and
    ``grad_bias[f] = sum_{n,i,j} grad_y[n,f,i,j]``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    grad_y : ndarray, shape (N, F, OH, OW), same dtype
    kernel_size : int or (int, int)
    stride, padding : int or (int, int)

    Returns
    -------
    grad_weight : ndarray, shape (F, C, KH, KW)
    grad_bias : ndarray, shape (F,)
    """
    x = _array(x, "x", 4)
    grad_y = _array(grad_y, "grad_y", 4, x.dtype)
    _nonempty(x.shape, "x")
    KH, KW = _pair(kernel_size, "kernel_size", 1)
    stride = _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    N, C, H, W = x.shape
    OH, OW = conv2d_output_size((H, W), (KH, KW), stride, padding)
    F = grad_y.shape[1]
    if F < 1:
        raise ValueError(f"grad_y has no output channels: shape {grad_y.shape}")
    _check_grad(grad_y, (N, F, OH, OW))
    grad_w = np.empty((F, C, KH, KW), dtype=x.dtype)
    grad_b = np.empty(F, dtype=x.dtype)
    return _conv2d_backward_weight_into(x, grad_y, grad_w, grad_b, stride, padding)


# ---------------------------------------------------------------------------------------------
# Max-pooling
# ---------------------------------------------------------------------------------------------

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


def _conv2d_relu_max_pool2d_into(x, weight, bias, y, argmax, stride, padding, conv_size, kernel,
                                 pool_stride, pool_padding):
    """y, argmax = max_pool2d(relu(conv2d(x, weight, bias))) in one pass, never storing the conv
    output (``conv_size`` is its (OH, OW)); bitwise equal to the three separate calls."""
    _kernels.conv.conv2d_relu_maxpool_forward(
        x, weight, bias, y, argmax, stride[0], stride[1], padding[0], padding[1],
        conv_size[0], conv_size[1], kernel[0], kernel[1], pool_stride[0], pool_stride[1],
        pool_padding[0], pool_padding[1], get_num_threads())
    return y, argmax


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


# ---------------------------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------------------------

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
