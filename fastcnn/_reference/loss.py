"""Loss references."""

import numpy as np

__all__ = ["softmax_cross_entropy_ref", "cross_entropy_ref", "nll_loss_ref", "mse_loss_ref"]


def softmax_cross_entropy_ref(logits, labels, l2=0.0, weights=()):
    """Mean softmax cross-entropy with optional L2 penalty, and its gradient w.r.t. the logits.

    ``p = softmax(z - max(z))``,
    ``L = -(1/N) sum_n log p[n, t_n] + 0.5 * l2 * sum_W ||W||^2``,
    ``dz = (p - onehot(t)) / N``.

    Parameters
    ----------
    logits : ndarray, shape (N, K)
    labels : ndarray of int, shape (N,)
    l2 : float
        L2 coefficient; the term covers ``weights`` only (pass weights, not biases).
    weights : sequence of ndarray

    Returns
    -------
    loss : float
    grad_logits : ndarray, shape (N, K), dtype of ``logits``
        Gradient of the data term only; the L2 gradient ``l2 * W`` belongs to each weight.
    """
    N = logits.shape[0]
    labels = np.asarray(labels)
    z = logits - logits.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(z).sum(axis=1, keepdims=True))
    log_p = z - log_sum
    loss = -log_p[np.arange(N), labels].mean(dtype=np.float64)
    if l2:
        loss += 0.5 * l2 * sum(float(np.sum(np.square(w, dtype=np.float64))) for w in weights)
    grad = np.exp(log_p)
    grad[np.arange(N), labels] -= 1
    grad /= N
    return float(loss), grad.astype(logits.dtype, copy=False)


def _rows(x):
    """(M, C) rows with the class axis last, as float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        return x.reshape(1, -1)
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


def _unrows(g, shape):
    if len(shape) <= 2:
        return g.reshape(shape)
    return np.moveaxis(g.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],)), -1, 1)


def cross_entropy_ref(logits, target, weight=None, ignore_index=-100, reduction="mean",
                      label_smoothing=0.0):
    """PyTorch's cross-entropy written element by element, and its gradient w.r.t. the logits.

    Class-index targets: ``loss_i = -(1-eps) w[t_i] log p[i, t_i] - eps/C sum_c w[c] log p[i, c]``
    (0 where ``t_i == ignore_index``); 'mean' divides by ``sum_i w[t_i]`` over the kept targets.
    Probability targets (same shape as the logits): ``loss_i = -sum_c w[c] q[i, c] log p[i, c]``
    with ``q = (1-eps) target + eps/C``; 'mean' divides by the number of rows.

    Returns
    -------
    loss : float (array of the per-element losses for 'none')
    grad : ndarray of the logits' shape, the gradient of the sum (or mean) of the losses
    """
    shape = np.shape(logits)
    z = _rows(logits)
    M, C = z.shape
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    eps = float(label_smoothing)
    logp = np.empty_like(z)
    for i in range(M):
        m = z[i].max()
        logp[i] = z[i] - m - np.log(np.sum(np.exp(z[i] - m)))
    t = np.asarray(target)
    probs = t.dtype.kind == "f" and t.shape == shape
    q = np.zeros_like(z)
    if probs:
        q = ((1 - eps) * _rows(t) + eps / C) * w
        denom = float(M)
    else:
        t = t.reshape(-1).astype(np.int64)
        denom = np.float64(0.0)
        for i in range(M):
            if t[i] == ignore_index:
                continue
            q[i, t[i]] += (1 - eps) * w[t[i]]
            q[i] += eps / C * w
            denom += w[t[i]]
    per = np.array([-sum(q[i, c] * logp[i, c] for c in range(C) if q[i, c] != 0)
                    for i in range(M)])
    grad = np.exp(logp) * q.sum(axis=1, keepdims=True) - q
    if reduction == "none":
        lead = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
        return per.reshape(lead), _unrows(grad, shape).astype(np.asarray(logits).dtype)
    if reduction == "mean":  # all targets ignored: loss NaN, gradient 0 (as PyTorch)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (float(per.sum() / denom),
                    _unrows(grad / denom if denom else 0 * grad, shape).astype(
                        np.asarray(logits).dtype))
    return float(per.sum()), _unrows(grad, shape).astype(np.asarray(logits).dtype)


def nll_loss_ref(logp, target, weight=None, ignore_index=-100, reduction="mean"):
    """``loss_i = -w[t_i] logp[i, t_i]`` (0 for ignored targets) and its gradient."""
    shape = np.shape(logp)
    x = _rows(logp)
    M, C = x.shape
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    t = np.asarray(target).reshape(-1).astype(np.int64)
    per, grad, denom = np.zeros(M), np.zeros_like(x), np.float64(0.0)
    for i in range(M):
        if t[i] != ignore_index:
            per[i] = -w[t[i]] * x[i, t[i]]
            grad[i, t[i]] = -w[t[i]]
            denom += w[t[i]]
    dtype = np.asarray(logp).dtype
    if reduction == "none":
        lead = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
        return per.reshape(lead), _unrows(grad, shape).astype(dtype)
    if reduction == "mean":  # all targets ignored: loss NaN, gradient 0 (as PyTorch)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (float(per.sum() / denom),
                    _unrows(grad / denom if denom else 0 * grad, shape).astype(dtype))
    return float(per.sum()), _unrows(grad, shape).astype(dtype)


def mse_loss_ref(x, y, reduction="mean"):
    """``(x - y)^2`` reduced, and the gradient ``2 (x - y)`` (divided by the size for 'mean')."""
    d = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    dtype = np.asarray(x).dtype
    if reduction == "none":
        return d * d, (2 * d).astype(dtype)
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(np.mean(d * d)), (2 * d / d.size).astype(dtype)
    return float(np.sum(d * d)), (2 * d).astype(dtype)
