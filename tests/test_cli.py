"""Tests for the ``fastcnn`` command line (fastcnn.cli): train, evaluate, predict, info, summary,
help, one-line errors, Ctrl-C and resume, thread-count reproducibility.

Most commands run in-process through ``main(argv)``; Ctrl-C and ``python -m fastcnn`` run in a
subprocess. Training uses small IDX directories written from the embedded digits.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastcnn
from fastcnn import optim
from fastcnn.checkpoint import load_checkpoint, load_model
from fastcnn.cli import main, train_main
from fastcnn.datasets import load_mnist5k

REPO = Path(fastcnn.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore_threads():
    previous = fastcnn.get_num_threads()
    fastcnn.set_num_threads(1)
    yield
    fastcnn.set_num_threads(previous)


def write_idx(path, array):
    """Write a uint8 array as an IDX file (magic 0x000008DD, big-endian sizes, the bytes)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    Path(path).write_bytes(header + array.tobytes())


def raw_digits(split):
    """The embedded digits as (N, 28, 28) uint8 and (N,) labels."""
    images, labels = getattr(load_mnist5k(), split)
    return np.rint(images[:, 0, 2:30, 2:30] * 255).astype(np.uint8), labels


def make_idx_dir(root, n_train, n_test):
    root.mkdir()
    train_x, train_y = raw_digits("train")
    test_x, test_y = raw_digits("test")
    write_idx(root / "train-images-idx3-ubyte", train_x[:n_train])
    write_idx(root / "train-labels-idx1-ubyte", train_y[:n_train])
    write_idx(root / "t10k-images-idx3-ubyte", test_x[:n_test])
    write_idx(root / "t10k-labels-idx1-ubyte", test_y[:n_test])
    return root


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """256 training and 100 test digits."""
    return make_idx_dir(tmp_path_factory.mktemp("data") / "digits", 256, 100)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err, *fragments):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastcnn: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err
    return lines[0]


def train(capsys, idx_dir, out, *extra, epochs=2):
    code, stdout, err = run(capsys, "train", "--data", idx_dir, "--epochs", epochs,
                            "--batch-size", 32, "--out", out, "--no-progress", *extra)
    assert code == 0, err
    return stdout


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(np.array_equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------
# train -> evaluate -> predict


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_train_evaluate_predict(capsys, tmp_path, idx_dir, normalize):
    model_path = tmp_path / "m.npz"
    extra = ["--history", tmp_path / "h.json"] + (["--normalize"] if normalize else [])
    out = train(capsys, idx_dir, model_path, *extra).splitlines()
    assert out[0].startswith("training on 256 images (8 batches of 32), testing on 100")
    assert out[1].startswith("epoch 1/2  loss") and out[2].startswith("epoch 2/2  loss")
    assert out[3].startswith("test accuracy ") and "on 100 images; trained 2 epochs in " in out[3]
    assert out[3].endswith(f"model saved to {model_path}")
    assert len(out) == 4

    model, header = load_model(model_path, return_header=True)
    assert header["kind"] == "model" and header["epoch"] == 2 and len(header["history"]) == 2
    assert header["metadata"]["data"]["path"] == str(idx_dir)
    assert header["metadata"]["model"] == "lenet5"
    assert header["metadata"]["preprocess"] == "digits"  # the training images look like MNIST
    assert header["metadata"]["out"] == str(model_path)
    assert (header["normalization"] is not None) == normalize
    test_acc = header["history"][-1]["test_acc"]
    assert f"test accuracy {100 * test_acc:.2f}%" in out[3]

    # evaluate finds the data set recorded in the file and normalises it the same way
    code, text, err = run(capsys, "evaluate", model_path)
    assert code == 0, err
    lines = text.splitlines()
    assert f"accuracy {100 * test_acc:.2f}%" in lines[0] and "(100 images)" in lines[0]
    assert lines[2].startswith("true \\ predicted") and lines[2].endswith("recall")
    rows = lines[3:]
    assert [r.split()[0] for r in rows] == [str(k) for k in range(10)]
    counts = np.array([[int(v) for v in r.split()[-11:-1]] for r in rows])
    _, labels = raw_digits("test")
    np.testing.assert_array_equal(counts.sum(axis=1), np.bincount(labels[:100], minlength=10))
    assert np.trace(counts) == round(test_acc * 100)

    # predict on PNGs of test digits gives the model's own predictions
    from PIL import Image
    images, _ = raw_digits("test")
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(images[i]).save(paths[-1])
    code, text, err = run(capsys, "predict", model_path, "--preprocess", "resize", *paths)
    assert code == 0, err
    x = images[:6].astype(np.float32)[:, None] / np.float32(255)
    x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    if normalize:
        x = (x - np.float32(header["normalization"]["mean"])) / np.float32(
            header["normalization"]["std"])
    z = model.forward(x)  # the network on the images padded and normalised by hand
    e = np.exp(z - z.max(axis=1, keepdims=True))
    proba = e / e.sum(axis=1, keepdims=True)
    expected = [f"{p}: {np.argmax(q)} ({q.max():.3f})" for p, q in zip(paths, proba)]
    assert text.splitlines() == expected

    # by default predict prepares the images as digits, as the model file records
    from fastcnn.images import read_image
    code, text, err = run(capsys, "predict", model_path, *paths)
    assert code == 0, err
    x = np.stack([read_image(p, 1, (28, 28), "digits") for p in paths])
    proba = model.predict_proba(x)
    expected = [f"{p}: {np.argmax(q)} ({q.max():.3f})" for p, q in zip(paths, proba)]
    assert text.splitlines() == expected


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, idx_dir):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    assert main(["train", "--data", str(idx_dir), "--epochs", "1", "--out", str(path),
                 "--no-progress", "--threads", "1"]) == 0
    return path


