"""Tests for fastcnn.train: the Trainer (loss goes down, history, schedules, checkpoints, resume
equivalence, Ctrl-C), evaluate, learning_rate and plot_history.

Most tests run the kernels on one thread: the results are the same for any thread count (tested
here too), and one thread keeps the suite fast on a busy two-core machine.
"""

import json
import math
import signal
import tracemalloc

import numpy as np
import pytest

import fastcnn
from fastcnn.datasets import Dataset, Split, load_mnist5k
from fastcnn.train import (
    RandomShift,
    Trainer,
    TrainingInterrupted,
    evaluate,
    learning_rate,
    plot_history,
)


@pytest.fixture(autouse=True)
def one_thread():
    previous = fastcnn.get_num_threads()
    fastcnn.set_num_threads(1)
    yield
    fastcnn.set_num_threads(previous)


@pytest.fixture(scope="module")
def mnist():
    return load_mnist5k()


def subset(data, n_train=256, n_test=128, normalization=None):
    """The first images of the embedded digits (both splits are ordered with classes mixed)."""
    mean, std = normalization or (None, None)
    return Dataset("tiny", Split(data.train.images[:n_train], data.train.labels[:n_train]),
                   Split(data.test.images[:n_test], data.test.labels[:n_test]),
                   data.classes, mean, std)


@pytest.fixture
def tiny(mnist):
    return subset(mnist)


class StopAt(fastcnn.SGD):
    """SGD that records the learning rate of every step and can stop the trainer (or send
    SIGINT) after a given number of steps."""

    def __init__(self, *args, stop_after=None, sigint=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.lrs = []
        self.stop_after = stop_after
        self.sigint = sigint
        self.trainer = None

    def step(self):
        self.lrs.append(self.lr)
        super().step()
        if self.stop_after is not None and self.steps == self.stop_after:
            if self.sigint:
                for _ in range(self.sigint):
                    signal.raise_signal(signal.SIGINT)
            else:
                self.trainer.request_stop()


def make(data, *, optimizer="sgd", seed=0, epochs=2, lr=0.05, stop_after=None, sigint=0,
         l2=0.0, weight_decay=0.0, **kwargs):
    model = fastcnn.LeNet5(seed=seed)
    if optimizer == "sgd":
        opt = StopAt(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay,
                     stop_after=stop_after, sigint=sigint)
    else:
        opt = fastcnn.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    kwargs.setdefault("batch_size", 32)
    trainer = Trainer(model, opt, fastcnn.CrossEntropyLoss(l2=l2), data, epochs=epochs, seed=seed,
                      progress=False, **kwargs)
    opt.trainer = trainer
    return trainer


def weights(trainer):
    return trainer.model.state_dict()


def assert_same_weights(a, b):
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def without_timings(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "eval_seconds", "images_per_s")}
            for h in history]


# --------------------------------------------------------------------------------------------
# Training


def test_short_training_lowers_the_loss(tiny):
    trainer = make(tiny, epochs=2)
    before = evaluate(trainer.model, tiny.test.images, tiny.test.labels)
    history = trainer.fit()
    after = evaluate(trainer.model, tiny.test.images, tiny.test.labels)
    assert history[1]["loss"] < history[0]["loss"]
    assert after.loss < before.loss
    assert after.accuracy > before.accuracy
    assert trainer.epoch == 2 and trainer.step == 0


def test_history_entries(tiny, tmp_path):
    log = []
    trainer = make(tiny, epochs=2, history_path=tmp_path / "h.json", log=log.append)
    history = trainer.fit()
    assert history is trainer.history and len(history) == 2
    for i, h in enumerate(history):
        assert set(h) == {"epoch", "loss", "train_acc", "test_loss", "test_acc", "seconds",
                          "eval_seconds", "images_per_s", "lr"}
        assert h["epoch"] == i + 1
        assert 0 <= h["train_acc"] <= 1 and 0 <= h["test_acc"] <= 1
        assert h["seconds"] > 0 and h["images_per_s"] == pytest.approx(256 / h["seconds"])
    last = evaluate(trainer.model, tiny.test.images, tiny.test.labels)
    assert history[-1]["test_acc"] == last.accuracy
    assert history[-1]["test_loss"] == pytest.approx(last.loss)
    assert json.loads((tmp_path / "h.json").read_text()) == history
    assert log[0].startswith("training on 256 images (8 batches of 32), testing on 128")
    assert log[1].startswith("epoch 1/2  loss ") and "test " in log[1] and "img/s" in log[1]


