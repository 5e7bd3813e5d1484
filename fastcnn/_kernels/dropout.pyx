"""Dropout masks from a counter-based generator, and their application (DESIGN.md section 3).

The keep/drop decision of element ``j`` of sample ``n`` (``n`` the sample's index in the whole
batch, ``sample_offset + local index``) is a pure function of ``(seed, step, n, j)``:

    K  = splitmix64(splitmix64(splitmix64(seed) ^ step) ^ n)          (64-bit sample key)
    h  = fmix32(fmix32(j ^ lo32(K)) ^ hi32(K))                        (murmur3's finaliser)
    keep = (h >> 1) >= threshold,   threshold = round(p * 2**31)

so the mask does not depend on the thread count, on how the batch is chunked, or on which process
holds which shard. The per-sample key uses the full 64-bit splitmix64 finaliser (once per sample);
the per-element hash is two rounds of the 32-bit murmur3 finaliser, which has full avalanche and
vectorises with AVX2's 32-bit multiplies (a 64-bit multiply per element does not). ``j`` must be
below 2**32 (checked in Python). p = 0 gives threshold 0 (keep all), p = 1 gives 2**31 (drop all).

Parallel scheme: ``prange`` over (sample, block of BLOCK elements) pairs; each iteration owns its
block of ``y`` and ``mask``.
"""

from cython.parallel cimport prange
from cython cimport floating
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef enum:
    BLOCK = 4096  # elements per prange iteration


cdef inline uint64_t _splitmix64(uint64_t z) noexcept nogil:
    z = z + <uint64_t> 0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * <uint64_t> 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t> 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline uint32_t _fmix32(uint32_t h) noexcept nogil:
    h = h ^ (h >> 16)
    h = h * <uint32_t> 0x85EBCA6BU
    h = h ^ (h >> 13)
    h = h * <uint32_t> 0xC2B2AE35U
    return h ^ (h >> 16)


cdef inline uint64_t _sample_key(uint64_t seed, uint64_t step, uint64_t n) noexcept nogil:
    return _splitmix64(_splitmix64(_splitmix64(seed) ^ step) ^ n)


