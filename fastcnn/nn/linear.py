"""Dense layers and reshaping (functional: ``fastcnn.functional.linear``; kernel: ``gemm`` in
``_kernels/conv.pyx``; tests: ``tests/test_layers.py``)."""

import numpy as np

from ..functional._validate import _int
from ..functional.linear import _bind_linear, _gemm_into, _linear_into
from .module import Module, _positive, _Unbound

__all__ = ["Identity", "Linear", "Flatten"]


class Identity(Module):
    """``y = x``: returns its input (and the gradient) unchanged. Any constructor arguments are
    accepted and ignored, as in PyTorch.

    Shape
    -----
    Input: any shape. Output: the same array.
    """

    def __init__(self, *args, dtype=np.float32, **kwargs):
        super().__init__(dtype=dtype)

    def _forward(self, x, reuse):
        shape = np.shape(x)
        x = self._input(x, ndim=None).reshape(shape)
        self._cache = x.shape
        return x

    def _backward(self, grad_y, reuse):
        return self._grad_input(grad_y, self._cache).reshape(self._cache or ())


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
        self._fast = None  # (input shape, output buffer): see _forward
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
        # With reused buffers, an input of the shape, dtype and layout validated by the last
        # call skips the checks (any other input is checked again).
        fast = self._fast
        if reuse and fast is not None and type(x) is np.ndarray and x.shape == fast[0] and \
                x.dtype == self.dtype and x.flags.c_contiguous:
            y = fast[1]
        else:
            x = self._input(x, self.in_features, ndim=2)
            y = self._buffer("y", (x.shape[0], self.out_features), reuse)
            if reuse:
                self._fast = (x.shape, y)
        params = self.params
        if x.shape[0]:
            _linear_into(x, params["weight"], y)
        bias = params.get("bias")
        if bias is not None:
            y += bias
        self._cache = x
        return y

    def _bind(self, shape):
        if len(shape) != 2 or shape[1] != self.in_features or shape[0] == 0:
            return None
        params, dtype = self.params, self.dtype
        wshape = (self.out_features, self.in_features)
        y = np.empty((shape[0], self.out_features), dtype=dtype)
        bound = [None, None, None]  # (weight, bias, the bound product made for them)

        def f(x):
            w, bias = params["weight"], params.get("bias")
            if type(w) is not np.ndarray or w.shape != wshape or w.dtype != dtype or \
                    not w.flags.c_contiguous or (bias is not None and (
                        type(bias) is not np.ndarray or bias.shape != (self.out_features,) or
                        bias.dtype != dtype or not bias.flags.c_contiguous)):
                raise _Unbound
            if bound[0] is not w or bound[1] is not bias:
                bound[:] = w, bias, _bind_linear(w, bias, y)
            bound[2](x)  # bitwise _linear_into, then the bias added
            self._cache = x
            return y

        def links():  # chain links (see Sequential._chain), after a call of f
            w, bias = bound[0], bound[1]
            if w is None:
                return None
            return [bound[2].link()], [bound[2]], [
                lambda: params.get("weight") is w and params.get("bias") is bias], \
                [a for a in (w, bias) if a is not None]
        f.links = links
        return f

    def _backward(self, grad_y, reuse):
        x = self._cache
        if x is None or type(grad_y) is not np.ndarray or grad_y.dtype != self.dtype or \
                grad_y.shape != (x.shape[0], self.out_features) or not grad_y.flags.c_contiguous:
            grad_y = self._grad_input(grad_y, None if x is None else
                                      (x.shape[0], self.out_features))
        grads = self.grads
        if x.shape[0]:
            _gemm_into(grad_y.T, x, grads["weight"])
        else:  # an empty batch contributes nothing
            grads["weight"].fill(0)
        grad_b = grads.get("bias")
        if grad_b is not None:
            np.add.reduce(grad_y, 0, None, grad_b)  # what np.sum(axis=0, out=) runs
        if not self.compute_input_grad:
            return None
        grad_x = self._buffer("dx", x.shape, reuse)
        return _gemm_into(grad_y, self.params["weight"], grad_x) if x.shape[0] else grad_x

    def extra_repr(self):
        extra = "" if "bias" in self.params else ", bias=False"
        return f"in_features={self.in_features}, out_features={self.out_features}{extra}"


class Flatten(Module):
    """Flatten the axes ``start_dim`` to ``end_dim`` (inclusive) into one, as PyTorch: by default
    every axis after the first, ``(N, C, H, W) -> (N, C*H*W)``. A view, no copy; works for an
    empty batch (N = 0).

    Parameters
    ----------
    start_dim : int, default 1
    end_dim : int, default -1

    Shape
    -----
    Input ``(*, S_start, ..., S_end, *)``, output ``(*, S_start * ... * S_end, *)``.
    """

    def __init__(self, start_dim=1, end_dim=-1, *, dtype=np.float32):
        super().__init__(dtype=dtype)
        self.start_dim = _int(start_dim, "start_dim")
        self.end_dim = _int(end_dim, "end_dim")
        self._fast = None  # (input shape, output shape, (start_dim, end_dim)) of the last call

    def _dims(self, shape):
        n = max(len(shape), 1)
        dims = []
        for name, d in (("start_dim", self.start_dim), ("end_dim", self.end_dim)):
            if not -n <= d < n:
                raise ValueError(f"Flatten {name}={d} is out of range for an input of shape "
                                 f"{shape} (expected in [{-n}, {n - 1}])")
            dims.append(d % n)
        if dims[0] > dims[1]:
            raise ValueError(f"Flatten start_dim={self.start_dim} comes after end_dim="
                             f"{self.end_dim} for an input of shape {shape}")
        return dims

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        s, e = self._dims(shape)
        if not shape:
            return (1,)
        return shape[:s] + (int(np.prod(shape[s:e + 1], dtype=np.int64)),) + shape[e + 1:]

    def _forward(self, x, reuse):
        # An input of the shape, dtype and layout validated by the last call skips the checks.
        fast = self._fast
        if fast is not None and type(x) is np.ndarray and x.shape == fast[0] and \
                x.dtype == self.dtype and x.flags.c_contiguous and \
                fast[2] == (self.start_dim, self.end_dim):
            shape, out = fast[0], fast[1]
        else:
            shape = np.shape(x)
            x = self._input(x, ndim=None).reshape(shape)
            out = self.output_shape(shape)
            self._fast = (shape, out, (self.start_dim, self.end_dim))
        self._cache = shape
        return x.reshape(out)  # explicit sizes: reshape(-1) is ambiguous when N = 0

    def _bind(self, shape):
        shape, dims = tuple(shape), (self.start_dim, self.end_dim)
        out = self.output_shape(shape)

        def f(x):
            if (self.start_dim, self.end_dim) != dims:
                raise _Unbound
            self._cache = shape
            return x.reshape(out)
        # in a chain, a view of the previous output: no link of its own
        f.links = lambda: ([], [], [lambda: (self.start_dim, self.end_dim) == dims], [])
        return f

    def _backward(self, grad_y, reuse):
        shape, fast = self._cache, self._fast
        if shape is None or fast is None or fast[0] != shape or type(grad_y) is not np.ndarray \
                or grad_y.shape != fast[1] or grad_y.dtype != self.dtype or \
                not grad_y.flags.c_contiguous:
            grad_y = self._grad_input(grad_y, None if shape is None else
                                      self.output_shape(shape))
        return grad_y.reshape(shape)

    def extra_repr(self):
        if (self.start_dim, self.end_dim) == (1, -1):
            return ""
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
