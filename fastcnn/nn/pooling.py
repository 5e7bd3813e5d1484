"""Pooling layers (functional: ``fastcnn.functional.pooling``; kernels: ``_kernels/pool.pyx``;
formulas: DESIGN.md section 3; tests: ``tests/test_pooling.py``).

Pooling has no multiply-adds: ``macs`` is 0 for every layer here (the comparisons and additions
are not counted).
"""

import numpy as np

from ..functional.pooling import (
    _adaptive_avg_pool2d_backward_into,
    _adaptive_avg_pool2d_into,
    _avg_args,
    _avg_pool2d_backward_into,
    _avg_pool2d_into,
    _bind_adaptive_avg_pool2d,
    _bind_avg_pool2d,
    _bind_max_pool2d_values,
    _bool,
    _max_pool2d_backward_into,
    _max_pool2d_into,
    _max_pool2d_relu_backward_into,
    _max_pool2d_values_into,
    _plan_avg_pool2d,
    _plan_max_pool2d,
    _pool_args,
    adaptive_pool2d_output_size,
)
from .module import Module

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]


def _shown(value):
    """An argument as PyTorch's repr shows it: as given (a list as a tuple)."""
    return tuple(value) if isinstance(value, (list, np.ndarray)) else value


class _Pool(Module):
    """Shared by the pooling layers: the geometry is validated once per input shape."""

    def _plan(self, shape):
        shape = tuple(shape)
        plan = self._plans.get(shape)
        if plan is None:
            if len(shape) != 4:
                raise ValueError(f"{type(self).__name__} expects a 4-D input, got shape {shape}")
            if min(shape[1:]) < 1:
                raise ValueError(f"{type(self).__name__} got an input with an empty dimension: "
                                 f"shape {shape}")
            plan = self._make_plan(shape)
            if len(self._plans) > 16:
                self._plans.clear()
            self._plans[shape] = plan
        return plan

    def output_shape(self, input_shape):
        """``(N, C, OH, OW)`` for an input of ``input_shape``; ValueError if it does not fit."""
        return tuple(input_shape[:2]) + tuple(self._plan(input_shape)[0])

    def macs(self, input_shape):
        """0: pooling has no multiply-adds."""
        return 0

    def _bind_kernel(self, shape, bind, cache):
        """The eval forward bound to inputs of ``shape`` (see Sequential): ``bind(y, plan)``
        makes the kernel call writing y, ``cache(x, plan)`` what ``_forward`` would keep; None
        for an empty input or output."""
        if len(shape) != 4 or min(shape) < 1:
            return None
        plan = self._plan(shape)
        y = np.empty(tuple(shape[:2]) + tuple(plan[0]), dtype=self.dtype)
        if y.size == 0:
            return None
        bound = bind(y, plan)

        def f(x):  # (eval mode: as _forward)
            bound(x)
            self._cache = cache(x, plan)
            return y
        f.links = lambda: ([bound.link()], [bound], [], [])  # chain links (Sequential._chain)
        return f