def _predict(capsys, model_path, *paths):
    code, text, err = run(capsys, "predict", model_path, *paths)
    assert code == 0, err
    return [line.rsplit(": ", 1)[1] for line in text.splitlines()]


def test_predict_converts_colour_alpha_and_size(capsys, tmp_path, trained_model):
    from PIL import Image
    digits, _ = raw_digits("test")
    gray = Image.fromarray(digits[3])
    variants = {
        "gray.png": gray,
        "rgb.png": gray.convert("RGB"),
        # black ink on a transparent background (as paint programs save it): over white
        "rgba.png": Image.merge("RGBA", [gray.point(lambda v: 0)] * 3 + [gray]),
        "big.png": gray.resize((56, 56), Image.Resampling.NEAREST),
    }
    paths = []
    for name, img in variants.items():
        paths.append(tmp_path / name)
        img.save(paths[-1])
    results = _predict(capsys, trained_model, *paths)
    assert results[0] == results[1]
    assert results[2].split()[0] == results[0].split()[0]
    assert results[3].split()[0] == results[0].split()[0]


def test_predict_invert(capsys, tmp_path, trained_model):
    from PIL import Image
    digits, _ = raw_digits("test")
    Image.fromarray(digits[7]).save(tmp_path / "light.png")
    Image.fromarray(255 - digits[7]).save(tmp_path / "dark.png")
    plain = _predict(capsys, trained_model, tmp_path / "light.png")
    # the digits preparation detects the polarity; --no-invert turns that off
    assert _predict(capsys, trained_model, tmp_path / "dark.png") == plain
    assert _predict(capsys, trained_model, "--invert", tmp_path / "dark.png") == plain
    resize = ["--preprocess", "resize"]
    plain = _predict(capsys, trained_model, *resize, tmp_path / "light.png")
    inverted = _predict(capsys, trained_model, *resize, "--invert", tmp_path / "dark.png")
    assert plain == inverted
    for flag in ("--no-invert", "--no-stretch", "--no-crop", "--no-center"):
        assert len(_predict(capsys, trained_model, flag, tmp_path / "light.png")) == 1


def test_evaluate_other_data_and_train_split(capsys, tmp_path, trained_model):
    data = make_idx_dir(tmp_path / "other", 30, 20)
    code, text, err = run(capsys, "evaluate", trained_model, "--data", data, "--split", "train",
                          "--batch-size", 7, "--threads", 2)
    assert code == 0, err
    assert "on the train split of other (30 images)" in text


def test_train_defaults_to_model_npz_in_the_current_directory(capsys, tmp_path, monkeypatch,
                                                              idx_dir):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "train", "--data", idx_dir, "--epochs", 1, "--no-progress")
    assert code == 0, err
    assert out.rstrip().endswith("model saved to model.npz")
    assert load_model(tmp_path / "model.npz").num_classes == 10
    assert not (tmp_path / "model.ckpt.npz").exists()  # only written on Ctrl-C


