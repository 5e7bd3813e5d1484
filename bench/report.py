"""Benchmark report: fastcnn against the NumPy baseline and PyTorch, each in its own process.

Run ``fastcnn bench`` (or ``python -m fastcnn.bench``, or ``python bench/report.py`` in a checkout);
``--help`` lists the options. The report measures

* LeNet-5 training steps (forward, loss, backward, SGD step) in images/s at batch 64 and 256,
* inference (forward only) in images/s at batch 256,
* the C1 and C3 convolution kernels (forward, input gradient, weight gradient) and the S2
  max-pool forward at batch 64, in ms,

for each thread count (``--threads 1,2``), and writes a Markdown table and a PNG bar chart.
``--epoch`` adds a full epoch (60,000 images at batch 64 with shuffling, then a 10,000-image test
evaluation) and ``--memory`` a tracemalloc / peak-RSS check of 100 training steps at batch 256.

How it measures (DESIGN.md section 8):

* Every implementation runs in a fresh worker process, and the workers alternate in rounds
  (fastcnn, numpy, torch, fastcnn, numpy, torch, ...) so that drift of the machine hits all alike.
  The report gives the median over rounds, and ratios computed within each round first (then
  their median), so a slow spell of the host does not turn into a fake speed-up.
* Each worker gets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` set to
  the thread count and also limits fastcnn (``set_num_threads``), PyTorch
  (``torch.set_num_threads``) and every BLAS / OpenMP pool it loaded (threadpoolctl).
  ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` are set for every worker so that glibc
  does not hand freed activations back to the kernel after each step; ``OPENBLAS_CORETYPE`` and
  ``OPENBLAS_L2_SIZE`` are removed.
* ``--wait-idle`` makes the report wait for a quiet machine before each worker, and the header
  states how much CPU other processes (and the hypervisor) took while the workers ran.
* A worker warms each measurement up, calibrates how many calls make one repetition, and reports
  the median of several timed repetitions.

This module imports nothing from fastcnn at the top: the PyTorch worker loads this file on its own
(see ``_worker_command``) so that its process holds only PyTorch and NumPy.
"""

import argparse
import datetime
import functools
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]

IMPLS = ("fastcnn", "numpy", "torch")
IMPL_LABELS = {"fastcnn": "fastcnn", "numpy": "NumPy im2col", "torch": "PyTorch"}
RESULT_MARK = "FASTCNN-BENCH-RESULT "
FASHION_DIR = "/usr/share/datasets/fashion-mnist"

#: Environment every worker gets on top of the thread counts (DESIGN.md section 8).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
UNSET_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# LeNet-5 layer shapes (DESIGN.md section 5): input (C, H, W), F, kernel size.
CONV_LAYERS = {"C1": ((1, 32, 32), 6, 5), "C3": ((6, 14, 14), 16, 5), "C5": ((16, 5, 5), 120, 5)}
POOL_LAYERS = {"S2": (6, 28, 28), "S4": (16, 10, 10)}
CONV_OPS = {"forward": "conv forward", "input_grad": "conv input grad",
            "weight_grad": "conv weight grad"}

FULL = {
    "train_batches": (64, 256), "infer_batch": 256, "kernel_batch": 64,
    "reps": 7, "rep_time": 0.05, "warmup_time": 0.2,
    "epoch_train": 60000, "epoch_test": 10000, "epoch_batch": 64, "eval_batch": 1000,
    "mem_batch": 256, "mem_steps": 100, "mem_warmup": 5,
}
QUICK = {
    "train_batches": (4,), "infer_batch": 4, "kernel_batch": 4,
    "reps": 3, "rep_time": 0.002, "warmup_time": 0.005,
    "epoch_train": 256, "epoch_test": 128, "epoch_batch": 4, "eval_batch": 64,
    "mem_batch": 4, "mem_steps": 10, "mem_warmup": 2,
}
LR, MOMENTUM = 0.01, 0.9


def _tasks(cfg):
    """The timed measurements: (task id, kind, label, batch, unit)."""
    tasks = [(f"train-{n}", "train", f"train step, batch {n}", n, "img/s")
             for n in cfg["train_batches"]]
    n = cfg["infer_batch"]
    tasks.append((f"infer-{n}", "infer", f"inference, batch {n}", n, "img/s"))
    n = cfg["kernel_batch"]
    for layer in ("C1", "C3"):
        for op, label in CONV_OPS.items():
            tasks.append((f"{layer}-{op}-{n}", "kernel", f"{layer} {label}, batch {n}", n, "ms"))
    tasks.append((f"S2-pool-{n}", "kernel", f"S2 max-pool forward, batch {n}", n, "ms"))
    return tasks


# =============================================================================================
# Worker side: runs one implementation and prints one JSON line
# =============================================================================================


def _time_call(fn, reps, rep_time, warmup_time):
    """Warm up, calibrate calls per repetition, return per-call seconds of `reps` repetitions."""
    start = time.perf_counter()
    calls = 0
    while calls < 2 or time.perf_counter() - start < warmup_time:
        fn()
        calls += 1
    single = (time.perf_counter() - start) / calls
    inner = max(1, math.ceil(rep_time / max(single, 1e-9)))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "inner": inner, "reps": reps}


#: Python modules on the path of a training step (edits elsewhere, e.g. the CLI, do not count).
HOT_MODULES = ("__init__.py", "functional.py", "layers.py", "model.py", "optim.py",
               "_threads.py", "_reference.py", "bench.py")


