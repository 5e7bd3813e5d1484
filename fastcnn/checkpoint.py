"""Model files and training checkpoints for any ``Sequential``, on top of :mod:`fastcnn.io`.

Both are ``.npz`` archives written atomically by :func:`fastcnn.io.save_npz_atomic` and readable
with ``np.load(path, allow_pickle=False)``:

- arrays ``"model/0.weight"``, ``"model/1.running_mean"``, ... hold the parameters and buffers,
  keyed as PyTorch's ``nn.Sequential.state_dict()``;
- a checkpoint also holds the optimiser's state as ``"optim/<param>.<slot>"`` (e.g.
  ``"optim/0.weight.momentum"``) and any extra arrays of the trainer (RNG state, ...) as
  ``"extra/<name>"``;
- the JSON header holds ``"kind"`` (``"model"`` or ``"checkpoint"``), ``"architecture"`` (the
  model's spec, :mod:`fastcnn.models.spec`: ``input_shape``, ``classes``, ``input_transform``
  and ``layers``; the same JSON as a ``--model spec.json`` file), ``"dtype"``, ``"classes"`` and
  ``"normalization"`` (copies of the spec's, for older readers), ``"epoch"``, ``"optimizer"``
  (the optimiser's ``state_dict()`` info), ``"history"``, ``"metadata"`` (free-form) and
  ``"fastcnn_version"``; :mod:`fastcnn.io` adds ``"format"`` and ``"format_version"``. A
  checkpoint adds ``"trainer"`` (the trainer's state) and whatever else the trainer puts in.

Files of the earlier LeNet-5-only format (``"architecture": {"name": "LeNet5", "num_classes":
10, "input_shape": [1, 32, 32]}``, one scalar mean and std) load as the same network.

Loading never runs code and checks before it reads or allocates: the header's fields and the
spec (:func:`fastcnn.models.validate_spec`, bounded sizes) first, then every member's declared
shape, dtype and size (from its ``.npy`` header, without inflating it) against what the spec
implies, then reads each array with a bounded inflater. Every problem is a one-line
``ValueError`` naming the file (and the layer where there is one).
"""

from __future__ import annotations

import math

import numpy as np

from .io import NpzReader, flatten_state, save_npz_atomic
from .models.lenet import lenet5_spec
from .models.spec import MAX_ARGUMENT, _model_from_checked, _validate, model_to_spec
from .models.transform import InputTransform

__all__ = ["load_checkpoint", "load_model", "model_header", "save_checkpoint", "save_model"]

KINDS = ("model", "checkpoint")
LEGACY_ARCHITECTURE = "LeNet5"
#: Largest total size of a checkpoint's extra arrays (bytes).
MAX_EXTRA_BYTES = 2 ** 26
#: Up to this many parameter elements, a model is built to compare its tensors with the file's
#: one by one; a larger one must first be possible with the elements the file holds.
_BUILD_TO_COMPARE = 2 ** 20


def _version():
    from . import __version__  # late import: fastcnn/__init__ imports this module

    return __version__


def _transform(model, shape, normalization, input_transform):
    """The input transform to record: `input_transform` if given, else the model's, with the
    normalisation replaced by `normalization` when that is given."""
    if input_transform is not None:
        return InputTransform.coerce(input_transform, shape)
    transform = InputTransform.coerce(getattr(model, "input_transform", None), shape)
    if normalization is None:
        return transform
    if isinstance(normalization, dict):
        mean, std = normalization.get("mean"), normalization.get("std")
    else:
        mean, std = normalization
    channels = shape[0]
    mean = [mean] * channels if np.ndim(mean) == 0 else list(mean)
    std = [std] * channels if np.ndim(std) == 0 else list(std)
    padding = transform.padding if transform is not None else 0
    out = InputTransform(padding, mean, std)
    out.check(shape)
    return out


