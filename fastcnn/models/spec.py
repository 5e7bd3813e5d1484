"""The architecture spec: a ``Sequential`` written as JSON data, and rebuilt from it.

A spec is the JSON object ::

    {"input_shape": [1, 28, 28],                       # (C, H, W) of one image, required
     "classes": ["0", "1", ...],                       # optional: one name per output
     "input_transform": {"padding": [0, 0],            # optional: see InputTransform
                         "normalization": {"mean": [0.13], "std": [0.31]}},
     "layers": [{"type": "Conv2d", "in_channels": 1, "out_channels": 16, "kernel_size": 3,
                 "padding": 1},
                {"type": "ReLU"}, ...],
     "name": "my-net"}                                 # optional: free text

Each layer is its class name in :mod:`fastcnn.nn` plus its constructor arguments, with PyTorch's
names; tuples are written as lists and every omitted argument takes the constructor's default
(PyTorch's). ``dtype`` and ``seed`` are not part of a layer: :func:`model_from_spec` takes them.
It is what model files record (:mod:`fastcnn.checkpoint`), what ``--model spec.json`` reads
(:func:`load_spec`), and what the converters to other frameworks read.

The layer classes are found generically: every public ``Module`` subclass exported by
``fastcnn.nn`` (containers and losses excepted), so a new layer needs no edit here.

Validation is strict and cheap and happens before anything is built: an unknown layer type, an
unknown or missing argument, a value of the wrong JSON type (a bool for an int, a nested list),
an absurd size (any integer argument above ``MAX_ARGUMENT``; a model whose arguments imply more
than ``MAX_ELEMENTS`` parameter elements; an input above ``MAX_INPUT_ELEMENTS`` values) or a chain
of layers that does not fit the input shape raises ``ValueError`` naming the layer index and the
argument.
"""

from __future__ import annotations

import inspect
import json
import math
import os

import numpy as np

from ..io import check_depth
from .transform import InputTransform

__all__ = [
    "MAX_ARGUMENT", "MAX_ELEMENTS", "MAX_INPUT_ELEMENTS", "MAX_LAYERS", "layer_classes",
    "layer_from_spec", "layer_to_spec", "load_spec", "model_from_spec", "model_to_spec",
    "output_shapes", "parameter_bounds", "validate_spec",
]

#: Largest integer any layer argument may hold (a size, a kernel, a channel count).
MAX_ARGUMENT = 2 ** 24
#: Largest number of parameter and buffer elements the arguments of a spec may imply.
MAX_ELEMENTS = 2 ** 28
#: Largest number of values in one input image (C * H * W) and in any layer's output per image.
MAX_INPUT_ELEMENTS = 2 ** 24
#: Largest number of layers.
MAX_LAYERS = 4096
#: Largest number of class names, and the longest class name and string argument.
MAX_CLASSES = 2 ** 20
MAX_STRING = 256
#: A list argument has at most this many items (a pair, or four paddings).
MAX_LIST = 8
#: Largest size of a spec file read by load_spec (bytes).
MAX_SPEC_BYTES = 2 ** 24

_SPEC_KEYS = {"input_shape", "classes", "input_transform", "layers", "name"}
_RESERVED = ("dtype", "seed")


# ------------------------------------------------------------------------------------------------
# Registry


def layer_classes():
    """``{name: class}`` of every layer a spec may name: the public ``Module`` subclasses
    exported by ``fastcnn.nn``, without containers (``Sequential``) and losses (``...Loss``).

    Looked up on each call, so layers added to ``fastcnn.nn`` are found without any edit here.
    """
    from .. import nn

    out = {}
    for name in getattr(nn, "__all__", ()):
        cls = getattr(nn, name, None)
        if (isinstance(cls, type) and issubclass(cls, nn.Module) and cls is not nn.Module
                and not issubclass(cls, nn.Sequential) and not name.endswith("Loss")
                and not name.startswith("_")):
            out[name] = cls
    return out


_SIGNATURES = {}


