"""OpenMP and CPU-feature probes shared by every kernel module."""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fastcnn_openmp_enabled(void) { return 1; }
    static int fastcnn_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int fastcnn_openmp_enabled(void) { return 0; }
    static int fastcnn_omp_max_threads(void) { return 1; }
    #endif

    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    static int fastcnn_cpu_has_avx2_fma(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    static int fastcnn_cpu_has_avx512(void) {
        __builtin_cpu_init();
        return fastcnn_cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f")
            && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512dq");
    }
    #else
    static int fastcnn_cpu_has_avx2_fma(void) { return 0; }
    static int fastcnn_cpu_has_avx512(void) { return 0; }
    #endif

    #if defined(__AVX512F__)
    static const char *fastcnn_isa = "avx512";
    #elif defined(__AVX2__) && defined(__FMA__)
    static const char *fastcnn_isa = "avx2+fma";
    #elif defined(__SSE2__) || defined(_M_X64)
    static const char *fastcnn_isa = "sse2";
    #else
    static const char *fastcnn_isa = "generic";
    #endif
    """
    int fastcnn_openmp_enabled() nogil
    int fastcnn_omp_max_threads() nogil
    int fastcnn_cpu_has_avx2_fma() nogil
    int fastcnn_cpu_has_avx512() nogil
    const char *fastcnn_isa


def openmp_enabled():
    """True when this build of the kernels was compiled with OpenMP."""
    return bool(fastcnn_openmp_enabled())


def omp_max_threads():
    """What the OpenMP runtime would use by default (1 without OpenMP)."""
    return fastcnn_omp_max_threads()


def cpu_has_avx2_fma():
    """True when the CPU running this process supports both AVX2 and FMA."""
    return bool(fastcnn_cpu_has_avx2_fma())


def cpu_has_avx512():
    """True when the CPU running this process supports AVX-512 F, VL, BW and DQ (and AVX2+FMA)."""
    return bool(fastcnn_cpu_has_avx512())


def compiled_isa():
    """The instruction set this module was compiled for: 'avx512', 'avx2+fma', 'sse2' or
    'generic'."""
    return fastcnn_isa.decode()
