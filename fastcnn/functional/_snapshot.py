"""Snapshots of arrays, to reuse work derived from an array while it holds the same bytes: the
Conv-BN fold (``nn.container``) and packed convolution weights (``functional.conv._PackCache``).
The class is compiled (``_kernels.conv.Snapshot``): its checks run several times per layer
call."""

from .. import _kernels


def _Snapshot(a):  # noqa: N802 (a class in all but name: the kernels' build picks it)
    """A snapshot of `a`: ``same(a)``, ``update(a)``, ``copy`` (see ``_kernels.conv.Snapshot``)."""
    return _kernels.conv.Snapshot(a)


def _frozen(a):
    """Whether `a` cannot be written without first being made writeable again (see
    ``_kernels.conv.frozen``)."""
    return _kernels.conv.frozen(a)