def _signature(cls):
    """The constructor's parameters (``self``, ``dtype``, ``seed`` and ``*args`` left out);
    cached per class (inspect.signature is most of the cost of validating a spec)."""
    if cls not in _SIGNATURES:
        _SIGNATURES[cls] = (_parameters(cls), "seed" in inspect.signature(cls.__init__).parameters)
    return _SIGNATURES[cls][0]


def _parameters(cls):
    params = inspect.signature(cls.__init__).parameters
    out = {}
    for i, (name, p) in enumerate(params.items()):
        if i == 0 or name in _RESERVED:
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = p
    return out


def _accepts_seed(cls):
    _signature(cls)
    return _SIGNATURES[cls][1]


# ------------------------------------------------------------------------------------------------
# Layer <-> dict


def _to_json_value(value, where):
    """A constructor argument as JSON data (tuples as lists, NumPy scalars as numbers)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value!r}, which JSON cannot hold")
        return value
    if isinstance(value, (tuple, list)):
        return [_to_json_value(v, where) for v in value]
    raise TypeError(f"{where} is a {type(value).__name__} ({value!r}), which a spec cannot hold")


def layer_to_spec(layer):
    """The spec of one layer: ``{"type": class name, **constructor arguments}``.

    Built from ``layer.init_args()`` (the arguments it was constructed with, defaults filled
    in), tuples written as lists; ``dtype`` and ``seed`` are left out.

    Raises
    ------
    TypeError
        If the layer is not one of :func:`layer_classes` (a user's own layer cannot be written
        as data: rebuilding it would need its code) or holds an argument JSON cannot represent.
    """
    cls = type(layer)
    name = cls.__name__
    if layer_classes().get(name) is not cls:
        raise TypeError(f"{name} is not a fastcnn.nn layer, so it cannot be written as a spec "
                        f"(model files hold fastcnn.nn layers only)")
    spec = {"type": name}
    for key, value in layer.init_args().items():
        if key in _RESERVED:
            continue
        spec[key] = _to_json_value(value, f"{name} argument {key!r}")
    return spec


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_value(value, param, where):
    """JSON type of one argument against the constructor's default (see the module docstring).
    Returns the integers it holds (for the size bounds)."""
    default = param.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return []
    if isinstance(value, bool):
        raise ValueError(f"{where} must not be a bool, got {value!r}")
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise ValueError(f"{where} is a string of {len(value)} characters")
        return []
    if value is None:
        return []
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value!r}")
        if abs(value) > MAX_ARGUMENT and float(value).is_integer():
            raise ValueError(f"{where} = {value!r} is larger than {MAX_ARGUMENT}")
        return []
    if _is_int(value):
        if abs(value) > MAX_ARGUMENT:
            raise ValueError(f"{where} = {value} is larger than {MAX_ARGUMENT}")
        return [value]
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            raise ValueError(f"{where} is a list of {len(value)} items (at most {MAX_LIST})")
        ints = []
        for item in value:
            if not _is_number(item):
                raise ValueError(f"{where} must be a list of numbers, got {value!r}")
            ints += _check_value(item, param.replace(default=0), where)
        return ints
    raise ValueError(f"{where} must be a number, a string, a list or null, got "
                     f"{type(value).__name__}")


def _implied_elements(name, args, ints):
    """``(lower, upper)`` bounds of the parameter and buffer elements a layer with these
    arguments holds, from PyTorch's argument names (a convolution's or linear layer's weight
    always exists; batch norm's depend on ``affine`` and ``track_running_stats``); for any other
    layer ``(0, product of its integers)``."""
    def size(v):
        if isinstance(v, list):
            return math.prod(abs(int(x)) for x in v) if v else 1
        return abs(int(v)) if _is_number(v) else 1

    if "in_channels" in args and "out_channels" in args:
        kernel = args.get("kernel_size", 1)
        dims = int(name[-2]) if name[-2:] in ("1d", "2d", "3d") else 1  # an int means k**dims
        kernel = size(kernel) if isinstance(kernel, list) else size(kernel) ** dims
        groups = max(1, size(args.get("groups", 1)))
        weight = size(args["in_channels"]) * size(args["out_channels"]) * kernel // groups
        return weight, weight + size(args["out_channels"])
    if "in_features" in args and "out_features" in args:
        weight = size(args["in_features"]) * size(args["out_features"])
        return weight, weight + size(args["out_features"])
    if "num_features" in args:  # batch norm: weight and bias if affine, statistics if tracked
        n = size(args["num_features"])
        return 2 * n * (args.get("affine", True) is not False) + 2 * n * (
            args.get("track_running_stats", True) is not False), 4 * n + 1
    if "normalized_shape" in args:
        return 0, 2 * size(args["normalized_shape"])
    return 0, math.prod(max(1, abs(v)) for v in ints)


def _check_layer(spec, index, classes):
    """Validate one layer's dict; return (class, kwargs, implied elements)."""
    if not isinstance(spec, dict):
        raise ValueError(f"layer {index} must be an object with a \"type\", got "
                         f"{type(spec).__name__}")
    kind = spec.get("type")
    if not isinstance(kind, str):
        raise ValueError(f"layer {index}: \"type\" must be a layer class name, got {kind!r}")
    cls = classes.get(kind)
    if cls is None:
        known = ", ".join(sorted(classes))
        raise ValueError(f"layer {index}: unknown layer type {kind[:MAX_STRING]!r} (known: "
                         f"{known})")
    where = f"layer {index} ({kind})"
    params = _signature(cls)
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise ValueError(f"{where}: unknown argument {unknown[0][:MAX_STRING]!r} (arguments: "
                         f"{', '.join(params)})")
    missing = [k for k, p in params.items() if p.default is p.empty and k not in kwargs]
    if missing:
        raise ValueError(f"{where}: missing argument {missing[0]!r}")
    ints = []
    for key, value in kwargs.items():
        ints += _check_value(value, params[key], f"{where}: argument {key!r}")
    return cls, kwargs, *_implied_elements(kind, kwargs, ints)