def test_train_accuracy_and_loss_are_those_of_the_steps(tiny):
    """The epoch's loss is the mean of the step losses, weighted by batch size."""
    trainer = make(tiny, epochs=1, batch_size=100)  # batches of 100, 100, 56
    losses = []
    real_forward = trainer.loss.forward

    def forward(*args):
        losses.append(real_forward(*args))
        return losses[-1]
    trainer.loss.forward = forward
    trainer.fit()
    assert len(losses) == 3
    expected = (losses[0] * 100 + losses[1] * 100 + losses[2] * 56) / 256
    assert trainer.history[0]["loss"] == pytest.approx(expected, rel=1e-12)


def test_no_test_split(mnist):
    data = Dataset("t", Split(mnist.train.images[:64], mnist.train.labels[:64]), None,
                   mnist.classes)
    history = make(data, epochs=1).fit()
    assert history[0]["test_acc"] is None and history[0]["test_loss"] is None


def test_l2_and_weight_decay_train(tiny):
    history = make(tiny, epochs=2, l2=1e-3, weight_decay=1e-4).fit()
    assert history[1]["loss"] < history[0]["loss"]


@pytest.mark.parametrize("shift", [0, 2], ids=["plain", "shifted"])
def test_training_step_does_not_allocate(mnist, shift):
    """After a warm-up epoch, an epoch allocates no new activation buffers (only the loss's
    few (batch, classes) arrays)."""
    data = Dataset("t", Split(mnist.train.images[:256], mnist.train.labels[:256]), None,
                   mnist.classes)
    trainer = make(data, epochs=2, batch_size=64, shift=shift)
    trainer.epochs = 1
    trainer.fit()
    trainer.epochs = 2
    tracemalloc.start()
    try:
        trainer.fit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_activation = 64 * 6 * 28 * 28 * 4  # C1's output: 1.2 MB
    assert peak < one_activation / 4, peak


def test_divergence_is_reported(tiny):
    trainer = make(tiny, epochs=1, lr=1e4)
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="diverged.*lower "
                                                                            "the learning rate"):
        trainer.fit()


def test_thread_count_does_not_change_the_weights(tiny):
    results = []
    for threads in (1, 2):
        fastcnn.set_num_threads(threads)
        trainer = make(tiny, epochs=1)
        trainer.fit()
        results.append(weights(trainer))
    assert_same_weights(*results)


def test_same_seed_same_weights_other_seed_other_weights(tiny):
    a, b, c = make(tiny, epochs=1), make(tiny, epochs=1), make(tiny, epochs=1, seed=1)
    for t in (a, b, c):
        t.fit()
    assert_same_weights(weights(a), weights(b))
    assert not np.array_equal(weights(a)["0.weight"], weights(c)["0.weight"])


# --------------------------------------------------------------------------------------------
# Shift augmentation


def test_random_shift_is_a_roll_per_image():
    rng = np.random.default_rng(0)
    x = rng.random((10, 1, 7, 9)).astype(np.float32)
    shifter = RandomShift(3, seed=4, n_samples=23, batch_size=10, height=7, width=9,
                          dtype=np.float32)
    shifter.start_epoch(2)
    shifts = np.random.default_rng([4, 2, 1]).integers(-3, 4, size=(23, 2))
    assert np.abs(shifts).max() == 3 and len({tuple(s) for s in shifts}) > 5
    for start, b in ((0, 10), (10, 10), (20, 3)):  # the last batch is partial
        got = shifter.apply(x[:b], start)
        for n in range(b):
            np.testing.assert_array_equal(got[n], np.roll(x[n], shifts[start + n], axis=(1, 2)))


