"""Element-wise activations and softmax, forward beside backward (kernels:
``_kernels/elementwise.pyx`` and ``_kernels/_vmath.h``; twins: ``fastcnn._reference.activation``).

Every function takes an array of any shape (0-d and empty included), float32 or float64, and
returns a new array of the same shape and dtype (``inplace=True`` writes the result into ``input``
instead and returns it, as in PyTorch). Results are bitwise identical for any thread count.

What each backward takes (the layers keep the same array):

=====================  ==========================================================
``relu_backward``      the forward input (the output works too: same sign mask)
``leaky_relu_backward``  the forward input
``elu_backward``       the forward input
``gelu_backward``      the forward input
``tanh_backward``      the forward output (``dx = g * (1 - y**2)``: no tanh again)
``sigmoid_backward``   the forward output (``dx = g * y * (1 - y)``)
``softmax_backward`` / ``log_softmax_backward``  the forward output
=====================  ==========================================================

Special values follow PyTorch: NaN propagates through every forward pass and ``-0.0`` keeps its
sign; at ``x == 0`` the ReLU gradient is 0 and LeakyReLU/ELU take their negative branch. Two
deliberate differences at NaN inputs: ``relu_backward`` gives 0 there (``x > 0`` is false, as the
fused Conv-ReLU-MaxPool kernels do; PyTorch passes the gradient), and ``elu_backward`` gives NaN
(as PyTorch in float64; PyTorch's float32 kernel passes the gradient).
"""

import numbers
import warnings

import numpy as np

from .. import _kernels
from .._threads import get_num_threads
from ._validate import _FLOATS, _array, _check_grad, _int

__all__ = ["relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "elu", "elu_backward",
           "gelu", "gelu_backward", "tanh", "tanh_backward", "sigmoid", "sigmoid_backward",
           "softmax", "softmax_backward", "log_softmax", "log_softmax_backward"]

_GELU_APPROXIMATE = ("none", "tanh")


_SPECIALISED = {}


def _kernel(name, dtype):
    """The float32 or float64 specialisation of the fused kernel ``name`` (looked up once):
    calling it skips Cython's run-time dispatch over the fused types, which costs as much as the
    whole ReLU of a small feature map."""
    key = (name, dtype)
    fn = _SPECIALISED.get(key)
    if fn is None:
        fn = getattr(_kernels.elementwise, name)["float" if dtype == np.float32 else "double"]
        _SPECIALISED[key] = fn
    return fn


def _elementwise(a, name, dtype=None):
    """Validated C-contiguous array of the same shape as ``a`` (0-d stays 0-d)."""
    if (type(a) is np.ndarray and a.flags.c_contiguous and a.dtype.type in _FLOATS
            and (dtype is None or a.dtype == dtype)):
        return a  # the common case, without the calls below
    shape = np.shape(a)
    return _array(a, name, None, dtype).reshape(shape)


def _unary_into(op, x, y, a=0.0):
    """y = op(x) for validated same-shape C-contiguous arrays (y may be x)."""
    _kernel("unary", x.dtype)(op, x.reshape(-1), y.reshape(-1), a, get_num_threads())
    return y


def _bind_unary(op, y):
    """f(x, a): ``_unary_into(op, x, y, a)`` with y fixed, for a layer's repeated calls (a bound
    kernel call, ``_kernels/_bound.pxi``); None for an empty y."""
    if y.size == 0:
        return None
    return _kernels.elementwise.BoundUnary(op, y, get_num_threads())


def _bind_binary(op, grad_x):
    """f(grad_y, x, a): ``_binary_into(op, grad_y, x, grad_x, a)`` with grad_x fixed (a bound
    kernel call); None for an empty grad_x."""
    if grad_x.size == 0:
        return None
    return _kernels.elementwise.BoundBinary(op, grad_x, get_num_threads())


def _binary_into(op, grad_y, x, grad_x, a=0.0):
    _kernel("binary", x.dtype)(op, grad_y.reshape(-1), x.reshape(-1), grad_x.reshape(-1), a,
                               get_num_threads())
    return grad_x


def _forward(op, input, inplace, a=0.0):
    x = _elementwise(input, "input")
    if inplace:
        if not isinstance(input, np.ndarray) or not input.flags.writeable:
            raise ValueError("inplace=True needs a writable NumPy array as input")
        if np.shares_memory(x, input):  # x is a C-contiguous view of input: write in place
            _unary_into(op, x, x, a)
        else:
            np.copyto(input, _unary_into(op, x, np.empty_like(x), a))
        return input
    return _unary_into(op, x, np.empty_like(x), a)


