"""Tests for fastcnn.checkpoint: model files and checkpoints (round trips, atomic saves, clear
errors for damaged, truncated and foreign files), and PyTorch compatibility of the weights."""

import os
import re
import zipfile

import numpy as np
import pytest

import fastcnn
from fastcnn import io as fio
from fastcnn.checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from fastcnn.io import load_npz, save_npz_atomic
from fastcnn.models import InputTransform, model_to_spec


@pytest.fixture(autouse=True)
def one_thread():
    """One kernel thread: results are the same for any count, and it is faster on a busy
    machine."""
    previous = fastcnn.get_num_threads()
    fastcnn.set_num_threads(1)
    yield
    fastcnn.set_num_threads(previous)


WEIGHT_KEYS = ["0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias", "9.weight",
               "9.bias", "11.weight", "11.bias"]


def trained(model_seed=0, optimizer="sgd", steps=3, num_classes=10, dtype=np.float32):
    """A LeNet5 and its optimiser after a few steps on random data (so the state is non-zero)."""
    model = fastcnn.LeNet5(num_classes=num_classes, dtype=dtype, seed=model_seed)
    if optimizer == "sgd":
        opt = fastcnn.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    else:
        opt = fastcnn.Adam(model.parameters(), lr=1e-3)
    loss = fastcnn.CrossEntropyLoss(dtype=dtype)
    rng = np.random.default_rng(model_seed)
    for _ in range(steps):
        x = rng.random((8, 1, 32, 32)).astype(dtype)
        y = rng.integers(0, num_classes, 8)
        loss.forward(model.forward(x, copy=False), y)
        model.backward(loss.backward(), copy=False)
        opt.step()
    return model, opt


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


@pytest.fixture
def model_file(tmp_path):
    model, opt = trained()
    path = tmp_path / "model.npz"
    save_model(path, model, optimizer=opt, epoch=3, history=[{"epoch": 1, "loss": 0.5}],
               normalization=(0.13, 0.31), metadata={"data": {"name": "x", "path": None}})
    return path, model


# --------------------------------------------------------------------------------------------
# Round trips


def test_model_round_trip(model_file):
    path, model = model_file
    loaded, header = load_model(path, return_header=True)
    assert type(loaded) is fastcnn.Sequential and not loaded.training
    assert_same_weights(loaded, model)
    assert header["kind"] == "model"
    arch = header["architecture"]
    assert arch["input_shape"] == [1, 32, 32]
    assert arch["layers"] == model_to_spec(fastcnn.LeNet5())["layers"]
    assert arch["layers"][0] == {"type": "Conv2d", "in_channels": 1, "out_channels": 6,
                                 "kernel_size": 5, "stride": 1, "padding": 0, "dilation": 1,
                                 "groups": 1, "bias": True, "padding_mode": "zeros"}
    assert arch["input_transform"] == {"padding": [2, 2],
                                       "normalization": {"mean": [0.13], "std": [0.31]}}
    assert arch["classes"] == header["classes"] == [str(k) for k in range(10)]
    assert header["dtype"] == "float32"
    assert header["normalization"] == {"mean": 0.13, "std": 0.31}  # as the LeNet-5-only format
    assert header["epoch"] == 3
    assert header["optimizer"]["type"] == "SGD"
    assert header["optimizer"]["momentum"] == 0.9
    assert header["history"] == [{"epoch": 1, "loss": 0.5}]
    assert header["metadata"] == {"data": {"name": "x", "path": None}}
    assert header["fastcnn_version"] == fastcnn.__version__
    assert header["format"] == "fastcnn" and header["format_version"] == 1
    assert loaded.input_shape == (1, 32, 32) and loaded.num_classes == 10
    assert loaded.classes == [str(k) for k in range(10)]
    assert loaded.input_transform == InputTransform(2, [0.13], [0.31])
    # predict pads and normalises raw 28x28 images as the training data was prepared
    raw = np.random.default_rng(4).random((6, 28, 28)).astype(np.float32)
    x = (np.pad(raw[:, None], ((0, 0), (0, 0), (2, 2), (2, 2))) - np.float32(0.13)) \
        / np.float32(0.31)
    np.testing.assert_array_equal(loaded.predict(raw), model.forward(x).argmax(axis=1))


