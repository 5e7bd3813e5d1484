"""Dropout with counter-based masks, forward beside backward (kernels: ``_kernels/dropout.pyx``;
twin: ``fastcnn._reference.dropout``; formulas: DESIGN.md section 3).

The keep/drop decision of element ``j`` of sample ``n`` is a pure function of
``(seed, step, sample_offset + n, j)`` (splitmix64 sample key, murmur3 fmix32 element hash; see
the kernel's docstring), so a mask is bitwise the same for any thread count, and a shard of a
batch given ``sample_offset`` = the global index of its first sample draws the same mask as the
whole batch. Masks are kept compact as ``uint8`` (1 = kept) and returned with the output, so the
backward pass multiplies by the stored mask instead of regenerating it.
"""

from math import prod

import numpy as np

from .. import _kernels
from ._validate import _array, _int
from .pooling import _threads_for

__all__ = ["dropout", "dropout_backward", "dropout2d", "dropout2d_backward"]

_U64 = 2 ** 64


def _check_p(p):
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer,
                                                              np.floating)):
        raise TypeError(f"dropout probability must be a number, got {p!r}")
    p = float(p)
    if not 0.0 <= p <= 1.0:  # NaN fails too
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return p


def _threshold(p):
    """Kept when ``(h >> 1) >= threshold`` (h a uniform 32-bit hash): P(keep) = 1 - p."""
    return int(round(p * 2.0 ** 31))


def _scale(p):
    return 0.0 if p == 1.0 else 1.0 / (1.0 - p)


def _check_counter(value, name):
    value = _int(value, name)
    if not 0 <= value < _U64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return value


def _check_counters(seed, step, sample_offset, N):
    seed = _check_counter(seed, "seed")
    step = _check_counter(step, "step")
    sample_offset = _check_counter(sample_offset, "sample_offset")
    if sample_offset + N > _U64:
        raise ValueError(f"sample_offset + N must be <= 2**64, got {sample_offset} + {N}")
    return seed, step, sample_offset


def _dropout_into(x, y, mask, p, seed, step, sample_offset):
    """Element dropout of validated x (N, ...) into y (may be x) and mask (uint8, x's shape)."""
    # (reshape with -1 when not empty: math.prod of the shape costs ~1 us, a call in all ~20)
    shape = (x.shape[0], -1) if x.size else (x.shape[0], prod(x.shape[1:]))
    _kernels.dropout.dropout_forward(x.reshape(shape), y.reshape(shape), mask.reshape(shape),
                                     seed, step, sample_offset, _threshold(p), _scale(p),
                                     _threads_for(x.size))
    return y


def _apply_mask_into(x, mask, y, p):
    """y = x * mask / (1 - p) (0 where dropped; all 0 when p = 1); arrays validated."""
    _kernels.dropout.apply_mask(x.reshape(-1), mask.reshape(-1), y.reshape(-1), _scale(p),
                                _threads_for(x.size))
    return y


def _channel_mask_into(mask, p, seed, step, sample_offset):
    _kernels.dropout.channel_mask(mask, seed, step, sample_offset, _threshold(p))
    return mask


def _apply_channel_mask_into(x, mask, y, p):
    """y[n, c] = x[n, c] * mask[n, c] / (1 - p) for x (N, C, ...) and mask (N, C)."""
    R = x.shape[0] * x.shape[1]
    shape = (R, prod(x.shape[2:]))
    _kernels.dropout.apply_channel_mask(x.reshape(shape), mask.reshape(R), y.reshape(shape),
                                        _scale(p), _threads_for(x.size))
    return y


def _check_x(x, ndim):
    x = _array(x, "x")
    if x.ndim < ndim:
        raise ValueError(f"x must have at least {ndim} dimensions (N, ...), got shape {x.shape}")
    return x


def _check_sample_size(x):
    D = x.size // x.shape[0] if x.shape[0] else 0
    if D >= 2 ** 32:
        raise ValueError(f"dropout supports at most 2**32 - 1 elements per sample, got {D} "
                         f"(shape {x.shape})")


