"""The model zoo: named networks built as specs (:mod:`fastcnn.models.spec`), for any channel
count, input size and number of classes.

``list_models()`` names them, ``get_model(name, ...)`` builds one (``fastcnn train --model
NAME``). Each model is a plain layer list, so model files record it generically and
``load_model`` rebuilds it without knowing the zoo.

========================  ====================================================================
name                      network
========================  ====================================================================
``lenet5``                LeNet-5 (DESIGN.md section 5): ReLU and max pooling; 28x28 digits
                          padded by 2 to 32x32 (``fastcnn train``'s default)
``lenet5-1998``           the classic LeNet-5 of the course notes: Tanh and AvgPool2d(2)
``bnnet``                 two 3x3 convolutions with batch norm, ReLU and max pooling, dropout,
                          two linear layers: the zoo's most accurate model
========================  ====================================================================
"""

from __future__ import annotations

import numpy as np

from .spec import layer_classes, model_from_spec

__all__ = ["describe_model", "get_model", "get_spec", "list_models", "missing_layers",
           "training_defaults"]

#: The smallest input (after padding) the LeNet-5 variants take: 32x32, as DESIGN.md section 5.
_LENET_FRAME = 32


def _size_pair(input_size):
    if isinstance(input_size, (int, np.integer)) and not isinstance(input_size, bool):
        pair = (int(input_size), int(input_size))
    elif isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        pair = tuple(input_size)
    else:
        raise ValueError(f"input_size must be an int or an (H, W) pair, got {input_size!r}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v <= 4096
               for v in pair):
        raise ValueError(f"input_size must hold sizes in [1, 4096], got {input_size!r}")
    return int(pair[0]), int(pair[1])


def _count(value, name, low=1, high=2 ** 16):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
            not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def _square(h, w):
    return h if h == w else [h, w]


