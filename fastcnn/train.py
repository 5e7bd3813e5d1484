"""Mini-batch training of any model on any image data: the :class:`Trainer` loop and its
collaborators.

:class:`Trainer` is a loop over four collaborators:

- :class:`TrainingData`: the training, validation and test splits, the shuffled batches of every
  epoch and their augmentation (:mod:`fastcnn.transforms`);
- a learning-rate schedule (:mod:`fastcnn.schedules`), applied to every parameter group;
- :class:`Checkpointer`: where and when checkpoints are written;
- :class:`Progress`: progress bar, log lines, the JSON history and the learning-curve plot.

A run is a pure function of its settings: the batch order of epoch ``e`` is
``default_rng([seed, e]).permutation(N)``, augmentation draws are a function of ``(seed, epoch,
position)``, dropout layers are seeded from the trainer's seed, the kernels are bitwise
reproducible for any thread count, and a run interrupted (Ctrl-C, :meth:`Trainer.request_stop`)
and resumed from its checkpoint or :meth:`Trainer.state_dict` ends with the same weights, bit for
bit, as one that was never interrupted.
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
from .schedules import SCHEDULES, get_schedule
from .transforms import Compose

__all__ = [
    "SCHEDULES",
    "Checkpointer",
    "Evaluation",
    "Progress",
    "Trainer",
    "TrainingData",
    "TrainingInterrupted",
    "evaluate",
    "learning_rate",
    "plot_history",
]


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
        Where the checkpoint was saved, or None if the trainer had no checkpoint path.
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

    The model runs in evaluation mode (``model.eval()``; batch norm uses its running statistics,
    dropout is off) and is put back in the mode it was in. Only forward passes are run.

    Parameters
    ----------
    model : Sequential
        Any classifier whose output is ``(N, num_classes)`` logits; its dtype must match `images`.
    images : ndarray, shape (N, C, H, W)
        (Or whatever shape the model takes, with a leading sample axis.)
    labels : ndarray, shape (N,)
        Integer class labels in ``[0, num_classes)``.
    batch_size : int, default 1000

    Returns
    -------
    Evaluation
        ``(loss, accuracy, predictions)``.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    n = labels.shape[0] if labels.ndim else 0
    if labels.ndim != 1 or images.ndim < 2 or images.shape[0] != n:
        raise ValueError(f"images {images.shape} and labels {labels.shape} must share their "
                         f"leading length, with one label per image")
    if n == 0:
        raise ValueError("cannot evaluate on an empty data set")
    batch_size = _integer(batch_size, "batch_size", 1)
    predictions = np.empty(n, dtype=np.int64)
    total = 0.0
    modes = _modes(model)
    model.eval()
    try:
        for start in range(0, n, batch_size):
            x = np.ascontiguousarray(images[start:start + batch_size])
            y = labels[start:start + batch_size]
            z = _logits(model, x).astype(np.float64)
            if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
                bad = y.min() if y.min() < 0 else y.max()
                raise ValueError(f"label {bad} is out of range for a model with {z.shape[1]} "
                                 f"outputs")
            predictions[start:start + y.shape[0]] = z.argmax(axis=1)
            z -= z.max(axis=1, keepdims=True)
            log_sum = np.log(np.exp(z).sum(axis=1))
            total += float(np.sum(log_sum - z[np.arange(y.shape[0]), y]))
    finally:
        _restore_modes(modes)
    accuracy = float(np.count_nonzero(predictions == labels)) / n
    return Evaluation(total / n, accuracy, predictions)


def _modes(model):
    """``(module, training)`` of the model and every sub-module, to put back after a switch."""
    return [(m, m.training) for _, m in _modules(model) if hasattr(m, "training")]


def _restore_modes(modes):
    for m, training in modes:
        m.training = training


def _logits(model, x):
    try:
        z = model.forward(x, copy=False)
    except TypeError:  # a model whose forward has no copy argument
        z = model.forward(x)
    if z.ndim != 2:
        raise ValueError(f"the model must output (N, num_classes) logits, got shape {z.shape}")
    return z


def learning_rate(schedule, base_lr, epoch, step, steps_per_epoch, epochs, step_size=1,
                  gamma=0.1):
    """The learning rate of batch `step` of epoch `epoch` (both 0-based) under a schedule given
    by name (None, "step", "cosine", ...; see :func:`fastcnn.schedules.get_schedule`)."""
    kwargs = {"step_size": step_size, "gamma": gamma} if schedule == "step" else {}
    return get_schedule(schedule, epochs, **kwargs).lr(base_lr, epoch, step, steps_per_epoch,
                                                       epochs)


def _integer(value, name, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _labels_crc32(labels):
    """A fingerprint of the training labels, so a checkpoint is not resumed on other data."""
    return zlib.crc32(np.ascontiguousarray(labels, dtype=np.int64).tobytes())


# --------------------------------------------------------------------------------------------
# Collaborator 1: the data


class TrainingData:
    """The splits of a data set as the trainer uses them: shuffled, augmented training batches,
    an optional validation split held out of the training data, and a test split.

    Parameters
    ----------
    data : Dataset
        Anything with ``train`` (an ``(images, labels)`` pair) and ``test`` (a pair or None),
        such as :func:`fastcnn.datasets.load_dataset`'s result. Images ``(N, C, H, W)`` floating,
        labels ``(N,)`` integers. Optional attributes ``classes`` and ``normalization`` (or
        ``mean`` / ``std``) are recorded in model files and checkpoints.
    batch_size : int, default 64
        The last batch of an epoch holds the remaining ``N % batch_size`` samples, if any.
    seed : int, default 0
        Selects the batch order of every epoch (``default_rng([seed, epoch])``), the
        augmentation draws and the validation split.
    augment : sequence of Transform, optional
        Random transforms of every training batch (e.g. ``[RandomShift(2)]``); they must keep the
        image shape (the model sees unaugmented validation and test images).
    val_split : float in [0, 1), default 0
        Fraction of the training data held out for validation (rounded to whole samples),
        selected by a permutation seeded with `seed`; the rest, in its original order, is
        trained on.

    Shape
    -----
    ``train``, ``val``, ``test``: ``(images (N, C, H, W), labels (N,))`` pairs or None.
    """

    def __init__(self, data, batch_size=64, *, seed=0, augment=(), val_split=0.0):
        if data is None or not hasattr(data, "train"):
            raise TypeError("data must be a Dataset (with .train and .test), e.g. "
                            "fastcnn.datasets.load_dataset(...)")
        self.batch_size = _integer(batch_size, "batch_size", 1)
        self.seed = _integer(seed, "seed", 0)
        if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) or \
                not 0 <= val_split < 1:
            raise ValueError(f"val_split must be a fraction in [0, 1), got {val_split!r}")
        self.val_split = float(val_split)
        train_x, train_y = _check_split(*data.train, "train")
        test = getattr(data, "test", None)
        self.test = None if test is None else _check_split(*test, "test")
        self.val = None
        if self.val_split:
            n = train_y.shape[0]
            n_val = int(round(self.val_split * n))
            if not 1 <= n_val < n:
                raise ValueError(f"val_split={val_split} of {n} training images leaves "
                                 f"{n_val} for validation and {n - n_val} for training; both "
                                 f"need at least one")
            order = np.random.default_rng([self.seed, 86, 65, 76]).permutation(n)
            val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
            self.val = (np.ascontiguousarray(train_x[val_idx]), train_y[val_idx])
            train_x, train_y = np.ascontiguousarray(train_x[train_idx]), train_y[train_idx]
        self.train = (train_x, train_y)
        for name, split in (("validation", self.val), ("test", self.test)):
            if split is not None and (split[0].shape[1:] != train_x.shape[1:] or
                                      split[0].dtype != train_x.dtype):
                raise ValueError(f"the {name} images are {split[0].dtype} {split[0].shape[1:]}, "
                                 f"the training images {train_x.dtype} {train_x.shape[1:]}")
        self.classes = list(getattr(data, "classes", None) or []) or None
        self.normalization = _normalization(data)
        self.name = getattr(data, "name", None)
        self.batches = BatchIterator(train_x, train_y, self.batch_size, seed=self.seed)
        self.augment = Compose(augment)
        if len(self.augment):
            shape = train_x.shape[1:]
            out = self.augment.output_shape(shape)
            if out != shape:
                raise ValueError(f"augmentation {self.augment!r} turns {shape} images into "
                                 f"{out}; it must keep the image shape")
            self.augment.bind(train_y.shape[0], self.batch_size, shape, train_x.dtype, self.seed)

    @property
    def n_train(self):
        return int(self.train[1].shape[0])

    @property
    def image_shape(self):
        """``(C, H, W)`` of the images."""
        return tuple(self.train[0].shape[1:])

    @property
    def dtype(self):
        return self.train[0].dtype

    @property
    def steps_per_epoch(self):
        return len(self.batches)

    def epoch(self, epoch, first_step=0, shard=None):
        """Yield ``(i, x, y)`` for batches ``i = first_step, ...`` of `epoch`, augmented. The
        arrays are reused buffers, overwritten by the next batch.

        With `shard` (a function ``n -> (lo, hi)``, e.g. a distributed Communicator's
        ``shard``), only samples ``[lo, hi)`` of every batch of ``n`` are gathered and
        augmented, with the augmentation draws of their positions in the whole batch: the
        shards of all ranks together are exactly the batches of one process."""
        augment = self.augment if len(self.augment) else None
        if augment is not None:
            augment.start_epoch(epoch)
        if shard is not None:
            yield from self._sharded_epoch(epoch, first_step, shard, augment)
            return
        for i, (x, y) in enumerate(self.batches.epoch(epoch)):
            if i < first_step:
                continue  # done before the interruption this run resumes from
            if augment is not None:
                x = augment.apply(x, i * self.batch_size)
            yield i, x, y

    def batch_length(self, i):
        """Samples in batch `i` of an epoch (``batch_size``, less for the last one)."""
        return min(self.batch_size, self.n_train - i * self.batch_size)

    def _sharded_epoch(self, epoch, first_step, shard, augment):
        from .datasets import _fill_order

        images, labels = self.train
        b = self.batch_size
        order = _fill_order(np.empty(self.n_train, dtype=np.int64), self.batches.shuffle,
                            self.seed, epoch)
        rows = max(hi - lo for lo, hi in (shard(self.batch_length(j)) for j in
                                          range(len(self.batches))))
        xbuf = np.empty((rows,) + images.shape[1:], dtype=images.dtype)
        ybuf = np.empty(rows, dtype=labels.dtype)
        for i in range(first_step, len(self.batches)):
            lo, hi = shard(self.batch_length(i))
            idx = order[i * b + lo:i * b + hi]
            x, y = xbuf[:hi - lo], ybuf[:hi - lo]
            np.take(images, idx, axis=0, out=x, mode="clip")
            np.take(labels, idx, axis=0, out=y, mode="clip")
            if augment is not None:
                x = augment.apply(x, i * b + lo)
            yield i, x, y

    def config(self):
        """The settings a checkpoint must agree with to be resumed."""
        return {"batch_size": self.batch_size, "seed": self.seed,
                "augment": self.augment.config(), "val_split": self.val_split,
                "n_train": self.n_train, "train_labels_crc32": _labels_crc32(self.train[1])}


def _check_split(images, labels, name):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"{name} images must have shape (N, C, H, W), got {images.shape}")
    if images.dtype.kind != "f":
        raise TypeError(f"{name} images must be floating point, got {images.dtype}")
    if labels.shape != (images.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(f"{name} labels must be integers of shape ({images.shape[0]},), got "
                         f"{labels.dtype} {labels.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"the {name} split is empty")
    if labels.min() < 0:
        raise ValueError(f"{name} label {labels.min()} is negative")
    return np.ascontiguousarray(images), labels


def _normalization(data):
    """The data set's normalisation for model files: ``{"mean": m, "std": s}`` with numbers for
    one channel (the format model files have always had) and lists for several, or None."""
    norm = getattr(data, "normalization", None)
    if norm is None:
        mean, std = getattr(data, "mean", None), getattr(data, "std", None)
        if mean is None:
            return None
        norm = {"mean": mean, "std": std}
    mean = np.atleast_1d(np.asarray(norm["mean"], dtype=np.float64)).tolist()
    std = np.atleast_1d(np.asarray(norm["std"], dtype=np.float64)).tolist()
    if len(mean) == 1:
        return {"mean": mean[0], "std": std[0]}
    return {"mean": mean, "std": std}


# --------------------------------------------------------------------------------------------
# Collaborators 3 and 4: checkpoints, progress


class Checkpointer:
    """Where and when :class:`Trainer` writes checkpoints.

    Parameters
    ----------
    path : str or os.PathLike
        Written (atomically) when training is interrupted, and after every epoch if
        `every_epoch`.
    every_epoch : bool, default True
    """

    def __init__(self, path, every_epoch=True):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"checkpoint path must be a str or os.PathLike, got {path!r}")
        self.path = path
        self.every_epoch = bool(every_epoch)

    def epoch_end(self, trainer):
        if self.every_epoch:
            trainer.save_checkpoint(self.path)

    def interrupted(self, trainer):
        trainer.save_checkpoint(self.path)
        return os.fspath(self.path)


class Progress:
    """Progress bar, log lines, history file and learning-curve plot of a run.

    Parameters
    ----------
    bar : bool, optional
        Show a tqdm bar per epoch on stderr (loss, accuracy, images/s). Default: only when
        stderr is a terminal.
    log : callable, optional
        Called with one line of text at the start of training, after every epoch and at the end
        (e.g. ``print``). Default: silent.
    history_path : str or os.PathLike, optional
        Write the history as JSON here after every epoch.
    plot_path : str or os.PathLike, optional
        Save a learning-curve PNG here at the end of training (needs matplotlib).
    """

    def __init__(self, bar=None, log=None, history_path=None, plot_path=None):
        self.bar = sys.stderr.isatty() if bar is None else bool(bar)
        self.log = log
        self.history_path = history_path
        self.plot_path = plot_path
        self._bar = None

    def line(self, text):
        if self.log is not None:
            self.log(text)

    def start_epoch(self, epoch, epochs, steps, initial):
        self._bar = tqdm(total=steps, initial=initial, desc=f"epoch {epoch + 1}/{epochs}",
                         unit="batch", file=sys.stderr, disable=not self.bar, leave=False,
                         dynamic_ncols=True)
        self._start = time.perf_counter()
        self._seen0 = None

    def step(self, partial):
        if not self.bar:
            return
        if self._seen0 is None:
            self._seen0 = partial["seen"] - 1
        elapsed = time.perf_counter() - self._start
        rate = (partial["seen"] - self._seen0) / elapsed if elapsed > 0 else 0.0
        self._bar.set_postfix_str(f"loss {partial['loss_sum'] / partial['seen']:.4f}, acc "
                                  f"{100 * partial['correct'] / partial['seen']:.2f}%, "
                                  f"{rate:,.0f} img/s", refresh=False)
        self._bar.update(1)

    def close_epoch(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def end_epoch(self, record, history, epochs):
        if self.history_path is not None:
            write_history(history, self.history_path)
        self.line(format_epoch(record, epochs))

    def finish(self, history):
        if self.history_path is not None and history:
            write_history(history, self.history_path)
        if self.plot_path is not None and history:
            plot_history(history, self.plot_path)


# --------------------------------------------------------------------------------------------
# The loop


class _Extra:
    """An optimiser seen by ``save_checkpoint`` with extra arrays (the best epoch's weights)
    stored beside its state, under keys that cannot clash with ``<param>.<slot>``."""

    def __init__(self, optimizer, extra):
        self.optimizer, self.extra = optimizer, extra

    def state_dict(self):
        arrays, info = self.optimizer.state_dict()
        arrays = dict(arrays)
        arrays.update(self.extra)
        return arrays, info


_BEST = "best:"


def _modules(module, prefix=""):
    yield prefix, module
    for name, child in module.children():
        yield from _modules(child, f"{prefix}{name}." if prefix else f"{name}.")


def _module_steps(model):
    """``{module path: step}`` of every module with an integer ``step`` (dropout counters)."""
    out = {}
    for name, m in _modules(model):
        step = getattr(m, "step", None)
        if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
            out[name.rstrip(".") or "."] = int(step)
    return out


def _set_module_steps(model, steps):
    by_name = {name.rstrip(".") or ".": m for name, m in _modules(model)}
    for name, step in steps.items():
        if name not in by_name or not hasattr(by_name[name], "step"):
            raise ValueError(f"module {name!r} with a step counter is not in the model")
    for name, step in steps.items():
        by_name[name].step = int(step)


class Trainer:
    """Mini-batch training of any model on ``(N, C, H, W)`` images: schedules, validation,
    best-epoch selection, checkpoints, bitwise resume, Ctrl-C handling.

    Parameters
    ----------
    model : Sequential
        Any model whose output is ``(N, num_classes)`` logits. It is put in training mode
        (``model.train()``) for training and evaluation mode for evaluation, and left in the
        mode it was in. Dropout layers are seeded from `seed`.
    optimizer : SGD, Adam or AdamW
        Built on the model's parameters or parameter groups (``model.param_groups(wd)``). Each
        group's ``lr`` at construction is its base rate, scaled by the schedule before every
        step.
    data : Dataset or TrainingData
        A data set (see :class:`TrainingData`; `batch_size`, `augment` and `val_split` build its
        :class:`TrainingData`) or a ready :class:`TrainingData`. Images in the model's dtype.
    loss : loss object, optional
        Default ``CrossEntropyLoss()`` in the model's dtype. Any object with ``forward(logits,
        labels, params) -> float``, ``backward() -> grad_logits`` and ``backward_l2()`` (e.g.
        ``CrossEntropyLoss(l2=..., label_smoothing=...)``).
    epochs : int, default 10
    batch_size : int, default 64
    seed : int, default 0
        Batch order, augmentation, validation split and dropout masks (the model's
        initialisation has its own seed).
    schedule : Schedule or str, optional
        A :mod:`fastcnn.schedules` object, or a name: None / "none" (constant), "step" (decay by
        0.1 every ``max(1, epochs // 3)`` epochs), "cosine" (per step, to 0), "onecycle".
        (``lr_schedule`` is an alias.)
    augment : sequence of Transform, optional
        E.g. ``[RandomShift(2)]`` or ``[RandomCrop(32, 4), RandomHorizontalFlip()]``.
    val_split : float in [0, 1), default 0
        Hold this fraction of the training data out for validation: it is evaluated after every
        epoch, the weights and buffers of the best epoch (highest validation accuracy, then
        lowest validation loss) are kept and restored at the end of training, and the test
        split is evaluated once, on them.
    checkpoint : str, os.PathLike or Checkpointer, optional
        Checkpoint file (written after every epoch and on interruption).
    progress : bool or Progress, optional
        A :class:`Progress`, or whether to show the progress bar (default: if stderr is a
        terminal).
    log : callable, optional
        Shortcut for ``Progress(log=...)``.
    eval_batch_size : int, default 1000
    metadata : dict, optional
        JSON-serialisable information stored in checkpoints and model files.
    distributed : bool or fastcnn.distributed.Communicator, optional
        Synchronous data-parallel training over MPI (run under ``mpirun``; True builds a
        ``Communicator()``): see *Distributed* below.
    sync_bn : bool, default False
        With `distributed`: batch-norm layers normalise with the statistics of the whole global
        batch (and backpropagate through them), as one process would; the default is per-rank
        statistics (PyTorch DDP's default).

    Attributes
    ----------
    epoch : int
        Epochs completed.
    step : int
        Batches of the current epoch completed (non-zero only after an interruption).
    history : list of dict
        One entry per completed epoch: ``epoch`` (1-based), ``loss`` and ``train_acc`` (of the
        epoch's training steps), ``val_loss``, ``val_acc`` (None without a validation split),
        ``test_loss``, ``test_acc``, ``seconds`` (training time of the epoch), ``eval_seconds``,
        ``images_per_s`` and ``lr`` (the first group's rate at the epoch's first step). Without a
        validation split the test split is evaluated every epoch; with one, ``test_*`` are None
        except in the last entry, which after training also holds ``best_epoch`` (the epoch
        whose weights were restored) and the test evaluation of those weights.
    steps_per_epoch : int

    Notes
    -----
    **Ctrl-C.** While :meth:`fit` runs in the main thread it handles SIGINT itself: the first
    Ctrl-C lets the current step finish, saves a checkpoint (if there is a checkpoint path) and
    raises :class:`TrainingInterrupted`; a second Ctrl-C raises ``KeyboardInterrupt`` at once.
    :meth:`request_stop` does the same as the first Ctrl-C.

    **Resuming.** Build a trainer with the same settings (``epochs`` may differ), call
    :meth:`load_checkpoint` (or :meth:`load_state_dict` with a :meth:`state_dict`), then
    :meth:`fit`. The state holds the weights and buffers (batch-norm statistics), the optimiser
    state, the epoch and batch reached, the running sums of the interrupted epoch, the dropout
    step counters, the best epoch's weights and the history; the batch order and augmentation
    draws are functions of ``(seed, epoch)``. The final weights are bitwise identical to those
    of an uninterrupted run (with ``epochs`` unchanged, since schedules depend on it).

    **Distributed.** Every rank holds the model and reads its contiguous shard of each global
    batch (``batch_size`` is the global batch; the batches do not depend on the number of ranks
    K); its logits gradient is scaled by its share ``n_r / N`` and the gradients, the loss,
    the number of correct predictions and the stop flag are summed in rank order with one
    collective per step (bitwise reproducible for a fixed K, any thread count). Dropout layers
    get ``sample_offset`` = the shard's first index in the batch, so the masks are those of one
    process. Weights and buffers are broadcast from rank 0 at the start of :meth:`fit`;
    evaluation is sharded (after broadcasting rank 0's buffers) and summed; only rank 0 writes
    checkpoints, model files, history and log lines. A stop request (Ctrl-C, SIGTERM or SIGUSR1
    on any rank, or :meth:`request_stop`) stops every rank after the same step. An exception
    on one rank ends the whole job (``MPI_Abort``) with a message. Every batch must give every
    rank at least one sample.

    **Allocation.** A training step runs ``model.forward(x, copy=False)``,
    ``model.backward(g, copy=False)``, the augmentation and the optimiser's update on reused
    buffers; only the loss allocates a few ``(batch, classes)`` arrays.

    Examples
    --------
    >>> data = fastcnn.datasets.load_mnist5k()
    >>> model = fastcnn.LeNet5()
    >>> opt = fastcnn.SGD(model.param_groups(5e-4), lr=0.05, momentum=0.9)
    >>> trainer = fastcnn.Trainer(model, opt, data, epochs=20, schedule="cosine",
    ...                           augment=[RandomShift(2)])
    >>> history = trainer.fit()  # about 98.5% test accuracy (what `fastcnn train` runs)
    """

    def __init__(self, model, optimizer, data, *, loss=None, epochs=10, batch_size=64, seed=0,
                 schedule=None, augment=(), val_split=0.0, checkpoint=None, progress=None,
                 log=None, eval_batch_size=1000, metadata=None, lr_schedule=None,
                 distributed=None, sync_bn=False):
        self.model = model
        self.optimizer = optimizer
        self.loss = CrossEntropyLoss(dtype=model.dtype) if loss is None else loss
        for method in ("forward", "backward"):
            if not callable(getattr(self.loss, method, None)):
                raise TypeError(f"loss must have forward(logits, labels, params) and backward(),"
                                f" got {self.loss!r}")
        self.epochs = _integer(epochs, "epochs", 1)
        self.eval_batch_size = _integer(eval_batch_size, "eval_batch_size", 1)
        if schedule is not None and lr_schedule is not None:
            raise ValueError("give schedule or lr_schedule, not both")
        self.schedule = get_schedule(schedule if lr_schedule is None else lr_schedule,
                                     self.epochs)
        if isinstance(data, TrainingData):
            self.data = data
        else:
            self.data = TrainingData(data, batch_size, seed=seed, augment=augment,
                                     val_split=val_split)
        self.seed = self.data.seed
        self.checkpointer = (checkpoint if isinstance(checkpoint, Checkpointer) or
                             checkpoint is None else Checkpointer(checkpoint))
        self.progress = (progress if isinstance(progress, Progress)
                         else Progress(bar=progress, log=log))
        self.metadata = metadata
        if self.data.dtype != model.dtype:
            raise TypeError(f"the images have dtype {self.data.dtype} but the model has "
                            f"{model.dtype}")
        self._check_model()
        seed_dropout = getattr(_dropout_module(), "seed_dropout", None)
        if seed_dropout is not None:
            seed_dropout(model, self.seed)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self._params = model.parameters()
        self.epoch = 0
        self.step = 0
        self.history = []
        self._partial = self._empty_partial()
        self._best = None  # {"epoch", "val_acc", "val_loss"} of the best epoch so far
        self._best_state = None  # its model.state_dict() (arrays reused)
        self._stop_requested = False
        self._setup_distributed(distributed, sync_bn)

    def _check_model(self):
        """One forward pass of one training image, in eval mode: the model must take the
        images and have an output for every class label."""
        model = self.model
        x = self.data.train[0][:1]
        modes, steps = _modes(model), _module_steps(model)
        model.eval()
        try:
            z = _logits(model, np.ascontiguousarray(x))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"the model does not take the training images "
                             f"{self.data.image_shape}: {exc}") from None
        finally:
            _restore_modes(modes)
            _set_module_steps(model, steps)
        k = z.shape[1]
        for name, split in (("train", self.data.train), ("validation", self.data.val),
                            ("test", self.data.test)):
            if split is not None and split[1].max() >= k:
                raise ValueError(f"{name} label {split[1].max()} is out of range for a model "
                                 f"with {k} outputs")

    # -- shortcuts to the collaborators ---------------------------------------------------------

    @property
    def steps_per_epoch(self):
        return self.data.steps_per_epoch

    @property
    def batch_size(self):
        return self.data.batch_size

    @property
    def checkpoint_path(self):
        return None if self.checkpointer is None else self.checkpointer.path

    @property
    def classes(self):
        return self.data.classes

    @property
    def normalization(self):
        return self.data.normalization

    @property
    def best_epoch(self):
        """The 1-based epoch with the best validation accuracy so far (None without a
        validation split)."""
        return None if self._best is None else self._best["epoch"]

    @staticmethod
    def _empty_partial():
        """Running sums of the epoch in progress (saved in mid-epoch checkpoints)."""
        return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}

    def config(self):
        """The settings a checkpoint must agree with to be resumed (plus ``epochs``)."""
        cfg = {"epochs": self.epochs, "schedule": self.schedule.config(),
               "base_lrs": list(self.base_lrs), "loss": _loss_config(self.loss)}
        cfg.update(self.data.config())
        return cfg

    def lr_at(self, epoch, step, base_lr=None):
        """The learning rate of batch `step` of epoch `epoch` for a group whose base rate is
        `base_lr` (default: the first group's)."""
        base = self.base_lrs[0] if base_lr is None else base_lr
        return self.schedule.lr(base, epoch, step, self.steps_per_epoch, self.epochs)

    def request_stop(self):
        """Ask :meth:`fit` to stop after the current step, as the first Ctrl-C does."""
        self._stop_requested = True

    # -- training --------------------------------------------------------------------------------

    def fit(self):
        """Train from the current epoch and step to ``epochs``; return the history.

        Raises
        ------
        TrainingInterrupted
            After Ctrl-C or :meth:`request_stop` (a checkpoint is saved first if there is a
            checkpoint path).
        FloatingPointError
            If the loss becomes NaN or infinite (the learning rate is too high).
        """
        self._stop_requested = self._stop_agreed = False
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self._stop_signals():
                previous[sig] = signal.signal(sig, self._on_sigint)
        modes = _modes(self.model)
        try:
            if self.comm is not None:
                self.comm.broadcast_state(self.model)
            data = self.data
            where = (f", resuming at epoch {self.epoch + 1} batch {self.step + 1}"
                     if self.epoch or self.step else "")
            n_test = 0 if data.test is None else data.test[1].shape[0]
            val = "" if data.val is None else f", validating on {data.val[1].shape[0]}"
            self.progress.line(
                f"training on {data.n_train} images ({self.steps_per_epoch} batches of "
                f"{self.batch_size}){val}, testing on {n_test}, for {self.epochs} "
                f"epoch{'s' if self.epochs != 1 else ''}{where}")
            while self.epoch < self.epochs:
                self._run_epoch()
            self._finish()
        except BaseException as exc:
            if self.comm is not None and self.comm.size > 1 and \
                    not getattr(exc, "all_ranks", False):
                import traceback

                traceback.print_exc()
                self.comm.abort(f"{type(exc).__name__}: {exc}; ending the other ranks")
            raise
        finally:
            _restore_modes(modes)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.progress.finish(self.history)
        return self.history

    def _on_sigint(self, signum, frame):
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True

    def _run_epoch(self):
        """Train the rest of epoch ``self.epoch``, evaluate, record, checkpoint."""
        epoch, n = self.epoch, self.steps_per_epoch
        model, loss_fn, optimizer, schedule = self.model, self.loss, self.optimizer, self.schedule
        groups, base_lrs = optimizer.param_groups, self.base_lrs
        l2_params = self._params if getattr(loss_fn, "l2", 0) > 0 else ()
        partial = self._partial
        first_lr = self.lr_at(epoch, 0)
        seconds_before = partial["seconds"]
        self.progress.start_epoch(epoch, self.epochs, n, self.step)
        start = time.perf_counter()
        model.train()
        comm = self.comm
        try:
            for i, x, y in self.data.epoch(epoch, self.step,
                                           shard=None if comm is None else comm.shard):
                for group, base in zip(groups, base_lrs):
                    group["lr"] = schedule.lr(base, epoch, i, n, self.epochs)
                if comm is not None:
                    loss, correct, seen = self._distributed_step(epoch, i, x, y, l2_params)
                else:
                    logits = model.forward(x, copy=False)
                    loss = loss_fn.forward(logits, y, l2_params)
                    if not math.isfinite(loss):
                        raise _diverged(loss, epoch, i)
                    correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
                    model.backward(loss_fn.backward(), copy=False)
                    if l2_params:
                        loss_fn.backward_l2()
                    seen = y.shape[0]
                optimizer.step()
                partial["correct"] += correct
                partial["loss_sum"] += loss * seen
                partial["seen"] += seen
                self.step = i + 1
                self.progress.step(partial)
                if (self._stop_requested if comm is None else self._stop_agreed) and \
                        self.step < n:
                    partial["seconds"] = seconds_before + time.perf_counter() - start
                    self._interrupt()
        finally:
            self.progress.close_epoch()
        seconds = seconds_before + time.perf_counter() - start

        record = {"epoch": epoch + 1,
                  "loss": partial["loss_sum"] / partial["seen"],
                  "train_acc": partial["correct"] / partial["seen"],
                  "val_loss": None, "val_acc": None, "test_loss": None, "test_acc": None,
                  "seconds": seconds, "eval_seconds": 0.0,
                  "images_per_s": partial["seen"] / seconds if seconds > 0 else None,
                  "lr": first_lr}
        t0 = time.perf_counter()
        if self.data.val is not None:
            result = self._evaluate(*self.data.val)
            record.update(val_loss=result.loss, val_acc=result.accuracy)
            self._consider_best(record)
        elif self.data.test is not None:
            result = self._evaluate(*self.data.test)
            record.update(test_loss=result.loss, test_acc=result.accuracy)
        record["eval_seconds"] = time.perf_counter() - t0
        self.history.append(record)
        self.epoch, self.step = epoch + 1, 0
        self._partial = self._empty_partial()
        if self.checkpointer is not None:
            self.checkpointer.epoch_end(self)
        self.progress.end_epoch(record, self.history, self.epochs)
        if comm is not None:  # a stop request seen since the last step's sum: agree on it
            self._stop_agreed = comm.agree(self._stop_requested)
        if (self._stop_requested if comm is None else self._stop_agreed) and \
                self.epoch < self.epochs:
            self._interrupt()

    def _consider_best(self, record):
        best = self._best
        better = (best is None or record["val_acc"] > best["val_acc"] or
                  (record["val_acc"] == best["val_acc"] and record["val_loss"] <
                   best["val_loss"]))
        if not better:
            return
        self._best = {"epoch": record["epoch"], "val_acc": record["val_acc"],
                      "val_loss": record["val_loss"]}
        if self._best_state is None:
            self._best_state = self.model.state_dict()
        else:  # copy into the arrays kept from the last time
            for (key, target), value in zip(self._best_state.items(),
                                            self.model.state_dict().values()):
                np.copyto(target, value)

    def _finish(self):
        """With a validation split: restore the best epoch's weights and buffers and evaluate
        the test split once on them (recorded in the last history entry)."""
        if self._best is None or not self.history or "best_epoch" in self.history[-1]:
            return
        self.model.load_state_dict(self._best_state)
        last = self.history[-1]
        last["best_epoch"] = self._best["epoch"]
        text = (f"restored the weights of epoch {self._best['epoch']} (validation accuracy "
                f"{100 * self._best['val_acc']:.2f}%)")
        if self.data.test is not None:
            result = self._evaluate(*self.data.test)
            last.update(test_loss=result.loss, test_acc=result.accuracy)
            text += f"; test accuracy {100 * result.accuracy:.2f}%"
        self.progress.line(text)

    def _interrupt(self):
        path = None
        if self.checkpointer is not None:
            path = self.checkpointer.interrupted(self)
        exc = TrainingInterrupted(self.epoch, self.step, self.steps_per_epoch, path)
        exc.all_ranks = True  # raised by every rank of a distributed run, after the same step
        raise exc

    # -- data parallelism (fastcnn.distributed) --------------------------------------------------

    def _setup_distributed(self, distributed, sync_bn):
        """``self.comm``: None, or the Communicator of a data-parallel run (see the class
        Notes); checks that every batch has a sample for every rank; silences the progress of
        every rank but 0; hooks the batch-norm layers up for `sync_bn`."""
        self.comm = None
        self.sync_bn = bool(sync_bn)
        self._dropouts = [m for _, m in _modules(self.model) if hasattr(m, "sample_offset")]
        if distributed is None or distributed is False:
            if self.sync_bn:
                raise ValueError("sync_bn=True needs distributed training (distributed=True)")
            return
        if distributed is True:
            from .distributed import Communicator

            distributed = Communicator()
        for attr in ("rank", "size", "is_root", "shard", "sum_gradients", "allgather"):
            if not hasattr(distributed, attr):
                raise TypeError(f"distributed must be True or a fastcnn.distributed."
                                f"Communicator, got {distributed!r}")
        self.comm = comm = distributed
        k, b, n = comm.size, self.batch_size, self.data.n_train
        short = min(b, n % b or b)
        if short < k:
            raise ValueError(f"{k} ranks need at least {k} samples in every batch, but "
                             f"{n} training images in batches of {b} leave a batch of {short}; "
                             f"choose another batch size")
        if not comm.is_root:
            self.progress = Progress(bar=False)
        from .nn.normalization import _BatchNorm

        for _, m in _modules(self.model):
            if isinstance(m, _BatchNorm):
                m.stats_reducer = comm if self.sync_bn else None
        self._grad_logits = None
        self._stop_agreed = False

    def _stop_signals(self):
        """SIGINT; in a distributed run also SIGTERM (what mpirun sends the ranks on Ctrl-C)
        and SIGUSR1 (which mpirun forwards to every rank)."""
        if self.comm is None:
            return (signal.SIGINT,)
        return tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1")
                     if hasattr(signal, name))

    def _distributed_step(self, epoch, i, x, y, l2_params):
        """Forward and backward of this rank's shard, then the one collective of the step:
        the gradients (scaled by the shard's share of the batch through the logits gradient)
        plus ``[loss share, correct, stop]`` summed in rank order. Returns the global
        ``(mean loss, correct, batch length)``."""
        comm, model, loss_fn = self.comm, self.model, self.loss
        n = self.data.batch_length(i)
        lo, hi = comm.shard(n)
        share = (hi - lo) / n
        for layer in self._dropouts:  # masks of samples lo.. of the batch, as one process draws
            layer.sample_offset = lo
        logits = model.forward(x, copy=False)
        loss = loss_fn.forward(logits, y, l2_params)
        correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
        g = loss_fn.backward()
        if self._grad_logits is None or self._grad_logits.shape[1:] != g.shape[1:] or \
                self._grad_logits.shape[0] < g.shape[0] or self._grad_logits.dtype != g.dtype:
            self._grad_logits = np.empty_like(g)
        scaled = self._grad_logits[:g.shape[0]]
        np.multiply(g, g.dtype.type(share), out=scaled)
        model.backward(scaled, copy=False)
        loss, correct, stop = comm.sum_gradients(
            self._params, extra=(loss * share, correct, self._stop_requested))
        if not math.isfinite(loss):
            exc = _diverged(loss, epoch, i)
            exc.all_ranks = True
            raise exc
        if l2_params:  # the same on every rank: added after the sum
            loss_fn.backward_l2()
        self._stop_agreed = bool(stop)  # the same on every rank
        if stop:
            self._stop_requested = True
        return float(loss), int(round(correct)), n

    def _evaluate(self, images, labels):
        """:func:`evaluate`; distributed: each rank evaluates its shard with rank 0's buffers,
        and the sums are added in rank order (predictions are not gathered: None)."""
        comm = self.comm
        if comm is None:
            return evaluate(self.model, images, labels, self.eval_batch_size)
        comm.broadcast_state(self.model, buffers_only=True)
        n = labels.shape[0]
        lo, hi = comm.shard(n)
        sums = np.zeros(2)
        if hi > lo:
            result = evaluate(self.model, images[lo:hi], labels[lo:hi], self.eval_batch_size)
            sums[:] = result.loss * (hi - lo), round(result.accuracy * (hi - lo))
        comm.sum_in_rank_order(sums, "the evaluation")
        return Evaluation(float(sums[0]) / n, float(sums[1]) / n, None)

    def _writes_files(self):
        return self.comm is None or self.comm.is_root

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self):
        """Everything :meth:`load_state_dict` needs to continue this run exactly (copies):
        ``model`` (weights and buffers), ``optimizer`` (its ``state_dict()``), ``epoch``,
        ``step``, ``partial``, ``history``, ``module_steps`` (dropout counters), ``best`` (the
        best epoch's metrics and ``state``, or None) and ``config``."""
        best = None
        if self._best is not None:
            best = dict(self._best, state={k: v.copy() for k, v in self._best_state.items()})
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "step": self.step, "partial": dict(self._partial),
                "history": json.loads(json.dumps(self.history)),
                "module_steps": _module_steps(self.model), "best": best,
                "config": self.config()}

    def load_state_dict(self, state, source="the saved state"):
        """Restore a :meth:`state_dict` (or a checkpoint's contents), after checking that it
        was made with this trainer's settings (``epochs`` may differ).

        Raises
        ------
        ValueError
            Naming `source`, if the settings (batch size, seed, schedule, base learning rates,
            loss, augmentation, validation split, optimiser type or settings, training data)
            differ, or the state is incomplete or does not fit the model.
        """
        saved = state.get("config")
        if not isinstance(saved, dict):
            raise ValueError(f"{source}: no trainer settings")  # noqa: TRY004
        saved = _upgrade_config(saved, len(self.optimizer.param_groups))
        mine = self.config()
        diffs = [f"{key}={saved.get(key)!r} (this trainer: {mine[key]!r})"
                 for key in mine if key != "epochs" and saved.get(key) != mine[key]]
        optim = state.get("optimizer")
        if not (isinstance(optim, tuple | list) and len(optim) == 2 and
                isinstance(optim[1], dict)):
            raise ValueError(f"{source}: no optimizer state")
        arrays, info = optim
        if info.get("type") != type(self.optimizer).__name__:
            diffs.append(f"optimizer type={info.get('type')!r} (this trainer: "
                         f"{type(self.optimizer).__name__!r})")
        else:
            theirs = self.optimizer.settings_by_param(info)
            ours = self.optimizer.settings_by_param()
            if set(theirs) != set(ours):
                diffs.append("optimizer parameters differ")
            else:
                for name in ours:
                    bad = [k for k in ours[name] if _jsonify(theirs[name].get(k)) !=
                           _jsonify(ours[name][k])]
                    if bad:
                        diffs.append(f"optimizer {bad[0]}={theirs[name].get(bad[0])!r} (this "
                                     f"trainer: {ours[name][bad[0]]!r}) for {name}")
                        break
        if diffs:
            raise ValueError(f"{source}: the checkpoint was made with other settings: "
                             + ", ".join(diffs))
        epoch, step, partial = state.get("epoch"), state.get("step"), state.get("partial")
        ok = (isinstance(epoch, int) and isinstance(step, int) and 0 <= step <=
              self.steps_per_epoch and epoch >= 0 and isinstance(partial, dict)
              and set(partial) == set(self._empty_partial()))
        if not ok:
            raise ValueError(f"{source}: invalid epoch/step/partial in the trainer state")
        best = state.get("best")
        if best is not None and not (isinstance(best, dict) and isinstance(best.get("state"),
                                                                           dict)):
            raise ValueError(f"{source}: invalid best-epoch state")
        module_steps = state.get("module_steps") or {}
        try:
            self.model.load_state_dict(state["model"])
            if best is not None:
                _check_same_keys(best["state"], self.model.state_dict())
        except KeyError as exc:
            raise ValueError(f"{source}: the weights do not fit the model: "
                             f"{exc.args[0]}") from None
        except ValueError as exc:
            raise ValueError(f"{source}: the weights do not fit the model: {exc}") from None
        self.optimizer.load_state_dict(arrays, info)
        _set_module_steps(self.model, module_steps)
        self.epoch, self.step = epoch, step
        self.history = list(state.get("history") or [])
        self._partial = dict(partial)
        if best is None:
            self._best = self._best_state = None
        else:
            self._best = {k: best[k] for k in ("epoch", "val_acc", "val_loss")}
            self._best_state = {k: np.array(v, dtype=self.model.state_dict()[k].dtype)
                                for k, v in best["state"].items()}

    # -- files -----------------------------------------------------------------------------------

    def _file_kwargs(self):
        return {"classes": self.classes, "normalization": self.normalization,
                "epoch": self.epoch, "history": self.history, "metadata": self.metadata}

    def save_model(self, path):
        """Save the model with its classes, normalisation, history and optimiser settings (see
        :func:`fastcnn.checkpoint.save_model`). Distributed: rank 0 only."""
        if not self._writes_files():
            return
        save_model(path, self.model, optimizer=self.optimizer, **self._file_kwargs())

    def save_checkpoint(self, path):
        """Save everything :meth:`load_checkpoint` needs to resume, atomically. Distributed:
        rank 0 only (the number of ranks is recorded)."""
        if not self._writes_files():
            return
        state = self.state_dict()
        best = state["best"]
        extra = {} if best is None else {_BEST + k: v for k, v in best["state"].items()}
        header = {"step": self.step, "trainer": state["config"], "partial": state["partial"],
                  "module_steps": state["module_steps"],
                  "best": None if best is None else {k: v for k, v in best.items()
                                                     if k != "state"}}
        if self.comm is not None:
            header["distributed"] = {"ranks": self.comm.size, "sync_bn": self.sync_bn}
        save_checkpoint(path, self.model, _Extra(self.optimizer, extra), **self._file_kwargs(),
                        header=header)

    def load_checkpoint(self, path):
        """Restore the state saved by :meth:`save_checkpoint` (see :meth:`load_state_dict`)."""
        model, optim_arrays, header = load_checkpoint(path)
        best_arrays = {k[len(_BEST):]: v for k, v in optim_arrays.items() if k.startswith(_BEST)}
        optim_arrays = {k: v for k, v in optim_arrays.items() if not k.startswith(_BEST)}
        best = header.get("best")
        if isinstance(best, dict):
            best = dict(best, state=best_arrays)
        state = {"model": model.state_dict(), "optimizer": (optim_arrays, header["optimizer"]),
                 "epoch": header.get("epoch"), "step": header.get("step"),
                 "partial": header.get("partial"), "history": header.get("history"),
                 "module_steps": header.get("module_steps"), "best": best,
                 "config": header.get("trainer")}
        self.load_state_dict(state, source=os.fspath(path))
        ranks = (header.get("distributed") or {}).get("ranks", 1)
        now = 1 if self.comm is None else self.comm.size
        if ranks != now:
            self.progress.line(f"note: {os.fspath(path)} was written by a run on {ranks} "
                               f"process(es), resumed on {now}: the run continues, but not "
                               f"bit for bit as it would have on {ranks}")


def _diverged(loss, epoch, i):
    return FloatingPointError(f"training diverged: the loss is {loss} in epoch {epoch + 1}, "
                              f"batch {i + 1}; lower the learning rate")


def _dropout_module():
    from .nn import dropout

    return dropout


def _loss_config(loss):
    return {"type": type(loss).__name__, "l2": float(getattr(loss, "l2", 0.0)),
            "label_smoothing": float(getattr(loss, "label_smoothing", 0.0))}


def _jsonify(value):
    return json.loads(json.dumps(value, default=str))


def _check_same_keys(state, reference):
    if set(state) != set(reference):
        raise KeyError(f"best-epoch state keys {sorted(state)} differ from the model's")
    for k, v in state.items():
        if np.shape(v) != reference[k].shape:
            raise ValueError(f"best-epoch {k}: shape {np.shape(v)}, model {reference[k].shape}")


def _upgrade_config(saved, n_groups):
    """Trainer settings of a checkpoint written before schedules, transforms and parameter
    groups were objects (``lr_schedule``, ``step_size``, ``gamma``, ``base_lr``, ``l2``,
    ``shift``), in today's form."""
    if "schedule" in saved:
        return saved
    cfg = dict(saved)
    name = cfg.pop("lr_schedule", None)
    step_size, gamma = cfg.pop("step_size", None), cfg.pop("gamma", None)
    schedule = get_schedule(name, cfg.get("epochs"),
                            **({"step_size": step_size, "gamma": gamma} if name == "step"
                               else {}))
    cfg["schedule"] = schedule.config()
    cfg["base_lrs"] = [cfg.pop("base_lr", None)] * n_groups
    cfg["loss"] = {"type": "CrossEntropyLoss", "l2": float(cfg.pop("l2", 0.0)),
                   "label_smoothing": 0.0}
    shift = cfg.pop("shift", 0)
    cfg["augment"] = [{"name": "RandomShift", "max_shift": shift}] if shift else []
    cfg["val_split"] = 0.0
    return cfg


# --------------------------------------------------------------------------------------------
# History


def format_epoch(record, epochs):
    """One line summing up a history entry, e.g. for a log."""
    val = "" if record.get("val_acc") is None else f"  val {100 * record['val_acc']:.2f}%"
    test = "" if record["test_acc"] is None else f"  test {100 * record['test_acc']:.2f}%"
    rate = record["images_per_s"] or 0.0
    return (f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  loss {record['loss']:.4f}  "
            f"train {100 * record['train_acc']:.2f}%{val}{test}  {record['seconds']:.1f} s  "
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
    """Save learning curves (loss and accuracy per epoch: train, validation, test) as a PNG.

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
    for key, label, marker in (("val", "validation", "^-"), ("test", "test", "s-")):
        if sum(h.get(f"{key}_acc") is not None for h in history) > 1 or (
                len(history) == 1 and history[0].get(f"{key}_acc") is not None):
            ax_loss.plot(epochs, [h.get(f"{key}_loss") for h in history], marker, label=label)
            ax_acc.plot(epochs, [100 * h[f"{key}_acc"] if h.get(f"{key}_acc") is not None
                                 else None for h in history], marker, label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(os.fspath(path), dpi=100)