def test_model_file_is_a_plain_npz(model_file):
    path, model = model_file
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == sorted(["__header__"] + [f"model/{k}" for k in WEIGHT_KEYS])
        np.testing.assert_array_equal(f["model/3.weight"], model.state_dict()["3.weight"])


def test_model_file_holds_no_optimizer_state(model_file):
    arrays, _ = load_npz(model_file[0])
    assert not [k for k in arrays if not k.startswith("model/")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("num_classes", [3, 10], ids=["3classes", "10classes"])
def test_round_trip_keeps_dtype_and_classes(tmp_path, dtype, num_classes):
    model, _ = trained(num_classes=num_classes, dtype=dtype, steps=1)
    names = [f"class {k}" for k in range(num_classes)]
    save_model(tmp_path / "m.npz", model, classes=names)
    loaded, header = load_model(tmp_path / "m.npz", return_header=True)
    assert loaded.dtype == dtype and loaded.num_classes == num_classes
    assert header["classes"] == names and loaded.classes == names
    assert_same_weights(loaded, model)
    x = np.random.default_rng(1).random((4, 1, 32, 32)).astype(dtype)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_checkpoint_round_trip(tmp_path, optimizer):
    model, opt = trained(optimizer=optimizer)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model, opt, epoch=1, header={"step": 7, "extra": [1, 2]})
    loaded, optim_arrays, header = load_checkpoint(path)
    assert_same_weights(loaded, model)
    arrays, info = opt.state_dict()
    assert sorted(optim_arrays) == sorted(arrays) and arrays
    for key, value in arrays.items():
        assert optim_arrays[key].dtype == value.dtype
        np.testing.assert_array_equal(optim_arrays[key], value)
    assert header["optimizer"] == info
    assert header["kind"] == "checkpoint" and header["epoch"] == 1
    assert header["step"] == 7 and header["extra"] == [1, 2]

    # The restored optimiser takes the very same next step as the original.
    opt2 = type(opt)(loaded.parameters(), lr=1.0, **{k: v for k, v in info.items()
                                                     if k in ("momentum", "nesterov", "eps")})
    opt2.weight_decay = opt.weight_decay
    opt2.load_state_dict(optim_arrays, header["optimizer"])
    assert opt2.lr == opt.lr and opt2.steps == opt.steps
    rng = np.random.default_rng(5)
    x = rng.random((8, 1, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    for m, o in ((model, opt), (loaded, opt2)):
        loss = fastcnn.CrossEntropyLoss()
        loss.forward(m.forward(x), y)
        m.backward(loss.backward())
        o.step()
    assert_same_weights(loaded, model)


def test_checkpoint_file_keys(tmp_path):
    model, opt = trained()
    save_checkpoint(tmp_path / "c.npz", model, opt)
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:
        assert "model/0.weight" in f.files and "optim/0.weight.momentum" in f.files


def test_load_model_accepts_a_checkpoint(tmp_path):
    model, opt = trained()
    save_checkpoint(tmp_path / "c.npz", model, opt)
    assert_same_weights(load_model(tmp_path / "c.npz"), model)


def test_load_checkpoint_rejects_a_model_file(model_file):
    with pytest.raises(ValueError, match="a model file, not a checkpoint"):
        load_checkpoint(model_file[0])


class MyLayer(fastcnn.Module):
    def forward(self, x):
        return x


@pytest.mark.parametrize("model, exc, match", [
    (fastcnn.Linear(3, 2), TypeError, "model must be a fastcnn Sequential, got Linear"),
    (fastcnn.Sequential(fastcnn.Linear(3, 2)), ValueError, "input shape is unknown"),
    (fastcnn.Sequential(fastcnn.Flatten(), MyLayer()), TypeError,
     "MyLayer is not a fastcnn.nn layer"),
], ids=["not-sequential", "no-input-shape", "custom-layer"])
def test_save_model_rejects_what_a_file_cannot_hold(tmp_path, model, exc, match):
    with pytest.raises(exc, match=match):
        save_model(tmp_path / "m.npz", model)
    assert os.listdir(tmp_path) == []


def test_save_any_sequential_with_input_shape(tmp_path):
    model = fastcnn.Sequential(fastcnn.Conv2d(3, 4, 3, padding=1, seed=1), fastcnn.ReLU(),
                               fastcnn.MaxPool2d(2), fastcnn.Flatten(),
                               fastcnn.Linear(4 * 3 * 5, 5, seed=2))
    save_model(tmp_path / "m.npz", model, input_shape=(3, 6, 10), classes=list("abcde"),
               normalization=([0.1, 0.2, 0.3], [0.5, 0.6, 0.7]))
    loaded = load_model(tmp_path / "m.npz")
    assert loaded.input_shape == (3, 6, 10) and loaded.classes == list("abcde")
    assert loaded.input_transform == InputTransform(0, [0.1, 0.2, 0.3], [0.5, 0.6, 0.7])
    x = np.random.default_rng(0).random((7, 3, 6, 10)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(
        ((x - np.float32([0.1, 0.2, 0.3])[:, None, None]) / np.float32([0.5, 0.6, 0.7])[
            :, None, None]).astype(np.float32)))


def test_save_model_rejects_wrong_class_names(tmp_path):
    with pytest.raises(ValueError, match="3 class names for a model with 10 classes"):
        save_model(tmp_path / "m.npz", fastcnn.LeNet5(), classes=["a", "b", "c"])


# --------------------------------------------------------------------------------------------
# Atomicity


def _failing_writer(exc):
    real = fio._write_npz

    def write(f, members):
        real(f, dict(list(members.items())[:2]))  # part of the archive reaches the disk
        raise exc
    return write


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()],
                         ids=["oserror", "ctrl-c"])
