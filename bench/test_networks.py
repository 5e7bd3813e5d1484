"""Whole-network benchmarks of the registry (``harness.NETWORKS``: LeNet-5, the VGG-style net of
issue 9): a training step and inference, fastcnn against PyTorch (and ONNX Runtime for inference,
when installed), the same weights everywhere. One pytest-benchmark group per network,
measurement and batch (``VGG-style (issue 9) train step N=64``).

Before timing, each implementation must reproduce fastcnn's first loss (train step) or logits
(inference) from the shared weights. ``report.py`` measures the same networks in separate
processes, alternating in rounds (the figures to quote); this is the quick in-process view.
"""

import functools

import harness
import numpy as np
import pytest
from benchutil import assert_matches, require_torch

import fastcnn

NETS = list(harness.NETWORKS)
BATCHES = [1, 64]


@functools.cache
def shared(net):
    """(fastcnn model, its weights, layer specs) of a network, built once per session."""
    model = harness.skips_first_input_grad(harness.NETWORKS[net].build(fastcnn))
    weights = {k: v.copy() for k, v in model.state_dict().items()}
    return model, weights, harness.layer_specs(model)


def data(net, batch):
    return harness.batch_data(harness.NETWORKS[net].input_shape, batch)


def torch_twin(net):
    torch = require_torch()
    model = harness.torch_module(shared(net)[2])
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in shared(net)[1].items()})
    return torch, model


def train_step(impl, net, batch):
    x, y = data(net, batch)
    if impl == "fastcnn":
        model = harness.skips_first_input_grad(harness.NETWORKS[net].build(fastcnn))
        model.load_state_dict(shared(net)[1])
        loss_fn = fastcnn.CrossEntropyLoss()
        opt = fastcnn.SGD(model.parameters(), lr=harness.LR, momentum=harness.MOMENTUM)

        def step():
            loss = loss_fn.forward(model.forward(x, copy=False), y)
            model.backward(loss_fn.backward(), copy=False)
            opt.step()
            return loss

        return step
    torch, model = torch_twin(net)
    opt = torch.optim.SGD(model.parameters(), lr=harness.LR, momentum=harness.MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step():
        opt.zero_grad()
        loss = loss_fn(model(tx), ty)
        loss.backward()
        opt.step()
        return loss.item()

    return torch_step


@pytest.mark.parametrize("impl", ["fastcnn", "torch"])
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"N{b}")
@pytest.mark.parametrize("net", NETS)
def test_train_step(measure, net, batch, impl):
    step = train_step(impl, net, batch)
    expected = train_step("fastcnn", net, batch)()

    def check(loss):
        assert abs(loss - expected) <= 1e-4 * max(1.0, abs(expected)), (loss, expected)

    measure(step, group=f"{harness.NETWORKS[net].label} train step N={batch}",
            implementation=impl, batch=batch, check=check, op="train_step")


def inference(impl, net, batch, tmp_path_factory):
    x = data(net, batch)[0]
    if impl == "fastcnn":
        model = shared(net)[0]
        return lambda: model.forward(x, copy=False)
    torch, model = torch_twin(net)
    model.eval()
    if impl == "torch":
        tx = torch.from_numpy(x)

        def torch_infer():
            with torch.inference_mode():
                return model(tx).numpy()

        return torch_infer
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path_factory.mktemp("onnx") / f"{net}.onnx"
    torch.onnx.export(model, (torch.from_numpy(x),), str(path), input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = fastcnn.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("impl", ["fastcnn", "torch", "onnxruntime"])
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"N{b}")
@pytest.mark.parametrize("net", NETS)
def test_inference(measure, net, batch, impl, tmp_path_factory):
    fn = inference(impl, net, batch, tmp_path_factory)
    expected = np.array(shared(net)[0].forward(data(net, batch)[0]))

    def check(logits):
        assert_matches(logits, expected, f"{impl} {net} logits")

    measure(fn, group=f"{harness.NETWORKS[net].label} inference N={batch}",
            implementation=impl, batch=batch, check=check, op="inference")
