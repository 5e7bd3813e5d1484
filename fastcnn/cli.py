"""The ``fastcnn`` command: train, evaluate, predict, summary, models, info, bench.

``fastcnn train`` with no options trains LeNet-5 on the embedded 5,000 MNIST digits and saves
``model.npz``; ``--model`` picks another network of the zoo (``fastcnn models``) or a spec file,
``--data`` the user's own data (IDX directory, image folder, ``.npz``). ``fastcnn evaluate
model.npz`` prints its accuracy and confusion matrix; ``fastcnn predict model.npz digit.png``
classifies images, prepared as the training images were (recorded in the model file).
``fastcnn-train`` is ``fastcnn train``. The CLI parses arguments and prints; models, files, data
and training are the library's (:mod:`fastcnn.models`, :mod:`fastcnn.checkpoint`,
:mod:`fastcnn.datasets`, :mod:`fastcnn.train`, :mod:`fastcnn.images`).

Exit codes: 0 success, 1 an unreadable or damaged file (or a failed run), 2 bad arguments, 130
interrupted by Ctrl-C. Every error is one line on stderr, ``fastcnn: error: ...``.

Adding a command (e.g. ``bench``): write ``_add_<name>(subparsers)`` and ``_cmd_<name>(args)``
and list the pair in ``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

PROG = "fastcnn"

#: The defaults of ``fastcnn train``. On the embedded digits they reach 98.2-98.8% test accuracy
#: over seeds 0-4 (98.8% for the default seed 0; measured 2026-12-01), in seconds.
DEFAULTS = {
    "epochs": 20,
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3},
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "step_size": None,
    "gamma": 0.1,
    # Shifts make up for the embedded set's 4,000 images; on a 60,000-image set such as
    # Fashion-MNIST they cost accuracy within a 10-epoch budget (90.1% instead of 91.0% with
    # batches of 32, measured with an earlier build).
    "shift": {"embedded": 2, "data": 0},
    "crop_padding": 2,
    "seed": 0,
    "out": "model.npz",
    "model": "lenet5",
}

#: The zoo's most accurate model and its measured figure (2026-12-01, README).
BEST_MODEL = "bnnet"
BEST_MODEL_FIGURE = ("92.9% on Fashion-MNIST in 15 epochs (mean of 3 seeds, 92.87-92.94%; "
                     "about 10 minutes on 2 cores), 99.4% on the embedded digits "
                     "(40 epochs, mean of 3 seeds)")

#: ``train`` options fixed by a checkpoint: giving them together with --resume is an error.
_RESUME_FIXED = ("model", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
                 "schedule", "step_size", "gamma", "warmup", "shift", "augment", "seed",
                 "normalize", "val_split", "label_smoothing")


class CommandError(Exception):
    """A failure to report as one line, ``fastcnn: error: <message>``, with exit code 1."""


class _UsageError(Exception):
    """Bad command-line arguments (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports errors as one line instead of usage + message + exit."""

    def error(self, message):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the descriptions' line breaks (each option's help states its default)."""


# --------------------------------------------------------------------------------------------
# Argument types


def _int_at_least(minimum):
    """An argparse type: an integer >= minimum, with the usual one-line error otherwise."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _float_in(low, high=None, low_open=False):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = (not np.isfinite(value) or value < low or (low_open and value == low)
               or (high is not None and value >= high))
        if bad:
            rng = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
            raise argparse.ArgumentTypeError(f"expected a number in {rng}, got {text}")
        return value
    return parse


# --------------------------------------------------------------------------------------------
# Parsers


def _add_threads(parser):
    parser.add_argument("--threads", type=_positive_int, metavar="T",
                        help="threads for the kernels and BLAS (default: OMP_NUM_THREADS, else "
                             "every core this process may use)")


def _augment_list(text):
    """An argparse type for --augment: ``none`` or a comma list of ``shift[=PIXELS]``,
    ``crop[=PADDING]``, ``flip``; returns ``[(name, value or None), ...]``."""
    items = []
    for part in text.split(","):
        name, eq, value = part.strip().partition("=")
        if name == "none" and not eq and len(text.split(",")) == 1:
            return []
        if name not in ("shift", "crop", "flip") or (name == "flip" and eq):
            raise argparse.ArgumentTypeError(
                f"expected none or a comma list of shift[=PIXELS], crop[=PADDING], flip; got "
                f"{text!r}")
        number = None
        if eq:
            try:
                number = int(value)
            except ValueError:
                number = -1
            if number < 0:
                raise argparse.ArgumentTypeError(
                    f"{name}= expects an integer >= 0, got {value!r} in {text!r}")
        if any(n == name for n, _ in items):
            raise argparse.ArgumentTypeError(f"{name} is given twice in {text!r}")
        items.append((name, number))
    return items


def _input_size(text):
    """An argparse type: ``N`` or ``HxW``."""
    parts = text.lower().split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1 or max(values) > 4096:
        raise argparse.ArgumentTypeError(f"expected N or HxW (sizes in [1, 4096]), got {text!r}")
    return (values[0], values[-1])


def _model_help():
    import textwrap

    from .models.zoo import describe_model, list_models

    return "\n".join(textwrap.fill(describe_model(name), width=96,
                                   initial_indent=f"  {name:<12} ", subsequent_indent=" " * 15)
                     for name in list_models())


def _add_train_options(parser):
    g = parser.add_argument_group("model and data")
    g.add_argument("--model", metavar="NAME|SPEC.json",
                   help="a network of the zoo (see 'fastcnn models'; 'list' lists them) or a "
                        "JSON spec file of your own layer list (default: "
                        f"{DEFAULTS['model']}; {BEST_MODEL} is the zoo's most accurate)")
    g.add_argument("--data", metavar="PATH",
                   help="the training data: an MNIST-style directory of IDX files "
                        "(train-images-idx3-ubyte[.gz], ..., t10k-...; e.g. "
                        "/usr/share/datasets/fashion-mnist), an image folder (one subfolder of "
                        "PNG/JPEG files per class, or train/ and test/ each laid out so), or an "
                        ".npz file with x_train, y_train[, x_test, y_test]; a set without a test "
                        "part has 20%% held out for testing (default: the embedded 5,000 MNIST "
                        "digits, 4,000 to train, 1,000 to test)")
    g.add_argument("--val-split", type=_float_in(0.0, 1.0), metavar="F",
                   help="hold this fraction of the training images out for validation: "
                        "evaluated every epoch, the best epoch's weights are kept and the test "
                        "split is evaluated once on them (default: 0, no validation)")
    g.add_argument("--normalize", action="store_true", default=None,
                   help="standardise pixels per channel with the training set's mean and "
                        "standard deviation (recorded in the model file and applied by evaluate "
                        "and predict)")
    g.add_argument("--augment", type=_augment_list, metavar="LIST",
                   help="random augmentation of the training images, drawn anew every epoch: "
                        "none, or a comma list of shift[=PIXELS] (circular shifts of up to "
                        "PIXELS, default 2), crop[=PADDING] (random crops of the zero-padded "
                        f"image, default padding {DEFAULTS['crop_padding']}), flip (horizontal, "
                        "for data where mirror images are the same class) (default: shift=2 on "
                        "the embedded digits, none with --data)")
    g.add_argument("--shift", type=_non_negative_int, metavar="PIXELS",
                   help="the same as --augment shift=PIXELS (0: none)")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, metavar="E",
                   help=f"passes over the training set (default: {DEFAULTS['epochs']})")
    g.add_argument("--batch-size", type=_positive_int, metavar="B",
                   help=f"images per step (default: {DEFAULTS['batch_size']})")
    g.add_argument("--optimizer", choices=("sgd", "adam", "adamw"),
                   help=f"the optimiser (default: {DEFAULTS['optimizer']})")
    g.add_argument("--lr", type=_float_in(0.0, low_open=True), metavar="LR",
                   help=f"base learning rate (default: {DEFAULTS['lr']['sgd']} for sgd, "
                        f"{DEFAULTS['lr']['adam']} for adam and adamw)")
    g.add_argument("--momentum", type=_float_in(0.0, 1.0), metavar="M",
                   help=f"SGD momentum (default: {DEFAULTS['momentum']}; sgd only)")
    g.add_argument("--weight-decay", type=_float_in(0.0), metavar="WD",
                   help="weight decay on the convolution and linear weights, not on biases and "
                        f"batch-norm parameters (default: {DEFAULTS['weight_decay']})")
    g.add_argument("--label-smoothing", type=_float_in(0.0, 1.0), metavar="F",
                   help="label smoothing of the cross-entropy loss, as PyTorch's (default: 0)")
    g.add_argument("--schedule", choices=("none", "step", "cosine", "onecycle"),
                   help="learning-rate schedule: none (constant), step (times --gamma every "
                        "--step-size epochs), cosine (decayed every step towards 0 at the end "
                        "of the run) or onecycle (warm-up from lr/25 to lr over the first "
                        "--warmup of the steps, then annealed to lr/2.5e5) (default: "
                        f"{DEFAULTS['schedule']}, unless the zoo model sets its own: see "
                        "'fastcnn models')")
    g.add_argument("--step-size", type=_positive_int, metavar="K",
                   help="epochs between decays of the step schedule (default: epochs // 3)")
    g.add_argument("--gamma", type=_float_in(0.0, low_open=True), metavar="G",
                   help=f"decay factor of the step schedule, <= 1 (default: {DEFAULTS['gamma']})")
    g.add_argument("--warmup", type=_float_in(0.0, 1.0, low_open=True), metavar="F",
                   help="fraction of the steps the onecycle schedule warms up for (default: "
                        "0.3)")
    g.add_argument("--seed", type=_non_negative_int, metavar="S",
                   help="seeds the initial weights, the batch order, augmentation, dropout and "
                        "the validation split; a run is bitwise reproducible for any thread "
                        f"count (default: {DEFAULTS['seed']})")
    g = parser.add_argument_group("files and output")
    g.add_argument("--out", metavar="PATH",
                   help=f"where to save the trained model (default: {DEFAULTS['out']}; with "
                        "--resume, the original run's); an existing file is replaced, with a "
                        "notice")
    g.add_argument("--checkpoint", metavar="PATH",
                   help="save a checkpoint here after every epoch and on Ctrl-C, and keep it at "
                        "the end (default: only on Ctrl-C, to the --out path with .ckpt.npz in "
                        "place of .npz, removed when the run finishes)")
    g.add_argument("--resume", metavar="PATH",
                   help="continue the run saved in this checkpoint; the model and training "
                        "settings come from the checkpoint (only --epochs, --data and the file "
                        "and output options may be given), the model is saved to the original "
                        "run's --out unless --out is given; the result is bitwise identical to "
                        "an uninterrupted run")
    g.add_argument("--plot", metavar="PNG",
                   help="save learning curves (loss, accuracy per epoch) to this PNG (needs "
                        "matplotlib)")
    g.add_argument("--history", metavar="JSON",
                   help="write the per-epoch history (loss, accuracies, seconds, images/s, lr) "
                        "to this JSON file")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it is shown only when stderr is a terminal anyway)")
    g = parser.add_argument_group("data-parallel training over MPI")
    g.add_argument("--distributed", action="store_true",
                   help="synchronous data parallelism across the processes of 'mpirun -np K "
                        "fastcnn train --distributed ...' (needs mpi4py: pip install "
                        "'fastcnn[mpi]'): each process trains on its 1/K of every batch "
                        "(--batch-size stays the global batch), gradients are summed in a "
                        "fixed order (bitwise reproducible for a given K), rank 0 alone writes "
                        "files and output; --threads is per process")
    g.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: batch norm normalises with the statistics of the "
                        "whole global batch, as one process would (default: each process's "
                        "own shard, as PyTorch DDP)")
    _add_threads(parser)


def _distributed(args):
    """The Communicator of ``--distributed`` (None without it). Started by mpirun without
    ``--distributed``, the K processes would each train the same run and race on its files:
    refused. Ranks other than 0 print nothing on stdout."""
    from .distributed import launched_by_mpirun

    ranks = launched_by_mpirun()
    if not args.distributed:
        if args.sync_bn:
            raise _UsageError("--sync-bn needs --distributed")
        if ranks > 1:
            raise CommandError(f"started by mpirun as {ranks} processes without --distributed: "
                               f"the {ranks} processes would race on the same files; add "
                               f"--distributed to train one model data-parallel")
        return None
    from . import set_num_threads
    from .distributed import Communicator, threads_per_rank

    if args.threads is None and not os.environ.get("OMP_NUM_THREADS") and threads_per_rank():
        set_num_threads(threads_per_rank())  # unbound ranks share the machine's cores
    try:
        comm = Communicator()
    except ImportError as exc:
        raise CommandError(str(exc)) from None
    comm.abort_on_exception()  # an error on one rank ends the job instead of a hang
    if not comm.is_root:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    return comm


def _train_description():
    return f"""\
Train a network of the zoo (or your own, --model spec.json) and save it. With no options:
LeNet-5 on the embedded 5,000 MNIST digits (4,000 to train, 1,000 to test), SGD with momentum
0.9 and weight decay 5e-4, learning rate 0.05 decayed by a cosine schedule, batches of 64,
random shifts of up to 2 pixels, 20 epochs (98-99% test accuracy); the model is saved to
model.npz. One line is printed per epoch; the last line is always
  test accuracy NN.NN% on N images; trained ...; model saved to PATH

The zoo ('fastcnn models'):
{_model_help()}
{BEST_MODEL} is the zoo's most accurate model:
  {BEST_MODEL_FIGURE}

Each model is built for the data's channels, image size and classes. The model file records
how 'fastcnn predict' prepares images: as MNIST digits (centred, contrast-stretched) when the
training images look like MNIST digits, else converted and resized only.

Ctrl-C stops after the current step and saves a checkpoint; --resume continues from it.

Fashion-MNIST (apt-get install dataset-fashion-mnist), about 90.8% with LeNet-5 in 10 epochs:
  fastcnn train --data /usr/share/datasets/fashion-mnist --epochs 10
  fastcnn train --model {BEST_MODEL} --data /usr/share/datasets/fashion-mnist --epochs 15
"""


def _add_train(subparsers):
    p = subparsers.add_parser("train", help="train a network (default: LeNet-5) and save it",
                              description=_train_description(),
                              formatter_class=_HelpFormatter)
    _add_train_options(p)
    return p


def _add_evaluate(subparsers):
    p = subparsers.add_parser(
        "evaluate", help="accuracy and confusion matrix of a saved model",
        description="Print the accuracy, mean loss and confusion matrix of a saved model on a "
                    "test split. The model's recorded padding and normalisation are applied.",
        formatter_class=_HelpFormatter)
    p.add_argument("model", help="a model file (.npz) saved by 'fastcnn train' (a checkpoint "
                                 "works too)")
    p.add_argument("--data", metavar="PATH",
                   help="a data set as for 'fastcnn train --data' (IDX directory, image folder "
                        "or .npz) whose images fit the model (default: the data set the model "
                        "was trained on, as recorded in the file)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="which split to evaluate on (default: test)")
    p.add_argument("--batch-size", type=_positive_int, default=1000, metavar="B",
                   help="images per forward pass (default: 1000)")
    _add_threads(p)


def _add_predict(subparsers):
    p = subparsers.add_parser(
        "predict", help="classify image files",
        description="Classify images with a saved model and print 'path: class (probability)' "
                    "per image. Images are read in the model's channels (colour to grey or "
                    "grey to RGB; transparency over white) and prepared as recorded in the "
                    "model file:\n"
                    "  digits: as MNIST was made: background polarity detected from the border "
                    "(dark-on-light\n"
                    "          drawings are inverted), contrast stretched, cropped to the ink, "
                    "scaled into a\n"
                    "          20/28 box and centred by the centre of mass\n"
                    "  resize: resized to the model's input size, nothing else\n"
                    "then scaled to [0, 1], normalised and padded as the training data was. An "
                    "unreadable file is reported on stderr and the others are still classified "
                    "(exit code 1 at the end). Needs Pillow (pip install 'fastcnn[image]').",
        formatter_class=_HelpFormatter)
    p.add_argument("model", help="a model file (.npz) saved by 'fastcnn train'")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (PNG, JPEG, ... anything Pillow reads)")
    p.add_argument("--preprocess", choices=("digits", "resize"),
                   help="the preparation (default: the one recorded in the model file)")
    invert = p.add_mutually_exclusive_group()
    invert.add_argument("--invert", dest="invert", action="store_const", const=True,
                        help="always invert the grey levels (dark-on-light images)")
    invert.add_argument("--no-invert", dest="invert", action="store_const", const=False,
                        help="never invert (default: digits detects the polarity, resize does "
                             "not invert)")
    p.add_argument("--no-stretch", dest="stretch", action="store_false",
                   help="digits: no contrast stretch")
    p.add_argument("--no-crop", dest="crop", action="store_false",
                   help="digits: no crop to the ink (the whole image is resized)")
    p.add_argument("--no-center", dest="center", action="store_false",
                   help="digits: no centring by the centre of mass")
    _add_threads(p)


def _add_info(subparsers):
    subparsers.add_parser(
        "info", help="version, OpenMP, threads, kernel ISA, NumPy and BLAS",
        description="Print the fastcnn version, whether the kernels use OpenMP, the thread count, "
                    "the kernels' instruction set, and the NumPy and BLAS in use.",
        formatter_class=_HelpFormatter)


def _add_summary(subparsers):
    p = subparsers.add_parser(
        "summary", help="a model's layers, output shapes, parameters and multiply-adds",
        description="Print a model's layers with output shapes, parameter counts and "
                    "multiply-adds per image: a zoo network (built for --input-size, "
                    "--in-channels and --num-classes), a spec file or a saved model.",
        formatter_class=_HelpFormatter)
    p.add_argument("--model", metavar="NAME|SPEC.json|MODEL.npz", default=DEFAULTS["model"],
                   help=f"a zoo name, a spec file or a model file (default: {DEFAULTS['model']})")
    p.add_argument("--input-size", type=_input_size, metavar="N|HxW",
                   help="zoo networks: the raw image size (default: 28)")
    p.add_argument("--in-channels", type=_positive_int, metavar="C",
                   help="zoo networks: image channels (default: 1)")
    p.add_argument("--num-classes", type=_positive_int, metavar="K",
                   help="zoo networks: size of the last layer (default: 10)")


def _add_models(subparsers):
    subparsers.add_parser(
        "models", help="list the model zoo",
        description="List the networks of the zoo ('fastcnn train --model NAME').",
        formatter_class=_HelpFormatter)


def _add_bench(subparsers):
    p = subparsers.add_parser(
        "bench", help="time a model's training step and inference on this machine",
        description="Time a model's training step (forward, cross-entropy, backward, SGD step) "
                    "and its inference on random inputs, like 'caffe time': milliseconds per "
                    "batch (median and min-max over the iterations) and images per second.\n"
                    "The comparison with PyTorch and ONNX Runtime is a development report: "
                    "python bench/report.py in a checkout.",
        formatter_class=_HelpFormatter)
    p.add_argument("model", nargs="?", default="lenet5", metavar="MODEL",
                   help="'lenet5' (default), a model file saved by fastcnn, or the name of a "
                        "model-zoo model")
    p.add_argument("--batch-size", type=_positive_int, default=64, metavar="N",
                   help="images per batch (default: 64)")
    p.add_argument("--iterations", type=_positive_int, default=20, metavar="K",
                   help="timed calls per measurement (default: 20)")
    p.add_argument("--warmup", type=_non_negative_int, default=3, metavar="K",
                   help="untimed calls before each measurement (default: 3)")
    p.add_argument("--input-shape", type=_positive_int, nargs=3, metavar=("C", "H", "W"),
                   help="shape of one image (default: the model's input_shape)")
    p.add_argument("--layers", action="store_true",
                   help="also time each layer's forward and backward on its own")
    _add_threads(p)


def _add_export(subparsers):
    p = subparsers.add_parser(
        "export", help="write a saved model as an ONNX file",
        description="Write a saved model as an ONNX graph (evaluation mode, any batch size) that "
                    "ONNX Runtime, OpenCV's dnn module or a browser runtime can run. The graph "
                    "takes the raw pixels 'fastcnn predict' prepares (grayscale, [0, 1], "
                    "unpadded): the model's padding and normalisation are its first nodes. The "
                    "class names go into the metadata ('classes'). Needs the onnx package (pip "
                    "install 'fastcnn[onnx]').",
        formatter_class=_HelpFormatter)
    p.add_argument("model", help="a model file (.npz) saved by 'fastcnn train'")
    p.add_argument("output", help="the ONNX file to write (replaced atomically)")
    p.add_argument("--opset", type=_int_at_least(13), default=17, metavar="N",
                   help="ONNX opset version (default: 17; GELU is one node from 20 on)")


def _build_parser():
    parser = _Parser(prog=PROG, formatter_class=_HelpFormatter,
                     description="Fast CPU training of small CNNs (Cython + OpenMP kernels).",
                     epilog="Run 'fastcnn COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add, _ in _COMMANDS.values():
        add(subparsers)
    return parser


def _version():
    from . import __version__

    return __version__


# --------------------------------------------------------------------------------------------
# Shared helpers


def _set_threads(args):
    if getattr(args, "threads", None) is not None:
        from . import set_num_threads

        set_num_threads(args.threads)


def _is_image_folder(path):
    from .datasets import _is_idx_dir

    return path is not None and os.path.isdir(path) and not _is_idx_dir(Path(path))


def _load_raw_data(path, normalize=False, channels=None, size=None):
    """The embedded digits (path None) or a data set :func:`fastcnn.datasets.load_dataset`
    recognises, unpadded; image folders converted to `channels` and resized to `size` when
    given (the other kinds must already fit)."""
    from .datasets import load_dataset, load_mnist5k

    if path is None:
        return load_mnist5k(pad=0, normalize=normalize)
    kwargs = {}
    if _is_image_folder(path):
        kwargs = {"channels": channels if channels in (1, 3) else None, "size": size}
    return load_dataset(path, normalize=normalize, pad=0, **kwargs)


def _raw_shape(model):
    """``(C, h, w)`` of the raw images a model takes (its input before its own padding)."""
    shape = tuple(model.input_shape)
    transform = getattr(model, "input_transform", None)
    if transform is None:
        return shape
    return (shape[0], *transform.raw_size(shape))


def _check_fits(data, model, source):
    want, have = _raw_shape(model), tuple(data.train.images.shape[1:])
    if have != want:
        raise CommandError(f"{source}: the images are {_chw(have)} but the model takes "
                           f"{_chw(want)} images")


def _chw(shape):
    c, h, w = shape
    return f"{h}x{w} with {_plural(c, 'channel')}"


def _pad_to_model(data, model):
    """The data set with its splits zero-padded as the model's input transform pads (padding
    standardised as the images are, so the result is bitwise what padding, then normalising,
    gives)."""
    import dataclasses

    from .datasets import Split

    transform = getattr(model, "input_transform", None)
    ph, pw = (0, 0) if transform is None else transform.padding
    if (ph, pw) == (0, 0):
        return data
    norm = data.normalization

    def pad(split):
        if split is None:
            return None
        x, y = split
        n, c, h, w = x.shape
        out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        if norm is not None:
            out -= np.asarray(norm["mean"], dtype=x.dtype).reshape(-1, 1, 1)
            out /= np.asarray(norm["std"], dtype=x.dtype).reshape(-1, 1, 1)
        out[:, :, ph:ph + h, pw:pw + w] = x
        return Split(out, y)

    return dataclasses.replace(data, train=pad(data.train), test=pad(data.test))


def _recorded(header, key, default=None):
    value = (header.get("metadata") or {}).get(key, default)
    return default if value is None else value


def _recorded_data_path(header):
    """The data path recorded in a model file's metadata (None: the embedded digits)."""
    data = _recorded(header, "data", {})
    path = data.get("path") if isinstance(data, dict) else None
    if path is not None and not isinstance(path, str):
        raise CommandError(f"the model file's recorded data path is not a string: "
                           f"{str(path)[:80]}")
    return path


