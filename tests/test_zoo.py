"""Tests for the model zoo (fastcnn.models.zoo): every model builds for 1 and 3 channels and
several input sizes, LeNet-5 keeps its weights, model files round-trip bitwise, training is
bitwise the same for 1 and 2 threads. Models whose layers this build lacks are skipped, naming
the layers (they arrive with the layer branches)."""

import numpy as np
import pytest

import fastcnn
from fastcnn.checkpoint import load_model, save_model
from fastcnn.datasets import Dataset, Split
from fastcnn.models import get_model, lenet5_spec, list_models, model_to_spec
from fastcnn.models.zoo import describe_model, get_spec, missing_layers


def zoo_param(name):
    missing = missing_layers(name)
    return pytest.param(name, id=name, marks=pytest.mark.skipif(
        bool(missing), reason=f"{name} needs {', '.join(missing)}, not in this build"))


ZOO = [zoo_param(name) for name in list_models()]


@pytest.fixture(autouse=True)
def restore_threads():
    previous = fastcnn.get_num_threads()
    yield
    fastcnn.set_num_threads(previous)


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_list_and_describe():
    names = list_models()
    assert names[:3] == ["lenet5", "lenet5-1998", "bnnet"]
    for name in names:
        text = describe_model(name)
        assert text and "\n" not in text
    assert "most accurate" in describe_model("bnnet")


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lenet5_is_todays_lenet5(seed, dtype):
    model = get_model("lenet5", seed=seed, dtype=dtype)
    reference = fastcnn.LeNet5(seed=seed, dtype=dtype)
    assert same_state(model, reference)
    assert model.input_shape == (1, 32, 32) and model.input_transform.padding == (2, 2)
    assert get_spec("lenet5")["layers"] == lenet5_spec()["layers"]
    assert model.layers[0].compute_input_grad is False
    x = np.random.default_rng(seed).random((3, 28, 28))
    np.testing.assert_array_equal(model.predict_proba(x), reference.predict_proba(x))


@pytest.mark.parametrize("size, framed", [(28, (32, 32)), (32, (32, 32)), (16, (32, 32)),
                                          ((29, 45), (33, 45)), (64, (64, 64))])
def test_lenet5_frame_and_c5_kernel(size, framed):
    spec = get_spec("lenet5", input_size=size)
    assert tuple(spec["input_shape"][1:]) == framed
    h, w = (size, size) if isinstance(size, int) else size
    assert [h + 2 * spec["input_transform"]["padding"][0],
            w + 2 * spec["input_transform"]["padding"][1]] == list(framed)
    # C5 covers what the two conv-pool stages leave: a 1x1 output, 120 features
    model = get_model("lenet5", input_size=size)
    assert model.summary(print_fn=None).rows[6]["output_shape"] == (120, 1, 1)


@pytest.mark.parametrize("name", ZOO)
def test_every_model_builds_for_channels_and_sizes(name):
    rng = np.random.default_rng(1)
    for channels, size, classes in [(1, 28, 10), (3, 28, 10), (1, (20, 24), 3), (3, 32, 7),
                                     (1, 17, 2)]:
        model = get_model(name, num_classes=classes, in_channels=channels, input_size=size,
                          seed=2)
        h, w = (size, size) if isinstance(size, int) else size
        assert model.input_shape[0] == channels
        x = rng.random((2, channels, h, w))
        proba = model.predict_proba(x)
        assert proba.shape == (2, classes) and proba.dtype == np.float32
        np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
        assert model.training  # predict restored the mode
    # seeds give different weights, the same seed the same
    assert same_state(get_model(name, seed=4), get_model(name, seed=4))
    assert not same_state(get_model(name, seed=4), get_model(name, seed=5))


def tiny_data(channels, size, n=48, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    h, w = size
    x = rng.random((n, channels, h, w)).astype(np.float32)
    y = (np.arange(n) % classes).astype(np.int64)
    x[np.arange(n), 0, y, y] += 2  # something to learn
    return Dataset("tiny", Split(x[:32], y[:32]), Split(x[32:], y[32:]),
                   [f"c{k}" for k in range(classes)])


def train_a_few_steps(model, data, threads):
    fastcnn.set_num_threads(threads)
    opt = fastcnn.SGD(model.param_groups(5e-4), lr=0.05, momentum=0.9)
    padded = data
    pad = model.input_transform.padding if model.input_transform is not None else (0, 0)
    if pad != (0, 0):
        def p(split):
            return Split(np.pad(split[0], ((0, 0), (0, 0), (pad[0],) * 2, (pad[1],) * 2)),
                         split[1])
        padded = Dataset(data.name, p(data.train), p(data.test), data.classes)
    fastcnn.Trainer(model, opt, padded, epochs=2, batch_size=8, seed=3, progress=False).fit()
    return model


@pytest.mark.parametrize("name", ZOO)
def test_round_trip_and_thread_count(name, tmp_path):
    data = tiny_data(3, (20, 20))
    models = [train_a_few_steps(get_model(name, num_classes=4, in_channels=3, input_size=20,
                                          seed=1), data, threads)
              for threads in (1, 2)]
    assert same_state(*models)  # bitwise, whatever the thread count
    model = models[0]
    assert not same_state(model, get_model(name, num_classes=4, in_channels=3, input_size=20,
                                           seed=1))  # it did train
    path = tmp_path / f"{name}.npz"
    save_model(path, model, classes=data.classes)
    loaded, header = load_model(path, return_header=True)
    assert same_state(loaded, model)
    # the file records the plain layer list, nothing zoo-specific
    fresh = get_model(name, num_classes=4, in_channels=3, input_size=20)
    assert header["architecture"]["layers"] == model_to_spec(fresh)["layers"]
    x = data.test.images
    model.eval()
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model 'resnet18'; the zoo has: lenet5"):
        get_model("resnet18")
    with pytest.raises(ValueError, match="input_size must be an int or an"):
        get_model("lenet5", input_size=(28, 28, 1))
    with pytest.raises(ValueError, match=r"input_size must hold sizes in \[1, 4096\]"):
        get_model("lenet5", input_size=0)
    with pytest.raises(ValueError, match="num_classes must be an integer"):
        get_model("lenet5", num_classes=0)
    with pytest.raises(ValueError, match="in_channels must be an integer"):
        get_model("lenet5", in_channels=True)
    with pytest.raises(ValueError, match="bnnet needs inputs of at least 4x4"):
        get_spec("bnnet", input_size=3)


@pytest.mark.parametrize("name", list_models())
def test_missing_layers_are_named(name):
    missing = missing_layers(name)
    if not missing:
        pytest.skip(f"{name}: every layer is in this build")
    with pytest.raises(ValueError, match=f"needs the layer\\(s\\) {missing[0]}"):
        get_model(name)
