"""fastcnn.export_onnx and ``fastcnn export``: ONNX Runtime's output equals fastcnn's
evaluation-mode output; the graph passes the full checker; names, metadata and the input
transform; refusals of what ONNX cannot express.

The layers of issue 7 that fastcnn does not have yet are exercised through stand-ins named like
them (``_TorchBacked``: the torch module computes, the exporter sees the name, the constructor
arguments and the parameters, as it would see the real layer's)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import fastcnn
from fastcnn import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _interop_chains import (  # noqa: E402
    random_chain,
    randomise,
    takes,
    zoo_model,
    zoo_params,
)

BATCHES = (1, 3, 64)


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(path, x):
    return _session(path).run(None, {"input": x})[0]


def _lenet(seed=0):
    """LeNet-5 taking its 32x32 input as it is (its 28->32 padding transform is tested apart)."""
    model = fastcnn.LeNet5(seed=seed)
    model.input_transform = None
    for layer in model:
        randomise(layer, np.random.default_rng(seed))
    return model.eval()


def _assert_close(got, expected):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5 * scale)


@pytest.mark.parametrize("batch", BATCHES)
def test_lenet_matches_onnxruntime(tmp_path, batch):
    model = _lenet()
    path = tmp_path / "lenet.onnx"
    fastcnn.export_onnx(model, path)
    x = np.random.default_rng(batch).standard_normal((batch, 1, 32, 32)).astype(np.float32)
    got = _run(path, x)
    assert got.shape == (batch, 10) and got.dtype == np.float32
    _assert_close(got, model.forward(x))


def test_lenet_graph_checks_and_reads_well(tmp_path):
    model = _lenet()
    path = tmp_path / "lenet.onnx"
    returned = fastcnn.export_onnx(model, path, opset=13, classes=list("abcdefghij"))
    proto = onnx.load(str(path))
    assert proto == returned
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 13
    assert [n.name for n in proto.graph.node] == [
        "conv1", "relu1", "maxpool1", "conv2", "relu2", "maxpool2", "conv3", "relu3",
        "flatten1", "fc1", "relu4", "fc2"]
    assert [n.op_type for n in proto.graph.node] == [
        "Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Conv", "Relu", "Flatten", "Gemm",
        "Relu", "Gemm"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert np.array_equal(inits["conv1.weight"], model[0].params["weight"])
    assert np.array_equal(inits["fc2.bias"], model[11].params["bias"])
    assert proto.graph.node[0].doc_string.startswith("layer 0: Conv2d(1, 6")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 1, 32, 32]
    assert proto.graph.input[0].name == "input" and proto.graph.output[0].name == "output"
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == list("abcdefghij")
    assert proto.producer_name == "fastcnn"


def test_exports_evaluation_mode(tmp_path):
    model = _lenet().train()
    fastcnn.export_onnx(model, tmp_path / "m.onnx")
    assert model.training  # the model's own mode is left alone
    x = np.random.default_rng(5).standard_normal((2, 1, 32, 32)).astype(np.float32)
    _assert_close(_run(tmp_path / "m.onnx", x), model.eval().forward(x))


@pytest.mark.parametrize("seed", range(8))
def test_random_chain_matches_onnxruntime(tmp_path, seed):
    rng = np.random.default_rng(100 + seed)
    model, shape = random_chain(rng)
    model.eval()
    path = tmp_path / "chain.onnx"
    fastcnn.export_onnx(model, path, input_shape=shape, opset=int(rng.choice([13, 17, 20])))
    session = _session(path)
    for batch in BATCHES:
        x = rng.standard_normal((batch,) + shape).astype(np.float32)
        _assert_close(session.run(None, {"input": x})[0], model.forward(x))


def test_float64_model_exports_float32(tmp_path):
    model, shape = random_chain(np.random.default_rng(7), dtype=np.float64)
    model.eval()
    fastcnn.export_onnx(model, tmp_path / "m.onnx", input_shape=shape)
    x = np.random.default_rng(8).standard_normal((3,) + shape)
    _assert_close(_run(tmp_path / "m.onnx", x.astype(np.float32)), model.forward(x))


# ------------------------------------------------------------------------------------------
# The input transform


@pytest.mark.parametrize("transform", [
    {"mean": 0.1307, "std": 0.3081, "pad": 2},
    {"mean": [0.5], "std": [0.25]},
    {"pad": (2, 2)},
], ids=["mean-std-pad", "mean-std", "pad"])
def test_transform_nodes_reproduce_preprocessing(tmp_path, transform):
    model = _lenet()
    model.input_transform = transform
    path = tmp_path / "m.onnx"
    proto = fastcnn.export_onnx(model, path, classes=[str(k) for k in range(10)])
    pad = transform.get("pad", 0)
    pad = pad[0] if isinstance(pad, tuple) else pad
    raw = np.random.default_rng(9).uniform(0, 1, (4, 1, 32 - 2 * pad, 32 - 2 * pad))
    raw = raw.astype(np.float32)
    # What the data loaders and `fastcnn predict` do: pad with zeros, then standardise.
    prepared = np.zeros((4, 1, 32, 32), np.float32)
    prepared[:, :, pad:32 - pad, pad:32 - pad] = raw
    mean = np.float32(np.ravel(transform.get("mean", 0.0))[0])
    std = np.float32(np.ravel(transform.get("std", 1.0))[0])
    prepared = (prepared - mean) / std
    _assert_close(_run(path, raw), model.forward(prepared))
    assert [d.dim_param or d.dim_value for d in
            proto.graph.input[0].type.tensor_type.shape.dim] == ["N", 1, 32 - 2 * pad,
                                                                  32 - 2 * pad]
    assert all(n.name.startswith("transform/") for n in proto.graph.node[:-12])
    assert len(proto.graph.node) == 12 + bool(pad) + ("mean" in transform) + ("std" in transform)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["input_transform"])["pad"] == [pad, pad]


def test_transform_per_channel(tmp_path):
    model = nn.Sequential(randomise(nn.Conv2d(3, 2, 3), np.random.default_rng(0)), nn.Flatten())
    mean, std = [0.1, 0.2, 0.3], [0.5, 1.5, 2.5]
    fastcnn.export_onnx(model, tmp_path / "m.onnx", input_shape=(3, 6, 7),
                        input_transform={"mean": mean, "std": std, "pad": 1})
    raw = np.random.default_rng(1).uniform(0, 1, (2, 3, 4, 5)).astype(np.float32)
    prepared = np.pad(raw, ((0, 0), (0, 0), (1, 1), (1, 1)))
    prepared = (prepared - np.float32(mean)[:, None, None]) / np.float32(std)[:, None, None]
    _assert_close(_run(tmp_path / "m.onnx", raw), model.forward(prepared))


@pytest.mark.parametrize("transform, match", [
    ({"mean": 0.1, "scale": 255}, r"keys \['scale'\]"),
    ({"std": 0.0}, "std .* must be > 0"),
    ({"mean": [0.1, 0.2]}, r"one finite value per input channel \(1\)"),
    ({"pad": 16}, "leaves no pixels"),
    ("0.5", "must be a dict"),
])
def test_bad_transform_refused(tmp_path, transform, match):
    with pytest.raises(ValueError, match=match):
        fastcnn.export_onnx(_lenet(), tmp_path / "m.onnx", input_transform=transform)
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------------------
# Layers of issue 7 through stand-ins (and the real layers once fastcnn has them)


class _TorchBacked(nn.Module):
    """A stand-in for a fastcnn layer of the same class name, computed by torch."""

    def __init__(self, torch_module, kwargs):
        super().__init__(dtype=np.float32)
        self._torch = torch_module.eval()
        self._kwargs = dict(kwargs)
        for key, value in self._torch.named_parameters():
            self.params[key] = value.detach().numpy()
        for key, value in self._torch.named_buffers():
            self.buffers[key] = value.detach().numpy()

    def init_args(self):
        return dict(self._kwargs)

    def forward(self, x):
        import torch

        with torch.no_grad():
            return self._torch(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    def output_shape(self, input_shape):
        return self.forward(np.zeros(input_shape, np.float32)).shape


def _stand_in(name, **kwargs):
    torch = pytest.importorskip("torch")
    module = getattr(torch.nn, name)(**kwargs)
    with torch.no_grad():
        for key, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if key == "running_var"
                             else torch.randn_like(tensor) * 0.5)
    return type(name, (_TorchBacked,), {})(module, kwargs)


STAND_INS = [
    ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True),
     (2, 11, 12)),
    ("MaxPool2d", dict(kernel_size=2, ceil_mode=True), (3, 7, 9)),
    ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 10, 11)),
    # ceil_mode where torch drops the last window (it would start in the padding)
    ("MaxPool2d", dict(kernel_size=2, stride=2, padding=1, ceil_mode=True), (2, 5, 6)),
    ("AvgPool2d", dict(kernel_size=2, stride=2, padding=1, ceil_mode=True), (2, 5, 6)),
    ("AvgPool2d", dict(kernel_size=2, stride=2, padding=1, ceil_mode=True,
                       count_include_pad=False), (2, 5, 6)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                       count_include_pad=False), (2, 10, 11)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 10, 11)),
    ("AvgPool2d", dict(kernel_size=(2, 3), stride=1, padding=(1, 0)), (2, 6, 7)),
    ("AdaptiveAvgPool2d", dict(output_size=1), (3, 7, 5)),
    ("AdaptiveAvgPool2d", dict(output_size=(2, 4)), (3, 8, 8)),
    ("AdaptiveAvgPool2d", dict(output_size=(3, 5)), (2, 10, 11)),
    ("AdaptiveAvgPool2d", dict(output_size=(None, 3)), (2, 5, 7)),
    ("AdaptiveMaxPool2d", dict(output_size=1), (2, 5, 6)),
    ("AdaptiveMaxPool2d", dict(output_size=2), (2, 6, 8)),
    ("BatchNorm2d", dict(num_features=3), (3, 5, 4)),
    ("BatchNorm2d", dict(num_features=3, affine=False, eps=1e-3), (3, 5, 4)),
    ("Conv2d", dict(in_channels=4, out_channels=6, kernel_size=3, dilation=2, groups=2,
                    padding="same"), (4, 9, 8)),
    ("Conv2d", dict(in_channels=2, out_channels=3, kernel_size=(2, 4), padding="same"),
     (2, 7, 6)),
    ("Conv2d", dict(in_channels=2, out_channels=3, kernel_size=3, stride=2,
                    padding="valid"), (2, 9, 8)),
    ("Conv2d", dict(in_channels=2, out_channels=3, kernel_size=3, padding=(1, 2),
                    padding_mode="reflect", bias=False), (2, 7, 8)),
    ("Conv2d", dict(in_channels=2, out_channels=3, kernel_size=3, padding=1,
                    padding_mode="replicate"), (2, 6, 6)),
    ("Conv2d", dict(in_channels=2, out_channels=2, kernel_size=3, padding=1,
                    padding_mode="circular"), (2, 6, 5)),
    ("ConvTranspose2d", dict(in_channels=4, out_channels=6, kernel_size=3, stride=2,
                             padding=1, output_padding=1, groups=2, dilation=2), (4, 5, 6)),
    ("ConvTranspose2d", dict(in_channels=2, out_channels=3, kernel_size=(2, 3), stride=(2, 1),
                             bias=False), (2, 4, 5)),
    ("Tanh", {}, (2, 3, 4)),
    ("Sigmoid", {}, (2, 3, 4)),
    ("LeakyReLU", dict(negative_slope=0.2), (2, 3, 4)),
    ("LeakyReLU", {}, (2, 3, 4)),
    ("ELU", dict(alpha=0.7), (2, 3, 4)),
    ("GELU", {}, (2, 3, 4)),
    ("GELU", dict(approximate="tanh"), (2, 3, 4)),
    ("Softmax", dict(dim=1), (4, 3, 2)),
    ("LogSoftmax", dict(dim=-1), (4, 3, 2)),
    ("Dropout", dict(p=0.5), (2, 3, 4)),
    ("Dropout2d", dict(p=0.5), (2, 3, 4)),
    ("Identity", {}, (2, 3, 4)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("name, kwargs, shape", STAND_INS,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(STAND_INS)])
def test_layer_matches_onnxruntime(tmp_path, name, kwargs, shape, opset):
    if kwargs.get("padding_mode") == "circular" and opset < 19:
        with pytest.raises(ValueError, match="needs opset 19"):
            fastcnn.export_onnx(nn.Sequential(_stand_in(name, **kwargs)), tmp_path / "m.onnx",
                                input_shape=shape, opset=opset)
        return
    layer = _stand_in(name, **kwargs)
    model = nn.Sequential(layer)
    proto = fastcnn.export_onnx(model, tmp_path / "m.onnx", input_shape=shape, opset=opset)
    ops = {n.op_type for n in proto.graph.node}
    if name == "GELU":
        assert ("Gelu" in ops) == (opset >= 20)
    if name.startswith("Dropout") or name == "Identity":
        assert ops == {"Identity"}
    x = np.random.default_rng(3).standard_normal((3,) + shape).astype(np.float32)
    _assert_close(_run(tmp_path / "m.onnx", x), layer.forward(x))


def test_batch_norm_1d_after_flatten(tmp_path):
    model = nn.Sequential(nn.Flatten(), _stand_in("BatchNorm1d", num_features=12),
                          _stand_in("Tanh"))
    fastcnn.export_onnx(model, tmp_path / "m.onnx", input_shape=(3, 2, 2))
    x = np.random.default_rng(4).standard_normal((5, 3, 2, 2)).astype(np.float32)
    _assert_close(_run(tmp_path / "m.onnx", x), model.forward(x))


# ------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("name, kwargs, shape, match", [
    ("BatchNorm2d", dict(num_features=2, track_running_stats=False), (2, 3, 3),
     "BatchNorm2d at index 0 cannot be exported to ONNX: .*running statistics"),
    ("AvgPool2d", dict(kernel_size=2, divisor_override=3), (1, 4, 4), "divisor_override"),
    ("AdaptiveMaxPool2d", dict(output_size=3), (1, 8, 8), "bins of unequal sizes"),
    ("MaxPool2d", dict(kernel_size=2, return_indices=True), (1, 4, 4), "return_indices"),
    ("Flatten", dict(start_dim=0), (1, 4, 4), "batch axis"),
])
def test_inexpressible_layers_refused(tmp_path, name, kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        fastcnn.export_onnx(nn.Sequential(_stand_in(name, **kwargs)), tmp_path / "m.onnx",
                            input_shape=shape)
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_layer_refused(tmp_path):
    class Doubler(nn.Module):
        def forward(self, x):
            return 2 * x

    with pytest.raises(ValueError, match=r"Doubler at index 1 cannot be exported to ONNX; "
                                         r"exportable layers: .*Conv2d"):
        fastcnn.export_onnx(nn.Sequential(nn.ReLU(), Doubler()), tmp_path / "m.onnx",
                            input_shape=(1, 4, 4))


@pytest.mark.parametrize("opset, match", [(12, "opset must be an integer from 13"),
                                          (10_000, "opset must be"), (True, "opset must be"),
                                          ("17", "opset must be")])
def test_bad_opset_refused(tmp_path, opset, match):
    with pytest.raises(ValueError, match=match):
        fastcnn.export_onnx(_lenet(), tmp_path / "m.onnx", opset=opset)


def test_bad_input_shape_refused(tmp_path):
    model = nn.Sequential(nn.ReLU())
    with pytest.raises(ValueError, match=r"no input_shape: pass input_shape=\(C, H, W\)"):
        fastcnn.export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"input_shape must be the per-image shape"):
        fastcnn.export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 0, 4))
    with pytest.raises(ValueError, match=r"input transform needs image inputs"):
        fastcnn.export_onnx(model, tmp_path / "m.onnx", input_shape=(4,),
                            input_transform={"mean": 0.5})
    with pytest.raises(TypeError, match="expected a fastcnn model"):
        fastcnn.export_onnx(object(), tmp_path / "m.onnx", input_shape=(1, 4, 4))


def test_linear_only_model(tmp_path):
    rng = np.random.default_rng(11)
    model = nn.Sequential(randomise(nn.Linear(5, 4), rng), nn.ReLU(),
                          randomise(nn.Linear(4, 3, bias=False), rng))
    fastcnn.export_onnx(model, tmp_path / "m.onnx", input_shape=(5,))
    x = rng.standard_normal((6, 5)).astype(np.float32)
    _assert_close(_run(tmp_path / "m.onnx", x), model.forward(x))


def test_identity_only_model(tmp_path):
    model = nn.Sequential(_stand_in("Identity"))
    fastcnn.export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 2, 3))
    x = np.random.default_rng(0).standard_normal((2, 1, 2, 3)).astype(np.float32)
    assert np.array_equal(_run(tmp_path / "m.onnx", x), x)


def test_existing_file_kept_on_failure(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    with pytest.raises(ValueError):
        fastcnn.export_onnx(_lenet(), path, opset=12)
    assert path.read_bytes() == b"old"


def test_missing_onnx_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install \"fastcnn\[onnx\]\""):
        fastcnn.export_onnx(_lenet(), tmp_path / "m.onnx")


# ------------------------------------------------------------------------------------------
# fastcnn export


def test_cli_export_predicts_like_fastcnn(tmp_path, capsys):
    from fastcnn.cli import main

    model = _lenet(3)
    model.input_transform = fastcnn.models.InputTransform(padding=2, mean=[0.1307],
                                                          std=[0.3081])
    classes = [f"class {k}" for k in range(10)]
    fastcnn.save_model(tmp_path / "model.npz", model, classes=classes)
    assert main(["export", str(tmp_path / "model.npz"), str(tmp_path / "model.onnx"),
                 "--opset", "18"]) == 0
    assert "wrote" in capsys.readouterr().out
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert proto.opset_import[0].version == 18
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == classes
    # Raw 28x28 pixels in [0, 1], as `fastcnn predict` reads them; predict pads and normalises.
    raw = np.random.default_rng(6).uniform(0, 1, (7, 1, 28, 28)).astype(np.float32)
    batch = np.zeros((7, 1, 32, 32), np.float32)
    batch[:, :, 2:30, 2:30] = raw
    batch -= np.float32(0.1307)
    batch /= np.float32(0.3081)
    expected = model.forward(batch)
    got = _run(tmp_path / "model.onnx", raw)
    _assert_close(got, expected)
    assert np.array_equal(got.argmax(1), expected.argmax(1))


def test_cli_export_errors(tmp_path, capsys):
    from fastcnn.cli import main

    assert main(["export", str(tmp_path / "missing.npz"), str(tmp_path / "m.onnx")]) == 1
    assert "no such file" in capsys.readouterr().err
    fastcnn.save_model(tmp_path / "model.npz", _lenet())
    assert main(["export", str(tmp_path / "model.npz"), str(tmp_path / "m.onnx"),
                 "--opset", "12"]) == 2
    assert "expected an integer >= 13" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# fastcnn.import_onnx


def test_import_lenet_round_trip(tmp_path):
    model = _lenet(4)
    model.input_transform = {"mean": 0.5, "std": 0.25, "pad": 2}
    fastcnn.export_onnx(model, tmp_path / "m.onnx", classes=list("0123456789"))
    back = fastcnn.import_onnx(tmp_path / "m.onnx")
    assert [type(a) for a in back] == [type(b) for b in model]
    state = back.state_dict()
    for key, value in model.state_dict().items():
        assert np.array_equal(state[key], value), key
    assert back.input_shape == (1, 32, 32) and back.classes == list("0123456789")
    assert back.input_transform == fastcnn.models.InputTransform(padding=2, mean=[0.5],
                                                                 std=[0.25])
    assert not back.training
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    assert np.array_equal(back.forward(x), model.forward(x))


@pytest.mark.parametrize("seed", range(4))
def test_import_random_chain_round_trip(tmp_path, seed):
    rng = np.random.default_rng(200 + seed)
    model, shape = random_chain(rng)
    model.eval()
    fastcnn.export_onnx(model, tmp_path / "m.onnx", input_shape=shape)
    try:
        back = fastcnn.import_onnx(tmp_path / "m.onnx")
    except ValueError as exc:  # a Pad node (AvgPool2d ceil_mode) or ConvTranspose: not imported
        assert "(Pad " in str(exc) or "(ConvTranspose " in str(exc)
        return
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    np.testing.assert_array_equal(back.forward(x), model.forward(x))


@pytest.mark.parametrize("kwargs, shape, ceil", [
    # torch drops the window the ceiling adds (it would start in the padding): as floor
    (dict(kernel_size=2, stride=2, padding=1, ceil_mode=True), (2, 5, 6), False),
    (dict(kernel_size=3, stride=2, ceil_mode=True), (2, 8, 9), True),
    (dict(kernel_size=3, stride=2, padding=1), (2, 8, 8), False),
])
def test_import_pooling_padding(tmp_path, kwargs, shape, ceil):
    """ceil_mode that adds a window is exported as extra end padding and read back as
    ceil_mode; where it adds none, the pooling is exported and read back without it."""
    stand_in = _stand_in("MaxPool2d", **kwargs)
    fastcnn.export_onnx(nn.Sequential(stand_in), tmp_path / "m.onnx", input_shape=shape)
    if ceil and not takes("MaxPool2d", "ceil_mode"):
        with pytest.raises(ValueError, match=r"maps to MaxPool2d\(.*ceil_mode=True"):
            fastcnn.import_onnx(tmp_path / "m.onnx")
        return
    back = fastcnn.import_onnx(tmp_path / "m.onnx")
    assert bool(getattr(back[0], "ceil_mode", False)) == ceil
    x = np.random.default_rng(1).standard_normal((2,) + shape).astype(np.float32)
    np.testing.assert_array_equal(back.forward(x), stand_in.forward(x))


def _graph_file(tmp_path, nodes, initializers=()):
    helper = onnx.helper
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 4])],
        initializer=list(initializers))
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_import_refuses_unsupported_op(tmp_path):
    path = _graph_file(tmp_path, [onnx.helper.make_node("Relu", ["input"], ["r"], name="r"),
                                  onnx.helper.make_node("Cos", ["r"], ["output"], name="c")])
    with pytest.raises(ValueError, match=r"node 1 \(Cos 'c'\): it is not supported; "
                                         r"supported: .*Conv"):
        fastcnn.import_onnx(path)


def test_import_refuses_non_chain(tmp_path):
    path = _graph_file(tmp_path, [onnx.helper.make_node("Relu", ["input"], ["r"], name="r"),
                                  onnx.helper.make_node("Add", ["r", "input"], ["output"],
                                                        name="skip")])
    with pytest.raises(ValueError, match=r"node 1 \(Add 'skip'\) does not take the previous "
                                         r"node's output alone"):
        fastcnn.import_onnx(path)


@pytest.mark.parametrize("name", zoo_params())
def test_zoo_model_matches_onnxruntime(tmp_path, name):
    model = zoo_model(name)
    shape = tuple(model.input_shape)
    fastcnn.export_onnx(model, tmp_path / "m.onnx", input_shape=shape, input_transform={})
    session = _session(tmp_path / "m.onnx")
    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch,) + shape).astype(np.float32)
        x = x.astype(model.dtype)
        _assert_close(session.run(None, {"input": x.astype(np.float32)})[0], model.forward(x))