def _default_checkpoint(out):
    root, ext = os.path.splitext(out)
    return (root if ext == ".npz" else out) + ".ckpt.npz"


def _out_of_checkpoint(path):
    """The --out of a run whose checkpoint records none (written before it did): X.npz for the
    default checkpoint name X.ckpt.npz, else the default model.npz."""
    path = os.fspath(path)
    if path.endswith(".ckpt.npz"):
        return path[:-len(".ckpt.npz")] + ".npz"
    return DEFAULTS["out"]


def _check_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError("--plot needs matplotlib: pip install 'fastcnn[plot]'") from None


def _print_models():
    from .models.zoo import describe_model, list_models, missing_layers, training_defaults

    for name in list_models():
        missing = missing_layers(name)
        note = f" (needs {', '.join(missing)}: not in this build)" if missing else ""
        recipe = training_defaults(name)
        if recipe:
            note += " (trained with " + ", ".join(
                f"--epochs {v} on the embedded digits" if k == "embedded_epochs" else
                f"--{k.replace('_', '-')} {v}" for k, v in recipe.items()) + ")"
        print(f"{name:<12} {describe_model(name)}{note}")


def _model_source(text):
    """``("zoo", name)``, ``("spec", path)`` or ``("file", path)`` for a --model value."""
    from .models.zoo import list_models

    if text in list_models():
        return "zoo", text
    lower = text.lower()
    if lower.endswith(".json"):
        return "spec", text
    if lower.endswith(".npz"):
        return "file", text
    raise _UsageError(f"argument --model: unknown model {text!r}: expected a zoo name "
                      f"({', '.join(list_models())}), a spec .json file or 'list'")


