"""Dropout layers (functional: ``fastcnn.functional.dropout``; kernels: ``_kernels/dropout.pyx``;
tests: ``tests/test_dropout.py``).

A dropout layer's mask is a pure function of ``(seed, step, global sample index, element)``:

* ``seed`` (int): from ``seed=``, else derived once from a fixed default and the number of
  dropout layers created so far in the process (so two layers of one model differ);
  ``seed_dropout(model, seed)`` re-seeds every dropout layer of a model from one seed.
* ``step`` (int, starts at 0): +1 after every training-mode forward. Training state, kept by
  checkpoints; not a ``state_dict`` entry, so PyTorch's strict ``load_state_dict`` accepts the
  weights.
* ``sample_offset`` (int, default 0): the global index of the first sample of the batch this
  process sees (a shard of a distributed batch), so every shard draws the whole batch's mask.
"""

import itertools

import numpy as np

from ..functional._validate import _int
from ..functional.dropout import (
    _U64,
    _apply_channel_mask_into,
    _apply_mask_into,
    _channel_mask_into,
    _check_counter,
    _check_counters,
    _check_p,
    _check_sample_size,
    _dropout_into,
)
from .module import Module, _Unbound

__all__ = ["Dropout", "Dropout2d", "seed_dropout"]

_DEFAULT_SEED = 0x5EED_D120_0000  # the fixed default the seeds of unseeded layers derive from
_unseeded = itertools.count()


def _derive_seed(seed, index):
    """A 64-bit seed from (seed, index): two splitmix64 rounds (distinct for distinct index)."""
    from .._reference.dropout import splitmix64_ref

    with np.errstate(over="ignore"):
        z = splitmix64_ref(np.array([seed], dtype=np.uint64))
        z = splitmix64_ref(z ^ np.uint64(index))
    return int(z[0])


class _DropoutBase(Module):
    def __init__(self, p=0.5, inplace=False, *, seed=None, dtype=np.float32):
        super().__init__(dtype=dtype)
        self.p = _check_p(p)
        self.inplace = bool(inplace)
        if seed is None:
            seed = _derive_seed(_DEFAULT_SEED, next(_unseeded))
        self.seed = _check_counter(seed, "seed")
        self.step = 0
        self.sample_offset = 0

    def _prepare(self, x, min_ndim, reuse):
        """Validated input, the counters, and the output array (x itself when inplace).

        Inside a Sequential (``reuse``) the result goes to the layer's own buffer even when
        ``inplace``: the input is the previous layer's output, which its backward may need."""
        original = x
        x = self._input(x, ndim=None)
        if x.ndim < min_ndim:
            raise ValueError(f"{type(self).__name__} expects an input with at least {min_ndim} "
                             f"dimensions (N, ...), got shape {x.shape}")
        seed, step, offset = self.seed, self.step, self.sample_offset
        # (plain ints in range pass without the checks' calls: ~2 us a step at small maps)
        if not (type(seed) is int and type(step) is int and type(offset) is int
                and 0 <= seed < _U64 and 0 <= step < _U64 and 0 <= offset
                and offset + x.shape[0] <= _U64):
            seed, step, offset = _check_counters(seed, _int(step, "step"), offset, x.shape[0])
        if self.inplace and not reuse:
            if x is not original or not x.flags.writeable:
                raise ValueError(f"{type(self).__name__}(inplace=True) needs a writeable "
                                 f"C-contiguous {self.dtype} array")
            y = x
        else:
            y = None
        return x, y, (seed, step, offset)

    def _bind(self, shape):
        """Eval mode (Sequential's bound forward): the identity, with the cache the backward
        pass reads; no link of its own in a chain. Training mode: None (the plain path)."""
        if self.training or len(shape) < self._min_ndim:
            return None

        def f(x):
            if self.training:
                raise _Unbound
            self._cache = (x.shape, None)
            return x
        f.links = lambda: ([], [], [lambda: not self.training], [])
        return f

    def _backward_common(self, grad_y, reuse, apply):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        shape, mask = self._cache
        grad_y = self._grad_input(grad_y, shape)
        if mask is None:  # eval mode: identity
            return grad_y
        grad_x = self._buffer("dx", shape, reuse)
        return apply(grad_y, mask, grad_x, self.p)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


