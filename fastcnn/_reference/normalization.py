"""Batch-norm reference (DESIGN.md section 3): plain NumPy in float64, the formulas term by term.

Arrays are ``(N, C, *spatial)`` (``(N, C)`` for BatchNorm1d on features); each channel is reduced
over every axis but 1. Inputs are assumed valid (``fastcnn.functional`` validates).
"""

import numpy as np

__all__ = ["batch_norm_ref", "batch_norm_backward_ref"]


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(v, ndim):
    return np.asarray(v, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm_ref(x, running_mean=None, running_var=None, weight=None, bias=None,
                   training=False, momentum=0.1, eps=1e-5):
    """``(y, mean, invstd)``: y = gamma * (x - mu) / sqrt(var + eps) + beta.

    Training: mu and the biased var come from the batch, and the running buffers (when given) are
    updated in place with ``running = (1-momentum)*running + momentum*batch`` (unbiased variance).
    Eval: mu and var are the running statistics. ``mean``/``invstd`` are the statistics used.
    """
    xd = np.asarray(x, dtype=np.float64)
    C = xd.shape[1]
    if training:
        mu = xd.mean(axis=_axes(xd))
        var = ((xd - _per_channel(mu, xd.ndim)) ** 2).mean(axis=_axes(xd))
        m = xd.size // C
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mu
            running_var[...] = (1 - momentum) * running_var + momentum * var * m / (m - 1)
    else:
        mu = np.asarray(running_mean, dtype=np.float64)
        var = np.asarray(running_var, dtype=np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    gamma = np.ones(C) if weight is None else weight
    beta = np.zeros(C) if bias is None else bias
    xhat = (xd - _per_channel(mu, xd.ndim)) * _per_channel(invstd, xd.ndim)
    y = _per_channel(gamma, xd.ndim) * xhat + _per_channel(beta, xd.ndim)
    return y.astype(np.asarray(x).dtype), mu, invstd


def batch_norm_backward_ref(grad_y, x, mean, invstd, weight=None, training=True):
    """``(grad_x, grad_weight, grad_bias)`` given the statistics the forward pass used.

    dbeta = sum g, dgamma = sum g*xhat; training: dx = gamma*invstd*(g - dbeta/m - xhat*dgamma/m);
    eval: dx = gamma*invstd*g.
    """
    g = np.asarray(grad_y, dtype=np.float64)
    xd = np.asarray(x, dtype=np.float64)
    C = xd.shape[1]
    m = xd.size // C if C else 0
    gamma = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    xhat = (xd - _per_channel(mean, xd.ndim)) * _per_channel(invstd, xd.ndim)
    dbeta = g.sum(axis=_axes(g))
    dgamma = (g * xhat).sum(axis=_axes(g))
    scale = _per_channel(gamma * invstd, xd.ndim)
    if training:
        dx = scale * (g - _per_channel(dbeta, xd.ndim) / m
                      - xhat * _per_channel(dgamma, xd.ndim) / m)
    else:
        dx = scale * g
    dtype = np.asarray(x).dtype
    return dx.astype(dtype), dgamma.astype(dtype), dbeta.astype(dtype)
