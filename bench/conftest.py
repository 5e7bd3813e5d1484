"""Fixtures and hooks of the pytest-benchmark suite (``pytest bench --benchmark-only``).

Threads: ``FASTCNN_BENCH_THREADS`` (default ``fastcnn.get_num_threads()``) is applied to fastcnn's
kernels, to BLAS and every OpenMP pool (threadpoolctl) and to PyTorch alike, for the whole session.

Every benchmark first checks its result against the NumPy im2col reference (float32 tolerance,
:func:`assert_matches`), then times with ``benchmark.pedantic`` through the :func:`measure`
fixture: rounds of at least ~1 ms (several calls each for fast kernels), about
``FASTCNN_BENCH_TIME`` seconds per benchmark (default 0.25), at least ``--benchmark-min-rounds``
rounds (3 for calls slower than 0.2 s). The whole default run takes a few minutes.

The course-style loop references are timed only where one call is expected to take at most
``FASTCNN_BENCH_LOOP_BUDGET`` seconds (default 2): the cost is measured at batch 1 once per session
and scaled with the batch; the skip and the estimate are recorded in ``extra_info``.

For comparisons with PyTorch, run with the allocator settings of DESIGN.md section 8, e.g.::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE MALLOC_MMAP_THRESHOLD_=33554432 \\
        MALLOC_TRIM_THRESHOLD_=1073741824 .venv/bin/python -m pytest bench --benchmark-only

(``fastcnn bench`` does this for you, with each implementation in its own process.)
"""

import math
import os
import time

import numpy as np
import pytest
from benchutil import BENCH_TIME, DTYPE, N_THREADS, ROUND_TIME, SLOW_CALL, fastcnn, torch

_POOLS_IN_SESSION = []  # threadpoolctl's view while the session's limits are in force


def pytest_report_header(config):
    lines = [(f"fastcnn {fastcnn.__version__} (kernels {fastcnn.kernel_isa()}, OpenMP "
              f"{fastcnn.openmp_enabled()}), threads {N_THREADS} (FASTCNN_BENCH_THREADS), "
              f"torch {torch.__version__ if torch is not None else 'not installed'}")]
    set_env = [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if os.environ.get(k)]
    if set_env:
        lines.append(f"note: {' and '.join(set_env)} set; unset them for benchmarks "
                     "(DESIGN.md section 8)")
    if not os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        lines.append("note: MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ not set; PyTorch and "
                     "NumPy pay page faults per step (DESIGN.md section 8)")
    return lines


def pytest_benchmark_update_machine_info(config, machine_info):
    info = {"fastcnn": fastcnn.__version__, "kernel_isa": fastcnn.kernel_isa(),
            "n_threads": N_THREADS, "numpy": np.__version__,
            "torch": None if torch is None else torch.__version__,
            "env": {k: os.environ.get(k) for k in (
                "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "MALLOC_MMAP_THRESHOLD_",
                "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}}
    info["thread_pools"] = _POOLS_IN_SESSION or "not recorded"
    machine_info["fastcnn_bench"] = info


@pytest.fixture(scope="session", autouse=True)
def n_threads():
    """The thread count of the session, applied to fastcnn, BLAS / OpenMP and PyTorch."""
    previous = fastcnn.get_num_threads()
    fastcnn.set_num_threads(N_THREADS)
    limiter = None
    torch_previous = None
    if torch is not None:
        torch_previous = torch.get_num_threads()
        torch.set_num_threads(N_THREADS)
    try:
        from threadpoolctl import threadpool_info, threadpool_limits

        limiter = threadpool_limits(limits=N_THREADS)
        _POOLS_IN_SESSION[:] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads",
                                                       "architecture", "prefix")}
                                for p in threadpool_info()]
    except ImportError:
        pass
    yield N_THREADS
    if torch_previous is not None:
        torch.set_num_threads(torch_previous)
    if limiter is not None:
        limiter.restore_original_limits()
    fastcnn.set_num_threads(previous)


@pytest.fixture
def measure(benchmark, request):
    """``measure(fn, *, group, implementation, batch, check=None, **extra)`` -> result of fn().

    Calls ``fn()`` once and passes its result to ``check`` (which asserts it matches the
    reference), records ``extra_info`` (n_threads, dtype, batch, implementation, ...) and then
    times ``fn`` with ``benchmark.pedantic``.
    """
    min_rounds = max(1, int(request.config.getoption("benchmark_min_rounds") or 1))

    def run(fn, *, group, implementation, batch, check=None, **extra):
        benchmark.group = group
        benchmark.extra_info.update(n_threads=N_THREADS, dtype=np.dtype(DTYPE).name,
                                    batch=batch, implementation=implementation, **extra)
        t0 = time.perf_counter()
        result = fn()
        first = time.perf_counter() - t0
        if check is not None:
            check(result)
        # The first call may include one-off costs (lazy imports, JIT, allocation): time a second.
        t0 = time.perf_counter()
        fn()
        single = max(time.perf_counter() - t0, 1e-7)
        if single > SLOW_CALL:
            rounds, iterations, warmup = 3, 1, 0
        else:
            iterations = max(1, math.ceil(ROUND_TIME / single))
            rounds = max(min_rounds, min(1000, math.ceil(BENCH_TIME / (single * iterations))))
            warmup = 1
        benchmark.extra_info["first_call_s"] = round(first, 6)
        benchmark.extra_info["calls_per_round"] = iterations
        benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=warmup)
        return result

    return run
