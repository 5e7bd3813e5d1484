"""The ``fastcnn`` command: train, evaluate, predict, info, summary.

``fastcnn train`` with no options trains LeNet-5 on the embedded 5,000 MNIST digits and saves
``model.npz``; ``fastcnn evaluate model.npz`` prints its accuracy and confusion matrix;
``fastcnn predict model.npz digit.png`` classifies images. ``fastcnn-train`` is ``fastcnn train``.

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

import numpy as np

PROG = "fastcnn"

#: The defaults of ``fastcnn train``. On the embedded digits they reach 98.4-98.7% test accuracy
#: over seeds 0-4 (98.5% for the default seed 0), in about 3 s on two idle cores.
DEFAULTS = {
    "epochs": 20,
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": {"sgd": 0.05, "adam": 1e-3},
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "step_size": None,
    "gamma": 0.1,
    # Shifts make up for the embedded set's 4,000 images; on a 60,000-image set such as
    # Fashion-MNIST they cost accuracy within a 10-epoch budget (90.1% instead of 91.0% with
    # batches of 32, measured with an earlier build).
    "shift": {"embedded": 2, "data": 0},
    "seed": 0,
    "out": "model.npz",
}

#: ``train`` options fixed by a checkpoint: giving them together with --resume is an error.
_RESUME_FIXED = ("batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule",
                 "step_size", "gamma", "shift", "seed", "normalize")


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


def _add_train_options(parser):
    g = parser.add_argument_group("data")
    g.add_argument("--data", metavar="DIR",
                   help="an MNIST-style directory of IDX files (train-images-idx3-ubyte[.gz], "
                        "train-labels-idx1-ubyte[.gz], t10k-...), e.g. "
                        "/usr/share/datasets/fashion-mnist; default: the embedded 5,000 MNIST "
                        "digits (4,000 to train, 1,000 to test)")
    g.add_argument("--normalize", action="store_true", default=None,
                   help="standardise pixels with the training set's mean and standard deviation "
                        "(recorded in the model file and applied by evaluate and predict)")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, metavar="E",
                   help=f"passes over the training set (default: {DEFAULTS['epochs']})")
    g.add_argument("--batch-size", type=_positive_int, metavar="B",
                   help=f"images per step (default: {DEFAULTS['batch_size']})")
    g.add_argument("--optimizer", choices=("sgd", "adam"),
                   help=f"the optimiser (default: {DEFAULTS['optimizer']})")
    g.add_argument("--lr", type=_float_in(0.0, low_open=True), metavar="LR",
                   help=f"base learning rate (default: {DEFAULTS['lr']['sgd']} for sgd, "
                        f"{DEFAULTS['lr']['adam']} for adam)")
    g.add_argument("--momentum", type=_float_in(0.0, 1.0), metavar="M",
                   help=f"SGD momentum (default: {DEFAULTS['momentum']}; sgd only)")
    g.add_argument("--weight-decay", type=_float_in(0.0), metavar="WD",
                   help="L2 weight decay on the weights, not the biases (default: "
                        f"{DEFAULTS['weight_decay']})")
    g.add_argument("--schedule", choices=("none", "step", "cosine"),
                   help="learning-rate schedule: none (constant), step (times --gamma every "
                        "--step-size epochs) or cosine (decayed every step towards 0 at the end "
                        f"of the run) (default: {DEFAULTS['schedule']})")
    g.add_argument("--step-size", type=_positive_int, metavar="K",
                   help="epochs between decays of the step schedule (default: epochs // 3)")
    g.add_argument("--gamma", type=_float_in(0.0, low_open=True), metavar="G",
                   help=f"decay factor of the step schedule, <= 1 (default: {DEFAULTS['gamma']})")
    g.add_argument("--shift", type=_non_negative_int, metavar="PIXELS",
                   help="augment the training images with random circular shifts of up to this "
                        "many pixels in each direction, drawn anew every epoch; 0 turns it off "
                        f"(default: {DEFAULTS['shift']['embedded']} for the embedded digits, "
                        f"{DEFAULTS['shift']['data']} with --data)")
    g.add_argument("--seed", type=_non_negative_int, metavar="S",
                   help="seeds the initial weights and the batch order; a run is bitwise "
                        f"reproducible for any thread count (default: {DEFAULTS['seed']})")
    g = parser.add_argument_group("files and output")
    g.add_argument("--out", metavar="PATH", default=DEFAULTS["out"],
                   help=f"where to save the trained model (default: {DEFAULTS['out']})")
    g.add_argument("--checkpoint", metavar="PATH",
                   help="save a checkpoint here after every epoch and on Ctrl-C (default: only "
                        "on Ctrl-C, to the --out path with .ckpt.npz in place of .npz)")
    g.add_argument("--resume", metavar="PATH",
                   help="continue the run saved in this checkpoint; the training settings come "
                        "from the checkpoint (only --epochs, --data and the file and output "
                        "options may be given); the result is bitwise identical to an "
                        "uninterrupted run")
    g.add_argument("--plot", metavar="PNG",
                   help="save learning curves (loss, accuracy per epoch) to this PNG (needs "
                        "matplotlib)")
    g.add_argument("--history", metavar="JSON",
                   help="write the per-epoch history (loss, accuracies, seconds, images/s, lr) "
                        "to this JSON file")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it is shown only when stderr is a terminal anyway)")
    _add_threads(parser)


_TRAIN_DESCRIPTION = """\
Train LeNet-5. With no options: the embedded 5,000 MNIST digits (4,000 to train, 1,000 to
test), SGD with momentum 0.9 and weight decay 5e-4, learning rate 0.05 decayed by a cosine
schedule, batches of 64, random shifts of up to 2 pixels, 20 epochs (98-99% test accuracy);
the model is saved to model.npz. One line is printed per epoch and a summary at the end; a
progress bar shows on a terminal.