def _lenet(in_channels, num_classes, size, activation, pool):
    """LeNet-5's topology: the input padded to at least 32x32, C5's kernel covering what the
    two conv-pool stages leave (5x5 for a 32x32 input)."""
    pads = [max(0, -(-(_LENET_FRAME - s) // 2)) for s in size]
    framed = [s + 2 * p for s, p in zip(size, pads)]
    left = [((f - 4) // 2 - 4) // 2 for f in framed]
    return {
        "input_shape": [in_channels, *framed],
        "input_transform": {"padding": pads, "normalization": None},
        "layers": [
            {"type": "Conv2d", "in_channels": in_channels, "out_channels": 6, "kernel_size": 5},
            {"type": activation}, {"type": pool, "kernel_size": 2},
            {"type": "Conv2d", "in_channels": 6, "out_channels": 16, "kernel_size": 5},
            {"type": activation}, {"type": pool, "kernel_size": 2},
            {"type": "Conv2d", "in_channels": 16, "out_channels": 120,
             "kernel_size": _square(*left)},
            {"type": activation}, {"type": "Flatten"},
            {"type": "Linear", "in_features": 120, "out_features": 84}, {"type": activation},
            {"type": "Linear", "in_features": 84, "out_features": num_classes},
        ],
    }


def _lenet5(in_channels, num_classes, size):
    return _lenet(in_channels, num_classes, size, "ReLU", "MaxPool2d")


def _lenet5_1998(in_channels, num_classes, size):
    return _lenet(in_channels, num_classes, size, "Tanh", "AvgPool2d")


def _bnnet(in_channels, num_classes, size):
    """The zoo's most accurate model (tuned by the lead: keep its definition here, in one
    place)."""
    h, w = size
    if h < 4 or w < 4:
        raise ValueError(f"bnnet needs inputs of at least 4x4 (two 2x2 poolings), got {h}x{w}")

    def conv_block(cin, cout):
        return [{"type": "Conv2d", "in_channels": cin, "out_channels": cout, "kernel_size": 3,
                 "padding": 1, "bias": False},
                {"type": "BatchNorm2d", "num_features": cout}, {"type": "ReLU"},
                {"type": "MaxPool2d", "kernel_size": 2}]

    return {
        "input_shape": [in_channels, h, w],
        "input_transform": None,
        "layers": [
            *conv_block(in_channels, 32), *conv_block(32, 64),
            {"type": "Flatten"}, {"type": "Dropout", "p": 0.3},
            {"type": "Linear", "in_features": 64 * (h // 4) * (w // 4), "out_features": 128},
            {"type": "ReLU"}, {"type": "Dropout", "p": 0.3},
            {"type": "Linear", "in_features": 128, "out_features": num_classes},
        ],
    }


#: name -> (spec builder, one-line description[, training defaults]). The training defaults
#: are the settings of ``fastcnn train`` that the model needs other than the command's own
#: defaults (measured recipes; options given on the command line win).
_MODELS = {
    "lenet5": (_lenet5, "LeNet-5 with ReLU and max pooling, inputs padded to 32x32 "
                        "(61,706 parameters for 28x28 digits; the default)"),
    "lenet5-1998": (_lenet5_1998, "the classic LeNet-5 of the course notes: Tanh activations "
                                  "and 2x2 average-pooling subsampling"),
    "bnnet": (_bnnet, "two 3x3 conv + batch norm + ReLU + max-pool blocks (32, 64 channels), "
                      "dropout 0.3, Linear(128): the zoo's most accurate model",
              # The constant-start cosine schedule at lr 0.05 makes the first steps of this
              # net diverge briefly (loss 9 at step 6; the un-normalised 3136x128 layer); a
              # warm-up from lr/25 avoids it (embedded digits, 20 epochs: 98.9% instead of
              # 98.3% with a lower constant-start lr of 0.01). Its dropout and the shifts
              # still leave it under-fitted on the 4,000 embedded digits after 20 epochs
              # (training accuracy 97.7%); 40 epochs reach 99.2-99.4% there (about 3 minutes
              # on one core), so that is its default on the embedded digits only.
              {"schedule": "onecycle", "embedded_epochs": 40}),
}


def list_models():
    """The names of the zoo's models, in the order of the table in the module docstring."""
    return list(_MODELS)


def describe_model(name):
    """A one-line description of a zoo model (for ``--help`` and ``fastcnn models``)."""
    return _MODELS[_check_name(name)][1]


def training_defaults(name):
    """The ``fastcnn train`` settings a zoo model is trained with where they differ from the
    command's defaults, e.g. ``{"schedule": "onecycle"}`` (a new dict; empty for most).
    ``"embedded_epochs"`` is the number of epochs on the embedded digits only (without
    ``--data``)."""
    entry = _MODELS[_check_name(name)]
    return dict(entry[2]) if len(entry) > 2 else {}


def _check_name(name):
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(f"unknown model {str(name)[:80]!r}; the zoo has: "
                         f"{', '.join(_MODELS)}")
    return name


def get_spec(name, num_classes=10, in_channels=1, input_size=28):
    """The spec (:mod:`fastcnn.models.spec`) of a zoo model, with ``"name"`` set.

    Parameters
    ----------
    name : str
        One of :func:`list_models`.
    num_classes : int, default 10
    in_channels : int, default 1
    input_size : int or (int, int), default 28
        ``(H, W)`` of the raw images (before the model's own padding).

    Raises
    ------
    ValueError
        For an unknown name or a bad size.
    """
    builder = _MODELS[_check_name(name)][0]
    num_classes = _count(num_classes, "num_classes", 1, 2 ** 20)
    in_channels = _count(in_channels, "in_channels", 1, 4096)
    spec = builder(in_channels, num_classes, _size_pair(input_size))
    spec["classes"] = None
    spec["name"] = name
    return spec


def missing_layers(name):
    """Layer types a zoo model needs that this build of ``fastcnn.nn`` lacks (sorted)."""
    spec = get_spec(name)
    known = layer_classes()
    return sorted({layer["type"] for layer in spec["layers"]} - set(known))


def get_model(name, num_classes=10, in_channels=1, input_size=28, seed=0, *, dtype=np.float32):
    """Build a zoo model (see :func:`list_models`).

    The model is :func:`~fastcnn.models.spec.model_from_spec` of :func:`get_spec`, so a model
    file records it as its plain layer list. ``get_model("lenet5", seed=s)`` has the weights of
    ``LeNet5(seed=s)``.

    Parameters
    ----------
    name : str
    num_classes : int, default 10
    in_channels : int, default 1
    input_size : int or (int, int), default 28
        ``(H, W)`` of the raw images; the LeNet-5 variants pad them to at least 32x32 with their
        input transform (28x28 by 2).
    seed : int, default 0
        Seeds the initial weights.
    dtype : float32 (default) or float64

    Returns
    -------
    Sequential
        In training mode, with ``input_shape``, ``input_transform`` and ``zoo_name`` set.

    Shape
    -----
    ``predict`` takes raw images ``(N, in_channels, H, W)``; the model's input is
    ``model.input_shape``; the output is ``(N, num_classes)``.

    Raises
    ------
    ValueError
        For an unknown name, bad sizes, or a model whose layers this build lacks (named).
    """
    spec = get_spec(name, num_classes, in_channels, input_size)
    missing = missing_layers(name)
    if missing:
        raise ValueError(f"model {name!r} needs the layer(s) {', '.join(missing)}, which this "
                         f"build of fastcnn.nn does not have")
    model = model_from_spec(spec, dtype=dtype, seed=seed)
    first = model.layers[0]
    if hasattr(first, "compute_input_grad"):
        first.compute_input_grad = False  # nothing upstream of the first layer to train
    model.zoo_name = name
    return model
