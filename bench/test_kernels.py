"""Per-kernel benchmarks at the LeNet-5 shapes: fastcnn vs the NumPy references vs PyTorch.

One pytest-benchmark group per operation, layer and batch (``conv2d forward C1 N=64``), holding
``fastcnn``, ``numpy-im2col`` (or ``numpy`` where only one NumPy reference exists),
``numpy-loops`` (where the course-style loop reference exists and fits the time budget, see
``conftest.py``) and ``torch`` (skipped when PyTorch is not installed). Every implementation's
result is checked against the im2col / vectorised NumPy reference before it is timed.

    conv:     C1 1x32x32 -> 6, C3 6x14x14 -> 16, C5 16x5x5 -> 120, all 5x5, stride 1, no padding
    max-pool: S2 6x28x28, S4 16x10x10, 2x2 window, stride 2
    ReLU:     the C1 output (6x28x28) and the C3 output (16x10x10)
"""

import functools

import numpy as np
import pytest
from benchutil import BATCHES, DTYPE, assert_matches, loop_reference_note, require_torch

import fastcnn
from fastcnn import _reference as ref

F = fastcnn.functional

CONV_LAYERS = {"C1": ((1, 32, 32), 6, 5), "C3": ((6, 14, 14), 16, 5), "C5": ((16, 5, 5), 120, 5)}
POOL_LAYERS = {"S2": (6, 28, 28), "S4": (16, 10, 10)}
RELU_SHAPES = {"C1-out": (6, 28, 28), "C3-out": (16, 10, 10)}
CONV_OPS = ["forward", "input_grad", "weight_grad"]
ONE_REFERENCE = "fastcnn._reference has one NumPy version of this op (no loop version)"

batch_ids = pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"N{b}")


def _frozen(*arrays):
    for a in arrays:
        a.setflags(write=False)
    return arrays


# ---------------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------------


@functools.cache
def conv_data(layer, batch):
    """Seeded inputs ``(x, w, b, g)`` of one conv layer; read-only so no call can change them."""
    (c, h, w_), f, k = CONV_LAYERS[layer]
    rng = np.random.default_rng([batch, list(CONV_LAYERS).index(layer)])
    x = rng.standard_normal((batch, c, h, w_), dtype=DTYPE)
    w = rng.standard_normal((f, c, k, k), dtype=DTYPE) / DTYPE(np.sqrt(c * k * k))
    b = rng.standard_normal(f, dtype=DTYPE)
    g = rng.standard_normal((batch, f, h - k + 1, w_ - k + 1), dtype=DTYPE)
    return _frozen(x, w, b, g)


def conv_call(op, impl, layer, batch):
    """A no-argument callable computing `op` with `impl`; it returns a tuple of NumPy arrays."""
    x, w, b, g = conv_data(layer, batch)
    size, k = x.shape[2:], w.shape[2]
    if impl == "fastcnn":
        calls = {"forward": lambda: (F.conv2d(x, w, b),),
                 "input_grad": lambda: (F.conv2d_backward_input(g, w, size, 1, 0),),
                 "weight_grad": lambda: F.conv2d_backward_weight(x, g, k, 1, 0)}
    elif impl == "numpy-im2col":
        calls = {"forward": lambda: (ref.conv2d_im2col(x, w, b),),
                 "input_grad": lambda: (ref.conv2d_backward_input_im2col(g, w, size),),
                 "weight_grad": lambda: ref.conv2d_backward_weight_im2col(x, g, k)}
    elif impl == "numpy-loops":
        calls = {"forward": lambda: (ref.conv2d_loops(x, w, b),),
                 "input_grad": lambda: (ref.conv2d_backward_input_loops(g, w, size),),
                 "weight_grad": lambda: ref.conv2d_backward_weight_loops(x, g, k)}
    else:
        torch = require_torch()
        tx, tw, tb, tg = (torch.from_numpy(a.copy()) for a in (x, w, b, g))
        conv_bw = torch.ops.aten.convolution_backward
        args = ([1, 1], [0, 0], [1, 1], False, [0, 0], 1)

        def input_grad():
            return conv_bw(tg, tx, tw, None, *args, [True, False, False])[:1]

        def weight_grad():
            return conv_bw(tg, tx, tw, [tw.shape[0]], *args, [False, True, True])[1:]

        calls = {"forward": lambda: (torch.nn.functional.conv2d(tx, tw, tb),),
                 "input_grad": input_grad, "weight_grad": weight_grad}
    return calls[op]


