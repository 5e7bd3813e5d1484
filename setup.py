"""Build the fastcnn kernels.

Every kernel module in ``fastcnn/_kernels`` is compiled twice from the same ``.pyx`` source:

* ``fastcnn._kernels._generic.*`` with the compiler's default target (baseline x86-64: SSE2),
  which runs on any CPU the wheel can be installed on;
* ``fastcnn._kernels._avx2.*`` with ``-mavx2 -mfma`` and ``fastcnn._kernels._avx512.*`` with
  AVX-512 (F, VL, BW, DQ) on top (x86-64 + GCC/Clang only). At import time the widest variant the
  CPU supports is picked (see ``fastcnn/_kernels/__init__.py``), so a wheel built on a new machine
  still runs on an old one.

Environment variables read here:

``FASTCNN_NO_OPENMP=1``    build serial kernels (no ``-fopenmp``).
``FASTCNN_NO_AVX2=1``      build only the generic variant.
``FASTCNN_NO_AVX512=1``    build the generic and AVX2 variants only.
``FASTCNN_CYTHON_DEBUG=1`` turn bounds/wraparound/initialisation checks back on.
"""

import glob
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

# Every .pyx in fastcnn/_kernels is a kernel module (a new family only adds its file).
KERNELS = sorted(os.path.splitext(os.path.basename(p))[0]
                 for p in glob.glob(os.path.join("fastcnn", "_kernels", "*.pyx")))
VARIANT_FLAGS = {
    "generic": ["-Wno-psabi"],  # the 32-byte vector helpers are inline: no ABI is crossed
    "avx2": ["-mavx2", "-mfma"],
    # Auto-vectorised loops stay 256 bits wide (gcc made the pooling loop 4x slower with 512);
    # the explicit 64-byte vectors of _microkernels.h still use full ZMM registers.
    "avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq",
               "-mprefer-vector-width=256"],
}

OPENMP_PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d\n", n > 0);
    return n > 0 ? 0 : 1;
}
"""


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _compiler_command():
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()


def openmp_works():
    """Compile, link and run a tiny OpenMP program with the compiler Python was built with."""
    if sys.platform == "win32":
        return True  # MSVC's /openmp needs no runtime probe
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as fh:
            fh.write(OPENMP_PROBE)
        try:
            subprocess.run(_compiler_command() + ["-fopenmp", src, "-o", exe],
                           check=True, capture_output=True, timeout=120)
            subprocess.run([exe], check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
    return True


def avx2_buildable():
    machine = platform.machine().lower()
    if machine not in {"x86_64", "amd64", "i686", "x86"} or sys.platform == "win32":
        return False
    return not _env_flag("FASTCNN_NO_AVX2")


def extensions():
    use_openmp = False
    if _env_flag("FASTCNN_NO_OPENMP"):
        print("fastcnn: FASTCNN_NO_OPENMP is set: building serial kernels")
    elif openmp_works():
        use_openmp = True
    else:
        warnings.warn("fastcnn: the C compiler cannot build and run an OpenMP program; "
                      "building serial kernels (install libgomp / libomp to get threads)")

    omp_compile = (["/openmp"] if sys.platform == "win32" else ["-fopenmp"]) if use_openmp else []
    omp_link = ([] if sys.platform == "win32" else ["-fopenmp"]) if use_openmp else []
    # -fno-math-errno: sqrt() becomes the instruction (no errno to set, which kernels never
    # read), so loops that take square roots vectorise (the Adam update); same values.
    base_compile = ["/O2"] if sys.platform == "win32" else ["-O3", "-fno-math-errno"]

    directives = {
        "language_level": 3,
        "boundscheck": False,
        "wraparound": False,
        "initializedcheck": False,
        "cdivision": True,
    }
    if _env_flag("FASTCNN_CYTHON_DEBUG"):
        directives.update(boundscheck=True, wraparound=True, initializedcheck=True)

    variants = ["generic"]
    if avx2_buildable():
        variants.append("avx2")
        if not _env_flag("FASTCNN_NO_AVX512"):
            variants.append("avx512")
    modules = []
    for variant in variants:
        exts = [
            Extension(
                f"fastcnn._kernels._{variant}.{name}",
                [f"fastcnn/_kernels/{name}.pyx"],
                depends=glob.glob("fastcnn/_kernels/*.h") + glob.glob("fastcnn/_kernels/*.pxi"),
                include_dirs=[np.get_include()],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=base_compile + VARIANT_FLAGS[variant] + omp_compile,
                extra_link_args=omp_link,
            )
            for name in KERNELS
        ]
        # Each variant gets its own directory for the generated C, since both come from one .pyx.
        modules += cythonize(exts, compiler_directives=directives,
                             build_dir=os.path.join("build", "cython", variant), quiet=True)
    return modules


setup(ext_modules=extensions())
