"""Element-wise activations, softmax and Identity's neighbours (functional:
``fastcnn.functional.activation``; kernels: ``_kernels/elementwise.pyx``, ``_kernels/_vmath.h``;
twins: ``fastcnn._reference.activation``; tests: ``tests/test_activation.py``).

``inplace=True`` is accepted for PyTorch compatibility, but a fastcnn layer always writes a new
buffer (its input may be the previous layer's kept array, and the backward pass needs it).
"""

import numpy as np

from .. import _kernels
from .._threads import get_num_threads
from ..functional import activation as _f
from .module import Module

__all__ = ["ReLU", "LeakyReLU", "ELU", "GELU", "Tanh", "Sigmoid", "Softmax", "LogSoftmax"]


class _Elementwise(Module):
    """y = op(x) for any shape; keeps ``x`` (``_keep = "x"``) or ``y`` for the backward pass."""

    _op = _op_b = None
    _keep = "x"

    def _a(self):
        return 0.0

    def _forward(self, x, reuse):
        # With reused buffers, an input of the shape, dtype and layout of the last call runs
        # the kernel call bound to the output buffer then (no other check: 11.6 -> 8.2 us for
        # a ReLU of 64x16x7x7, where the kernel's work is about a copy's 7.8 us).
        fast = self._bound_call("forward", x) if reuse else None
        if fast is not None:
            y = fast[2]
            fast[3](x, self._a())
        else:
            shape = np.shape(x)
            x = self._input(x, ndim=None).reshape(shape)
            y = self._buffer("y", x.shape, reuse)
            bound = _f._bind_unary(self._op, y) if reuse else None
            if bound is None:
                _f._unary_into(self._op, x, y, self._a())
            else:
                self._work["forward"] = (x.shape, get_num_threads(), y, bound)
                bound(x, self._a())
        self._cache = x if self._keep == "x" else y
        return y

    def _bound_call(self, key, a):
        """The (shape, threads, output, bound kernel call) kept under ``key`` when the array
        ``a`` fits it (shape, dtype, C order) and the thread count is the same, else None."""
        fast = self._work.get(key)
        if fast is not None and type(a) is np.ndarray and a.shape == fast[0] and \
                a.dtype == self.dtype and a.flags.c_contiguous and fast[1] == get_num_threads():
            return fast
        return None

    def _bind(self, shape):
        y = np.empty(shape, dtype=self.dtype)
        op, unary, keep_x = self._op, _f._unary_into, self._keep == "x"
        bound = _f._bind_unary(op, y)

        def f(x):
            if bound is not None:
                bound(x, self._a())
            else:
                unary(op, x, y, self._a())
            self._cache = x if keep_x else y
            return y

        def links():  # chain links (see Sequential._chain), the op's parameter fixed
            a = self._a()
            return [bound.link(a)], [bound], [lambda: self._a() == a], []
        if bound is not None:
            f.links = links
        return f

    def _backward(self, grad_y, reuse):
        saved = self._cache
        fast = self._bound_call("backward", grad_y) if reuse and saved is not None else None
        if fast is not None and saved.shape == fast[0]:
            fast[3](grad_y, saved, self._a())  # (as _forward's bound call)
            return fast[2]
        grad_y = self._grad_input(grad_y, None if saved is None else saved.shape)
        grad_y = grad_y.reshape(saved.shape)
        grad_x = self._buffer("dx", saved.shape, reuse)
        bound = _f._bind_binary(self._op_b, grad_x) if reuse else None
        if bound is None:
            return _f._binary_into(self._op_b, grad_y, saved, grad_x, self._a())
        self._work["backward"] = (saved.shape, get_num_threads(), grad_x, bound)
        bound(grad_y, saved, self._a())
        return grad_x


