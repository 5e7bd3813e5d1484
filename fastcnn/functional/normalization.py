"""Batch normalisation, forward beside backward (kernels: ``_kernels/norm.pyx``; twin:
``fastcnn._reference.normalization``; formulas: DESIGN.md section 3).

Shapes: ``x`` is ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``; every per-channel array is
``(C,)``. Each channel is reduced over all axes but 1, ``m = x.size // C`` values.
"""

from math import prod

import numpy as np

from .. import _kernels
from ._validate import _array, _check_grad
from .pooling import _threads_for

__all__ = ["batch_norm", "batch_norm_stats", "batch_norm_backward"]


def _view3(a):
    """``(N, C, S)`` view of a C-contiguous ``(N, C, ...)`` array. Per-call cost matters here
    (a 64x16x7x7 batch norm takes ~20 us in all): np.prod cost ~5 us, math.prod of the shape
    ~1 us, a reshape with -1 (possible when the array is not empty) half that."""
    shape = a.shape
    if len(shape) == 3:
        return a
    if a.size:
        return a.reshape(shape[0], shape[1], -1)
    return a.reshape(shape[0], shape[1], prod(shape[2:]))


def _check_input(x, name="x"):
    x = _array(x, name)
    if x.ndim < 2:
        raise ValueError(f"{name} must be (N, C, ...) with at least 2 dimensions, got shape "
                         f"{x.shape}")
    return x


def _channel_vector(v, name, C, dtype, default):
    """A ``(C,)`` array of ``dtype`` (``default`` filled when v is None)."""
    if v is None:
        return np.full(C, default, dtype=dtype)
    v = _array(v, name, 1)
    if v.shape[0] != C:
        raise ValueError(f"{name} should contain {C} elements (one per channel), not "
                         f"{v.shape[0]}")
    return np.ascontiguousarray(v, dtype=dtype)


def _check_eps(eps):
    eps = float(eps)
    if not eps >= 0 or not np.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    return eps


def _check_training_size(shape):
    if prod(shape) == shape[1] > 0:  # one value per channel
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{tuple(shape)}")


def _batch_norm_train_into(x, weight, bias, y, mean, invstd, eps, running_mean=None,
                           running_var=None, factor=0.0, relu=False):
    """Training forward into ``y``; batch mean and ``1/sqrt(var + eps)`` (float64) into
    mean/invstd; the running buffers (x's dtype, C-contiguous) updated with ``factor`` when
    given; with ``relu``, y is the ReLU of that (bitwise a ReLU pass after). Arguments already
    validated; ``x.size // C >= 1``."""
    update = running_mean is not None
    if not update:
        running_mean = running_var = weight  # not touched
    _kernels.norm.bn_forward_train(_view3(x), weight, bias, _view3(y), mean, invstd,
                                   running_mean, running_var, eps, factor, update,
                                   _threads_for(x.size), relu)
    return y


def _batch_norm_eval_into(x, mean, invstd, weight, bias, y, relu=False):
    """y = (x - mean) * weight * invstd + bias per channel (then its ReLU with ``relu``);
    arguments already validated."""
    _kernels.norm.bn_forward_eval(_view3(x), mean, invstd, weight, bias, _view3(y),
                                  _threads_for(x.size), relu)
    return y


