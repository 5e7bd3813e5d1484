"""Conversion between fastcnn models and ``torch.nn.Sequential``, both ways.

fastcnn's layers use PyTorch's class names, constructor arguments, parameter names and buffer
names, so the conversion is generic: a layer maps to the torch class of the same name, built from
the arguments the fastcnn layer was constructed with (``layer.init_args()``); a torch module maps
back to the fastcnn class of the same name, built from the torch module's attributes named like
the fastcnn constructor's parameters (torch keeps nearly every constructor argument under its own
name). The per-class differences are the entries of ``_TORCH_READERS`` (how to read an argument
torch stores differently) and ``_IGNORED_TORCH_ARGS`` (torch arguments that do not change what a
module computes). Weights and buffers are copied exactly; train/eval mode is carried per layer.
"""

import numpy as np

from .. import nn
from ._common import (
    BUILD_ARGS,
    chain,
    constructor_parameters,
    fastcnn_layer_classes,
    plain,
    require,
    same_value,
)

__all__ = ["from_torch", "to_torch"]


def _bias_is_set(module):
    return getattr(module, "bias", None) is not None


#: How to read a fastcnn constructor argument from a torch module where torch does not keep it
#: as an attribute of the same name: ``{argument: reader(module)}`` for every class, or
#: ``{(class name, argument): reader}`` for one.
_TORCH_READERS = {
    "bias": _bias_is_set,  # torch keeps the bias tensor (or None), not the flag
    # Batch norm's bias flag only matters with affine=True (no bias tensor otherwise).
    **{(f"BatchNorm{d}d", "bias"): (lambda m: _bias_is_set(m) or not m.affine)
       for d in (1, 2, 3)},
}

#: torch constructor arguments that do not change what a module computes (or that name where
#: its tensors live): never compared with fastcnn's.
_IGNORED_TORCH_ARGS = ("inplace", "device", "dtype")

#: State that torch keeps and fastcnn may not (it changes no output): ``{class: keys}``.
_TORCH_ONLY_STATE = ("num_batches_tracked",)


def _torch():
    return require("torch", "torch", "converting between fastcnn and PyTorch")


def _supported(torch):
    return sorted(name for name in fastcnn_layer_classes() if hasattr(torch.nn, name))


def _unsupported(what, where, supported):
    return TypeError(f"{what} at index {where} is not supported; supported: "
                     f"{', '.join(supported)} (and nested Sequentials)")


# ------------------------------------------------------------------------------------------
# fastcnn -> torch


def to_torch(model):
    """A ``torch.nn.Sequential`` computing what the fastcnn `model` computes.

    Parameters
    ----------
    model : fastcnn.Sequential (LeNet5, a model from a file, ...) or a single fastcnn layer
        Nested Sequentials are flattened.

    Returns
    -------
    torch.nn.Sequential
        One torch module per layer (same class name and constructor arguments), with copies of
        the weights and buffers (bitwise), the model's dtype (float32 or float64) and each
        layer's train/eval mode. Its ``state_dict`` keys are the fastcnn model's (for a model
        with nested Sequentials, those of the flattened chain: ``"0.weight"``, ``"1.weight"``).

    Raises
    ------
    ImportError
        If torch is not installed.
    TypeError
        Naming the first layer torch has no counterpart for, and listing those it has.
    ValueError
        If a layer was built with an argument torch's module does not take.

    Shape
    -----
    As the fastcnn model: ``(N, C, H, W)`` in, whatever the last layer gives out.
    """
    torch = _torch()
    layers = chain(model)
    supported = _supported(torch)
    torch_dtype = {np.dtype(np.float32): torch.float32,
                   np.dtype(np.float64): torch.float64}[np.dtype(model.dtype)]
    modules = []
    for path, layer in layers:
        name = type(layer).__name__
        if name not in supported or type(layer) is not fastcnn_layer_classes()[name]:
            raise _unsupported(f"{type(layer).__module__}.{name}", path, supported)
        modules.append(_layer_to_torch(torch, layer, path, torch_dtype))
    seq = torch.nn.Sequential(*modules)
    seq.training = model.training  # the container's own flag; each layer keeps its own
    return seq


def _layer_to_torch(torch, layer, path, torch_dtype):
    name = type(layer).__name__
    torch_cls = getattr(torch.nn, name)
    torch_params = constructor_parameters(torch_cls)
    own_params = constructor_parameters(type(layer))
    kwargs = {}
    for arg, value in layer.init_args().items():
        if arg in BUILD_ARGS:
            continue
        if arg not in torch_params:
            default = own_params[arg].default if arg in own_params else None
            if arg in own_params and same_value(value, default):
                continue  # a fastcnn-only argument left at its default changes nothing
            raise ValueError(f"fastcnn.{name} at index {path} has {arg}={value!r}, which "
                             f"torch.nn.{name} does not take")
        kwargs[arg] = plain(value)
    if "dtype" in torch_params:
        kwargs["dtype"] = torch_dtype
    module = torch_cls(**kwargs)
    state = {key: torch.from_numpy(np.array(value, copy=True))
             for key, value in layer.state_dict().items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _TORCH_ONLY_STATE]
    if missing or unexpected:
        raise ValueError(f"fastcnn.{name} at index {path}: its state does not match "
                         f"torch.nn.{name}'s (missing {missing}, unexpected {unexpected})")
    module.to(torch_dtype)  # parameterless modules and any buffer torch created itself
    module.train(layer.training)
    return module