def package_fingerprint(pkg=None):
    """A short hash of the fastcnn files a benchmark runs (compiled modules and the Python
    modules of ``HOT_MODULES``; name, size and mtime): it changes when the kernels are rebuilt."""
    import hashlib

    h = hashlib.sha1()
    pkg = Path(__file__).resolve().parent if pkg is None else Path(pkg)
    for path in sorted(pkg.rglob("*")):
        rel = path.relative_to(pkg)
        if "__pycache__" in rel.parts or not path.is_file():
            continue
        if path.suffix in (".so", ".pyd") or str(rel) in HOT_MODULES:
            st = path.stat()
            h.update(f"{rel.as_posix()}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:12]


def _snapshot_package(dest):
    """Copy the fastcnn package (compiled modules included) into `dest`; returns `dest`.

    Workers import the copy, so every round runs the same build even if the checkout is rebuilt
    in place meanwhile. Modification times are kept, so the copy has the same fingerprint.
    """
    import shutil

    pkg = Path(__file__).resolve().parent
    shutil.copytree(pkg, Path(dest) / "fastcnn", copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.html", "*.o"))
    return str(dest)


def _git_state():
    """'abc1234' or 'abc1234 + uncommitted changes in fastcnn/' for a checkout, else None."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "fastcnn"], capture_output=True, text=True, timeout=10,
                               check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head.strip() + (" + uncommitted changes in fastcnn/" if dirty.strip() else "")


def _kernel_data(layer, op, n):
    """Seeded float32 inputs of one kernel measurement (the same in every worker)."""
    import numpy as np

    rng = np.random.default_rng(1234)
    if layer in POOL_LAYERS:
        return {"x": rng.standard_normal((n,) + POOL_LAYERS[layer], dtype=np.float32)}
    (c, h, w), f, k = CONV_LAYERS[layer]
    oh, ow = h - k + 1, w - k + 1
    return {
        "x": rng.standard_normal((n, c, h, w), dtype=np.float32),
        "w": rng.standard_normal((f, c, k, k), dtype=np.float32) / np.float32(np.sqrt(c * k * k)),
        "b": rng.standard_normal(f, dtype=np.float32),
        "g": rng.standard_normal((n, f, oh, ow), dtype=np.float32),
        "size": (h, w), "k": k,
    }


def _train_data(n, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 32, 32), dtype=np.float32)
    return x, rng.integers(0, 10, n).astype(np.int64)


def lenet5_forward_numpy(params, x, conv=None, pool=None):
    """LeNet-5 logits from NumPy reference kernels (the inference baseline).

    ``params`` as in ``fastcnn._reference.lenet5_train_step_numpy``; ``conv`` and ``pool`` default
    to the im2col convolution and the vectorised max-pool of ``fastcnn._reference``.
    """
    from fastcnn import _reference as ref

    conv = ref.conv2d_im2col if conv is None else conv
    pool = ref.max_pool2d_numpy if pool is None else pool
    p = params
    a = ref.relu_ref(conv(x, p["0.weight"], p["0.bias"]))
    a = pool(a, 2)[0]
    a = ref.relu_ref(conv(a, p["3.weight"], p["3.bias"]))
    a = pool(a, 2)[0]
    a = ref.relu_ref(conv(a, p["6.weight"], p["6.bias"])).reshape(x.shape[0], -1)
    a = ref.relu_ref(ref.linear_ref(a, p["9.weight"], p["9.bias"]))
    return ref.linear_ref(a, p["11.weight"], p["11.bias"])


class _FastcnnImpl:
    name = "fastcnn"

    def __init__(self, threads):
        import fastcnn

        self.fc = fastcnn
        fastcnn.set_num_threads(threads)

    def info(self):
        fc = self.fc
        return {"fastcnn": fc.__version__, "kernel_isa": fc.kernel_isa(),
                "openmp": bool(fc.openmp_enabled()), "fastcnn_threads": fc.get_num_threads(),
                "fingerprint": package_fingerprint()}

    def trainer(self, n, lr=LR):
        fc = self.fc
        model = fc.LeNet5(seed=0)
        loss_fn = fc.CrossEntropyLoss()
        opt = fc.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)

        def step(x, y):
            loss = loss_fn.forward(model.forward(x, copy=False), y)
            model.backward(loss_fn.backward(), copy=False)
            opt.step()
            return loss

        def predict(x):
            return model.forward(x, copy=False).argmax(axis=1)

        return step, predict

    def inference(self, n):
        model = self.fc.LeNet5(seed=0)
        x, _ = _train_data(n)
        return lambda: model.forward(x, copy=False)

    def kernel(self, layer, op, n):
        F = self.fc.functional
        d = _kernel_data(layer, op, n)
        if layer in POOL_LAYERS:
            return (lambda: F.max_pool2d(d["x"], 2)), (lambda out: out[0])
        if op == "forward":
            return (lambda: F.conv2d(d["x"], d["w"], d["b"])), (lambda out: out)
        if op == "input_grad":
            return (lambda: F.conv2d_backward_input(d["g"], d["w"], d["size"], 1, 0)), \
                (lambda out: out)
        return (lambda: F.conv2d_backward_weight(d["x"], d["g"], d["k"], 1, 0)), \
            (lambda out: out[0])


class _NumpyImpl:
    name = "numpy"

    def __init__(self, threads):
        import fastcnn
        from fastcnn import _reference

        self.ref = _reference
        fastcnn.set_num_threads(threads)  # also limits BLAS through threadpoolctl

    def info(self):
        return {}

    def trainer(self, n, lr=LR):
        ref = self.ref
        params = ref.lenet5_init_params(seed=0)

        def step(x, y):
            return ref.lenet5_train_step_numpy(params, x, y, lr)

        def predict(x):
            return lenet5_forward_numpy(params, x).argmax(axis=1)

        return step, predict

    def inference(self, n):
        params = self.ref.lenet5_init_params(seed=0)
        x, _ = _train_data(n)
        return lambda: lenet5_forward_numpy(params, x)

    def kernel(self, layer, op, n):
        ref = self.ref
        d = _kernel_data(layer, op, n)
        if layer in POOL_LAYERS:
            return (lambda: ref.max_pool2d_numpy(d["x"], 2)), (lambda out: out[0])
        if op == "forward":
            return (lambda: ref.conv2d_im2col(d["x"], d["w"], d["b"])), (lambda out: out)
        if op == "input_grad":
            return (lambda: ref.conv2d_backward_input_im2col(d["g"], d["w"], d["size"])), \
                (lambda out: out)
        return (lambda: ref.conv2d_backward_weight_im2col(d["x"], d["g"], d["k"])), \
            (lambda out: out[0])


def torch_lenet5():
    """PyTorch's LeNet-5 with the layer numbering of ``fastcnn.LeNet5`` (and its state_dict)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(), nn.Linear(120, 84),
        nn.ReLU(), nn.Linear(84, 10))


class _TorchImpl:
    name = "torch"

    def __init__(self, threads):
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        torch.manual_seed(0)

    def info(self):
        return {"torch": self.torch.__version__, "torch_threads": self.torch.get_num_threads()}

    def trainer(self, n, lr=LR):
        torch = self.torch
        model = torch_lenet5()
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step(x, y):
            opt.zero_grad()
            loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
            loss.backward()
            opt.step()
            return loss.item()

        def predict(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x)).argmax(dim=1).numpy()

        return step, predict

    def inference(self, n):
        torch = self.torch
        model = torch_lenet5().eval()
        x = torch.from_numpy(_train_data(n)[0])

        def infer():
            with torch.inference_mode():
                return model(x)

        return infer

    def kernel(self, layer, op, n):
        torch = self.torch
        d = {k: torch.from_numpy(v) if hasattr(v, "dtype") else v
             for k, v in _kernel_data(layer, op, n).items()}
        conv_bw = torch.ops.aten.convolution_backward
        F = torch.nn.functional
        if layer in POOL_LAYERS:
            return (lambda: F.max_pool2d(d["x"], 2, return_indices=True)), \
                (lambda out: out[0].numpy())
        if op == "forward":
            return (lambda: F.conv2d(d["x"], d["w"], d["b"])), (lambda out: out.numpy())
        if op == "input_grad":
            return (lambda: conv_bw(d["g"], d["x"], d["w"], None, [1, 1], [0, 0], [1, 1], False,
                                    [0, 0], 1, [True, False, False])), \
                (lambda out: out[0].numpy())
        f = d["w"].shape[0]
        return (lambda: conv_bw(d["g"], d["x"], d["w"], [f], [1, 1], [0, 0], [1, 1], False,
                                [0, 0], 1, [False, True, True])), \
            (lambda out: out[1].numpy())