def layer_from_spec(spec, *, dtype=np.float32, seed=None, index=0):
    """Build one layer from its spec (see :func:`layer_to_spec`).

    Raises
    ------
    ValueError
        Naming the layer `index` and the argument, for anything :func:`validate_spec` refuses
        and for a value the layer's constructor refuses.
    """
    cls, kwargs, _, implied = _check_layer(spec, index, layer_classes())
    if implied > MAX_ELEMENTS:
        raise ValueError(f"layer {index} ({cls.__name__}): its arguments imply up to {implied:,} "
                         f"parameter elements, more than the limit {MAX_ELEMENTS:,}")
    return _build(cls, kwargs, index, dtype, seed)


def _build(cls, kwargs, index, dtype, seed):
    kwargs = dict(kwargs)
    if _accepts_seed(cls):
        kwargs["seed"] = seed
    try:
        return cls(**kwargs, dtype=dtype)
    except (TypeError, ValueError, NotImplementedError, OverflowError) as exc:
        raise ValueError(f"layer {index} ({cls.__name__}): {exc}") from None


# ------------------------------------------------------------------------------------------------
# Model <-> dict


def _check_input_shape(shape, where="input_shape"):
    if not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(
            _is_int(v) for v in shape):
        raise ValueError(f"{where} must be [C, H, W] (three integers), got {shape!r}")
    if min(shape) < 1 or max(shape) > MAX_ARGUMENT:
        raise ValueError(f"{where} must hold sizes >= 1, got {list(shape)}")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise ValueError(f"{where} {list(shape)} has more than {MAX_INPUT_ELEMENTS:,} values")
    return tuple(int(v) for v in shape)


def _check_classes(classes):
    if classes is None:
        return None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"classes must be a list of strings or null, got "
                         f"{type(classes).__name__}")
    if not classes or len(classes) > MAX_CLASSES or any(len(c) > MAX_STRING for c in classes):
        raise ValueError(f"classes must hold 1 to {MAX_CLASSES} names of at most {MAX_STRING} "
                         f"characters")
    return list(classes)


