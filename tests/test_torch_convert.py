"""fastcnn.to_torch / fastcnn.from_torch: weights, buffers and modes carried exactly, outputs
equal, unsupported modules and arguments named, torch optional."""

import sys
from pathlib import Path

import numpy as np
import pytest

import fastcnn
from fastcnn import nn

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _interop_chains import random_chain, randomise  # noqa: E402

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
    with pytest.raises(ValueError, match=r"torch\.nn\.Flatten at index 0 has start_dim=2"):
        fastcnn.from_torch(torch.nn.Sequential(torch.nn.Flatten(start_dim=2)))


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