def model_header(model, *, kind="model", classes=None, normalization=None, epoch=None,
                 optimizer=None, history=None, metadata=None, input_shape=None,
                 input_transform=None):
    """The JSON header shared by model files and checkpoints (see the module docstring).

    Parameters
    ----------
    model : Sequential
        Any Sequential of ``fastcnn.nn`` layers (e.g. a LeNet5).
    kind : {"model", "checkpoint"}
    classes : sequence of str, optional
        Class names; default ``model.classes``, else ``"0"``, ``"1"``, ... one per output.
    normalization : (mean, std) or dict or None
        The per-channel statistics (a number or one per channel, on the [0, 1] pixel scale) the
        inputs were standardised with; default: the model's input transform's.
    epoch : int, optional
        Epochs of training completed.
    optimizer : dict, optional
        The optimiser's settings (the ``info`` half of its ``state_dict()``).
    history : list of dict, optional
        Per-epoch training history.
    metadata : dict, optional
        Any JSON-serialisable extra information.
    input_shape : (C, H, W), optional
        Default: ``model.input_shape`` (required if the model has none).
    input_transform : InputTransform or dict, optional
        Default: ``model.input_transform`` with `normalization` applied.

    Returns
    -------
    dict

    Raises
    ------
    TypeError
        If `model` is not a Sequential, or holds a layer that cannot be written as a spec.
    ValueError
        For an unknown input shape, class names that do not match the outputs, or a bad
        normalisation.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    spec = model_to_spec(model, input_shape)
    shape = tuple(spec["input_shape"])
    n_out = _outputs(model, shape)
    if classes is None:
        classes = spec["classes"]
    if classes is None:
        classes = [str(k) for k in range(n_out)]
    classes = [str(c) for c in classes]
    if len(classes) != n_out:
        raise ValueError(f"{len(classes)} class names for a model with {n_out} classes")
    transform = _transform(model, shape, normalization, input_transform)
    spec["classes"] = classes
    spec["input_transform"] = None if transform is None else transform.to_spec()
    return {
        "kind": kind,
        "architecture": spec,
        "dtype": np.dtype(model.dtype).name,
        "classes": classes,
        "normalization": _normalization_copy(transform),
        "epoch": None if epoch is None else int(epoch),
        "optimizer": optimizer,
        "history": list(history) if history is not None else [],
        "metadata": dict(metadata) if metadata is not None else {},
        "fastcnn_version": _version(),
    }


def _normalization_copy(transform):
    """The header's ``"normalization"`` (for older readers): ``{"mean": m, "std": s}`` with
    numbers for one channel (the LeNet-5-only format's), lists for several, or None."""
    if transform is None or not transform.normalizes:
        return None
    if len(transform.mean) == 1:
        return {"mean": transform.mean[0], "std": transform.std[0]}
    return {"mean": list(transform.mean), "std": list(transform.std)}


def _outputs(model, shape):
    from .models.spec import output_shapes

    out = output_shapes(model.layers, shape)[-1]
    if len(out) != 2:
        raise ValueError(f"model files hold classifiers, whose output per image is a vector; "
                         f"this model's output is {out[1:]}")
    return out[1]


def save_model(path, model, *, classes=None, normalization=None, epoch=None, optimizer=None,
               history=None, metadata=None, input_shape=None, input_transform=None):
    """Save a Sequential's architecture, parameters and buffers to the ``.npz`` file `path`,
    atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The target file (used as given; no suffix is added). An existing file is replaced only
        once the new one is complete.
    model : Sequential
        Any Sequential of ``fastcnn.nn`` layers, with an ``input_shape`` (or pass one).
    classes, normalization, epoch, optimizer, history, metadata, input_shape, input_transform
        Recorded in the header; see :func:`model_header`. `optimizer` may be an optimiser object
        (its settings are recorded, not its state) or its ``state_dict()`` info dict.

    Raises
    ------
    TypeError
        If `model` is not a Sequential of fastcnn.nn layers.
    ValueError
        See :func:`model_header`.
    OSError
        If the file cannot be written (an existing file is then unchanged).
    """
    if optimizer is not None and not isinstance(optimizer, dict):
        optimizer = optimizer.state_dict()[1]
    header = model_header(model, kind="model", classes=classes, normalization=normalization,
                          epoch=epoch, optimizer=optimizer, history=history, metadata=metadata,
                          input_shape=input_shape, input_transform=input_transform)
    save_npz_atomic(path, flatten_state("model", model.state_dict()), header)


def save_checkpoint(path, model, optimizer, *, header=None, trainer=None, arrays=None, **kwargs):
    """Save the model, the optimiser's state (arrays and settings) and the trainer's state,
    atomically.

    Parameters
    ----------
    path : str or os.PathLike
    model : Sequential
    optimizer : SGD or Adam
        Its ``state_dict()`` arrays are stored as ``"optim/..."``, its info as the header's
        ``"optimizer"``.
    header : dict, optional
        Extra header entries (e.g. ``"step"``), merged over the standard ones.
    trainer : dict, optional
        The trainer's state (JSON-serialisable), stored as the header's ``"trainer"`` (default:
        ``header["trainer"]`` if given, else ``{}``).
    arrays : dict of str to ndarray, optional
        Extra arrays (RNG state, ...), stored as ``"extra/<name>"`` and returned by
        ``load_checkpoint(path, return_arrays=True)``; at most 64 MiB in all.
    **kwargs
        ``classes``, ``normalization``, ``epoch``, ``history``, ``metadata``, ``input_shape``,
        ``input_transform`` as in :func:`model_header`.
    """
    optim_arrays, optim_info = optimizer.state_dict()
    full = model_header(model, kind="checkpoint", optimizer=optim_info, **kwargs)
    full.update(header or {})
    if trainer is not None:
        full["trainer"] = trainer
    full.setdefault("trainer", {})
    out = flatten_state("model", model.state_dict())
    out.update(flatten_state("optim", optim_arrays))
    extra = flatten_state("extra", arrays or {})
    size = sum(np.asarray(a).nbytes for a in extra.values())
    if size > MAX_EXTRA_BYTES:
        raise ValueError(f"extra arrays of {size:,} bytes (at most {MAX_EXTRA_BYTES:,})")
    out.update(extra)
    save_npz_atomic(path, out, full)


# ------------------------------------------------------------------------------------------------
# Loading


def _fail(path, message):
    return ValueError(f"{path}: {message}")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v):
    """True for a finite JSON number (not a bool; a huge int is not finite as a float)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _legacy_spec(header, arch, path):
    """The spec of a file of the LeNet-5-only format."""
    num_classes = arch.get("num_classes")
    if not _is_int(num_classes) or not 1 <= num_classes <= MAX_ARGUMENT:
        raise _fail(path, f"invalid num_classes {repr(num_classes)[:80]} in the header")
    if arch.get("input_shape") != [1, 32, 32]:
        raise _fail(path, f"input_shape {repr(arch.get('input_shape'))[:80]} is not LeNet5's "
                          f"[1, 32, 32]")
    spec = lenet5_spec(num_classes)
    classes = header.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) != num_classes):
        raise _fail(path, f"the header's classes do not match num_classes={num_classes}")
    spec["classes"] = classes
    norm = header.get("normalization")
    if norm is not None:
        ok = (isinstance(norm, dict) and set(norm) == {"mean", "std"}
              and _finite(norm["mean"]) and _finite(norm["std"]) and norm["std"] > 0)
        if not ok:
            raise _fail(path, f"invalid normalization {repr(norm)[:80]} in the header")
        spec["input_transform"]["normalization"] = {"mean": [norm["mean"]],
                                                    "std": [norm["std"]]}
    return spec


def _check_header(header, path):
    """Validate a header's fields and spec; return ``(spec, dtype)``."""
    kind = header.get("kind")
    if kind not in KINDS:
        raise _fail(path, f"not a fastcnn model or checkpoint (kind is {repr(kind)[:80]})")
    arch = header.get("architecture")
    if not isinstance(arch, dict):
        raise _fail(path, "no architecture in the header")
    if "layers" in arch:
        spec = arch
        # The copies for older readers must agree with the spec.
        if header.get("classes") is not None and header["classes"] != spec.get("classes"):
            raise _fail(path, "the header's classes disagree with its architecture")
        if header.get("normalization") is not None:
            try:
                transform = InputTransform.from_spec(spec.get("input_transform"))
            except ValueError as exc:
                raise _fail(path, exc) from None
            if header["normalization"] != _normalization_copy(transform):
                raise _fail(path, "the header's normalization disagrees with its architecture")
    elif arch.get("name") == LEGACY_ARCHITECTURE:
        spec = _legacy_spec(header, arch, path)
    else:
        raise _fail(path, f"architecture {repr(arch.get('name'))[:80]} is not supported; "
                          f"expected a layer list")
    dtype = header.get("dtype")
    if dtype not in ("float32", "float64"):
        raise _fail(path, f"dtype {repr(dtype)[:80]} in the header is not float32 or float64")
    epoch = header.get("epoch")
    if epoch is not None and (not _is_int(epoch) or epoch < 0):
        raise _fail(path, f"invalid epoch {repr(epoch)[:80]} in the header")
    for key, types, name in (("history", list, "a list"), ("metadata", dict, "an object"),
                             ("optimizer", dict, "an object"),
                             ("fastcnn_version", str, "a string")):
        value = header.get(key)
        if value is not None and not isinstance(value, types):
            raise _fail(path, f"the header's {key} must be {name}, got "
                              f"{type(value).__name__}")
    return spec, np.dtype(dtype)


