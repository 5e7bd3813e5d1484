"""Time a model's training step and inference on this machine (``fastcnn bench``).

In the spirit of ``caffe time``: random inputs of the model's shape, a few warm-up calls, then
``iterations`` timed calls; each result gives the median and the min-max in milliseconds per
batch and images per second. The model's weights, buffers and train/eval mode are restored
afterwards. Nothing here starts processes or imports other frameworks; the comparison
with PyTorch and ONNX Runtime is the development report in ``bench/`` of a checkout.
"""

import statistics
import time

import numpy as np

__all__ = ["time_model", "format_timing"]


def _stats(times, batch_size):
    med = statistics.median(times)
    return {"median_ms": 1e3 * med, "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times),
            "images_per_s": batch_size / med if med > 0 else float("inf"), "calls": len(times)}


def _time(fn, iterations, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def time_model(model, input_shape, batch_size=64, iterations=20, *, warmup=3, layers=False,
               lr=0.01, momentum=0.9, seed=0):
    """Time a training step (forward, cross-entropy, backward, SGD step) and inference (the
    model frozen as deployed, ``Module.freeze``). The model's weights, mode and frozen state
    are restored afterwards.

    Parameters
    ----------
    model : fastcnn.nn.Module
        Usually a ``Sequential`` (e.g. ``LeNet5()`` or ``fastcnn.load_model(path)``) whose
        output is ``(N, num_classes)`` logits.
    input_shape : tuple of int
        ``(C, H, W)`` of one image.
    batch_size, iterations : int
        Images per batch (>= 1) and timed calls per measurement (>= 1).
    warmup : int, keyword-only
        Untimed calls before each measurement (>= 0).
    layers : bool, keyword-only
        Also time every layer of a ``Sequential`` on its own (forward and backward, unfused).
    lr, momentum : float, keyword-only
        Of the ``SGD`` optimiser of the training step.
    seed : int, keyword-only
        Seeds the random images and labels.

    Returns
    -------
    dict
        ``"train"`` and ``"inference"``: ``median_ms``, ``min_ms``, ``max_ms`` (per batch),
        ``images_per_s`` (from the median), ``calls``; ``"layers"`` (if `layers`): a list of
        ``(index, layer repr, forward stats, backward stats)``; and the settings.

    Shape
    -----
    - Input: ``(batch_size, *input_shape)`` random normal images.
    - Output of the model: ``(batch_size, num_classes)``.
    """
    from .nn import CrossEntropyLoss, Module, Sequential
    from .optim import SGD

    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastcnn Module, got {type(model).__name__}")
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}")
    shape = tuple(_check_int(s, "input_shape entry", 1) for s in shape)
    batch_size = _check_int(batch_size, "batch_size", 1)
    iterations = _check_int(iterations, "iterations", 1)
    warmup = _check_int(warmup, "warmup", 0)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size,) + shape).astype(model.dtype)
    logits = model.forward(x)
    if logits.ndim != 2:
        raise ValueError(f"the model's output must be (N, num_classes) logits, got shape "
                         f"{logits.shape} for input {x.shape}")
    y = rng.integers(0, logits.shape[1], batch_size).astype(np.int64)
    fused = {"copy": False} if isinstance(model, Sequential) else {}
    saved = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    was_training = model.training
    loss_fn = CrossEntropyLoss(dtype=model.dtype)
    opt = SGD(model.parameters(), lr=lr, momentum=momentum)

    def train_step():
        loss_fn.forward(model.forward(x, **fused), y)
        model.backward(loss_fn.backward(), **fused)
        opt.step()

    def infer():
        model.forward(x, **fused)

    result = {"batch_size": batch_size, "input_shape": shape, "iterations": iterations}
    was_frozen = model.frozen
    model.unfreeze()
    try:
        model.train()
        result["train"] = _stats(_time(train_step, iterations, warmup), batch_size)
        if layers and isinstance(model, Sequential):
            result["layers"] = _time_layers(model, x, y, loss_fn, iterations, warmup)
        model.freeze()  # inference as deployed: the weights fixed (Module.freeze)
        result["inference"] = _stats(_time(infer, iterations, warmup), batch_size)
    finally:
        model.unfreeze()
        model.load_state_dict(saved)
        if was_frozen:
            model.freeze()
        else:
            model.train(was_training)
    return result


def _time_layers(model, x, y, loss_fn, iterations, warmup):
    """Per-layer forward and backward times of a Sequential, each layer called on its own."""
    n = len(model)
    fwd, bwd = [[] for _ in range(n)], [[] for _ in range(n)]
    for it in range(warmup + iterations):
        acts = [x]
        for i, layer in enumerate(model):
            t0 = time.perf_counter()
            acts.append(layer.forward(acts[-1]))
            if it >= warmup:
                fwd[i].append(time.perf_counter() - t0)
        loss_fn.forward(acts[-1], y)
        grad = loss_fn.backward()
        for i in reversed(range(n)):
            t0 = time.perf_counter()
            grad = model[i].backward(grad)
            if it >= warmup:
                bwd[i].append(time.perf_counter() - t0)
            if grad is None:  # a layer that skips its input gradient ends the pass
                break
    batch = x.shape[0]
    return [(i, repr(layer), _stats(fwd[i], batch), _stats(bwd[i], batch) if bwd[i] else None)
            for i, layer in enumerate(model)]


def format_timing(result, title=None):
    """A short text table of :func:`time_model`'s result."""
    lines = [title] if title else []
    lines.append(f"{'measurement':<16} {'ms/batch (median)':>18} {'min-max ms':>17} "
                 f"{'images/s':>11}")
    for key, label in (("train", "training step"), ("inference", "inference")):
        s = result[key]
        lines.append(f"{label:<16} {s['median_ms']:>18.3f} "
                     f"{s['min_ms']:>8.3f}-{s['max_ms']:<8.3f} {s['images_per_s']:>11,.0f}")
    if result.get("layers"):
        width = max(len(r[1]) for r in result["layers"])
        lines += ["", "per layer (each layer called on its own, unfused), median ms:",
                  f"{'#':>2}  {'layer':<{width}}  {'forward':>9} {'backward':>9}"]
        for i, name, f, b in result["layers"]:
            back = f"{b['median_ms']:>9.3f}" if b else f"{'-':>9}"
            lines.append(f"{i:>2}  {name:<{width}}  {f['median_ms']:>9.3f} {back}")
    return "\n".join(lines)