def _backward(op, grad_y, saved, name, a=0.0):
    saved = _elementwise(saved, name)
    grad_y = _elementwise(grad_y, "grad_y", saved.dtype)
    _check_grad(grad_y, saved.shape)
    return _binary_into(op, grad_y, saved, np.empty_like(saved), a)


def _inplace(inplace):
    if not isinstance(inplace, (bool, np.bool_)):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    return bool(inplace)


def _real(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _alpha(alpha):
    alpha = _real(alpha, "alpha")
    if alpha < 0:
        # PyTorch accepts it for the out-of-place ELU; the backward pass from the output (the
        # cheaper form) would be ambiguous, and no network uses it: refused.
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    return alpha


def _approximate(approximate):
    if approximate not in _GELU_APPROXIMATE:
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return approximate


# --- ReLU family ----------------------------------------------------------------------------

def relu(input, inplace=False):
    """``y = max(x, 0)`` elementwise; NaN propagates, ``relu(-0.0) = -0.0`` (as PyTorch).

    Shape
    -----
    Any; the output has the shape and dtype of ``input``.
    """
    return _forward(_kernels.elementwise.RELU, input, _inplace(inplace))


def relu_backward(grad_y, x):
    """``grad_x = grad_y * (x > 0)``, where ``x`` is the forward input (or output); 0 where
    ``x`` is NaN (PyTorch passes the gradient there; see the module docstring).

    Shape
    -----
    ``grad_y`` and ``x`` of one shape; ``grad_x`` the same.
    """
    return _backward(_kernels.elementwise.RELU_B, grad_y, x, "x")


def leaky_relu(input, negative_slope=0.01, inplace=False):
    """``y = x if x > 0 else negative_slope * x``.

    Shape
    -----
    Any; the output has the shape and dtype of ``input``.
    """
    slope = _real(negative_slope, "negative_slope")
    return _forward(_kernels.elementwise.LEAKY_RELU, input, _inplace(inplace), slope)


def leaky_relu_backward(grad_y, x, negative_slope=0.01):
    """``grad_x = grad_y if x > 0 else negative_slope * grad_y``; ``x`` is the forward input.

    Shape
    -----
    ``grad_y`` and ``x`` of one shape; ``grad_x`` the same.
    """
    slope = _real(negative_slope, "negative_slope")
    return _backward(_kernels.elementwise.LEAKY_RELU_B, grad_y, x, "x", slope)


def elu(input, alpha=1.0, inplace=False):
    """``y = x if x > 0 else alpha * expm1(x)`` (accurate near 0); ``alpha >= 0``.

    Shape
    -----
    Any; the output has the shape and dtype of ``input``.
    """
    return _forward(_kernels.elementwise.ELU, input, _inplace(inplace), _alpha(alpha))


def elu_backward(grad_y, x, alpha=1.0):
    """``grad_x = grad_y if x > 0 else grad_y * alpha * exp(x)``; ``x`` is the forward input.

    Shape
    -----
    ``grad_y`` and ``x`` of one shape; ``grad_x`` the same.
    """
    return _backward(_kernels.elementwise.ELU_B, grad_y, x, "x", _alpha(alpha))


# --- smooth activations ---------------------------------------------------------------------

def gelu(input, approximate="none"):
    """``y = x * Phi(x)`` with Phi the standard normal CDF, ``Phi(x) = erfc(-x / sqrt 2) / 2``
    (exact; erfc keeps it accurate for negative x, where ``1 + erf`` would cancel).
    ``approximate='tanh'``: ``y = x/2 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, evaluated as
    ``x * sigmoid(2 u)``.

    Shape
    -----
    Any; the output has the shape and dtype of ``input``.
    """
    op = (_kernels.elementwise.GELU if _approximate(approximate) == "none"
          else _kernels.elementwise.GELU_TANH)
    return _forward(op, input, False)


def gelu_backward(grad_y, x, approximate="none"):
    """``grad_x = grad_y * (Phi(x) + x * phi(x))`` (phi the normal density), or the derivative
    of the tanh form; ``x`` is the forward input.

    Shape
    -----
    ``grad_y`` and ``x`` of one shape; ``grad_x`` the same.
    """
    op = (_kernels.elementwise.GELU_B if _approximate(approximate) == "none"
          else _kernels.elementwise.GELU_TANH_B)
    return _backward(op, grad_y, x, "x")


def tanh(input):
    """``y = tanh(x)``, as ``expm1(2|x|) / (expm1(2|x|) + 2)`` with the sign of x.

    Shape
    -----
    Any; the output has the shape and dtype of ``input``.
    """
    return _forward(_kernels.elementwise.TANH, input, False)


def tanh_backward(grad_y, y):
    """``grad_x = grad_y * (1 - y**2)`` where ``y`` is the forward **output**.

    Shape
    -----
    ``grad_y`` and ``y`` of one shape; ``grad_x`` the same.
    """
    return _backward(_kernels.elementwise.TANH_B, grad_y, y, "y")


def sigmoid(input):
    """``y = 1 / (1 + exp(-x))``, as ``exp(x) / (1 + exp(x))`` for x < 0 (no overflow, accurate
    tiny values).

    Shape
    -----
    Any; the output has the shape and dtype of ``input``.
    """
    return _forward(_kernels.elementwise.SIGMOID, input, False)


def sigmoid_backward(grad_y, y):
    """``grad_x = grad_y * y * (1 - y)`` where ``y`` is the forward **output**.

    Shape
    -----
    ``grad_y`` and ``y`` of one shape; ``grad_x`` the same.
    """
    return _backward(_kernels.elementwise.SIGMOID_B, grad_y, y, "y")


# --- softmax --------------------------------------------------------------------------------

def _softmax_dim(ndim, dim, name):
    """PyTorch's rule: dim=None means 0 for 0-, 1- and 3-D inputs, else 1 (with a warning)."""
    if dim is None:
        dim = 0 if ndim in (0, 1, 3) else 1
        warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the "
                      "call to include dim=X as an argument.", stacklevel=3)
        return dim
    dim = _int(dim, "dim")
    lo, hi = (-1, 0) if ndim == 0 else (-ndim, ndim - 1)
    if not lo <= dim <= hi:
        raise ValueError(f"dim {dim} is out of range for an input of {ndim} dimension(s) "
                         f"(expected in [{lo}, {hi}])")
    return dim % max(ndim, 1)


