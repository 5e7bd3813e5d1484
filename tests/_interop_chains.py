"""Random layer chains for the interop tests (tests/test_onnx.py, tests/test_torch_convert.py).

The generator draws from the layers fastcnn has: Conv2d, ReLU, MaxPool2d, Flatten, Linear today,
and the layers of issue 7 (BatchNorm2d/1d, Dropout, AvgPool2d, AdaptiveAvgPool2d, Tanh, ...) as
soon as ``fastcnn.nn`` has them; a constructor argument is passed only where the layer's
signature takes it (dilation, groups, ceil_mode, ...). Every parameter, bias and running
statistic is set to random values so that a conversion that drops or swaps one is seen.
"""

import inspect

import numpy as np

from fastcnn import nn
from fastcnn.interop._common import chain


def has(name):
    return hasattr(nn, name)


def make(name, *args, dtype=np.float32, **kwargs):
    """``nn.<name>(*args, **kwargs)`` with the keyword arguments its signature lacks dropped."""
    cls = getattr(nn, name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(*args, dtype=dtype, **{k: v for k, v in kwargs.items() if k in accepted})


def takes(name, arg):
    return has(name) and arg in inspect.signature(getattr(nn, name).__init__).parameters


def randomise(layer, rng):
    """Random values in every parameter and buffer (running variances positive)."""
    for key, value in list(layer.params.items()) + list(layer.buffers.items()):
        if not np.issubdtype(value.dtype, np.floating):
            continue
        new = rng.uniform(0.5, 1.5, value.shape) if key == "running_var" else \
            rng.normal(0.0, 0.5, value.shape)
        value[...] = new
    return layer


def _spatial_choices(rng, C, H, W, dtype):
    """Candidate layers for a ``(C, H, W)`` input (each a zero-argument builder)."""
    out = []

    def conv():
        k = (int(rng.integers(1, min(H, 4) + 1)), int(rng.integers(1, min(W, 4) + 1)))
        extra = {}
        groups = 1
        if takes("Conv2d", "groups") and C % 2 == 0 and rng.random() < 0.3:
            groups = 2
        F = int(rng.integers(1, 5)) * groups
        if takes("Conv2d", "dilation") and rng.random() < 0.3:
            extra["dilation"] = 2 if max(k) * 2 <= min(H, W) else 1
        return make("Conv2d", C, F, k, stride=int(rng.integers(1, 3)),
                    padding=int(rng.integers(0, 2)), groups=groups, dtype=dtype, **extra)
    out.append(conv)
    out.append(lambda: make("ReLU", dtype=dtype))

    def max_pool():
        k = int(rng.integers(1, min(H, W, 3) + 1))
        return make("MaxPool2d", k, stride=int(rng.integers(1, k + 1)),
                    padding=int(rng.integers(0, k // 2 + 1)),
                    ceil_mode=bool(rng.random() < 0.3), dtype=dtype)
    out.append(max_pool)
    for name in ("Tanh", "Sigmoid", "Identity"):
        if has(name):
            out.append(lambda name=name: make(name, dtype=dtype))
    if has("LeakyReLU"):
        out.append(lambda: make("LeakyReLU", float(rng.uniform(0.01, 0.3)), dtype=dtype))
    if has("ELU"):
        out.append(lambda: make("ELU", float(rng.uniform(0.5, 1.5)), dtype=dtype))
    if has("GELU"):
        out.append(lambda: make("GELU", approximate=str(rng.choice(["none", "tanh"])),
                                dtype=dtype))
    if has("BatchNorm2d"):
        out.append(lambda: randomise(make("BatchNorm2d", C, dtype=dtype), rng))
    for name in ("Dropout", "Dropout2d"):
        if has(name):
            out.append(lambda name=name: make(name, 0.3, dtype=dtype))
    if has("AvgPool2d"):
        def avg_pool():
            k = int(rng.integers(1, min(H, W, 3) + 1))
            return make("AvgPool2d", k, stride=int(rng.integers(1, k + 1)),
                        padding=int(rng.integers(0, k // 2 + 1)),
                        count_include_pad=bool(rng.random() < 0.5), dtype=dtype)
        out.append(avg_pool)
    if has("AdaptiveAvgPool2d"):
        out.append(lambda: make("AdaptiveAvgPool2d", (max(1, H // 2), max(1, W // 2)),
                                dtype=dtype))
    if has("ConvTranspose2d"):
        out.append(lambda: make("ConvTranspose2d", C, int(rng.integers(1, 4)), 3, stride=2,
                                padding=1, output_padding=1, dtype=dtype))
    return out


def random_chain(rng, dtype=np.float32, max_spatial=4):
    """``(model, input_shape)``: a random Sequential of the available layers, with random
    weights, ending in Linear (and a Softmax/LogSoftmax when fastcnn has them)."""
    C, H, W = int(rng.integers(1, 4)), int(rng.integers(5, 13)), int(rng.integers(5, 13))
    input_shape = (C, H, W)
    layers = []
    shape = (1, C, H, W)
    for _ in range(int(rng.integers(1, max_spatial + 1))):
        choices = _spatial_choices(rng, *shape[1:], dtype)
        for _attempt in range(10):
            layer = choices[int(rng.integers(len(choices)))]()
            out = tuple(layer.output_shape(shape))
            if min(out) >= 1 and out[2] * out[3] >= 1:
                break
        else:
            continue
        layers.append(randomise(layer, rng))
        shape = out
    layers.append(make("Flatten", dtype=dtype))
    features = int(np.prod(shape[1:]))
    if rng.random() < 0.5:
        hidden = int(rng.integers(2, 12))
        layers.append(randomise(make("Linear", features, hidden, dtype=dtype), rng))
        if has("BatchNorm1d") and rng.random() < 0.5:
            layers.append(randomise(make("BatchNorm1d", hidden, dtype=dtype), rng))
        layers.append(make("ReLU", dtype=dtype))
        features = hidden
    layers.append(randomise(make("Linear", features, int(rng.integers(2, 6)),
                                 bias=bool(rng.random() < 0.8), dtype=dtype), rng))
    finals = [n for n in ("Softmax", "LogSoftmax") if has(n)]
    if finals and rng.random() < 0.3:
        layers.append(make(finals[int(rng.integers(len(finals)))], dim=1, dtype=dtype))
    return nn.Sequential(*layers), input_shape


def zoo_params():
    """pytest parameters: the names of the model zoo (``fastcnn.models``), or one skipped
    parameter saying why when this build has no zoo."""
    import pytest

    try:
        from fastcnn.models import list_models
    except ImportError:
        return [pytest.param(None, marks=pytest.mark.skip(
            reason="this build has no model zoo (fastcnn.models)"))]
    return [str(name) for name in list_models()]


def zoo_model(name, seed=0):
    """A zoo model with random weights and running statistics, in evaluation mode."""
    from fastcnn.models import get_model

    model = get_model(name)
    rng = np.random.default_rng(seed)
    for _, layer in chain(model):
        randomise(layer, rng)
    return model.eval()