def _build_model(source, value, data, seed):
    """The model to train on `data` (unpadded) from a zoo name or a spec file."""
    from .models.spec import load_spec, model_from_spec
    from .models.zoo import get_model

    c, h, w = data.train.images.shape[1:]
    if source == "zoo":
        try:
            return get_model(value, num_classes=data.num_classes, in_channels=c,
                             input_size=(h, w), seed=seed)
        except ValueError as exc:
            raise CommandError(f"--model {value}: {exc}") from None
    spec = load_spec(value)
    try:
        model = model_from_spec(spec, seed=seed)
    except ValueError as exc:
        raise CommandError(f"{value}: {exc}") from None
    first = model.layers[0]
    if hasattr(first, "compute_input_grad"):
        first.compute_input_grad = False
    return model


def _spec_raw_shape(path):
    """``(C, h, w)`` of the raw images a spec file's model takes (for image folders)."""
    from .models.spec import load_spec
    from .models.transform import InputTransform

    spec = load_spec(path)
    shape = tuple(spec["input_shape"])
    transform = InputTransform.from_spec(spec.get("input_transform"), shape)
    return shape if transform is None else (shape[0], *transform.raw_size(shape))


def _check_outputs(model, data, source):
    from .models.spec import output_shapes

    out = output_shapes(model.layers, model.input_shape)[-1]
    if len(out) != 2 or out[1] != data.num_classes:
        raise CommandError(f"{source}: the model's output per image is {tuple(out[1:])} but the "
                           f"data set has {data.num_classes} classes")


