"""LeNet-5 (DESIGN.md section 5) as a ``Sequential``."""

import numpy as np

from ..nn import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from .transform import InputTransform

__all__ = ["LeNet5", "lenet5_spec"]


class LeNet5(Sequential):
    """LeNet-5 for ``N x 1 x 32 x 32`` images (28x28 digits zero-padded by 2).

    C1 Conv2d(1, 6, 5) - ReLU - S2 MaxPool2d(2) - C3 Conv2d(6, 16, 5) - ReLU - S4 MaxPool2d(2) -
    C5 Conv2d(16, 120, 5) - ReLU - Flatten - F6 Linear(120, 84) - ReLU - F7 Linear(84, num_classes).
    Parameter names and shapes match ``torch.nn.Sequential`` of the same modules ("0.weight",
    "0.bias", "3.weight", ...). The first convolution skips its input gradient. Its
    ``input_transform`` pads 28x28 digits by 2 (``predict`` takes 28x28 or 32x32 images); model
    files record it as its plain layer list (:func:`lenet5_spec`).

    Parameters
    ----------
    num_classes : int, default 10
    dtype : float32 (default) or float64
    seed : int, default 0
        Seeds the initialisation of every layer (as ``model_from_spec(lenet5_spec(), seed=)``).

    Shape
    -----
    Input ``(N, 1, 32, 32)``, output ``(N, num_classes)``.
    """

    input_shape = (1, 32, 32)
    input_transform = InputTransform(padding=2)

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
        self.layers[0].compute_input_grad = False


def lenet5_spec(num_classes=10):
    """The spec (:mod:`fastcnn.models.spec`) of LeNet-5: input (1, 32, 32), 28x28 images padded
    by 2, the layer list of :class:`LeNet5`."""
    return {
        "input_shape": [1, 32, 32], "classes": None,
        "input_transform": {"padding": [2, 2], "normalization": None},
        "layers": [
            {"type": "Conv2d", "in_channels": 1, "out_channels": 6, "kernel_size": 5},
            {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 2},
            {"type": "Conv2d", "in_channels": 6, "out_channels": 16, "kernel_size": 5},
            {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 2},
            {"type": "Conv2d", "in_channels": 16, "out_channels": 120, "kernel_size": 5},
            {"type": "ReLU"}, {"type": "Flatten"},
            {"type": "Linear", "in_features": 120, "out_features": 84}, {"type": "ReLU"},
            {"type": "Linear", "in_features": 84, "out_features": num_classes},
        ],
    }