Ctrl-C stops after the current step and saves a checkpoint; --resume continues from it.

Fashion-MNIST (apt-get install dataset-fashion-mnist), about 90.8% in 10 epochs:
  fastcnn train --data /usr/share/datasets/fashion-mnist --epochs 10
"""


def _add_train(subparsers):
    p = subparsers.add_parser("train", help="train LeNet-5 and save it",
                              description=_TRAIN_DESCRIPTION, formatter_class=_HelpFormatter)
    _add_train_options(p)
    return p


def _add_evaluate(subparsers):
    p = subparsers.add_parser(
        "evaluate", help="accuracy and confusion matrix of a saved model",
        description="Print the accuracy, mean loss and confusion matrix of a saved model on a "
                    "test split. The model's recorded normalisation is applied.",
        formatter_class=_HelpFormatter)
    p.add_argument("model", help="a model file (.npz) saved by 'fastcnn train' (a checkpoint "
                                 "works too)")
    p.add_argument("--data", metavar="DIR",
                   help="an MNIST-style directory of IDX files whose test split (t10k-*) to use "
                        "(default: the data set the model was trained on, as recorded in the "
                        "file)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="which split to evaluate on (default: test)")
    p.add_argument("--batch-size", type=_positive_int, default=1000, metavar="B",
                   help="images per forward pass (default: 1000)")
    _add_threads(p)


def _add_predict(subparsers):
    p = subparsers.add_parser(
        "predict", help="classify image files",
        description="Classify images with a saved model and print 'path: class (probability)' "
                    "per image. Each image is converted to grayscale (transparent pixels become "
                    "the background), resized to 28x28, scaled to [0, 1], normalised as the "
                    "model's training data was, and padded to 32x32. Models trained on MNIST "
                    "expect light digits on a dark background: use --invert for dark-on-light "
                    "images. Needs Pillow (pip install 'fastcnn[image]').",
        formatter_class=_HelpFormatter)
    p.add_argument("model", help="a model file (.npz) saved by 'fastcnn train'")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (PNG, JPEG, ... anything Pillow reads)")
    p.add_argument("--invert", action="store_true",
                   help="invert the grey levels (for dark-on-light images)")
    _add_threads(p)


def _add_info(subparsers):
    subparsers.add_parser(
        "info", help="version, OpenMP, threads, kernel ISA, NumPy and BLAS",
        description="Print the fastcnn version, whether the kernels use OpenMP, the thread count, "
                    "the kernels' instruction set, and the NumPy and BLAS in use.",
        formatter_class=_HelpFormatter)


def _add_summary(subparsers):
    p = subparsers.add_parser(
        "summary", help="LeNet-5's layers, parameters and multiply-adds",
        description="Print LeNet-5's layers with output shapes, parameter counts and "
                    "multiply-adds per image.",
        formatter_class=_HelpFormatter)
    p.add_argument("--num-classes", type=_positive_int, default=10, metavar="K",
                   help="size of the last layer (default: 10)")


def _add_bench(subparsers):
    p = subparsers.add_parser(
        "bench", help="benchmark fastcnn against NumPy and PyTorch (Markdown + PNG report)",
        description="Run the benchmark report; 'fastcnn bench --help' lists its options.",
        add_help=False, formatter_class=_HelpFormatter)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _build_parser():
    parser = _Parser(prog=PROG, formatter_class=_HelpFormatter,
                     description="Fast CPU training of LeNet-5 (Cython + OpenMP kernels).",
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


def _load_data(path, normalize=False):
    """The embedded digits (path None) or an IDX directory, padded to 32x32 float32."""
    from .datasets import load_idx_dir, load_mnist5k

    if path is None:
        return load_mnist5k(normalize=normalize)
    return load_idx_dir(path, normalize=normalize)


def _recorded_data_path(header):
    """The data directory recorded in a model file's metadata (None: the embedded digits)."""
    data = (header.get("metadata") or {}).get("data") or {}
    return data.get("path")


