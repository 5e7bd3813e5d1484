"""Mini-batch training: progress bar, evaluation, history, learning-rate schedules, checkpoints.

:class:`Trainer` runs epochs of shuffled mini-batch training of a model (a ``Sequential`` such as
``LeNet5``) with an optimiser (``SGD`` or ``Adam``) and ``CrossEntropyLoss``, evaluates on the test
split after every epoch, and records a history. A run is a pure function of its settings: the
batch order of epoch ``e`` is ``default_rng([seed, e]).permutation(N)`` (see
:class:`fastcnn.datasets.BatchIterator`), the kernels are bitwise reproducible for any thread
count, and a run interrupted with Ctrl-C and resumed from its checkpoint ends with the same
weights, bit for bit, as one that was never interrupted.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
import zlib
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint, save_model
from .datasets import BatchIterator
from .io import write_atomic
from .nn import CrossEntropyLoss

__all__ = [
    "SCHEDULES",
    "Evaluation",
    "RandomShift",
    "Trainer",
    "TrainingInterrupted",
    "evaluate",
    "learning_rate",
    "plot_history",
]

#: The learning-rate schedules :class:`Trainer` knows (None means a constant rate).
SCHEDULES = (None, "step", "cosine")


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :meth:`Trainer.fit` when training was stopped by Ctrl-C or
    :meth:`Trainer.request_stop`, after the model and optimiser reached a consistent state.

    It is a ``KeyboardInterrupt``, so code that does not know it still sees a Ctrl-C.

    Attributes
    ----------
    epoch : int
        Epochs completed (0-based index of the epoch that was running).
    step : int
        Batches of epoch ``epoch`` completed.
    steps_per_epoch : int
    checkpoint_path : str or None
        Where the checkpoint was saved, or None if the trainer had no ``checkpoint_path``.
    """

    def __init__(self, epoch, step, steps_per_epoch, checkpoint_path):
        self.epoch = epoch
        self.step = step
        self.steps_per_epoch = steps_per_epoch
        self.checkpoint_path = checkpoint_path
        where = (f"checkpoint saved to {checkpoint_path}" if checkpoint_path
                 else "no checkpoint saved")
        super().__init__(f"training interrupted in epoch {epoch + 1} after batch {step}/"
                         f"{steps_per_epoch}; {where}")


class Evaluation(NamedTuple):
    """The result of :func:`evaluate`: mean cross-entropy, accuracy in [0, 1], and the predicted
    class of every sample ``(N,)`` int64."""

    loss: float
    accuracy: float
    predictions: np.ndarray


