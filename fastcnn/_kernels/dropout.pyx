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


cdef inline void _mask_block(const floating* x, floating* y, uint8_t* mask, uint32_t j0,
                             Py_ssize_t len_, uint32_t k0, uint32_t k1, uint32_t threshold,
                             floating scale) noexcept nogil:
    """mask[k] = keep(j0 + k); y[k] = x[k] * (scale if kept else 0)."""
    cdef Py_ssize_t k
    cdef uint32_t h
    cdef uint8_t keep
    for k in range(len_):
        h = _fmix32(_fmix32((j0 + <uint32_t> k) ^ k0) ^ k1)
        keep = (h >> 1) >= threshold
        mask[k] = keep
        y[k] = x[k] * (scale if keep else 0)


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


cdef inline void _apply_block(const floating* x, const uint8_t* mask, floating* y,
                              Py_ssize_t len_, floating scale) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(len_):
        y[k] = x[k] * (scale if mask[k] else 0)


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