def test_defaults_reach_97_percent_on_the_embedded_digits(capsys, tmp_path, monkeypatch):
    """The promise of ``fastcnn train`` with no options (run here on one thread, which gives the
    same weights as any other count)."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "train", "--no-progress")
    assert code == 0, err
    _, header = load_model(tmp_path / "model.npz", return_header=True)
    assert header["history"][-1]["test_acc"] >= 0.97, out
    assert len(header["history"]) == 20
    assert header["metadata"]["data"] == {"name": "mnist5k", "path": None, "normalize": False}


def test_train_options_reach_the_model_file(capsys, tmp_path, idx_dir):
    path = tmp_path / "m.npz"
    train(capsys, idx_dir, path, "--optimizer", "adam", "--lr", "0.002", "--weight-decay",
          "1e-4", "--schedule", "step", "--step-size", "1", "--gamma", "0.5", "--seed", "3",
          "--shift", "1",
          "--checkpoint", tmp_path / "c.npz", "--plot", tmp_path / "curve.png")
    _, header = load_model(path, return_header=True)
    assert header["optimizer"]["type"] == "Adam"
    assert header["optimizer"]["weight_decay"] == 1e-4
    assert [h["lr"] for h in header["history"]] == [0.002, 0.001]
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    _, _, ckpt = load_checkpoint(tmp_path / "c.npz")  # written after every epoch
    assert ckpt["trainer"]["seed"] == 3 and ckpt["trainer"]["augment"] == [
        {"name": "RandomShift", "max_shift": 1}]
    assert ckpt["epoch"] == 2


def test_thread_count_gives_bitwise_identical_weights(capsys, tmp_path, idx_dir):
    for threads in (1, 2):
        train(capsys, idx_dir, tmp_path / f"t{threads}.npz", "--threads", threads, epochs=1)
    assert same_weights(load_model(tmp_path / "t1.npz"), load_model(tmp_path / "t2.npz"))


# --------------------------------------------------------------------------------------------
# Ctrl-C and --resume


def test_interrupt_and_resume_in_process(capsys, tmp_path, idx_dir, monkeypatch):
    straight = tmp_path / "straight.npz"
    train(capsys, idx_dir, straight)

    real_step = optim.SGD.step
    calls = []

    def step(self):
        real_step(self)
        calls.append(1)
        if len(calls) == 11:  # batch 3 of epoch 2
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(optim.SGD, "step", step)
    out = tmp_path / "m.npz"
    code, _, err = run(capsys, "train", "--data", idx_dir, "--epochs", 2, "--batch-size", 32,
                       "--out", out, "--no-progress")
    ckpt = tmp_path / "m.ckpt.npz"
    assert code == 130
    assert err.strip() == (f"fastcnn: interrupted in epoch 2 after batch 3/8; checkpoint saved "
                           f"to {ckpt}; resume with: fastcnn train --resume {ckpt}")
    assert not out.exists()
    monkeypatch.setattr(optim.SGD, "step", real_step)

    code, _, err = run(capsys, "train", "--resume", ckpt, "--lr", "0.1")
    assert code == 2
    one_line_error(err, "--lr cannot be combined with --resume")

    code, text, err = run(capsys, "train", "--resume", ckpt, "--out", out, "--no-progress")
    assert code == 0, err
    assert "resuming at epoch 2 batch 4" in text
    assert same_weights(load_model(out), load_model(straight))


@pytest.fixture(scope="module")
def big_idx_dir(tmp_path_factory):
    """All 4,000 embedded training digits: long enough to be interrupted."""
    return make_idx_dir(tmp_path_factory.mktemp("big") / "digits", 4000, 200)


def _subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def test_ctrl_c_in_a_real_process(tmp_path, big_idx_dir):
    cmd = [sys.executable, "-m", "fastcnn", "train", "--data", str(big_idx_dir), "--epochs", "3",
           "--batch-size", "16", "--threads", "1", "--out", "model.npz"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # printed once the Ctrl-C handler is in place
        assert first.startswith("training on 4000 images"), proc.stderr.read()
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("fastcnn: interrupted in epoch ")
    assert message.endswith("checkpoint saved to model.ckpt.npz; resume with: fastcnn train "
                            "--resume model.ckpt.npz")
    assert "Traceback" not in err
    _, _, header = load_checkpoint(tmp_path / "model.ckpt.npz")
    epoch, step = header["epoch"], header["step"]
    assert f"interrupted in epoch {epoch + 1} after batch {step}/250;" in message
    assert not (tmp_path / "model.npz").exists()

    done = subprocess.run([sys.executable, "-m", "fastcnn", "train", "--resume",
                           "model.ckpt.npz", "--threads", "1"], check=False, cwd=tmp_path,
                          env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # the original run's --out (recorded in the checkpoint as an absolute path); the finished
    # run's own checkpoint is removed and said so
    assert done.stdout.rstrip().endswith(f"model saved to {tmp_path / 'model.npz'}")
    assert "removed the finished run's checkpoint model.ckpt.npz" in done.stdout
    assert not (tmp_path / "model.ckpt.npz").exists()
    _, final = load_model(tmp_path / "model.npz", return_header=True)
    assert final["epoch"] == 3 and len(final["history"]) == 3


def test_python_m_fastcnn(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fastcnn", "summary"], check=False,
                          cwd=tmp_path,
                          env=_subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "61,706" in done.stdout


# --------------------------------------------------------------------------------------------
# info, summary, help


def test_info(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    assert f"fastcnn {fastcnn.__version__}" in out
    assert f"numpy {np.__version__}" in out
    assert f"openmp {'on' if fastcnn.openmp_enabled() else 'off'}" in out
    assert f"kernel isa {fastcnn.kernel_isa()}" in out
    assert "threads 1" in out


def test_summary(capsys):
    code, out, _ = run(capsys, "summary")
    assert code == 0
    assert "61,706" in out and "416,520" in out
    code, out, _ = run(capsys, "summary", "--num-classes", 3)
    assert "61,706" not in out and "(3,)" in out


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"fastcnn {fastcnn.__version__}"


TRAIN_OPTIONS = ["--model", "--data", "--val-split", "--normalize", "--augment", "--epochs",
                 "--batch-size", "--optimizer", "--lr", "--momentum", "--weight-decay",
                 "--label-smoothing", "--schedule", "--step-size", "--gamma", "--warmup",
                 "--shift", "--seed", "--out", "--checkpoint", "--resume", "--plot", "--history",
                 "--no-progress", "--threads", "lenet5-1998", "bnnet", "most accurate",
                 "test accuracy NN.NN% on N images"]


@pytest.mark.parametrize("command, options", [
    ([], ["train", "evaluate", "predict", "info", "summary", "models", "bench"]),
    (["train"], TRAIN_OPTIONS),
    (["evaluate"], ["model", "--data", "--split", "--batch-size", "--threads"]),
    (["predict"], ["model", "IMAGE", "--preprocess", "--invert", "--no-invert", "--no-stretch",
                   "--no-crop", "--no-center", "--threads"]),
    (["info"], []),
    (["summary"], ["--model", "--input-size", "--in-channels", "--num-classes"]),
    (["models"], []),
], ids=["fastcnn", "train", "evaluate", "predict", "info", "summary", "models"])
def test_help(capsys, command, options):
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0
    assert out.startswith(f"usage: fastcnn {' '.join(command)}".rstrip())
    for option in options:
        assert option in out


def test_fastcnn_train_script(capsys, tmp_path, idx_dir):
    assert train_main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: fastcnn-train")
    path = tmp_path / "m.npz"
    assert train_main(["--data", str(idx_dir), "--epochs", "1", "--out", str(path),
                       "--no-progress"]) == 0
    assert load_model(path).num_classes == 10
    assert train_main(["--epochs", "x"]) == 2
    one_line_error(capsys.readouterr().err, "--epochs")


# --------------------------------------------------------------------------------------------
# Errors: one line, no traceback


@pytest.mark.parametrize("argv, fragment", [
    ([], "required: COMMAND"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["train", "--epochs", "0"], "argument --epochs: expected an integer >= 1, got 0"),
    (["train", "--epochs", "ten"], "expected an integer >= 1, got 'ten'"),
    (["train", "--lr", "-1"], "argument --lr: expected a number in (0.0, inf), got -1"),
    (["train", "--lr", "nan"], "argument --lr"),
    (["train", "--momentum", "1"], "argument --momentum"),
    (["train", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["train", "--schedule", "linear"], "invalid choice: 'linear'"),
    (["train", "--gamma", "2"], "--gamma must be <= 1"),
    (["train", "--threads", "0"], "argument --threads"),
    (["train", "--shift", "-1"], "argument --shift: expected an integer >= 0, got -1"),
    (["train", "--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to"),
    (["train", "--resume", "x.npz", "--seed", "1", "--batch-size", "8"],
     "--batch-size, --seed cannot be combined with --resume"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["evaluate"], "required: model"),
    (["predict", "model.npz"], "required: IMAGE"),
    (["evaluate", "m.npz", "--split", "val"], "invalid choice: 'val'"),
    (["train", "--model", "resnet50"], "unknown model 'resnet50'"),
    (["train", "--model", "m.npz"], "is a model file"),
    (["train", "--augment", "rotate"], "argument --augment"),
    (["train", "--augment", "shift=x"], "shift= expects an integer"),
    (["train", "--augment", "flip,flip"], "flip is given twice"),
    (["train", "--augment", "flip", "--shift", "1"], "give --augment or --shift"),
    (["train", "--warmup", "0.2"], "--warmup applies to --schedule onecycle"),
    (["train", "--warmup", "0"], "argument --warmup"),
    (["train", "--step-size", "2"], "--step-size and --gamma apply to --schedule step"),
    (["train", "--val-split", "1"], "argument --val-split"),
    (["train", "--label-smoothing", "-0.1"], "argument --label-smoothing"),
    (["train", "--resume", "x.npz", "--model", "bnnet"], "--model cannot be combined"),
    (["summary", "--input-size", "0"], "argument --input-size"),
    (["summary", "--input-size", "3x"], "argument --input-size"),
    (["summary", "--model", "s.json", "--input-size", "32"], "apply to zoo networks"),
    (["predict", "m.npz", "x.png", "--invert", "--no-invert"], "not allowed with"),
    (["predict", "m.npz", "x.png", "--preprocess", "blur"], "invalid choice: 'blur'"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_arguments(capsys, argv, fragment):
    code, _, err = run(capsys, *argv)
    assert code == 2
    one_line_error(err, fragment, "--help")


def test_bad_files(capsys, tmp_path, trained_model, idx_dir):
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(trained_model.read_bytes()[:2000])
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    cases = [
        (["evaluate", tmp_path / "missing.npz"], "missing.npz: no such file or directory"),
        (["evaluate", text], "not a zip archive"),
        (["evaluate", truncated], "damaged or truncated"),
        (["predict", trained_model, text], "notes.txt: cannot read the image"),
        (["predict", trained_model, tmp_path / "missing.png"], "missing.png: no such file"),
        (["predict", text, text], "not a zip archive"),
        (["train", "--data", tmp_path / "nowhere"], "data set not found"),
        (["train", "--data", empty_dir], "no class folders"),
        (["train", "--resume", trained_model], "a model file, not a checkpoint"),
        (["train", "--data", idx_dir, "--epochs", 1, "--out", tmp_path / "no" / "m.npz"],
         "--out " + str(tmp_path / "no" / "m.npz") + ": the folder"),
    ]
    for argv, fragment in cases:
        code, _, err = run(capsys, *argv)
        assert code == 1, (argv, err)
        one_line_error(err, fragment)
        assert "Traceback" not in err


def test_confusion_matrix_table_names_classes():
    from fastcnn.cli import format_confusion_matrix
    cm = np.array([[5, 1, 0], [0, 7, 0], [2, 0, 10]])
    assert format_confusion_matrix(cm, ["cat", "dog", "2"]).splitlines() == [
        "true \\ predicted  0  1  2  recall",
        "0 cat             5  1  0   83.33%",
        "1 dog             0  7  0  100.00%",
        "2                 2  0 10   83.33%",
    ]


def test_evaluate_refuses_data_with_more_classes(capsys, tmp_path):
    from fastcnn.checkpoint import save_model
    path = tmp_path / "three.npz"
    save_model(path, fastcnn.LeNet5(num_classes=3))
    code, _, err = run(capsys, "evaluate", path, "--data", make_idx_dir(tmp_path / "d", 10, 30))
    assert code == 1
    one_line_error(err, "labels up to 9 but the model has 3 classes")


def test_predict_without_pillow(capsys, monkeypatch, trained_model):
    monkeypatch.setitem(sys.modules, "PIL", None)
    code, _, err = run(capsys, "predict", trained_model, "x.png")
    assert code == 1
    one_line_error(err, "needs Pillow", "pip install 'fastcnn[image]'")


def test_plot_without_matplotlib(capsys, monkeypatch, tmp_path, idx_dir):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run(capsys, "train", "--data", idx_dir, "--plot", tmp_path / "c.png")
    assert code == 1 and out == ""  # refused before training
    one_line_error(err, "--plot needs matplotlib")


def test_divergence_is_one_line(capsys, tmp_path, idx_dir):
    with np.errstate(all="ignore"):
        code, _, err = run(capsys, "train", "--data", idx_dir, "--lr", "1e4", "--epochs", 1,
                           "--out", tmp_path / "m.npz", "--no-progress")
    assert code == 1
    one_line_error(err, "training diverged")


# --------------------------------------------------------------------------------------------
# Any network of the zoo or of a spec file, on any data set

LAST_LINE = re.compile(r"^test accuracy \d{1,3}\.\d\d% on [\d,]+ images; trained \d+ epochs? "
                       r"in [\d.]+ s \([\d,]+ images/s, float(32|64) on \d+ threads?\); model "
                       r"saved to \S+$")


def zoo_param(name):
    from fastcnn.models.zoo import missing_layers
    missing = missing_layers(name)
    return pytest.param(name, id=name, marks=pytest.mark.skipif(
        bool(missing), reason=f"{name} needs {', '.join(missing)}, not in this build"))


def colour_images(n, size, seed):
    """(n, size, size, 3) uint8 images whose dominant channel is the class (3 classes)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 90, (n, size, size, 3))
    x[np.arange(n), :, :, y] += 160
    return x.astype(np.uint8), y


