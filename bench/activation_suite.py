"""Element-wise activations side by side: fastcnn, a plain ``np.copyto`` of the same arrays (the
memory-bandwidth bound of one pass) and PyTorch's own forward/backward kernels.

Feature maps of batch 64 with 16-64 channels at 28x28, 14x14 and 7x7, float32 (``--dtype``),
with 1 and 2 threads. In every round the three are timed one after another (each the best of
``--inner`` calls); the table gives the medians over the rounds of the per-round ratios
fastcnn / copyto and fastcnn / torch (below 1 means fastcnn is faster), and fastcnn's median time.

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        PYTHONPATH=$PWD python bench/activation_suite.py [--rounds 7] [--dtype float32]
"""

import argparse
import statistics
import time

import numpy as np

import fastcnn
from fastcnn import functional as F

SHAPES = [(64, c, p, p) for p in (28, 14, 7) for c in (16, 64)]


def _cases(torch):
    aten = torch.ops.aten if torch else None
    # name: (fastcnn forward, fastcnn backward, torch forward, torch backward, backward's input)
    return {
        "relu": (F.relu, F.relu_backward, lambda t: torch.relu(t),
                 lambda g, x, y: aten.threshold_backward(g, x, 0), "x"),
        "leaky_relu": (F.leaky_relu, F.leaky_relu_backward,
                       lambda t: torch.nn.functional.leaky_relu(t, 0.01),
                       lambda g, x, y: aten.leaky_relu_backward(g, x, 0.01, False), "x"),
        "elu": (F.elu, F.elu_backward, lambda t: torch.nn.functional.elu(t),
                lambda g, x, y: aten.elu_backward(g, 1.0, 1, 1, False, x), "x"),
        "gelu": (F.gelu, F.gelu_backward, lambda t: torch.nn.functional.gelu(t),
                 lambda g, x, y: aten.gelu_backward(g, x), "x"),
        "gelu_tanh": (lambda x: F.gelu(x, "tanh"), lambda g, x: F.gelu_backward(g, x, "tanh"),
                      lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
                      lambda g, x, y: aten.gelu_backward(g, x, approximate="tanh"), "x"),
        "tanh": (F.tanh, F.tanh_backward, lambda t: torch.tanh(t),
                 lambda g, x, y: aten.tanh_backward(g, y), "y"),
        "sigmoid": (F.sigmoid, F.sigmoid_backward, lambda t: torch.sigmoid(t),
                    lambda g, x, y: aten.sigmoid_backward(g, y), "y"),
    }


def _best(fn, inner):
    best = float("inf")
    for _ in range(inner):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--only", default="", help="comma-separated activation names")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    dtype = np.dtype(args.dtype)
    cases = _cases(torch)
    if args.only:
        cases = {k: v for k, v in cases.items() if k in args.only.split(",")}
    rng = np.random.default_rng(0)
    print(f"kernels {fastcnn.kernel_isa()}, dtype {dtype}, medians of {args.rounds} rounds; "
          "ratios: fastcnn time / other time (same round)")
    print(f"{'op':<12}{'dir':<5}{'shape':<18}{'thr':>4}{'fastcnn us':>12}{'/copyto':>9}"
          f"{'/torch':>8}")
    worst = {}
    for n_threads in [int(t) for t in args.threads.split(",")]:
        fastcnn.set_num_threads(n_threads)
        if torch:
            torch.set_num_threads(n_threads)
        for shape in SHAPES:
            x = rng.standard_normal(shape).astype(dtype)
            g = rng.standard_normal(shape).astype(dtype)
            out = np.empty_like(x)
            tx, tg = (torch.from_numpy(x), torch.from_numpy(g)) if torch else (None, None)
            for name, (fwd, bwd, tfwd, tbwd, saved) in cases.items():
                y = fwd(x)
                ty = torch.from_numpy(y) if torch else None
                keep, tkeep = (x, tx) if saved == "x" else (y, ty)
                for direction in ("fwd", "bwd"):
                    if direction == "fwd":
                        ours = lambda: fwd(x)  # noqa: E731
                        theirs = (lambda: tfwd(tx)) if torch else None  # noqa: E731
                    else:
                        ours = lambda: bwd(g, keep)  # noqa: E731
                        theirs = (lambda: tbwd(tg, tx, tkeep)) if torch else None  # noqa: E731
                    ours()
                    if theirs:
                        theirs()
                    r_copy, r_torch, t_ours = [], [], []
                    for _ in range(args.rounds):
                        tc = _best(lambda: np.copyto(out, x), args.inner)
                        to = _best(ours, args.inner)
                        tt = _best(theirs, args.inner) if theirs else float("nan")
                        r_copy.append(to / tc)
                        r_torch.append(to / tt)
                        t_ours.append(to)
                    rc, rt = statistics.median(r_copy), statistics.median(r_torch)
                    key = (name, direction, n_threads)
                    worst[key] = (max(worst.get(key, (0, 0))[0], rc),
                                  max(worst.get(key, (0, 0))[1], rt))
                    print(f"{name:<12}{direction:<5}{str(shape):<18}{n_threads:>4}"
                          f"{statistics.median(t_ours) * 1e6:>12.1f}{rc:>9.2f}{rt:>8.2f}",
                          flush=True)
    fastcnn.set_num_threads(None)
    print("\nworst ratio over the shapes (op, dir, threads): /copyto /torch")
    for (name, direction, n_threads), (rc, rt) in worst.items():
        print(f"{name:<12}{direction:<5}{n_threads:>4}{rc:>9.2f}{rt:>8.2f}")


if __name__ == "__main__":
    main()
