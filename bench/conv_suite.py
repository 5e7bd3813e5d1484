"""The small-CNN convolution shape suite (issue 9), timed against PyTorch side by side.

``SHAPES`` is the suite as data (importable), to which the run adds the convolutions of every zoo
model that it does not already hold (:func:`zoo_shapes`). Run::

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        python bench/conv_suite.py --threads 1,2 --rounds 5 --peak 96,187

For each shape, thread count and op (forward, input gradient, weight gradient at batch 64, and
forward at batch 1, timed as an eval-mode layer runs it: packed weights kept between calls and
reused after a memcmp of the weight and bias with their snapshots) it checks fastcnn against torch,
then alternates the two in rounds (each a median of several calls) and prints a Markdown table:
medians in ms, the median of the same-round ratios torch / fastcnn (> 1: fastcnn faster) with
min-max, fastcnn's GFLOP/s (useful multiply-adds x 2) and, with ``--peak`` (GFLOP/s per thread
count), the fraction of the FMA peak.
"""

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SHAPES = [
    # name, C, F, H (= W), kernel, stride, padding, dilation, groups
    dict(name="lenet_c1", C=1, F=6, H=32, k=5, stride=1, padding=0, dilation=1, groups=1),
    dict(name="lenet_c3", C=6, F=16, H=14, k=5, stride=1, padding=0, dilation=1, groups=1),
    dict(name="lenet_c5", C=16, F=120, H=5, k=5, stride=1, padding=0, dilation=1, groups=1),
    dict(name="3x3_1-16@28", C=1, F=16, H=28, k=3, stride=1, padding=1, dilation=1, groups=1),
    dict(name="3x3_16-32@14", C=16, F=32, H=14, k=3, stride=1, padding=1, dilation=1, groups=1),
    dict(name="3x3_32-64@7", C=32, F=64, H=7, k=3, stride=1, padding=1, dilation=1, groups=1),
    dict(name="3x3_64-128@4", C=64, F=128, H=4, k=3, stride=1, padding=1, dilation=1, groups=1),
    dict(name="3x3s2_16-32@28", C=16, F=32, H=28, k=3, stride=2, padding=1, dilation=1,
         groups=1),
    dict(name="1x1_64-32@7", C=64, F=32, H=7, k=1, stride=1, padding=0, dilation=1, groups=1),
    dict(name="1x1_32-128@14", C=32, F=128, H=14, k=1, stride=1, padding=0, dilation=1,
         groups=1),
    dict(name="dw3x3_32@14", C=32, F=32, H=14, k=3, stride=1, padding=1, dilation=1, groups=32),
    dict(name="dil3x3_32-32@14", C=32, F=32, H=14, k=3, stride=1, padding=2, dilation=2,
         groups=1),
]

OPS = ("forward", "input", "weight")


def _key(s):
    return tuple(s[k] for k in ("C", "F", "H", "k", "stride", "padding", "dilation", "groups"))


def zoo_shapes():
    """The convolutions of every zoo model at its default input size that SHAPES does not
    already hold, named ``<model>.<layer index>`` (square inputs, kernels, strides, paddings
    and dilations: what the zoo builds)."""
    import fastcnn
    from fastcnn.models import get_model, list_models

    seen, out = {_key(s) for s in SHAPES}, []
    for model_name in list_models():
        model = get_model(model_name)
        shape = (1,) + tuple(model.input_shape)
        for i, layer in enumerate(model):
            if isinstance(layer, fastcnn.Conv2d) and shape[2] == shape[3] and all(
                    len(set(v)) == 1 for v in (layer.kernel_size, layer.stride, layer.padding,
                                               layer.dilation)):
                s = dict(name=f"{model_name}.{i}", C=shape[1], F=layer.out_channels,
                         H=shape[2], k=layer.kernel_size[0], stride=layer.stride[0],
                         padding=layer.padding[0], dilation=layer.dilation[0],
                         groups=layer.groups)
                if _key(s) not in seen:
                    seen.add(_key(s))
                    out.append(s)
            shape = layer.output_shape(shape)
    return out