@pytest.fixture(scope="module")
def npz_set(tmp_path_factory):
    """60 colour 14x14 images, no test part (20% are held out)."""
    path = tmp_path_factory.mktemp("npz") / "colours.npz"
    x, y = colour_images(60, 14, 0)
    np.savez(path, x_train=x, y_train=y)
    return path


@pytest.fixture(scope="module")
def folder_set(tmp_path_factory):
    """An image folder already split: train/ and test/, one subfolder of PNGs per class."""
    from PIL import Image
    root = tmp_path_factory.mktemp("folder") / "shapes"
    for part, n, seed in (("train", 48, 1), ("test", 12, 2)):
        x, y = colour_images(n, 12, seed)
        for i, (img, label) in enumerate(zip(x, y)):
            folder = root / part / ["red", "green", "blue"][label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i}.png")
    return root


def test_models_are_listed(capsys):
    from fastcnn.models import list_models
    for argv in (["models"], ["train", "--model", "list"], ["summary", "--model", "list"]):
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        assert [line.split()[0] for line in out.splitlines()] == list_models()


@pytest.mark.parametrize("kind", ["idx", "npz", "folder"])
@pytest.mark.parametrize("name", [zoo_param(n) for n in ("lenet5", "lenet5-1998", "bnnet")])
def test_zoo_model_on_each_kind_of_data(capsys, tmp_path, name, kind, idx_dir, npz_set,
                                        folder_set):
    from PIL import Image
    data = {"idx": idx_dir, "npz": npz_set, "folder": folder_set}[kind]
    path = tmp_path / "m.npz"
    code, out, err = run(capsys, "train", "--model", name, "--data", data, "--epochs", 1,
                         "--batch-size", 16, "--out", path, "--no-progress")
    assert code == 0, err
    assert LAST_LINE.match(out.splitlines()[-1]), out
    model, header = load_model(path, return_header=True)
    assert header["metadata"]["model"] == name
    channels = 1 if kind == "idx" else 3
    assert model.input_shape[0] == channels
    assert header["metadata"]["preprocess"] == ("digits" if kind == "idx" else "resize")
    if kind == "folder":
        assert header["classes"] == ["blue", "green", "red"]

    code, text, err = run(capsys, "evaluate", path)
    assert code == 0, err
    n_test = {"idx": 100, "npz": 12, "folder": 12}[kind]
    assert f"({n_test} images): accuracy " in text.splitlines()[0]

    image = tmp_path / "x.png"
    if kind == "idx":
        Image.fromarray(raw_digits("test")[0][0]).save(image)
    else:
        Image.fromarray(colour_images(1, 30, 5)[0][0]).save(image)  # resized to the model's
    code, text, err = run(capsys, "predict", path, image)
    assert code == 0, err
    assert re.fullmatch(rf"{re.escape(str(image))}: \S+ \(\d\.\d{{3}}\)\n", text)

    code, text, err = run(capsys, "summary", "--model", path)
    assert code == 0, err
    assert text.splitlines()[-1].split()[0] == "total"


