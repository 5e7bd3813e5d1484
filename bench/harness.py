"""The measuring harness shared by the benchmark report (``report.py``) and the pytest-benchmark
groups (``conftest.py``, ``test_*.py``) of this directory. A development tool, not library code.

What it fixes, once for everything that measures (DESIGN.md section 8):

* the environment of a measuring process (:func:`worker_env`): ``MALLOC_MMAP_THRESHOLD_`` and
  ``MALLOC_TRIM_THRESHOLD_`` so that glibc keeps freed activations instead of returning them to
  the kernel after each step, ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` removed, and
  ``OMP/OPENBLAS/MKL_NUM_THREADS`` = the thread count;
* the in-process thread limits (:func:`limit_threads`): fastcnn, PyTorch and every BLAS / OpenMP
  pool threadpoolctl sees;
* one timing routine (:func:`time_call`: warm-up, calls per repetition calibrated, median of
  repetitions) and the statistics of alternating rounds (:func:`same_round_ratio`: ratios taken
  within a round, then their median and min-max);
* the networks compared (:data:`NETWORKS`, :func:`get_network`): LeNet-5 and the VGG-style net of
  issue 9, plus any model of the zoo (``fastcnn.models.get_model``) once it exists. A network is
  described as data (layer class names and constructor arguments, :func:`layer_specs`) so that a
  PyTorch worker can rebuild it (:func:`torch_module`) without importing fastcnn.

Nothing here imports fastcnn, NumPy or PyTorch at the top: the PyTorch and ONNX Runtime workers
of the report import this module and must hold only their own framework.
"""

import hashlib
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Environment of every measuring process on top of the thread counts (DESIGN.md section 8).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
UNSET_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
LR, MOMENTUM = 0.01, 0.9


# ---------------------------------------------------------------------------------------------
# Environment and threads
# ---------------------------------------------------------------------------------------------


def worker_env(threads, path_first=()):
    """The environment of a measuring process with `threads` threads; `path_first` are put at
    the front of ``PYTHONPATH`` (e.g. a snapshot of the package, or this checkout)."""
    env = dict(os.environ)
    for key in UNSET_ENV:
        env.pop(key, None)
    for key in THREAD_ENV:
        env[key] = str(threads)
    env.update(MALLOC_ENV)
    path = [str(p) for p in path_first]
    path += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in path]
    if path:
        env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def env_problems():
    """What in this process's environment departs from :func:`worker_env` (list of str)."""
    notes = [f"{k} is set; unset it for benchmarks (DESIGN.md section 8)"
             for k in UNSET_ENV if os.environ.get(k)]
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        notes.append("MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ not set as in DESIGN.md "
                     "section 8; PyTorch and NumPy pay page faults per step")
    return notes


_LIMITERS = []