def _macs(s, N):
    OH = (s["H"] + 2 * s["padding"] - s["dilation"] * (s["k"] - 1) - 1) // s["stride"] + 1
    return N * OH * OH * s["k"] ** 2 * (s["C"] // s["groups"]) * s["F"]


def _make(s, N, op, torch):
    """(fastcnn call, torch call, check) for one shape and op."""
    from fastcnn.functional import conv as fconv

    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, s["C"], s["H"], s["H"])).astype(np.float32)
    w = (rng.standard_normal((s["F"], s["C"] // s["groups"], s["k"], s["k"])) * 0.1).astype(
        np.float32)
    b = rng.standard_normal(s["F"]).astype(np.float32)
    args = (s["stride"], s["padding"], s["dilation"], s["groups"])
    g = fconv._geometry(x.shape, w.shape, *args)
    gy = rng.standard_normal((N, s["F"], g.OH, g.OW)).astype(np.float32)
    ws = fconv._Workspace()
    tx, tw, tb, tg = (torch.from_numpy(a) for a in (x, w, b, gy))
    if op == "forward":
        y = np.empty((N, s["F"], g.OH, g.OW), np.float32)

        def ours():  # batch 1 (inference): as an eval-mode layer, packed weights kept
            return fconv._conv2d_into(x, w, b, y, g, False, ws, keep=N == 1)

        def theirs():
            return torch.nn.functional.conv2d(tx, tw, tb, *args)
    elif op == "input":
        dx = np.empty_like(x)

        def ours():
            return fconv._conv2d_backward_input_into(gy, w, dx, g, ws)

        def theirs():
            return torch.ops.aten.convolution_backward(
                tg, tx, tw, None, [s["stride"]] * 2, [s["padding"]] * 2, [s["dilation"]] * 2,
                False, [0, 0], s["groups"], [True, False, False])[0]
    else:
        dw = np.empty_like(w)
        db = np.empty_like(b)

        def ours():
            return fconv._conv2d_backward_weight_into(x, gy, dw, db, g, ws)[0]

        def theirs():
            return torch.ops.aten.convolution_backward(
                tg, tx, tw, [s["F"]], [s["stride"]] * 2, [s["padding"]] * 2,
                [s["dilation"]] * 2, False, [0, 0], s["groups"], [False, True, True])[1]

    def check():
        a = np.array(ours(), copy=True)
        t = theirs().numpy()
        err = np.abs(a - t).max() / max(np.abs(t).max(), 1e-30)
        if not err < 1e-4:
            raise AssertionError(f"{s['name']} {op}: relative error {err:.2e} against torch")

    return ours, theirs, check


def _time(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(threads, rounds, peaks, batch, names=None, out=sys.stdout):
    import torch

    import fastcnn

    rows = []
    shapes = SHAPES + zoo_shapes()
    for nt in threads:
        fastcnn.set_num_threads(nt)
        torch.set_num_threads(nt)
        for s in shapes:
            if names and s["name"] not in names:
                continue
            cases = [(op, batch) for op in OPS] + [("forward", 1)]
            for op, N in cases:
                ours, theirs, check = _make(s, N, op, torch)
                check()
                macs = _macs(s, N)
                reps = max(3, min(200, int(2e8 / max(macs, 1))))
                ratios, t_ours, t_theirs = [], [], []
                for _ in range(rounds):
                    a = _time(ours, reps)
                    b = _time(theirs, reps)
                    t_ours.append(a)
                    t_theirs.append(b)
                    ratios.append(b / a)
                mo, mt = float(np.median(t_ours)), float(np.median(t_theirs))
                gflops = 2 * macs / mo / 1e9
                rows.append((nt, s["name"], op, N, mo * 1e3, mt * 1e3, float(np.median(ratios)),
                             min(ratios), max(ratios), gflops,
                             gflops / peaks[nt] if nt in peaks else None))
        fastcnn.set_num_threads(None)
    print("| threads | shape | op | N | fastcnn ms | torch ms | torch/fastcnn (min-max) "
          "| GFLOP/s | of peak |", file=out)
    print("|---|---|---|---|---|---|---|---|---|", file=out)
    for r in rows:
        peak = f"{r[10]:.0%}" if r[10] is not None else "-"
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:.2f}x "
              f"({r[7]:.2f}-{r[8]:.2f}) | {r[9]:.1f} | {peak} |", file=out)
    for nt in threads:
        sel = [r[6] for r in rows if r[0] == nt and r[3] == batch]
        if sel:
            geo = math.exp(sum(math.log(v) for v in sel) / len(sel))
            print(f"\n{nt} thread(s), batch {batch}: geometric mean of the ratios {geo:.2f}x, "
                  f"{sum(v >= 0.9 for v in sel)}/{len(sel)} at >= 0.9x", file=out)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--peak", default="", help="FMA peak GFLOP/s per thread count, e.g. 96,187")
    p.add_argument("--only", default="", help="comma-separated shape names")
    a = p.parse_args(argv)
    threads = [int(t) for t in a.threads.split(",")]
    peaks = dict(zip(threads, (float(v) for v in a.peak.split(",")))) if a.peak else {}
    names = set(a.only.split(",")) if a.only else None
    run(threads, a.rounds, peaks, a.batch, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
