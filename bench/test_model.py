"""LeNet-5 benchmarks: a full training step and inference, at batches 1, 16, 64 and 256.

Implementations, one pytest-benchmark group per measurement and batch:

* ``fastcnn``: ``LeNet5`` + ``CrossEntropyLoss`` + ``SGD(momentum=0.9)`` (buffers reused, as in the
  trainer: ``forward(x, copy=False)``, ``backward(g, copy=False)``).
* ``numpy-im2col``: ``fastcnn._reference.lenet5_train_step_numpy`` (plain SGD), the baseline.
* ``numpy-loops``: the same step built from the course-style loop references; only where one step
  fits the loop budget (see ``conftest.py``).
* ``torch``: the same network as ``torch.nn.Sequential`` with ``torch.optim.SGD(momentum=0.9)``;
  inference under ``torch.inference_mode()``.

Before timing, every implementation takes one step from the same parameters and must produce the
reference's loss and updated parameters (the first momentum step equals a plain SGD step).
"""

import functools

import numpy as np
import pytest
from benchutil import BATCHES, DTYPE, assert_matches, loop_reference_note, require_torch
from harness import lenet5_forward_numpy, torch_lenet5

import fastcnn
from fastcnn import _reference as ref

LR, MOMENTUM = 0.01, 0.9
IMPLS = ["fastcnn", "numpy-im2col", "numpy-loops", "torch"]
batch_ids = pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"N{b}")


@functools.cache
def model_data(batch):
    rng = np.random.default_rng([batch, 100])
    x = rng.random((batch, 1, 32, 32), dtype=DTYPE)
    labels = rng.integers(0, 10, batch).astype(np.int64)
    x.setflags(write=False)
    labels.setflags(write=False)
    return x, labels


def initial_params():
    """Fresh copies of one set of LeNet-5 parameters, keyed like PyTorch's Sequential."""
    return {k: v.copy() for k, v in fastcnn.LeNet5(dtype=DTYPE, seed=0).state_dict().items()}


@functools.cache
def reference_step(batch):
    """(loss, parameters after one step) of the NumPy im2col baseline."""
    params = initial_params()
    x, labels = model_data(batch)
    loss = ref.lenet5_train_step_numpy(params, x, labels, LR)
    return loss, params


def lenet5_train_step_loops(params, x, labels, lr):
    """``lenet5_train_step_numpy`` with the loop references for convolution and max-pooling."""
    P = params
    N = x.shape[0]
    a0 = ref.conv2d_loops(x, P["0.weight"], P["0.bias"])
    a1 = ref.relu_ref(a0)
    a2, idx2 = ref.max_pool2d_loops(a1, 2)
    a3 = ref.conv2d_loops(a2, P["3.weight"], P["3.bias"])
    a4 = ref.relu_ref(a3)
    a5, idx5 = ref.max_pool2d_loops(a4, 2)
    a6 = ref.conv2d_loops(a5, P["6.weight"], P["6.bias"])
    a8 = ref.relu_ref(a6).reshape(N, 120)
    a9 = ref.linear_ref(a8, P["9.weight"], P["9.bias"])
    a10 = ref.relu_ref(a9)
    a11 = ref.linear_ref(a10, P["11.weight"], P["11.bias"])
    loss, g11 = ref.softmax_cross_entropy_ref(a11, labels)
    grads = {"11.weight": g11.T @ a10, "11.bias": g11.sum(axis=0)}
    g9 = ref.relu_backward_ref(g11 @ P["11.weight"], a9)
    grads["9.weight"], grads["9.bias"] = g9.T @ a8, g9.sum(axis=0)
    g6 = ref.relu_backward_ref((g9 @ P["9.weight"]).reshape(a6.shape), a6)
    grads["6.weight"], grads["6.bias"] = ref.conv2d_backward_weight_loops(a5, g6, 5)
    g5 = ref.conv2d_backward_input_loops(g6, P["6.weight"], a5.shape[2:])
    g3 = ref.relu_backward_ref(ref.max_pool2d_backward_ref(g5, idx5, a4.shape[2:]), a3)
    grads["3.weight"], grads["3.bias"] = ref.conv2d_backward_weight_loops(a2, g3, 5)
    g2 = ref.conv2d_backward_input_loops(g3, P["3.weight"], a2.shape[2:])
    g0 = ref.relu_backward_ref(ref.max_pool2d_backward_ref(g2, idx2, a1.shape[2:]), a0)
    grads["0.weight"], grads["0.bias"] = ref.conv2d_backward_weight_loops(x, g0, 5)
    for name, grad in grads.items():
        P[name] -= (lr * grad).astype(P[name].dtype, copy=False)
    return loss


