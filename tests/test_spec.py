"""Tests for fastcnn.models: the architecture spec (layer and model to/from JSON data, strict
validation, spec files), model files of random Sequentials (bitwise-identical predictions, plain
npz), LeNet-5-only files of the earlier format, predict / predict_proba / summary on any model."""

import json
import os

import numpy as np
import pytest

import fastcnn
from fastcnn import nn
from fastcnn.checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from fastcnn.models import (
    InputTransform,
    layer_classes,
    layer_from_spec,
    layer_to_spec,
    lenet5_spec,
    load_spec,
    model_from_spec,
    model_to_spec,
    validate_spec,
)
from fastcnn.models.spec import parameter_bounds

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(autouse=True)
def one_thread():
    previous = fastcnn.get_num_threads()
    fastcnn.set_num_threads(1)
    yield
    fastcnn.set_num_threads(previous)


# Constructor arguments (PyTorch's) for each layer class a test builds on its own; layers added
# to fastcnn.nn later are picked up by the registry and built from this table when listed.
FACTORIES = {
    "Conv2d": lambda: nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=1, bias=False, seed=1),
    "Linear": lambda: nn.Linear(5, 4, seed=2),
    "MaxPool2d": lambda: nn.MaxPool2d(3, 2, 1),
    "AvgPool2d": lambda: nn.AvgPool2d(3, 2, 1),
    "BatchNorm2d": lambda: nn.BatchNorm2d(3, eps=1e-3, momentum=0.2),
    "BatchNorm1d": lambda: nn.BatchNorm1d(4),
    "Dropout": lambda: nn.Dropout(0.25),
    "Dropout2d": lambda: nn.Dropout2d(0.25),
    "LeakyReLU": lambda: nn.LeakyReLU(0.2),
    "ConvTranspose2d": lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, seed=3),
    "AdaptiveAvgPool2d": lambda: nn.AdaptiveAvgPool2d((1, 1)),
}


def build(name):
    cls = layer_classes()[name]
    if name in FACTORIES:
        return FACTORIES[name]()
    try:
        return cls()
    except TypeError:
        pytest.skip(f"no constructor arguments known for {name}: add it to FACTORIES")


# --------------------------------------------------------------------------------------------
# Registry and layer specs


def test_registry_finds_every_layer_generically():
    classes = layer_classes()
    for name in ("Conv2d", "Linear", "MaxPool2d", "ReLU", "Flatten"):
        assert classes[name] is getattr(nn, name)
    assert "Sequential" not in classes and "Module" not in classes
    assert "CrossEntropyLoss" not in classes
    for name in ("BatchNorm2d", "Dropout", "AvgPool2d", "Tanh", "ConvTranspose2d"):
        assert (name in classes) == hasattr(nn, name)


def test_registry_picks_up_a_new_layer(monkeypatch):
    class Swish(nn.Module):
        def __init__(self, beta=1.0, *, dtype=np.float32):
            super().__init__(dtype=dtype)
            self.beta = beta

        def forward(self, x):
            return x / (1 + np.exp(-self.beta * x))

    monkeypatch.setattr(nn, "Swish", Swish, raising=False)
    monkeypatch.setattr(nn, "__all__", [*nn.__all__, "Swish"])
    spec = layer_to_spec(Swish(0.5))
    assert spec == {"type": "Swish", "beta": 0.5}
    assert layer_from_spec(spec).beta == 0.5


@pytest.mark.parametrize("name", sorted(layer_classes()))
def test_layer_spec_round_trip(name):
    layer = build(name)
    spec = layer_to_spec(layer)
    assert spec["type"] == name and "dtype" not in spec and "seed" not in spec
    text = json.dumps(spec)  # JSON data: tuples became lists
    assert "(" not in text
    again = layer_from_spec(json.loads(text), dtype=np.float64)
    assert type(again) is type(layer) and again.dtype == np.float64
    assert layer_to_spec(again) == spec
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in layer.state_dict().items()}