def dropout(x, p=0.5, training=True, seed=0, step=0, sample_offset=0):
    """Inverted dropout: ``(y, mask)`` with ``y = x * mask / (1 - p)``.

    ``mask[n, ...]`` (uint8, 1 = kept with probability 1 - p) is a pure function of
    ``(seed, step, sample_offset + n, element index within the sample)``. p = 1 zeroes every
    element (``y = x * 0``), p = 0 keeps all. With ``training=False``: ``(x, None)`` (identity).

    Parameters
    ----------
    x : array (N, ...) float32 or float64
    p : float in [0, 1]
    training : bool
    seed, step, sample_offset : int in [0, 2**64)
        The generator's key, the step counter, and the global index of ``x[0]`` in the batch.

    Shape
    -----
    x, y, mask: ``(N, ...)`` (any shape with a leading batch axis).
    """
    p = _check_p(p)
    x = _check_x(x, 1)
    if not training:
        return x, None
    seed, step, sample_offset = _check_counters(seed, step, sample_offset, x.shape[0])
    _check_sample_size(x)
    y = np.empty_like(x)
    mask = np.empty(x.shape, dtype=np.uint8)
    return _dropout_into(x, y, mask, p, seed, step, sample_offset), mask


def _check_mask(mask, shape):
    mask = np.ascontiguousarray(mask)
    if mask.dtype not in (np.uint8, np.bool_):
        raise TypeError(f"mask must be uint8 or bool, got dtype {mask.dtype}")
    if mask.shape != tuple(shape):
        raise ValueError(f"mask has shape {mask.shape}, expected {tuple(shape)}")
    return mask.view(np.uint8)


def dropout_backward(grad_y, mask, p):
    """``grad_x = grad_y * mask / (1 - p)`` (all 0 when p = 1); ``mask`` from ``dropout``.

    Shape
    -----
    grad_y, mask, grad_x: the shape of the forward input.
    """
    p = _check_p(p)
    grad_y = _array(grad_y, "grad_y")
    mask = _check_mask(mask, grad_y.shape)
    return _apply_mask_into(grad_y, mask, np.empty_like(grad_y), p)


def dropout2d(x, p=0.5, training=True, seed=0, step=0, sample_offset=0):
    """Channel dropout (``torch.nn.functional.dropout2d`` on ``(N, C, H, W)``): ``(y, mask)``
    with whole channels zeroed, ``y[n, c] = x[n, c] * mask[n, c] / (1 - p)``.

    ``mask[n, c]`` (uint8, ``(N, C)``) is a pure function of ``(seed, step, sample_offset + n,
    c)``. ``training=False`` returns ``(x, None)``.

    Shape
    -----
    x, y: ``(N, C, ...)`` (at least 2-D; PyTorch's unbatched 3-D form is not supported);
    mask: ``(N, C)``.
    """
    p = _check_p(p)
    x = _check_x(x, 2)
    if not training:
        return x, None
    seed, step, sample_offset = _check_counters(seed, step, sample_offset, x.shape[0])
    if x.shape[1] >= 2 ** 32:
        raise ValueError(f"dropout2d supports at most 2**32 - 1 channels, got {x.shape[1]}")
    mask = _channel_mask_into(np.empty(x.shape[:2], dtype=np.uint8), p, seed, step,
                              sample_offset)
    return _apply_channel_mask_into(x, mask, np.empty_like(x), p), mask


def dropout2d_backward(grad_y, mask, p):
    """``grad_x[n, c] = grad_y[n, c] * mask[n, c] / (1 - p)``; ``mask`` ``(N, C)`` from
    ``dropout2d``.

    Shape
    -----
    grad_y, grad_x: ``(N, C, ...)``; mask: ``(N, C)``.
    """
    p = _check_p(p)
    grad_y = _check_x(grad_y, 2)
    mask = _check_mask(mask, grad_y.shape[:2])
    return _apply_channel_mask_into(grad_y, mask, np.empty_like(grad_y), p)
