"""Shared fixtures for the kernel tests.

``api`` is the module under test: ``fastcnn.functional``, or, with
``FASTCNN_TEST_AGAINST_REFERENCE=1`` in the environment, a stand-in built from
``fastcnn._reference``. Running the suite against the reference checks the tests themselves
(a test that fails there is wrong, not the kernels); validation and thread-determinism tests are
skipped in that mode because the reference neither validates nor promises determinism.

Tolerances: a floating-point sum of terms ``t_k`` is off by at most about ``n * eps * sum |t_k|``
and in practice by ``sqrt(n) * eps * sum |t_k|``. The tests therefore compare elementwise against
``TOL[dtype] * bound``, where ``bound`` is the same operation applied to the absolute values of
the inputs (computed in float64).

An installed ``fastcnn`` is tested if there is one; otherwise the checkout this file is in (built
in place) is put on ``sys.path``.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import fastcnn
except ImportError:  # not installed: test the in-place build of this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fastcnn
from fastcnn import _reference as ref

AGAINST_REFERENCE = os.environ.get("FASTCNN_TEST_AGAINST_REFERENCE", "") not in ("", "0")

#: Elementwise tolerance relative to the sum of the absolute values of the summed terms.
#: float32: ~20x the typical rounding error of a few-hundred-term sum; float64: ~100x.
TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}


class _ReferenceAPI:
    """``fastcnn.functional``'s names mapped onto the NumPy references (no validation)."""

    conv2d = staticmethod(ref.conv2d_im2col)
    conv2d_backward_input = staticmethod(ref.conv2d_backward_input_im2col)
    conv2d_backward_weight = staticmethod(ref.conv2d_backward_weight_im2col)
    max_pool2d = staticmethod(ref.max_pool2d_numpy)
    max_pool2d_backward = staticmethod(ref.max_pool2d_backward_ref)
    relu = staticmethod(ref.relu_ref)

    @staticmethod
    def relu_backward(grad_y, x):
        return ref.relu_backward_ref(grad_y, x)


@pytest.fixture(autouse=True, scope="session")
def _every_loop_parallel():
    """Every parallel loop gets every thread (``_threads.pxi``'s grain set to 1), so that the
    tests' small shapes run the kernels' parallel paths on 2 and 3 threads; a test of the
    default grain sets it back itself."""
    mods = [fastcnn._kernels.conv, fastcnn._kernels.pool]
    old = [m.set_grain(1) for m in mods]
    yield
    for m, g in zip(mods, old):
        m.set_grain(g)


@pytest.fixture(scope="session")
def api():
    """The functional API under test (see the module docstring)."""
    if AGAINST_REFERENCE:
        return _ReferenceAPI
    from fastcnn import functional

    return functional


@pytest.fixture
def validating_api(api):
    """The API, for tests of input validation: skipped when running against the reference."""
    if AGAINST_REFERENCE:
        pytest.skip("the NumPy reference does not validate its input")
    return api


@pytest.fixture
def set_threads():
    """``fastcnn.set_num_threads``; the thread count in force before the test is restored after.

    Skipped against the reference: its matrix products go to BLAS, whose results may change with
    the thread count (it has no determinism contract).
    """
    if AGAINST_REFERENCE:
        pytest.skip("BLAS in the NumPy reference is not bitwise reproducible across threads")
    previous = fastcnn.get_num_threads()
    yield fastcnn.set_num_threads
    fastcnn.set_num_threads(previous)


def _assert_within(actual, desired, bound, tol):
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape, f"shape {actual.shape} != {desired.shape}"
    err = np.abs(actual.astype(np.float64) - desired.astype(np.float64))
    allowed = tol * np.asarray(bound, dtype=np.float64) + np.finfo(np.float64).tiny
    worst = np.unravel_index(np.argmax(err / allowed), err.shape) if err.size else ()
    assert np.all(err <= allowed), (
        f"max error {err.max():.3g} at {worst} exceeds {tol:g} * bound "
        f"(= {allowed[worst]:.3g}); actual {actual[worst]!r}, desired {desired[worst]!r}")


@pytest.fixture
def assert_close():
    """``assert_close(actual, desired, bound, dtype=None, tol=None)``.

    Checks ``|actual - desired| <= tol * bound`` elementwise, with ``tol = TOL[dtype]`` (dtype
    defaults to ``actual.dtype``). ``bound`` is the operation applied to absolute values.
    """

    def check(actual, desired, bound, dtype=None, tol=None):
        if tol is None:
            tol = TOL[np.dtype(dtype if dtype is not None else np.asarray(actual).dtype)]
        _assert_within(actual, desired, bound, tol)

    return check


def _numerical_gradient(f, x, h=1e-5):
    """Central differences ``(f(x + h e_k) - f(x - h e_k)) / 2h`` of scalar ``f`` (float64 x)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        saved = flat[k]
        flat[k] = saved + h
        up = f(x)
        flat[k] = saved - h
        down = f(x)
        flat[k] = saved
        gflat[k] = (up - down) / (2 * h)
    return grad


@pytest.fixture
def numerical_gradient():
    """``numerical_gradient(f, x, h=1e-5)``: central-difference gradient of scalar ``f`` at ``x``
    (``x`` is perturbed in place and restored)."""
    return _numerical_gradient


@pytest.fixture
def relative_error():
    """``relative_error(a, b) = ||a - b|| / max(||a||, ||b||)`` (0 when both are 0)."""

    def rel(a, b):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        scale = max(np.linalg.norm(a), np.linalg.norm(b))
        return 0.0 if scale == 0 else float(np.linalg.norm(a - b) / scale)

    return rel