def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch, model_file, exc):
    path, model = model_file
    before = path.read_bytes()
    other, _ = trained(model_seed=1)
    monkeypatch.setattr(fio, "_write_npz", _failing_writer(exc))
    with pytest.raises(type(exc)):
        save_model(path, other)
    assert path.read_bytes() == before
    assert_same_weights(load_model(path), model)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # no temporary left behind


def test_interrupted_checkpoint_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model, opt = trained()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model, opt, epoch=1)
    monkeypatch.setattr(fio, "_write_npz", _failing_writer(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, trained(model_seed=2)[0], opt, epoch=2)
    loaded, _, header = load_checkpoint(path)
    assert header["epoch"] == 1
    assert_same_weights(loaded, model)


# --------------------------------------------------------------------------------------------
# Damaged, truncated and foreign files


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.npz")


@pytest.mark.parametrize("keep", [0.5, 0.9, 30 / 1e9], ids=["half", "90pct", "30bytes"])
def test_truncated_file(model_file, keep):
    path, _ = model_file
    data = path.read_bytes()
    path.write_bytes(data[:max(30, int(len(data) * keep))])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*damaged or truncated"):
        load_model(path)


def test_corrupted_bytes(model_file):
    path, _ = model_file
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model/3.weight.npy")
    middle = info.header_offset + 30 + len(info.filename) + 200  # inside the weights
    data[middle] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_model(path)


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"hello, I am a text file\n", "not a zip archive"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a zip archive"),
], ids=["empty", "text", "png"])
def test_foreign_file(tmp_path, content, message):
    path = tmp_path / "foreign.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_model(path)