# The element hash in 8 lanes of 32 bits (GCC/Clang vector extensions), 32 elements a step. The
# scalar loop, left to the compiler, mixed in 64-bit index arithmetic and lane shuffles (~2.5
# cycles per element, 3-7x the time of a copy). With AVX2, float32 hashes 8 consecutive elements
# a vector, whose keep lanes select y's scale directly, and packs the four keep vectors of a step
# into mask bytes; otherwise hash vector q holds element 4*l + q in lane l, so the 0/1 lanes
# combine by shifts into the mask bytes in element order, and y follows from the bytes. Every
# element goes through exactly the operations of the scalar form (_fmix32 below), so the mask and
# y are unchanged (hash-compared against the scalar build). The keep test (h >> 1) >= threshold
# is a signed compare (h >> 1) > threshold - 1: both sides lie in [-1, 2**31 - 1]. The byte
# order assumes little-endian lanes; elsewhere everything takes the scalar path.
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    typedef uint32_t dr_vu __attribute__((vector_size(32)));
    typedef int32_t dr_vi __attribute__((vector_size(32)));
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define DR_VECTOR 1
    #else
    #define DR_VECTOR 0
    #endif
    static inline dr_vu dr_fmix32(dr_vu h) {
        h ^= h >> 16; h *= 0x85EBCA6BU; h ^= h >> 13; h *= 0xC2B2AE35U; return h ^ (h >> 16);
    }
    /* The 32 mask bytes (0/1) of elements j .. j + 31, in element order: hash vector q holds
       element 4*l + q in lane l, so the 0/1 lanes combine by shifts into bytes in order. */
    static inline dr_vu dr_mask32(uint32_t j, uint32_t k0, uint32_t k1, int32_t tm1) {
        const dr_vu iota = {0, 4, 8, 12, 16, 20, 24, 28};
        dr_vu w = {0};
        for (uint32_t q = 0; q < 4; q++) {
            dr_vu h = dr_fmix32(dr_fmix32((iota + (j + q)) ^ k0) ^ k1);
            w |= (dr_vu)((dr_vi)(h >> 1) > tm1) & (1u << (8 * q));
        }
        return w;
    }
    #ifdef __AVX2__
    #include <immintrin.h>
    #endif
    /* mask[0:32*n32] = keep(j0 + k); y = x * (scale if kept else 0) for float32 x (x == NULL:
       the mask only). Returns the number of elements done. With AVX2 the hash runs on 8
       consecutive elements a vector, whose keep lanes select y's scale directly, and the four
       keep vectors of a 32-element step are packed into mask bytes (packs + one permute). */
    static ptrdiff_t dr_mask_f(const float *x, float *y, uint8_t *mask, uint32_t j0,
                               ptrdiff_t n32, uint32_t k0, uint32_t k1, uint32_t threshold,
                               float scale) {
        const int32_t tm1 = (int32_t)(threshold - 1u);
        if (!DR_VECTOR) return 0;
    #ifdef __AVX2__
        if (x != NULL) {
            const dr_vu iota = {0, 1, 2, 3, 4, 5, 6, 7};
            const __m256 vs = _mm256_set1_ps(scale);
            const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            const __m256i one = _mm256_set1_epi8(1);
            for (ptrdiff_t b = 0; b < n32; b++) {
                __m256i keep[4];
                for (int v = 0; v < 4; v++) {
                    uint32_t j = j0 + (uint32_t)(32 * b + 8 * v);
                    dr_vu h = dr_fmix32(dr_fmix32((iota + j) ^ k0) ^ k1);
                    dr_vi kv = (dr_vi)(h >> 1) > tm1;
                    memcpy(&keep[v], &kv, 32);
                    __m256 sel = _mm256_and_ps(vs, _mm256_castsi256_ps(keep[v]));
                    _mm256_storeu_ps(y + 32 * b + 8 * v,
                                     _mm256_mul_ps(_mm256_loadu_ps(x + 32 * b + 8 * v), sel));
                }
                __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(keep[0], keep[1]),
                                               _mm256_packs_epi32(keep[2], keep[3]));
                p = _mm256_and_si256(_mm256_permutevar8x32_epi32(p, order), one);
                _mm256_storeu_si256((__m256i *)(mask + 32 * b), p);
            }
            return 32 * n32;
        }
    #endif
        for (ptrdiff_t b = 0; b < n32; b++) {
            dr_vu w = dr_mask32(j0 + (uint32_t)(32 * b), k0, k1, tm1);
            memcpy(mask + 32 * b, &w, 32);
        }
        if (x != NULL)
            for (ptrdiff_t k = 0; k < 32 * n32; k++) y[k] = x[k] * (mask[k] ? scale : 0.0f);
        return 32 * n32;
    }
    """
    Py_ssize_t dr_mask_f(const float* x, float* y, uint8_t* mask, uint32_t j0, Py_ssize_t n32,
                         uint32_t k0, uint32_t k1, uint32_t threshold, float scale) noexcept nogil


cdef inline void _apply_block(const floating* x, const uint8_t* mask, floating* y,
                              Py_ssize_t len_, floating scale) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(len_):
        y[k] = x[k] * (scale if mask[k] else 0)


cdef inline void _mask_block(const floating* x, floating* y, uint8_t* mask, uint32_t j0,
                             Py_ssize_t len_, uint32_t k0, uint32_t k1, uint32_t threshold,
                             floating scale) noexcept nogil:
    """mask[k] = keep(j0 + k); y[k] = x[k] * (scale if kept else 0). Whole groups of 32 in
    vector lanes (float32: y too, while the block is in registers), the rest in scalar code;
    the same result either way."""
    cdef Py_ssize_t k, done
    cdef uint32_t h
    if floating is float:
        done = dr_mask_f(x, y, mask, j0, len_ // 32, k0, k1, threshold, scale)
    else:
        done = dr_mask_f(NULL, NULL, mask, j0, len_ // 32, k0, k1, threshold, 0)
        _apply_block(x, mask, y, done, scale)
    for k in range(done, len_):
        h = _fmix32(_fmix32((j0 + <uint32_t> k) ^ k0) ^ k1)
        mask[k] = (h >> 1) >= threshold
    _apply_block(x + done, mask + done, y + done, len_ - done, scale)


def dropout_forward(const floating[:, ::1] x,    # IN  (N, D) one row per sample
                    floating[:, ::1] y,          # OUT (N, D) x * mask * scale
                    uint8_t[:, ::1] mask,        # OUT (N, D) 1 = kept
                    uint64_t seed, uint64_t step, uint64_t sample_offset,
                    uint32_t threshold, double scale, int n_threads):
    """Element dropout: mask[n, j] = keep(seed, step, sample_offset + n, j);
    y = x * mask * scale with scale = 1/(1-p) (0 when p = 1). D < 2**32."""
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1]
    cdef Py_ssize_t per = (D + BLOCK - 1) // BLOCK
    cdef Py_ssize_t it, n, j0
    cdef uint64_t key
    cdef floating s = <floating> scale
    if N == 0 or D == 0:
        return
    # Race-free: iteration it owns y[n, j0:j0+BLOCK] and mask[n, j0:j0+BLOCK].
    for it in prange(N * per, nogil=True, schedule='static', num_threads=n_threads):
        n = it // per
        j0 = (it % per) * BLOCK
        key = _sample_key(seed, step, sample_offset + <uint64_t> n)
        _mask_block(&x[n, j0], &y[n, j0], &mask[n, j0], <uint32_t> j0,
                    min(<Py_ssize_t> BLOCK, D - j0), <uint32_t> key, <uint32_t> (key >> 32),
                    threshold, s)


def channel_mask(uint8_t[:, ::1] mask,    # OUT (N, C) 1 = channel kept
                 uint64_t seed, uint64_t step, uint64_t sample_offset, uint32_t threshold):
    """Dropout2d mask: mask[n, c] = keep(seed, step, sample_offset + n, c). Serial (N*C is
    small next to the data it scales)."""
    cdef Py_ssize_t N = mask.shape[0], C = mask.shape[1], n, c
    cdef uint64_t key
    cdef uint32_t k0, k1, h
    with nogil:
        for n in range(N):
            key = _sample_key(seed, step, sample_offset + <uint64_t> n)
            k0 = <uint32_t> key
            k1 = <uint32_t> (key >> 32)
            for c in range(C):
                h = _fmix32(_fmix32(<uint32_t> c ^ k0) ^ k1)
                mask[n, c] = (h >> 1) >= threshold


def apply_mask(const floating[::1] x,      # IN  (size,)
               const uint8_t[::1] mask,    # IN  (size,)
               floating[::1] y,            # OUT (size,) may be x's memory (in place)
               double scale, int n_threads):
    """y = x * mask * scale elementwise (dropout backward, or forward with a given mask)."""
    cdef Py_ssize_t size = x.shape[0]
    cdef Py_ssize_t n_blocks = (size + BLOCK - 1) // BLOCK, blk
    cdef floating s = <floating> scale
    if size == 0:
        return
    # Race-free: block blk owns y[blk*BLOCK : (blk+1)*BLOCK].
    for blk in prange(n_blocks, nogil=True, schedule='static', num_threads=n_threads):
        _apply_block(&x[blk * BLOCK], &mask[blk * BLOCK], &y[blk * BLOCK],
                     min(<Py_ssize_t> BLOCK, size - blk * BLOCK), s)


cdef inline void _scale_row(const floating* x, floating* y, Py_ssize_t len_,
                            floating v) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(len_):
        y[k] = x[k] * v


def apply_channel_mask(const floating[:, ::1] x,   # IN  (N*C, S) one row per (n, c)
                       const uint8_t[::1] mask,    # IN  (N*C,)
                       floating[:, ::1] y,         # OUT (N*C, S) may be x's memory
                       double scale, int n_threads):
    """y[r, :] = x[r, :] * mask[r] * scale (Dropout2d forward and backward)."""
    cdef Py_ssize_t R = x.shape[0], S = x.shape[1], r
    cdef floating s = <floating> scale
    if R == 0 or S == 0:
        return
    # Race-free: iteration r owns y[r, :].
    for r in prange(R, nogil=True, schedule='static', num_threads=n_threads):
        _scale_row(&x[r, 0], &y[r, 0], S, s if mask[r] else 0)