_IMPL_CLASSES = {"fastcnn": _FastcnnImpl, "numpy": _NumpyImpl, "torch": _TorchImpl}


def _limit_all_pools(threads):
    """Limit every BLAS / OpenMP pool loaded so far; returns the threadpoolctl info (or None)."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return None
    _limit_all_pools.keep = threadpool_limits(limits=threads)
    return [{k: v for k, v in pool.items() if k in
             ("user_api", "internal_api", "version", "num_threads", "architecture", "prefix")}
            for pool in threadpool_info()]


def _checksum(arr):
    import numpy as np

    a = np.asarray(arr, dtype=np.float64)
    return [float(a.sum()), float(np.abs(a).sum())]


def _rss_bytes():
    """Current resident set size (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss_bytes():
    """(peak RSS of this process image, ru_maxrss) in bytes (None where unknown).

    On Linux ``ru_maxrss`` starts from the parent's RSS at fork (so a worker of a parent holding
    a data set reports the parent's size); ``VmHWM`` of /proc/self/status belongs to this
    process image only and is preferred.
    """
    maxrss = None
    try:
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        maxrss = maxrss if sys.platform == "darwin" else maxrss * 1024  # Linux reports KiB
    except ImportError:  # not on Unix
        pass
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, maxrss
    except (OSError, ValueError, IndexError):
        pass
    return maxrss, maxrss


def _work_timing(impl, spec):
    import numpy as np

    results = {}
    for task_id, kind, _, n, _ in spec["tasks"]:
        if kind == "train":
            step = impl.trainer(n)[0]
            x, y = _train_data(n)
            timing = _time_call(functools.partial(step, x, y), spec["reps"], spec["rep_time"],
                                spec["warmup_time"])
            loss = float(step(x, y))
            timing["value"] = n / timing["median"]
            timing["finite"] = bool(np.isfinite(loss))
        elif kind == "infer":
            fn = impl.inference(n)
            timing = _time_call(fn, spec["reps"], spec["rep_time"], spec["warmup_time"])
            timing["value"] = n / timing["median"]
        else:
            layer, op = task_id.split("-")[:2]
            fn, extract = impl.kernel(layer, op, n)
            checksum = _checksum(extract(fn()))
            timing = _time_call(fn, spec["reps"], spec["rep_time"], spec["warmup_time"])
            timing["value"] = timing["median"] * 1e3
            timing["checksum"] = checksum
        results[task_id] = timing
    return results


def _work_epoch(impl, spec):
    """One shuffled training epoch, then the test-set evaluation; times in seconds."""
    import numpy as np

    data = np.load(spec["data"])
    x_train, y_train = data["x_train"], data["y_train"]
    x_test, y_test = data["x_test"], data["y_test"]
    batch = spec["batch"]
    step, predict = impl.trainer(batch)
    # Warm-up on a few batches of a different model (so the timed model starts fresh): loads
    # code paths, thread pools and allocator arenas, as a training script's first step would.
    warm_step = impl.trainer(batch)[0]
    for i in range(3):
        warm_step(x_train[i * batch:(i + 1) * batch], y_train[i * batch:(i + 1) * batch])
    n = x_train.shape[0]
    xb = np.empty((batch,) + x_train.shape[1:], dtype=x_train.dtype)
    yb = np.empty(batch, dtype=y_train.dtype)
    t0 = time.perf_counter()
    order = np.random.default_rng(0).permutation(n)
    losses = []
    for start in range(0, n, batch):
        idx = order[start:start + batch]
        b = idx.shape[0]
        np.take(x_train, idx, axis=0, out=xb[:b])
        np.take(y_train, idx, axis=0, out=yb[:b])
        losses.append(float(step(xb[:b], yb[:b])))
    t1 = time.perf_counter()
    correct = 0
    eval_batch = spec["eval_batch"]
    for start in range(0, x_test.shape[0], eval_batch):
        pred = predict(x_test[start:start + eval_batch])
        correct += int(np.sum(np.asarray(pred) == y_test[start:start + eval_batch]))
    t2 = time.perf_counter()
    return {"train_s": t1 - t0, "eval_s": t2 - t1, "total_s": t2 - t0,
            "accuracy": correct / x_test.shape[0],
            "last_loss": float(np.mean(losses[-50:])), "steps": len(losses)}


def _work_memory(impl, spec):
    """Peak RSS of training at one batch size, and tracemalloc growth over `steps` steps."""
    import gc
    import tracemalloc

    n, steps, warmup = spec["batch"], spec["steps"], spec["warmup"]
    rss_start = _rss_bytes()
    step = impl.trainer(n)[0]
    x, y = _train_data(n)
    for _ in range(warmup + steps):
        step(x, y)
    peak_rss, maxrss = _peak_rss_bytes()
    rss_end = _rss_bytes()
    tracemalloc.start()
    for _ in range(warmup):
        step(x, y)
    gc.collect()
    before, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    for _ in range(steps):
        step(x, y)
    gc.collect()
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rss_start": rss_start, "rss_end": rss_end, "peak_rss": peak_rss, "maxrss": maxrss,
            "traced_growth": after - before, "traced_peak_per_step": peak - before,
            "steps": steps, "batch": n}