@functools.cache
def conv_expected(op, layer, batch):
    return conv_call(op, "numpy-im2col", layer, batch)()


def _to_numpy(results):
    return [r.numpy() if hasattr(r, "numpy") else np.asarray(r) for r in results]


@pytest.mark.parametrize("impl", ["fastcnn", "numpy-im2col", "numpy-loops", "torch"])
@batch_ids
@pytest.mark.parametrize("layer", list(CONV_LAYERS))
@pytest.mark.parametrize("op", CONV_OPS)
def test_conv2d(measure, op, layer, batch, impl):
    loops = conv_call(op, "numpy-loops", layer, 1)
    loop_note, _ = loop_reference_note(("conv", op, layer), loops, batch)
    if impl == "numpy-loops" and loop_note.startswith("skipped"):
        pytest.skip(f"loop reference {loop_note}")
    fn = conv_call(op, impl, layer, batch)
    expected = conv_expected(op, layer, batch)

    def check(result):
        names = ["grad_weight", "grad_bias"] if op == "weight_grad" else [op]
        for actual, desired, name in zip(_to_numpy(result), expected, names):
            assert_matches(actual, desired, f"{impl} conv2d {name} {layer} N={batch}")

    x, w = conv_data(layer, batch)[:2]
    measure(fn, group=f"conv2d {op} {layer} N={batch}", implementation=impl, batch=batch,
            check=check, op=f"conv2d_{op}", layer=layer, input_shape=list(x.shape),
            weight_shape=list(w.shape), loop_reference=loop_note)


# ---------------------------------------------------------------------------------------------
# Max-pooling
# ---------------------------------------------------------------------------------------------