def test_shift_draws_new_shifts_each_epoch_and_keeps_labels():
    shifter = RandomShift(2, seed=0, n_samples=64, batch_size=64, height=32, width=32,
                          dtype=np.float32)
    x = np.random.default_rng(1).random((64, 1, 32, 32)).astype(np.float32)
    shifter.start_epoch(0)
    first = shifter.apply(x, 0).copy()
    shifter.start_epoch(1)
    assert not np.array_equal(first, shifter.apply(x, 0))
    shifter.start_epoch(0)
    np.testing.assert_array_equal(first, shifter.apply(x, 0))


def test_trainer_with_shift_trains_and_resumes_bitwise(tiny, tmp_path):
    straight = make(tiny, shift=2)
    straight.fit()
    assert straight.history[1]["loss"] < straight.history[0]["loss"]
    unshifted = make(tiny)
    unshifted.fit()
    assert not np.array_equal(weights(straight)["0.weight"], weights(unshifted)["0.weight"])
    ckpt = tmp_path / "ckpt.npz"
    with pytest.raises(TrainingInterrupted):
        make(tiny, shift=2, stop_after=11, checkpoint_path=ckpt).fit()
    with pytest.raises(ValueError, match="shift=2 "):
        resumed(tiny, ckpt)
    again = resumed(tiny, ckpt, shift=2)
    again.fit()
    assert_same_weights(weights(again), weights(straight))


def test_shift_must_fit_the_images(tiny):
    with pytest.raises(ValueError, match=r"shift must be smaller than the images \(32x32\)"):
        make(tiny, shift=32)


# --------------------------------------------------------------------------------------------
# Learning-rate schedules


def test_constant_schedule():
    assert learning_rate(None, 0.1, 5, 3, 10, 8) == 0.1


def test_step_schedule():
    lrs = [learning_rate("step", 0.1, e, 0, 10, 9, step_size=3, gamma=0.5) for e in range(9)]
    assert lrs == [0.1] * 3 + [0.05] * 3 + [0.025] * 3


def test_cosine_schedule():
    n, epochs = 10, 4
    lrs = [learning_rate("cosine", 0.1, e, s, n, epochs) for e in range(epochs) for s in range(n)]
    assert lrs[0] == 0.1
    assert lrs[20] == pytest.approx(0.05)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert 0 < lrs[-1] < 0.1 * (1 - math.cos(math.pi / 40))
    assert learning_rate("cosine", 0.1, epochs, 0, n, epochs) == pytest.approx(0)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        learning_rate("linear", 0.1, 0, 0, 1, 1)


@pytest.mark.parametrize("schedule", [None, "none", "step", "cosine"])
def test_trainer_sets_the_scheduled_rate_before_every_step(tiny, schedule):
    trainer = make(tiny, epochs=3, lr=0.04, lr_schedule=schedule, step_size=1, gamma=0.5)
    trainer.fit()
    n = trainer.steps_per_epoch
    expected = [learning_rate(None if schedule == "none" else schedule, 0.04, e, s, n, 3,
                              step_size=1, gamma=0.5) for e in range(3) for s in range(n)]
    assert trainer.optimizer.lrs == expected
    assert [h["lr"] for h in trainer.history] == [expected[0], expected[n], expected[2 * n]]


def test_step_size_defaults_to_a_third_of_the_epochs(tiny):
    assert make(tiny, epochs=9, lr_schedule="step").step_size == 3
    assert make(tiny, epochs=2, lr_schedule="step").step_size == 1


# --------------------------------------------------------------------------------------------
# Checkpoints and resuming


def resumed(data, checkpoint, **kwargs):
    trainer = make(data, **kwargs)
    trainer.load_checkpoint(checkpoint)
    return trainer