# --------------------------------------------------------------------------------------------
# train


def _resume_settings(args, header):
    """Trainer settings, optimiser and data options recorded in a checkpoint."""
    from .schedules import get_schedule
    from .train import _upgrade_config
    from .transforms import get_transform

    info = header["optimizer"]
    try:
        cfg = _upgrade_config(header["trainer"], len(info.get("param_groups", [None])))
        settings = {
            "epochs": args.epochs or cfg["epochs"], "batch_size": cfg["batch_size"],
            "seed": cfg["seed"], "schedule": get_schedule(cfg["schedule"], cfg["epochs"]),
            "augment": [get_transform(t) for t in cfg.get("augment", [])],
            "val_split": cfg.get("val_split", 0.0), "lr": cfg["base_lrs"][0],
            "l2": cfg["loss"].get("l2", 0.0),
            "label_smoothing": cfg["loss"].get("label_smoothing", 0.0),
            "optimizer": info["type"].lower(), "weight_decay": info["weight_decay"],
        }
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise CommandError(f"{args.resume}: the checkpoint's training settings are incomplete "
                           f"or invalid ({str(exc)[:120]})") from None
    if settings["optimizer"] not in ("sgd", "adam", "adamw"):
        raise CommandError(f"{args.resume}: unknown optimizer {info['type']!r}")
    keys = {"sgd": ("momentum", "dampening", "nesterov"), "adam": ("betas", "eps", "amsgrad"),
            "adamw": ("betas", "eps", "amsgrad")}[settings["optimizer"]]
    settings["opt_kwargs"] = {k: tuple(info[k]) if k == "betas" else info[k] for k in keys
                              if k in info}
    return settings


