"""Losses with PyTorch's semantics, forward beside backward (kernels: ``softmax_cross_entropy``,
``softmax_forward`` in ``_kernels/elementwise.pyx``; twins: ``fastcnn._reference.loss``).

Shapes (as PyTorch): ``input`` is ``(N, C)``, ``(C,)`` or ``(N, C, d1, ..., dk)`` with the classes
on axis 1 (axis 0 for 1-D input); class-index ``target`` is ``(N,)``, ``()`` or
``(N, d1, ..., dk)`` (integers, or floats holding whole numbers); a probability ``target``
(cross-entropy only) has the shape of ``input``. ``reduction='none'`` returns the per-element
losses with the shape of a class-index target; ``'mean'`` and ``'sum'`` return a Python float.

The backward functions take ``grad_output``: a number for ``'mean'`` / ``'sum'`` (the gradient of
whatever the scalar loss feeds, 1.0 for the loss itself) or an array of the per-element losses'
shape for ``'none'``; they return the gradient with respect to ``input``.

Class weights and ``ignore_index`` follow PyTorch: a weighted ``'mean'`` divides by the sum of the
weights of the targets that are not ignored (NaN when every target is ignored); label smoothing
mixes the one-hot target with the uniform distribution, ``(1 - eps) * nll + eps/C * sum_c
w_c * (-log p_c)``, with the same denominator.
"""

import numbers

import numpy as np

from .. import _kernels
from ._validate import _array, _int
from .activation import _softmax_into

__all__ = ["cross_entropy", "cross_entropy_backward", "nll_loss", "nll_loss_backward",
           "mse_loss", "mse_loss_backward"]

_REDUCTIONS = ("mean", "sum", "none")


def _reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def _smoothing(label_smoothing):
    if isinstance(label_smoothing, (bool, np.bool_)) or not isinstance(label_smoothing,
                                                                       numbers.Real):
        raise TypeError(f"label_smoothing must be a number, got {label_smoothing!r}")
    value = float(label_smoothing)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return value


def _weight(weight, C, dtype):
    if weight is None:
        return None
    if hasattr(weight, "detach"):
        weight = weight.detach().cpu().numpy()
    weight = np.asarray(weight)
    if weight.dtype.kind not in "fiu":
        raise TypeError(f"weight must be a real array, got dtype {weight.dtype}")
    if weight.shape != (C,):
        raise ValueError(f"weight must have shape ({C},) (one weight per class), got "
                         f"{weight.shape}")
    return weight.astype(np.float64)


def _as_rows(input, name="input"):
    """(M, C) C-contiguous rows of ``input`` with the class axis last, and the per-element shape
    (the shape of a class-index target)."""
    if np.ndim(input) == 0:
        raise ValueError(f"{name} must have at least 1 dimension (the classes), got a 0-d array")
    x = _array(input, name)
    if x.ndim == 1:
        return x.reshape(1, -1), ()
    C = x.shape[1]
    if C < 1:
        raise ValueError(f"{name} must have at least one class, got shape {x.shape}")
    lead = (x.shape[0],) + x.shape[2:]
    rows = np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(-1, C) if x.ndim > 2 else x
    return rows, lead


def _from_rows(grad_rows, shape):
    """Inverse of ``_as_rows``: the gradient back in the layout of ``input``."""
    if len(shape) <= 2:
        return grad_rows.reshape(shape)
    g = grad_rows.reshape((shape[0],) + shape[2:] + (shape[1],))
    return np.ascontiguousarray(np.moveaxis(g, -1, 1))


def _class_target(target, lead, C, ignore_index):
    """Integer class indices of shape ``lead``, each in [0, C) or equal to ignore_index."""
    if hasattr(target, "detach"):
        target = target.detach().cpu().numpy()
    t = np.asarray(target)
    if t.dtype.kind == "f":
        if not np.all(np.isfinite(t)):
            raise ValueError("target contains NaN or inf")
        if not np.all(t == np.round(t)):
            raise ValueError("target must hold whole numbers (class indices) or, for "
                             "cross_entropy, probabilities of the shape of input")
        t = t.astype(np.int64)
    elif t.dtype.kind not in "iu":
        raise TypeError(f"target must be integer class indices, got dtype {t.dtype}")
    if t.shape != tuple(lead):
        raise ValueError(f"target must have shape {tuple(lead)} to match input, got {t.shape}")
    t = t.astype(np.int64).reshape(-1)
    bad = (t != ignore_index) & ((t < 0) | (t >= C))
    if bad.any():
        raise ValueError(f"target {t[bad][0]} is out of bounds for {C} classes [0, {C}) "
                         f"(ignore_index={ignore_index})")
    return t


