"""Loss references."""

import numpy as np

__all__ = ["softmax_cross_entropy_ref"]


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