def test_train_options_for_any_data(capsys, tmp_path, npz_set):
    path = tmp_path / "m.npz"
    code, out, err = run(capsys, "train", "--data", npz_set, "--epochs", 2, "--batch-size", 8,
                         "--val-split", 0.25, "--schedule", "onecycle", "--warmup", 0.2,
                         "--augment", "crop=1,flip", "--normalize", "--optimizer", "adamw",
                         "--checkpoint", tmp_path / "c.npz", "--out", path, "--no-progress")
    assert code == 0, err
    lines = out.splitlines()
    assert LAST_LINE.match(lines[-1]), out
    assert "validating on 12" in lines[0]
    assert any(line.startswith("restored the weights of epoch ") for line in lines)
    assert f"checkpoint kept at {tmp_path / 'c.npz'} (--checkpoint)" in out
    _, _, ckpt = load_checkpoint(tmp_path / "c.npz")
    cfg = ckpt["trainer"]
    assert cfg["val_split"] == 0.25 and cfg["schedule"]["name"] == "onecycle"
    assert cfg["schedule"]["pct_start"] == 0.2
    assert [t["name"] for t in cfg["augment"]] == ["RandomCrop", "RandomHorizontalFlip"]
    assert ckpt["optimizer"]["type"] == "AdamW"
    model, header = load_model(path, return_header=True)
    assert len(header["normalization"]["mean"]) == 3
    code, text, err = run(capsys, "evaluate", path)
    assert code == 0, err
    acc = header["history"][-1]["test_acc"]
    assert f"accuracy {100 * acc:.2f}%" in text  # padded and normalised as in training