def _normalize_inplace(images, normalization):
    """Standardise padded [0, 1] images in place exactly as ``load_idx_dir(normalize=True)``
    does (same float32 operations, so the same bits)."""
    if normalization:
        images -= images.dtype.type(normalization["mean"])
        images /= images.dtype.type(normalization["std"])
    return images


def _default_checkpoint(out):
    root, ext = os.path.splitext(out)
    return (root if ext == ".npz" else out) + ".ckpt.npz"


def _check_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError("--plot needs matplotlib: pip install 'fastcnn[plot]'") from None


# --------------------------------------------------------------------------------------------
# train


def _cmd_train(args):
    from . import LeNet5
    from .checkpoint import load_checkpoint
    from .nn import CrossEntropyLoss
    from .optim import SGD, Adam
    from .schedules import get_schedule
    from .train import Checkpointer, Progress, Trainer, TrainingInterrupted, _upgrade_config
    from .transforms import RandomShift

    if args.plot:
        _check_matplotlib()
    for option in ("out", "checkpoint", "history", "plot"):
        path = getattr(args, option)
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):
            raise CommandError(f"--{option} {path}: the folder {folder} does not exist")
    _set_threads(args)

    header = None
    if args.resume:
        given = [f"--{name.replace('_', '-')}" for name in _RESUME_FIXED
                 if getattr(args, name) is not None]
        if given:
            raise _UsageError(f"{', '.join(given)} cannot be combined with --resume: the "
                              f"checkpoint fixes the training settings")
        model, _, header = load_checkpoint(args.resume)
        info = header["optimizer"]
        cfg = _upgrade_config(header["trainer"], len(info.get("param_groups", [None])))
        shift = [t.get("max_shift", 0) for t in cfg.get("augment", [])
                 if t.get("name") == "RandomShift"]
        settings = {
            "epochs": args.epochs or cfg["epochs"], "batch_size": cfg["batch_size"],
            "seed": cfg["seed"], "schedule": cfg["schedule"], "lr": cfg["base_lrs"][0],
            "optimizer": info["type"].lower(),
            "momentum": info.get("momentum"), "weight_decay": info["weight_decay"],
            "l2": cfg["loss"].get("l2", 0.0), "shift": shift[0] if shift else 0,
        }
        recorded = (header.get("metadata") or {}).get("data") or {}
        data_path = args.data if args.data is not None else recorded.get("path")
        normalize = bool(recorded.get("normalize", header.get("normalization") is not None))
        opt_kwargs = ({"momentum": info["momentum"], "nesterov": info.get("nesterov", False)}
                      if info["type"] == "SGD" else
                      {"betas": tuple(info["betas"]), "eps": info["eps"]})
    else:
        optimizer = args.optimizer or DEFAULTS["optimizer"]
        if optimizer == "adam" and args.momentum is not None:
            raise _UsageError("--momentum applies to --optimizer sgd only")
        schedule = args.schedule or DEFAULTS["schedule"]
        settings = {
            "epochs": args.epochs or DEFAULTS["epochs"],
            "batch_size": args.batch_size or DEFAULTS["batch_size"],
            "seed": DEFAULTS["seed"] if args.seed is None else args.seed,
            "schedule": None if schedule == "none" else schedule,
            "step_size": args.step_size,
            "gamma": DEFAULTS["gamma"] if args.gamma is None else args.gamma,
            "lr": args.lr or DEFAULTS["lr"][optimizer], "optimizer": optimizer,
            "weight_decay": (DEFAULTS["weight_decay"] if args.weight_decay is None
                             else args.weight_decay),
            "l2": 0.0,
            "shift": (args.shift if args.shift is not None else
                      DEFAULTS["shift"]["embedded" if args.data is None else "data"]),
        }
        if settings["gamma"] > 1:
            raise _UsageError(f"--gamma must be <= 1, got {settings['gamma']}")
        data_path = args.data
        normalize = bool(args.normalize)
        opt_kwargs = ({"momentum": (DEFAULTS["momentum"] if args.momentum is None
                                    else args.momentum)}
                      if optimizer == "sgd" else {})

    data = _load_data(data_path, normalize=normalize)
    if header is None:
        model = LeNet5(num_classes=data.num_classes, seed=settings["seed"])
    elif model.num_classes != data.num_classes:
        raise CommandError(f"{args.resume}: the model has {model.num_classes} classes but the "
                           f"data set has {data.num_classes}")
    opt_class = SGD if settings["optimizer"] == "sgd" else Adam
    optimizer = opt_class(model.param_groups(settings["weight_decay"]), lr=settings["lr"],
                          **opt_kwargs)
    checkpoint = args.checkpoint or _default_checkpoint(args.out)
    metadata = {"data": {"name": data.name,
                         "path": None if data_path is None else os.path.abspath(data_path),
                         "normalize": normalize}}
    schedule = settings["schedule"]
    if schedule == "step":
        schedule = get_schedule("step", settings["epochs"], step_size=settings["step_size"],
                                gamma=settings["gamma"])
    trainer = Trainer(
        model, optimizer, data, loss=CrossEntropyLoss(l2=settings["l2"]),
        batch_size=settings["batch_size"], epochs=settings["epochs"], seed=settings["seed"],
        schedule=schedule,
        augment=[RandomShift(settings["shift"])] if settings["shift"] else [],
        progress=Progress(bar=False if args.no_progress else None, log=_print_flush,
                          history_path=args.history, plot_path=args.plot),
        checkpoint=Checkpointer(checkpoint, every_epoch=args.checkpoint is not None),
        metadata=metadata)
    if args.resume:
        trainer.load_checkpoint(args.resume)

    start = time.perf_counter()
    try:
        history = trainer.fit()
    except TrainingInterrupted as exc:
        print(f"{PROG}: interrupted in epoch {exc.epoch + 1} after batch {exc.step}/"
              f"{exc.steps_per_epoch}; checkpoint saved to {exc.checkpoint_path}; resume with: "
              f"{PROG} train --resume {exc.checkpoint_path}", file=sys.stderr, flush=True)
        return 130
    except FloatingPointError as exc:
        raise CommandError(str(exc)) from None
    wall = time.perf_counter() - start
    trainer.save_model(args.out)

    last = history[-1] if history else None
    train_seconds = sum(h["seconds"] for h in history)
    images = trainer.data.n_train * len(history)
    rate = images / train_seconds if train_seconds > 0 else 0.0
    acc = ("no test split" if last is None or last["test_acc"] is None else
           f"test accuracy {100 * last['test_acc']:.2f}% on {trainer.data.test[1].shape[0]:,} "
           f"images")
    threads = _threads()
    print(f"{acc}; trained {_plural(len(history), 'epoch')} in {wall:.1f} s ({rate:,.0f} "
          f"images/s, {trainer.model.dtype} on {_plural(threads, 'thread')}); model saved to "
          f"{args.out}", flush=True)
    return 0


