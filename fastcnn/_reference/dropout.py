"""Dropout reference: the counter-based mask of ``_kernels/dropout.pyx`` in vectorised NumPy
integer arithmetic (bitwise equal to the kernel; uint64/uint32 arithmetic wraps as in C).

    K    = splitmix64(splitmix64(splitmix64(seed) ^ step) ^ n)    n = sample_offset + sample
    h    = fmix32(fmix32(j ^ lo32(K)) ^ hi32(K))                   j = element index in the sample
    keep = (h >> 1) >= round(p * 2**31)
"""

import numpy as np

__all__ = ["dropout_mask_ref", "dropout2d_mask_ref", "dropout_ref", "dropout2d_ref",
           "splitmix64_ref", "dropout_threshold"]

_U64 = np.uint64
_U32 = np.uint32


def splitmix64_ref(z):
    """splitmix64's output function of ``z`` (uint64 array)."""
    z = np.asarray(z, dtype=_U64) + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def _fmix32(h):
    h = h ^ (h >> _U32(16))
    h = h * _U32(0x85EBCA6B)
    h = h ^ (h >> _U32(13))
    h = h * _U32(0xC2B2AE35)
    return h ^ (h >> _U32(16))


def dropout_threshold(p):
    """The 31-bit threshold: an element is kept when ``(h >> 1) >= threshold``."""
    return int(round(float(p) * 2.0 ** 31))


def _mask(p, N, D, seed, step, sample_offset):
    with np.errstate(over="ignore"):
        n = np.arange(N, dtype=_U64) + _U64(sample_offset)
        base = splitmix64_ref(splitmix64_ref(np.array([seed], dtype=_U64)) ^ _U64(step))
        key = splitmix64_ref(base ^ n)                                  # (N,)
        k0 = (key & _U64(0xFFFFFFFF)).astype(_U32)[:, None]
        k1 = (key >> _U64(32)).astype(_U32)[:, None]
        j = np.arange(D, dtype=_U32)[None, :]
        h = _fmix32(_fmix32(j ^ k0) ^ k1)
    return ((h >> _U32(1)) >= dropout_threshold(p)).astype(np.uint8)


def dropout_mask_ref(shape, p, seed=0, step=0, sample_offset=0):
    """The uint8 keep-mask of ``dropout`` for an input of ``shape`` (``(N, ...)``)."""
    N = shape[0]
    D = int(np.prod(shape[1:], dtype=np.int64))
    return _mask(p, N, D, seed, step, sample_offset).reshape(shape)


def dropout2d_mask_ref(shape, p, seed=0, step=0, sample_offset=0):
    """The ``(N, C)`` uint8 channel keep-mask of ``dropout2d`` for an input of ``shape``."""
    return _mask(p, shape[0], shape[1], seed, step, sample_offset)


def _scale(p, dtype):
    return dtype.type(0.0 if p == 1 else 1.0 / (1.0 - p))


def dropout_ref(x, p, seed=0, step=0, sample_offset=0):
    """``(y, mask)`` with ``y = x * mask * (1/(1-p))`` (the scale rounded to x's dtype)."""
    x = np.asarray(x)
    mask = dropout_mask_ref(x.shape, p, seed, step, sample_offset)
    return x * (mask * _scale(p, x.dtype)).astype(x.dtype), mask


def dropout2d_ref(x, p, seed=0, step=0, sample_offset=0):
    """``(y, mask)``: whole channels ``x[n, c]`` zeroed; ``mask`` is ``(N, C)``."""
    x = np.asarray(x)
    mask = dropout2d_mask_ref(x.shape, p, seed, step, sample_offset)
    m = (mask * _scale(p, x.dtype)).astype(x.dtype).reshape(mask.shape + (1,) * (x.ndim - 2))
    return x * m, mask