def test_label_smoothing(capsys, tmp_path, idx_dir):
    import inspect
    code, out, err = run(capsys, "train", "--data", idx_dir, "--epochs", 1, "--label-smoothing",
                         0.1, "--out", tmp_path / "m.npz", "--no-progress")
    if "label_smoothing" in inspect.signature(fastcnn.CrossEntropyLoss).parameters:
        assert code == 0, err
        assert LAST_LINE.match(out.splitlines()[-1])
    else:
        assert code == 2
        one_line_error(err, "--label-smoothing needs a CrossEntropyLoss with label_smoothing")


SPEC = {"input_shape": [1, 28, 28], "layers": [
    {"type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3, "padding": 1},
    {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"},
    {"type": "Linear", "in_features": 4 * 14 * 14, "out_features": 10}]}


def test_spec_file(capsys, tmp_path, idx_dir):
    spec = tmp_path / "net.json"
    spec.write_text(json.dumps(SPEC))
    path = tmp_path / "net.npz"
    out = train(capsys, idx_dir, path, "--model", spec, epochs=1)
    assert LAST_LINE.match(out.splitlines()[-1]), out
    model, header = load_model(path, return_header=True)
    assert header["metadata"]["model"] == str(spec)
    assert model.input_shape == (1, 28, 28) and header["architecture"]["layers"][0][
        "out_channels"] == 4
    for argv in (["summary", "--model", spec], ["summary", "--model", path],
                 ["evaluate", path]):
        code, text, err = run(capsys, *argv)
        assert code == 0, (argv, err)
    code, text, _ = run(capsys, "summary", "--model", spec)
    assert "net.json: 28x28 images with 1 channel" in text and "7,890" in text

    # the spec's output must fit the data's classes; a bad spec is one line naming the layer
    bad = dict(SPEC, layers=SPEC["layers"][:-1] + [dict(SPEC["layers"][-1], out_features=3)])
    spec.write_text(json.dumps(bad))
    code, _, err = run(capsys, "train", "--model", spec, "--data", idx_dir, "--epochs", 1,
                       "--out", tmp_path / "x.npz")
    assert code == 1
    one_line_error(err, "the model's output per image is (3,) but the data set has 10 classes")
    bad = dict(SPEC, layers=[{"type": "Conv2d", "in_channels": 1}])
    spec.write_text(json.dumps(bad))
    code, _, err = run(capsys, "train", "--model", spec, "--data", idx_dir, "--epochs", 1)
    assert code == 1
    one_line_error(err, "net.json: layer 0 (Conv2d): missing argument 'out_channels'")
    code, _, err = run(capsys, "train", "--model", tmp_path / "none.json")
    assert code == 1
    one_line_error(err, "none.json: no such file or directory")
    spec.write_text(json.dumps(dict(SPEC, input_shape=[1, 32, 32], layers=SPEC["layers"][:-1] + [
        dict(SPEC["layers"][-1], in_features=4 * 16 * 16)])))
    code, _, err = run(capsys, "train", "--model", spec, "--data", idx_dir, "--epochs", 1)
    assert code == 1
    one_line_error(err, "the images are 28x28 with 1 channel but the model takes 32x32")


def test_predict_reports_a_bad_file_and_classifies_the_others(capsys, tmp_path, trained_model):
    from PIL import Image
    digits, _ = raw_digits("test")
    good = [tmp_path / "a.png", tmp_path / "c.jpg"]
    Image.fromarray(digits[0]).save(good[0])
    Image.fromarray(255 - digits[1]).convert("RGB").save(good[1])  # dark on light, colour
    bad = tmp_path / "b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, out, err = run(capsys, "predict", trained_model, good[0], bad, good[1],
                         tmp_path / "gone.png")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("fastcnn: error: ") for line in lines)
    assert "b.png: cannot read the image" in lines[0] and "gone.png: no such file" in lines[1]
    assert [line.split(": ")[0] for line in out.splitlines()] == [str(p) for p in good]