def _new_settings(args, recipe=None):
    """The training settings of a new run: the options given, else the model's own training
    defaults (``recipe``, from the zoo), else the command's."""
    defaults = {**DEFAULTS, **(recipe or {})}
    if args.data is None and "embedded_epochs" in defaults:
        defaults["epochs"] = defaults["embedded_epochs"]
    optimizer = args.optimizer or defaults["optimizer"]
    if optimizer != "sgd" and args.momentum is not None:
        raise _UsageError("--momentum applies to --optimizer sgd only")
    schedule = args.schedule or defaults["schedule"]
    if args.warmup is not None and schedule != "onecycle":
        raise _UsageError("--warmup applies to --schedule onecycle only")
    gamma = defaults["gamma"] if args.gamma is None else args.gamma
    if gamma > 1:
        raise _UsageError(f"--gamma must be <= 1, got {gamma}")
    if schedule != "step" and (args.step_size is not None or args.gamma is not None):
        raise _UsageError("--step-size and --gamma apply to --schedule step only")
    if args.shift is not None and args.augment is not None:
        raise _UsageError("give --augment or --shift, not both")
    epochs = args.epochs or defaults["epochs"]
    from .schedules import get_schedule

    kwargs = ({"step_size": args.step_size, "gamma": gamma} if schedule == "step" else
              {"pct_start": args.warmup} if schedule == "onecycle" else {})
    return {
        "epochs": epochs,
        "batch_size": args.batch_size or defaults["batch_size"],
        "seed": defaults["seed"] if args.seed is None else args.seed,
        "schedule": get_schedule(None if schedule == "none" else schedule, epochs, **kwargs),
        "val_split": args.val_split or 0.0,
        "lr": args.lr or defaults["lr"][optimizer], "optimizer": optimizer,
        "weight_decay": (defaults["weight_decay"] if args.weight_decay is None
                         else args.weight_decay),
        "l2": 0.0, "label_smoothing": args.label_smoothing or 0.0,
        "opt_kwargs": ({"momentum": defaults["momentum"] if args.momentum is None
                        else args.momentum} if optimizer == "sgd" else {}),
    }


def _augmentations(args, data_path, image_shape):
    from .transforms import RandomCrop, RandomHorizontalFlip, RandomShift

    if args.augment is not None:
        items = args.augment
    elif args.shift is not None:
        items = [("shift", args.shift)] if args.shift else []
    elif data_path is None:
        items = [("shift", DEFAULTS["shift"]["embedded"])]
    else:
        items = []
    out = []
    for name, value in items:
        if name == "shift":
            value = DEFAULTS["shift"]["embedded"] if value is None else value
            if value:
                out.append(RandomShift(value))
        elif name == "crop":
            value = DEFAULTS["crop_padding"] if value is None else value
            out.append(RandomCrop(tuple(image_shape[1:]), value))
        else:
            out.append(RandomHorizontalFlip())
    return out


def _loss(settings, dtype):
    import inspect

    from .nn import CrossEntropyLoss

    kwargs = {"l2": settings["l2"]}
    if settings["label_smoothing"]:
        if "label_smoothing" not in inspect.signature(CrossEntropyLoss).parameters:
            raise _UsageError("--label-smoothing needs a CrossEntropyLoss with label_smoothing, "
                              "which this build of fastcnn does not have yet")
        kwargs["label_smoothing"] = settings["label_smoothing"]
    return CrossEntropyLoss(**kwargs, dtype=dtype)


def _check_output_paths(args):
    for option in ("out", "checkpoint", "history", "plot"):
        path = getattr(args, option)
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):
            raise CommandError(f"--{option} {path}: the folder {folder} does not exist")
    if args.out is not None and os.path.isdir(args.out):
        raise CommandError(f"--out {args.out}: is a directory")