@pytest.mark.parametrize("optimizer, schedule, stop_after", [
    ("sgd", "cosine", 8),  # at the end of epoch 1 of 2 (8 batches per epoch)
    ("sgd", "cosine", 11),  # mid-epoch
    ("sgd", "step", 3),
    ("adam", None, 13),
], ids=["sgd-cosine-epoch-end", "sgd-cosine-mid-epoch", "sgd-step-mid-epoch", "adam-mid-epoch"])
def test_resume_is_bitwise_identical(tiny, tmp_path, optimizer, schedule, stop_after):
    lr = 0.05 if optimizer == "sgd" else 1e-3
    kwargs = {"optimizer": optimizer, "lr": lr, "lr_schedule": schedule, "weight_decay": 1e-4,
              "l2": 1e-4}
    straight = make(tiny, **kwargs)
    straight.fit()

    ckpt = tmp_path / "ckpt.npz"
    if optimizer == "sgd":
        first = make(tiny, stop_after=stop_after, checkpoint_path=ckpt, **kwargs)
    else:  # Adam has no stop hook: stop from the loss instead
        first = make(tiny, checkpoint_path=ckpt, **kwargs)
        calls = []
        real_backward = first.loss.backward

        def backward():
            calls.append(1)
            if len(calls) == stop_after:
                first.request_stop()
            return real_backward()
        first.loss.backward = backward
    with pytest.raises(TrainingInterrupted) as info:
        first.fit()
    n = first.steps_per_epoch
    assert (info.value.epoch, info.value.step) == divmod(stop_after, n)
    assert info.value.checkpoint_path == str(ckpt)
    assert first.optimizer.steps == stop_after

    second = resumed(tiny, ckpt, **kwargs)
    assert (second.epoch, second.step) == divmod(stop_after, n)
    assert second.optimizer.steps == stop_after
    second.fit()
    assert_same_weights(weights(second), weights(straight))
    assert without_timings(second.history) == without_timings(straight.history)


def test_checkpoint_every_epoch(tiny, tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    trainer = make(tiny, epochs=2, checkpoint_path=ckpt)
    trainer.fit()
    restored = resumed(tiny, ckpt, epochs=2)
    assert (restored.epoch, restored.step) == (2, 0)
    assert_same_weights(weights(restored), weights(trainer))
    assert restored.history == trainer.history


def test_resume_with_more_epochs_continues(tiny, tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    make(tiny, epochs=1, checkpoint_path=ckpt).fit()
    trainer = resumed(tiny, ckpt, epochs=2)
    history = trainer.fit()
    assert [h["epoch"] for h in history] == [1, 2]


def test_no_checkpoint_path_still_stops_cleanly(tiny):
    trainer = make(tiny, stop_after=3)
    with pytest.raises(TrainingInterrupted, match="no checkpoint saved") as info:
        trainer.fit()
    assert info.value.checkpoint_path is None and trainer.step == 3


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 16}, "batch_size=32"),
    ({"seed": 1}, "seed=0"),
    ({"lr": 0.01}, "base_lr=0.05"),
    ({"lr_schedule": "step"}, "lr_schedule=None"),
    ({"l2": 0.1}, "l2=0.0"),
    ({"weight_decay": 0.1}, "optimizer weight_decay=0.0"),
], ids=["batch-size", "seed", "lr", "schedule", "l2", "weight-decay"])
def test_resume_refuses_other_settings(tiny, tmp_path, change, message):
    ckpt = tmp_path / "ckpt.npz"
    make(tiny, epochs=1, checkpoint_path=ckpt).fit()
    with pytest.raises(ValueError, match="other settings: .*" + message):
        resumed(tiny, ckpt, epochs=1, **change)