@functools.cache
def pool_data(layer, batch):
    """Seeded input (no ties) and output gradient of a 2x2/2 max-pool; read-only."""
    c, h, w = POOL_LAYERS[layer]
    rng = np.random.default_rng([batch, 10 + list(POOL_LAYERS).index(layer)])
    x = rng.standard_normal((batch, c, h, w), dtype=DTYPE)
    g = rng.standard_normal((batch, c, h // 2, w // 2), dtype=DTYPE)
    return _frozen(x, g)


@functools.cache
def pool_expected(layer, batch):
    y, argmax = ref.max_pool2d_numpy(pool_data(layer, batch)[0], 2)
    return _frozen(y, argmax)


def pool_call(impl, layer, batch):
    """max_pool2d forward by `impl`: returns (y, argmax) as NumPy arrays or tensors."""
    x = pool_data(layer, batch)[0]
    if impl == "fastcnn":
        return lambda: F.max_pool2d(x, 2)
    if impl == "numpy":
        return lambda: ref.max_pool2d_numpy(x, 2)
    if impl == "numpy-loops":
        return lambda: ref.max_pool2d_loops(x, 2)
    torch = require_torch()
    tx = torch.from_numpy(x.copy())
    return lambda: torch.nn.functional.max_pool2d(tx, 2, return_indices=True)


@pytest.mark.parametrize("impl", ["fastcnn", "numpy", "numpy-loops", "torch"])
@batch_ids
@pytest.mark.parametrize("layer", list(POOL_LAYERS))
def test_max_pool2d(measure, layer, batch, impl):
    loop_note, _ = loop_reference_note(("pool", layer), pool_call("numpy-loops", layer, 1), batch)
    if impl == "numpy-loops" and loop_note.startswith("skipped"):
        pytest.skip(f"loop reference {loop_note}")
    fn = pool_call(impl, layer, batch)
    y_ref, argmax_ref = pool_expected(layer, batch)

    def check(result):
        y, argmax = _to_numpy(result)
        assert_matches(y, y_ref, f"{impl} max_pool2d {layer} N={batch}")
        assert np.array_equal(argmax, argmax_ref), f"{impl} max_pool2d argmax differs"

    measure(fn, group=f"max_pool2d forward {layer} N={batch}", implementation=impl,
            batch=batch, check=check, op="max_pool2d", layer=layer,
            input_shape=[batch, *POOL_LAYERS[layer]], loop_reference=loop_note)


def pool_backward_call(impl, x, g, argmax):
    """max_pool2d backward by `impl` for forward input x, output gradient g and its argmax."""
    size = x.shape[2:]
    if impl == "fastcnn":
        return lambda: F.max_pool2d_backward(g, argmax, size)
    if impl == "numpy":
        return lambda: ref.max_pool2d_backward_ref(g, argmax, size)
    torch = require_torch()
    tx, tg, ti = (torch.from_numpy(a.copy()) for a in (x, g, argmax))
    backward = torch.ops.aten.max_pool2d_with_indices_backward
    return lambda: backward(tg, tx, [2, 2], [2, 2], [0, 0], [1, 1], False, ti)


@pytest.mark.parametrize("impl", ["fastcnn", "numpy", "torch"])
@batch_ids
@pytest.mark.parametrize("layer", list(POOL_LAYERS))
def test_max_pool2d_backward(measure, layer, batch, impl):
    x, g = pool_data(layer, batch)
    argmax = pool_expected(layer, batch)[1]
    size = x.shape[2:]
    fn = pool_backward_call(impl, x, g, argmax)
    expected = ref.max_pool2d_backward_ref(g, argmax, size)

    def check(result):
        assert_matches(_to_numpy([result])[0], expected, f"{impl} max_pool2d_backward {layer}")

    measure(fn, group=f"max_pool2d backward {layer} N={batch}", implementation=impl,
            batch=batch, check=check, op="max_pool2d_backward", layer=layer,
            input_shape=list(x.shape), loop_reference=ONE_REFERENCE)


# ---------------------------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------------------------


@functools.cache
def relu_data(where, batch):
    rng = np.random.default_rng([batch, 20 + list(RELU_SHAPES).index(where)])
    shape = (batch,) + RELU_SHAPES[where]
    return _frozen(rng.standard_normal(shape, dtype=DTYPE), rng.standard_normal(shape, dtype=DTYPE))


def relu_call(op, impl, where, batch):
    x, g = relu_data(where, batch)
    if impl == "fastcnn":
        return (lambda: F.relu(x)) if op == "forward" else (lambda: F.relu_backward(g, x))
    if impl == "numpy":
        return (lambda: ref.relu_ref(x)) if op == "forward" else \
            (lambda: ref.relu_backward_ref(g, x))
    torch = require_torch()
    tx, tg = torch.from_numpy(x.copy()), torch.from_numpy(g.copy())
    if op == "forward":
        return lambda: torch.relu(tx)
    return lambda: torch.ops.aten.threshold_backward(tg, tx, 0)  # what autograd runs for ReLU


@pytest.mark.parametrize("impl", ["fastcnn", "numpy", "torch"])
@batch_ids
@pytest.mark.parametrize("where", list(RELU_SHAPES))
@pytest.mark.parametrize("op", ["forward", "backward"])
def test_relu(measure, op, where, batch, impl):
    fn = relu_call(op, impl, where, batch)
    expected = relu_call(op, "numpy", where, batch)()

    def check(result):
        assert_matches(_to_numpy([result])[0], expected, f"{impl} relu {op} {where}")

    measure(fn, group=f"relu {op} {where} N={batch}", implementation=impl, batch=batch,
            check=check, op=f"relu_{op}", layer=where,
            input_shape=[batch, *RELU_SHAPES[where]], loop_reference=ONE_REFERENCE)