def _cmd_train(args):
    from .checkpoint import load_checkpoint
    from .images import looks_like_digits
    from .optim import SGD, Adam, AdamW
    from .train import Checkpointer, Progress, Trainer, TrainingInterrupted

    if args.model == "list":
        _print_models()
        return 0
    if args.plot:
        _check_matplotlib()
    _check_output_paths(args)
    comm = _distributed(args)
    root = comm is None or comm.is_root
    header = leftover = None
    if args.resume:
        given = [f"--{name.replace('_', '-')}" for name in _RESUME_FIXED
                 if getattr(args, name) is not None]
        if given:
            raise _UsageError(f"{', '.join(given)} cannot be combined with --resume: the "
                              f"checkpoint fixes the model and the training settings")
        model, _, header = load_checkpoint(args.resume)
        settings = _resume_settings(args, header)
        recorded = _recorded(header, "data", {})
        recorded = recorded if isinstance(recorded, dict) else {}
        data_path = args.data if args.data is not None else _recorded_data_path(header)
        normalize = bool(recorded.get("normalize", header.get("normalization") is not None))
        out = args.out or _recorded(header, "out") or _out_of_checkpoint(args.resume)
        if not isinstance(out, str):
            raise CommandError(f"{args.resume}: the recorded output path is not a string")
        requested = bool(_recorded(header, "checkpoint_requested", False))
        checkpoint = args.checkpoint or args.resume
        if args.checkpoint is not None:
            # the run goes on in a checkpoint of the user's; the one resumed from is done with
            # unless the user asked for it too
            if not requested and os.path.abspath(args.checkpoint) != os.path.abspath(
                    args.resume):
                leftover = args.resume
            requested = True
        model_name = _recorded(header, "model", "lenet5")
        _set_threads(args)
        raw = _raw_shape(model)
        data = _load_raw_data(data_path, normalize, raw[0], raw[1:])
        _check_fits(data, model, data_path or "the embedded digits")
        _check_outputs(model, data, args.resume)
    else:
        model_arg = args.model or DEFAULTS["model"]
        source, value = _model_source(model_arg)
        if source == "file":
            raise _UsageError(f"argument --model: {value} is a model file; to continue "
                              f"training use --resume with a checkpoint")
        from .models.zoo import training_defaults

        settings = _new_settings(args, training_defaults(value) if source == "zoo" else None)
        data_path, normalize = args.data, bool(args.normalize)
        out = args.out or DEFAULTS["out"]
        requested = args.checkpoint is not None
        checkpoint = args.checkpoint or _default_checkpoint(out)
        _set_threads(args)
        channels = size = None
        if source == "spec" and _is_image_folder(data_path):
            c, *size = _spec_raw_shape(value)
            channels = c
        data = _load_raw_data(data_path, normalize, channels, size)
        model = _build_model(source, value, data, settings["seed"])
        _check_fits(data, model, data_path or "the embedded digits")
        _check_outputs(model, data, value)
        model_name = value if source == "zoo" else os.path.abspath(value)
    preprocess = "digits" if looks_like_digits(_pixels_sample(data)) else "resize"
    data = _pad_to_model(data, model)
    augment = _augmentations(args, data_path, data.train.images.shape[1:]) if header is None \
        else settings["augment"]
    if header is not None:
        preprocess = _recorded(header, "preprocess", preprocess)
    opt_class = {"sgd": SGD, "adam": Adam, "adamw": AdamW}[settings["optimizer"]]
    optimizer = opt_class(model.param_groups(settings["weight_decay"]), lr=settings["lr"],
                          **settings["opt_kwargs"])
    metadata = {"data": {"name": data.name,
                         "path": None if data_path is None else os.path.abspath(data_path),
                         "normalize": normalize},
                "model": model_name, "preprocess": preprocess,
                "out": os.path.abspath(out), "checkpoint_requested": requested}
    trainer = Trainer(
        model, optimizer, data, loss=_loss(settings, model.dtype),
        batch_size=settings["batch_size"], epochs=settings["epochs"], seed=settings["seed"],
        schedule=settings["schedule"], augment=augment, val_split=settings["val_split"],
        progress=Progress(bar=False if args.no_progress else None, log=_print_flush,
                          history_path=args.history, plot_path=args.plot),
        checkpoint=Checkpointer(checkpoint, every_epoch=requested),
        metadata=metadata, distributed=comm, sync_bn=args.sync_bn)
    if args.resume:
        trainer.load_checkpoint(args.resume)
    if os.path.exists(out) and root:
        _notice(f"{out} exists and will be replaced by the model trained now")

    start = time.perf_counter()
    try:
        history = trainer.fit()
    except TrainingInterrupted as exc:
        if not root:
            return 130
        print(f"{PROG}: interrupted in epoch {exc.epoch + 1} after batch {exc.step}/"
              f"{exc.steps_per_epoch}; checkpoint saved to {exc.checkpoint_path}; resume with: "
              f"{PROG} train --resume {exc.checkpoint_path}", file=sys.stderr, flush=True)
        return 130
    except FloatingPointError as exc:
        raise CommandError(str(exc)) from None
    wall = time.perf_counter() - start
    if not root:  # rank 0 writes the model and removes or keeps the checkpoint
        return 0
    replaced = os.path.exists(out)
    trainer.save_model(out)
    if replaced:
        _notice(f"replaced the existing {out}")
    _finish_checkpoint(checkpoint, requested)
    if leftover is not None:
        _finish_checkpoint(leftover, False)

    last = history[-1] if history else None
    train_seconds = sum(h["seconds"] for h in history)
    images = trainer.data.n_train * len(history)
    rate = images / train_seconds if train_seconds > 0 else 0.0
    acc = ("no test split" if last is None or last["test_acc"] is None else
           f"test accuracy {100 * last['test_acc']:.2f}% on {trainer.data.test[1].shape[0]:,} "
           f"images")
    threads = _threads()
    print(f"{acc}; trained {_plural(len(history), 'epoch')} in {wall:.1f} s ({rate:,.0f} "
          f"images/s, {trainer.model.dtype} on {_processes(comm)}{_plural(threads, 'thread')}); "
          f"model saved to "
          f"{out}", flush=True)
    return 0