def train_step(impl, batch):
    """(step, params): ``step()`` runs one training step and returns the loss; ``params()``
    returns the current parameters as a dict of NumPy arrays."""
    x, labels = model_data(batch)
    if impl == "fastcnn":
        model = fastcnn.LeNet5(dtype=DTYPE, seed=0)
        model.load_state_dict(initial_params())
        loss_fn = fastcnn.CrossEntropyLoss()
        opt = fastcnn.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

        def step():
            loss = loss_fn.forward(model.forward(x, copy=False), labels)
            model.backward(loss_fn.backward(), copy=False)
            opt.step()
            return loss

        return step, model.state_dict
    if impl in ("numpy-im2col", "numpy-loops"):
        params = initial_params()
        fn = ref.lenet5_train_step_numpy if impl == "numpy-im2col" else lenet5_train_step_loops
        return (lambda: fn(params, x, labels, LR)), (lambda: params)
    torch = require_torch()
    model = torch_lenet5()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in initial_params().items()})
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, tlabels = torch.from_numpy(x.copy()), torch.from_numpy(labels.copy())

    def torch_step():
        opt.zero_grad()
        loss = loss_fn(model(tx), tlabels)
        loss.backward()
        opt.step()
        return loss.item()

    return torch_step, (lambda: {k: v.detach().numpy() for k, v in model.state_dict().items()})


@pytest.mark.parametrize("impl", IMPLS)
@batch_ids
def test_train_step(measure, batch, impl):
    loop_note, _ = loop_reference_note(
        ("train",), lambda: lenet5_train_step_loops(initial_params(), *model_data(1), LR), batch)
    if impl == "numpy-loops" and loop_note.startswith("skipped"):
        pytest.skip(f"loop reference {loop_note}")
    step, params = train_step(impl, batch)
    ref_loss, ref_params = reference_step(batch)

    def check(loss):
        assert abs(loss - ref_loss) <= 1e-4 * max(1.0, abs(ref_loss)), \
            f"{impl} loss {loss} != reference {ref_loss}"
        current = params()
        for name, expected in ref_params.items():
            assert_matches(current[name], expected, f"{impl} train step: {name} after one step")

    measure(step, group=f"LeNet-5 train step N={batch}", implementation=impl, batch=batch,
            check=check, op="train_step", lr=LR,
            momentum=0.0 if impl.startswith("numpy") else MOMENTUM, loop_reference=loop_note)


def inference(impl, batch):
    x = model_data(batch)[0]
    if impl == "fastcnn":
        model = fastcnn.LeNet5(dtype=DTYPE, seed=0)
        return lambda: model.forward(x, copy=False)
    params = initial_params()
    if impl == "numpy-im2col":
        return lambda: lenet5_forward_numpy(params, x)
    if impl == "numpy-loops":
        return lambda: lenet5_forward_numpy(params, x, ref.conv2d_loops, ref.max_pool2d_loops)
    torch = require_torch()
    model = torch_lenet5().eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    tx = torch.from_numpy(x.copy())

    def torch_inference():
        with torch.inference_mode():
            return model(tx)

    return torch_inference


@pytest.mark.parametrize("impl", IMPLS)
@batch_ids
def test_inference(measure, batch, impl):
    loop_note, _ = loop_reference_note(("inference",), inference("numpy-loops", 1), batch)
    if impl == "numpy-loops" and loop_note.startswith("skipped"):
        pytest.skip(f"loop reference {loop_note}")
    fn = inference(impl, batch)
    expected = lenet5_forward_numpy(initial_params(), model_data(batch)[0])

    def check(logits):
        logits = logits.numpy() if hasattr(logits, "numpy") else logits
        assert_matches(logits, expected, f"{impl} LeNet-5 logits")

    measure(fn, group=f"LeNet-5 inference N={batch}", implementation=impl, batch=batch,
            check=check, op="inference", loop_reference=loop_note)
