"""Normalisation layers (functional: ``fastcnn.functional.normalization``; kernels:
``_kernels/norm.pyx``; formulas: DESIGN.md section 3; tests: ``tests/test_normalization.py``)."""

import numpy as np

from ..functional.normalization import (
    _batch_norm_backward_into,
    _batch_norm_eval_into,
    _batch_norm_train_into,
    _check_training_size,
)
from .module import Module, _positive

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _BatchNorm(Module):
    """Shared by BatchNorm1d and BatchNorm2d (they differ only in the input ranks they take)."""

    _ndims = ()
    # gamma and beta are normalisation parameters: weight decay applies to neither.
    _no_decay = ("weight", "bias")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype=np.float32):
        super().__init__(dtype=dtype)
        self.num_features = _positive(num_features, "num_features")
        self.eps = float(eps)
        if not (self.eps >= 0 and np.isfinite(self.eps)):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        if momentum is not None:
            momentum = float(momentum)
            if not np.isfinite(momentum):
                raise ValueError(f"momentum must be a finite number or None, got {momentum!r}")
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        C = self.num_features
        if self.affine:
            self.params["weight"] = np.ones(C, dtype=self.dtype)
            self.params["bias"] = np.zeros(C, dtype=self.dtype)
            self.grads["weight"] = np.zeros(C, dtype=self.dtype)
            self.grads["bias"] = np.zeros(C, dtype=self.dtype)
        if self.track_running_stats:
            self.buffers["running_mean"] = np.zeros(C, dtype=self.dtype)
            self.buffers["running_var"] = np.ones(C, dtype=self.dtype)
            self.buffers["num_batches_tracked"] = np.array(0, dtype=np.int64)
        self._ones = np.ones(C, dtype=self.dtype)
        self._zeros = np.zeros(C, dtype=self.dtype)
        self._ones.flags.writeable = self._zeros.flags.writeable = False  # constants
        self._dweight = np.empty(C, dtype=self.dtype)  # gradients when not affine
        self._dbias = np.empty(C, dtype=self.dtype)
        # Synchronised batch norm (data-parallel training, fastcnn.distributed): an object
        # whose ``allgather(a)`` returns every rank's float64 array ``a`` stacked in rank order.
        # Set by ``Trainer(..., sync_bn=True)``; None (the default) uses this process's batch.
        self.stats_reducer = None
        self._sync_m = 0

    # -- helpers ------------------------------------------------------------------------------

    def _gamma_beta(self):
        if self.affine:
            return self.params["weight"], self.params["bias"]
        return self._ones, self._zeros

    def _count_batch(self):
        """num_batches_tracked += 1, in place (item assignment: ~5x cheaper than the in-place
        ufunc on a 0-d array, which cost ~2 us a step)."""
        buf = self.buffers["num_batches_tracked"]
        buf[()] = buf[()] + 1

    def _uses_batch_stats(self):
        """As PyTorch: batch statistics when training, or when there are no running ones."""
        return self.training or not self.track_running_stats

    def _running_stats(self):
        """``(mean, invstd)`` float64 from the running buffers (for eval mode and the fold; not
        to be modified). Recomputed only when the buffers' contents or eps changed (a bytes
        comparison, ~1 us: the conversions and the square root cost ~5-10 us a call, as much
        as the whole eval forward of a 64x16x7x7 batch should take)."""
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        key = (rm.tobytes(), rv.tobytes(), self.eps)
        cached = getattr(self, "_stats_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        mean = rm.astype(np.float64)
        invstd = 1.0 / np.sqrt(rv.astype(np.float64) + self.eps)
        self._stats_cache = (key, (mean, invstd))
        return mean, invstd

    def _check(self, x):
        x = self._input(x, ndim=None)
        if x.ndim not in self._ndims:
            want = " or ".join(f"{d}D" for d in self._ndims)
            raise ValueError(f"expected {want} input (got {x.ndim}D input)")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects "
                             f"{self.num_features} channels (axis 1), got x of shape {x.shape}")
        return x

    # -- forward / backward -------------------------------------------------------------------

    def _forward(self, x, reuse, relu=False):
        """The forward pass; with ``relu``, the ReLU of the output (Sequential's Conv-BN-ReLU
        step: one pass instead of this layer's and the ReLU's, bitwise the same)."""
        x = self._check(x)
        y = self._buffer("y", x.shape, reuse)
        gamma, beta = self._gamma_beta()
        C = self.num_features
        batch = self._uses_batch_stats()
        if self.training and self.stats_reducer is not None:
            if self.track_running_stats:
                self._count_batch()
            return self._forward_synced(x, y, gamma, beta, relu)
        if batch:
            _check_training_size(x.shape)
        if self.training and self.track_running_stats:
            self._count_batch()
        if x.size == 0:  # nothing to normalise; running statistics stay as they are (PyTorch)
            self._cache = (x, None, None, batch)
            return y
        if batch:
            mean, invstd = np.empty(C), np.empty(C)
            if self.training and self.track_running_stats:
                _batch_norm_train_into(x, gamma, beta, y, mean, invstd, self.eps,
                                       self.buffers["running_mean"], self.buffers["running_var"],
                                       self._factor(), relu=relu)
            else:
                _batch_norm_train_into(x, gamma, beta, y, mean, invstd, self.eps, relu=relu)
        else:
            mean, invstd = self._running_stats()
            _batch_norm_eval_into(x, mean, invstd, gamma, beta, y, relu)
        self._cache = (x, mean, invstd, batch)
        return y

    def _forward_synced(self, x, y, gamma, beta, relu=False):
        """Training forward with the statistics of the global batch (all ranks' shards): each
        rank's count, mean and sum of squared deviations (float64, two passes) are gathered
        and merged in rank order with Chan et al.'s pairwise update, so every rank normalises
        with the same numbers."""
        C = self.num_features
        x3 = x.reshape(x.shape[0], C, -1)
        m_r = x3.shape[0] * x3.shape[2]
        local = np.zeros((3, C))
        if m_r:
            mean_r = x3.sum(axis=(0, 2), dtype=np.float64) / m_r
            d = x3 - mean_r[:, None]
            local[0], local[1], local[2] = m_r, mean_r, np.einsum("ncs,ncs->c", d, d)
        rows = self.stats_reducer.allgather(local)
        m, mean, m2 = 0.0, np.zeros(C), np.zeros(C)
        for count, mu, sq in rows:
            if count[0] == 0:
                continue
            total = m + count[0]
            delta = mu - mean
            mean = mean + delta * (count[0] / total)
            m2 = m2 + sq + delta * delta * (m * count[0] / total)
            m = total
        if m <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got "
                             f"{int(m)} in the global batch")
        invstd = 1.0 / np.sqrt(m2 / m + self.eps)
        if x.size:
            _batch_norm_eval_into(x, mean, invstd, gamma, beta, y, relu)
        if self.track_running_stats:
            f = self._factor()
            for key, batch_value in (("running_mean", mean), ("running_var", m2 / (m - 1))):
                buf = self.buffers[key]
                buf[...] = f * batch_value + (1.0 - f) * buf.astype(np.float64)
        self._sync_m = m
        self._cache = (x, mean, invstd, "synced")
        return y

    def _backward_synced(self, grad_y, x, mean, invstd, gamma, grad_x, dweight, dbias):
        """Backward through the global statistics: the per-channel sums of ``g`` and
        ``g * xhat`` are gathered and added in rank order; ``dweight``/``dbias`` get this
        rank's own sums (the trainer sums parameter gradients across ranks)."""
        C = self.num_features
        g3 = grad_y.reshape(grad_y.shape[0], C, -1)
        x3 = x.reshape(x.shape[0], C, -1)
        xhat = (x3 - mean[:, None]) * invstd[:, None]
        local = np.stack([g3.sum(axis=(0, 2), dtype=np.float64),
                          np.einsum("ncs,ncs->c", g3.astype(np.float64), xhat)])
        rows = self.stats_reducer.allgather(local)
        total = rows[0].copy()
        for r in range(1, rows.shape[0]):
            total += rows[r]
        dbias[...] = local[0]
        dweight[...] = local[1]
        m = self._sync_m
        coef = gamma.astype(np.float64) * invstd
        grad_x.reshape(x3.shape)[...] = coef[:, None] * (
            g3 - (total[0] / m)[:, None] - xhat * (total[1] / m)[:, None])
        return grad_x

    def _factor(self):
        """PyTorch's running-average factor: momentum, or 1/num_batches_tracked when momentum
        is None (cumulative average). The kernel applies
        ``running = factor * batch + (1 - factor) * running`` with the unbiased variance."""
        if self.momentum is None:
            return 1.0 / float(self.buffers["num_batches_tracked"])
        return self.momentum

    def _backward(self, grad_y, reuse):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        x, mean, invstd, batch = self._cache
        grad_y = self._grad_input(grad_y, x.shape)
        grad_x = self._buffer("dx", x.shape, reuse)
        gamma, _ = self._gamma_beta()
        dweight = self.grads["weight"] if self.affine else self._dweight
        dbias = self.grads["bias"] if self.affine else self._dbias
        if batch == "synced":
            return self._backward_synced(grad_y, x, mean, invstd, gamma, grad_x, dweight, dbias)
        if mean is None:  # empty batch
            grad_x[...] = 0
            dweight[...] = 0
            dbias[...] = 0
        else:
            _batch_norm_backward_into(grad_y, x, mean, invstd, gamma, grad_x, dweight, dbias,
                                      batch)
        return grad_x

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over ``(N, H, W)`` for each channel, as ``torch.nn.BatchNorm2d``.

    ``y = weight * (x - mean) / sqrt(var + eps) + bias``. Training mode normalises with the batch
    statistics (biased variance) and updates ``running_mean`` / ``running_var`` (unbiased
    variance) by ``running = (1 - momentum) * running + momentum * batch`` (``momentum=None``:
    the cumulative average over ``num_batches_tracked`` batches); eval mode normalises with the
    running statistics. Without ``track_running_stats`` there are no buffers and the batch
    statistics are always used. The backward pass is exact through the batch statistics.

    Parameters
    ----------
    num_features : int
        C.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
    affine : bool, default True
        Learnable ``weight`` (ones) and ``bias`` (zeros); neither is weight-decayed.
    track_running_stats : bool, default True
        Buffers ``running_mean`` (zeros), ``running_var`` (ones), ``num_batches_tracked``
        (int64 0-d), carried by ``state_dict`` under PyTorch's names.
    dtype : float32 (default) or float64, keyword-only

    Shape
    -----
    Input and output ``(N, C, H, W)``.

    In a ``Sequential`` in eval mode, a ``Conv2d`` followed by ``BatchNorm2d`` runs as one
    convolution with folded weights (within float tolerance of the pair).

    Synchronised batch norm (data-parallel training): with ``stats_reducer`` set (the
    trainer's ``sync_bn=True`` sets it to its Communicator), training mode normalises with the
    mean and variance of the whole global batch: every rank's count, mean and sum of squared
    deviations (float64) are gathered and merged in rank order, the running statistics use the
    global count, and the backward pass gathers the per-channel sums of ``g`` and ``g * xhat``
    the same way. The parameter gradients stay this rank's part (the trainer sums them).
    """

    _ndims = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of ``(N, C)`` or ``(N, C, L)`` inputs, as ``torch.nn.BatchNorm1d``:
    statistics per feature/channel ``c`` over ``(N,)`` or ``(N, L)``. Arguments and semantics as
    ``BatchNorm2d``.

    Shape
    -----
    Input and output ``(N, C)`` or ``(N, C, L)``.
    """

    _ndims = (2, 3)
