"""Dense layers and reshaping (functional: ``fastcnn.functional.linear``; kernel: ``gemm`` in
``_kernels/conv.pyx``; tests: ``tests/test_linear.py``)."""

import numpy as np

from ..functional.linear import _gemm_into
from .module import Module, _positive

__all__ = ["Linear", "Flatten"]


class Linear(Module):
    """Fully connected layer, ``y = x @ weight.T + bias``.

    The matrix products run on the kernels' own threads (not BLAS), in a fixed order, so they
    are reproducible for any thread count.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    dtype : float32 (default) or float64
    seed : int or None
        Seed of the Kaiming (He) uniform fan-in initialisation (biases start at 0).

    Shape
    -----
    Input ``(N, in_features)``, output ``(N, out_features)``; ``weight`` is
    ``(out_features, in_features)``.
    """

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, seed=None):
        super().__init__(dtype=dtype)
        self.in_features = _positive(in_features, "in_features")
        self.out_features = _positive(out_features, "out_features")
        self.compute_input_grad = True
        shape = (self.out_features, self.in_features)
        rng = np.random.default_rng(seed)
        self.params["weight"] = self._init_uniform(shape, self.in_features, np.sqrt(2.0), rng)
        self.grads["weight"] = np.zeros(shape, dtype=self.dtype)
        if bias:
            self.params["bias"] = np.zeros(self.out_features, dtype=self.dtype)
            self.grads["bias"] = np.zeros(self.out_features, dtype=self.dtype)

    def output_shape(self, input_shape):
        return (input_shape[0], self.out_features)

    def macs(self, input_shape):
        return self.in_features * self.out_features

    def _forward(self, x, reuse):
        x = self._input(x, self.in_features, ndim=2)
        y = self._buffer("y", (x.shape[0], self.out_features), reuse)
        weight_t = self._buffer("weight_t", (self.in_features, self.out_features), reuse)
        np.copyto(weight_t, self.params["weight"].T)
        _gemm_into(x, weight_t, y)
        if "bias" in self.params:
            y += self.params["bias"]
        self._cache = x
        return y

    def _backward(self, grad_y, reuse):
        x = self._cache
        grad_y = self._grad_input(grad_y, None if x is None else (x.shape[0], self.out_features))
        _gemm_into(grad_y.T, x, self.grads["weight"])
        if "bias" in self.grads:
            np.sum(grad_y, axis=0, out=self.grads["bias"])
        if not self.compute_input_grad:
            return None
        grad_x = self._buffer("dx", x.shape, reuse)
        return _gemm_into(grad_y, self.params["weight"], grad_x)

    def extra_repr(self):
        extra = "" if "bias" in self.params else ", bias=False"
        return f"in_features={self.in_features}, out_features={self.out_features}{extra}"


class Flatten(Module):
    """Flatten every axis after the first: ``(N, C, H, W) -> (N, C*H*W)`` (a view, no copy)."""

    def _forward(self, x, reuse):
        x = self._input(x, ndim=None)
        if x.ndim < 2:
            raise ValueError(f"Flatten expects at least 2-D input, got shape {x.shape}")
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def _backward(self, grad_y, reuse):
        shape = self._cache
        grad_y = self._grad_input(grad_y, None if shape is None else
                                  (shape[0], int(np.prod(shape[1:]))))
        return grad_y.reshape(shape)
