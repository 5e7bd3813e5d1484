"""Convolutions: forward, input gradient and weight gradient (kernels: ``_kernels/conv.pyx``;
formulas: DESIGN.md section 3; twins: ``fastcnn._reference.conv``)."""

import numpy as np

from .. import _kernels
from .._threads import get_num_threads
from ._validate import _array, _check_grad, _covers_input, _nonempty, _pair, conv2d_output_size
from .linear import _gemm_into

__all__ = ["conv2d", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_output_size"]



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


def _conv2d_relu_max_pool2d_into(x, weight, bias, y, argmax, stride, padding, conv_size, kernel,
                                 pool_stride, pool_padding):
    """y, argmax = max_pool2d(relu(conv2d(x, weight, bias))) in one pass, never storing the conv
    output (``conv_size`` is its (OH, OW)); bitwise equal to the three separate calls."""
    _kernels.conv.conv2d_relu_maxpool_forward(
        x, weight, bias, y, argmax, stride[0], stride[1], padding[0], padding[1],
        conv_size[0], conv_size[1], kernel[0], kernel[1], pool_stride[0], pool_stride[1],
        pool_padding[0], pool_padding[1], get_num_threads())
    return y, argmax