def _grad_output(grad_output, reduction, lead, dtype=np.float64):
    if reduction == "none":
        g = np.asarray(1.0 if grad_output is None else grad_output, dtype=np.float64)
        if grad_output is not None and g.shape != tuple(lead):
            raise ValueError(f"grad_output must have shape {tuple(lead)} (the per-element "
                             f"losses) for reduction='none', got {g.shape}")
        return np.broadcast_to(g, lead).reshape(-1)
    g = 1.0 if grad_output is None else grad_output
    if np.ndim(g) != 0:
        raise ValueError(f"grad_output must be a number for reduction={reduction!r}, got an "
                         f"array of shape {np.shape(g)}")
    return float(g)


def _log_softmax_rows(rows):
    """log_softmax of each row, in float64 whatever the input dtype (the loss is a float64)."""
    rows = rows.astype(np.float64, copy=False)
    logp = np.empty_like(rows)
    if rows.size:
        _softmax_into(rows, logp, 1, True)
    return logp


class _CE:
    """Everything cross-entropy's forward and backward share (validated, rows layout)."""

    def __init__(self, input, target, weight, ignore_index, reduction, label_smoothing):
        self.reduction = _reduction(reduction)
        self.eps = _smoothing(label_smoothing)
        self.ignore_index = _int(ignore_index, "ignore_index")
        self.rows, self.lead = _as_rows(input)
        self.shape, self.dtype = np.shape(input), self.rows.dtype
        M, C = self.rows.shape
        self.C = C
        self.w = _weight(weight, C, self.dtype)
        t = target.detach().cpu().numpy() if hasattr(target, "detach") else np.asarray(target)
        self.probs = t.dtype.kind == "f" and t.shape == tuple(self.shape)
        if self.probs:
            if t.ndim > 2:
                t = np.moveaxis(t, 1, -1)
            self.t = np.asarray(t, dtype=np.float64).reshape(M, C)
            self.valid = np.ones(M, dtype=bool)
        else:
            self.t = _class_target(t, self.lead, C, self.ignore_index)
            self.valid = self.t != self.ignore_index
        self.logp = _log_softmax_rows(self.rows)

    def _q(self):
        """q[i, c]: the (weighted, smoothed) target distribution, ``loss_i = -sum_c q logp``."""
        M, C = self.rows.shape
        w = np.ones(C) if self.w is None else self.w
        if self.probs:
            t = self.t if self.eps == 0 else (1 - self.eps) * self.t + self.eps / C
            return t * w
        q = np.zeros((M, C))
        idx = np.nonzero(self.valid)[0]
        q[idx, self.t[idx]] = (1 - self.eps) * w[self.t[idx]]
        if self.eps:
            q[idx] += (self.eps / C) * w
        return q

    def _denominator(self):
        if self.reduction != "mean":
            return 1.0
        if self.probs:
            return float(self.rows.shape[0])
        w = np.ones(self.C) if self.w is None else self.w
        return float(np.sum(w[self.t[self.valid]]))

    def loss(self):
        q = self._q()
        with np.errstate(invalid="ignore"):
            per = -np.sum(np.where(q != 0, q * self.logp, 0.0), axis=1)
        if self.reduction == "none":
            return per.reshape(self.lead).astype(self.dtype)
        total = float(np.sum(per))
        if self.reduction == "sum":
            return total
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(np.float64(total) / self._denominator())

    def grad(self, grad_output):
        g = _grad_output(grad_output, self.reduction, self.lead)
        q = self._q()
        p = np.exp(self.logp)
        denominator = self._denominator()
        # every target ignored: the loss is NaN but the gradient 0, as in PyTorch
        scale = np.float64(g) / denominator if denominator != 0 else np.zeros_like(g)
        with np.errstate(invalid="ignore"):
            d = (p * q.sum(axis=1, keepdims=True) - q) * np.reshape(scale, (-1, 1))
        return _from_rows(d.astype(self.dtype), self.shape)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """Softmax cross-entropy: ``-sum_c q[c] * log_softmax(input)[c]`` per element, with ``q`` the
    one-hot target (weighted, optionally smoothed) or the given probabilities.

    Parameters
    ----------
    input : ndarray (N, C), (C,) or (N, C, d1, ..., dk), float32 or float64 (logits)
    target : class indices (N,), (), (N, d1, ..., dk) or probabilities of input's shape
    weight : array (C,), optional
    ignore_index : int, default -100
        Class-index targets equal to it add nothing and are left out of the mean.
    reduction : {'mean', 'sum', 'none'}
    label_smoothing : float in [0, 1]

    Shape
    -----
    See the module docstring.
    """
    return _CE(input, target, weight, ignore_index, reduction, label_smoothing).loss()


