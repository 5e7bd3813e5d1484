"""Losses (functional: ``fastcnn.functional.loss``; kernel: ``softmax_cross_entropy`` in
``_kernels/elementwise.pyx``; tests: ``tests/test_loss.py``)."""

import numpy as np

from .. import _kernels
from ..functional._validate import _array
from .module import Module, Parameter

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss(Module):
    """Softmax + cross-entropy, fused and stable for logits of any size, mean over the batch.

    ``L = -(1/N) sum_n log softmax(z)[n, t_n] + 0.5 * l2 * sum ||W||^2`` where the L2 sum runs over
    the weights (not biases) of the parameters passed to ``forward``.

    Parameters
    ----------
    l2 : float, default 0
        L2 regularisation strength.

    Methods
    -------
    forward(logits, labels, params=()) -> float
    backward() -> grad_logits, ``(softmax(z) - onehot(t)) / N``
    backward_l2()
        Add ``l2 * W`` to the ``.grad`` of each weight given to ``forward``; call it after the
        model's backward pass (which writes the gradients). Equivalent to SGD's
        ``weight_decay=l2`` applied to weights only.
    """

    def __init__(self, l2=0.0, *, dtype=np.float32):
        super().__init__(dtype=dtype)
        l2 = float(l2)
        if not np.isfinite(l2) or l2 < 0:
            raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
        self.l2 = l2

    def forward(self, logits, labels, params=()):
        z = _array(logits, "logits", 2)
        if z.shape[0] < 1 or z.shape[1] < 1:
            raise ValueError(f"logits must be (N, num_classes) with N, num_classes >= 1, got "
                             f"shape {z.shape}")
        labels = _labels(labels, z.shape)
        grad = np.empty_like(z)
        loss = float(_kernels.elementwise.softmax_cross_entropy(z, labels, grad))
        weights = [p for p in params if isinstance(p, Parameter) and p.is_weight]
        if self.l2 > 0 and weights:
            # einsum, not BLAS dot: no extra threads, no temporary
            loss += 0.5 * self.l2 * sum(float(np.einsum("i,i->", p.data.ravel(), p.data.ravel()))
                                        for p in weights)
        self._cache = (grad, weights)
        return loss

    def backward(self):
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        return self._cache[0]

    def backward_l2(self):
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward_l2 called before forward")
        if self.l2 > 0:
            for p in self._cache[1]:
                p.grad += self.l2 * p.data

    def extra_repr(self):
        return f"l2={self.l2}"


def _labels(labels, logits_shape):
    """Integer class labels in range, one per row of the logits."""
    labels = np.asarray(labels)
    N, K = logits_shape
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)):
            raise ValueError("labels contain NaN or inf")
        if not np.all(labels == np.round(labels)):
            raise ValueError("labels must be whole numbers (class indices)")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (N,):
        raise ValueError(f"labels must have shape ({N},) to match logits {logits_shape}, got "
                         f"{labels.shape}")
    if N and (labels.min() < 0 or labels.max() >= K):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise ValueError(f"label {bad} is out of range for {K} classes [0, {K})")
    return np.ascontiguousarray(labels, dtype=np.int64)
