"""What the converters share: the layer chain of a model, the layer classes they know, and the
optional imports (torch, onnx) with an error that says how to install them."""

import importlib
import inspect

import numpy as np

from .. import nn

#: Constructor arguments that describe how a fastcnn layer is built, not what it computes.
BUILD_ARGS = ("dtype", "seed")

#: fastcnn classes that are not layers of a chain.
_NOT_LAYERS = ("Module", "Parameter", "Sequential")


def require(module, extra, what):
    """Import an optional dependency, or raise an ImportError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs the '{module}' package, which is not installed: "
                          f"pip install {extra}") from exc


def fastcnn_layer_classes():
    """``{name: class}`` of fastcnn's built-in layers (every ``fastcnn.nn`` Module subclass but
    the containers and the losses), looked up now, so layers added later are included."""
    out = {}
    for name in nn.__all__:
        cls = getattr(nn, name, None)
        if (isinstance(cls, type) and issubclass(cls, nn.Module) and name not in _NOT_LAYERS
                and not name.endswith("Loss") and not issubclass(cls, nn.Sequential)):
            out[name] = cls
    return out


def chain(model):
    """``[(path, layer), ...]``: the layers of a fastcnn model in order, nested Sequentials
    flattened (``path`` is the state_dict prefix, e.g. ``"3"`` or ``"2.1"``).

    Raises TypeError if `model` is not a fastcnn Module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a fastcnn model (a fastcnn.Sequential or layer), got "
                        f"{type(model).__module__}.{type(model).__name__}")
    if not isinstance(model, nn.Sequential):
        return [("0", model)]
    out = []
    for name, child in model.children():
        if isinstance(child, nn.Sequential):
            out.extend((f"{name}.{path}", layer) for path, layer in chain(child))
        else:
            out.append((name, child))
    return out


def constructor_parameters(cls):
    """``{name: inspect.Parameter}`` of ``cls.__init__`` without self and ``*args/**kwargs``."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p for p in params
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


def plain(value):
    """A hyper-parameter as plain Python data: tuples of ints/floats/strs, no NumPy scalars."""
    if isinstance(value, (list, tuple)):
        return tuple(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def same_value(value, default):
    """True when a hyper-parameter equals its default, a pair ``(1, 1)`` matching ``1``."""
    value, default = plain(value), plain(default)
    if isinstance(value, tuple) and not isinstance(default, tuple):
        return all(v == default for v in value)
    if isinstance(default, tuple) and not isinstance(value, tuple):
        return all(value == d for d in default)
    return value == default
