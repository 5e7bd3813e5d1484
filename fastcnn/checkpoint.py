"""Model files and training checkpoints for LeNet-5, on top of :mod:`fastcnn.io`.

Both are ``.npz`` archives written atomically by :func:`fastcnn.io.save_npz_atomic` and readable
with ``np.load(path, allow_pickle=False)``:

- arrays ``"model/0.weight"``, ``"model/0.bias"``, ... hold the weights, keyed as in PyTorch's
  ``nn.Sequential`` (``model.state_dict()``);
- a checkpoint also holds the optimiser's state as ``"optim/<param>.<slot>"`` (e.g.
  ``"optim/0.weight.momentum"``);
- the JSON header holds ``"kind"`` (``"model"`` or ``"checkpoint"``), ``"architecture"``
  (``{"name": "LeNet5", "num_classes": 10, "input_shape": [1, 32, 32]}``), ``"dtype"``,
  ``"classes"``, ``"normalization"`` (``{"mean": m, "std": s}`` or null), ``"epoch"``,
  ``"optimizer"`` (the optimiser's ``state_dict()`` info), ``"history"``, ``"metadata"`` (free-form,
  e.g. where the training data came from) and ``"fastcnn_version"``; :mod:`fastcnn.io` adds
  ``"format"`` and ``"format_version"``. A checkpoint adds ``"step"``, ``"trainer"`` and
  ``"partial"`` (see :class:`fastcnn.Trainer`).

Every loader raises ``ValueError`` naming the file for a damaged, truncated or foreign file and
for a file whose architecture or weights do not fit LeNet-5.
"""

from __future__ import annotations

import numpy as np

from .io import flatten_state, load_npz, save_npz_atomic, unflatten_state
from .model import LeNet5

__all__ = ["load_checkpoint", "load_model", "model_header", "save_checkpoint", "save_model"]

ARCHITECTURE = "LeNet5"
KINDS = ("model", "checkpoint")


def _version():
    from . import __version__  # late import: fastcnn/__init__ imports this module

    return __version__


def model_header(model, *, kind="model", classes=None, normalization=None, epoch=None,
                 optimizer=None, history=None, metadata=None):
    """The JSON header shared by model files and checkpoints (see the module docstring).

    Parameters
    ----------
    model : LeNet5
    kind : {"model", "checkpoint"}
    classes : sequence of str, optional
        Class names; default ``"0"``, ``"1"``, ... ``str(num_classes - 1)``.
    normalization : (float, float) or dict or None
        ``(mean, std)`` (or ``{"mean": ..., "std": ...}``) the inputs were standardised with, on the
        [0, 1] pixel scale, or None.
    epoch : int, optional
        Epochs of training completed.
    optimizer : dict, optional
        The optimiser's settings (the ``info`` half of its ``state_dict()``).
    history : list of dict, optional
        Per-epoch training history.
    metadata : dict, optional
        Any JSON-serialisable extra information.

    Returns
    -------
    dict
    """
    if not isinstance(model, LeNet5):
        raise TypeError(f"model files hold LeNet5 models, got {type(model).__name__}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if classes is None:
        classes = [str(k) for k in range(model.num_classes)]
    classes = [str(c) for c in classes]
    if len(classes) != model.num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {model.num_classes} "
                         f"classes")
    if normalization is not None and not isinstance(normalization, dict):
        mean, std = normalization
        normalization = {"mean": float(mean), "std": float(std)}
    return {
        "kind": kind,
        "architecture": {"name": ARCHITECTURE, "num_classes": int(model.num_classes),
                         "input_shape": list(model.input_shape)},
        "dtype": np.dtype(model.dtype).name,
        "classes": classes,
        "normalization": normalization,
        "epoch": None if epoch is None else int(epoch),
        "optimizer": optimizer,
        "history": list(history) if history is not None else [],
        "metadata": dict(metadata) if metadata is not None else {},
        "fastcnn_version": _version(),
    }


def save_model(path, model, *, classes=None, normalization=None, epoch=None, optimizer=None,
               history=None, metadata=None):
    """Save a LeNet5's weights and a description of it to the ``.npz`` file `path`, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The target file (used as given; no suffix is added). An existing file is replaced only
        once the new one is complete.
    model : LeNet5
    classes, normalization, epoch, optimizer, history, metadata
        Recorded in the header; see :func:`model_header`. `optimizer` may be an optimiser object
        (its settings are recorded, not its state) or its ``state_dict()`` info dict.

    Raises
    ------
    TypeError
        If `model` is not a LeNet5.
    OSError
        If the file cannot be written (an existing file is then unchanged).
    """
    if optimizer is not None and not isinstance(optimizer, dict):
        optimizer = optimizer.state_dict()[1]
    header = model_header(model, kind="model", classes=classes, normalization=normalization,
                          epoch=epoch, optimizer=optimizer, history=history, metadata=metadata)
    save_npz_atomic(path, flatten_state("model", model.state_dict()), header)