def _layer_output_shape(layer, shape):
    """``layer.output_shape(shape)``, with the input checks a spec needs (channels, features),
    which ``output_shape`` itself does not make."""
    from ..nn import Flatten, Module

    name = type(layer).__name__
    channels = getattr(layer, "in_channels", None)
    if channels is None and "num_features" in layer.init_args():
        channels = layer.init_args()["num_features"]
    if channels is not None and (len(shape) < 2 or shape[1] != channels):
        raise ValueError(f"{name} expects {channels} input channels, gets shape "
                         f"{_show(shape)}")
    features = getattr(layer, "in_features", None)
    if features is not None and shape[-1] != features:
        raise ValueError(f"{name} expects {features} input features, gets shape "
                         f"{_show(shape)}")
    if isinstance(layer, Flatten) and type(layer).output_shape is Module.output_shape:
        return (shape[0], math.prod(shape[1:]))  # Flatten has no output_shape of its own
    out = tuple(int(v) for v in layer.output_shape(shape))
    if any(v < 1 for v in out[1:]) or math.prod(out[1:]) > MAX_INPUT_ELEMENTS:
        raise ValueError(f"{name} gives output shape {_show(out)} for input {_show(shape)}")
    return out


def _show(shape):
    return "(N, " + ", ".join(str(v) for v in shape[1:]) + ")"


def output_shapes(layers, input_shape):
    """Output shape ``(N, ...)`` of every layer for images of `input_shape` ``(C, H, W)``.

    Raises ``ValueError`` naming the first layer that does not fit its input.
    """
    shape = (1,) + tuple(input_shape)
    shapes = []
    for i, layer in enumerate(layers):
        try:
            shape = _layer_output_shape(layer, shape)
        except (ValueError, TypeError, IndexError, ZeroDivisionError, OverflowError) as exc:
            raise ValueError(f"layer {i} ({type(layer).__name__}) does not fit its input: "
                             f"{exc}") from None
        shapes.append(shape)
    return shapes


def validate_spec(spec):
    """Check a model spec without building it (types, arguments, size bounds).

    Returns
    -------
    list of (class, kwargs)
        The layers, ready for :func:`model_from_spec`.

    Raises
    ------
    ValueError
        Naming the layer index and the argument.
    """
    return [(cls, kwargs) for cls, kwargs, _, _ in _validate(spec)]


def parameter_bounds(spec):
    """``(lower, upper)``: bounds of the number of parameter and buffer elements of the model a
    (valid) spec describes, computed from its arguments alone, so that a model file whose
    tensors cannot match is refused before the model is built."""
    checked = _validate(spec)
    return sum(c[2] for c in checked), sum(c[3] for c in checked)


def _validate(spec):
    if not isinstance(spec, dict):
        raise ValueError(f"a model spec must be a JSON object, got {type(spec).__name__}")
    unknown = [k for k in spec if k not in _SPEC_KEYS]
    if unknown:
        raise ValueError(f"unknown key {str(unknown[0])[:MAX_STRING]!r} in the model spec "
                         f"(keys: {', '.join(sorted(_SPEC_KEYS))})")
    if "input_shape" not in spec:
        raise ValueError("the model spec has no input_shape [C, H, W]")
    shape = _check_input_shape(spec["input_shape"])
    _check_classes(spec.get("classes"))
    if spec.get("name") is not None and not isinstance(spec["name"], str):
        raise ValueError(f"name must be a string, got {type(spec['name']).__name__}")
    InputTransform.from_spec(spec.get("input_transform"), shape)
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError("the model spec needs \"layers\": a non-empty list of layer objects")
    if len(layers) > MAX_LAYERS:
        raise ValueError(f"the model spec has {len(layers)} layers (at most {MAX_LAYERS})")
    classes = layer_classes()
    checked, total = [], 0
    for i, layer in enumerate(layers):
        cls, kwargs, lower, upper = _check_layer(layer, i, classes)
        total += upper
        if total > MAX_ELEMENTS:
            raise ValueError(f"layer {i} ({cls.__name__}): the arguments up to here imply up to "
                             f"{total:,} parameter elements, more than the limit "
                             f"{MAX_ELEMENTS:,}")
        checked.append((cls, kwargs, lower, upper))
    return checked


