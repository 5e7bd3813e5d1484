"""Benchmark report of a checkout: fastcnn against PyTorch and ONNX Runtime, each in its own
process (``python bench/report.py [options]``; ``--help`` lists them). A development tool.

Measured for each network of the registry (``harness.NETWORKS``: LeNet-5 and the VGG-style net of
issue 9; ``--networks`` may name models of the zoo) and each thread count (``--threads 1,2``):

* the training step (forward, softmax cross-entropy, backward, SGD with momentum) in ms per
  batch, fastcnn against PyTorch (same weights, same data);
* inference (forward only) in ms per batch, fastcnn's model frozen as deployed
  (``model.eval().freeze()``: weights fixed, as in an ONNX Runtime session), against PyTorch
  (``torch.inference_mode()``) and ONNX Runtime (CPU execution provider,
  ``intra_op_num_threads`` = the thread count, ``inter_op_num_threads`` 1, sequential
  execution; the model is exported from the equivalent PyTorch module with
  ``torch.onnx.export``, dynamic batch). Without onnx / onnxruntime the column is left out
  with a note;
* the Python overhead of fastcnn per step at batch 1: the step time minus the time spent in the
  compiled kernels (every kernel call timed through a wrapper, ``harness.kernel_call_timer``);

and writes a Markdown report (plus a PNG chart with matplotlib). ``--epoch`` adds a full LeNet-5
epoch (Fashion-MNIST if installed) and ``--memory`` a tracemalloc / peak-RSS check. The method
(fresh worker processes alternating in rounds, same-round ratios, thread limits, DESIGN.md
section 8 malloc settings) lives in ``harness.py``, shared with the pytest-benchmark groups.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import harness  # noqa: E402

IMPLS = ("fastcnn", "torch", "onnxruntime")
IMPL_LABELS = {"fastcnn": "fastcnn", "torch": "PyTorch", "onnxruntime": "ONNX Runtime"}
RESULT_MARK = "FASTCNN-BENCH-RESULT "
FASHION_DIR = "/usr/share/datasets/fashion-mnist"

FULL = {"train_batches": None, "infer_batches": None,  # None: the network's own
        "reps": 7, "rep_time": 0.05, "warmup_time": 0.2, "overhead_steps": 200,
        "epoch_train": 60000, "epoch_test": 10000, "epoch_batch": 64, "eval_batch": 1000,
        "mem_batch": 256, "mem_steps": 100, "mem_warmup": 5}
QUICK = {"train_batches": (1, 4), "infer_batches": (1, 4),
         "reps": 3, "rep_time": 0.002, "warmup_time": 0.005, "overhead_steps": 5,
         "epoch_train": 256, "epoch_test": 128, "epoch_batch": 4, "eval_batch": 64,
         "mem_batch": 4, "mem_steps": 10, "mem_warmup": 2}


def _tasks(cfg, networks):
    """The timed measurements: dicts with id, kind (train / infer / overhead), net, batch."""
    tasks = []
    for name in networks:
        net = harness.get_network(name)
        for kind, batches in (("train", cfg["train_batches"] or net.train_batches),
                              ("infer", cfg["infer_batches"] or net.infer_batches)):
            for n in batches:
                what = "train step" if kind == "train" else "inference"
                tasks.append({"id": f"{kind}-{name}-{n}", "kind": kind, "net": name, "batch": n,
                              "label": f"{net.label} {what}, batch {n}"})
        tasks.append({"id": f"overhead-{name}", "kind": "overhead", "net": name, "batch": 1,
                      "label": f"{net.label}, batch 1"})
    return tasks


# =============================================================================================
# Worker side: one implementation per process, one JSON line out
# =============================================================================================


def _load_weights(path):
    import numpy as np

    with np.load(path) as data:
        return {k: data[k] for k in data.files}


class _FastcnnImpl:
    name = "fastcnn"

    def __init__(self, spec):
        import fastcnn

        self.fc, self.nets = fastcnn, spec["nets"]

    def info(self):
        fc = self.fc
        return {"fastcnn": fc.__version__, "kernel_isa": fc.kernel_isa(),
                "openmp": bool(fc.openmp_enabled()), "fastcnn_threads": fc.get_num_threads(),
                "fingerprint": harness.package_fingerprint(Path(fc.__file__).parent)}

    def _model(self, net):
        model = harness.skips_first_input_grad(harness.get_network(net).build(self.fc))
        model.load_state_dict(_load_weights(self.nets[net]["weights"]))
        return model

    def trainer(self, net):
        fc = self.fc
        model = self._model(net)
        loss_fn = fc.CrossEntropyLoss()
        opt = fc.SGD(model.parameters(), lr=harness.LR, momentum=harness.MOMENTUM)

        def step(x, y):
            loss = loss_fn.forward(model.forward(x, copy=False), y)
            model.backward(loss_fn.backward(), copy=False)
            opt.step()
            return loss

        return step, (lambda x: model.forward(x, copy=False).argmax(axis=1))

    def inference(self, net):
        model = self._model(net).freeze()
        return lambda x: model.forward(x, copy=False)


class _TorchImpl:
    name = "torch"

    def __init__(self, spec):
        import torch

        self.torch, self.nets = torch, spec["nets"]
        torch.manual_seed(0)

    def info(self):
        return {"torch": self.torch.__version__, "torch_threads": self.torch.get_num_threads()}

    def _model(self, net):
        torch = self.torch
        model = harness.torch_module(self.nets[net]["layers"])
        model.load_state_dict({k: torch.from_numpy(v)
                               for k, v in _load_weights(self.nets[net]["weights"]).items()})
        return model

    def trainer(self, net):
        torch = self.torch
        model = self._model(net)
        opt = torch.optim.SGD(model.parameters(), lr=harness.LR, momentum=harness.MOMENTUM)
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

    def inference(self, net):
        torch = self.torch
        model = self._model(net).eval()

        def infer(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        return infer


class _OrtImpl:
    name = "onnxruntime"

    def __init__(self, spec):
        import onnxruntime as ort

        self.ort, self.nets, self.threads = ort, spec["nets"], spec["threads"]

    def info(self):
        return {"onnxruntime": self.ort.__version__}

    def trainer(self, net):
        return None  # inference only

    def inference(self, net):
        ort = self.ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(self.nets[net]["onnx"], opts,
                                    providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]


_IMPL_CLASSES = {"fastcnn": _FastcnnImpl, "torch": _TorchImpl, "onnxruntime": _OrtImpl}


def _checksum(arr):
    import numpy as np

    a = np.asarray(arr, dtype=np.float64)
    return [float(a.sum()), float(np.abs(a).sum())]


def _overhead(impl, net, spec):
    """fastcnn's step (and inference) at batch 1 split into kernel time and the rest.

    ``step``: median time of the plain call. Then the kernels are wrapped with timers and
    `reps` repetitions of ``overhead_steps / reps`` calls each give, per call, the kernel time
    and the rest (wrapped call - kernels - the wrappers' own cost, measured on a no-op); the
    medians over the repetitions are reported.
    """
    fc = impl.fc
    d = spec["nets"][net]
    x, y = harness.batch_data(d["input_shape"], 1, d["num_classes"])
    step = impl.trainer(net)[0]
    infer = impl.inference(net)
    reps = spec["reps"]
    inner = max(1, spec["overhead_steps"] // reps)
    out = {}
    for what, fn in (("train", lambda: step(x, y)), ("infer", lambda: infer(x))):
        plain = harness.time_call(fn, reps, spec["rep_time"], spec["warmup_time"])
        totals, restore, cost = harness.kernel_call_timer(fc)
        kernels, python, calls = [], [], 0
        try:
            fn()
            for _ in range(reps):
                totals[:] = [0.0, 0]
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                wrapped = (time.perf_counter() - t0) / inner
                calls = totals[1] / inner
                kernels.append(totals[0] / inner)
                python.append(wrapped - kernels[-1] - calls * cost)
        finally:
            restore()
        out[what] = {"step": plain["median"], "kernels": statistics.median(kernels),
                     "python": statistics.median(python), "calls": calls,
                     "wrapper_cost": cost}
    return out


def _work_timing(impl, spec):
    import numpy as np

    results = {}
    for task in spec["tasks"]:
        net, n = task["net"], task["batch"]
        if task["kind"] == "overhead":
            if impl.name == "fastcnn":
                results[task["id"]] = _overhead(impl, net, spec)
            continue
        x, y = harness.batch_data(spec["nets"][net]["input_shape"], n,
                                  spec["nets"][net]["num_classes"])
        if task["kind"] == "train":
            trainer = impl.trainer(net)
            if trainer is None:
                continue
            step = trainer[0]
            loss = float(step(x, y))  # first step from the shared weights: same loss everywhere
            timing = harness.time_call(lambda: step(x, y), spec["reps"], spec["rep_time"],
                                       spec["warmup_time"])
            timing["first_loss"] = loss
            timing["finite"] = bool(np.isfinite(float(step(x, y))))
        else:
            fn = impl.inference(net)
            timing = harness.time_call(lambda: fn(x), spec["reps"], spec["rep_time"],
                                       spec["warmup_time"])
            timing["checksum"] = _checksum(fn(x))
        timing["value"] = timing["median"] * 1e3  # ms per batch
        results[task["id"]] = timing
    return results


def _work_epoch(impl, spec):
    """One shuffled LeNet-5 training epoch, then the test-set evaluation; times in seconds."""
    import numpy as np

    data = np.load(spec["data"])
    x_train, y_train = data["x_train"], data["y_train"]
    x_test, y_test = data["x_test"], data["y_test"]
    batch = spec["batch"]
    step, predict = impl.trainer("lenet5")
    # Warm-up on a few batches of another model (the timed one starts fresh): loads code
    # paths, thread pools and allocator arenas, as a training script's first step would.
    warm_step = impl.trainer("lenet5")[0]
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


def _peak_rss_bytes():
    """Peak RSS of this process image (VmHWM of /proc/self/status; ru_maxrss on Linux starts
    from the parent's size at fork), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _work_memory(impl, spec):
    """Peak RSS of LeNet-5 training, and tracemalloc growth over `steps` steps."""
    import gc
    import tracemalloc

    n, steps, warmup = spec["batch"], spec["steps"], spec["warmup"]
    step = impl.trainer("lenet5")[0]
    x, y = harness.batch_data((1, 32, 32), n)
    for _ in range(warmup + steps):
        step(x, y)
    peak_rss = _peak_rss_bytes()
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
    return {"peak_rss": peak_rss, "traced_growth": after - before,
            "traced_peak_per_step": peak - before, "steps": steps, "batch": n}


def _work_export(spec):
    """Export every network of the spec to ONNX from its PyTorch twin (dynamic batch)."""
    import torch

    for net, d in spec["nets"].items():
        model = harness.torch_module(d["layers"]).eval()
        model.load_state_dict({k: torch.from_numpy(v)
                               for k, v in _load_weights(d["weights"]).items()})
        dummy = torch.zeros((2,) + tuple(d["input_shape"]))
        kwargs = {"input_names": ["x"], "output_names": ["logits"],
                  "dynamic_axes": {"x": {0: "batch"}, "logits": {0: "batch"}}}
        try:
            torch.onnx.export(model, (dummy,), d["onnx"], dynamo=False, **kwargs)
        except TypeError:  # a torch without the dynamo switch
            torch.onnx.export(model, (dummy,), d["onnx"], **kwargs)
    return {"exported": list(spec["nets"])}


def worker_main(argv):
    """Entry point of a worker process: ``--worker JSON``; prints one result line."""
    spec = json.loads(argv[argv.index("--worker") + 1])
    threads = spec["threads"]
    if spec["mode"] == "export":
        results, info = _work_export(spec), {}
    else:
        impl = _IMPL_CLASSES[spec["impl"]](spec)
        harness.limit_threads(threads)
        import numpy as np

        info = {"python": platform.python_version(), "numpy": np.__version__,
                "env": {k: os.environ.get(k) for k in harness.THREAD_ENV + harness.UNSET_ENV
                        + tuple(harness.MALLOC_ENV)}}
        info.update(impl.info())
        work = {"time": _work_timing, "epoch": _work_epoch, "memory": _work_memory}
        results = work[spec["mode"]](impl, spec)
        info["pools"] = harness.limit_threads(threads)  # pools loaded lazily meanwhile
        info.update({k: v for k, v in impl.info().items() if k.endswith("_threads")})
    out = {"impl": spec.get("impl"), "threads": threads, "info": info, "results": results}
    sys.stdout.write(RESULT_MARK + json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


# =============================================================================================
# Parent side: prepare the networks, schedule workers, write the report
# =============================================================================================


def _children_cpu():
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_worker(spec, timeout, root):
    """Run one worker (its package from `root`); returns its result dict or {"error": ...},
    with ``load``: the share of all CPUs other processes used meanwhile, and the steal."""
    stat0, own0, t0 = harness.cpu_stat(), _children_cpu(), time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, env=harness.worker_env(spec["threads"], [root]),
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    stat1, own1, elapsed = harness.cpu_stat(), _children_cpu(), time.perf_counter() - t0
    load = None
    if None not in (stat0, stat1) and elapsed > 0:
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


def _snapshot_package(dest):
    """Copy the fastcnn package (compiled modules included) into `dest`: every round runs the
    same build even if the checkout is rebuilt meanwhile (mtimes kept: same fingerprint)."""
    import shutil

    import fastcnn

    shutil.copytree(Path(fastcnn.__file__).parent, Path(dest) / "fastcnn",
                    copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.html", "*.o"))
    return str(dest)


def _prepare_networks(names, tmp, want_onnx, timeout, root):
    """Weights (npz of the fastcnn model), layer specs and ONNX files of every network."""
    import numpy as np

    import fastcnn

    nets, notes = {}, []
    for name in names:
        net = harness.get_network(name)
        model = net.build(fastcnn)
        out = model.forward(np.zeros((1,) + net.input_shape, dtype=np.float32))
        path = tmp / f"{name}.npz"
        np.savez(path, **model.state_dict())
        nets[name] = {"weights": str(path), "layers": harness.layer_specs(model),
                      "input_shape": list(net.input_shape), "num_classes": int(out.shape[1]),
                      "onnx": str(tmp / f"{name}.onnx"),
                      # dropout masks are drawn by each framework's own generator, so the
                      # training losses of such a network cannot agree (inference still must)
                      "stochastic": any(type(m).__name__.startswith("Dropout")
                                        for m in model.layers)}
    if want_onnx:
        out = _run_worker({"mode": "export", "threads": 1, "nets": nets}, timeout, root)
        if "error" in out:
            notes.append(f"ONNX export failed, no ONNX Runtime column: {out['error']}")
            want_onnx = False
    return nets, want_onnx, notes


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def _wait_idle(max_wait, threshold=0.15, sample=0.5):
    """Wait (at most `max_wait` s) until other processes use < `threshold` of all CPUs."""
    deadline = time.perf_counter() + max_wait
    while True:
        stat0 = harness.cpu_stat()
        time.sleep(sample)
        stat1 = harness.cpu_stat()
        if stat0 is None or stat1 is None:
            return
        if (stat1[0] - stat0[0]) / (sample * (os.cpu_count() or 1)) < threshold \
                or time.perf_counter() >= deadline:
            return


def _run_measured(spec, args, retried, label):
    """_run_worker after --wait-idle, measured again (up to --retries times) while other
    processes took more than --max-load of the CPUs."""
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


def _collect_timing(args, base):
    """rounds x threads x impls workers; returns {(impl, threads): [per-round results]}, ..."""
    runs = {(impl, t): [] for impl in args.impls for t in args.threads}
    infos, errors, loads, retried = {}, [], [], []
    for r in range(args.rounds):
        for t in args.threads:
            for impl in args.impls:
                label = f"round {r + 1}/{args.rounds} {impl:11s} threads={t}"
                t0 = time.perf_counter()
                out = _run_measured(dict(base, impl=impl, threads=t), args, retried, label)
                if "error" in out:
                    errors.append(f"round {r + 1}, {impl}, {t} thread(s): {out['error']}")
                    runs[(impl, t)].append(None)
                    _log(f"  {label}: FAILED")
                    continue
                infos.setdefault((impl, t), out["info"])
                runs[(impl, t)].append(out["results"])
                if out.get("load"):
                    loads.append(out["load"])
                busy = f", other load {100 * out['load']['other']:.0f}%" if out.get("load") \
                    else ""
                _log(f"  {label}: {time.perf_counter() - t0:.1f} s{busy}")
    return runs, infos, errors, loads, retried


def _values(runs, key, task_id, field="value"):
    return [None if res is None or task_id not in res else res[task_id][field]
            for res in runs.get(key, [])]


def _fmt_ms(values):
    s = harness.median_range(values)
    if s is None:
        return "n/a"
    med, lo, hi = s
    digits = 3 if med < 1 else 2 if med < 10 else 1
    text = f"{med:.{digits}f}"
    return text + (f" ({lo:.{digits}f}-{hi:.{digits}f})" if hi > lo else "")


def _fmt_ratio(r):
    if r is None:
        return "n/a"
    med, lo, hi = r
    return f"**{med:.2f}x** ({lo:.2f}-{hi:.2f})" if hi > lo else f"**{med:.2f}x**"


def _timing_tables(args, runs, tasks):
    lines = []
    for kind, title in (("train", "Training step"), ("infer", "Inference")):
        impls = [i for i in args.impls if kind == "infer" or i != "onnxruntime"]
        others = [i for i in impls if i != "fastcnn"]
        head = ["measurement", "threads"] + [f"{IMPL_LABELS[i]} ms" for i in impls] + \
            [f"fastcnn vs {IMPL_LABELS[o]}" for o in others if "fastcnn" in impls]
        lines += ["", f"## {title} (ms per batch, lower is better)", "",
                  "Cells: median over rounds (min-max). Ratios: other time / fastcnn time "
                  "within each round, then the median (min-max); > 1 means fastcnn is faster.",
                  "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for task in (t for t in tasks if t["kind"] == kind):
            for t in args.threads:
                cells = [task["label"], str(t)]
                cells += [_fmt_ms(_values(runs, (i, t), task["id"])) for i in impls]
                if "fastcnn" in impls:
                    mine = _values(runs, ("fastcnn", t), task["id"])
                    cells += [_fmt_ratio(harness.same_round_ratio(
                        _values(runs, (o, t), task["id"]), mine)) for o in others]
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def _overhead_table(args, runs, tasks):
    rows = [t for t in tasks if t["kind"] == "overhead"]
    if "fastcnn" not in args.impls or not rows:
        return []
    lines = ["", "## Python overhead of fastcnn per call at batch 1", "",
             ("ms per call. step = median time of the plain call; kernels = time inside "
              "fastcnn's compiled kernels per call (every kernel call timed through a wrapper); "
              "Python = the rest of the same wrapped calls minus the wrappers' own cost: the "
              "interpreter, validation, NumPy glue (allocations, reshapes, bias sums) and the "
              "optimiser. Python share = Python / (kernels + Python). Medians over rounds "
              "(min-max)."), "",
             "| network | threads | call | step | kernels | Python | Python share "
             "| kernel calls |", "|---|---|---|---|---|---|---|---|"]
    for task in rows:
        for t in args.threads:
            res = [r[task["id"]] for r in runs.get(("fastcnn", t), []) if r and task["id"] in r]
            for what, label in (("train", "train step"), ("infer", "inference")):
                vals = [r[what] for r in res]
                if not vals:
                    continue
                col = {k: [1e3 * v[k] for v in vals] for k in ("step", "kernels", "python")}
                share = harness.median_range([v["python"] / (v["python"] + v["kernels"])
                                              for v in vals])
                lines.append(
                    f"| {task['label'].split(',')[0]} | {t} | {label} | {_fmt_ms(col['step'])} "
                    f"| {_fmt_ms(col['kernels'])} | {_fmt_ms(col['python'])} "
                    f"| {100 * share[0]:.0f}% | {statistics.median(v['calls'] for v in vals):.0f}"
                    " |")
    return lines


def _scaling_table(args, runs, tasks):
    if len(args.threads) < 2:
        return []
    t1, t2 = args.threads[0], args.threads[-1]
    impls = args.impls
    lines = ["", f"## Thread scaling ({t2} threads vs {t1}, same round)", "",
             f"speed-up = time with {t1} thread(s) / time with {t2} threads per round, then the "
             "median. DESIGN.md section 8: the two vCPUs may share a physical core or be "
             "time-sliced, so anything from 1.0x to 1.9x can be the machine, not the code.", "",
             "| measurement | " + " | ".join(IMPL_LABELS[i] for i in impls) + " |",
             "|---|" + "---|" * len(impls)]
    for task in (t for t in tasks if t["kind"] in ("train", "infer")):
        cells = [task["label"]] + [_fmt_ratio(harness.same_round_ratio(
            _values(runs, (i, t1), task["id"]), _values(runs, (i, t2), task["id"])))
            for i in impls]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _check_warnings(runs, tasks, nets):
    """Every implementation starts from the same weights: the first training loss (of networks
    without dropout) and the inference outputs must agree (a cheap check that the comparison
    is fair)."""
    warnings = []
    for task in tasks:
        field = {"train": "first_loss", "infer": "checksum"}.get(task["kind"])
        if field is None or field == "first_loss" and nets[task["net"]].get("stochastic"):
            continue
        seen = {}
        for (impl, _), rounds in runs.items():
            for res in rounds:
                if res and task["id"] in res:
                    seen.setdefault(impl, res[task["id"]][field])
        if "fastcnn" not in seen:
            continue
        base = seen["fastcnn"]
        for impl, v in seen.items():
            if field == "first_loss":
                bad = abs(v - base) > 1e-4 * max(1.0, abs(base))
            else:
                bad = abs(v[0] - base[0]) > 1e-4 * max(base[1], 1e-30)
                v = v[0]
            if bad:
                warnings.append(f"{task['label']}: {impl} gives {v!r}, fastcnn {base!r}")
    return warnings


def _load_epoch_data(cfg, out_path, quick):
    """Save the epoch's train/test arrays to `out_path` (.npz); returns a description."""
    import numpy as np

    n_train, n_test = cfg["epoch_train"], cfg["epoch_test"]
    source, reason = None, "--quick does not read the real data set"
    if not quick and Path(FASHION_DIR).is_dir():
        try:
            from fastcnn.datasets import load_idx_dir

            data = load_idx_dir(FASHION_DIR, normalize=True)
            x_train, y_train = data.train.images[:n_train], data.train.labels[:n_train]
            x_test, y_test = data.test.images[:n_test], data.test.labels[:n_test]
            source = (f"Fashion-MNIST from {FASHION_DIR} ({x_train.shape[0]:,} training, "
                      f"{x_test.shape[0]:,} test images, standardised, padded to 32x32)")
        except (OSError, ValueError) as exc:
            reason = f"reading {FASHION_DIR} failed: {exc}"
    elif not quick:
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


def _epoch_section(epoch_runs, source, threads, cfg):
    lines = ["", f"## Full LeNet-5 epoch ({threads} thread(s))", "",
             (f"Data: {source}. One epoch at batch {cfg['epoch_batch']} (seeded shuffle, "
              "batches gathered into reused buffers, the same loop for every implementation), "
              f"then prediction on the test set in batches of {cfg['eval_batch']}."), "",
             "| implementation | train epoch (s) | test evaluation (s) | img/s (train) "
             "| test accuracy | mean loss, last 50 steps |", "|---|---|---|---|---|---|"]
    for impl, outs in epoch_runs.items():
        ok = [o for o in outs if o is not None]
        if not ok:
            lines.append(f"| {IMPL_LABELS[impl]} | failed | | | | |")
            continue
        train = statistics.median(o["train_s"] for o in ok)
        lines.append(f"| {IMPL_LABELS[impl]} | {train:.2f} | "
                     f"{statistics.median(o['eval_s'] for o in ok):.2f} | "
                     f"{cfg['epoch_train'] / train:,.0f} | {ok[0]['accuracy']:.4f} | "
                     f"{ok[0]['last_loss']:.4f} |")
    return lines


def _mib(b):
    return "n/a" if b is None else f"{b / 2**20:,.1f} MiB" if abs(b) >= 2**20 else \
        f"{b / 2**10:,.1f} KiB"


def _memory_section(mem_runs, threads, cfg):
    lines = ["", f"## Memory (LeNet-5 training at batch {cfg['mem_batch']}, {threads} "
             "thread(s))", "",
             (f"tracemalloc growth over {cfg['mem_steps']} steps after warm-up (Python and NumPy "
              "allocations only: PyTorch's tensors are not traced); peak RSS of the worker "
              "(VmHWM, imports included)."), "",
             "| implementation | tracemalloc growth | per-step traced peak | peak RSS |",
             "|---|---|---|---|"]
    for impl, out in mem_runs.items():
        if out is None:
            lines.append(f"| {IMPL_LABELS[impl]} | failed | | |")
            continue
        lines.append(f"| {IMPL_LABELS[impl]} | {out['traced_growth']:,} B | "
                     f"{_mib(out['traced_peak_per_step'])} | {_mib(out['peak_rss'])} |")
    return lines


def _header(args, machine, infos, cfg, git, fingerprint, loads, load_start):
    flags = machine["flags"]
    yes = {True: "yes", False: "no"}
    lines = ["# fastcnn benchmark report", "", f"- command: `{args.command}`",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"]
    cores = f"{machine['logical']} logical CPUs, {machine['usable']} usable"
    if machine.get("physical"):
        cores += f", {machine['physical']} physical cores"
    lines.append(f"- machine: {machine['cpu']} ({machine['arch']}), {cores}; avx2 "
                 f"{yes['avx2' in flags]}, fma {yes['fma' in flags]}, avx512f "
                 f"{yes['avx512f' in flags]}"
                 + ("; virtualised (hypervisor flag)" if "hypervisor" in flags else ""))
    lines.append(f"- fastcnn source: {('git ' + git) if git else 'not a git checkout'}; "
                 f"package fingerprint {fingerprint}"
                 + (" (workers ran a copy taken at the start)" if args.snapshot else ""))
    by_impl = {i: v for (i, _), v in infos.items()}
    any_info = next(iter(by_impl.values()), {})
    libs = [f"Python {any_info.get('python', platform.python_version())}",
            f"NumPy {any_info.get('numpy', '?')}"]
    fc = by_impl.get("fastcnn")
    if fc:
        libs.append(f"fastcnn {fc['fastcnn']} (kernels {fc['kernel_isa']}, OpenMP "
                    f"{yes[fc['openmp']]})")
    if by_impl.get("torch"):
        libs.append(f"PyTorch {by_impl['torch']['torch']}")
    if by_impl.get("onnxruntime"):
        libs.append(f"ONNX Runtime {by_impl['onnxruntime']['onnxruntime']} (CPU execution "
                    "provider, intra_op_num_threads = threads, inter_op 1, sequential)")
    lines.append("- libraries: " + ", ".join(libs))
    lines.append(f"- method: {args.rounds} round(s); in each round every implementation runs in "
                 f"its own fresh process ({', '.join(args.impls)}) for each thread count "
                 f"({', '.join(map(str, args.threads))}). A worker warms a measurement up (>= "
                 f"{cfg['warmup_time']} s), times {cfg['reps']} repetitions of >= "
                 f"{cfg['rep_time'] * 1e3:.0f} ms and keeps their median. Same weights and data "
                 "everywhere (checked: first loss, logits). Train step: forward, softmax "
                 f"cross-entropy, backward, SGD (lr {harness.LR}, momentum {harness.MOMENTUM}); "
                 "the first layer computes no input gradient in either framework. float32.")
    lines.append("- environment of every worker: "
                 + " ".join(f"{k}={v}" for k, v in harness.MALLOC_ENV.items())
                 + ", OMP/OPENBLAS/MKL_NUM_THREADS = thread count, "
                 + " and ".join(harness.UNSET_ENV) + " unset; fastcnn.set_num_threads, "
                 "torch.set_num_threads and threadpoolctl limits applied in-process.")
    text = "- background load: "
    if load_start is not None:
        text += f"load average {load_start[0]:.2f} at the start; "
    if loads:
        other = sorted(x["other"] for x in loads)
        steal = sorted(x["steal"] for x in loads)
        text += (f"while the timing workers ran, other processes used a median "
                 f"{100 * statistics.median(other):.0f}% (max {100 * other[-1]:.0f}%) of all "
                 f"CPUs and the hypervisor stole {100 * statistics.median(steal):.0f}% (max "
                 f"{100 * steal[-1]:.0f}%).")
        if statistics.median(other) > 0.1 or statistics.median(steal) > 0.1:
            text += " **The machine was busy: treat these numbers as unreliable.**"
    else:
        text += "CPU use of other processes not measured."
    lines.append(text)
    return lines


def _plot(path, args, runs, tasks, title):
    """Bar chart of the same-round ratios (other time / fastcnn time) per thread count."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart written"
    import numpy as np

    rows = [t for t in tasks if t["kind"] in ("train", "infer")]
    others = [i for i in args.impls if i != "fastcnn"]
    if "fastcnn" not in args.impls or not others:
        return "no chart: it shows ratios against fastcnn"
    fig, axes = plt.subplots(len(args.threads), 1, figsize=(max(8, 0.7 * len(rows)), 4 *
                             len(args.threads)), squeeze=False)
    width = 0.8 / len(others)
    for ax, t in zip(axes[:, 0], args.threads):
        xs = np.arange(len(rows))
        for k, o in enumerate(others):
            stats = [harness.same_round_ratio(_values(runs, (o, t), r["id"]),
                                              _values(runs, ("fastcnn", t), r["id"]))
                     for r in rows]
            med = [s[0] if s else np.nan for s in stats]
            err = [[s[0] - s[1] if s else 0 for s in stats], [s[2] - s[0] if s else 0
                                                              for s in stats]]
            ax.bar(xs + (k - (len(others) - 1) / 2) * width, med, width, yerr=err, capsize=2,
                   label=f"{IMPL_LABELS[o]} time / fastcnn time")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(xs)
        ax.set_xticklabels([r["label"].replace(", batch", "\nbatch") for r in rows],
                           fontsize=7, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("speed-up of fastcnn (log; > 1: faster)")
        ax.set_title(f"{t} thread(s)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def _parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python bench/report.py",
        description="Benchmark fastcnn against PyTorch and ONNX Runtime (each in its own "
        "process, alternating rounds) and write a Markdown report and a chart.")
    p.add_argument("--threads", default=None, help="comma-separated thread counts (default "
                   "1,2; --quick: 1)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; "
                   "--quick: 1)")
    p.add_argument("--networks", default=",".join(harness.NETWORKS),
                   help="comma-separated networks: built-in ones (%(default)s) or zoo names")
    p.add_argument("--impls", default=None, help="comma-separated subset of "
                   f"{','.join(IMPLS)} (default: all installed)")
    p.add_argument("--quick", action="store_true", help="tiny configuration to check the tool")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement")
    p.add_argument("--epoch", action="store_true", help="also time one LeNet-5 epoch")
    p.add_argument("--epoch-threads", type=int, default=None,
                   help="threads for --epoch (default 2; --quick: the first of --threads)")
    p.add_argument("--memory", action="store_true", help="also check memory (LeNet-5)")
    p.add_argument("--out", default=str(HERE / "results.md"),
                   help="Markdown report path (default: bench/results.md)")
    p.add_argument("--png", default=None,
                   help="chart path (default: --out with .png); 'none' for no chart")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per worker")
    p.add_argument("--max-load", type=float, default=None, metavar="FRACTION",
                   help="measure a worker again (up to --retries times) when other processes "
                   "used more than FRACTION of the CPUs while it ran")
    p.add_argument("--retries", type=int, default=2, help="retries for --max-load")
    p.add_argument("--no-snapshot", dest="snapshot", action="store_false",
                   help="workers import the checkout itself instead of a copy taken at start")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before each worker wait up to SECONDS for a quiet machine")
    args = p.parse_args(argv)
    try:
        args.threads = ([1] if args.quick else [1, 2]) if args.threads is None else \
            [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        p.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    if not args.threads or min(args.threads) < 1:
        p.error("--threads needs thread counts >= 1")
    args.rounds = (1 if args.quick else 3) if args.rounds is None else args.rounds
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    args.networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    for n in args.networks:
        try:
            harness.get_network(n)
        except (ValueError, KeyError) as exc:
            p.error(str(exc))
    import importlib.util

    installed = {"fastcnn": True, "torch": importlib.util.find_spec("torch") is not None,
                 "onnxruntime": all(importlib.util.find_spec(m) is not None
                                    for m in ("onnx", "onnxruntime", "torch"))}
    args.missing = [i for i in IMPLS if not installed[i]]
    if args.impls is None:
        args.impls = [i for i in IMPLS if installed[i]]
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


def main(argv=None):
    """Run the benchmark report; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--worker" in argv:
        return worker_main(argv)
    try:
        import fastcnn  # noqa: F401
    except ImportError:  # not installed: the in-place build of this checkout
        sys.path.insert(0, str(harness.ROOT))
    args = _parse_args(argv)
    args.command = f"python bench/report.py {shlex.join(argv)}".strip()
    with tempfile.TemporaryDirectory(prefix="fastcnn-bench-") as tmp:
        tmp = Path(tmp)
        args.worker_root = _snapshot_package(tmp / "pkg") if args.snapshot else str(harness.ROOT)
        return _report(args, tmp)


def _report(args, tmp):
    cfg = dict(QUICK if args.quick else FULL)
    if args.reps is not None:
        cfg["reps"] = max(1, args.reps)
    notes = [f"{IMPL_LABELS[i]} is not installed (or onnx / torch for its export): no "
             f"{IMPL_LABELS[i]} column." for i in args.missing]
    _log(f"{args.command}: {args.rounds} round(s), threads {args.threads}, "
         f"{', '.join(args.impls)}, networks {', '.join(args.networks)}")
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    fingerprint, git = harness.package_fingerprint(), harness.git_state()
    nets, onnx_ok, more = _prepare_networks(args.networks, tmp, "onnxruntime" in args.impls,
                                            args.timeout, args.worker_root)
    notes += more
    if not onnx_ok and "onnxruntime" in args.impls:
        args.impls.remove("onnxruntime")
    tasks = _tasks(cfg, args.networks)
    base = {"mode": "time", "tasks": tasks, "nets": nets, **cfg}
    runs, infos, errors, loads, retried = _collect_timing(args, base)

    mem_runs, epoch_runs, epoch_source = {}, {}, None
    trainers = [i for i in args.impls if i != "onnxruntime"]
    if args.memory:
        spec = {"mode": "memory", "batch": cfg["mem_batch"], "steps": cfg["mem_steps"],
                "warmup": cfg["mem_warmup"], "threads": args.threads[-1], "nets": nets}
        for impl in trainers:
            out = _run_measured(dict(spec, impl=impl), args, retried, f"memory {impl}")
            if "error" in out:
                errors.append(f"memory, {impl}: {out['error']}")
            mem_runs[impl] = out.get("results")
    if args.epoch:
        data_path = str(tmp / "epoch.npz")
        epoch_source = _load_epoch_data(cfg, data_path, args.quick)
        spec = {"mode": "epoch", "data": data_path, "batch": cfg["epoch_batch"],
                "eval_batch": cfg["eval_batch"], "threads": args.epoch_threads, "nets": nets}
        for impl in trainers:
            out = _run_measured(dict(spec, impl=impl), args, retried, f"epoch {impl}")
            if "error" in out:
                errors.append(f"epoch, {impl}: {out['error']}")
            epoch_runs.setdefault(impl, []).append(out.get("results"))

    machine = harness.machine()
    lines = _header(args, machine, infos, cfg, git, fingerprint, loads, load_start)
    if retried:
        lines.append(f"- measured again because of other load: {'; '.join(retried)}.")
    lines += _timing_tables(args, runs, tasks)
    lines += _overhead_table(args, runs, tasks)
    lines += _scaling_table(args, runs, tasks)
    if args.epoch:
        lines += _epoch_section(epoch_runs, epoch_source, args.epoch_threads, cfg)
    if args.memory:
        lines += _memory_section(mem_runs, args.threads[-1], cfg)
    for (impl, t), rounds in runs.items():
        for r, res in enumerate(rounds):
            for task_id, timing in (res or {}).items():
                if timing.get("finite") is False:
                    notes.append(f"{impl}, {t} thread(s), round {r + 1}: the loss of {task_id} "
                                 "became non-finite")
    notes += [f"CHECK FAILED: {w}" for w in _check_warnings(runs, tasks, nets)]
    prints = {i.get("fingerprint") for i in infos.values() if i.get("fingerprint")}
    if not args.snapshot:
        prints |= {fingerprint, harness.package_fingerprint()}
    if len(prints) > 1:
        notes.insert(0, "**fastcnn changed while the report ran**: rounds mix builds, rerun it.")
    notes += [f"worker failed: {e}" for e in errors]
    for (impl, t), info in sorted(infos.items()):
        pools = [f"{p.get('internal_api')} {p.get('num_threads')}"
                 for p in (info.get("pools") or [])]
        pools += [f"{k.split('_')[0]} {info[k]}" for k in ("torch_threads", "fastcnn_threads")
                  if info.get(k) is not None]
        notes.append(f"threads in the {IMPL_LABELS[impl]} worker asked for {t}: "
                     + (", ".join(pools) or "no pools seen"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.png.lower() != "none":
        title = (f"fastcnn bench - {machine['cpu']}, {machine['usable']} CPUs - "
                 f"{datetime.date.today()} - median of {args.rounds} round(s), bars min-max")
        problem = _plot(args.png, args, runs, tasks, title)
        if problem:
            notes.append(problem)
        else:
            rel = os.path.relpath(Path(args.png).resolve(), Path(args.out).resolve().parent)
            lines += ["", f"![benchmark chart]({Path(rel).as_posix()})"]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _log(f"wrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
