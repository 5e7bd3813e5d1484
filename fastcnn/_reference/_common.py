"""Small helpers of the references (assume valid input)."""

import numpy as np


def _pair(value):
    """Return ``value`` as a pair of ints (``3 -> (3, 3)``, ``(2, 1) -> (2, 1)``)."""
    if isinstance(value, (tuple, list)):
        a, b = value
        return int(a), int(b)
    return int(value), int(value)


def _out_size(size, kernel, stride, padding):
    """Number of window positions along one axis: ``(size + 2*padding - kernel) // stride + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


def _c(*arrays):
    """C-contiguous copies where needed, so that results do not depend on the input layout."""
    return tuple(None if a is None else np.ascontiguousarray(a) for a in arrays)


def _pad(x, ph, pw, value=0.0):
    """Pad the last two axes of ``x`` by ``ph`` rows and ``pw`` columns on each side."""
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="constant", constant_values=value)