def cross_entropy_backward(grad_output, input, target, weight=None, ignore_index=-100,
                           reduction="mean", label_smoothing=0.0):
    """Gradient of ``cross_entropy`` with respect to ``input``: per element
    ``grad_output * (softmax(input) * sum(q) - q)`` (divided by the mean's denominator).

    Shape
    -----
    Returns an array of input's shape and dtype.
    """
    return _CE(input, target, weight, ignore_index, reduction, label_smoothing).grad(grad_output)


class _NLL:
    def __init__(self, input, target, weight, ignore_index, reduction):
        self.reduction = _reduction(reduction)
        self.ignore_index = _int(ignore_index, "ignore_index")
        self.rows, self.lead = _as_rows(input)
        self.shape, self.dtype = np.shape(input), self.rows.dtype
        self.C = self.rows.shape[1]
        self.w = _weight(weight, self.C, self.dtype)
        self.t = _class_target(target, self.lead, self.C, self.ignore_index)
        self.valid = self.t != self.ignore_index
        idx = np.nonzero(self.valid)[0]
        self.idx = idx
        w = np.ones(self.C) if self.w is None else self.w
        self.wt = np.zeros(self.t.shape[0])
        self.wt[idx] = w[self.t[idx]]

    def _denominator(self):
        return float(np.sum(self.wt)) if self.reduction == "mean" else 1.0

    def loss(self):
        per = np.zeros(self.t.shape[0])
        per[self.idx] = -self.wt[self.idx] * self.rows[self.idx, self.t[self.idx]]
        if self.reduction == "none":
            return per.reshape(self.lead).astype(self.dtype)
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(np.float64(np.sum(per)) / self._denominator())

    def grad(self, grad_output):
        g = np.broadcast_to(_grad_output(grad_output, self.reduction, self.lead),
                            self.t.shape)
        d = np.zeros(self.rows.shape)
        denominator = self._denominator()
        if denominator != 0:  # every target ignored: the loss is NaN, the gradient 0 (PyTorch)
            d[self.idx, self.t[self.idx]] = -self.wt[self.idx] * g[self.idx] / denominator
        return _from_rows(d.astype(self.dtype), self.shape)


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood ``-w[t] * input[t]`` per element, ``input`` holding
    log-probabilities (e.g. from ``log_softmax``); weighted mean as cross_entropy.

    Shape
    -----
    As ``cross_entropy`` with class-index targets.
    """
    return _NLL(input, target, weight, ignore_index, reduction).loss()


def nll_loss_backward(grad_output, input, target, weight=None, ignore_index=-100,
                      reduction="mean"):
    """Gradient of ``nll_loss``: ``-grad_output * w[t] / denominator`` at the target class of
    each element, 0 elsewhere and at ignored elements.

    Shape
    -----
    Returns an array of input's shape and dtype.
    """
    return _NLL(input, target, weight, ignore_index, reduction).grad(grad_output)


def _mse_args(input, target, reduction):
    reduction = _reduction(reduction)
    x = _array(input, "input")
    y = _array(target, "target", None, x.dtype)
    if x.shape != y.shape:
        # PyTorch broadcasts with a warning; a shape mismatch is nearly always a bug
        raise ValueError(f"target shape {y.shape} does not match input shape {x.shape}")
    return x.reshape(np.shape(input)), y.reshape(np.shape(input)), reduction


def mse_loss(input, target, reduction="mean"):
    """``(input - target)**2`` per element, then mean, sum or none.

    Shape
    -----
    ``input`` and ``target`` of one (any) shape; 'none' returns that shape.
    """
    x, y, reduction = _mse_args(input, target, reduction)
    d = x.astype(np.float64) - y
    if reduction == "none":
        return (d * d).astype(x.dtype)
    total = float(np.sum(d * d))
    if reduction == "sum":
        return total
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(total) / x.size)


def mse_loss_backward(grad_output, input, target, reduction="mean"):
    """``2 * (input - target) * grad_output`` (divided by the element count for 'mean').

    Shape
    -----
    Returns an array of input's shape and dtype.
    """
    x, y, reduction = _mse_args(input, target, reduction)
    g = _grad_output(grad_output, reduction, x.shape)
    if reduction == "none":
        g = np.reshape(g, x.shape)
    elif reduction == "mean":
        g = g / x.size if x.size else np.nan
    return (2.0 * (x.astype(np.float64) - y) * g).astype(x.dtype)


def _fused_cross_entropy(z, labels):
    """Mean softmax cross-entropy and its gradient through the fused (serial: the arrays are
    small) kernel: 2-D logits, labels in range, no weight, smoothing or ignored targets."""
    grad = np.empty_like(z)
    loss = float(_kernels.elementwise.softmax_cross_entropy(z, labels, grad))
    return loss, grad

