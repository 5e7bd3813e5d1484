"""Inference of one LeNet-5 in fastcnn, ONNX Runtime (the graph fastcnn.export_onnx writes) and
PyTorch (fastcnn.to_torch), side by side: batch 1 and 64, 1 and 2 threads, the three frameworks
timed in alternating rounds, medians reported. Every output is checked against fastcnn's first.

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        python bench/interop_speed.py [--rounds 15] [--round-time 0.2]
"""

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import fastcnn
except ImportError:  # not installed: the in-place build of this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fastcnn


def _per_call(fn, seconds):
    """Seconds per call of `fn`, repeated for about `seconds`."""
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--round-time", type=float, default=0.2, help="seconds per measurement")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch

    model = fastcnn.LeNet5(seed=0).eval()
    tmodel = fastcnn.to_torch(model).eval()
    path = Path(tempfile.mkdtemp()) / "lenet5.onnx"
    fastcnn.export_onnx(model, path)
    cpu = platform.processor() or platform.machine()
    print(f"fastcnn {fastcnn.__version__} ({fastcnn.kernel_isa()}), onnxruntime "
          f"{ort.__version__}, torch {torch.__version__}, {cpu}")
    print(f"{'batch':>5} {'threads':>7} {'fastcnn ms':>11} {'onnxruntime ms':>15} "
          f"{'torch ms':>9} {'ort/fastcnn':>12} {'torch/fastcnn':>14}")
    for threads in (1, 2):
        fastcnn.set_num_threads(threads)
        torch.set_num_threads(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for batch in (1, 64):
            x = np.random.default_rng(batch).standard_normal((batch, 1, 32, 32))
            x = x.astype(np.float32)
            tx = torch.from_numpy(x)
            expected = model.forward(x)

            def run_torch():
                with torch.no_grad():
                    return tmodel(tx)

            runs = {"fastcnn": lambda: model.forward(x),
                    "onnxruntime": lambda: session.run(None, {"input": x})[0],
                    "torch": lambda: run_torch().numpy()}
            for name, fn in runs.items():
                np.testing.assert_allclose(fn(), expected, rtol=1e-4,
                                           atol=1e-4 * np.abs(expected).max(), err_msg=name)
            times = {name: [] for name in runs}
            for _ in range(args.rounds):
                for name, fn in runs.items():  # alternating: the same load for each
                    times[name].append(_per_call(fn, args.round_time))
            med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            print(f"{batch:>5} {threads:>7} {med['fastcnn']:>11.3f} {med['onnxruntime']:>15.3f} "
                  f"{med['torch']:>9.3f} {med['onnxruntime'] / med['fastcnn']:>12.2f} "
                  f"{med['torch'] / med['fastcnn']:>14.2f}")
    fastcnn.set_num_threads(None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