def _batch_norm_backward_into(grad_y, x, mean, invstd, weight, grad_x, dweight, dbias, training):
    """Backward into grad_x, dweight and dbias (all x's dtype); arguments validated."""
    if x.size == 0:
        grad_x[...] = 0
        dweight[...] = 0
        dbias[...] = 0
        return grad_x
    _kernels.norm.bn_backward(_view3(x), _view3(grad_y), mean, invstd, weight, _view3(grad_x),
                              dweight, dbias, training, _threads_for(x.size))
    return grad_x


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalisation, as ``torch.nn.functional.batch_norm``.

    ``y = weight * (x - mu) / sqrt(var + eps) + bias`` per channel. With ``training=True``, mu
    and the biased var are the batch statistics and the running buffers (if not None) are updated
    in place: ``running = (1 - momentum) * running + momentum * batch``, with the unbiased
    variance ``var * m / (m - 1)``. With ``training=False`` the running statistics are used (both
    must be given).

    Parameters
    ----------
    x : array (N, C, ...) float32 or float64
    running_mean, running_var : (C,) float arrays or None
        Updated in place when training (they must then be writeable arrays).
    weight, bias : (C,) or None
        gamma and beta (ones and zeros when None).
    training : bool
    momentum : float
    eps : float

    Returns
    -------
    y : array of x's shape and dtype

    Shape
    -----
    x, y: ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``; per-channel arrays ``(C,)``.
    """
    x = _check_input(x)
    C = x.shape[1]
    eps = _check_eps(eps)
    w = _channel_vector(weight, "weight", C, x.dtype, 1.0)
    b = _channel_vector(bias, "bias", C, x.dtype, 0.0)
    for name, buf in (("running_mean", running_mean), ("running_var", running_var)):
        if buf is not None:
            if not isinstance(buf, np.ndarray) or buf.shape != (C,):
                raise ValueError(f"{name} should be an array of {C} elements, got "
                                 f"{getattr(buf, 'shape', buf)!r}")
            if training and not buf.flags.writeable:
                raise ValueError(f"{name} must be writeable: it is updated in place when "
                                 "training")
    y = np.empty_like(x)
    if training:
        _check_training_size(x.shape)
        momentum = float(momentum)
        if x.size == 0:
            return y
        if running_mean is None and running_var is None:
            _batch_norm_train_into(x, w, b, y, np.empty(C), np.empty(C), eps)
            return y
        # The kernel updates buffers of x's dtype; others (or a missing one) go through copies.
        rm = np.array(running_mean if running_mean is not None else np.zeros(C), dtype=x.dtype)
        rv = np.array(running_var if running_var is not None else np.ones(C), dtype=x.dtype)
        _batch_norm_train_into(x, w, b, y, np.empty(C), np.empty(C), eps, rm, rv, momentum)
        for buf, new in ((running_mean, rm), (running_var, rv)):
            if buf is not None:
                np.copyto(buf, new, casting="unsafe")
        return y
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var must be given when training=False")
    mean = np.asarray(running_mean, dtype=np.float64)
    invstd = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    if x.size:
        _batch_norm_eval_into(x, mean, invstd, w, b, y)
    return y


def batch_norm_stats(x, eps=1e-5):
    """Batch mean and inverse standard deviation per channel, ``(mean, invstd)``, float64
    ``(C,)``: ``invstd = 1 / sqrt(var + eps)`` with the biased variance (what the training forward
    normalises with, and what ``batch_norm_backward`` takes)."""
    x = _check_input(x)
    eps = _check_eps(eps)
    C = x.shape[1]
    if x.size == 0:
        raise ValueError(f"x has no values per channel: shape {x.shape}")
    mean, invstd = np.empty(C), np.empty(C)
    ones = np.ones(C, dtype=x.dtype)
    _batch_norm_train_into(x, ones, np.zeros(C, dtype=x.dtype), np.empty_like(x), mean, invstd,
                           eps)
    return mean, invstd


def batch_norm_backward(grad_y, x, mean, invstd, weight=None, training=True):
    """Gradients of ``batch_norm``: ``(grad_x, grad_weight, grad_bias)``.

    The forward pass is described by its input ``x`` and the per-channel statistics it normalised
    with: ``mean`` and ``invstd = 1 / sqrt(var + eps)`` (training: the batch statistics, from
    ``batch_norm_stats``; eval: ``running_mean`` and ``1 / sqrt(running_var + eps)``). With
    ``xhat = (x - mean) * invstd``::

        grad_bias = sum g    grad_weight = sum g * xhat
        training: grad_x = weight * invstd * (g - grad_bias/m - xhat * grad_weight/m)
        eval:     grad_x = weight * invstd * g

    Shape
    -----
    grad_y, x, grad_x: ``(N, C, ...)``; mean, invstd, weight, grad_weight, grad_bias: ``(C,)``.
    """
    x = _check_input(x)
    grad_y = _array(grad_y, "grad_y", None, x.dtype)
    _check_grad(grad_y, x.shape)
    C = x.shape[1]
    mean = _channel_vector(mean, "mean", C, np.float64, 0.0)
    invstd = _channel_vector(invstd, "invstd", C, np.float64, 1.0)
    w = _channel_vector(weight, "weight", C, x.dtype, 1.0)
    grad_x = np.empty_like(x)
    dweight, dbias = np.empty(C, dtype=x.dtype), np.empty(C, dtype=x.dtype)
    _batch_norm_backward_into(grad_y, x, mean, invstd, w, grad_x, dweight, dbias, bool(training))
    return grad_x, dweight, dbias