class MaxPool2d(_Pool):
    """2-D max-pooling (PyTorch's ``nn.MaxPool2d``); the forward pass caches the argmax that the
    backward pass scatters through.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional (default: kernel_size)
    padding : int or (int, int), default 0 (implicit -inf, at most half the kernel)
    dilation : int or (int, int), default 1
    return_indices : bool, default False
        Only False: a layer returns one array. ``fastcnn.functional.max_pool2d`` returns the
        indices (always), and ``indices`` holds those of the last forward pass.
    ceil_mode : bool, default False
        Round the output size up (the last window starts inside the input or left padding).
    dtype : float32 (default) or float64, keyword-only

    Shape
    -----
    Input ``(N, C, H, W)``, output ``(N, C, OH, OW)`` with
    ``OH = (H + 2*padding - dilation*(kernel_size-1) - 1) // stride + 1`` (rounded up in ceil
    mode), the same for ``OW``.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False, *, dtype=np.float32):
        super().__init__(dtype=dtype)
        self.kernel_size, self.stride, self.padding, self.dilation = _pool_args(
            kernel_size, stride, padding, dilation)
        self.ceil_mode = _bool(ceil_mode, "ceil_mode")
        if _bool(return_indices, "return_indices"):
            raise NotImplementedError(
                "MaxPool2d(return_indices=True) is not supported: a layer returns one array. "
                "Use fastcnn.functional.max_pool2d, which returns (y, argmax), or read the "
                "layer's `indices` after forward")
        self.return_indices = False
        self._plans = {}

    def _make_plan(self, shape):
        return _plan_max_pool2d(shape, self.kernel_size, self.stride, self.padding,
                                self.dilation, self.ceil_mode)

    @property
    def indices(self):
        """The argmax of the last forward pass (flat ``u*W + v`` per plane), or None."""
        return None if self._cache is None else self._argmax(reuse=False)

    def _argmax(self, reuse):
        """The argmax of the last forward pass. In a Sequential's eval forward a 2x2 / stride 2
        pool computes the values only (the argmax costs as many bytes again) and keeps its
        input, the previous layer's work array: the argmax is then computed from it when asked
        for (``indices``, or a backward pass in eval mode, before the next forward)."""
        x_shape, argmax, x = self._cache
        if argmax is None:
            out, kernel, stride, padding, dilation = self._plan(x_shape)
            argmax = self._buffer("argmax", tuple(x_shape[:2]) + out, reuse, np.int64)
            y = np.empty(argmax.shape, dtype=self.dtype)
            _max_pool2d_into(x, y, argmax, kernel, stride, padding, dilation, self._scratch)
            self._cache = (x_shape, argmax, None)
        return argmax

    def _forward(self, x, reuse):
        x = self._input(x)
        out, kernel, stride, padding, dilation = self._plan(x.shape)
        shape = x.shape[:2] + out
        y = self._buffer("y", shape, reuse)
        # (in a Sequential's eval forward only: a layer called alone keeps its argmax, so
        # that ``indices`` never depends on the caller's array after the call)
        if reuse and not self.training and _max_pool2d_values_into(x, y, kernel, stride,
                                                                   padding, dilation):
            self._cache = (x.shape, None, x)
            return y
        argmax = self._buffer("argmax", shape, reuse, np.int64)
        _max_pool2d_into(x, y, argmax, kernel, stride, padding, dilation, self._scratch)
        self._cache = (x.shape, argmax, None)
        return y

    def _bind(self, shape):
        if len(shape) != 4 or min(shape) < 1:
            return None
        out, kernel, stride, padding, dilation = self._plan(shape)
        y = np.empty(tuple(shape[:2]) + out, dtype=self.dtype)
        argmax = np.empty(y.shape, dtype=np.int64)
        values = _bind_max_pool2d_values(shape, y, kernel, stride, padding, dilation)

        def f(x):  # (eval mode: as _forward)
            if values is not None:
                values(x)
                self._cache = (x.shape, None, x)
            elif _max_pool2d_values_into(x, y, kernel, stride, padding, dilation):
                self._cache = (x.shape, None, x)
            else:
                _max_pool2d_into(x, y, argmax, kernel, stride, padding, dilation, self._scratch)
                self._cache = (x.shape, argmax, None)
            return y
        if values is not None:  # chain links (see Sequential._chain)
            f.links = lambda: ([values.link()], [values], [], [])
        return f

    def _backward(self, grad_y, reuse, relu_output=None):
        """The gradient of the input; with ``relu_output``, the pool's input as a ReLU's output,
        the gradient of the ReLU's input (Sequential's ReLU-MaxPool steps: one pass instead of
        the pool's and the ReLU's, bitwise the same)."""
        x_shape, argmax = (self._cache[0], self._argmax(reuse)) if self._cache is not None \
            else (None, None)
        grad_y = self._grad_input(grad_y, None if argmax is None else argmax.shape)
        grad_x = self._buffer("dx", x_shape, reuse)
        if relu_output is not None:
            return _max_pool2d_relu_backward_into(grad_y, argmax, relu_output, grad_x)
        return _max_pool2d_backward_into(grad_y, argmax, grad_x)

    def extra_repr(self):
        a = self.init_args()
        stride = a["stride"] if a.get("stride") is not None else a["kernel_size"]
        return (f"kernel_size={_shown(a['kernel_size'])}, stride={_shown(stride)}, "
                f"padding={_shown(a['padding'])}, dilation={_shown(a['dilation'])}, "
                f"ceil_mode={self.ceil_mode}")


class AvgPool2d(_Pool):
    """2-D average pooling (PyTorch's ``nn.AvgPool2d``).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional (default: kernel_size)
    padding : int or (int, int), default 0 (implicit zeros, at most half the kernel)
    ceil_mode : bool, default False
    count_include_pad : bool, default True
        Divide by the window's size within the padded input (True) or by its number of real
        input elements (False).
    divisor_override : int, optional
        Divide every window's sum by this instead.
    dtype : float32 (default) or float64, keyword-only

    Shape
    -----
    Input ``(N, C, H, W)``, output ``(N, C, OH, OW)`` with
    ``OH = (H + 2*padding - kernel_size) // stride + 1`` (rounded up in ceil mode).
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None, *, dtype=np.float32):
        super().__init__(dtype=dtype)
        (self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
         self.divisor_override) = _avg_args(kernel_size, stride, padding, ceil_mode,
                                            count_include_pad, divisor_override)
        self._plans = {}

    def _make_plan(self, shape):
        return _plan_avg_pool2d(shape[2:], self.kernel_size, self.stride, self.padding,
                                self.ceil_mode, self.count_include_pad, self.divisor_override)

    def _forward(self, x, reuse):
        x = self._input(x)
        plan = self._plan(x.shape)
        y = self._buffer("y", x.shape[:2] + plan[0], reuse)
        _avg_pool2d_into(x, y, plan)
        self._cache = (x.shape, plan)
        return y

    def _bind(self, shape):
        return self._bind_kernel(shape, lambda y, plan: _bind_avg_pool2d(shape, y, plan),
                                 lambda x, plan: (x.shape, plan))

    def _backward(self, grad_y, reuse):
        x_shape, plan = self._cache if self._cache is not None else (None, None)
        grad_y = self._grad_input(grad_y, None if plan is None else x_shape[:2] + plan[0])
        grad_x = self._buffer("dx", x_shape, reuse)
        return _avg_pool2d_backward_into(grad_y, grad_x, plan, self._scratch)

    def extra_repr(self):
        a = self.init_args()
        stride = a["stride"] if a.get("stride") is not None else a["kernel_size"]
        return (f"kernel_size={_shown(a['kernel_size'])}, stride={_shown(stride)}, "
                f"padding={_shown(a['padding'])}")