class ReLU(_Elementwise):
    """``y = max(x, 0)``; keeps its output for the backward pass (``y > 0`` iff ``x > 0``).

    Parameters
    ----------
    inplace : bool, default False
        Accepted for PyTorch compatibility; a new buffer is always written.

    Shape
    -----
    Input: any shape. Output: the same shape.
    """

    _op, _op_b, _keep = _kernels.elementwise.RELU, _kernels.elementwise.RELU_B, "y"

    def __init__(self, inplace=False, *, dtype=np.float32):
        super().__init__(dtype=dtype)
        self.inplace = _f._inplace(inplace)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class LeakyReLU(_Elementwise):
    """``y = x if x > 0 else negative_slope * x``; keeps its input.

    Parameters
    ----------
    negative_slope : float, default 0.01
    inplace : bool, default False
        Accepted; a new buffer is always written.

    Shape
    -----
    Input: any shape. Output: the same shape.
    """

    _op, _op_b = _kernels.elementwise.LEAKY_RELU, _kernels.elementwise.LEAKY_RELU_B

    def __init__(self, negative_slope=0.01, inplace=False, *, dtype=np.float32):
        super().__init__(dtype=dtype)
        self.negative_slope = _f._real(negative_slope, "negative_slope")
        self.inplace = _f._inplace(inplace)

    def _a(self):
        return self.negative_slope

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class ELU(_Elementwise):
    """``y = x if x > 0 else alpha * (exp(x) - 1)``; keeps its input.

    Parameters
    ----------
    alpha : float, default 1.0
        Must be >= 0.
    inplace : bool, default False
        Accepted; a new buffer is always written.

    Shape
    -----
    Input: any shape. Output: the same shape.
    """

    _op, _op_b = _kernels.elementwise.ELU, _kernels.elementwise.ELU_B

    def __init__(self, alpha=1.0, inplace=False, *, dtype=np.float32):
        super().__init__(dtype=dtype)
        self.alpha = _f._alpha(alpha)
        self.inplace = _f._inplace(inplace)

    def _a(self):
        return self.alpha

    def extra_repr(self):
        return f"alpha={self.alpha}" + (", inplace=True" if self.inplace else "")


class GELU(_Elementwise):
    """``y = x * Phi(x)`` (exact, erf form) or its tanh approximation; keeps its input.

    Parameters
    ----------
    approximate : {'none', 'tanh'}, default 'none'

    Shape
    -----
    Input: any shape. Output: the same shape.
    """

    def __init__(self, approximate="none", *, dtype=np.float32):
        super().__init__(dtype=dtype)
        self.approximate = _f._approximate(approximate)
        ew = _kernels.elementwise
        self._op, self._op_b = ((ew.GELU, ew.GELU_B) if self.approximate == "none"
                                else (ew.GELU_TANH, ew.GELU_TANH_B))

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Tanh(_Elementwise):
    """``y = tanh(x)``; keeps its output (``dx = g * (1 - y**2)``).

    Shape
    -----
    Input: any shape. Output: the same shape.
    """

    _op, _op_b, _keep = _kernels.elementwise.TANH, _kernels.elementwise.TANH_B, "y"

    def __init__(self, *, dtype=np.float32):
        super().__init__(dtype=dtype)


class Sigmoid(_Elementwise):
    """``y = 1 / (1 + exp(-x))``; keeps its output (``dx = g * y * (1 - y)``).

    Shape
    -----
    Input: any shape. Output: the same shape.
    """

    _op, _op_b, _keep = _kernels.elementwise.SIGMOID, _kernels.elementwise.SIGMOID_B, "y"

    def __init__(self, *, dtype=np.float32):
        super().__init__(dtype=dtype)


class Softmax(Module):
    """Softmax along ``dim``; keeps its output.

    Parameters
    ----------
    dim : int or None
        None follows PyTorch's deprecated implicit choice (0 for 0-, 1- and 3-D input, else 1),
        with its warning.

    Shape
    -----
    Input: any shape. Output: the same shape.
    """

    _log = False

    def __init__(self, dim=None, *, dtype=np.float32):
        super().__init__(dtype=dtype)
        self.dim = None if dim is None else _f._int(dim, "dim")

    def _forward(self, x, reuse):
        shape = np.shape(x)
        x = self._input(x, ndim=None).reshape(shape)
        dim = _f._softmax_dim(x.ndim, self.dim, type(self).__name__)
        y = self._buffer("y", x.shape, reuse)
        _f._softmax_into(x, y, dim, self._log)
        self._cache = (y, dim)
        return y

    def _backward(self, grad_y, reuse):
        y, dim = self._cache if self._cache is not None else (None, None)
        grad_y = self._grad_input(grad_y, None if y is None else y.shape).reshape(y.shape)
        grad_x = self._buffer("dx", y.shape, reuse)
        return _f._softmax_backward_into(grad_y, y, grad_x, dim, self._log)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """Log-softmax along ``dim``, ``x - m - log(sum(exp(x - m)))``; keeps its output.

    Parameters
    ----------
    dim : int or None
        As ``Softmax``.

    Shape
    -----
    Input: any shape. Output: the same shape.
    """

    _log = True