def test_resume_refuses_other_data(tiny, mnist, tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    make(tiny, epochs=1, checkpoint_path=ckpt).fit()
    other = Dataset("other", Split(mnist.train.images[256:512], mnist.train.labels[256:512]),
                    None, mnist.classes)
    with pytest.raises(ValueError, match="train_labels_crc32"):
        resumed(other, ckpt, epochs=1)


def test_trainer_save_model_records_data_settings(mnist, tmp_path):
    data = subset(mnist, normalization=(0.1, 0.3))
    trainer = make(data, epochs=1, metadata={"data": {"name": "tiny"}})
    trainer.fit()
    trainer.save_model(tmp_path / "m.npz")
    model, header = fastcnn.checkpoint.load_model(tmp_path / "m.npz", return_header=True)
    assert header["normalization"] == {"mean": 0.1, "std": 0.3}
    assert header["classes"] == mnist.classes and header["epoch"] == 1
    assert header["history"] == trainer.history
    assert header["metadata"] == {"data": {"name": "tiny"}}
    assert_same_weights(model.state_dict(), weights(trainer))


# --------------------------------------------------------------------------------------------
# Ctrl-C


def test_sigint_stops_after_the_step_and_saves(tiny, tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    before = signal.getsignal(signal.SIGINT)
    trainer = make(tiny, stop_after=5, sigint=1, checkpoint_path=ckpt)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    assert isinstance(info.value, KeyboardInterrupt)
    assert (info.value.epoch, info.value.step) == (0, 5)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored
    straight = make(tiny)
    straight.fit()
    again = resumed(tiny, ckpt)
    again.fit()
    assert_same_weights(weights(again), weights(straight))


def test_second_sigint_raises_at_once(tiny, tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    trainer = make(tiny, stop_after=5, sigint=2, checkpoint_path=ckpt)
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.fit()
    assert not isinstance(info.value, TrainingInterrupted)
    assert not ckpt.exists()


# --------------------------------------------------------------------------------------------
# Validation, evaluate, plot


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1"),
    ({"epochs": 0}, ValueError, "epochs must be an integer >= 1"),
    ({"seed": -1}, ValueError, "seed must be an integer >= 0"),
    ({"lr_schedule": "linear"}, ValueError, "lr_schedule must be one of"),
    ({"gamma": 1.5}, ValueError, r"gamma must be in \(0, 1\]"),
    ({"step_size": 0}, ValueError, "step_size must be an integer >= 1"),
    ({"shift": -1}, ValueError, "shift must be an integer >= 0"),
], ids=["batch-size", "epochs", "seed", "schedule", "gamma", "step-size", "shift"])
def test_trainer_validates_settings(tiny, kwargs, exc, message):
    model = fastcnn.LeNet5()
    opt = fastcnn.SGD(model.parameters(), lr=0.1)
    with pytest.raises(exc, match=message):
        Trainer(model, opt, data=tiny, **kwargs)


def test_trainer_validates_data(mnist):
    model = fastcnn.LeNet5()
    opt = fastcnn.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="data must be a Dataset"):
        Trainer(model, opt)
    unpadded = Dataset("u", Split(mnist.train.images[:8, :, 2:30, 2:30], mnist.train.labels[:8]),
                       None, mnist.classes)
    with pytest.raises(ValueError, match=r"shape \(N, 1, 32, 32\)"):
        Trainer(model, opt, data=unpadded)
    as64 = Dataset("d", Split(mnist.train.images[:8].astype(np.float64), mnist.train.labels[:8]),
                   None, mnist.classes)
    with pytest.raises(TypeError, match="dtype float64 but the model has float32"):
        Trainer(model, opt, data=as64)


def test_evaluate_matches_predict(mnist):
    model = fastcnn.LeNet5(seed=3)
    x, y = mnist.test.images[:300], mnist.test.labels[:300]
    result = evaluate(model, x, y, batch_size=128)
    np.testing.assert_array_equal(result.predictions, model.predict(x))
    assert result.accuracy == np.mean(model.predict(x) == y)
    z = model.forward(x).astype(np.float64)
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    assert result.loss == pytest.approx(-log_p[np.arange(300), y].mean(), rel=1e-12)


def test_plot_history(tiny, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curve.png"
    trainer = make(tiny, epochs=2, plot_path=path)
    trainer.fit()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="empty"):
        plot_history([], tmp_path / "x.png")


def test_plot_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"needs matplotlib: pip install 'fastcnn\[plot\]'"):
        plot_history([{"epoch": 1, "loss": 1.0, "train_acc": 0.5}], tmp_path / "x.png")
