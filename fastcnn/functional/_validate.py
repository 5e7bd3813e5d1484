"""Argument checks shared by every functional module (private: the helpers assume nothing else)."""

import operator

import numpy as np

_FLOATS = (np.float32, np.float64)


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