def limit_threads(n):
    """Limit fastcnn, PyTorch (if imported) and every BLAS / OpenMP pool loaded so far to `n`
    threads; returns threadpoolctl's view of the pools (None without threadpoolctl). Call it
    again after lazy imports. :func:`restore_threads` undoes the pool limits."""
    if "fastcnn" in sys.modules:
        sys.modules["fastcnn"].set_num_threads(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return None
    _LIMITERS.append(threadpool_limits(limits=n))
    return [{k: v for k, v in pool.items() if k in
             ("user_api", "internal_api", "version", "num_threads", "architecture", "prefix")}
            for pool in threadpool_info()]


def restore_threads():
    """Undo :func:`limit_threads`' pool limits (fastcnn goes back to its default)."""
    while _LIMITERS:
        _LIMITERS.pop().restore_original_limits()
    if "fastcnn" in sys.modules:
        sys.modules["fastcnn"].set_num_threads(None)


# ---------------------------------------------------------------------------------------------
# Timing and statistics
# ---------------------------------------------------------------------------------------------


def time_call(fn, reps, rep_time, warmup_time):
    """Warm `fn` up (>= `warmup_time` s, >= 2 calls), calibrate the calls per repetition (>=
    `rep_time` s each) and return per-call seconds of `reps` repetitions: a dict with
    ``median``, ``min``, ``max``, ``inner`` (calls per repetition) and ``reps``."""
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


def same_round_ratio(num, den):
    """Median and min-max of ``num[r] / den[r]`` over the rounds r where both are known (values
    measured in the same round, so that a slow spell of the host hits both); None if none."""
    ratios = [a / b for a, b in zip(num, den) if a and b and a > 0 and b > 0]
    if not ratios:
        return None
    return statistics.median(ratios), min(ratios), max(ratios)


def median_range(values):
    """(median, min, max) of the known values, or None."""
    values = [v for v in values if v is not None]
    return (statistics.median(values), min(values), max(values)) if values else None


# ---------------------------------------------------------------------------------------------
# Machine and source state
# ---------------------------------------------------------------------------------------------


def cpu_stat():
    """(busy, steal) CPU seconds of the whole machine so far (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:9]]
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    return (user + nice + system + irq + softirq) / tick, steal / tick


def machine():
    """CPU model, logical / usable / physical CPU counts and flags (from /proc/cpuinfo)."""
    import platform

    info = {"cpu": platform.processor() or platform.machine(), "logical": os.cpu_count(),
            "flags": set(), "physical": None, "arch": platform.machine()}
    try:
        info["usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["usable"] = os.cpu_count()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    cores, phys, core = set(), None, None
    for line in text.splitlines() + [""]:
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
    info["physical"] = len(cores) or None
    return info


def git_state(root=ROOT):
    """'abc1234' or 'abc1234 + uncommitted changes in fastcnn/' for a checkout, else None."""
    if not (Path(root) / ".git").exists():
        return None
    try:
        run = [subprocess.run(["git", "-C", str(root)] + cmd, capture_output=True, text=True,
                              timeout=10, check=True).stdout
               for cmd in (["rev-parse", "--short", "HEAD"], ["status", "--porcelain", "fastcnn"])]
    except (OSError, subprocess.SubprocessError):
        return None
    return run[0].strip() + (" + uncommitted changes in fastcnn/" if run[1].strip() else "")


def package_fingerprint(pkg=ROOT / "fastcnn"):
    """A short hash of the package's files (name, size, mtime of compiled modules and Python
    sources): it changes when the kernels are rebuilt or the code is edited."""
    h = hashlib.sha1()
    pkg = Path(pkg)
    for path in sorted(pkg.rglob("*")):
        rel = path.relative_to(pkg)
        if "__pycache__" in rel.parts or not path.is_file():
            continue
        if path.suffix in (".so", ".pyd", ".py"):
            st = path.stat()
            h.update(f"{rel.as_posix()}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


class Network:
    """A network compared in the report: a name, a label, the input shape of one image, the
    batches of its train-step and inference measurements and a builder of the fastcnn model
    (``build(fastcnn) -> Sequential``, seeded so that every process builds the same one)."""

    def __init__(self, name, label, input_shape, build, train_batches=(64,),
                 infer_batches=(1, 64)):
        self.name, self.label, self.input_shape = name, label, tuple(input_shape)
        self.build, self.train_batches = build, tuple(train_batches)
        self.infer_batches = tuple(infer_batches)

    def __repr__(self):
        return f"Network({self.name!r})"


def _build_vgg(fc, seed=0):
    import numpy as np

    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(4)]
    return fc.Sequential(
        fc.Conv2d(1, 16, 3, padding=1, seed=seeds[0]), fc.ReLU(), fc.MaxPool2d(2),
        fc.Conv2d(16, 32, 3, padding=1, seed=seeds[1]), fc.ReLU(), fc.MaxPool2d(2),
        fc.Conv2d(32, 64, 3, padding=1, seed=seeds[2]), fc.ReLU(), fc.Flatten(),
        fc.Linear(64 * 7 * 7, 10, seed=seeds[3]))


#: The built-in networks (name -> Network). The zoo's models join through get_network.
NETWORKS = {
    "lenet5": Network("lenet5", "LeNet-5", (1, 32, 32), lambda fc: fc.LeNet5(seed=0),
                      train_batches=(1, 64, 256)),
    "vgg": Network("vgg", "VGG-style (issue 9)", (1, 28, 28), _build_vgg,
                   train_batches=(1, 64)),
}


def get_network(name):
    """The Network called `name`: a built-in one, else a model of the zoo
    (``fastcnn.models.get_model(name)``, whose ``input_shape`` attribute gives the images)."""
    if name in NETWORKS:
        return NETWORKS[name]
    try:
        from fastcnn.models import get_model
    except ImportError:
        get_model = None
    if get_model is None:
        raise ValueError(f"unknown network {name!r}: choose from {', '.join(NETWORKS)} (no "
                         "model zoo: fastcnn.models.get_model does not exist yet)")
    model = get_model(name)
    return Network(name, name, model.input_shape, lambda fc: fc.models.get_model(name))


def skips_first_input_grad(model):
    """Make the first layer skip its input gradient (PyTorch skips it too: the images do not
    require a gradient); returns the model."""
    first = model.layers[0] if hasattr(model, "layers") else None
    if first is not None and hasattr(first, "compute_input_grad"):
        first.compute_input_grad = False
    return model


def layer_specs(model):
    """``[[class name, constructor keyword arguments], ...]`` of a fastcnn Sequential: JSON data
    from which :func:`torch_module` builds the equivalent ``torch.nn.Sequential``."""
    specs = []
    for layer in model:
        if hasattr(layer, "layers"):
            raise ValueError(f"nested containers are not supported: {layer!r}")
        kwargs = {k: v for k, v in layer.init_args().items() if k not in ("dtype", "seed")}
        specs.append([type(layer).__name__, kwargs])
    return specs


def torch_module(specs):
    """``torch.nn.Sequential`` of :func:`layer_specs` data (PyTorch's names and arguments, so
    ``state_dict`` keys match fastcnn's)."""
    from torch import nn

    return nn.Sequential(*[getattr(nn, name)(**kwargs) for name, kwargs in specs])


def torch_lenet5():
    """PyTorch's LeNet-5 with the layer numbering of ``fastcnn.LeNet5`` (and its state_dict)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(), nn.Linear(120, 84),
        nn.ReLU(), nn.Linear(84, 10))


def lenet5_forward_numpy(params, x, conv=None, pool=None):
    """LeNet-5 logits from NumPy reference kernels (the inference baseline of ``test_model``).

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


def batch_data(input_shape, n, num_classes=10, seed=0):
    """Seeded float32 images ``(n, *input_shape)`` and int64 labels (the same in every worker)."""
    import numpy as np

    rng = np.random.default_rng([seed, n])
    x = rng.random((n,) + tuple(input_shape), dtype=np.float32)
    return x, rng.integers(0, num_classes, n).astype(np.int64)


def kernel_call_timer(fastcnn):
    """Wrap every function of fastcnn's loaded compiled kernel modules with a timer (and the
    calls of every bound kernel call, ``Bound*``, and of every compiled chain of them,
    ``Chain``, made while the timers are in).

    Returns ``(totals, restore, cost)``: ``totals`` is a two-element list [seconds inside the
    kernels, calls] that grows with every kernel call; ``restore()`` puts the original functions
    back; ``cost`` is the time a wrapper adds to a call outside its timed window (seconds,
    measured on a no-op).
    The library calls kernels as ``_kernels.<module>.<function>`` (or their dtype
    specialisations, ``function["float"]``) looked up when a call is planned; the plans made
    before the wrappers are dropped (``_invalidate_plans``), so every call goes through a
    wrapper. Used to split a step into kernel time and Python (plus NumPy glue) time.
    """
    from fastcnn.functional.conv import _invalidate_plans

    prefix = f"fastcnn._kernels._{fastcnn._kernels.VARIANT}."
    totals, saved = [0.0, 0], []
    clock = time.perf_counter

    class Timed:
        __slots__ = ("fn",)

        def __init__(self, fn):
            self.fn = fn

        def __call__(self, *args, **kwargs):
            t0 = clock()
            try:
                return self.fn(*args, **kwargs)
            finally:
                totals[0] += clock() - t0
                totals[1] += 1

        def __getitem__(self, key):  # a fused-type kernel's specialisation, timed too
            return Timed(self.fn[key])

        def link(self, *args):  # a bound call's chain link: the chain's calls are timed
            return self.fn.link(*args)

    def timed_class(cls):  # a bound kernel call (``Bound*``): its calls are timed
        return lambda *args, **kwargs: Timed(cls(*args, **kwargs))

    for name, mod in list(sys.modules.items()):
        if not name.startswith(prefix) or name.endswith("._openmp"):
            continue
        for attr in dir(mod):
            fn = getattr(mod, attr)
            if attr.startswith("_") or not callable(fn):
                continue
            if isinstance(fn, type) and not (attr.startswith("Bound") or attr == "Chain"):
                continue
            saved.append((mod, attr, fn))
            setattr(mod, attr, timed_class(fn) if isinstance(fn, type) else Timed(fn))
    _invalidate_plans()

    def restore():
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)
        _invalidate_plans()

    def noop():
        return None

    timed_noop, n = Timed(noop), 20000
    best = math.inf
    for _ in range(3):
        t0 = clock()
        for _ in range(n):
            noop()
        plain = clock() - t0
        inside = totals[0]
        t0 = clock()
        for _ in range(n):
            timed_noop()
        best = min(best, (clock() - t0 - plain - (totals[0] - inside)) / n)
    totals[:] = [0.0, 0]
    return totals, restore, max(best, 0.0)
