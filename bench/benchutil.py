"""Helpers shared by the benchmark modules and ``conftest.py`` (settings: see conftest.py)."""

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

try:
    import fastcnn
except ImportError:  # not installed: benchmark the in-place build of this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fastcnn

try:
    import torch
except ImportError:
    torch = None

BATCHES = [1, 16, 64, 256]
DTYPE = np.float32
#: Relative tolerance of a float32 result, scaled by the largest magnitude of the reference.
RTOL = 1e-4

ROUND_TIME = 1e-3  # seconds: shorter calls are repeated within one round
BENCH_TIME = float(os.environ.get("FASTCNN_BENCH_TIME", "0.25"))
LOOP_BUDGET = float(os.environ.get("FASTCNN_BENCH_LOOP_BUDGET", "2"))
SLOW_CALL = 0.2  # seconds: slower calls get 3 rounds


def _bench_threads():
    value = os.environ.get("FASTCNN_BENCH_THREADS", "").strip()
    if not value:
        return fastcnn.get_num_threads()
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise pytest.UsageError(f"FASTCNN_BENCH_THREADS must be an integer >= 1, got {value!r}")
    return n


N_THREADS = _bench_threads()


def require_torch():
    """The torch module, or skip the test."""
    return pytest.importorskip("torch")


def assert_matches(actual, expected, what="result"):
    """``allclose`` with a float32 tolerance relative to the largest value of the reference."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected))) if expected.size else 0.0, 1e-30)
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert np.allclose(actual, expected, rtol=RTOL, atol=RTOL * scale), (
        f"{what} differs from the reference before timing: max error {err:.3g}, "
        f"largest reference value {scale:.3g}")


_LOOP_COST = {}


def loop_reference_cost(key, call_at_batch_1):
    """Estimated seconds per image of a loop reference, measured once per session at batch 1."""
    if key not in _LOOP_COST:
        call_at_batch_1()  # warm-up
        best = math.inf
        for _ in range(2):
            t0 = time.perf_counter()
            call_at_batch_1()
            best = min(best, time.perf_counter() - t0)
        _LOOP_COST[key] = best
    return _LOOP_COST[key]


def loop_reference_note(key, call_at_batch_1, batch):
    """("timed" | "skipped ...", estimated seconds per call) for a loop reference at `batch`."""
    estimate = loop_reference_cost(key, call_at_batch_1) * batch
    if estimate > LOOP_BUDGET:
        return (f"skipped: ~{estimate:.1f} s per call estimated from batch 1 "
                f"(> FASTCNN_BENCH_LOOP_BUDGET={LOOP_BUDGET:g} s)"), estimate
    return f"timed (~{estimate:.2g} s per call estimated)", estimate