class AdaptiveAvgPool2d(_Pool):
    """2-D adaptive average pooling (PyTorch's ``nn.AdaptiveAvgPool2d``): output ``(i, j)``
    averages rows ``floor(i*H/OH) <= u < ceil((i+1)*H/OH)`` and the columns given by the same
    rule, for any output size. ``AdaptiveAvgPool2d(1)`` is global average pooling.

    Parameters
    ----------
    output_size : int or (int or None, int or None)
        ``None`` keeps the input's size along that axis.
    dtype : float32 (default) or float64, keyword-only

    Shape
    -----
    Input ``(N, C, H, W)``, output ``(N, C, OH, OW)`` = ``output_size`` (None entries: H, W).
    """

    def __init__(self, output_size, *, dtype=np.float32):
        super().__init__(dtype=dtype)
        adaptive_pool2d_output_size((1, 1), output_size)  # validates the values
        self.output_size = _shown(output_size)
        self._plans = {}

    def _make_plan(self, shape):
        return (adaptive_pool2d_output_size(shape[2:], self.output_size),)

    def _forward(self, x, reuse):
        x = self._input(x)
        out = self._plan(x.shape)[0]
        y = self._buffer("y", x.shape[:2] + out, reuse)
        _adaptive_avg_pool2d_into(x, y)
        self._cache = x.shape
        return y

    def _bind(self, shape):
        return self._bind_kernel(shape, lambda y, plan: _bind_adaptive_avg_pool2d(shape, y),
                                 lambda x, plan: x.shape)

    def _backward(self, grad_y, reuse):
        x_shape = self._cache
        grad_y = self._grad_input(grad_y, None if x_shape is None else
                                  x_shape[:2] + self._plan(x_shape)[0])
        grad_x = self._buffer("dx", x_shape, reuse)
        return _adaptive_avg_pool2d_backward_into(grad_y, grad_x)

    def extra_repr(self):
        return f"output_size={self.output_size}"