def evaluate(model, images, labels, batch_size=1000):
    """Mean cross-entropy loss, accuracy and predictions of `model` on a data set, in batches.

    Only forward passes are run (no gradients are computed).

    Parameters
    ----------
    model : Sequential
        E.g. a LeNet5; its dtype must match `images`.
    images : ndarray, shape (N, 1, 32, 32)
    labels : ndarray, shape (N,)
        Integer class labels.
    batch_size : int, default 1000

    Returns
    -------
    Evaluation
        ``(loss, accuracy, predictions)``.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    n = labels.shape[0]
    if images.shape[0] != n:
        raise ValueError(f"{images.shape[0]} images but {n} labels")
    if n == 0:
        raise ValueError("cannot evaluate on an empty data set")
    batch_size = _integer(batch_size, "batch_size", 1)
    predictions = np.empty(n, dtype=np.int64)
    total = 0.0
    for start in range(0, n, batch_size):
        x = np.ascontiguousarray(images[start:start + batch_size])
        y = labels[start:start + batch_size]
        z = model.forward(x, copy=False).astype(np.float64)
        predictions[start:start + y.shape[0]] = z.argmax(axis=1)
        z -= z.max(axis=1, keepdims=True)
        log_sum = np.log(np.exp(z).sum(axis=1))
        total += float(np.sum(log_sum - z[np.arange(y.shape[0]), y]))
    accuracy = float(np.count_nonzero(predictions == labels)) / n
    return Evaluation(total / n, accuracy, predictions)


def learning_rate(schedule, base_lr, epoch, step, steps_per_epoch, epochs, step_size=1,
                  gamma=0.1):
    """The learning rate of batch `step` of epoch `epoch` (both 0-based).

    Parameters
    ----------
    schedule : None, "step" or "cosine"
        - None: ``base_lr`` throughout.
        - ``"step"``: ``base_lr * gamma ** (epoch // step_size)``, changing at epoch boundaries.
        - ``"cosine"``: per step, ``base_lr * (1 + cos(pi * t / T)) / 2`` with ``t = epoch *
          steps_per_epoch + step`` the global step and ``T = epochs * steps_per_epoch``: it starts
          at ``base_lr`` and would reach 0 one step after the last.
    base_lr : float
    epoch, step, steps_per_epoch, epochs : int
    step_size : int, default 1
    gamma : float, default 0.1

    Returns
    -------
    float
    """
    if schedule is None:
        return base_lr
    if schedule == "step":
        return base_lr * gamma ** (epoch // step_size)
    if schedule == "cosine":
        t = epoch * steps_per_epoch + step
        total = max(epochs * steps_per_epoch, 1)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {schedule!r}")


def _integer(value, name, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _labels_crc32(labels):
    """A fingerprint of the training labels, so a checkpoint is not resumed on other data."""
    return zlib.crc32(np.ascontiguousarray(labels, dtype=np.int64).tobytes())


class RandomShift:
    """Random circular translations of ``(N, 1, H, W)`` image batches, into a reused buffer.

    Each image of epoch ``e`` is rolled by ``(dy, dx)``, both drawn uniformly from
    ``[-max_shift, max_shift]`` by ``default_rng([seed, e, 1])``, one pair per position in the
    epoch's batch order. The shifts of an epoch are thus a function of ``(seed, epoch)`` alone,
    which keeps training reproducible and resumable mid-epoch. On 28x28 digits padded to 32x32,
    shifts of up to 2 pixels wrap only background around the edges.

    Parameters
    ----------
    max_shift : int >= 1
    seed : int >= 0
    n_samples, batch_size : int
    height, width : int
    dtype : float dtype
    """

    def __init__(self, max_shift, seed, n_samples, batch_size, height, width, dtype):
        self.max_shift = max_shift
        self.seed = seed
        self.n_samples = n_samples
        self.shape = (height, width)
        rows = min(batch_size, n_samples)
        self._out = np.empty((rows, 1, height, width), dtype=dtype)
        self._index = np.empty((rows, height, width), dtype=np.intp)
        self._rows = np.empty((rows, height), dtype=np.intp)
        self._cols = np.empty((rows, width), dtype=np.intp)
        self._base = (np.arange(rows) * (height * width))[:, None, None]
        self._arange_h = np.arange(height)
        self._arange_w = np.arange(width)
        self._shifts = np.zeros((n_samples, 2), dtype=np.intp)

    def start_epoch(self, epoch):
        """Draw the shifts of `epoch`."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        self._shifts[:] = rng.integers(-self.max_shift, self.max_shift + 1,
                                       size=(self.n_samples, 2))

    def apply(self, x, start):
        """The batch `x` (C-contiguous, samples ``start ...`` of the epoch's order), shifted.

        Returns a view of the reused output buffer: it is overwritten by the next call.
        """
        b = x.shape[0]
        H, W = self.shape
        shifts = self._shifts[start:start + b]
        rows, cols, index = self._rows[:b], self._cols[:b], self._index[:b]
        # out[n, i, j] = x[n, (i - dy) % H, (j - dx) % W], as np.roll(x[n], (dy, dx)), gathered
        # through one flat index array with no temporary the size of the batch.
        np.subtract(self._arange_h, shifts[:, :1], out=rows)
        np.remainder(rows, H, out=rows)
        rows *= W
        np.subtract(self._arange_w, shifts[:, 1:], out=cols)
        np.remainder(cols, W, out=cols)
        np.add(rows[:, :, None], cols[:, None, :], out=index)
        index += self._base[:b]
        out = self._out[:b]
        np.take(x.reshape(-1), index, out=out.reshape(b, H, W), mode="clip")
        return out


