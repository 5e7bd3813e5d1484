"""Pooling: max, average and adaptive average, each forward beside its backward (kernels:
``_kernels/pool.pyx``; formulas: DESIGN.md section 3; twins: ``fastcnn._reference.pooling``).

Output size along one axis (PyTorch's rule), with ``size`` the input size::

    out = (size + 2*padding - dilation*(kernel-1) - 1) // stride + 1            (floor mode)
    out = ceil((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1       (ceil_mode)
          minus 1 if that last window would start at or past size + padding

so that in ceil mode the last window starts inside the input or its left padding.
"""

import numpy as np

from .. import _kernels
from .._threads import get_num_threads
from ._validate import _array, _check_grad, _int, _nonempty, _pair

__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "pool2d_output_size",
           "adaptive_pool2d_output_size"]

# Elements per thread below which the pooling, batch-norm and dropout kernels use fewer threads:
# waking another OpenMP thread costs more than it saves on a small batch of small maps (results do
# not depend on the thread count; PyTorch's parallel loops have the same grain). Tests of thread
# independence set it to 1 so that small shapes still run on every thread.
_GRAIN = 1 << 15


def _threads_for(size):
    """Threads for a kernel touching `size` elements: get_num_threads(), or fewer so that each
    thread gets at least _GRAIN elements (at least one thread)."""
    n = get_num_threads()
    if n == 1:
        return 1
    return max(1, min(n, size // _GRAIN))


# Hyper-parameters beyond this cannot describe a window of a real array (an array axis holds
# fewer than 2**31 elements here); checked so that the kernels' index arithmetic cannot overflow.
_LIMIT = 2 ** 31


def _bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _pool_args(kernel_size, stride, padding, dilation=1, kind="max-pool"):
    """Normalised (kernel, stride, padding, dilation) pairs; ValueError naming a bad value."""
    kernel = _pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    dilation = _pair(dilation, "dilation", 1)
    for name, pair in (("kernel_size", kernel), ("padding", padding), ("dilation", dilation)):
        if max(pair) >= _LIMIT:
            raise ValueError(f"{name} must be < 2**31, got {pair}")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{kind} padding must be at most half the kernel size, got padding "
                         f"{padding} for kernel_size {kernel}")
    return kernel, stride, padding, dilation


def _axis_size(size, k, s, p, d, ceil_mode):
    """Number of windows along one axis (module docstring); may be < 1."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool2d_output_size(input_size, kernel_size, stride=None, padding=0, dilation=1,
                       ceil_mode=False):
    """``(OH, OW)`` of a max or average pooling (PyTorch's rule, see the module docstring).

    Raises ValueError if no window fits (output size below 1).
    """
    H, W = _pair(input_size, "input_size", 1)
    kernel, stride, padding, dilation = _pool_args(kernel_size, stride, padding, dilation)
    return _output_size((H, W), kernel, stride, padding, dilation, _bool(ceil_mode, "ceil_mode"))


def _output_size(size, kernel, stride, padding, dilation, ceil_mode):
    out = tuple(_axis_size(size[a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode)
                for a in (0, 1))
    if min(out) < 1:
        span = tuple(dilation[a] * (kernel[a] - 1) + 1 for a in (0, 1))
        padded = (size[0] + 2 * padding[0], size[1] + 2 * padding[1])
        if span[0] > padded[0] or span[1] > padded[1]:
            spans = "" if dilation == (1, 1) else f" with dilation {dilation} (span {span})"
            raise ValueError(f"kernel {kernel}{spans} is larger than the padded input {padded} "
                             f"(input {tuple(size)}, padding {padding})")
        raise ValueError(f"output size {out} is too small for input {tuple(size)}, kernel "
                         f"{kernel}, stride {stride}, padding {padding}, dilation {dilation}")
    return out


def _kernel_stride(out, stride, size, padding):
    """The stride passed to a kernel: with a single window it is never used, so a huge value
    is replaced by one the kernel's index arithmetic can hold."""
    return tuple(min(stride[a], size[a] + 2 * padding[a]) if out[a] == 1 else stride[a]
                 for a in (0, 1))


def _check_windows_hit_input(size, out, kernel, stride, padding, dilation):
    """With dilation, a window starting in the padding can skip over the input altogether
    (PyTorch returns -inf and an index outside the plane): refuse such a configuration."""
    for a, axis in ((0, "height"), (1, "width")):
        i = 0
        while i < out[a] and i * stride[a] - padding[a] < 0:
            start = i * stride[a] - padding[a]
            first = -(start // dilation[a])  # first tap at or after 0: ceil(-start / d)
            if first >= kernel[a] or start + first * dilation[a] >= size[a]:
                raise ValueError(
                    f"max-pool window {i} along the {axis} holds no input element (kernel_size "
                    f"{kernel}, stride {stride}, padding {padding}, dilation {dilation}, input "
                    f"{tuple(size)}); reduce the padding or the dilation")
            i += 1


def _plan_max_pool2d(x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """Validated max-pool geometry for an input shape: (out, kernel, kernel_stride, padding,
    dilation)."""
    kernel, stride, padding, dilation = _pool_args(kernel_size, stride, padding, dilation)
    size = tuple(x_shape[2:])
    if size[0] * size[1] >= _LIMIT:
        raise ValueError(f"max-pool input planes must hold fewer than 2**31 elements, got "
                         f"{size}")
    out = _output_size(size, kernel, stride, padding, dilation, _bool(ceil_mode, "ceil_mode"))
    if dilation != (1, 1):
        _check_windows_hit_input(size, out, kernel, stride, padding, dilation)
    return out, kernel, _kernel_stride(out, stride, size, padding), padding, dilation


def _max_pool2d_into(x, y, argmax, kernel, stride, padding, dilation=(1, 1), scratch=None):
    """Kernel call for validated arguments and preallocated y, argmax (int64) of the output
    shape (which carries floor or ceil mode). ``scratch(n)`` gives a work array of n elements
    of x's dtype (a layer's workspace; default a new array)."""
    # threads by the taps read (overlapping windows read each element several times): a 3x3
    # stride-2 pool of 64x16x7x7 reads 147k taps from 50k elements and gains a second thread
    n_threads = _threads_for(max(x.size, y.size * kernel[0] * kernel[1]))
    size = _kernels.pool.maxpool2d_scratch(x.shape[2], x.shape[3], y.shape[2], y.shape[3],
                                           kernel[0], kernel[1], stride[0], stride[1],
                                           dilation[0], dilation[1], x.dtype == np.float64,
                                           n_threads)
    work = np.empty(size, x.dtype) if scratch is None else scratch(size)
    _kernels.pool.maxpool2d_forward(x, y, argmax, kernel[0], kernel[1], stride[0], stride[1],
                                    padding[0], padding[1], n_threads, dilation[0],
                                    dilation[1], work)
    return y, argmax


def _max_pool2d_values_into(x, y, kernel, stride, padding, dilation=(1, 1)):
    """y = the max-pool values without the argmax (eval mode), when the window is the plain
    2x2 / stride 2 one over whole windows (bitwise the values of ``_max_pool2d_into``); False
    (nothing written) for other windows."""
    if kernel != (2, 2) or stride != (2, 2) or padding != (0, 0) or dilation != (1, 1) or \
            2 * y.shape[2] > x.shape[2] or 2 * y.shape[3] > x.shape[3]:
        return False
    return _kernels.pool.maxpool2_values(x, y, _threads_for(x.size))


def _bind_max_pool2d_values(x_shape, y, kernel, stride, padding, dilation=(1, 1)):
    """f(x): ``_max_pool2d_values_into(x, y, ...)`` with y fixed, for a layer's repeated calls on
    inputs of shape ``x_shape`` (a bound kernel call, ``_kernels/_bound.pxi``); None where that
    function would return False (other windows: use ``_max_pool2d_into``)."""
    if kernel != (2, 2) or stride != (2, 2) or padding != (0, 0) or dilation != (1, 1):
        return None
    try:
        return _kernels.pool.BoundMaxPool2Values(tuple(x_shape), y,
                                                 _threads_for(int(np.prod(x_shape))))
    except ValueError:  # a shape the values kernel does not take
        return None


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """2-D max-pooling that also returns where each maximum came from (PyTorch's
    ``max_pool2d(..., return_indices=True)``).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        Implicit -inf padding, at most half the kernel size.
    dilation : int or (int, int)
        Spacing between the window's taps.
    ceil_mode : bool
        Round the output size up (a last, partial window that starts inside the input or its
        left padding).

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    argmax : ndarray of int64, shape (N, C, OH, OW)
        Flat index ``u*W + v`` of each maximum within its input plane ``x[n, c]``. Ties go to the
        first element in row-major order; a NaN is the maximum (the first NaN of the window).

    Shape
    -----
    ``OH = (H + 2*padding - dilation*(kernel_size-1) - 1) // stride + 1`` (rounded up in ceil
    mode, see :func:`pool2d_output_size`), the same for ``OW``.
    """
    x = _array(x, "x", 4)
    _nonempty(x.shape, "x")
    (OH, OW), kernel, stride, padding, dilation = _plan_max_pool2d(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    N, C = x.shape[:2]
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int64)
    return _max_pool2d_into(x, y, argmax, kernel, stride, padding, dilation)


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


def _max_pool2d_relu_backward_into(grad_y, argmax, x, grad_x):
    """Gradient through ReLU then max-pool, given the pool's input x, the ReLU's output (mask
    x.flat[argmax] > 0): bitwise ``relu_backward`` after ``_max_pool2d_backward_into``."""
    _kernels.pool.maxpool2d_relu_backward(grad_y, argmax, x, grad_x,
                                          _threads_for(grad_x.size))
    return grad_x


def _max_pool2d_backward_into(grad_y, argmax, grad_x):
    """Kernel call for validated arguments (argmax int64, in range) and preallocated grad_x."""
    _kernels.pool.maxpool2d_backward(grad_y, argmax, grad_x, _threads_for(grad_x.size))
    return grad_x


def max_pool2d_backward(grad_y, argmax, input_size):
    """Gradient of max_pool2d: scatter grad_y through the cached argmax.

    ``grad_x[n, c].flat[argmax[n, c, i, j]] += grad_y[n, c, i, j]``; overlapping windows add up.
    Dilation and ceil mode need no arguments here: they are in the argmax.

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


# --- average pooling ------------------------------------------------------------------------


def _avg_args(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    kernel, stride, padding, _ = _pool_args(kernel_size, stride, padding, 1, "avg-pool")
    ceil_mode = _bool(ceil_mode, "ceil_mode")
    count_include_pad = _bool(count_include_pad, "count_include_pad")
    if divisor_override is not None:
        divisor_override = _int(divisor_override, "divisor_override")
        if not 0 < divisor_override < _LIMIT:
            raise ValueError(f"divisor_override must be a positive int (or None), got "
                             f"{divisor_override}")
    return kernel, stride, padding, ceil_mode, count_include_pad, divisor_override


def _plan_avg_pool2d(size, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override):
    """Validated average-pool geometry: (out, kernel, kernel_stride, padding, include_pad,
    divisor (0: none))."""
    kernel, stride, padding, ceil_mode, include, divisor = _avg_args(
        kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    out = _output_size(tuple(size), kernel, stride, padding, (1, 1), ceil_mode)
    return (out, kernel, _kernel_stride(out, stride, size, padding), padding, include,
            divisor or 0)


def _avg_pool2d_into(x, y, plan):
    _, kernel, stride, padding, include, divisor = plan
    _kernels.pool.avgpool2d_forward(x, y, kernel[0], kernel[1], stride[0], stride[1],
                                    padding[0], padding[1], include, divisor, _threads_for(x.size))
    return y


def _bind_avg_pool2d(x_shape, y, plan):
    """f(x): ``_avg_pool2d_into(x, y, plan)`` with y fixed, for a layer's repeated calls on
    inputs of shape ``x_shape`` (a bound kernel call, ``_kernels/_bound.pxi``)."""
    _, kernel, stride, padding, include, divisor = plan
    return _kernels.pool.BoundAvgPool(tuple(x_shape), y, kernel[0], kernel[1], stride[0],
                                      stride[1], padding[0], padding[1], include, divisor,
                                      _threads_for(int(np.prod(x_shape))))


def _avg_pool2d_backward_into(grad_y, grad_x, plan, scratch=None):
    """Kernel call; ``scratch(n)`` gives a work array as for ``_max_pool2d_into``."""
    _, kernel, stride, padding, include, divisor = plan
    n_threads = _threads_for(grad_x.size)
    size = n_threads * (grad_y.shape[2] * grad_y.shape[3] + 1)
    work = np.empty(size, grad_x.dtype) if scratch is None else scratch(size)
    _kernels.pool.avgpool2d_backward(grad_y, grad_x, kernel[0], kernel[1], stride[0],
                                     stride[1], padding[0], padding[1], include, divisor,
                                     n_threads, work)
    return grad_x


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling (PyTorch's ``avg_pool2d``).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        Implicit zero padding, at most half the kernel size.
    ceil_mode : bool
        Round the output size up (see :func:`pool2d_output_size`).
    count_include_pad : bool
        Divide by the window's size within the padded input (True) or by its number of real
        input elements (False).
    divisor_override : int, optional
        Divide every window's sum by this instead.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
        ``y[n, c, i, j] = sum(window) / divisor``; a ceil-mode window running past the padded
        input is cut at its end, in the sum and in the divisor.

    Shape
    -----
    ``OH = (H + 2*padding - kernel_size) // stride + 1`` (rounded up in ceil mode), the same
    for ``OW``.
    """
    x = _array(x, "x", 4)
    _nonempty(x.shape, "x")
    plan = _plan_avg_pool2d(x.shape[2:], kernel_size, stride, padding, ceil_mode,
                            count_include_pad, divisor_override)
    y = np.empty(x.shape[:2] + plan[0], dtype=x.dtype)
    return _avg_pool2d_into(x, y, plan)


def avg_pool2d_backward(grad_y, input_size, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Gradient of :func:`avg_pool2d`: each ``grad_y[n, c, i, j]`` spread evenly over its
    window, ``grad_x[window] += grad_y / divisor`` (the forward's divisor).

    Parameters
    ----------
    grad_y : ndarray, shape (N, C, OH, OW)
    input_size : (int, int)
        ``(H, W)`` of the forward input.
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        As given to :func:`avg_pool2d`.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
    """
    grad_y = _array(grad_y, "grad_y", 4)
    H, W = _pair(input_size, "input_size", 1)
    plan = _plan_avg_pool2d((H, W), kernel_size, stride, padding, ceil_mode,
                            count_include_pad, divisor_override)
    N, C = grad_y.shape[:2]
    _check_grad(grad_y, (N, C) + plan[0])
    grad_x = np.empty((N, C, H, W), dtype=grad_y.dtype)
    return _avg_pool2d_backward_into(grad_y, grad_x, plan)


# --- adaptive average pooling ---------------------------------------------------------------


def adaptive_pool2d_output_size(input_size, output_size):
    """``(OH, OW)`` of an adaptive pooling: ``output_size`` as an int, a pair, or a pair with
    ``None`` entries that keep the input's size along that axis."""
    H, W = _pair(input_size, "input_size", 1)
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"output_size must be an int or a pair (h, w), got {output_size!r}")
        out = tuple(size if o is None else _int(o, "output_size")
                    for o, size in zip(output_size, (H, W)))
    elif output_size is None:
        raise TypeError("output_size must be an int or a pair (h, w), got None")
    else:
        o = _int(output_size, "output_size")
        out = (o, o)
    if min(out) < 1:
        raise ValueError(f"output_size must be >= 1, got {output_size!r}")
    if out[0] * out[1] >= _LIMIT:
        raise ValueError(f"output_size {out} is too large (at most 2**31 - 1 elements a plane)")
    return out


def _adaptive_avg_pool2d_into(x, y):
    _kernels.pool.adaptive_avgpool2d_forward(x, y, _threads_for(x.size))
    return y


def _bind_adaptive_avg_pool2d(x_shape, y):
    """f(x): ``_adaptive_avg_pool2d_into(x, y)`` with y fixed (a bound kernel call)."""
    return _kernels.pool.BoundAdaptiveAvgPool(tuple(x_shape), y,
                                              _threads_for(int(np.prod(x_shape))))


def _adaptive_avg_pool2d_backward_into(grad_y, grad_x):
    _kernels.pool.adaptive_avgpool2d_backward(grad_y, grad_x, _threads_for(grad_x.size))
    return grad_x


def adaptive_avg_pool2d(x, output_size):
    """2-D adaptive average pooling (PyTorch's ``adaptive_avg_pool2d``).

    Output ``(i, j)`` averages rows ``floor(i*H/OH) <= u < ceil((i+1)*H/OH)`` and the columns
    given by the same rule over ``W, OW``, for any output size (windows overlap when it does not
    divide the input, and repeat rows when it is larger). ``output_size=1`` is global average
    pooling.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    output_size : int or (int or None, int or None)
        ``None`` keeps the input's size along that axis.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
        ``sum(window) / window_height / window_width``.
    """
    x = _array(x, "x", 4)
    _nonempty(x.shape, "x")
    out = adaptive_pool2d_output_size(x.shape[2:], output_size)
    y = np.empty(x.shape[:2] + out, dtype=x.dtype)
    return _adaptive_avg_pool2d_into(x, y)


def adaptive_avg_pool2d_backward(grad_y, input_size):
    """Gradient of :func:`adaptive_avg_pool2d`: each ``grad_y[n, c, i, j]`` spread evenly over
    its window.

    Parameters
    ----------
    grad_y : ndarray, shape (N, C, OH, OW)
        Its spatial size is the forward's output size.
    input_size : (int, int)
        ``(H, W)`` of the forward input.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
    """
    grad_y = _array(grad_y, "grad_y", 4)
    H, W = _pair(input_size, "input_size", 1)
    _nonempty(grad_y.shape, "grad_y", 2)
    N, C = grad_y.shape[:2]
    adaptive_pool2d_output_size((H, W), grad_y.shape[2:])
    grad_x = np.empty((N, C, H, W), dtype=grad_y.dtype)
    return _adaptive_avg_pool2d_backward_into(grad_y, grad_x)