def test_predict_colour_model_and_preprocess_digits_refused(capsys, tmp_path, npz_set):
    from PIL import Image
    path = tmp_path / "c.npz"
    assert main(["train", "--data", str(npz_set), "--epochs", "1", "--out", str(path),
                 "--no-progress"]) == 0
    capsys.readouterr()
    grey = tmp_path / "g.png"
    Image.fromarray(raw_digits("test")[0][0]).save(grey)  # grey read as RGB for this model
    code, out, err = run(capsys, "predict", path, grey)
    assert code == 0, err
    code, _, err = run(capsys, "predict", path, grey, "--preprocess", "digits")
    assert code == 2
    one_line_error(err, "--preprocess digits is for 1-channel models")


def test_resume_keeps_out_and_removes_its_checkpoint(capsys, tmp_path, idx_dir, monkeypatch):
    real_step = optim.SGD.step
    calls = []

    def step(self):
        real_step(self)
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(optim.SGD, "step", step)
    out = tmp_path / "mine.npz"
    code, _, _ = run(capsys, "train", "--data", idx_dir, "--epochs", 1, "--batch-size", 32,
                     "--out", out, "--no-progress")
    assert code == 130
    monkeypatch.setattr(optim.SGD, "step", real_step)
    ckpt = tmp_path / "mine.ckpt.npz"
    assert ckpt.exists() and not out.exists()
    monkeypatch.chdir(tmp_path)  # where a default model.npz would land
    code, text, err = run(capsys, "train", "--resume", ckpt, "--no-progress")
    assert code == 0, err
    assert text.rstrip().endswith(f"model saved to {out}")
    assert out.exists() and not (tmp_path / "model.npz").exists()
    assert f"removed the finished run's checkpoint {ckpt}" in text
    assert not ckpt.exists()


def test_overwrite_notice(capsys, tmp_path, monkeypatch, idx_dir):
    """README's first command, run twice: it works and says what it replaces."""
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--data", idx_dir, "--epochs", 1, "--batch-size", 64, "--no-progress"]
    code, _, err = run(capsys, *argv)
    assert code == 0 and "note" not in err
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert err.splitlines() == [
        "fastcnn: note: model.npz exists and will be replaced by the model trained now",
        "fastcnn: note: replaced the existing model.npz"]
    assert LAST_LINE.match(out.splitlines()[-1])


def edit_header(src, dst, edit):
    from fastcnn.io import NpzReader, save_npz_atomic
    with NpzReader(src) as npz:
        header = json.loads(json.dumps(npz.header))
        arrays = {k: npz.read(k) for k in npz.members}
    edit(header)
    for key in ("format", "format_version"):
        header.pop(key, None)
    save_npz_atomic(dst, arrays, header)
    return dst