def test_conv_spec_keeps_the_arguments_as_given():
    spec = layer_to_spec(nn.Conv2d(1, 16, 3, padding=(1, 2), seed=4))
    assert spec == {"type": "Conv2d", "in_channels": 1, "out_channels": 16, "kernel_size": 3,
                    "stride": 1, "padding": [1, 2], "dilation": 1, "groups": 1, "bias": True,
                    "padding_mode": "zeros"}


def test_layer_to_spec_refuses_a_users_layer():
    class Mine(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="Mine is not a fastcnn.nn layer"):
        layer_to_spec(Mine())


# --------------------------------------------------------------------------------------------
# Validation


def spec_with(layers, input_shape=(1, 8, 8), **extra):
    return {"input_shape": list(input_shape), "layers": layers, **extra}


CONV = {"type": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 3}


@pytest.mark.parametrize("spec, match", [
    ([], "must be a JSON object"),
    (spec_with([CONV], bogus=1), "unknown key 'bogus' in the model spec"),
    ({"layers": [CONV]}, "no input_shape"),
    (spec_with([CONV], input_shape=(1, 8)), r"input_shape must be \[C, H, W\]"),
    (spec_with([CONV], input_shape=(1, True, 8)), r"input_shape must be \[C, H, W\]"),
    (spec_with([CONV], input_shape=(0, 8, 8)), "sizes >= 1"),
    (spec_with([CONV], input_shape=(1, 8192, 8192)), "more than 16,777,216 values"),
    (spec_with([]), "non-empty list"),
    (spec_with([CONV] * 5000), "5000 layers"),
    (spec_with(["Conv2d"]), "layer 0 must be an object"),
    (spec_with([{"in_channels": 1}]), r"layer 0: \"type\" must be a layer class name"),
    (spec_with([CONV, {"type": "Conv3d"}]), "layer 1: unknown layer type 'Conv3d'"),
    (spec_with([{"type": "CrossEntropyLoss"}]), "unknown layer type 'CrossEntropyLoss'"),
    (spec_with([{**CONV, "kernel": 3}]), r"layer 0 \(Conv2d\): unknown argument 'kernel'"),
    (spec_with([{**CONV, "dtype": "float64"}]), r"layer 0 \(Conv2d\): unknown argument 'dtype'"),
    (spec_with([{"type": "Conv2d", "in_channels": 1, "kernel_size": 3}]),
     r"layer 0 \(Conv2d\): missing argument 'out_channels'"),
    (spec_with([{**CONV, "out_channels": True}]),
     r"layer 0 \(Conv2d\): argument 'out_channels' must not be a bool"),
    (spec_with([{**CONV, "bias": 0}]), r"argument 'bias' must be true or false"),
    (spec_with([{**CONV, "kernel_size": [[3, 3]]}]), "must be a list of numbers"),
    (spec_with([{**CONV, "kernel_size": [3] * 9}]), "a list of 9 items"),
    (spec_with([{**CONV, "kernel_size": {"h": 3}}]), "must be a number, a string, a list"),
    (spec_with([{**CONV, "out_channels": 2 ** 30}]), "= 1073741824 is larger than 16777216"),
    (spec_with([{**CONV, "out_channels": 1e300}]), "is larger than 16777216"),
    (spec_with([{**CONV, "padding": "x" * 1000}]), "a string of 1000 characters"),
    (spec_with([{"type": "Linear", "in_features": 2 ** 15, "out_features": 2 ** 14}]),
     r"layer 0 \(Linear\): the arguments up to here imply up to 536,887,296 parameter"),
    (spec_with([CONV], classes="abc"), "classes must be a list of strings"),
    (spec_with([CONV], classes=[1, 2]), "classes must be a list of strings"),
    (spec_with([CONV], name=3), "name must be a string"),
    (spec_with([CONV], input_transform={"padding": -1}), "padding must be an int or a pair"),
    (spec_with([CONV], input_transform={"pad": 1}), "unknown key 'pad'"),
    (spec_with([CONV], input_transform={"normalization": {"mean": [0.5]}}),
     "normalization must be"),
], ids=lambda v: None)
def test_validate_spec_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        validate_spec(spec)