class Dropout(_DropoutBase):
    """Inverted dropout, as ``torch.nn.Dropout``: in training mode each element is zeroed with
    probability ``p`` and the rest are scaled by ``1 / (1 - p)``; identity in eval mode.

    Parameters
    ----------
    p : float in [0, 1], default 0.5
        p = 1 zeroes everything, p = 0 is the identity.
    inplace : bool, default False
        Write the result into the input (a writeable C-contiguous array of the layer's dtype).
    seed : int in [0, 2**64) or None, keyword-only
    dtype : float32 (default) or float64, keyword-only

    Attributes
    ----------
    seed, step, sample_offset : int
        The mask's counters (see the module docstring); ``step`` advances after every
        training-mode forward.

    Shape
    -----
    Input and output ``(N, ...)``; element ``j`` of sample ``n`` counts from the start of its
    sample (row-major).
    """

    _min_ndim = 1

    def _forward(self, x, reuse):
        x, y, (seed, step, offset) = self._prepare(x, 1, reuse)
        if not self.training:
            self._cache = (x.shape, None)
            return x
        _check_sample_size(x)
        if y is None:
            y = self._buffer("y", x.shape, reuse)
        mask = self._buffer("mask", x.shape, reuse, np.uint8)
        _dropout_into(x, y, mask, self.p, seed, step, offset)
        self.step += 1
        self._cache = (x.shape, mask)
        return y

    def _backward(self, grad_y, reuse):
        return self._backward_common(grad_y, reuse, _apply_mask_into)


class Dropout2d(_DropoutBase):
    """Channel dropout, as ``torch.nn.Dropout2d``: in training mode each channel ``x[n, c]`` is
    zeroed as a whole with probability ``p``, the others scaled by ``1 / (1 - p)``; identity in
    eval mode. Arguments and attributes as ``Dropout``.

    Shape
    -----
    Input and output ``(N, C, H, W)`` (any ``(N, C, ...)`` is accepted; the mask is ``(N, C)``).
    PyTorch's unbatched ``(C, H, W)`` reading of 3-D input is not supported: 3-D input is read as
    ``(N, C, L)``.
    """

    _min_ndim = 2

    def _forward(self, x, reuse):
        x, y, (seed, step, offset) = self._prepare(x, 2, reuse)
        if not self.training:
            self._cache = (x.shape, None)
            return x
        if x.shape[1] >= 2 ** 32:
            raise ValueError(f"Dropout2d supports at most 2**32 - 1 channels, got {x.shape[1]}")
        if y is None:
            y = self._buffer("y", x.shape, reuse)
        mask = self._buffer("mask", x.shape[:2], reuse, np.uint8)
        _channel_mask_into(mask, self.p, seed, step, offset)
        _apply_channel_mask_into(x, mask, y, self.p)
        self.step += 1
        self._cache = (x.shape, mask)
        return y

    def _backward(self, grad_y, reuse):
        return self._backward_common(grad_y, reuse, _apply_channel_mask_into)


def seed_dropout(model, seed):
    """Give every dropout layer of ``model`` (itself, and recursively its ``children()``) a
    distinct seed derived from ``(seed, position)``, the position counting dropout layers in
    depth-first order. Steps are left as they are. Returns the number of layers seeded."""
    seed = _check_counter(seed, "seed")
    count = 0

    def visit(module):
        nonlocal count
        if isinstance(module, _DropoutBase):
            module.seed = _derive_seed(seed, count)
            count += 1
        for _, child in module.children():
            visit(child)

    visit(model)
    return count