def _layer_of(model, name):
    """``"layer 3 (Conv2d)"`` for a state_dict key such as ``"3.weight"``."""
    head = name.split(".", 1)[0]
    if head.isdigit() and int(head) < len(model.layers):
        return f"layer {head} ({type(model.layers[int(head)]).__name__})"
    return "the model"


def _check_members(npz, model, path, kind):
    """Check every member's declared shape, dtype and size against the model built from the
    spec (nothing read yet). Returns the expected ``{key: array}`` of the model."""
    targets = {p.name: p.data for p in model.parameters()}
    targets.update(model.named_buffers())
    present = {k[len("model/"):]: m for k, m in npz.members.items() if k.startswith("model/")}
    for name in targets:
        if name not in present:
            raise _fail(path, f"{_layer_of(model, name)}: tensor {name!r} is missing (the "
                              f"file's weights do not match its architecture: missing "
                              f"[{name!r}])")
    for name, member in present.items():
        if name not in targets:
            raise _fail(path, f"{_layer_of(model, name)}: unexpected tensor "
                              f"{name[:80]!r} (the file's weights do not match its "
                              f"architecture: unexpected [{name[:80]!r}])")
        target = targets[name]
        if member.shape != target.shape:
            raise _fail(path, f"{_layer_of(model, name)}: weight {name!r} has shape "
                              f"{member.shape} in the file, the architecture implies "
                              f"{target.shape}")
        if member.dtype != target.dtype:
            raise _fail(path, f"{_layer_of(model, name)}: weight {name!r} has dtype "
                              f"{member.dtype}, the header says {target.dtype}")
    params = {p.name: p.data for p in model.parameters()}
    extra_bytes = 0
    for key, member in npz.members.items():
        if key.startswith("model/"):
            continue
        if key.startswith("optim/best:") and kind == "checkpoint":
            # the best epoch's weights and buffers, kept by fastcnn.train beside the optimiser
            name = key[len("optim/best:"):]
            target = targets.get(name)
            if target is None or member.shape != target.shape or member.dtype != target.dtype:
                raise _fail(path, f"best-epoch state {key[:80]!r} does not fit the model's "
                                  f"tensor {name[:80]!r}")
        elif key.startswith("optim/") and kind == "checkpoint":
            name, _, slot = key[len("optim/"):].rpartition(".")
            param = params.get(name)
            if param is None or not slot:
                raise _fail(path, f"optimizer state {key[:80]!r} names no parameter of the "
                                  f"model")
            if member.shape != param.shape or member.dtype.kind not in "fiu":
                raise _fail(path, f"{_layer_of(model, name)}: optimizer state {key!r} has "
                                  f"shape {member.shape} and dtype {member.dtype}, the "
                                  f"parameter is {param.shape} {param.dtype}")
        elif key.startswith("extra/") and kind == "checkpoint":
            extra_bytes += member.nbytes
            if extra_bytes > MAX_EXTRA_BYTES:
                raise _fail(path, f"the checkpoint's extra arrays declare more than "
                                  f"{MAX_EXTRA_BYTES:,} bytes")
        else:
            raise _fail(path, f"unexpected member {key[:80]!r} in a {kind} file")
    return targets