# ------------------------------------------------------------------------------------------
# torch -> fastcnn


def from_torch(module):
    """A fastcnn ``Sequential`` computing what the torch `module` computes.

    Parameters
    ----------
    module : torch.nn.Sequential (nested Sequentials are flattened) or a single torch module
        Each module must be exactly a ``torch.nn`` class that fastcnn has too (same name).

    Returns
    -------
    fastcnn.Sequential
        Layers built with the torch modules' hyper-parameters, holding copies of their weights
        and buffers (bitwise), in the dtype of the torch parameters (float32 or float64), each
        in its torch module's train/eval mode.

    Raises
    ------
    ImportError
        If torch is not installed.
    TypeError
        Naming the first module fastcnn does not support (``"torch.nn.LSTM at index 3 is not
        supported; supported: ..."``), or if the tensors are not all float32 or all float64.
    ValueError
        Naming a module whose hyper-parameter fastcnn's layer does not support (``dilation``,
        ``return_indices``, ...), as its constructor reports it.

    Shape
    -----
    As the torch module's.
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module (a torch.nn.Sequential), got "
                        f"{type(module).__module__}.{type(module).__name__}")
    modules = _torch_chain(torch, module)
    supported = _supported(torch)
    ours = fastcnn_layer_classes()
    for path, child in modules:
        name = type(child).__name__
        if name not in supported or type(child) is not getattr(torch.nn, name):
            public = getattr(torch.nn, name, None) is type(child)
            what = f"torch.nn.{name}" if public else \
                f"{type(child).__module__}.{type(child).__qualname__}"
            raise _unsupported(what, path, supported)
    dtype = _torch_dtype(torch, module)
    layers = [_layer_from_torch(ours[type(child).__name__], child, path, dtype)
              for path, child in modules]
    model = nn.Sequential(*layers) if layers else nn.Sequential()
    model.training = module.training  # the container's own flag; each layer keeps its own
    return model


def _torch_chain(torch, module, prefix=""):
    if type(module) is not torch.nn.Sequential:
        return [(prefix.rstrip(".") or "0", module)]
    out = []
    for name, child in module.named_children():
        if isinstance(child, torch.nn.Sequential):
            out.extend(_torch_chain(torch, child, f"{prefix}{name}."))
        else:
            out.append((f"{prefix}{name}", child))
    return out


def _torch_dtype(torch, module):
    dtypes = {t.dtype for t in list(module.parameters()) + list(module.buffers())
              if t.is_floating_point()}
    if not dtypes:
        return np.float32
    if dtypes == {torch.float32}:
        return np.float32
    if dtypes == {torch.float64}:
        return np.float64
    raise TypeError(f"fastcnn runs float32 or float64 models; the torch module's tensors are "
                    f"{sorted(str(d) for d in dtypes)} (convert with module.float() or "
                    f".double())")


def _layer_from_torch(cls, module, path, dtype):
    name = cls.__name__
    own_params = constructor_parameters(cls)
    torch_params = constructor_parameters(type(module))
    kwargs = {}
    for arg in own_params:
        if arg in BUILD_ARGS:
            continue
        reader = _TORCH_READERS.get((name, arg), _TORCH_READERS.get(arg))
        if reader is not None:
            kwargs[arg] = plain(reader(module))
        elif hasattr(module, arg):
            kwargs[arg] = plain(getattr(module, arg))
        elif arg in torch_params:
            raise ValueError(f"torch.nn.{name} at index {path}: cannot read its argument "
                             f"{arg!r} (fastcnn.interop needs a reader for it)")
    for arg, param in torch_params.items():
        if arg in own_params or arg in _IGNORED_TORCH_ARGS or not hasattr(module, arg):
            continue
        reader = _TORCH_READERS.get((name, arg), _TORCH_READERS.get(arg))
        value = reader(module) if reader is not None else getattr(module, arg)
        if hasattr(value, "shape"):  # a tensor, not the argument's value
            raise ValueError(f"torch.nn.{name} at index {path}: cannot read its argument "
                             f"{arg!r} (fastcnn.interop needs a reader for it)")
        if not same_value(value, param.default):
            raise ValueError(f"torch.nn.{name} at index {path} has {arg}={plain(value)!r}, "
                             f"which fastcnn.{name} does not support (only the default "
                             f"{param.default!r})")
    try:
        layer = cls(**kwargs, dtype=dtype)
    except NotImplementedError as exc:  # an argument fastcnn's layer takes but refuses
        bad = ", ".join(f"{k}={plain(v)!r}" for k, v in kwargs.items()
                        if k in str(exc).split("(")[-1] or f"{k}=" in str(exc))
        raise ValueError(f"torch.nn.{name} at index {path} has {bad}, which fastcnn.{name} "
                         f"does not support: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"torch.nn.{name} at index {path}: {exc}") from exc
    state = module.state_dict()
    expected = layer.state_dict()
    extra = [k for k in state if k not in expected and k not in _TORCH_ONLY_STATE]
    missing = [k for k in expected if k not in state]
    if extra or missing:
        raise ValueError(f"torch.nn.{name} at index {path}: its state does not match "
                         f"fastcnn.{name}'s (missing {missing}, unexpected {extra})")
    layer.load_state_dict({k: v.detach().cpu().numpy() for k, v in state.items()
                           if k in expected})
    layer.train(module.training)
    return layer
