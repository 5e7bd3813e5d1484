"""Batch norm and dropout, side by side with a plain copy and PyTorch.

For each shape (batch 64, 16-64 channels at 28x28, 14x14 and 7x7) and thread count (1, 2), the
candidates run in alternating rounds inside one process; each round times every candidate over
enough calls to last ``--round-ms``. The table gives medians over rounds and the medians of the
same-round ratios:

* ``copy``: ``np.copyto(out, x)`` of the input (the memory-bandwidth bound of one pass);
* fastcnn: the layers' own paths as ``Sequential`` runs them (``_forward``/``_backward`` with
  reused buffers: validation, kernel, running-statistics update, step counter included);
* torch: ``nn.BatchNorm2d`` in training (and eval) mode under ``no_grad`` (forward),
  ``aten.native_batch_norm_backward`` (backward, no autograd engine), ``F.dropout`` (forward) and
  ``aten.native_dropout_backward`` (backward).

Run (both sides with the same malloc settings, see DESIGN.md section 8)::

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        PYTHONPATH=. python bench/norm_suite.py [--rounds 15] [--threads 1 2]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

try:
    import fastcnn
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fastcnn

import torch

SHAPES = [(64, 16, 28, 28), (64, 32, 28, 28), (64, 64, 28, 28), (64, 16, 14, 14),
          (64, 32, 14, 14), (64, 64, 14, 14), (64, 16, 7, 7), (64, 32, 7, 7), (64, 64, 7, 7)]
P = 0.5


def _calls_for(fn, round_ms):
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    return max(1, int(round_ms / 1e3 / max(dt, 1e-7)))


def candidates(shape):
    """{op: {side: fn}} for one shape (all buffers allocated here, once)."""
    N, C, H, W = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    out = np.empty_like(x)

    bn = fastcnn.BatchNorm2d(C)
    bn._forward(x, reuse=True)
    bn_eval = fastcnn.BatchNorm2d(C).eval()
    bn_eval._forward(x, reuse=True)
    drop = fastcnn.Dropout(P, seed=1)
    drop._forward(x, reuse=True)

    tx, tg = torch.from_numpy(x), torch.from_numpy(g)
    tbn = torch.nn.BatchNorm2d(C).train()
    w, b = tbn.weight.detach(), tbn.bias.detach()
    _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(
        tx, w, b, tbn.running_mean, tbn.running_var, True, 0.1, 1e-5)
    tmask = torch.rand(shape) > P
    tbn_eval = torch.nn.BatchNorm2d(C).eval()

    def torch_bn_eval():
        with torch.no_grad():
            tbn_eval(tx)

    def torch_bn_forward():
        with torch.no_grad():
            tbn(tx)

    def torch_bn_backward():
        torch.ops.aten.native_batch_norm_backward(
            tg, tx, w, tbn.running_mean, tbn.running_var, save_mean, save_invstd, True, 1e-5,
            [True, True, True])

    def torch_dropout():
        with torch.no_grad():
            torch.nn.functional.dropout(tx, P, True)

    copy = ("copy", lambda: np.copyto(out, x))
    return {
        "batchnorm forward (train)": dict([copy, ("fastcnn", lambda: bn._forward(x, True)),
                                           ("torch", torch_bn_forward)]),
        "batchnorm backward (train)": dict([copy, ("fastcnn", lambda: bn._backward(g, True)),
                                            ("torch", torch_bn_backward)]),
        "batchnorm forward (eval)": dict([copy, ("fastcnn", lambda: bn_eval._forward(x, True)),
                                          ("torch", torch_bn_eval)]),
        "dropout forward": dict([copy, ("fastcnn", lambda: drop._forward(x, True)),
                                 ("torch", torch_dropout)]),
        "dropout backward": dict([copy, ("fastcnn", lambda: drop._backward(g, True)),
                                  ("torch", lambda: torch.ops.aten.native_dropout_backward(
                                      tg, tmask, 1 / (1 - P)))]),
    }


def measure(fns, rounds, round_ms):
    """Alternating rounds; returns {side: [seconds per call, one per round]}."""
    calls = {side: _calls_for(fn, round_ms) for side, fn in fns.items()}
    times = {side: [] for side in fns}
    for _ in range(rounds):
        for side, fn in fns.items():
            t = time.perf_counter()
            for _ in range(calls[side]):
                fn()
            times[side].append((time.perf_counter() - t) / calls[side])
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--round-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shapes", type=int, default=len(SHAPES),
                        help="only the first N shapes")
    parser.add_argument("--ops", nargs="+", default=None,
                        help="only the ops whose name starts with one of these words "
                             "(e.g. batchnorm dropout)")
    args = parser.parse_args(argv)
    print(f"fastcnn {fastcnn.__version__} ({fastcnn.kernel_isa()}), torch {torch.__version__}; "
          f"float32; medians of {args.rounds} alternating rounds; ratios are same-round medians")
    print("| op | shape | thr | copy ms | fastcnn ms | torch ms | fastcnn/copy | torch/fastcnn |")
    print("|---|---|---|---|---|---|---|---|")
    worst_copy, worst_torch = 0.0, np.inf
    for threads in args.threads:
        fastcnn.set_num_threads(threads)
        torch.set_num_threads(threads)
        for shape in SHAPES[:args.shapes]:
            for op, fns in candidates(shape).items():
                if args.ops and not any(op.startswith(w) for w in args.ops):
                    continue
                t = {k: np.array(v) for k, v in measure(fns, args.rounds, args.round_ms).items()}
                r_copy = float(np.median(t["fastcnn"] / t["copy"]))
                r_torch = float(np.median(t["torch"] / t["fastcnn"]))
                worst_copy, worst_torch = max(worst_copy, r_copy), min(worst_torch, r_torch)
                print(f"| {op} | {'x'.join(map(str, shape))} | {threads} | "
                      f"{np.median(t['copy']) * 1e3:.3f} | {np.median(t['fastcnn']) * 1e3:.3f} | "
                      f"{np.median(t['torch']) * 1e3:.3f} | {r_copy:.2f} | {r_torch:.2f} |",
                      flush=True)
    fastcnn.set_num_threads(None)
    print(f"\nworst fastcnn/copy {worst_copy:.2f} (floor: <= 2), worst torch/fastcnn "
          f"{worst_torch:.2f} (floor: >= 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