def _open_model(npz, path):
    """Check the header and members of an open file and build its model (weights read)."""
    header = npz.header
    spec, dtype = _check_header(header, path)
    try:
        checked = _validate(spec)
    except ValueError as exc:
        raise _fail(path, exc) from None
    # Before building anything large: the tensors in the file must be able to hold the
    # architecture. (A small model is built, for a message naming the tensor that differs.)
    lower = sum(c[2] for c in checked)
    held = sum(math.prod(m.shape) for k, m in npz.members.items() if k.startswith("model/"))
    if lower > held and lower > _BUILD_TO_COMPARE:
        raise _fail(path, f"the architecture needs at least {lower:,} parameter elements but the "
                          f"file's tensors hold {held:,}")
    try:
        model = _model_from_checked(spec, [c[:2] for c in checked], dtype, 0)
    except ValueError as exc:
        raise _fail(path, exc) from None
    targets = _check_members(npz, model, path, header["kind"])
    state = {name: npz.read("model/" + name) for name in targets}
    model.load_state_dict(state)
    model.eval()
    return model, header


def load_model(path, return_header=False):
    """Rebuild the model saved in a model file (or a checkpoint), from the file alone.

    Parameters
    ----------
    path : str or os.PathLike
    return_header : bool, default False
        Also return the file's header (class names, history, metadata, ...).

    Returns
    -------
    model : Sequential
        In eval mode, with the saved dtype, parameters and buffers, and ``input_shape``,
        ``classes`` and ``input_transform`` set (so ``predict`` takes raw images).
    header : dict
        Only if `return_header`; see the module docstring for its keys.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        Naming the file (and the layer), if it is damaged, truncated or not a fastcnn file, its
        header or architecture is invalid, or its tensors are missing, extra or do not fit the
        architecture.
    """
    with NpzReader(path) as npz:
        model, header = _open_model(npz, npz.path)
    return (model, header) if return_header else model


