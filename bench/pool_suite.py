"""Pooling speed against a plain copy and against PyTorch, side by side in one process.

For every (op, shape, thread count) the three contenders are timed in alternating rounds:

* ``copy``: ``np.copyto`` of an array the size of the pooling's input ``x`` into a preallocated
  array of its size (one read and one write of every input element: the memory-bandwidth bound
  of a pass over ``x``; the backward pass writes an ``x``-sized gradient, so the same copy is its
  bound too);
* ``fastcnn``: the layer as ``Sequential`` runs it (``_forward`` / ``_backward`` writing into
  reused buffers);
* ``torch``: the ATen operator a training step calls (``max_pool2d_with_indices``,
  ``avg_pool2d``, ``_adaptive_avg_pool2d`` and their backward operators).

Each round times every contender over the same number of calls; the table shows the median time
per call and the medians of the same-round ratios fastcnn/copy and fastcnn/torch.

    PYTHONPATH=. python bench/pool_suite.py [--rounds 9] [--threads 1 2] [--dtype float32]
"""

import argparse
import statistics
import time

import numpy as np

import fastcnn
from fastcnn import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

OPS = {
    "max2": (lambda d: MaxPool2d(2, dtype=d),
             lambda x: dict(op="max", args=((2, 2), (2, 2), (0, 0), (1, 1), False))),
    "max3s2p1": (lambda d: MaxPool2d(3, 2, 1, dtype=d),
                 lambda x: dict(op="max", args=((3, 3), (2, 2), (1, 1), (1, 1), False))),
    "avg2": (lambda d: AvgPool2d(2, dtype=d),
             lambda x: dict(op="avg", args=((2, 2), (2, 2), (0, 0), False, True, None))),
    "gap": (lambda d: AdaptiveAvgPool2d(1, dtype=d), lambda x: dict(op="gap", args=((1, 1),))),
}
SHAPES = [(64, c, s, s) for s in (28, 14, 7) for c in (16, 64)]


def _torch_calls(torch, spec, x_np, g_np):
    """(forward, backward) closures calling the ATen operators on tensors sharing x's data."""
    aten = torch.ops.aten
    x = torch.from_numpy(x_np)
    g = torch.from_numpy(g_np)
    if spec["op"] == "max":
        k, s, p, d, c = spec["args"]
        _, idx = aten.max_pool2d_with_indices(x, k, s, p, d, c)
        return (lambda: aten.max_pool2d_with_indices(x, k, s, p, d, c),
                lambda: aten.max_pool2d_with_indices_backward(g, x, k, s, p, d, c, idx))
    if spec["op"] == "avg":
        k, s, p, c, cip, div = spec["args"]
        return (lambda: aten.avg_pool2d(x, k, s, p, c, cip, div),
                lambda: aten.avg_pool2d_backward(g, x, k, s, p, c, cip, div))
    (out,) = spec["args"]
    return (lambda: aten._adaptive_avg_pool2d(x, out),
            lambda: aten._adaptive_avg_pool2d_backward(g, x))


def _time(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def bench_case(torch, name, shape, dtype, n_threads, rounds):
    make, spec_of = OPS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    layer = make(dtype)
    y = layer._forward(x, reuse=True)
    g = rng.standard_normal(y.shape).astype(dtype)
    layer._backward(g, reuse=True)
    copy_out = np.empty_like(x)
    fastcnn.set_num_threads(n_threads)
    fwd_b, bwd_b = None, None
    if torch is not None:
        torch.set_num_threads(n_threads)
        fwd_b, bwd_b = _torch_calls(torch, spec_of(x), x, g)
        ty = fwd_b()
        ty = ty[0] if isinstance(ty, tuple) else ty
        assert np.allclose(ty.numpy(), y, rtol=1e-5, atol=1e-6), "forward differs from torch"
    contenders = {
        "fwd": {"copy": lambda: np.copyto(copy_out, x),
                "fastcnn": lambda: layer._forward(x, reuse=True), "torch": fwd_b},
        "bwd": {"copy": lambda: np.copyto(copy_out, x),
                "fastcnn": lambda: layer._backward(g, reuse=True), "torch": bwd_b},
    }
    rows = []
    for direction, fns in contenders.items():
        fns = {k: f for k, f in fns.items() if f is not None}
        per_call = max(_time(fns["copy"], 3), 1e-6)
        reps = max(3, int(0.004 / per_call))
        times = {k: [] for k in fns}
        for _ in range(rounds):
            for k, f in fns.items():
                times[k].append(_time(f, reps))
        med = {k: statistics.median(v) for k, v in times.items()}
        r_copy = statistics.median(a / b for a, b in zip(times["fastcnn"], times["copy"]))
        r_torch = (statistics.median(a / b for a, b in zip(times["fastcnn"], times["torch"]))
                   if "torch" in times else float("nan"))
        rows.append((name, direction, shape, n_threads, med, r_copy, r_torch))
    fastcnn.set_num_threads(None)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    dtype = np.dtype(args.dtype)
    print(f"fastcnn {fastcnn.kernel_isa()}, {args.dtype}, median of {args.rounds} rounds; "
          "ratios are medians of same-round ratios (fastcnn / other)")
    print(f"{'op':9} {'dir':3} {'shape':>15} {'thr':>3} {'copy us':>8} {'fastcnn us':>10} "
          f"{'torch us':>9} {'/copy':>6} {'/torch':>6}")
    for name in args.ops:
        for shape in SHAPES:
            for n in args.threads:
                for (op, d, shp, thr, med, rc, rt) in bench_case(torch, name, shape, dtype, n,
                                                                 args.rounds):
                    print(f"{op:9} {d:3} {'x'.join(map(str, shp)):>15} {thr:>3} "
                          f"{med['copy'] * 1e6:8.1f} {med['fastcnn'] * 1e6:10.1f} "
                          f"{med.get('torch', float('nan')) * 1e6:9.1f} {rc:6.2f} {rt:6.2f}",
                          flush=True)


if __name__ == "__main__":
    main()