def worker_main(argv):
    """Entry point of a worker process: ``--worker JSON``; prints one result line."""
    spec = json.loads(argv[argv.index("--worker") + 1])
    threads = spec["threads"]
    impl = _IMPL_CLASSES[spec["impl"]](threads)
    pools = _limit_all_pools(threads)
    import numpy as np

    info = {"python": platform.python_version(), "numpy": np.__version__, "pools": pools,
            "env": {k: os.environ.get(k) for k in THREAD_ENV + UNSET_ENV + tuple(MALLOC_ENV)}}
    info.update(impl.info())
    if spec["mode"] == "time":
        results = _work_timing(impl, spec)
    elif spec["mode"] == "epoch":
        results = _work_epoch(impl, spec)
    else:
        results = _work_memory(impl, spec)
    pools_after = _limit_all_pools(threads)  # pools loaded lazily during the work
    if pools_after is not None:
        info["pools"] = pools_after
    out = {"impl": spec["impl"], "threads": threads, "info": info, "results": results}
    sys.stdout.write(RESULT_MARK + json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


# =============================================================================================
# Parent side: schedule workers, aggregate, write the report
# =============================================================================================


def _worker_command(spec, root=None):
    """Load bench.py (of the snapshot under `root`, else this file) as a module of its own (no
    ``import fastcnn``) and run ``worker_main``."""
    path = Path(__file__).resolve() if root is None else Path(root) / "fastcnn" / "bench.py"
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('_fastcnn_bench_worker', "
            f"{str(path)!r})\n"
            "mod = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(mod)\n"
            "sys.exit(mod.worker_main(sys.argv[1:]))\n")
    return [sys.executable, "-c", code, "--worker", json.dumps(spec)]


def _worker_env(threads, root=None):
    """The environment of a worker; `root` is a package snapshot that must win the import."""
    env = dict(os.environ)
    for key in UNSET_ENV:
        env.pop(key, None)
    for key in THREAD_ENV:
        env[key] = str(threads)
    env.update(MALLOC_ENV)
    # An in-place build (a checkout) is not on the default path of a fresh interpreter; an
    # installed package is, and its site-packages must not move ahead of the standard library.
    import site

    snapshot, root = root, str(Path(__file__).resolve().parents[1])
    installed = {str(Path(p).resolve()) for p in site.getsitepackages()}
    installed.add(str(Path(site.getusersitepackages()).resolve()))
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if snapshot is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(snapshot)] + path)
    elif root not in installed and root not in path:
        env["PYTHONPATH"] = os.pathsep.join([root] + path)
    return env