def load_checkpoint(path, return_arrays=False):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    model : Sequential
        Rebuilt with the saved parameters and buffers (in eval mode: call ``train()``).
    optim_arrays : dict of str to ndarray
        The optimiser's state arrays (keys without the ``optim/`` prefix), for
        ``optimizer.load_state_dict(optim_arrays, header["optimizer"])``.
    header : dict
        With ``"optimizer"`` and ``"trainer"`` (checked to be objects).
    arrays : dict of str to ndarray
        Only if `return_arrays`: the extra arrays (keys without ``extra/``).

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        As :func:`load_model`; and if the file is a model file rather than a checkpoint, or its
        optimiser settings or trainer state are missing or malformed.
    """
    with NpzReader(path) as npz:
        path = npz.path
        header = npz.header
        if header.get("kind") == "model":
            raise _fail(path, "a model file, not a checkpoint (it holds no optimizer state); "
                              "training cannot resume from it")
        optimizer = header.get("optimizer")
        if not isinstance(optimizer, dict):
            raise _fail(path, "the checkpoint has no optimizer settings")
        ok = (isinstance(optimizer.get("type"), str) and _finite(optimizer.get("lr"))
              and _is_int(optimizer.get("steps")) and optimizer["steps"] >= 0)
        if not ok:
            raise _fail(path, f"invalid optimizer settings {repr(optimizer)[:120]} in the "
                              f"checkpoint")
        if not isinstance(header.get("trainer"), dict):
            raise _fail(path, "the checkpoint has no trainer state (its \"trainer\" entry is "
                              "missing or not an object)")
        model, header = _open_model(npz, path)
        optim = {k[len("optim/"):]: npz.read(k) for k in npz.members if k.startswith("optim/")}
        if not return_arrays:
            return model, optim, header
        extra = {k[len("extra/"):]: npz.read(k) for k in npz.members if k.startswith("extra/")}
        return model, optim, header, extra