def _plural(n, noun):
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _print_flush(text):
    print(text, flush=True)


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


def _cmd_evaluate(args):
    from .checkpoint import load_model
    from .train import evaluate

    model, header = load_model(args.model, return_header=True)
    _set_threads(args)
    data_path = args.data if args.data is not None else _recorded_data_path(header)
    data = _load_data(data_path)
    images, labels = getattr(data, args.split)
    if labels.size and labels.max() >= model.num_classes:
        raise CommandError(f"the data set has labels up to {labels.max()} but the model has "
                           f"{model.num_classes} classes")
    _normalize_inplace(images, header.get("normalization"))
    images = images.astype(model.dtype, copy=False)
    classes = header.get("classes") or [str(i) for i in range(model.num_classes)]
    start = time.perf_counter()
    result = evaluate(model, images, labels, args.batch_size)
    seconds = time.perf_counter() - start
    print(f"{args.model} on the {args.split} split of {data.name} ({labels.shape[0]:,} images): "
          f"accuracy {100 * result.accuracy:.2f}%, loss {result.loss:.4f} "
          f"({seconds:.2f} s, {labels.shape[0] / seconds:,.0f} images/s)")
    print()
    print(format_confusion_matrix(_confusion_matrix(labels, result.predictions,
                                                    model.num_classes), classes))
    return 0


