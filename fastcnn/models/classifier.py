"""Prediction and summaries for any ``Sequential`` (``Sequential.predict``, ``predict_proba``
and ``summary`` are thin methods over these functions).

Images are raw pixels in [0, 1] (divide 8-bit images by 255), ``(N, H, W)`` for one channel or
``(N, C, H, W)``; the model's recorded input transform (zero padding, per-channel
normalisation) is applied to them, batch by batch, in the model's dtype.
"""

from __future__ import annotations

import operator

import numpy as np

from .spec import output_shapes
from .transform import InputTransform

__all__ = ["Summary", "predict", "predict_proba", "summary"]


def _batch_size(batch_size):
    if isinstance(batch_size, (bool, np.bool_)):
        raise TypeError(f"batch_size must be an int, got {batch_size!r}")
    try:
        batch_size = operator.index(batch_size)
    except TypeError:
        raise TypeError(f"batch_size must be an int, got {batch_size!r}") from None
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return batch_size


def _images(model, images):
    """Check raw images against the model: ``(N, C, h, w)`` array and whether to pad them."""
    x = images if isinstance(images, np.ndarray) else np.asarray(images)
    if x.dtype.kind not in "fiub" or x.dtype.kind == "b":
        raise TypeError(f"images must be a real numeric array (pixels in [0, 1]), got dtype "
                        f"{x.dtype}")
    if x.dtype.kind in "iu":
        raise TypeError(f"images have dtype {x.dtype}: pass floating-point pixels in [0, 1] "
                        f"(divide 8-bit images by 255)")
    shape = getattr(model, "input_shape", None)
    transform = InputTransform.coerce(getattr(model, "input_transform", None))
    name = type(model).__name__
    if x.ndim == 3:
        if shape is not None and shape[0] != 1:
            raise ValueError(f"{name} expects images with {shape[0]} channels (N, {shape[0]}, H, "
                             f"W); got shape {x.shape}, which has no channel axis")
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"{name} expects images of shape (N, H, W) or (N, C, H, W), got "
                         f"{x.shape}")
    pad = transform is not None and transform.padding != (0, 0)
    if shape is not None:
        C, H, W = shape
        raw = transform.raw_size(shape) if transform is not None else (H, W)
        if x.shape[1] != C:
            raise ValueError(f"{name} expects images with {C} channel(s), got shape {x.shape}")
        if x.shape[2:] == (H, W):
            pad = False
        elif x.shape[2:] != raw:
            also = f" (or {raw[0]}x{raw[1]}, padded to it)" if raw != (H, W) else ""
            raise ValueError(f"{name} expects images of {H}x{W}{also}, got shape {x.shape}")
    if transform is not None and transform.normalizes and x.size:
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (0.0 <= lo and hi <= 1.0):
            raise ValueError(f"{name} normalises its input itself and expects raw pixels in "
                             f"[0, 1]; got values in [{lo:g}, {hi:g}]")
    return x, transform, pad


def _run(model, images, batch_size, fn, width, dtype):
    """``fn(logits)`` for each batch, in eval mode (each layer's mode restored after)."""
    batch_size = _batch_size(batch_size)
    x, transform, pad = _images(model, images)
    n = x.shape[0]
    modes = [(m, m.training) for m in _modules(model)]
    model.eval()
    try:
        out = None
        for start in range(0, n, batch_size):
            chunk = x[start:start + batch_size]
            if transform is not None:
                chunk = transform.apply(chunk, model.dtype, pad)
            else:
                chunk = np.ascontiguousarray(chunk, dtype=model.dtype)
            result = fn(model.forward(chunk, copy=False))
            if out is None:
                out = np.empty((n,) + result.shape[1:], dtype=result.dtype)
            out[start:start + chunk.shape[0]] = result
    finally:
        for layer, mode in modes:
            layer.training = mode
    if out is None:  # no images
        out = np.empty((0,) + width(x.shape), dtype=dtype)
    return out


def _modules(model):
    out, stack = [], [model]
    while stack:
        m = stack.pop()
        out.append(m)
        stack.extend(child for _, child in m.children())
    return out


