"""LeNet-5 (DESIGN.md section 5) as a ``Sequential`` with a summary and prediction helpers."""

import numpy as np

from .functional._validate import _array
from .nn import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential

__all__ = ["LeNet5", "summary_rows"]


def summary_rows(model, input_shape):
    """Per-layer ``(index, layer repr, output shape, parameters, multiply-adds per image)``."""
    rows = []
    shape = (1,) + tuple(input_shape)
    for i, layer in enumerate(model):
        out = layer.output_shape(shape) if hasattr(layer, "output_shape") else \
            (shape[0], int(np.prod(shape[1:]))) if isinstance(layer, Flatten) else shape
        n_params = sum(p.size for p in layer.params.values())
        macs = layer.macs(shape) if hasattr(layer, "macs") else 0
        rows.append((i, repr(layer), out[1:], n_params, macs))
        shape = out
    return rows


class LeNet5(Sequential):
    """LeNet-5 for ``N x 1 x 32 x 32`` images (28x28 digits zero-padded by 2).

    C1 Conv2d(1, 6, 5) - ReLU - S2 MaxPool2d(2) - C3 Conv2d(6, 16, 5) - ReLU - S4 MaxPool2d(2) -
    C5 Conv2d(16, 120, 5) - ReLU - Flatten - F6 Linear(120, 84) - ReLU - F7 Linear(84, num_classes).
    Parameter names and shapes match ``torch.nn.Sequential`` of the same modules ("0.weight",
    "0.bias", "3.weight", ...). The first convolution skips its input gradient.

    Parameters
    ----------
    num_classes : int, default 10
    dtype : float32 (default) or float64
    seed : int, default 0
        Seeds the initialisation of every layer.
    """

    input_shape = (1, 32, 32)

    def __init__(self, num_classes=10, dtype=np.float32, seed=0):
        seeds = np.random.SeedSequence(seed).spawn(5)
        rng = [int(s.generate_state(1)[0]) for s in seeds]
        super().__init__(
            Conv2d(1, 6, 5, dtype=dtype, seed=rng[0]), ReLU(dtype=dtype), MaxPool2d(2, dtype=dtype),
            Conv2d(6, 16, 5, dtype=dtype, seed=rng[1]), ReLU(dtype=dtype),
            MaxPool2d(2, dtype=dtype),
            Conv2d(16, 120, 5, dtype=dtype, seed=rng[2]), ReLU(dtype=dtype), Flatten(dtype=dtype),
            Linear(120, 84, dtype=dtype, seed=rng[3]), ReLU(dtype=dtype),
            Linear(84, num_classes, dtype=dtype, seed=rng[4]),
        )
        self.num_classes = num_classes
        self.layers[0].compute_input_grad = False

    def summary(self, print_fn=print):
        """Print (and return) a table of output shape, parameters and multiply-adds per layer."""
        rows = summary_rows(self, self.input_shape)
        width = max(len(r[1]) for r in rows)
        lines = [f"{'#':>2}  {'layer':<{width}}  {'output':<13} {'params':>8} {'MACs/image':>11}"]
        for i, name, out, n_params, macs in rows:
            lines.append(f"{i:>2}  {name:<{width}}  {str(out):<13} {n_params:>8,} {macs:>11,}")
        total_p = sum(r[3] for r in rows)
        total_m = sum(r[4] for r in rows)
        lines.append(f"{'':>2}  {'total':<{width}}  {'':<13} {total_p:>8,} {total_m:>11,}")
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def _images(self, x):
        x = _array(x, "x")
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1:] not in ((1, 32, 32), (1, 28, 28)):
            raise ValueError(f"LeNet5 expects images of shape (N, 1, 32, 32) or (N, 1, 28, 28) "
                             f"(or (N, 28, 28)), got {x.shape}")
        if x.shape[2] == 28:
            x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
        return np.ascontiguousarray(x, dtype=self.dtype)

    def predict_proba(self, x, batch_size=1024):
        """Class probabilities ``(N, num_classes)`` (softmax of the logits), in batches."""
        x = self._images(x)
        out = np.empty((x.shape[0], self.num_classes), dtype=self.dtype)
        for start in range(0, x.shape[0], batch_size):
            z = self.forward(x[start:start + batch_size], copy=False)
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            out[start:start + batch_size] = e / e.sum(axis=1, keepdims=True)
        return out

    def predict(self, x, batch_size=1024):
        """Predicted class indices ``(N,)``."""
        x = self._images(x)
        out = np.empty(x.shape[0], dtype=np.int64)
        for start in range(0, x.shape[0], batch_size):
            out[start:start + batch_size] = self.forward(x[start:start + batch_size],
                                                         copy=False).argmax(axis=1)
        return out