class Trainer:
    """Mini-batch training with evaluation, history, schedules, checkpoints and Ctrl-C handling.

    Parameters
    ----------
    model : Sequential
        E.g. ``LeNet5()``. Checkpoints and model files need a ``LeNet5``.
    optimizer : SGD or Adam
        Built on ``model.parameters()``. Its ``lr`` at construction is the base learning rate; the
        schedule overwrites ``optimizer.lr`` before every step.
    loss : CrossEntropyLoss, optional
        Default ``CrossEntropyLoss()``. With ``l2 > 0`` the L2 term is added to the loss and its
        gradient to the weights' gradients.
    data : Dataset
        Anything with ``train`` (an ``(images, labels)`` pair) and ``test`` (a pair or None), such
        as :func:`fastcnn.datasets.load_mnist5k`'s result. Images must be ``(N, 1, 32, 32)`` in the
        model's dtype. Optional attributes ``classes``, ``mean`` and ``std`` are recorded in model
        files and checkpoints.
    batch_size : int, default 64
        The last batch of an epoch holds the remaining ``N % batch_size`` samples, if any.
    epochs : int, default 10
    seed : int, default 0
        Selects the batch order of every epoch (the model's initialisation has its own seed).
    lr_schedule : None, "step" or "cosine"
        See :func:`learning_rate`. "step" multiplies the rate by `gamma` every `step_size` epochs;
        "cosine" decays it per step (not per epoch) towards 0 over the whole run.
    step_size : int, optional
        Epochs between decays of the "step" schedule; default ``max(1, epochs // 3)``.
    gamma : float, default 0.1
        Decay factor of the "step" schedule.
    shift : int, default 0
        Data augmentation: roll every training image by a random ``(dy, dx)`` with
        ``|dy|, |dx| <= shift`` pixels, drawn anew each epoch (see :class:`RandomShift`). 0 turns
        it off. 2 suits digits padded from 28x28 to 32x32.
    eval_batch_size : int, default 1000
    progress : bool, optional
        Show a tqdm progress bar per epoch on stderr (loss, accuracy, images/s). Default: only
        when stderr is a terminal.
    log : callable, optional
        Called with one line of text at the start of training and after every epoch (e.g.
        ``print``). Default: silent.
    history_path : str or os.PathLike, optional
        Write the history as JSON here after every epoch.
    plot_path : str or os.PathLike, optional
        Save a learning-curve PNG here at the end of :meth:`fit` (needs matplotlib).
    checkpoint_path : str or os.PathLike, optional
        Where :meth:`fit` saves a checkpoint when interrupted (and after every epoch if
        `checkpoint_every_epoch`).
    checkpoint_every_epoch : bool, default True
    metadata : dict, optional
        JSON-serialisable information stored in checkpoints and model files (the CLI records
        where the data came from).

    Attributes
    ----------
    epoch : int
        Epochs completed.
    step : int
        Batches of the current epoch completed (non-zero only after an interruption).
    history : list of dict
        One entry per completed epoch: ``epoch`` (1-based), ``loss`` (mean training loss, as
        computed during the epoch), ``train_acc`` (accuracy of those same forward passes),
        ``test_loss``, ``test_acc`` (None without a test split), ``seconds`` (training time of the
        epoch, evaluation excluded), ``eval_seconds``, ``images_per_s`` (training throughput) and
        ``lr`` (the rate of the epoch's first step).
    steps_per_epoch : int

    Notes
    -----
    **Ctrl-C.** While :meth:`fit` runs in the main thread it handles SIGINT itself: the first
    Ctrl-C lets the current step finish, saves a checkpoint (if `checkpoint_path` is set) and
    raises :class:`TrainingInterrupted`; a second Ctrl-C raises ``KeyboardInterrupt`` at once,
    without saving. :meth:`request_stop` does the same as the first Ctrl-C.

    **Resuming.** Build a trainer with the same settings (``epochs`` may differ), call
    :meth:`load_checkpoint`, then :meth:`fit`. A checkpoint records the batch index within the
    interrupted epoch; since the batch order is a function of ``(seed, epoch)`` alone, the
    resumed run skips the batches already done and continues exactly where it stopped. The
    final weights are bitwise identical to those of an uninterrupted run (with ``epochs``
    unchanged, since the cosine schedule depends on it).

    **Allocation.** A training step runs ``model.forward(x, copy=False)``,
    ``model.backward(g, copy=False)`` and the optimiser's in-place update on reused buffers; only
    the loss allocates a few ``(batch, classes)`` arrays. (When ``N`` is not a multiple of
    ``batch_size``, the layers reallocate their buffers for the short last batch and again for
    the next full one, since they keep one buffer per shape; evaluation does the same.)

    Examples
    --------
    >>> data = fastcnn.datasets.load_mnist5k()
    >>> model = fastcnn.LeNet5()
    >>> opt = fastcnn.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    >>> trainer = fastcnn.Trainer(model, opt, data=data, epochs=20, lr_schedule="cosine", shift=2)
    >>> history = trainer.fit()  # about 98.5% test accuracy (what `fastcnn train` runs)
    """

    def __init__(self, model, optimizer, loss=None, data=None, *, batch_size=64, epochs=10,
                 seed=0, lr_schedule=None, step_size=None, gamma=0.1, shift=0,
                 eval_batch_size=1000, progress=None, log=None, history_path=None, plot_path=None,
                 checkpoint_path=None, checkpoint_every_epoch=True, metadata=None):
        if data is None or not hasattr(data, "train"):
            raise TypeError("data must be a Dataset (or any object with .train and .test "
                            "(images, labels) pairs)")
        self.model = model
        self.optimizer = optimizer
        self.loss = CrossEntropyLoss(dtype=model.dtype) if loss is None else loss
        self.batch_size = _integer(batch_size, "batch_size", 1)
        self.epochs = _integer(epochs, "epochs", 1)
        self.seed = _integer(seed, "seed", 0)
        if lr_schedule == "none":
            lr_schedule = None
        if lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        self.step_size = (max(1, self.epochs // 3) if step_size is None
                          else _integer(step_size, "step_size", 1))
        self.gamma = float(gamma)
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
        self.shift = _integer(shift, "shift", 0)
        self.eval_batch_size = _integer(eval_batch_size, "eval_batch_size", 1)
        self.progress = sys.stderr.isatty() if progress is None else bool(progress)
        self.log = log
        self.history_path = history_path
        self.plot_path = plot_path
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every_epoch = bool(checkpoint_every_epoch)
        self.metadata = dict(metadata or {})
        self.base_lr = float(optimizer.lr)

        train_x, train_y = data.train
        test = getattr(data, "test", None)
        self.train_images, self.train_labels = self._check_split(train_x, train_y, "train")
        self.test_images = self.test_labels = None
        if test is not None:
            self.test_images, self.test_labels = self._check_split(test[0], test[1], "test")
        self.classes = list(getattr(data, "classes", None) or []) or None
        mean, std = getattr(data, "mean", None), getattr(data, "std", None)
        self.normalization = None if mean is None else (float(mean), float(std))

        self._batches = BatchIterator(self.train_images, self.train_labels, self.batch_size,
                                      seed=self.seed)
        self.steps_per_epoch = len(self._batches)
        self._shifter = None
        if self.shift:
            n, _, height, width = self.train_images.shape
            if self.shift >= min(height, width):
                raise ValueError(f"shift must be smaller than the images ({height}x{width}), got "
                                 f"{shift}")
            self._shifter = RandomShift(self.shift, self.seed, n, self.batch_size, height, width,
                                        self.train_images.dtype)
        self._params = model.parameters()
        self.epoch = 0
        self.step = 0
        self.history = []
        self._partial = self._empty_partial()
        self._stop_requested = False

    # ----------------------------------------------------------------------------------------
    # Set-up helpers

    def _check_split(self, images, labels, name):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim != 4 or images.shape[1:] != (1, 32, 32):
            raise ValueError(f"{name} images must have shape (N, 1, 32, 32) (28x28 digits padded "
                             f"by 2), got {images.shape}")
        if images.dtype != self.model.dtype:
            raise TypeError(f"{name} images have dtype {images.dtype} but the model has "
                            f"{self.model.dtype}")
        if labels.shape != (images.shape[0],) or labels.dtype.kind not in "iu":
            raise ValueError(f"{name} labels must be integers of shape ({images.shape[0]},), got "
                             f"{labels.dtype} {labels.shape}")
        if images.shape[0] == 0:
            raise ValueError(f"the {name} split is empty")
        return np.ascontiguousarray(images), labels

    @staticmethod
    def _empty_partial():
        """Running sums of the epoch in progress (saved in mid-epoch checkpoints)."""
        return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}

    def config(self):
        """The settings a checkpoint must agree with to be resumed (plus ``epochs``)."""
        return {
            "batch_size": self.batch_size, "epochs": self.epochs, "seed": self.seed,
            "lr_schedule": self.lr_schedule, "step_size": self.step_size, "gamma": self.gamma,
            "base_lr": self.base_lr, "l2": float(getattr(self.loss, "l2", 0.0)),
            "shift": self.shift,
            "n_train": int(self.train_labels.shape[0]),
            "train_labels_crc32": _labels_crc32(self.train_labels),
        }

    def lr_at(self, epoch, step):
        """The learning rate of batch `step` of epoch `epoch` under this trainer's schedule."""
        return learning_rate(self.lr_schedule, self.base_lr, epoch, step, self.steps_per_epoch,
                             self.epochs, self.step_size, self.gamma)

    def request_stop(self):
        """Ask :meth:`fit` to stop after the current step, as the first Ctrl-C does."""
        self._stop_requested = True

    def _log(self, text):
        if self.log is not None:
            self.log(text)

    # ----------------------------------------------------------------------------------------
    # Training

    def fit(self):
        """Train from the current epoch and step to ``epochs``; return the history.

        Returns
        -------
        list of dict
            :attr:`history`.

        Raises
        ------
        TrainingInterrupted
            After Ctrl-C or :meth:`request_stop` (a checkpoint is saved first if
            `checkpoint_path` is set).
        FloatingPointError
            If the loss becomes NaN or infinite (the learning rate is too high).
        """
        self._stop_requested = False
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            where = (f", resuming at epoch {self.epoch + 1} batch {self.step + 1}"
                     if self.epoch or self.step else "")
            n_test = 0 if self.test_labels is None else self.test_labels.shape[0]
            self._log(f"training on {self.train_labels.shape[0]} images ({self.steps_per_epoch} "
                      f"batches of {self.batch_size}), testing on {n_test}, for {self.epochs} "
                      f"epoch{'s' if self.epochs != 1 else ''}{where}")
            while self.epoch < self.epochs:
                self._run_epoch()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if self.plot_path is not None:
            plot_history(self.history, self.plot_path)
        return self.history

    def _on_sigint(self, signum, frame):
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True

    def _run_epoch(self):
        """Train the rest of epoch ``self.epoch``, evaluate, record, checkpoint."""
        epoch, n = self.epoch, self.steps_per_epoch
        model, loss_fn, optimizer = self.model, self.loss, self.optimizer
        l2_params = self._params if getattr(loss_fn, "l2", 0) > 0 else ()
        partial = self._partial
        first_lr = self.lr_at(epoch, 0)
        bar = tqdm(total=n, initial=self.step, desc=f"epoch {epoch + 1}/{self.epochs}",
                   unit="batch", file=sys.stderr, disable=not self.progress, leave=False,
                   dynamic_ncols=True)
        start = time.perf_counter()
        seconds_before, seen_before = partial["seconds"], partial["seen"]
        shifter = self._shifter
        if shifter is not None:
            shifter.start_epoch(epoch)
        try:
            for i, (x, y) in enumerate(self._batches.epoch(epoch)):
                if i < self.step:
                    continue  # done before the interruption this run resumes from
                if shifter is not None:
                    x = shifter.apply(x, i * self.batch_size)
                optimizer.lr = self.lr_at(epoch, i)
                logits = model.forward(x, copy=False)
                loss = loss_fn.forward(logits, y, l2_params)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"training diverged: the loss is {loss} in epoch {epoch + 1}, batch "
                        f"{i + 1}; lower the learning rate")
                partial["correct"] += int(np.count_nonzero(logits.argmax(axis=1) == y))
                model.backward(loss_fn.backward(), copy=False)
                if l2_params:
                    loss_fn.backward_l2()
                optimizer.step()
                partial["loss_sum"] += loss * y.shape[0]
                partial["seen"] += y.shape[0]
                self.step = i + 1
                if self.progress:
                    elapsed = time.perf_counter() - start
                    rate = (partial["seen"] - seen_before) / elapsed if elapsed > 0 else 0.0
                    bar.set_postfix_str(f"loss {partial['loss_sum'] / partial['seen']:.4f}, acc "
                                        f"{100 * partial['correct'] / partial['seen']:.2f}%, "
                                        f"{rate:,.0f} img/s", refresh=False)
                    bar.update(1)
                if self._stop_requested and self.step < n:
                    partial["seconds"] = seconds_before + time.perf_counter() - start
                    self._interrupt()
        finally:
            bar.close()
        seconds = seconds_before + time.perf_counter() - start

        record = {"epoch": epoch + 1,
                  "loss": partial["loss_sum"] / partial["seen"],
                  "train_acc": partial["correct"] / partial["seen"],
                  "test_loss": None, "test_acc": None,
                  "seconds": seconds, "eval_seconds": 0.0,
                  "images_per_s": partial["seen"] / seconds if seconds > 0 else None,
                  "lr": first_lr}
        if self.test_labels is not None:
            t0 = time.perf_counter()
            result = evaluate(model, self.test_images, self.test_labels, self.eval_batch_size)
            record.update(test_loss=result.loss, test_acc=result.accuracy,
                          eval_seconds=time.perf_counter() - t0)
        self.history.append(record)
        self.epoch, self.step = epoch + 1, 0
        self._partial = self._empty_partial()
        if self.checkpoint_path is not None and self.checkpoint_every_epoch:
            self.save_checkpoint(self.checkpoint_path)
        if self.history_path is not None:
            write_history(self.history, self.history_path)
        self._log(format_epoch(record, self.epochs))
        if self._stop_requested and self.epoch < self.epochs:
            self._interrupt()

    def _interrupt(self):
        path = self.checkpoint_path
        if path is not None:
            self.save_checkpoint(path)
            path = os.fspath(path)
        raise TrainingInterrupted(self.epoch, self.step, self.steps_per_epoch, path)

    # ----------------------------------------------------------------------------------------
    # Files

    def _file_kwargs(self):
        return {"classes": self.classes, "normalization": self.normalization,
                "epoch": self.epoch, "history": self.history, "metadata": self.metadata}

    def save_model(self, path):
        """Save the model with its classes, normalisation, history and optimiser settings (see
        :func:`fastcnn.checkpoint.save_model`)."""
        save_model(path, self.model, optimizer=self.optimizer, **self._file_kwargs())

    def save_checkpoint(self, path):
        """Save everything :meth:`load_checkpoint` needs to resume, atomically."""
        save_checkpoint(path, self.model, self.optimizer, **self._file_kwargs(),
                        header={"step": self.step, "trainer": self.config(),
                                "partial": dict(self._partial)})

    def load_checkpoint(self, path):
        """Restore the model, optimiser, epoch, step and history saved by
        :meth:`save_checkpoint`, so that :meth:`fit` continues the interrupted run.

        Raises
        ------
        ValueError
            If the file is not a checkpoint, or was made with other settings (batch size, seed,
            schedule, base learning rate, loss, optimiser type or hyper-parameters, model, or
            training data) than this trainer's; ``epochs`` may differ.
        """
        model, optim_arrays, header = load_checkpoint(path)
        saved = header.get("trainer")
        if not isinstance(saved, dict):
            raise ValueError(  # noqa: TRY004 (bad file content)
                f"{path}: the checkpoint has no trainer settings")
        mine = self.config()
        diffs = [f"{key}={saved.get(key)!r} (this trainer: {mine[key]!r})"
                 for key in mine if key != "epochs" and saved.get(key) != mine[key]]
        info = header["optimizer"]
        my_info = self.optimizer.state_dict()[1]
        diffs += [f"optimizer {key}={info.get(key)!r} (this trainer: {my_info[key]!r})"
                  for key in my_info if key not in ("lr", "steps") and info.get(key) !=
                  my_info[key]]
        if model.num_classes != getattr(self.model, "num_classes", None):
            diffs.append(f"num_classes={model.num_classes}")
        if diffs:
            raise ValueError(f"{path}: the checkpoint was made with other settings: "
                             + ", ".join(diffs))
        step, epoch = header.get("step"), header.get("epoch")
        partial = header.get("partial")
        ok = (isinstance(epoch, int) and isinstance(step, int) and 0 <= step <=
              self.steps_per_epoch and epoch >= 0 and isinstance(partial, dict)
              and set(partial) == set(self._empty_partial()))
        if not ok:
            raise ValueError(f"{path}: invalid epoch/step/partial in the checkpoint header")
        self.model.load_state_dict(model.state_dict())
        self.optimizer.load_state_dict(optim_arrays, info)
        self.epoch, self.step = epoch, step
        self.history = list(header.get("history") or [])
        self._partial = dict(partial)


