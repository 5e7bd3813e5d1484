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

Thread limits, the environment check and the networks come from ``harness.py``, which the
report (``report.py``) uses as well. For comparisons with PyTorch, run with the allocator settings
of DESIGN.md section 8 (``harness.worker_env``), e.g.::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE MALLOC_MMAP_THRESHOLD_=33554432 \\
        MALLOC_TRIM_THRESHOLD_=1073741824 .venv/bin/python -m pytest bench --benchmark-only

(``python bench/report.py`` does this for you, with each implementation in its own process.)
"""

import math
import os
import time

import harness
import numpy as np
import pytest
from benchutil import BENCH_TIME, DTYPE, N_THREADS, ROUND_TIME, SLOW_CALL, fastcnn, torch

_POOLS_IN_SESSION = []  # threadpoolctl's view while the session's limits are in force


def pytest_report_header(config):
    lines = [(f"fastcnn {fastcnn.__version__} (kernels {fastcnn.kernel_isa()}, OpenMP "
              f"{fastcnn.openmp_enabled()}), threads {N_THREADS} (FASTCNN_BENCH_THREADS), "
              f"torch {torch.__version__ if torch is not None else 'not installed'}")]
    lines += [f"note: {problem}" for problem in harness.env_problems()]
    return lines


def pytest_benchmark_update_machine_info(config, machine_info):
    info = {"fastcnn": fastcnn.__version__, "kernel_isa": fastcnn.kernel_isa(),
            "n_threads": N_THREADS, "numpy": np.__version__,
            "torch": None if torch is None else torch.__version__,
            "env": {k: os.environ.get(k) for k in
                    harness.UNSET_ENV + tuple(harness.MALLOC_ENV) + harness.THREAD_ENV}}
    info["thread_pools"] = _POOLS_IN_SESSION or "not recorded"
    machine_info["fastcnn_bench"] = info


@pytest.fixture(scope="session", autouse=True)
def n_threads():
    """The thread count of the session, applied to fastcnn, BLAS / OpenMP and PyTorch."""
    torch_previous = torch.get_num_threads() if torch is not None else None
    pools = harness.limit_threads(N_THREADS)  # fastcnn, torch and every BLAS / OpenMP pool
    _POOLS_IN_SESSION[:] = pools or []
    yield N_THREADS
    harness.restore_threads()
    if torch_previous is not None:
        torch.set_num_threads(torch_previous)


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