def save_checkpoint(path, model, optimizer, *, header=None, **kwargs):
    """Save the model's weights and the optimiser's state (arrays and settings), atomically.

    Parameters
    ----------
    path : str or os.PathLike
    model : LeNet5
    optimizer : SGD or Adam
        Its ``state_dict()`` arrays are stored as ``"optim/..."``, its info as the header's
        ``"optimizer"``.
    header : dict, optional
        Extra header entries (e.g. ``"step"``, ``"trainer"``), merged over the standard ones.
    **kwargs
        ``classes``, ``normalization``, ``epoch``, ``history``, ``metadata`` as in
        :func:`model_header`.
    """
    optim_arrays, optim_info = optimizer.state_dict()
    full = model_header(model, kind="checkpoint", optimizer=optim_info, **kwargs)
    full.update(header or {})
    arrays = flatten_state("model", model.state_dict())
    arrays.update(flatten_state("optim", optim_arrays))
    save_npz_atomic(path, arrays, full)


def _check_header(header, path):
    """Validate the parts of a header that rebuilding a model relies on; return the kwargs for
    ``LeNet5`` (num_classes, dtype)."""
    kind = header.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{path}: not a fastcnn model or checkpoint (kind is {kind!r})")
    arch = header.get("architecture")
    if not isinstance(arch, dict):
        raise ValueError(  # noqa: TRY004 (bad file content)
            f"{path}: no architecture in the header")
    if arch.get("name") != ARCHITECTURE:
        raise ValueError(f"{path}: architecture {arch.get('name')!r} is not supported; this "
                         f"version of fastcnn loads {ARCHITECTURE} only")
    num_classes = arch.get("num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{path}: invalid num_classes {num_classes!r} in the header")
    if list(arch.get("input_shape", [])) != list(LeNet5.input_shape):
        raise ValueError(f"{path}: input_shape {arch.get('input_shape')!r} is not LeNet5's "
                         f"{list(LeNet5.input_shape)}")
    dtype = header.get("dtype")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"{path}: dtype {dtype!r} in the header is not float32 or float64")
    classes = header.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) != num_classes):
        raise ValueError(f"{path}: the header's classes do not match num_classes={num_classes}")
    norm = header.get("normalization")
    if norm is not None:
        ok = (isinstance(norm, dict) and all(isinstance(norm.get(k), (int, float))
                                             for k in ("mean", "std")) and norm["std"] > 0)
        if not ok:
            raise ValueError(f"{path}: invalid normalization {norm!r} in the header")
    return {"num_classes": num_classes, "dtype": np.dtype(dtype)}


def _build_model(arrays, header, path):
    """A LeNet5 as described by `header`, with the ``model/`` weights of `arrays`."""
    kwargs = _check_header(header, path)
    model = LeNet5(**kwargs)
    state = unflatten_state("model", arrays)
    expected = {p.name: p.data for p in model.parameters()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match LeNet5(num_classes="
                         f"{kwargs['num_classes']}): missing {missing}, unexpected {unexpected}")
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise ValueError(f"{path}: weight {name!r} has shape {value.shape}, LeNet5 expects "
                             f"{expected[name].shape}")
        if value.dtype != kwargs["dtype"]:
            raise ValueError(f"{path}: weight {name!r} has dtype {value.dtype}, the header says "
                             f"{kwargs['dtype']}")
    model.load_state_dict(state)
    return model


def load_model(path, return_header=False):
    """Rebuild the LeNet5 saved in a model file (or a checkpoint) by :func:`save_model`.

    Parameters
    ----------
    path : str or os.PathLike
    return_header : bool, default False
        Also return the file's header (class names, normalisation, history, ...).

    Returns
    -------
    model : LeNet5
        With the saved ``num_classes``, dtype and weights.
    header : dict
        Only if `return_header`; see the module docstring for its keys.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        Naming the file, if it is damaged, truncated or not a fastcnn file, describes another
        architecture, or its weights are missing or misshapen.
    """
    arrays, header = load_npz(path)
    model = _build_model(arrays, header, path)
    return (model, header) if return_header else model


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    model : LeNet5
        Rebuilt with the saved weights.
    optim_arrays : dict of str to ndarray
        The optimiser's state arrays (keys without the ``optim/`` prefix), for
        ``optimizer.load_state_dict(optim_arrays, header["optimizer"])``.
    header : dict

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        As :func:`load_model`, and if the file is a model file rather than a checkpoint.
    """
    arrays, header = load_npz(path)
    if header.get("kind") == "model":
        raise ValueError(f"{path}: a model file, not a checkpoint (it holds no optimizer state); "
                         f"training cannot resume from it")
    model = _build_model(arrays, header, path)
    if not isinstance(header.get("optimizer"), dict):
        raise ValueError(  # noqa: TRY004 (bad file content)
            f"{path}: the checkpoint has no optimizer settings")
    return model, unflatten_state("optim", arrays), header