def test_hand_edited_model_files_give_one_line(capsys, tmp_path, trained_model):
    image = tmp_path / "x.png"
    from PIL import Image
    Image.fromarray(raw_digits("test")[0][0]).save(image)

    def metadata(**values):
        return lambda h: h["metadata"].update(values)

    cases = [
        (metadata(preprocess="sharpen"), "predict", "recorded preprocess 'sharpen'"),
        (metadata(preprocess=5), "predict", "recorded preprocess 5"),
        (metadata(data={"path": 5}), "evaluate", "recorded data path is not a string"),
        (metadata(data={"path": str(tmp_path / "gone")}), "evaluate", "data set not found"),
        (lambda h: h.update(metadata=[1]), "evaluate", "metadata must be an object"),
        (lambda h: h["architecture"]["layers"][0].update(out_channels=7), "evaluate",
         "layer 3 (Conv2d) does not fit its input"),
        (lambda h: h["architecture"].update(input_shape=[1, 32]), "predict", "input_shape"),
    ]
    for i, (edit, command, fragment) in enumerate(cases):
        path = edit_header(trained_model, tmp_path / f"e{i}.npz", edit)
        argv = [command, path] + ([image] if command == "predict" else [])
        code, _, err = run(capsys, *argv)
        assert code == 1, (fragment, err)
        one_line_error(err, fragment)
        assert "Traceback" not in err


@pytest.mark.parametrize("name", [zoo_param(n) for n in ("lenet5", "lenet5-1998", "bnnet")])
def test_ctrl_c_resumes_every_zoo_model_bitwise(capsys, tmp_path, npz_set, monkeypatch, name):
    """Colour data, a validation split and crop/flip augmentation: the weights, buffers (batch
    norm), dropout counters and best-epoch state all come back from the checkpoint."""
    argv = ["train", "--model", name, "--data", npz_set, "--epochs", 2, "--batch-size", 8,
            "--val-split", 0.2, "--augment", "crop,flip", "--no-progress"]
    code, _, err = run(capsys, *argv, "--out", tmp_path / "straight.npz")
    assert code == 0, err
    real_step = optim.SGD.step
    calls = []

    def step(self):
        real_step(self)
        calls.append(1)
        if len(calls) == 6:  # batch 1 of epoch 2 (5 batches per epoch)
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(optim.SGD, "step", step)
    out = tmp_path / "m.npz"
    code, _, err = run(capsys, *argv, "--out", out)
    assert code == 130, err
    monkeypatch.setattr(optim.SGD, "step", real_step)
    code, text, err = run(capsys, "train", "--resume", tmp_path / "m.ckpt.npz", "--no-progress")
    assert code == 0, err
    assert "resuming at epoch 2 batch 2" in text
    assert same_weights(load_model(out), load_model(tmp_path / "straight.npz"))


@pytest.mark.parametrize("given", [[], ["--schedule", "cosine"]])
def test_zoo_model_training_defaults(capsys, tmp_path, npz_set, given):
    """A zoo model's own training defaults (bnnet: the onecycle schedule) apply unless the
    option is given; 'fastcnn models' shows them."""
    from fastcnn.models.zoo import training_defaults

    recipe = {"schedule": "onecycle", "embedded_epochs": 40}
    assert training_defaults("bnnet") == recipe
    assert training_defaults("lenet5") == {}
    training_defaults("bnnet")["schedule"] = "none"  # a copy: the zoo is not changed
    assert training_defaults("bnnet") == recipe
    code, out, err = run(capsys, "train", "--model", "bnnet", "--data", npz_set, "--epochs", 1,
                         "--batch-size", 16, *given, "--checkpoint", tmp_path / "c.npz",
                         "--out", tmp_path / "m.npz", "--no-progress")
    assert code == 0, err
    _, _, ckpt = load_checkpoint(tmp_path / "c.npz")
    assert ckpt["trainer"]["schedule"]["name"] == ("cosine" if given else "onecycle")
    code, out, err = run(capsys, "models")
    assert code == 0, err
    assert "(trained with --schedule onecycle, --epochs 40 on the embedded digits)" in next(
        line for line in out.splitlines() if line.startswith("bnnet"))


def test_zoo_model_epochs_on_the_embedded_digits():
    """bnnet's own 40 epochs apply on the embedded digits only; --epochs always wins."""
    from fastcnn.cli import DEFAULTS, _build_parser, _new_settings
    from fastcnn.models.zoo import training_defaults

    def epochs(*argv, model="bnnet"):
        args = _build_parser().parse_args(["train", "--model", model, *argv])
        return _new_settings(args, training_defaults(model))["epochs"]

    assert epochs() == 40
    assert epochs("--data", "somewhere") == DEFAULTS["epochs"]
    assert epochs("--epochs", "3") == 3
    assert epochs(model="lenet5") == DEFAULTS["epochs"]
