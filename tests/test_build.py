"""The installed build: OpenMP, the kernel variant in use, and float behaviour left intact."""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastcnn
from fastcnn import _kernels


@pytest.mark.skipif(os.environ.get("FASTCNN_SKIP_OPENMP_TEST") == "1",
                    reason="FASTCNN_SKIP_OPENMP_TEST=1: a serial build is expected")
def test_openmp_enabled():
    assert fastcnn.openmp_enabled(), (
        "fastcnn was built without OpenMP (the kernels run on one thread); install a compiler "
        "with OpenMP support or set FASTCNN_SKIP_OPENMP_TEST=1 for a deliberately serial build")


def test_every_kernel_module_comes_from_one_variant():
    for name in ("conv", "pool", "elementwise", "_openmp"):
        module = getattr(_kernels, name)
        assert module.__name__ == f"fastcnn._kernels._{_kernels.VARIANT}.{name}"


def test_avx2_variant_used_when_cpu_supports_it():
    from fastcnn._kernels._generic import _openmp as generic
    try:
        from fastcnn._kernels._avx2 import _openmp as avx2  # noqa: F401
    except ImportError:
        pytest.skip("the AVX2 variant was not built on this machine")
    expected = ("avx512" if generic.cpu_has_avx512() else
                "avx2" if generic.cpu_has_avx2_fma() else "generic")
    if os.environ.get("FASTCNN_KERNELS") in ("generic", "avx2", "avx512"):
        expected = os.environ["FASTCNN_KERNELS"]
    assert _kernels.VARIANT == expected
    isa = {"avx512": "avx512", "avx2": "avx2+fma", "generic": "sse2"}[expected]
    assert fastcnn.kernel_isa() == isa


def test_generic_variant_agrees_with_the_default(tmp_path):
    """FASTCNN_KERNELS=generic loads the baseline build, which computes the same convolution."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 12, 12))
    w = rng.standard_normal((5, 3, 3, 3))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    code = ("import numpy as np, fastcnn, fastcnn.functional as F; "
            f"x = np.load({str(tmp_path / 'x.npy')!r}); w = np.load({str(tmp_path / 'w.npy')!r}); "
            f"np.save({str(tmp_path / 'y.npy')!r}, F.conv2d(x, w, padding=1)); "
            "print(fastcnn._kernels.VARIANT)")
    env = dict(os.environ, FASTCNN_KERNELS="generic")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "generic"
    y_generic = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(y_generic, fastcnn.functional.conv2d(x, w, padding=1),
                               rtol=1e-12, atol=1e-12)


def test_bad_kernel_override_is_a_clear_error(tmp_path):
    env = dict(os.environ, FASTCNN_KERNELS="avx9000")
    out = subprocess.run([sys.executable, "-c", "import fastcnn"], env=env, cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "FASTCNN_KERNELS must be" in out.stderr and "avx9000" in out.stderr


def test_importing_does_not_flush_subnormals():
    """Built without -ffast-math: loading the kernels must not switch on flush-to-zero."""
    tiny = np.float32(1e-38)
    assert tiny / np.float32(1e4) != 0


def test_thread_setting_round_trip():
    before = fastcnn.get_num_threads()
    try:
        fastcnn.set_num_threads(3)
        assert fastcnn.get_num_threads() == 3
    finally:
        fastcnn.set_num_threads(None)
    assert fastcnn.get_num_threads() == before


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                      ("2", TypeError), (True, TypeError)],
                         ids=["zero", "negative", "float", "str", "bool"])
def test_bad_thread_counts_rejected(bad, exc):
    with pytest.raises(exc, match="number of threads"):
        fastcnn.set_num_threads(bad)


def test_default_threads_honour_omp_num_threads(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", "import fastcnn; print(fastcnn.get_num_threads())"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"


def test_unbuilt_source_checkout_fails_with_one_sentence(tmp_path):
    """`python -m fastcnn` inside a checkout whose kernels are not built says why and what to do
    (it used to end in an ImportError traceback about _openmp)."""
    src = pathlib.Path(fastcnn.__file__).parent
    shutil.copytree(src, tmp_path / "fastcnn",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    (tmp_path / "setup.py").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "fastcnn", "info"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.startswith("fastcnn: error: fastcnn's compiled kernels are not built")
    assert "pip install ." in out.stderr and "Traceback" not in out.stderr