# --------------------------------------------------------------------------------------------
# predict


def _require_pillow():
    try:
        from PIL import Image
    except ImportError:
        raise CommandError("predict needs Pillow to read images: pip install 'fastcnn[image]'"
                           ) from None
    return Image


def read_image(path, invert=False):
    """Read an image file as a 28x28 float32 array in [0, 1] (needs Pillow).

    Colour is converted to grayscale; transparent pixels become the background (black, or white
    with `invert`, which then turns dark-on-light into light-on-dark); the image is resized to
    28x28 (Lanczos) without keeping its aspect ratio.
    """
    Image = _require_pillow()
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if invert
                                       else (0, 0, 0, 255))
                img = Image.alpha_composite(background, rgba)
            gray = img.convert("L")
    except FileNotFoundError:
        raise CommandError(f"{path}: no such file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise CommandError(f"{path}: cannot read the image: {exc}") from None
    if gray.size != (28, 28):
        gray = gray.resize((28, 28), Image.Resampling.LANCZOS)
    x = np.asarray(gray, dtype=np.float32) / np.float32(255)
    if invert:
        x = np.float32(1) - x
    return x


def _cmd_predict(args):
    from .checkpoint import load_model

    _require_pillow()
    model, header = load_model(args.model, return_header=True)
    _set_threads(args)
    batch = np.zeros((len(args.images), 28, 28), dtype=model.dtype)
    for i, path in enumerate(args.images):
        batch[i] = read_image(path, args.invert)
    proba = model.predict_proba(batch)  # pads and normalises as the model file records
    classes = header.get("classes") or [str(i) for i in range(model.num_classes)]
    for path, p in zip(args.images, proba):
        k = int(np.argmax(p))
        print(f"{path}: {classes[k]} ({p[k]:.3f})")
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


def _cmd_bench(args):
    from .bench import main as bench_main

    return bench_main(args.bench_args, prog=f"{PROG} bench")


def _cmd_summary(args):
    from . import LeNet5

    LeNet5(num_classes=args.num_classes).summary()
    return 0


# --------------------------------------------------------------------------------------------
# Entry points

_COMMANDS = {
    "train": (_add_train, _cmd_train),
    "evaluate": (_add_evaluate, _cmd_evaluate),
    "predict": (_add_predict, _cmd_predict),
    "info": (_add_info, _cmd_info),
    "summary": (_add_summary, _cmd_summary),
    "bench": (_add_bench, _cmd_bench),
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


def _error(message):
    text = " ".join(str(message).split())  # one line, whatever the message holds
    print(f"{PROG}: error: {text}", file=sys.stderr, flush=True)


def main(argv=None):
    """Run the ``fastcnn`` command with `argv` (default ``sys.argv[1:]``); return the exit
    code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the report parses (and documents) its own options
        from .bench import main as bench_main

        return bench_main(argv[1:], prog=f"{PROG} bench")
    return _run(_build_parser(), argv)


def train_main(argv=None):
    """Run ``fastcnn-train``, the same as ``fastcnn train``; return the exit code."""
    parser = _Parser(prog=f"{PROG}-train", description=_TRAIN_DESCRIPTION,
                     formatter_class=_HelpFormatter)
    _add_train_options(parser)
    return _run(parser, argv, command="train")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