def _okI(shape, dim):
    """(O, K, I): the axes before ``dim``, ``dim`` itself, the axes after it."""
    if len(shape) == 0:
        return 1, 1, 1
    return (int(np.prod(shape[:dim], dtype=np.int64)), shape[dim],
            int(np.prod(shape[dim + 1:], dtype=np.int64)))


def _softmax_into(x, y, dim, log):
    """Kernel call for validated C-contiguous x and y of one shape, dim normalised."""
    shape = _okI(x.shape, dim)
    if x.size:
        _kernels.elementwise.softmax_forward(x.reshape(shape), y.reshape(shape), log,
                                             get_num_threads())
    return y


def _softmax_backward_into(grad_y, y, grad_x, dim, log):
    shape = _okI(y.shape, dim)
    if y.size:
        _kernels.elementwise.softmax_backward(grad_y.reshape(shape), y.reshape(shape),
                                              grad_x.reshape(shape), log, get_num_threads())
    return grad_x


def softmax(input, dim=None):
    """``y = exp(x - m) / sum(exp(x - m))`` along ``dim`` (``m`` the maximum along it; the sum in
    double). ``dim=None`` follows PyTorch's deprecated implicit choice (0 for 0-, 1- and 3-D
    input, else 1) and warns.

    Shape
    -----
    Any; the output has the shape and dtype of ``input``.
    """
    x = _elementwise(input, "input")
    dim = _softmax_dim(x.ndim, dim, "softmax")
    return _softmax_into(x, np.empty_like(x), dim, False)


def softmax_backward(grad_y, y, dim):
    """``grad_x = y * (grad_y - sum(grad_y * y, dim))``; ``y`` is the forward **output**.

    Shape
    -----
    ``grad_y`` and ``y`` of one shape; ``grad_x`` the same.
    """
    y = _elementwise(y, "y")
    grad_y = _elementwise(grad_y, "grad_y", y.dtype)
    _check_grad(grad_y, y.shape)
    dim = _softmax_dim(y.ndim, dim, "softmax")
    return _softmax_backward_into(grad_y, y, np.empty_like(y), dim, False)


def log_softmax(input, dim=None):
    """``y = (x - m) - log(sum(exp(x - m)))`` along ``dim``; ``dim=None`` as in ``softmax``.

    Shape
    -----
    Any; the output has the shape and dtype of ``input``.
    """
    x = _elementwise(input, "input")
    dim = _softmax_dim(x.ndim, dim, "log_softmax")
    return _softmax_into(x, np.empty_like(x), dim, True)


def log_softmax_backward(grad_y, y, dim):
    """``grad_x = grad_y - exp(y) * sum(grad_y, dim)``; ``y`` is the forward **output**.

    Shape
    -----
    ``grad_y`` and ``y`` of one shape; ``grad_x`` the same.
    """
    y = _elementwise(y, "y")
    grad_y = _elementwise(grad_y, "grad_y", y.dtype)
    _check_grad(grad_y, y.shape)
    dim = _softmax_dim(y.ndim, dim, "log_softmax")
    return _softmax_backward_into(grad_y, y, np.empty_like(y), dim, True)