def model_to_spec(model, input_shape=None):
    """The spec of a ``Sequential`` (see the module docstring).

    Parameters
    ----------
    model : Sequential
        Its ``input_shape``, ``classes`` and ``input_transform`` attributes are recorded.
    input_shape : (C, H, W), optional
        Overrides ``model.input_shape`` (needed when the model has none).

    Returns
    -------
    dict
        ``{"input_shape", "classes", "input_transform", "layers"}``, JSON-serialisable.

    Raises
    ------
    TypeError
        If `model` is not a Sequential or holds a layer that cannot be written as data.
    ValueError
        If the input shape is unknown, or the layers do not fit it.
    """
    from ..nn import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a fastcnn Sequential, got {type(model).__name__}")
    layers = [layer_to_spec(layer) for layer in model.layers]
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("the model's input shape is unknown: set model.input_shape = (C, H, W) "
                         "or pass input_shape=")
    shape = _check_input_shape(list(shape) if isinstance(shape, tuple) else shape)
    shapes = output_shapes(model.layers, shape)
    classes = getattr(model, "classes", None)
    if classes is not None:
        classes = _check_classes([str(c) for c in classes])
        _check_classes_fit(classes, shapes)
    transform = InputTransform.coerce(getattr(model, "input_transform", None), shape)
    return {"input_shape": list(shape), "classes": classes,
            "input_transform": None if transform is None else transform.to_spec(),
            "layers": layers}


def _check_classes_fit(classes, shapes):
    out = shapes[-1]
    if len(out) != 2 or out[1] != len(classes):
        raise ValueError(f"{len(classes)} class names, but the model's output per image has "
                         f"shape {_show(out)}")


def model_from_spec(spec, dtype=np.float32, seed=0):
    """Build the ``Sequential`` a spec describes.

    Parameters
    ----------
    spec : dict
        See the module docstring.
    dtype : float32 (default) or float64
    seed : int, default 0
        Seeds the initialisation: each layer that takes a seed gets its own stream, spawned in
        order from ``np.random.SeedSequence(seed)`` (so LeNet-5's spec with a seed gives the
        weights of ``LeNet5(seed=seed)``).

    Returns
    -------
    Sequential
        In training mode, with ``input_shape``, ``classes`` and ``input_transform`` set.

    Raises
    ------
    ValueError
        Naming the layer index and argument: see :func:`validate_spec`; also for a chain of
        layers that does not fit the input shape, or class names that do not match the output.
    """

    return _model_from_checked(spec, validate_spec(spec), dtype, seed)


def _model_from_checked(spec, checked, dtype, seed):
    """model_from_spec for a spec validated into `checked` ((class, kwargs) per layer)."""
    from ..nn import Sequential

    shape = tuple(spec["input_shape"])
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    n_seeded = sum(_accepts_seed(cls) for cls, _ in checked)
    seeds = iter([int(s.generate_state(1)[0])
                  for s in np.random.SeedSequence(seed).spawn(n_seeded)])
    layers = [_build(cls, kwargs, i, dtype, next(seeds) if _accepts_seed(cls) else None)
              for i, (cls, kwargs) in enumerate(checked)]
    shapes = output_shapes(layers, shape)
    classes = _check_classes(spec.get("classes"))
    if classes is not None:
        _check_classes_fit(classes, shapes)
    model = Sequential(*layers)
    model.input_shape = shape
    model.classes = classes
    model.input_transform = InputTransform.from_spec(spec.get("input_transform"), shape)
    return model


def load_spec(path):
    """Read a spec file (the JSON of the module docstring, e.g. for ``--model spec.json``) and
    validate it (without building the model).

    Raises
    ------
    FileNotFoundError
    ValueError
        Naming the file, for a file that is not JSON or a spec that :func:`validate_spec`
        refuses.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read(MAX_SPEC_BYTES + 1)
    try:
        if len(data) > MAX_SPEC_BYTES:
            raise ValueError(f"larger than {MAX_SPEC_BYTES:,} bytes")
        spec = json.loads(data.decode("utf-8"))
        check_depth(spec)
        validate_spec(spec)
    except RecursionError:
        raise ValueError(f"{path}: the JSON is nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return spec


