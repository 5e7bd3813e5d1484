"""fastcnn.to_torch / fastcnn.from_torch: weights, buffers and modes carried exactly, outputs
equal, unsupported modules and arguments named, torch optional."""

import sys
from pathlib import Path

import numpy as np
import pytest

import fastcnn
from fastcnn import nn
from fastcnn.interop._common import same_value

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _interop_chains import random_chain, randomise, zoo_model, zoo_params  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """torch's own thread pool spins when the cores are shared: one thread keeps tests quick."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert np.array_equal(sa[key], sb[key]), key


def _lenet(dtype=np.float32, seed=0):
    model = fastcnn.LeNet5(dtype=dtype, seed=seed)
    for layer in model:
        randomise(layer, np.random.default_rng(seed))
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_lenet_to_torch_matches(dtype):
    model = _lenet(dtype).eval()
    tmodel = fastcnn.to_torch(model)
    assert isinstance(tmodel, torch.nn.Sequential) and len(tmodel) == len(model)
    assert [type(m).__name__ for m in tmodel] == [type(m).__name__ for m in model]
    expected = torch.float32 if dtype == np.float32 else torch.float64
    assert {p.dtype for p in tmodel.parameters()} == {expected}
    state = tmodel.state_dict()
    for key, value in model.state_dict().items():
        assert np.array_equal(state[key].numpy(), value), key
    x = np.random.default_rng(1).standard_normal((5, 1, 32, 32)).astype(dtype)
    with torch.no_grad():
        got = tmodel(torch.from_numpy(x)).numpy()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, model.forward(x), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_lenet_round_trip_bitwise(dtype, training):
    model = _lenet(dtype).train(training)
    back = fastcnn.from_torch(fastcnn.to_torch(model))
    assert isinstance(back, nn.Sequential) and back.dtype == np.dtype(dtype)
    assert back.training == training and all(m.training == training for m in back)
    _assert_same_state(model, back)
    x = np.random.default_rng(2).standard_normal((3, 1, 32, 32)).astype(dtype)
    assert np.array_equal(back.forward(x), model.forward(x))
    assert [repr(layer) for layer in back] == [repr(layer) for layer in model]


@pytest.mark.parametrize("seed", range(6))
def test_random_chain_round_trip_bitwise(seed):
    rng = np.random.default_rng(seed)
    model, shape = random_chain(rng, dtype=np.float64 if seed % 2 else np.float32)
    model.eval()
    back = fastcnn.from_torch(fastcnn.to_torch(model))
    _assert_same_state(model, back)
    x = rng.standard_normal((4,) + shape).astype(model.dtype)
    assert np.array_equal(back.forward(x), model.forward(x))
    with torch.no_grad():
        got = fastcnn.to_torch(model)(torch.from_numpy(x)).numpy()
    tol = 2e-5 if model.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, model.forward(x), rtol=tol, atol=tol)


def test_modes_are_carried_per_layer():
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten())
    tmodel.train()
    tmodel[1].eval()
    model = fastcnn.from_torch(tmodel)
    assert [m.training for m in model] == [True, False, True] and model.training
    again = fastcnn.to_torch(model)
    assert [m.training for m in again] == [True, False, True] and again.training


def test_nested_sequentials_are_flattened():
    torch.manual_seed(0)
    tmodel = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU()),
        torch.nn.Sequential(torch.nn.Sequential(torch.nn.MaxPool2d(2)), torch.nn.Flatten()),
        torch.nn.Linear(3 * 4 * 4, 5)).eval()
    model = fastcnn.from_torch(tmodel)
    assert [type(m).__name__ for m in model] == ["Conv2d", "ReLU", "MaxPool2d", "Flatten",
                                                 "Linear"]
    assert np.array_equal(model[0].params["weight"], tmodel[0][0].weight.detach().numpy())
    assert np.array_equal(model[4].params["bias"], tmodel[2].bias.detach().numpy())
    x = np.random.default_rng(3).standard_normal((2, 2, 8, 9)).astype(np.float32)
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-5, atol=1e-5)


def test_torch_arguments_read_generically():
    tmodel = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, (3, 5), stride=(2, 1), padding=(1, 2), bias=False),
        torch.nn.MaxPool2d(3, stride=2, padding=1), torch.nn.ReLU(inplace=True),
        torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 5, 2, bias=False))
    model = fastcnn.from_torch(tmodel)
    conv = model[0]
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 5), (2, 1), (1, 2))
    assert "bias" not in conv.params and "bias" not in model[4].params
    pool = model[1]
    assert (pool.kernel_size, pool.stride, pool.padding) == ((3, 3), (2, 2), (1, 1))
    x = np.random.default_rng(4).standard_normal((2, 3, 11, 9)).astype(np.float32)
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(x.copy())).numpy()
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-5, atol=1e-5)


def test_single_module_converts():
    conv = torch.nn.Conv2d(1, 2, 3)
    model = fastcnn.from_torch(conv)
    assert len(model) == 1 and np.array_equal(model[0].params["weight"],
                                              conv.weight.detach().numpy())
    back = fastcnn.to_torch(model[0])
    assert isinstance(back, torch.nn.Sequential) and isinstance(back[0], torch.nn.Conv2d)


def test_unsupported_module_named():
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(),
                                 torch.nn.Sequential(torch.nn.Flatten(),
                                                     torch.nn.LSTM(4, 4)))
    with pytest.raises(TypeError, match=r"torch\.nn\.LSTM at index 2\.1 is not supported; "
                                        r"supported: .*Conv2d.*Linear"):
        fastcnn.from_torch(tmodel)


def test_subclass_of_supported_module_refused():
    class MyConv(torch.nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(TypeError, match=r"MyConv at index 1 is not supported"):
        fastcnn.from_torch(torch.nn.Sequential(torch.nn.ReLU(), MyConv(1, 1, 1)))


def test_custom_container_refused():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.conv(x) + x

    with pytest.raises(TypeError, match=r"Block at index 0 is not supported"):
        fastcnn.from_torch(torch.nn.Sequential(Block()))


def test_unsupported_argument_named():
    with pytest.raises(ValueError, match=r"torch\.nn\.MaxPool2d at index 1 has "
                                         r"return_indices=True, which fastcnn\.MaxPool2d does "
                                         r"not support"):
        fastcnn.from_torch(torch.nn.Sequential(torch.nn.ReLU(),
                                               torch.nn.MaxPool2d(2, return_indices=True)))
    # Flatten(start_dim) is supported now: it converts with its argument.
    assert fastcnn.from_torch(torch.nn.Sequential(torch.nn.Flatten(start_dim=2)))[0] \
        .init_args()["start_dim"] == 2


def test_unsupported_fastcnn_layer_named():
    class Doubler(nn.Module):
        def forward(self, x):
            return 2 * x

    with pytest.raises(TypeError, match=r"Doubler at index 1 is not supported; supported:"):
        fastcnn.to_torch(nn.Sequential(nn.ReLU(), Doubler()))
    with pytest.raises(TypeError, match="expected a fastcnn model"):
        fastcnn.to_torch(torch.nn.ReLU())
    with pytest.raises(TypeError, match="expects a torch.nn.Module"):
        fastcnn.from_torch(nn.ReLU())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=["float64", "float16"])
def test_dtype_follows_torch(dtype):
    tmodel = torch.nn.Sequential(torch.nn.Linear(3, 2)).to(dtype)
    if dtype == torch.float16:
        with pytest.raises(TypeError, match=r"float32 or float64.*torch\.float16"):
            fastcnn.from_torch(tmodel)
        return
    model = fastcnn.from_torch(tmodel)
    assert model.dtype == np.float64 and model[0].params["weight"].dtype == np.float64


def test_mixed_dtypes_refused():
    tmodel = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2).double())
    with pytest.raises(TypeError, match="float32 or float64"):
        fastcnn.from_torch(tmodel)


def test_missing_torch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="pip install torch"):
        fastcnn.to_torch(fastcnn.LeNet5())
    with pytest.raises(ImportError, match="pip install torch"):
        fastcnn.from_torch(object())


def _torch_lenet(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 120, 5), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(120, 84), torch.nn.ReLU(), torch.nn.Linear(84, 10))


def _train_torch(tmodel, images, labels, steps, batch=64, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(tmodel.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    order = torch.randperm(len(x))
    tmodel.train()
    for step in range(steps):
        idx = order[(step * batch) % len(x):][:batch]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(x[idx]), y[idx]).backward()
        opt.step()
    return tmodel.eval()


def _assert_same_predictions(tmodel, images):
    model = fastcnn.from_torch(tmodel)
    assert not model.training
    with torch.no_grad():
        logits = tmodel(torch.from_numpy(images)).numpy()
    ours = np.concatenate([model.forward(images[i:i + 1000]) for i in
                           range(0, len(images), 1000)])
    np.testing.assert_allclose(ours, logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    differ = np.flatnonzero(ours.argmax(1) != logits.argmax(1))
    # A class may flip only where torch's two best logits tie to float32 rounding.
    top2 = np.sort(logits[differ], axis=1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] <= 1e-5 * np.abs(logits).max()), differ
    assert differ.size <= 1
    return ours.argmax(1)


def test_random_torch_net_predicts_the_same():
    data = fastcnn.datasets.load_mnist5k()
    _assert_same_predictions(_torch_lenet(0).eval(), data.test.images)


def test_trained_torch_net_predicts_the_same():
    data = fastcnn.datasets.load_mnist5k()
    tmodel = _train_torch(_torch_lenet(1), data.train.images, data.train.labels, steps=80)
    predictions = _assert_same_predictions(tmodel, data.test.images)
    assert (predictions == data.test.labels).mean() > 0.8  # it did learn


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason=f"Fashion-MNIST not found at {FASHION}")
def test_fashion_mnist_trained_torch_net_predicts_the_same():
    data = fastcnn.datasets.load_idx_dir(FASHION)
    tmodel = _train_torch(_torch_lenet(2), data.train.images, data.train.labels, steps=900,
                          batch=128)
    predictions = _assert_same_predictions(tmodel, data.test.images)
    assert (predictions == data.test.labels).mean() > 0.75


# ------------------------------------------------------------------------------------------
# Layers of issue 7: the real ones once fastcnn has them, stand-ins until then


def _stand_in_class(name):
    """A fastcnn layer class named like ``torch.nn.<name>``, with torch's constructor signature
    (plus keyword-only dtype), computed by torch: what the generic conversion sees of a layer is
    its name, its recorded arguments, its parameters and buffers."""
    import inspect

    torch_cls = getattr(torch.nn, name)
    params = [p for p in inspect.signature(torch_cls.__init__).parameters.values()
              if p.name not in ("device", "dtype")
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    signature = inspect.Signature(params + [inspect.Parameter(
        "dtype", inspect.Parameter.KEYWORD_ONLY, default=np.float32)])

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self")
        dtype = arguments.pop("dtype")
        nn.Module.__init__(self, dtype=dtype)
        self._torch = torch_cls(**arguments).to(
            torch.float64 if np.dtype(dtype) == np.float64 else torch.float32)
        for key, value in self._torch.named_parameters():
            self.params[key] = value.detach().numpy()  # shares memory: loads reach torch
            self.grads[key] = np.zeros_like(self.params[key])
        for key, value in self._torch.named_buffers():
            if key != "num_batches_tracked":  # as a fastcnn layer may well not keep it
                self.buffers[key] = value.detach().numpy()

    __init__.__signature__ = signature

    def forward(self, x):
        self._torch.train(self.training)
        with torch.no_grad():
            return self._torch(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return type(name, (nn.Module,), {"__init__": __init__, "forward": forward})


ISSUE7 = [
    ("BatchNorm2d", dict(num_features=3, eps=1e-3, momentum=0.2), (3, 4, 5)),
    ("BatchNorm2d", dict(num_features=3, affine=False), (3, 4, 5)),
    ("BatchNorm1d", dict(num_features=6), (6,)),
    ("Dropout", dict(p=0.3), (2, 3, 3)),
    ("Dropout2d", dict(p=0.2), (2, 3, 3)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                       count_include_pad=False), (2, 7, 6)),
    ("AdaptiveAvgPool2d", dict(output_size=(2, 3)), (2, 7, 6)),
    ("Tanh", {}, (2, 3, 3)),
    ("Sigmoid", {}, (2, 3, 3)),
    ("LeakyReLU", dict(negative_slope=0.2), (2, 3, 3)),
    ("ELU", dict(alpha=0.5), (2, 3, 3)),
    ("GELU", dict(approximate="tanh"), (2, 3, 3)),
    ("Identity", {}, (2, 3, 3)),
    ("Softmax", dict(dim=1), (4, 3)),
    ("LogSoftmax", dict(dim=1), (4, 3)),
    ("ConvTranspose2d", dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding=1,
                             output_padding=1, groups=2, bias=False), (2, 4, 5)),
]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name, kwargs, shape", ISSUE7,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(ISSUE7)])
def test_issue7_layer_round_trip(monkeypatch, name, kwargs, shape, training):
    if not hasattr(nn, name):
        monkeypatch.setattr(nn, name, _stand_in_class(name), raising=False)
        monkeypatch.setattr(nn, "__all__", list(nn.__all__) + [name])
    torch.manual_seed(0)
    tmodule = getattr(torch.nn, name)(**kwargs)
    with torch.no_grad():
        for key, tensor in list(tmodule.named_parameters()) + list(tmodule.named_buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if key == "running_var"
                             else torch.randn_like(tensor))
    tmodule.train(training)
    model = fastcnn.from_torch(torch.nn.Sequential(torch.nn.ReLU(), tmodule))
    layer = model[1]
    assert type(layer).__name__ == name and layer.training == training
    args = layer.init_args()
    for key, value in kwargs.items():
        assert same_value(args[key], value), key
    tstate = tmodule.state_dict()
    for key, value in layer.state_dict().items():
        assert np.array_equal(value, tstate[key].numpy()), key
    back = fastcnn.to_torch(model)[1]
    assert type(back) is type(tmodule) and repr(back) == repr(tmodule)
    assert back.training == training
    bstate = back.state_dict()
    for key, value in tstate.items():
        if key in layer.state_dict():
            assert torch.equal(bstate[key], value), key
    if not training:
        x = np.random.default_rng(0).standard_normal((3,) + shape).astype(np.float32)
        with torch.no_grad():
            expected = tmodule(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-5, atol=1e-5)


def test_batch_norm_stand_in_unsupported_momentum_none(monkeypatch):
    """A fastcnn constructor's own refusal is reported with the module's index."""
    name = "BatchNorm2d"
    if hasattr(nn, name):
        pytest.skip("the real BatchNorm2d decides what it supports")

    base = _stand_in_class(name)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype=np.float32):
        if momentum is None:
            raise ValueError("momentum=None (cumulative average) is not supported")
        base.__init__(self, num_features, eps, momentum, affine, track_running_stats,
                      dtype=dtype)

    cls = type(name, (base,), {"__init__": __init__})
    monkeypatch.setattr(nn, name, cls, raising=False)
    monkeypatch.setattr(nn, "__all__", list(nn.__all__) + [name])
    with pytest.raises(ValueError, match=r"torch\.nn\.BatchNorm2d at index 0: momentum=None"):
        fastcnn.from_torch(torch.nn.Sequential(torch.nn.BatchNorm2d(2, momentum=None)))


@pytest.mark.parametrize("name", zoo_params())
def test_zoo_model_round_trip(name):
    model = zoo_model(name)
    back = fastcnn.from_torch(fastcnn.to_torch(model))
    _assert_same_state(model, back)
    x = np.random.default_rng(0).standard_normal((2,) + tuple(model.input_shape))
    x = x.astype(model.dtype)
    assert np.array_equal(back.forward(x), model.forward(x))


def test_nested_fastcnn_sequentials_are_flattened():
    rng = np.random.default_rng(12)
    inner = nn.Sequential(randomise(nn.Conv2d(1, 2, 3), rng), nn.ReLU())
    model = nn.Sequential(inner, nn.Sequential(nn.Flatten()),
                          randomise(nn.Linear(2 * 4 * 4, 3), rng)).eval()
    tmodel = fastcnn.to_torch(model)
    assert [type(m).__name__ for m in tmodel] == ["Conv2d", "ReLU", "Flatten", "Linear"]
    assert np.array_equal(tmodel[3].weight.detach().numpy(), model[2].params["weight"])
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    assert np.array_equal(fastcnn.from_torch(tmodel).forward(x), model.forward(x))