def _out_width(model):
    def width(x_shape):
        try:
            return tuple(output_shapes(model.layers, x_shape[1:])[-1][1:])
        except ValueError:
            return (0,)
    return width


def predict_proba(model, images, batch_size=1024):
    """Class probabilities: the softmax of the logits, ``(N, num_classes)`` in the model's dtype.

    See :func:`predict` for `images` and `batch_size`.
    """
    def softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    return _run(model, images, batch_size, softmax, _out_width(model), model.dtype)


def predict(model, images, batch_size=1024):
    """Predicted class indices ``(N,)`` (int64): the argmax of the logits.

    Parameters
    ----------
    model : Sequential
        Its ``input_shape`` (C, H, W) and ``input_transform`` are used when set.
    images : array_like
        Raw images with pixels in [0, 1]: ``(N, H, W)`` (one channel) or ``(N, C, H, W)``, at
        the raw size (the model's input size minus the transform's padding, which is then
        added) or already at the model's input size. A model that normalises its input checks
        that the pixels are in [0, 1].
    batch_size : int, default 1024
        Images per forward pass (in eval mode; every layer's mode is restored afterwards).

    Raises
    ------
    ValueError
        For images whose channels or size do not fit the model, or (for a normalising model)
        pixels outside [0, 1].
    TypeError
        For integer or non-numeric images.
    """
    return _run(model, images, batch_size, lambda z: z.argmax(axis=1), lambda s: (),
                np.int64)


class Summary:
    """The result of :func:`summary`: ``rows`` (one dict per layer: ``index``, ``layer``,
    ``output_shape`` (without N), ``params``, ``macs`` per image), ``total_params``,
    ``total_macs``, ``input_shape``, and ``str()`` the table."""

    def __init__(self, rows, input_shape):
        self.rows = rows
        self.input_shape = tuple(input_shape)
        self.total_params = sum(r["params"] for r in rows)
        self.total_macs = sum(r["macs"] for r in rows)

    def __str__(self):
        names = [r["layer"] for r in self.rows]
        width = max([len(s) for s in names] + [5])
        shapes = [str(r["output_shape"]) for r in self.rows]
        sw = max([len(s) for s in shapes] + [13])
        lines = [f"{'#':>2}  {'layer':<{width}}  {'output':<{sw}} {'params':>10} "
                 f"{'MACs/image':>13}"]
        for r, s in zip(self.rows, shapes):
            lines.append(f"{r['index']:>2}  {r['layer']:<{width}}  {s:<{sw}} {r['params']:>10,} "
                         f"{r['macs']:>13,}")
        lines.append(f"{'':>2}  {'total':<{width}}  {'':<{sw}} {self.total_params:>10,} "
                     f"{self.total_macs:>13,}")
        return "\n".join(lines)

    def __repr__(self):
        return (f"Summary(input_shape={self.input_shape}, total_params={self.total_params}, "
                f"total_macs={self.total_macs})")


def summary(model, input_shape=None, print_fn=print):
    """Output shape, parameters and multiply-adds per image of every layer.

    Parameters
    ----------
    model : Sequential
    input_shape : (C, H, W), optional
        Default: ``model.input_shape``.
    print_fn : callable or None, default print
        Called with the table's text; None prints nothing.

    Returns
    -------
    Summary
        ``.rows`` (dicts), ``.total_params``, ``.total_macs``; ``str()`` is the table.

    Raises
    ------
    ValueError
        If the input shape is unknown or a layer does not fit its input.
    """
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("the model's input shape is unknown: pass input_shape=(C, H, W)")
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {shape}")
    shapes = output_shapes(model.layers, shape)
    rows, prev = [], (1,) + shape
    for i, (layer, out) in enumerate(zip(model.layers, shapes)):
        rows.append({"index": i, "layer": repr(layer), "output_shape": tuple(out[1:]),
                     "params": int(sum(p.size for p in layer.params.values())),
                     "macs": int(layer.macs(prev))})
        prev = out
    result = Summary(rows, shape)
    if print_fn is not None:
        print_fn(str(result))
    return result