# --------------------------------------------------------------------------------------------
# History


def format_epoch(record, epochs):
    """One line summing up a history entry, e.g. for a log."""
    test = "" if record["test_acc"] is None else f"  test {100 * record['test_acc']:.2f}%"
    rate = record["images_per_s"] or 0.0
    return (f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  loss {record['loss']:.4f}  "
            f"train {100 * record['train_acc']:.2f}%{test}  {record['seconds']:.1f} s  "
            f"{rate:,.0f} img/s  lr {record['lr']:.4g}")


def write_history(history, path):
    """Write the history list as JSON to `path` (replacing it atomically)."""
    text = json.dumps(history, indent=1) + "\n"
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def _require_matplotlib():
    """Import matplotlib's Agg canvas and Figure, with a clear error if it is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plotting the learning curve needs matplotlib: "
                          "pip install 'fastcnn[plot]'") from exc
    return Figure, FigureCanvasAgg


def plot_history(history, path):
    """Save learning curves (loss and accuracy per epoch, train and test) as a PNG.

    Uses matplotlib's Agg canvas directly: no window, and pyplot's global backend is left alone.

    Parameters
    ----------
    history : list of dict
        :attr:`Trainer.history`.
    path : str or os.PathLike

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    """
    Figure, FigureCanvasAgg = _require_matplotlib()
    if not history:
        raise ValueError("the history is empty: nothing to plot")
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["loss"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * h["train_acc"] for h in history], "o-", label="train")
    if any(h.get("test_acc") is not None for h in history):
        ax_loss.plot(epochs, [h.get("test_loss") for h in history], "s-", label="test")
        ax_acc.plot(epochs, [100 * h["test_acc"] if h.get("test_acc") is not None else None
                             for h in history], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(os.fspath(path), dpi=100)