def _cpu_stat():
    """(busy, steal) CPU seconds of the whole machine so far (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:9]]
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _children_cpu():
    try:
        import resource
    except ImportError:
        return None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wait_idle(max_wait, threshold=0.15, sample=0.5):
    """Wait (at most `max_wait` s) until other processes use < `threshold` of all CPUs."""
    deadline = time.perf_counter() + max_wait
    while True:
        stat0 = _cpu_stat()
        time.sleep(sample)
        stat1 = _cpu_stat()
        if stat0 is None or stat1 is None:
            return None
        busy = (stat1[0] - stat0[0]) / (sample * (os.cpu_count() or 1))
        if busy < threshold or time.perf_counter() >= deadline:
            return busy


def _run_worker(spec, timeout, root=None):
    """Run one worker; returns its result dict, or {"error": ...}.

    Also measures how busy the machine was meanwhile: ``load`` holds the share of all CPUs that
    other processes used (busy time minus the worker's own CPU time) and the hypervisor's steal.
    """
    stat0, own0, t0 = _cpu_stat(), _children_cpu(), time.perf_counter()
    try:
        proc = subprocess.run(_worker_command(spec, root), env=_worker_env(spec["threads"], root),
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    stat1, own1, elapsed = _cpu_stat(), _children_cpu(), time.perf_counter() - t0
    load = None
    if None not in (stat0, stat1, own0, own1) and elapsed > 0:
        capacity = elapsed * (os.cpu_count() or 1)
        load = {"other": max(0.0, (stat1[0] - stat0[0]) - (own1 - own0)) / capacity,
                "steal": (stat1[1] - stat0[1]) / capacity}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
            result["load"] = load
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"exit code {proc.returncode}: " + " | ".join(tail)}


def _torch_available():
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _machine():
    info = {"cpu": platform.processor() or platform.machine(), "logical": os.cpu_count(),
            "flags": set(), "physical": None}
    try:
        info["usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["usable"] = os.cpu_count()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    cores = set()
    phys = core = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name":
            info["cpu"] = value
        elif key == "flags":
            info["flags"] = set(value.split())
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
        elif not key and core is not None:
            cores.add((phys, core))
            phys = core = None
    if core is not None:
        cores.add((phys, core))
    info["physical"] = len(cores) or None
    return info


def _load_epoch_data(cfg, out_path, quick):
    """Save the epoch's train/test arrays to `out_path` (.npz); returns a description."""
    import numpy as np

    n_train, n_test = cfg["epoch_train"], cfg["epoch_test"]
    source = None
    if quick:
        reason = "--quick does not read the real data set"
    elif Path(FASHION_DIR).is_dir():
        try:
            from fastcnn.datasets import load_idx_dir

            data = load_idx_dir(FASHION_DIR, normalize=True)
            x_train, y_train = data.train.images[:n_train], data.train.labels[:n_train]
            x_test, y_test = data.test.images[:n_test], data.test.labels[:n_test]
            source = (f"Fashion-MNIST from {FASHION_DIR} ({x_train.shape[0]:,} training, "
                      f"{x_test.shape[0]:,} test images, standardised, padded to 32x32)")
        except (OSError, ValueError) as exc:
            source = None
            reason = f"reading {FASHION_DIR} failed: {exc}"
    else:
        reason = f"{FASHION_DIR} not found (apt-get install dataset-fashion-mnist)"
    if source is None:
        rng = np.random.default_rng(0)
        x_train = rng.standard_normal((n_train, 1, 32, 32), dtype=np.float32)
        y_train = rng.integers(0, 10, n_train)
        x_test = rng.standard_normal((n_test, 1, 32, 32), dtype=np.float32)
        y_test = rng.integers(0, 10, n_test)
        source = (f"SYNTHETIC random images ({n_train:,} training, {n_test:,} test, 1x32x32, "
                  f"random labels): {reason}; the accuracy is meaningless")
    np.savez(out_path, x_train=np.ascontiguousarray(x_train, dtype=np.float32),
             y_train=np.asarray(y_train, dtype=np.int64),
             x_test=np.ascontiguousarray(x_test, dtype=np.float32),
             y_test=np.asarray(y_test, dtype=np.int64))
    return source


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def _run_measured(spec, args, retried, label):
    """_run_worker after waiting for a quiet machine (--wait-idle), measured again (up to
    --retries times) while other processes took more than --max-load of the CPUs."""
    for attempt in range(args.retries + 1):
        if args.wait_idle > 0:
            _wait_idle(args.wait_idle)
        out = _run_worker(spec, args.timeout, args.worker_root)
        other = (out.get("load") or {}).get("other", 0.0)
        if args.max_load is None or other <= args.max_load or "error" in out \
                or attempt == args.retries:
            return out
        retried.append(f"{' '.join(label.split())} (other load {100 * other:.0f}%)")
        _log(f"  {label}: other load {100 * other:.0f}%, measuring again")
    return out


def _collect_timing(args, cfg, impls, tasks):
    """rounds x threads x impls workers; returns {(impl, threads): [per-round results]}."""
    runs = {(impl, t): [] for impl in impls for t in args.threads}
    infos, errors, loads, all_infos, retried = {}, [], [], [], []
    spec_base = {"mode": "time", "tasks": tasks, "reps": cfg["reps"], "rep_time": cfg["rep_time"],
                 "warmup_time": cfg["warmup_time"]}
    for r in range(args.rounds):
        for t in args.threads:
            for impl in impls:
                t0 = time.perf_counter()
                out = _run_measured(dict(spec_base, impl=impl, threads=t), args, retried,
                                    f"round {r + 1}/{args.rounds} {impl:8s} threads={t}")
                if "error" in out:
                    errors.append(f"round {r + 1}, {impl}, {t} thread(s): {out['error']}")
                    runs[(impl, t)].append(None)
                    _log(f"  round {r + 1}/{args.rounds} {impl:8s} threads={t}: FAILED")
                    continue
                infos.setdefault((impl, t), out["info"])
                all_infos.append(out["info"])
                runs[(impl, t)].append(out["results"])
                load = out.get("load")
                if load:
                    loads.append(load)
                busy = f", other load {100 * load['other']:.0f}%" if load else ""
                _log(f"  round {r + 1}/{args.rounds} {impl:8s} threads={t}: "
                     f"{time.perf_counter() - t0:.1f} s{busy}")
    return runs, infos, errors, loads, all_infos, retried


def _values(runs, key, task):
    """Per-round values of one task (None where the round failed)."""
    return [None if res is None or task not in res else res[task]["value"]
            for res in runs.get(key, [])]


def _ratio(num, den, invert=False):
    """Median of same-round ratios num/den (den/num with invert) and its range."""
    pairs = [(a, b) for a, b in zip(num, den) if a and b and a > 0 and b > 0]
    if not pairs:
        return None
    ratios = [(b / a) if invert else (a / b) for a, b in pairs]
    return statistics.median(ratios), min(ratios), max(ratios)


def _fmt_value(values, unit):
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    text = f"{med:,.0f}" if unit == "img/s" else f"{med:.3f}" if med < 10 else f"{med:.1f}"
    if len(vals) > 1 and med > 0:
        text += f" ±{50 * (max(vals) - min(vals)) / med:.0f}%"
    return text


def _fmt_ratio(r):
    if r is None:
        return "n/a"
    med, lo, hi = r
    return f"**{med:.2f}x** ({lo:.2f}-{hi:.2f})" if hi > lo else f"**{med:.2f}x**"


def _mib(b):
    if b is None:
        return "n/a"
    return f"{b / 2**10:,.1f} KiB" if abs(b) < 2**20 else f"{b / 2**20:,.1f} MiB"


def _threads(n):
    return f"{n} thread{'' if n == 1 else 's'}"


def _header(args, command, machine, infos, cfg):
    flags = machine["flags"]
    yes = {True: "yes", False: "no"}
    lines = ["# fastcnn benchmark report", ""]
    lines.append(f"- command: `{command}`")
    lines.append(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    cores = f"{machine['logical']} logical CPUs, {machine['usable']} usable"
    if machine.get("physical"):
        cores += f", {machine['physical']} physical cores"
    lines.append(f"- machine: {machine['cpu']} ({platform.machine()}), {cores}; "
                 f"avx2 {yes['avx2' in flags]}, fma {yes['fma' in flags]}, "
                 f"avx512f {yes['avx512f' in flags]}"
                 + ("; virtualised (hypervisor flag)" if "hypervisor" in flags else ""))
    any_info = next(iter(infos.values()), {})
    libs = [f"Python {any_info.get('python', platform.python_version())}",
            f"NumPy {any_info.get('numpy', '?')}"]
    fc = infos.get("fastcnn")
    if fc:
        libs.append(f"fastcnn {fc['fastcnn']} (kernels {fc['kernel_isa']}, "
                    f"OpenMP {yes[fc['openmp']]})")
    if infos.get("torch"):
        libs.append(f"PyTorch {infos['torch']['torch']}")
    blas = [p for p in (any_info.get("pools") or []) if p.get("user_api") == "blas"]
    for p in blas[:1]:
        libs.append(f"NumPy BLAS {p.get('internal_api')} {p.get('version')} "
                    f"({p.get('architecture')} kernels)")
    try:
        import threadpoolctl

        libs.append(f"threadpoolctl {threadpoolctl.__version__}")
    except ImportError:
        libs.append("threadpoolctl missing (BLAS limited by environment variables only)")
    lines.append("- libraries: " + ", ".join(libs))
    lines.append(f"- method: {args.rounds} round(s); in each round every implementation runs in "
                 f"its own fresh process, in the order {', '.join(args.impls)}, for each thread "
                 f"count ({', '.join(map(str, args.threads))}). A worker warms up (>= "
                 f"{cfg['warmup_time']} s), then times {cfg['reps']} repetitions of >= "
                 f"{cfg['rep_time'] * 1e3:.0f} ms and reports their median. Cells give the "
                 "median over rounds and ±half its range; ratios are computed within each round, "
                 "then their median (min-max over rounds in brackets).")
    lines.append("- environment of every worker: "
                 + " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items())
                 + ", OMP/OPENBLAS/MKL_NUM_THREADS = thread count, "
                 + " and ".join(UNSET_ENV) + " unset; torch.set_num_threads, "
                 "fastcnn.set_num_threads and threadpoolctl limits applied in-process.")
    lines.append(f"- train step = forward, softmax cross-entropy, backward, SGD step (lr {LR}; "
                 f"fastcnn and PyTorch with momentum {MOMENTUM}, the NumPy baseline "
                 "`fastcnn._reference.lenet5_train_step_numpy` plain SGD); inference = forward "
                 "only (PyTorch under `torch.inference_mode()`). Kernels: fastcnn.functional vs "
                 "the im2col references of `fastcnn._reference` vs torch.nn.functional / "
                 "aten.convolution_backward; float32 throughout.")
    return lines


def _load_line(loads, load_start):
    """Header line: how busy the machine was during the timing workers."""
    text = "- background load: "
    if load_start is not None:
        text += f"load average {load_start[0]:.2f} at the start; "
    if not loads:
        return text + "CPU use of other processes not measured."
    other = sorted(x["other"] for x in loads)
    steal = sorted(x["steal"] for x in loads)
    text += (f"while the timing workers ran, other processes used a median "
             f"{100 * statistics.median(other):.0f}% (max {100 * other[-1]:.0f}%) of all CPUs "
             f"and the hypervisor stole {100 * statistics.median(steal):.0f}% "
             f"(max {100 * steal[-1]:.0f}%)")
    text += "."
    if statistics.median(other) > 0.1 or statistics.median(steal) > 0.1:
        text += " **The machine was busy: treat these numbers as unreliable.**"
    return text


def _timing_tables(args, runs, tasks, impls):
    lines = []
    others = [i for i in impls if i != "fastcnn"]
    for unit, title, note in (
            ("img/s", "Throughput (images/s, higher is better)",
             "ratio = fastcnn img/s / other img/s in the same round (> 1: fastcnn faster)"),
            ("ms", "Kernels (ms per call, lower is better)",
             "speed-up = other ms / fastcnn ms in the same round (> 1: fastcnn faster)")):
        rows = [t for t in tasks if t[4] == unit]
        if not rows:
            continue
        head = ["measurement", "threads"] + [IMPL_LABELS[i] for i in impls]
        if "fastcnn" in impls:
            head += [f"fastcnn vs {IMPL_LABELS[o]}" for o in others]
        lines += ["", f"## {title}", "", f"{note}.", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for task_id, _, label, _, _ in rows:
            for t in args.threads:
                cells = [label, str(t)]
                cells += [_fmt_value(_values(runs, (i, t), task_id), unit) for i in impls]
                if "fastcnn" in impls:
                    mine = _values(runs, ("fastcnn", t), task_id)
                    for o in others:
                        theirs = _values(runs, (o, t), task_id)
                        cells.append(_fmt_ratio(_ratio(mine, theirs, invert=(unit == "ms"))))
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def _scaling_table(args, runs, tasks, impls):
    if len(args.threads) < 2:
        return []
    t1, t2 = args.threads[0], args.threads[-1]
    rows = [t for t in tasks if t[1] in ("train", "infer")]
    lines = ["", f"## Thread scaling ({t2} threads vs {t1}, same round)", "",
             (f"speed-up = img/s with {t2} threads / img/s with {t1} thread(s), per round, "
              "then the median. DESIGN.md section 8: the two vCPUs may share a physical core or "
              "be time-sliced, so anything from 1.0x to 1.9x can be the machine, not the code."),
             "", "| measurement | " + " | ".join(IMPL_LABELS[i] for i in impls) + " |",
             "|---|" + "---|" * len(impls)]
    for task_id, _, label, _, _ in rows:
        cells = [label]
        for impl in impls:
            cells.append(_fmt_ratio(_ratio(_values(runs, (impl, t2), task_id),
                                           _values(runs, (impl, t1), task_id))))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _checksum_warnings(runs, tasks):
    """Kernel outputs must agree across implementations (a cheap check that nothing is broken)."""
    warnings = []
    for task_id, kind, label, _, _ in tasks:
        if kind != "kernel":
            continue
        sums = {}
        for (impl, _), rounds in runs.items():
            for res in rounds:
                if res and task_id in res and "checksum" in res[task_id]:
                    sums.setdefault(impl, res[task_id]["checksum"])
        if not sums:
            continue
        base_impl = "numpy" if "numpy" in sums else next(iter(sums))
        base_sum, base_abs = sums[base_impl]
        for impl, (s, _) in sums.items():
            if abs(s - base_sum) > 1e-4 * max(base_abs, 1e-30):
                warnings.append(f"{label}: {impl} output sum {s:.6g} differs from {base_impl} "
                                f"{base_sum:.6g} (sum of |values| {base_abs:.6g})")
    return warnings


def _epoch_section(epoch_runs, source, threads, cfg):
    lines = ["", f"## Full epoch ({_threads(threads)})", "",
             (f"Data: {source}. One epoch at batch {cfg['epoch_batch']} (shuffled with a seeded "
              "permutation, batches gathered into reused buffers, the same loop for every "
              f"implementation), then prediction on the test set in batches of "
              f"{cfg['eval_batch']}. Loading the data is not timed; each worker first runs 3 "
              "warm-up steps on a separate model."), "",
             ("| implementation | train epoch (s) | test evaluation (s) | total (s) "
              "| img/s (train) | test accuracy | mean loss, last 50 steps | other load |"),
             "|---|---|---|---|---|---|---|---|"]
    for impl, outs in epoch_runs.items():
        ok = [o for o in outs if o is not None]
        if not ok:
            lines.append(f"| {IMPL_LABELS[impl]} | failed | | | | | | |")
            continue
        train = _median([o["train_s"] for o in ok])
        other = _median([(o.get("load") or {}).get("other") for o in ok])
        other = "n/a" if other is None else f"{100 * other:.0f}%"
        n_train = cfg["epoch_train"]
        lines.append(
            f"| {IMPL_LABELS[impl]} | {train:.2f} | {_median([o['eval_s'] for o in ok]):.2f} | "
            f"{_median([o['total_s'] for o in ok]):.2f} | {n_train / train:,.0f} | "
            f"{ok[0]['accuracy']:.4f} | {ok[0]['last_loss']:.4f} | {other} |")
    if any(len(o) > 1 for o in epoch_runs.values()):
        lines.append("")
        lines.append(f"Medians over {max(len(o) for o in epoch_runs.values())} alternating "
                     "rounds.")
    return lines


def _memory_section(mem_runs, threads, cfg):
    lines = ["", f"## Memory (training at batch {cfg['mem_batch']}, {_threads(threads)})", "",
             (f"tracemalloc growth: traced memory after {cfg['mem_steps']} more steps minus "
              f"before (after {cfg['mem_warmup']} warm-up steps; gc collected). Per-step peak: "
              "the most traced memory above that level during a step (what a step allocates and "
              "frees). tracemalloc sees Python and NumPy allocations only, not PyTorch's tensors. "
              "Peak RSS is the high-water mark of the whole worker process, imports included "
              "(VmHWM; getrusage's ru_maxrss in brackets where it differs: on Linux it starts "
              "from the parent's size at fork)."),
             "",
             ("| implementation | tracemalloc growth | no growth? | per-step traced peak "
              "| RSS after imports | peak RSS |"), "|---|---|---|---|---|---|"]
    for impl, out in mem_runs.items():
        if out is None:
            lines.append(f"| {IMPL_LABELS[impl]} | failed | | | | |")
            continue
        growth = out["traced_growth"]
        ok = "yes" if growth <= 16 * 1024 else "**NO**"
        note = " (tensors not traced)" if impl == "torch" else ""
        maxrss = ""
        if out.get("maxrss") and abs(out["maxrss"] - (out["peak_rss"] or 0)) > 2**20:
            maxrss = f" ({_mib(out['maxrss'])})"
        lines.append(f"| {IMPL_LABELS[impl]} | {growth:,} B{note} | {ok} | "
                     f"{_mib(out['traced_peak_per_step'])}{note} | {_mib(out['rss_start'])} | "
                     f"{_mib(out['peak_rss'])}{maxrss} |")
    return lines


def _plot(path, args, runs, tasks, impls, title):
    """Bar chart: per thread count, throughput (left) and kernel times (right, log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart written (pip install matplotlib)"
    import numpy as np

    groups = [[t for t in tasks if t[4] == "img/s"], [t for t in tasks if t[4] == "ms"]]
    nrows = len(args.threads)
    fig, axes = plt.subplots(nrows, 2, figsize=(15, 4.2 * nrows), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2.2]})
    width = 0.8 / len(impls)
    colors = {"fastcnn": "tab:red", "numpy": "tab:gray", "torch": "tab:blue"}
    for row, t in enumerate(args.threads):
        for col, rows in enumerate(groups):
            ax = axes[row][col]
            xs = np.arange(len(rows))
            for k, impl in enumerate(impls):
                meds, lo, hi = [], [], []
                for task_id, *_ in rows:
                    vals = [v for v in _values(runs, (impl, t), task_id) if v is not None]
                    med = statistics.median(vals) if vals else 0.0
                    meds.append(med)
                    lo.append(med - min(vals) if vals else 0.0)
                    hi.append(max(vals) - med if vals else 0.0)
                ax.bar(xs + (k - (len(impls) - 1) / 2) * width, meds, width, yerr=[lo, hi],
                       label=IMPL_LABELS[impl], color=colors.get(impl), capsize=2)
            ax.set_xticks(xs)
            ax.set_xticklabels([r[2].replace(", batch", "\nbatch") for r in rows], fontsize=8)
            unit = rows[0][4] if rows else ""
            if unit == "ms":
                ax.set_yscale("log")
                ax.set_ylabel("ms per call (log, lower is better)")
            else:
                ax.set_ylabel("images/s (higher is better)")
            ax.set_title(f"{t} thread{'s' if t > 1 else ''}")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def _parse_args(argv, prog, default_out):
    p = argparse.ArgumentParser(
        prog=prog, description="Benchmark fastcnn against the NumPy baseline and PyTorch "
        "(each in its own process, alternating rounds) and write a Markdown report and a chart.")
    p.add_argument("--threads", default=None,
                   help="comma-separated thread counts (default 1,2; --quick: 1)")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternating rounds (default 5; --quick: 1)")
    p.add_argument("--impls", default=None,
                   help="comma-separated subset of fastcnn,numpy,torch (default: all available)")
    p.add_argument("--quick", action="store_true",
                   help="tiny configuration (batch 4, few repetitions) to check the tool works")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per worker")
    p.add_argument("--epoch", action="store_true",
                   help="also time one full epoch (60,000 images at batch 64 + test evaluation)")
    p.add_argument("--epoch-threads", type=int, default=None,
                   help="threads for --epoch (default 2; --quick: the first of --threads)")
    p.add_argument("--epoch-rounds", type=int, default=1, help="alternating rounds for --epoch")
    p.add_argument("--memory", action="store_true",
                   help="also check memory: tracemalloc growth over 100 steps, peak RSS")
    p.add_argument("--out", default=default_out,
                   help=f"Markdown report path (default {default_out})")
    p.add_argument("--png", default=None,
                   help="chart path (default: the --out path with .png); 'none' for no chart")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per worker")
    p.add_argument("--max-load", type=float, default=None, metavar="FRACTION",
                   help="measure a timing worker again (up to --retries times) when other "
                   "processes used more than FRACTION of the CPUs while it ran (e.g. 0.2)")
    p.add_argument("--retries", type=int, default=2, help="retries for --max-load (default 2)")
    p.add_argument("--no-snapshot", dest="snapshot", action="store_false",
                   help="run the installed package / checkout itself instead of a copy taken "
                   "at the start (the copy keeps every round on one build if the checkout is "
                   "rebuilt meanwhile)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before each worker, wait up to SECONDS until other processes use less "
                   "than 15%% of the CPUs (for shared machines; default 0: do not wait)")
    args = p.parse_args(argv)
    try:
        args.threads = ([1] if args.quick else [1, 2]) if args.threads is None else \
            [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        p.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    if not args.threads or min(args.threads) < 1:
        p.error("--threads needs thread counts >= 1")
    args.rounds = (1 if args.quick else 5) if args.rounds is None else args.rounds
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.impls is None:
        args.impls = [i for i in IMPLS if i != "torch" or _torch_available()]
    else:
        args.impls = [i.strip() for i in args.impls.split(",") if i.strip()]
        bad = [i for i in args.impls if i not in IMPLS]
        if bad:
            p.error(f"unknown implementation(s) {bad}; choose from {', '.join(IMPLS)}")
    if args.epoch_threads is None:
        args.epoch_threads = args.threads[0] if args.quick else 2
    if args.png is None:
        args.png = str(Path(args.out).with_suffix(".png"))
    return args


def main(argv=None, prog="fastcnn bench", default_out="fastcnn-bench.md"):
    """Run the benchmark report (``fastcnn bench``); returns the exit code.

    Parameters
    ----------
    argv : list of str, optional
        The options (without the program name); defaults to ``sys.argv[1:]``.
    prog : str
        The command name shown in ``--help`` and in the report header.
    default_out : str
        The report path when ``--out`` is not given (the chart goes next to it).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--worker" in argv:
        return worker_main(argv)
    args = _parse_args(argv, prog, default_out)
    args.command = f"{prog} {shlex.join(argv)}".strip()
    with tempfile.TemporaryDirectory(prefix="fastcnn-bench-") as tmp:
        args.worker_root = _snapshot_package(Path(tmp) / "pkg") if args.snapshot else None
        return _report(args, Path(tmp))


def _report(args, tmp):
    """Run every worker, then write the Markdown report and the chart."""
    cfg = dict(QUICK if args.quick else FULL)
    if args.reps is not None:
        cfg["reps"] = max(1, args.reps)
    notes = []
    if "torch" not in args.impls and not _torch_available():
        notes.append("PyTorch is not installed: no PyTorch columns.")
    tasks = _tasks(cfg)
    _log(f"{args.command}: {args.rounds} round(s), threads {args.threads}, "
         f"{', '.join(args.impls)}")
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    fingerprint_start, git_state = package_fingerprint(), _git_state()
    runs, infos, errors, loads, all_infos, retried = _collect_timing(args, cfg, args.impls,
                                                                     tasks)

    # Memory before the epoch: the parent then holds no data set (see _peak_rss_bytes).
    mem_runs = {}
    mem_threads = args.threads[-1]
    if args.memory:
        spec = {"mode": "memory", "batch": cfg["mem_batch"], "steps": cfg["mem_steps"],
                "warmup": cfg["mem_warmup"], "threads": mem_threads}
        for impl in args.impls:
            out = _run_measured(dict(spec, impl=impl), args, retried, f"memory {impl}")
            if "error" in out:
                errors.append(f"memory, {impl}: {out['error']}")
            else:
                all_infos.append(out["info"])
            mem_runs[impl] = out.get("results")
            _log(f"  memory {impl:8s}: done")

    epoch_runs, epoch_source = {}, None
    if args.epoch:
        data_path = str(tmp / "epoch.npz")
        epoch_source = _load_epoch_data(cfg, data_path, args.quick)
        _log(f"epoch data: {epoch_source}")
        spec = {"mode": "epoch", "data": data_path, "batch": cfg["epoch_batch"],
                "eval_batch": cfg["eval_batch"], "threads": args.epoch_threads}
        for r in range(args.epoch_rounds):
            for impl in args.impls:
                t0 = time.perf_counter()
                out = _run_measured(dict(spec, impl=impl), args, retried,
                                    f"epoch round {r + 1} {impl}")
                if "error" in out:
                    errors.append(f"epoch, {impl}: {out['error']}")
                else:
                    all_infos.append(out["info"])
                    out["results"]["load"] = out.get("load")
                epoch_runs.setdefault(impl, []).append(out.get("results"))
                _log(f"  epoch round {r + 1} {impl:8s}: {time.perf_counter() - t0:.1f} s")

    machine = _machine()
    lines = _header(args, args.command, machine, {i: v for (i, _), v in infos.items()}, cfg)
    source = f"git {git_state}" if git_state else "not a git checkout"
    source += f"; package fingerprint {fingerprint_start}"
    if args.worker_root:
        source += " (workers ran a copy taken at the start)"
    lines.insert(3, f"- fastcnn source: {source}")
    lines.append(_load_line(loads, load_start))
    if retried:
        lines.append(f"- {len(retried)} worker(s) were measured again because other processes "
                     f"used more than {100 * args.max_load:.0f}% of the CPUs meanwhile: "
                     + "; ".join(retried) + ".")
    lines += _timing_tables(args, runs, tasks, args.impls)
    lines += _scaling_table(args, runs, tasks, args.impls)
    if args.epoch:
        lines += _epoch_section(epoch_runs, epoch_source, args.epoch_threads, cfg)
    if args.memory:
        lines += _memory_section(mem_runs, mem_threads, cfg)
    for (impl, t), rounds in runs.items():
        for r, res in enumerate(rounds):
            for task_id, timing in (res or {}).items():
                if timing.get("finite") is False:
                    notes.append(f"{impl}, {t} thread(s), round {r + 1}: the loss of {task_id} "
                                 "became non-finite (timings may be off)")
    notes += [f"CHECK FAILED: {w}" for w in _checksum_warnings(runs, tasks)]
    builds = {info["fingerprint"] for info in all_infos if info.get("fingerprint")}
    if not args.worker_root:
        builds |= {fingerprint_start, package_fingerprint()}
    if len(builds) > 1:
        notes.insert(0, f"**fastcnn changed while the report ran** ({len(builds)} different "
                     "package fingerprints: rebuilt or edited): rounds mix builds, rerun it.")
    notes += [f"worker failed: {e}" for e in errors]
    for (impl, t), info in infos.items():
        pools = [f"{p.get('internal_api')} {p.get('num_threads')}"
                 for p in (info.get("pools") or [])]
        if info.get("torch_threads") is not None:
            pools.append(f"torch {info['torch_threads']}")
        if info.get("fastcnn_threads") is not None:
            pools.append(f"fastcnn {info['fastcnn_threads']}")
        notes.append(f"threads in the {IMPL_LABELS[impl]} worker asked for {t}: "
                     + (", ".join(pools) or "no pools seen (threadpoolctl missing?)"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.png.lower() != "none":
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        title = (f"fastcnn bench - {machine['cpu']}, {machine['usable']} CPUs - "
                 f"{datetime.date.today()} - median of {args.rounds} round(s), error bars min-max")
        problem = _plot(args.png, args, runs, tasks, args.impls, title)
        if problem:
            notes.append(problem)
        else:
            rel = os.path.relpath(Path(args.png).resolve(), Path(args.out).resolve().parent)
            lines += ["", f"![benchmark chart]({Path(rel).as_posix()})"]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _log(f"wrote {args.out}" + ("" if args.png.lower() == "none" else f" and {args.png}"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