def test_plain_numpy_npz_is_foreign(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, **{"0.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="not a fastcnn file"):
        load_model(path)


def _resave(path, tmp_path, edit_header=None, edit_arrays=None):
    """Copy of a model file with its header and/or arrays edited."""
    arrays, header = load_npz(path)
    header.pop("format")
    header.pop("format_version")
    if edit_header:
        edit_header(header)
    if edit_arrays:
        edit_arrays(arrays)
    out = tmp_path / "edited.npz"
    save_npz_atomic(out, arrays, header)
    return out


def _last_layer(h):
    return h["architecture"]["layers"][-1]


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.update(kind="dataset"), "not a fastcnn model or checkpoint"),
    (lambda h: h.pop("architecture"), "no architecture"),
    (lambda h: h.update(architecture={"name": "ResNet18"}), "'ResNet18' is not supported"),
    (lambda h: _last_layer(h).update(out_features=0), r"layer 11 \(Linear\): out_features"),
    (lambda h: (h.pop("normalization"), h["architecture"].update(input_shape=[3, 32, 32],
                                                                   input_transform=None)),
     r"layer 0 \(Conv2d\) does not fit its input: Conv2d expects 1 input channels"),
    (lambda h: h["architecture"].update(input_shape=5), r"input_shape must be \[C, H, W\]"),
    (lambda h: h["architecture"].update(input_shape=None), r"input_shape must be \[C, H, W\]"),
    (lambda h: h.update(dtype="int8"), "dtype 'int8'"),
    (lambda h: h.update(classes=["a"]), "classes disagree with its architecture"),
    (lambda h: h["architecture"].update(classes=h.pop("classes")[:1]),
     "1 class names, but the model's output"),
    (lambda h: h["architecture"]["input_transform"]["normalization"].update(
        h.pop("normalization"), std=[0]), "std must be > 0"),
    (lambda h: h.update(metadata=[1]), "metadata must be an object, got list"),
    (lambda h: h.update(epoch="3"), "invalid epoch '3'"),
], ids=["kind", "no-arch", "other-arch", "out-features", "channels", "shape-5", "shape-null",
        "dtype", "classes-copy", "classes", "normalization", "metadata", "epoch"])
def test_bad_header(model_file, tmp_path, edit, message):
    path = _resave(model_file[0], tmp_path, edit_header=edit)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": .*" + message):
        load_model(path)


def test_header_num_classes_disagrees_with_weights(model_file, tmp_path):
    def edit(h):
        _last_layer(h)["out_features"] = 3
        h["classes"] = h["architecture"]["classes"] = ["a", "b", "c"]
    path = _resave(model_file[0], tmp_path, edit_header=edit)
    with pytest.raises(ValueError, match=r"layer 11 \(Linear\): weight '11.weight' has shape "
                                         r"\(10, 84\) in the file, the architecture implies "
                                         r"\(3, 84\)"):
        load_model(path)


def test_missing_weight(model_file, tmp_path):
    path = _resave(model_file[0], tmp_path, edit_arrays=lambda a: a.pop("model/6.bias"))
    with pytest.raises(ValueError, match=r"missing \['6.bias'\]"):
        load_model(path)


def test_unexpected_weight(model_file, tmp_path):
    path = _resave(model_file[0], tmp_path,
                   edit_arrays=lambda a: a.update({"model/12.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=r"unexpected \['12.weight'\]"):
        load_model(path)


def test_weight_dtype_disagrees_with_header(model_file, tmp_path):
    def edit(a):
        a["model/0.bias"] = a["model/0.bias"].astype(np.float64)
    path = _resave(model_file[0], tmp_path, edit_arrays=edit)
    with pytest.raises(ValueError, match="'0.bias' has dtype float64, the header says float32"):
        load_model(path)


# --------------------------------------------------------------------------------------------
# PyTorch


def test_state_dict_loads_into_torch_sequential(model_file):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    path, model = model_file
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(), nn.Linear(120, 84),
        nn.ReLU(), nn.Linear(84, 10))
    with np.load(path, allow_pickle=False) as f:  # straight from the file, no fastcnn
        state = {k[len("model/"):]: torch.from_numpy(f[k]) for k in f.files
                 if k.startswith("model/")}
    net.load_state_dict(state, strict=True)
    x = np.random.default_rng(3).random((16, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    got = load_model(path).forward(x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # And back: torch's state_dict loads into a fresh LeNet5.
    fresh = fastcnn.LeNet5(seed=9)
    fresh.load_state_dict(net.state_dict())
    assert_same_weights(fresh, model)