@pytest.mark.parametrize("layers, match", [
    ([{**CONV, "in_channels": 3}], r"layer 0 \(Conv2d\) does not fit its input: Conv2d expects "
                                   r"3 input channels, gets shape \(N, 1, 8, 8\)"),
    ([CONV, {"type": "Linear", "in_features": 72, "out_features": 2}],
     r"layer 1 \(Linear\) does not fit its input: Linear expects 72 input features, gets shape "
     r"\(N, 2, 6, 6\)"),
    ([CONV, {"type": "Flatten"}, {"type": "Linear", "in_features": 71, "out_features": 2}],
     r"layer 2 \(Linear\) does not fit.*expects 71 input features, gets shape \(N, 72\)"),
    ([{**CONV, "kernel_size": 9}], r"layer 0 \(Conv2d\) does not fit its input: kernel"),
    ([{**CONV, "stride": 0}], r"layer 0 \(Conv2d\): stride must be >= 1"),
    ([{**CONV, "kernel_size": 3.0}], r"layer 0 \(Conv2d\): kernel_size must be an int"),
])
def test_model_from_spec_errors(layers, match):
    with pytest.raises(ValueError, match=match):
        model_from_spec(spec_with(layers))


def test_classes_must_match_the_outputs():
    spec = spec_with([CONV, {"type": "Flatten"},
                      {"type": "Linear", "in_features": 72, "out_features": 3}],
                     classes=["a", "b"])
    with pytest.raises(ValueError, match="2 class names, but the model's output per image has "
                                         r"shape \(N, 3\)"):
        model_from_spec(spec)


def test_parameter_bounds():
    lower, upper = parameter_bounds(lenet5_spec())
    assert lower <= sum(p.data.size for p in fastcnn.LeNet5().parameters()) == 61_706 <= upper


# --------------------------------------------------------------------------------------------
# Model specs


