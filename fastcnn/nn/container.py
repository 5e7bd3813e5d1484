"""``Sequential``: layers applied in order, and the one place that plans fusions.

The layers stay plain: a ``Conv2d`` used alone computes a convolution and nothing else. A
``Sequential`` sees the whole chain, so it alone decides which runs of layers execute together
(see ``_plan``): a ``Conv2d - ReLU`` pair applies the ReLU in the convolution's output loop (also
inside a ``Conv2d - ReLU - MaxPool2d`` triple, whose pool then reads the convolution's reused
buffer). Fused steps are bitwise equal to the separate layers (tested). New fusions are new
step classes here and one more rule in ``_plan``.

Work arrays are reused across steps; the output returned by ``forward`` and the gradient returned
by ``backward`` are fresh arrays unless ``copy=False``.
"""

import numpy as np

from .activation import ReLU
from .conv import Conv2d
from .module import Module
from .pooling import MaxPool2d

__all__ = ["Sequential"]


class _Step:
    """One layer run on its own (built-in layers with reused work arrays; a user's layer through
    its public forward/backward)."""

    def __init__(self, layer):
        self.layers = (layer,)

    def forward(self, x):
        return self.layers[0]._forward(x, reuse=True)

    def backward(self, grad):
        return self.layers[0]._backward(grad, reuse=True)


class _ConvReLU(_Step):
    """Conv2d then ReLU: the ReLU is applied in the convolution's output loop."""

    def __init__(self, conv, relu):
        self.layers = (conv, relu)

    def forward(self, x):
        conv, relu = self.layers
        x = conv._input(x, conv.in_channels)
        y = conv._buffer("y", conv.output_shape(x.shape), True)
        conv._conv_into(x, y, True, relu=True)
        relu._cache = y  # ReLU's backward needs only its output
        return y

    def backward(self, grad):
        conv, relu = self.layers
        return conv._backward(relu._backward(grad, reuse=True), reuse=True)


class _ConvReLUMaxPool(_Step):
    """Conv2d, ReLU and MaxPool2d: the ReLU applied in the convolution's output loop, the pool
    run on the convolution's own (reused) output buffer, then the pool's and the ReLU's
    backward into the convolution's. Bitwise equal to the three layers (the same kernels)."""

    def __init__(self, conv, relu, pool):
        self.layers = (conv, relu, pool)

    def forward(self, x):
        conv, relu, pool = self.layers
        return pool._forward(_ConvReLU(conv, relu).forward(x), reuse=True)

    def backward(self, grad):
        conv, relu, pool = self.layers
        return _ConvReLU(conv, relu).backward(pool._backward(grad, reuse=True))


def _plan(layers):
    """Steps for a chain of layers: the longest fusion that matches at each position."""
    steps, i = [], 0
    while i < len(layers):
        kinds = [type(layer) for layer in layers[i:i + 3]]
        if kinds == [Conv2d, ReLU, MaxPool2d]:
            steps.append(_ConvReLUMaxPool(*layers[i:i + 3]))
        elif kinds[:2] == [Conv2d, ReLU]:
            steps.append(_ConvReLU(*layers[i:i + 2]))
        else:
            steps.append(_Step(layers[i]))
        i += len(steps[-1].layers)
    return steps


class Sequential(Module):
    """Layers applied in order; parameters and buffers named as PyTorch's ``nn.Sequential``
    (``"0.weight"``, ``"1.running_mean"``, ...).

    ``train()`` / ``eval()`` are passed down to every layer. See the module docstring for the
    fusions it plans and for the reused work arrays.
    """

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layer {i} is not a fastcnn Module: {layer!r}")
        dtypes = {layer.dtype for layer in layers}
        if len(dtypes) > 1:
            raise TypeError(f"all layers of a Sequential must share one dtype, got {dtypes}")
        super().__init__(dtype=dtypes.pop() if dtypes else np.float32)
        self.layers = list(layers)
        self._steps = _plan(self.layers)

    def children(self):
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def fusion_plan(self):
        """``[(start, n), ...]``: the runs of layers executed together (n = 1 for a layer alone),
        with the name of the step that runs them."""
        plan, i = [], 0
        for step in self._steps:
            plan.append((i, len(step.layers), type(step).__name__.lstrip("_")))
            i += len(step.layers)
        return plan

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x, copy=True):
        """Run every layer. ``copy=False`` returns the last layer's reused buffer instead of a
        fresh array (the trainer does this; the array is overwritten by the next forward)."""
        out = x
        for step in self._steps:
            out = step.forward(out)
        self._cache = True
        return np.array(out, copy=True) if copy else out

    def backward(self, grad_y, copy=True):
        """Backpropagate through every layer; returns the input gradient (None if skipped)."""
        if self._cache is None:
            raise RuntimeError("Sequential.backward called before forward")
        grad = grad_y
        for step in reversed(self._steps):
            grad = step.backward(grad)
            if grad is None:
                return None
        return np.array(grad, copy=True) if copy else grad

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def __repr__(self):
        body = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"{type(self).__name__}({body}\n)"