def _pixels_sample(data, n=500):
    """Up to `n` training images (evenly spaced) on the [0, 1] pixel scale (normalisation
    undone), for :func:`fastcnn.images.looks_like_digits`."""
    x = data.train.images
    x = x[::max(1, x.shape[0] // n)].astype(np.float64)
    norm = data.normalization
    if norm is not None:
        x = x * np.asarray(norm["std"]).reshape(-1, 1, 1) + np.asarray(norm["mean"]).reshape(
            -1, 1, 1)
    return x


def _finish_checkpoint(path, requested):
    """A finished run's checkpoint: one it wrote on its own (Ctrl-C) is removed, one asked for
    with --checkpoint is kept (it can extend the run with --resume --epochs); either is said."""
    if not os.path.exists(path):
        return
    if requested:
        print(f"checkpoint kept at {path} (--checkpoint); 'fastcnn train --resume {path} "
              f"--epochs E' trains on to E epochs", flush=True)
        return
    try:
        os.remove(path)
    except OSError as exc:
        _notice(f"could not remove the finished run's checkpoint {path}: {exc.strerror}")
        return
    print(f"removed the finished run's checkpoint {path}", flush=True)


def _notice(text):
    print(f"{PROG}: note: {text}", file=sys.stderr, flush=True)


def _plural(n, noun):
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _print_flush(text):
    print(text, flush=True)


def _processes(comm):
    return "" if comm is None else f"{comm.size} processes x "


def _threads():
    from . import get_num_threads

    return get_num_threads()


# --------------------------------------------------------------------------------------------
# evaluate


def _confusion_matrix(labels, predictions, num_classes):
    """``cm[t, p]`` = how many samples of true class t were predicted as p."""
    flat = labels.astype(np.int64) * num_classes + predictions
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes,
                                                                          num_classes)


def format_confusion_matrix(cm, classes):
    """A text table of a confusion matrix: one row per true class (labelled with its index and
    name, unless the name is the index), one column per predicted class (its index), and the
    per-class accuracy (recall)."""
    k = len(classes)
    names = [str(i) if name == str(i) else f"{i} {name}" for i, name in enumerate(classes)]
    corner = "true \\ predicted"
    label_width = max(len(corner), *(len(n) for n in names))
    cell = max(len(str(int(cm.max()))), len(str(k - 1))) + 1
    lines = [f"{corner:<{label_width}}" + "".join(f"{i:>{cell}}" for i in range(k)) + "  recall"]
    for i, name in enumerate(names):
        total = int(cm[i].sum())
        recall = f"{100 * cm[i, i] / total:6.2f}%" if total else "     -"
        lines.append(f"{name:<{label_width}}" + "".join(f"{int(v):>{cell}}" for v in cm[i])
                     + f"  {recall}")
    return "\n".join(lines)


def _num_classes(model):
    from .models.spec import output_shapes

    return output_shapes(model.layers, model.input_shape)[-1][1]


def _cmd_evaluate(args):
    from .checkpoint import load_model
    from .train import evaluate

    model, header = load_model(args.model, return_header=True)
    model.freeze()  # inference only: weights fixed (Module.freeze)
    _set_threads(args)
    data_path = args.data if args.data is not None else _recorded_data_path(header)
    raw = _raw_shape(model)
    data = _load_raw_data(data_path, False, raw[0], raw[1:])
    split = getattr(data, args.split)
    if split is None:
        raise CommandError(f"{data_path}: the data set has no {args.split} split")
    images, labels = split
    _check_fits(data, model, data_path or "the embedded digits")
    num_classes = _num_classes(model)
    if labels.size and labels.max() >= num_classes:
        raise CommandError(f"the data set has labels up to {labels.max()} but the model has "
                           f"{num_classes} classes")
    transform = model.input_transform
    images = (transform.apply(images, model.dtype) if transform is not None
              else images.astype(model.dtype, copy=False))
    classes = header.get("classes") or [str(i) for i in range(num_classes)]
    start = time.perf_counter()
    result = evaluate(model, images, labels, args.batch_size)
    seconds = time.perf_counter() - start
    print(f"{args.model} on the {args.split} split of {data.name} ({labels.shape[0]:,} images): "
          f"accuracy {100 * result.accuracy:.2f}%, loss {result.loss:.4f} "
          f"({seconds:.2f} s, {labels.shape[0] / seconds:,.0f} images/s)")
    print()
    print(format_confusion_matrix(_confusion_matrix(labels, result.predictions, num_classes),
                                  classes))
    return 0


# --------------------------------------------------------------------------------------------
# predict


def _preprocess_of(header, model, path):
    """The image preparation recorded in a model file; for files without one: "digits" for a
    1-channel model trained on the embedded digits, else "resize"."""
    from .images import PREPROCESS

    value = _recorded(header, "preprocess")
    if value is None:
        data = _recorded(header, "data", {})
        embedded = isinstance(data, dict) and data.get("path") is None
        return "digits" if embedded and model.input_shape[0] == 1 else "resize"
    if value not in PREPROCESS:
        raise CommandError(f"{path}: the recorded "
                           f"preprocess {repr(value)[:40]} is not one of {', '.join(PREPROCESS)}")
    return value


def _cmd_predict(args):
    from .checkpoint import load_model
    from .images import _require_pillow, read_image

    _require_pillow()
    model, header = load_model(args.model, return_header=True)
    model.freeze()  # inference only: weights fixed (Module.freeze)
    _set_threads(args)
    channels, h, w = _raw_shape(model)
    if channels not in (1, 3):
        raise CommandError(f"{args.model}: predict reads images for 1- or 3-channel models; "
                           f"this one takes {channels} channels")
    preprocess = args.preprocess or _preprocess_of(header, model, args.model)
    if preprocess == "digits" and channels != 1:
        raise _UsageError(f"--preprocess digits is for 1-channel models; {args.model} takes "
                          f"{channels} channels")
    options = {}
    if preprocess == "digits":
        options = {"invert": "auto" if args.invert is None else args.invert,
                   "stretch": args.stretch, "crop": args.crop, "center": args.center}
    batch, good, failed = [], [], 0
    for path in args.images:
        try:
            x = read_image(path, channels=channels, size=(h, w), preprocess=preprocess,
                           **options)
        except ValueError as exc:
            _error(str(exc))
            failed += 1
            continue
        if preprocess == "resize" and args.invert:
            x = np.float32(1) - x
        batch.append(x)
        good.append(path)
    if batch:
        proba = model.predict_proba(np.stack(batch).astype(model.dtype, copy=False))
        classes = header.get("classes") or [str(i) for i in range(proba.shape[1])]
        for path, p in zip(good, proba):
            k = int(np.argmax(p))
            print(f"{path}: {classes[k]} ({p[k]:.3f})", flush=True)
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# export


def _cmd_export(args):
    from .checkpoint import load_model
    from .interop import export_onnx

    model, header = load_model(args.model, return_header=True)
    transform = getattr(model, "input_transform", None)  # LeNet-5-only files get theirs too
    classes = getattr(model, "classes", None) or header.get("classes")
    proto = export_onnx(model, args.output, opset=args.opset, classes=classes,
                        input_transform=transform)
    dims = [d.dim_param or str(d.dim_value)
            for d in proto.graph.input[0].type.tensor_type.shape.dim]
    print(f"wrote {args.output}: opset {args.opset}, input 'input' ({', '.join(dims)}) raw "
          f"pixels, output 'output', {len(proto.graph.node)} nodes"
          f"{f', {len(classes)} classes' if classes else ''}")
    return 0


# --------------------------------------------------------------------------------------------
# info, summary


def _cmd_info(args):
    import fastcnn

    print(f"fastcnn {fastcnn.__version__}")
    print(f"python {platform.python_version()} ({platform.machine()}, {platform.system()})")
    print(f"numpy {np.__version__}")
    print(f"openmp {'on' if fastcnn.openmp_enabled() else 'off'}")
    print(f"threads {fastcnn.get_num_threads()} (cores available: {_cores()})")
    print(f"kernel isa {fastcnn.kernel_isa()}")
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        print("blas: unknown (install threadpoolctl to see it)")
        return 0
    pools = threadpool_info()
    if not pools:
        print("blas: none loaded")
    for pool in pools:
        print(f"{pool.get('user_api', '?')}: {pool.get('internal_api', '?')} "
              f"{pool.get('version') or ''} ({pool.get('num_threads', '?')} threads"
              f"{', ' + pool['architecture'] if pool.get('architecture') else ''}) "
              f"{pool.get('filepath', '')}")
    return 0


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count()


def _bench_model(name):
    """(model, label) for ``fastcnn bench``: 'lenet5', a model file, or a zoo name."""
    from . import LeNet5
    from .checkpoint import load_model

    if name.lower() in ("lenet5", "lenet-5"):
        return LeNet5(), "LeNet-5"
    if os.path.exists(name):
        return load_model(name), name
    try:
        from .models import get_model
    except ImportError:
        get_model = None
    if get_model is not None:
        try:
            return get_model(name), name
        except (KeyError, ValueError) as exc:
            raise _UsageError(f"unknown model {name!r}: {exc}") from None
    raise _UsageError(f"MODEL must be 'lenet5' or an existing model file, got {name!r}")


def _cmd_bench(args):
    from . import get_num_threads, kernel_isa
    from .timing import format_timing, time_model

    _set_threads(args)
    model, label = _bench_model(args.model)
    shape = args.input_shape or getattr(model, "input_shape", None)
    if shape is None:
        raise _UsageError(f"{label} does not record its input shape: give --input-shape C H W")
    result = time_model(model, tuple(shape), args.batch_size, args.iterations,
                        warmup=args.warmup, layers=args.layers)
    title = (f"{label}, input {'x'.join(map(str, shape))}, batch {args.batch_size}, "
             f"{_plural(get_num_threads(), 'thread')}, kernels {kernel_isa()}, "
             f"{args.iterations} timed calls after {args.warmup} warm-up")
    print(format_timing(result, title))
    return 0


def _cmd_summary(args):
    from .checkpoint import load_model
    from .models.spec import load_spec, model_from_spec
    from .models.zoo import get_model

    if args.model == "list":
        _print_models()
        return 0
    source, value = _model_source(args.model)
    zoo_only = [f"--{name.replace('_', '-')}" for name in ("input_size", "in_channels",
                                                          "num_classes")
                if getattr(args, name) is not None]
    if source != "zoo" and zoo_only:
        raise _UsageError(f"{', '.join(zoo_only)} apply to zoo networks; {value} fixes its own "
                          f"shapes")
    if source == "zoo":
        try:
            model = get_model(value, num_classes=args.num_classes or 10,
                              in_channels=args.in_channels or 1,
                              input_size=args.input_size or 28)
        except ValueError as exc:
            raise CommandError(f"--model {value}: {exc}") from None
    elif source == "spec":
        try:
            model = model_from_spec(load_spec(value))
        except ValueError as exc:
            raise CommandError(f"{value}: {exc}".replace(f"{value}: {value}: ", f"{value}: ")
                               ) from None
    else:
        model = load_model(value)
    c, h, w = _raw_shape(model)
    transform = getattr(model, "input_transform", None)
    padded = "" if transform is None or transform.padding == (0, 0) else (
        f", padded to {model.input_shape[1]}x{model.input_shape[2]}")
    print(f"{value}: {h}x{w} images with {_plural(c, 'channel')}{padded}")
    model.summary()
    return 0


def _cmd_models(args):
    _print_models()
    return 0


# --------------------------------------------------------------------------------------------
# Entry points

_COMMANDS = {
    "train": (_add_train, _cmd_train),
    "evaluate": (_add_evaluate, _cmd_evaluate),
    "predict": (_add_predict, _cmd_predict),
    "info": (_add_info, _cmd_info),
    "summary": (_add_summary, _cmd_summary),
    "models": (_add_models, _cmd_models),
    "bench": (_add_bench, _cmd_bench),
    "export": (_add_export, _cmd_export),
}


def _run(parser, argv, command=None):
    """Parse `argv` with `parser`, run the command, map errors to one line and an exit code."""
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and --version exit through argparse
            return exc.code if isinstance(exc.code, int) else 0
        try:
            return _COMMANDS[command or args.command][1](args)
        except _UsageError as exc:  # a check made after parsing: add the parser's hint
            help_of = parser.prog if command else f"{parser.prog} {args.command}"
            raise _UsageError(f"{exc} (see '{help_of} --help')") from None
    except _UsageError as exc:
        _error(str(exc))
        return 2
    except CommandError as exc:
        _error(str(exc))
        return 1
    except FileNotFoundError as exc:
        _error(f"{exc.filename}: no such file or directory" if exc.filename else str(exc))
        return 1
    except (OSError, ValueError, ImportError) as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except (KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        # Never a traceback: a file or header the library did not foresee.
        _error(f"unexpected {type(exc).__name__}: {exc}")
        return 1


def _error(message):
    text = " ".join(str(message).split())  # one line, whatever the message holds
    print(f"{PROG}: error: {text}", file=sys.stderr, flush=True)


def main(argv=None):
    """Run the ``fastcnn`` command with `argv` (default ``sys.argv[1:]``); return the exit
    code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return _run(_build_parser(), argv)


def train_main(argv=None):
    """Run ``fastcnn-train``, the same as ``fastcnn train``; return the exit code."""
    parser = _Parser(prog=f"{PROG}-train", description=_train_description(),
                     formatter_class=_HelpFormatter)
    _add_train_options(parser)
    return _run(parser, argv, command="train")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