def test_lenet5_spec_builds_lenet5_with_the_same_weights():
    model = model_from_spec(lenet5_spec(), seed=7)
    reference = fastcnn.LeNet5(seed=7)
    for (k, a), (k2, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(a, b)
    assert model.input_shape == (1, 32, 32) and model.input_transform == InputTransform(2)
    assert model_to_spec(reference) == {**lenet5_spec(), "layers": model_to_spec(model)["layers"]}


def test_model_spec_is_json_and_round_trips():
    model = fastcnn.Sequential(nn.Conv2d(3, 4, 3, padding=1, seed=1), nn.ReLU(),
                               nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 2, seed=2))
    model.input_shape = (3, 8, 8)
    model.classes = ["cat", "dog"]
    model.input_transform = {"padding": 0, "normalization": {"mean": [0.1, 0.2, 0.3],
                                                             "std": [1, 2, 3]}}
    spec = json.loads(json.dumps(model_to_spec(model)))
    assert spec["input_shape"] == [3, 8, 8] and spec["classes"] == ["cat", "dog"]
    assert spec["input_transform"] == {"padding": [0, 0], "normalization": {
        "mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 3.0]}}
    again = model_from_spec(spec, dtype=np.float64, seed=3)
    assert again.dtype == np.float64 and again.classes == ["cat", "dog"]
    assert model_to_spec(again) == spec


def test_load_spec_file_with_defaults(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({
        "input_shape": [1, 28, 28], "classes": [str(k) for k in range(10)],
        "layers": [{"type": "Conv2d", "in_channels": 1, "out_channels": 8, "kernel_size": 3,
                    "padding": 1},
                   {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 2},
                   {"type": "Flatten"},
                   {"type": "Linear", "in_features": 8 * 14 * 14, "out_features": 10}]}))
    spec = load_spec(path)
    model = model_from_spec(spec)
    assert model[0].stride == (1, 1) and "bias" in model[0].params  # PyTorch's defaults
    assert model[2].stride == (2, 2)
    assert model.num_classes == 10 and model.input_transform is None
    assert model.predict(np.zeros((2, 28, 28), np.float32)).shape == (2,)


@pytest.mark.parametrize("content, match", [
    ("{oops", "Expecting property name"),
    ("[" * 100_000 + "]" * 100_000, "nested"),
    (json.dumps({"input_shape": [1, 2, 2], "layers": [{"type": "Nope"}]}),
     "layer 0: unknown layer type 'Nope'"),
    ("\xff", "codec can't decode"),
], ids=["syntax", "deep", "unknown-layer", "not-utf8"])
def test_load_spec_errors_name_the_file(tmp_path, content, match):
    path = tmp_path / "spec.json"
    path.write_bytes(content.encode("latin1") if content == "\xff" else content.encode())
    with pytest.raises(ValueError, match=match) as info:
        load_spec(path)
    assert str(info.value).startswith(str(path) + ": ") and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# Random Sequentials: save, load, predict bitwise identically


def _randomise_state(model, rng):
    """Non-trivial parameters and buffers (e.g. batch-norm running statistics)."""
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.data.shape) * 0.5
    for _, buf in model.named_buffers():
        if buf.dtype.kind == "f":
            buf[...] = rng.random(buf.shape) + 0.5
        else:
            buf[...] = rng.integers(1, 100, buf.shape)


def random_sequential(rng, dtype):
    """A random chain of the layer classes present (the new ones when they exist)."""
    C = int(rng.integers(1, 4))
    H, W = int(rng.integers(6, 14)), int(rng.integers(6, 14))
    shape = (C, H, W)
    layers, c, h, w = [], C, H, W
    kinds = ["conv", "relu", "maxpool"] + [k for k, name in (
        ("bn", "BatchNorm2d"), ("dropout", "Dropout"), ("avgpool", "AvgPool2d"),
        ("tanh", "Tanh"), ("sigmoid", "Sigmoid"), ("leaky", "LeakyReLU")) if hasattr(nn, name)]
    seed = int(rng.integers(1 << 30))
    for _ in range(int(rng.integers(1, 6))):
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "conv":
            f, k = int(rng.integers(1, 5)), int(rng.integers(1, 4))
            p = int(rng.integers(0, 2))
            if h + 2 * p < k or w + 2 * p < k:
                continue
            s = int(rng.integers(1, 3))
            layers.append(nn.Conv2d(c, f, k, stride=s, padding=p, bias=bool(rng.integers(2)),
                                    dtype=dtype, seed=seed))
            c, h, w = f, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif kind in ("maxpool", "avgpool"):
            if min(h, w) < 2:
                continue
            layers.append((nn.MaxPool2d if kind == "maxpool" else nn.AvgPool2d)(2, dtype=dtype))
            h, w = h // 2, w // 2
        elif kind == "bn":
            layers.append(nn.BatchNorm2d(c, dtype=dtype))
        elif kind == "dropout":
            layers.append(nn.Dropout(0.3, dtype=dtype))
        elif kind == "relu":
            layers.append(nn.ReLU(dtype=dtype))
        elif kind == "tanh":
            layers.append(nn.Tanh(dtype=dtype))
        elif kind == "sigmoid":
            layers.append(nn.Sigmoid(dtype=dtype))
        elif kind == "leaky":
            layers.append(nn.LeakyReLU(0.1, dtype=dtype))
    layers.append(nn.Flatten(dtype=dtype))
    features = c * h * w
    if rng.integers(2):
        hidden = int(rng.integers(2, 9))
        layers += [nn.Linear(features, hidden, dtype=dtype, seed=seed + 1), nn.ReLU(dtype=dtype)]
        features = hidden
    K = int(rng.integers(2, 6))
    layers.append(nn.Linear(features, K, bias=bool(rng.integers(2)), dtype=dtype, seed=seed + 2))
    model = fastcnn.Sequential(*layers)
    model.input_shape = shape
    _randomise_state(model, rng)
    return model


@pytest.mark.parametrize("case", range(12))
def test_random_sequential_round_trip(tmp_path, case):
    rng = np.random.default_rng(case)
    dtype = np.float32 if case % 3 else np.float64
    model = random_sequential(rng, dtype)
    C, H, W = model.input_shape
    norm = None
    if case % 2:
        norm = (list(rng.random(C) * 0.5), list(rng.random(C) + 0.1))
    classes = [f"c{k}" for k in range(model.num_classes)]
    path = tmp_path / "m.npz"
    save_model(path, model, classes=classes, normalization=norm)
    loaded = load_model(path)
    assert loaded.dtype == dtype and not loaded.training and loaded.classes == classes
    x = rng.random((5, C, H, W)).astype(dtype)
    model.input_transform = loaded.input_transform  # the original with the recorded transform
    np.testing.assert_array_equal(loaded.predict_proba(x, batch_size=2), model.predict_proba(x))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=key)
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == sorted(["__header__"] + [f"model/{k}"
                                                           for k in model.state_dict()])


