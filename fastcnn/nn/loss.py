"""Losses (functional: ``fastcnn.functional.loss``; kernels: ``softmax_cross_entropy`` and
``softmax_forward`` in ``_kernels/elementwise.pyx``; twins: ``fastcnn._reference.loss``; tests:
``tests/test_loss.py``).

A loss is used as ``loss = fn.forward(input, target)`` then ``grad_input = fn.backward()``.
``forward`` returns a Python float for ``reduction='mean'`` / ``'sum'`` and the array of
per-element losses for ``'none'``. ``backward(grad_output=None)`` returns the gradient with
respect to ``input``: ``grad_output`` is a number scaling it (default 1) for 'mean' / 'sum', or,
for 'none', the upstream gradient of the per-element losses (an array of their shape; default
all ones, i.e. the gradient of their sum).
"""

import numpy as np

from ..functional import loss as _fl
from ..functional._validate import _FLOATS, _array
from .module import Module, Parameter

__all__ = ["CrossEntropyLoss", "NLLLoss", "MSELoss"]


def _check_cached(loss):
    if loss._cache is None:
        raise RuntimeError(f"{type(loss).__name__}.backward called before forward")


class CrossEntropyLoss(Module):
    """Softmax + cross-entropy with PyTorch's arguments, plus fastcnn's optional L2 term.

    ``loss_i = -sum_c q_ic log softmax(z_i)_c`` where ``q_i`` is the one-hot target scaled by
    its class weight (mixed with the weighted uniform distribution by ``label_smoothing``) or the
    given probabilities; ``'mean'`` divides by the summed weights of the non-ignored targets.
    ``forward(..., params)`` adds ``0.5 * l2 * sum ||W||^2`` over the weights (not biases) among
    ``params``.

    Parameters
    ----------
    weight : array (C,), optional
    ignore_index : int, default -100
    reduction : {'mean', 'sum', 'none'}, default 'mean'
    label_smoothing : float in [0, 1], default 0
    l2 : float, keyword-only, default 0
        L2 regularisation strength (see ``backward_l2``).
    dtype : float32 (default) or float64, keyword-only

    Methods
    -------
    forward(input, target, params=()) -> float (array for 'none')
    backward(grad_output=None) -> grad_input
    backward_l2()
        Add ``l2 * W`` to the ``.grad`` of each weight given to ``forward``; call it after the
        model's backward pass (which writes the gradients). Equivalent to SGD's
        ``weight_decay=l2`` applied to weights only.

    Shape
    -----
    Input ``(N, C)``, ``(C,)`` or ``(N, C, d1, ..., dk)``; target class indices ``(N,)``, ``()``,
    ``(N, d1, ..., dk)``, or probabilities of the input's shape.
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, *,
                 l2=0.0, dtype=np.float32):
        super().__init__(dtype=dtype)
        l2 = float(l2)
        if not np.isfinite(l2) or l2 < 0:
            raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
        self.l2 = l2
        self.weight = None if weight is None else np.array(weight, dtype=np.float64)
        if self.weight is not None and self.weight.ndim != 1:
            raise ValueError(f"weight must be 1-D (one weight per class), got shape "
                             f"{self.weight.shape}")
        self.ignore_index = _fl._int(ignore_index, "ignore_index")
        self.reduction = _fl._reduction(reduction)
        self.label_smoothing = _fl._smoothing(label_smoothing)

    def _fast(self, input, target):
        """Inputs for the fused kernel when it computes exactly this loss, else None."""
        if (self.weight is not None or self.label_smoothing or self.reduction != "mean"
                or not isinstance(input, np.ndarray) or input.ndim != 2 or input.shape[0] < 1
                or input.shape[1] < 1):
            return None
        t = target if type(target) is np.ndarray else np.asarray(target)
        if t.dtype.kind not in "iuf" or t.shape != (input.shape[0],) or t.shape == input.shape:
            return None
        z = input if input.dtype.type in _FLOATS and input.flags.c_contiguous else \
            _array(input, "input")
        if t.dtype.kind == "f":  # whole numbers as class indices (checked there)
            t = _fl._class_target(t, t.shape, z.shape[1], self.ignore_index)
        t = np.ascontiguousarray(t, dtype=np.int64)
        # (ufunc reductions called directly: t.min() / t.max() without their Python wrappers)
        if np.minimum.reduce(t) < 0 or np.maximum.reduce(t) >= z.shape[1]:
            return None  # ignored or invalid targets: the general path handles / reports them
        return z, t

    def forward(self, input, target, params=()):
        fast = self._fast(input, target)
        if fast is not None:
            loss, grad = _fl._fused_cross_entropy(*fast)
            self._cache = ("fused", grad)
        else:
            ce = _fl._CE(input, target, self.weight, self.ignore_index, self.reduction,
                         self.label_smoothing)
            loss = ce.loss()
            self._cache = ("general", ce)
        weights = [p for p in params if isinstance(p, Parameter) and p.is_weight] if params \
            else []
        if self.l2 > 0 and weights:
            # einsum, not BLAS dot: no extra threads, no temporary
            penalty = 0.5 * self.l2 * sum(float(np.einsum("i,i->", p.data.ravel(),
                                                          p.data.ravel())) for p in weights)
            loss = loss + penalty
        self._weights = weights
        return loss

    def backward(self, grad_output=None):
        _check_cached(self)
        kind, value = self._cache
        if kind == "general":
            return value.grad(grad_output)
        if grad_output is None:
            return value
        g = _fl._grad_output(grad_output, "mean", ())
        return value if g == 1.0 else (value * g).astype(value.dtype)

    def backward_l2(self):
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward_l2 called before forward")
        if self.l2 > 0:
            for p in self._weights:
                p.grad += self.l2 * p.data

    def extra_repr(self):
        parts = []
        if self.weight is not None:
            parts.append(f"weight={self.weight.tolist()}")
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.reduction != "mean":
            parts.append(f"reduction={self.reduction!r}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        parts.append(f"l2={self.l2}")
        return ", ".join(parts)


class NLLLoss(Module):
    """Negative log-likelihood of log-probabilities (``LogSoftmax`` then ``NLLLoss`` equals
    ``CrossEntropyLoss``): ``loss_i = -weight[t_i] * input[i, t_i]``.

    Parameters
    ----------
    weight : array (C,), optional
    ignore_index : int, default -100
    reduction : {'mean', 'sum', 'none'}, default 'mean'
    dtype : float32 (default) or float64, keyword-only

    Shape
    -----
    As ``CrossEntropyLoss`` with class-index targets.
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", *, dtype=np.float32):
        super().__init__(dtype=dtype)
        self.weight = None if weight is None else np.array(weight, dtype=np.float64)
        self.ignore_index = _fl._int(ignore_index, "ignore_index")
        self.reduction = _fl._reduction(reduction)

    def forward(self, input, target, params=()):
        nll = _fl._NLL(input, target, self.weight, self.ignore_index, self.reduction)
        self._cache = nll
        return nll.loss()

    def backward(self, grad_output=None):
        _check_cached(self)
        return self._cache.grad(grad_output)

    def extra_repr(self):
        return f"reduction={self.reduction!r}" if self.reduction != "mean" else ""


class MSELoss(Module):
    """Mean squared error ``(input - target)**2``, reduced by mean, sum or none.

    Parameters
    ----------
    reduction : {'mean', 'sum', 'none'}, default 'mean'
    dtype : float32 (default) or float64, keyword-only

    Shape
    -----
    ``input`` and ``target`` of one (any) shape.
    """

    def __init__(self, reduction="mean", *, dtype=np.float32):
        super().__init__(dtype=dtype)
        self.reduction = _fl._reduction(reduction)

    def forward(self, input, target, params=()):
        loss = _fl.mse_loss(input, target, self.reduction)
        self._cache = (input, target)
        return loss

    def backward(self, grad_output=None):
        _check_cached(self)
        return _fl.mse_loss_backward(grad_output, *self._cache, self.reduction)

    def extra_repr(self):
        return f"reduction={self.reduction!r}" if self.reduction != "mean" else ""
