"""Snapshots of arrays, to reuse work derived from an array while it holds the same bytes: the
transposed weight of a matrix product and the Conv-BN fold (``nn.module``, ``nn.container``),
and packed convolution weights (``functional.conv._PackCache``)."""

import numpy as np

from .. import _kernels


class _Snapshot:
    """A copy of an array, to tell cheaply whether the array still holds the same bytes (NaN
    equals itself, -0.0 differs from 0.0: what matters is that a result computed from it is
    the same). The comparison is one memcmp over both arrays, with no allocation."""

    __slots__ = ("copy",)

    def __init__(self, a):
        self.copy = np.array(a, order="C", copy=True)

    def same(self, a):
        copy = self.copy
        return a.shape == copy.shape and a.dtype == copy.dtype and a.flags.c_contiguous and \
            _kernels.conv.same_bytes(a, copy)

    def update(self, a):
        """Take a new copy of `a` (of the snapshot's shape and dtype)."""
        np.copyto(self.copy, a)