class StandInBatchNorm2d(nn.Module):
    """Eval-mode batch norm with PyTorch's parameters and buffers (an int64 0-d counter too),
    standing in for nn.BatchNorm2d where this tree does not have it yet."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype=np.float32):
        super().__init__(dtype=dtype)
        self.eps = eps
        self.params = {"weight": np.ones(num_features, dtype), "bias": np.zeros(num_features,
                                                                                  dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buffers.update(running_mean=np.zeros(num_features, dtype),
                            running_var=np.ones(num_features, dtype),
                            num_batches_tracked=np.array(0, np.int64))

    def forward(self, x):
        c = (slice(None), None, None)
        scale = self.params["weight"] / np.sqrt(self.buffers["running_var"] + self.eps)
        return ((x - self.buffers["running_mean"][c]) * scale[c]
                + self.params["bias"][c]).astype(self.dtype)


@pytest.fixture
def batchnorm(monkeypatch):
    """nn.BatchNorm2d, or the stand-in registered under its name."""
    if not hasattr(nn, "BatchNorm2d"):
        StandInBatchNorm2d.__name__ = "BatchNorm2d"
        monkeypatch.setattr(nn, "BatchNorm2d", StandInBatchNorm2d, raising=False)
        monkeypatch.setattr(nn, "__all__", [*nn.__all__, "BatchNorm2d"])
    return nn.BatchNorm2d


def test_batchnorm_buffers_round_trip(tmp_path, batchnorm):
    model = fastcnn.Sequential(nn.Conv2d(1, 3, 3, seed=0), batchnorm(3), nn.ReLU(),
                               nn.Flatten(), nn.Linear(3 * 4 * 4, 2, seed=1))
    model.input_shape = (1, 6, 6)
    _randomise_state(model, np.random.default_rng(0))
    save_model(tmp_path / "m.npz", model)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        assert {"model/1.running_mean", "model/1.running_var",
                "model/1.num_batches_tracked"} <= set(f.files)
        assert f["model/1.num_batches_tracked"].dtype == np.int64
    loaded = load_model(tmp_path / "m.npz")
    for key, value in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=key)
    x = np.random.default_rng(1).random((3, 1, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


def test_huge_batchnorm_refused_before_it_is_built(tmp_path, batchnorm):
    model = fastcnn.Sequential(batchnorm(1), nn.Flatten(), nn.Linear(4, 2, seed=1))
    model.input_shape = (1, 2, 2)
    save_model(tmp_path / "m.npz", model)
    _, header = fastcnn.io.load_npz(tmp_path / "m.npz")
    header["architecture"]["layers"][0]["num_features"] = 2 ** 24
    header["architecture"]["input_shape"] = [2 ** 24, 1, 1]
    header["architecture"]["layers"][2]["in_features"] = 2 ** 24
    arrays, _ = fastcnn.io.load_npz(tmp_path / "m.npz")
    for key in ("format", "format_version"):
        header.pop(key)
    fastcnn.io.save_npz_atomic(tmp_path / "big.npz", arrays, header)
    with pytest.raises(ValueError, match="the architecture needs at least 100,663,296 parameter "
                                         "elements but the file's tensors hold 15"):
        load_model(tmp_path / "big.npz")


def test_checkpoint_round_trip_any_model(tmp_path):
    model = random_sequential(np.random.default_rng(3), np.float32)
    opt = fastcnn.Adam(model.parameters(), lr=1e-3)
    x = np.random.default_rng(0).random((4,) + model.input_shape).astype(np.float32)
    loss = fastcnn.CrossEntropyLoss()
    loss.forward(model.forward(x), np.zeros(4, np.int64))
    model.backward(loss.backward())
    opt.step()
    rng_state = np.random.default_rng(5).bit_generator.state
    save_checkpoint(tmp_path / "c.npz", model, opt, trainer={"step": 3, "rng": rng_state},
                    arrays={"perm": np.arange(10)})
    loaded, optim, header, extra = load_checkpoint(tmp_path / "c.npz", return_arrays=True)
    assert header["trainer"] == {"step": 3, "rng": rng_state}
    np.testing.assert_array_equal(extra["perm"], np.arange(10))
    arrays, info = opt.state_dict()
    assert sorted(optim) == sorted(arrays) and header["optimizer"] == info
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=key)
    assert len(load_checkpoint(tmp_path / "c.npz")) == 3


# --------------------------------------------------------------------------------------------
# Files of the LeNet-5-only format (written by the code before this change)


def test_legacy_model_file_loads():
    model, header = load_model(os.path.join(DATA, "legacy_lenet5_model.npz"),
                               return_header=True)
    assert type(model) is fastcnn.Sequential and not model.training
    assert model.input_shape == (1, 32, 32) and model.num_classes == 10
    assert model.classes == header["classes"] and model.classes[3] == "three"
    assert model.input_transform == InputTransform(2, [0.1307], [0.3081])
    probe = np.load(os.path.join(DATA, "legacy_lenet5_probe.npy"))  # raw 28x28 in [0, 1]
    logits = np.load(os.path.join(DATA, "legacy_lenet5_logits.npy"))  # the old code's output
    x = (np.pad(probe[:, None], ((0, 0), (0, 0), (2, 2), (2, 2))) - np.float32(0.1307)) \
        / np.float32(0.3081)
    # (within float32 rounding, not bitwise: the dense products sum in another order since
    # they read the weight by rows, kernel gemm_nt)
    np.testing.assert_allclose(model.forward(x), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.predict(probe), logits.argmax(axis=1))
    z = logits - logits.max(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict_proba(probe),
                               np.exp(z) / np.exp(z).sum(axis=1, keepdims=True), rtol=1e-5,
                               atol=1e-7)


def test_legacy_checkpoint_loads():
    model, optim, header = load_checkpoint(os.path.join(DATA, "legacy_lenet5_checkpoint.npz"))
    assert header["trainer"]["batch_size"] == 16 and header["optimizer"]["type"] == "SGD"
    assert sorted(optim) == sorted(f"{k}.momentum" for k in model.state_dict())
    reference = load_model(os.path.join(DATA, "legacy_lenet5_model.npz"))
    for key, value in reference.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)


# --------------------------------------------------------------------------------------------
# predict / predict_proba / summary on any model


def small_net():
    model = fastcnn.Sequential(nn.Conv2d(3, 8, 3, padding=1, seed=0), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Flatten(), nn.Linear(8 * 8 * 8, 10, seed=1))
    model.input_shape = (3, 16, 16)
    return model


def test_summary_of_another_net():
    result = small_net().summary(print_fn=None)
    assert [r["output_shape"] for r in result.rows] == [(8, 16, 16), (8, 16, 16), (8, 8, 8),
                                                         (512,), (10,)]
    assert [r["params"] for r in result.rows] == [3 * 8 * 9 + 8, 0, 0, 0, 512 * 10 + 10]
    assert [r["macs"] for r in result.rows] == [16 * 16 * 9 * 3 * 8, 0, 0, 0, 5120]
    assert (result.total_params, result.total_macs) == (5354, 60416)


def test_summary_for_any_input_shape():
    net = fastcnn.Sequential(nn.Conv2d(1, 4, 3, seed=0), nn.ReLU(), nn.Conv2d(4, 2, 1, seed=1))
    with pytest.raises(ValueError, match=r"input shape is unknown: pass input_shape"):
        net.summary(print_fn=None)
    result = net.summary((1, 10, 12), print_fn=None)
    assert [r["macs"] for r in result.rows] == [8 * 10 * 9 * 4, 0, 8 * 10 * 4 * 2]
    assert result.rows[-1]["output_shape"] == (2, 8, 10)
    with pytest.raises(ValueError, match=r"layer 4 \(Linear\) does not fit its input"):
        small_net().summary((3, 8, 8), print_fn=None)


def test_summary_prints_a_table():
    lines = []
    text = str(small_net().summary(print_fn=lines.append))
    assert lines == [text] and "5,354" in text and "60,416" in text


def test_predict_restores_each_layers_mode():
    model = small_net()
    model.train()
    model[1].training = False
    x = np.random.default_rng(0).random((3, 3, 16, 16)).astype(np.float32)
    model.predict(x)
    assert model.training and model[0].training and not model[1].training


@pytest.mark.parametrize("images, exc, match", [
    (np.zeros((2, 16, 16), np.float32), ValueError, r"expects images with 3 channels \(N, 3, H, "
                                                    r"W\); got shape \(2, 16, 16\)"),
    (np.zeros((2, 1, 16, 16), np.float32), ValueError, "expects images with 3 channel"),
    (np.zeros((2, 3, 15, 16), np.float32), ValueError, "expects images of 16x16, got"),
    (np.zeros((3, 16, 16, 2), np.float32)[None], ValueError, r"\(N, H, W\) or \(N, C, H, W\)"),
    (np.zeros((2, 3, 16, 16), np.uint8), TypeError, "divide 8-bit images by 255"),
    (np.array([["a"]]), TypeError, "real numeric array"),
])
def test_predict_checks_images(images, exc, match):
    with pytest.raises(exc, match=match):
        small_net().predict(images)


def test_predict_bad_batch_size():
    x = np.zeros((2, 3, 16, 16), np.float32)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        small_net().predict(x, batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        small_net().predict(x, batch_size=2.0)


def test_predict_zero_images():
    model = small_net()
    assert model.predict(np.zeros((0, 3, 16, 16), np.float32)).shape == (0,)
    assert model.predict_proba(np.zeros((0, 3, 16, 16), np.float32)).shape == (0, 10)


def test_normalising_model_refuses_already_normalised_pixels():
    model = small_net()
    model.input_transform = InputTransform(0, [0.5] * 3, [0.2] * 3)
    x = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)
    model.predict(x)
    with pytest.raises(ValueError, match=r"expects raw pixels in \[0, 1\]; got values in"):
        model.predict((x - 0.5) / 0.2)


def test_padding_transform_takes_raw_or_padded_images():
    model = small_net()
    model.input_transform = InputTransform((1, 2))
    raw = np.random.default_rng(1).random((4, 3, 14, 12)).astype(np.float32)
    padded = np.pad(raw, ((0, 0), (0, 0), (1, 1), (2, 2)))
    np.testing.assert_array_equal(model.predict_proba(raw), model.predict_proba(padded))
    with pytest.raises(ValueError, match=r"expects images of 16x16 \(or 14x12, padded to it\)"):
        model.predict(raw[:, :, :13])
