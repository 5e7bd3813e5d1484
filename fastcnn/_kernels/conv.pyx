"""General 2-D convolution: forward, input gradient and weight gradient, with stride, asymmetric
zero padding, dilation and groups (DESIGN.md section 3).

Shapes (NCHW, C-contiguous, validated by ``fastcnn.functional.conv``):

    x  (N, C, H, W)     w  (F, C/G, KH, KW)     b  (F,)     y, dy  (N, F, OH, OW)
    OH = (H + pt + pb - dh*(KH-1) - 1) // sh + 1   (the same for OW with pl, pr, dw, sw)

One mechanism serves every shape ("phase planes" + register tiles, see ``_convtiles.h``):

* The input is zero-padded and split by stride phase: plane (c, rh, rw) holds
  ``xp[c, a*sh + rh, b*sw + rw]`` (``HPh x WPh``). Output (i, j) and tap (p, q) then read plane
  (c, (p*dh) % sh, (q*dw) % sw) at row i + (p*dh)//sh, column j + (q*dw)//sw: a strided,
  dilated convolution becomes a stride-1 correlation with a table of tap offsets.
* Forward: on "wide rows" (output (i, j) at flat index i*WPh + j, the WPh - OW extra columns
  computed and dropped), a tile of MR output channels x NR positions is held in registers; each
  packed weight is broadcast against NR/NL input vectors read at its tap offset.
* Forward, filters on the lanes (``forward_lanes``): tiles of 6 real output positions (read
  through a table of position offsets: no wide-row column is computed) x 2 vectors of filters
  (1 vector when one holds every filter of a group: 16 float filters with AVX-512); each input
  value is broadcast against packed weight vectors, and the tile is stored
  transposed with bias and ReLU. At stride 1 the input gradient is this same forward pass over
  the zero-bordered output gradient with the weight turned by 180 degrees (channels and filters
  exchanged; dilation carries over).
* Input gradient: for each stride phase (rh, rw) of the padded input, only the taps with
  (p*dh) % sh == rh and (q*dw) % sw == rw reach it; over the zero-bordered output gradient it is
  again a stride-1 correlation (channels and filters exchanged), with the same tiles. No product
  with a stride gap is ever formed.
* Weight gradient: tiles of MR taps x NV vectors of filters over the output gradient laid out
  (N, OH*OW, F), reading the zero-padded input with the stride itself (no phase split), summed
  over chunks of images whose size the caller derives from the shapes (never from the thread
  count); the chunks' partial sums are then added in index order. Or
  ("rows") tiles of filters x taps with the positions on the lanes: dot products along wide rows.
* ``*_direct``: the plain definitions, leaving out every tap that reads padding or falls in a
  stride gap. They give exact IEEE semantics when a weight (or input) is inf or NaN, and are the
  test oracle's "direct" algorithm.

Every reduction runs in an order fixed by the shapes, so results are bitwise identical for any
number of threads. Scratch (phase planes, packed weights, offsets, partial sums) is passed in by
the caller (a workspace owned by the layer): the kernels never allocate.

SERIAL: a loop gets no more threads than it has work for (``_threads.pxi``), and with one
thread the tasks run in a plain loop, not in a ``prange``: libgomp makes a team even of one
thread, and its barriers make two futex system calls per parallel region (0.5 us a region
measured, against nothing for the loop), several percent of a batch-1 forward whose layers
take 2-30 us.
"""

from cython.parallel cimport prange
from cython cimport floating
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memcmp, memcpy, memset, strcmp

from numpy import ndarray as ndarray_type

include "_pad_plane.pxi"
include "_bound.pxi"
include "_threads.pxi"

cdef extern from "_convtiles.h" nogil:
    const int FC_NL_F
    const int FC_NL_D
    void fc_gtile6x2_f(const float*, const float*, const Py_ssize_t*, Py_ssize_t, float*,
                       Py_ssize_t)
    void fc_gtile4x3_f(const float*, const float*, const Py_ssize_t*, Py_ssize_t, float*,
                       Py_ssize_t)
    void fc_gtile2x4_f(const float*, const float*, const Py_ssize_t*, Py_ssize_t, float*,
                       Py_ssize_t)
    void fc_gtile1x4_f(const float*, const float*, const Py_ssize_t*, Py_ssize_t, float*,
                       Py_ssize_t)
    void fc_gtile6x2_d(const double*, const double*, const Py_ssize_t*, Py_ssize_t, double*,
                       Py_ssize_t)
    void fc_gtile4x3_d(const double*, const double*, const Py_ssize_t*, Py_ssize_t, double*,
                       Py_ssize_t)
    void fc_gtile2x4_d(const double*, const double*, const Py_ssize_t*, Py_ssize_t, double*,
                       Py_ssize_t)
    void fc_gtile1x4_d(const double*, const double*, const Py_ssize_t*, Py_ssize_t, double*,
                       Py_ssize_t)
    # (x, x_img, xoff, xrow, xcol, g, g_img, ldg, N, OH, OW, c, ldc)
    void fc_wtile6x2_f(const float*, Py_ssize_t, const Py_ssize_t*, Py_ssize_t, Py_ssize_t,
                       const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                       float*, Py_ssize_t)
    void fc_wtile12x1_f(const float*, Py_ssize_t, const Py_ssize_t*, Py_ssize_t, Py_ssize_t,
                        const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                        Py_ssize_t, float*, Py_ssize_t)
    void fc_wtile6x2_d(const double*, Py_ssize_t, const Py_ssize_t*, Py_ssize_t, Py_ssize_t,
                       const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                       Py_ssize_t, double*, Py_ssize_t)
    void fc_wtile12x1_d(const double*, Py_ssize_t, const Py_ssize_t*, Py_ssize_t, Py_ssize_t,
                        const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                        Py_ssize_t, double*, Py_ssize_t)

cdef extern from "_convtiles.h" nogil:
    void fc_flanes6x2_f(const float*, const Py_ssize_t*, const Py_ssize_t*, Py_ssize_t,
                        const float*, const float*, int, Py_ssize_t, Py_ssize_t, float*,
                        float**, Py_ssize_t, float*, int, int, int)
    void fc_flanes6x2_d(const double*, const Py_ssize_t*, const Py_ssize_t*, Py_ssize_t,
                        const double*, const double*, int, Py_ssize_t, Py_ssize_t, double*,
                        double**, Py_ssize_t, double*, int, int, int)
    void fc_flanes6x1_f(const float*, const Py_ssize_t*, const Py_ssize_t*, Py_ssize_t,
                        const float*, const float*, int, Py_ssize_t, Py_ssize_t, float*,
                        float**, Py_ssize_t, float*, int, int, int)
    void fc_flanes6x1_d(const double*, const Py_ssize_t*, const Py_ssize_t*, Py_ssize_t,
                        const double*, const double*, int, Py_ssize_t, Py_ssize_t, double*,
                        double**, Py_ssize_t, double*, int, int, int)

cdef extern from "_convtiles.h" nogil:
    void fc_rtile4x3_f(const float*, Py_ssize_t, const Py_ssize_t*, const float*, Py_ssize_t,
                       const Py_ssize_t*, Py_ssize_t, Py_ssize_t, int, float*, Py_ssize_t)
    void fc_rtile2x6_f(const float*, Py_ssize_t, const Py_ssize_t*, const float*, Py_ssize_t,
                       const Py_ssize_t*, Py_ssize_t, Py_ssize_t, int, float*, Py_ssize_t)
    void fc_rtile1x12_f(const float*, Py_ssize_t, const Py_ssize_t*, const float*, Py_ssize_t,
                        const Py_ssize_t*, Py_ssize_t, Py_ssize_t, int, float*, Py_ssize_t)
    void fc_rtile1x9_f(const float*, Py_ssize_t, const Py_ssize_t*, const float*, Py_ssize_t,
                       const Py_ssize_t*, Py_ssize_t, Py_ssize_t, int, float*, Py_ssize_t)
    void fc_rtile4x3_d(const double*, Py_ssize_t, const Py_ssize_t*, const double*, Py_ssize_t,
                       const Py_ssize_t*, Py_ssize_t, Py_ssize_t, int, double*, Py_ssize_t)
    void fc_rtile2x6_d(const double*, Py_ssize_t, const Py_ssize_t*, const double*, Py_ssize_t,
                       const Py_ssize_t*, Py_ssize_t, Py_ssize_t, int, double*, Py_ssize_t)
    void fc_rtile1x12_d(const double*, Py_ssize_t, const Py_ssize_t*, const double*, Py_ssize_t,
                        const Py_ssize_t*, Py_ssize_t, Py_ssize_t, int, double*, Py_ssize_t)
    void fc_rtile1x9_d(const double*, Py_ssize_t, const Py_ssize_t*, const double*, Py_ssize_t,
                       const Py_ssize_t*, Py_ssize_t, Py_ssize_t, int, double*, Py_ssize_t)

cdef extern from "_microkernels.h" nogil:
    void fc_dot_block_f(const float* a, Py_ssize_t lda, const float* b, Py_ssize_t ldb,
                        Py_ssize_t K, float* c, Py_ssize_t ldc, Py_ssize_t i0, Py_ssize_t i1,
                        Py_ssize_t j0, Py_ssize_t j1)
    void fc_dot_block_d(const double* a, Py_ssize_t lda, const double* b, Py_ssize_t ldb,
                        Py_ssize_t K, double* c, Py_ssize_t ldc, Py_ssize_t i0, Py_ssize_t i1,
                        Py_ssize_t j0, Py_ssize_t j1)
    void fc_pixels_major_f(const float* g, float* d, Py_ssize_t F, Py_ssize_t P)
    void fc_pixels_major_d(const double* g, double* d, Py_ssize_t F, Py_ssize_t P)
    const int FC_TILE_F  # output positions per tile of the matrix product, float32
    const int FC_TILE_D
    void fc_tile4_f(const float* inp, Py_ssize_t plane, Py_ssize_t row, Py_ssize_t Cin,
                    const float* w, Py_ssize_t ws_o, Py_ssize_t ws_i, Py_ssize_t ws_p,
                    Py_ssize_t ws_q, Py_ssize_t KH, Py_ssize_t KW, float* out, Py_ssize_t ostride)
    void fc_tile4_d(const double* inp, Py_ssize_t plane, Py_ssize_t row, Py_ssize_t Cin,
                    const double* w, Py_ssize_t ws_o, Py_ssize_t ws_i, Py_ssize_t ws_p,
                    Py_ssize_t ws_q, Py_ssize_t KH, Py_ssize_t KW, double* out,
                    Py_ssize_t ostride)
    void fc_tile6_f(const float* inp, Py_ssize_t plane, Py_ssize_t row, Py_ssize_t Cin,
                    const float* w, Py_ssize_t ws_o, Py_ssize_t ws_i, Py_ssize_t ws_p,
                    Py_ssize_t ws_q, Py_ssize_t KH, Py_ssize_t KW, float* out, Py_ssize_t ostride)
    void fc_tile6_d(const double* inp, Py_ssize_t plane, Py_ssize_t row, Py_ssize_t Cin,
                    const double* w, Py_ssize_t ws_o, Py_ssize_t ws_i, Py_ssize_t ws_p,
                    Py_ssize_t ws_q, Py_ssize_t KH, Py_ssize_t KW, double* out,
                    Py_ssize_t ostride)

    const int FC_LANES_F
    const int FC_LANES_D
    void fc_gemrow8_f(const float* b, Py_ssize_t ldb, const float* a, Py_ssize_t sa_k,
                      Py_ssize_t K, float* c)
    void fc_gemrow8_d(const double* b, Py_ssize_t ldb, const double* a, Py_ssize_t sa_k,
                      Py_ssize_t K, double* c)
    void fc_gemrow4_f(const float* b, Py_ssize_t ldb, const float* a, Py_ssize_t sa_k,
                      Py_ssize_t K, float* c)
    void fc_gemrow4_d(const double* b, Py_ssize_t ldb, const double* a, Py_ssize_t sa_k,
                      Py_ssize_t K, double* c)
    void fc_gemrow2_f(const float* b, Py_ssize_t ldb, const float* a, Py_ssize_t sa_k,
                      Py_ssize_t K, float* c)
    void fc_gemrow2_d(const double* b, Py_ssize_t ldb, const double* a, Py_ssize_t sa_k,
                      Py_ssize_t K, double* c)

cdef enum:
    OB = 6           # rows of C per block of the matrix product (fc_tile6: 12 accumulators)
    # most blocks of C rows per task of the matrix product (their A rows and one B panel stay
    # in L2 while the column tiles go by)
    GEMM_BLOCKS = 8
    NT_ROWS = 16     # rows of a per task of gemm_nt (4 register tiles)
    NT_COLS = 48     # rows of b per task of gemm_nt (16 register tiles)
    MAX_TILE = 32    # the largest FC_TILE of any build
    MAX_CTILE = 512  # >= MR * NV * NL of every register tile (6*2*32 with AVX-512 float32)
    TILES_PER_TASK = 4  # wide-row tiles per forward / input-gradient task
    LANES = 16       # independent partial sums in _sum
    FTILE_NP = 6     # output positions per filters-on-lanes tile (fc_flanes6x2)
    LANE_TILES = 4   # filters-on-lanes tiles per task
    # Taps per chunk of a long filters-on-lanes sum: one chunk of a filter block's packed
    # weights (LANE_CHUNK * NF values, 16 KB with 32-byte vectors) stays in L1 over the task's
    # tiles; a task runs at most CHUNK_TILES tiles then (its running sums live on its stack).
    LANE_CHUNK = 256
    CHUNK_TILES = 16
    MAX_NF = 32      # >= NF of every build (2 vectors of float32 lanes with AVX-512)
    PF_Y_TAPS = 64   # sums of at least this many taps prefetch their output lines (fc_flanes)


# ---------------------------------------------------------------------------------------------
# Tile selection and dispatch
# ---------------------------------------------------------------------------------------------

def gtile_shape(Py_ssize_t M, bint is_double):
    """(MR, NR) of the forward / input-gradient register tile for M output rows: the tile that
    wastes the fewest rows (the wider one on ties)."""
    cdef Py_ssize_t NL = FC_NL_D if is_double else FC_NL_F
    best, best_waste = 6, None
    for mr in (6, 4, 2, 1):
        waste = (M + mr - 1) // mr * mr - M
        if best_waste is None or waste < best_waste:
            best, best_waste = mr, waste
    return best, {6: 2, 4: 3, 2: 4, 1: 4}[best] * NL


cdef inline void _gtile(Py_ssize_t mr, const floating* a, const floating* b, const Py_ssize_t* off,
                        Py_ssize_t K, floating* c, Py_ssize_t ldc) noexcept nogil:
    if floating is float:
        if mr == 6:
            fc_gtile6x2_f(a, b, off, K, c, ldc)
        elif mr == 4:
            fc_gtile4x3_f(a, b, off, K, c, ldc)
        elif mr == 2:
            fc_gtile2x4_f(a, b, off, K, c, ldc)
        else:
            fc_gtile1x4_f(a, b, off, K, c, ldc)
    else:
        if mr == 6:
            fc_gtile6x2_d(a, b, off, K, c, ldc)
        elif mr == 4:
            fc_gtile4x3_d(a, b, off, K, c, ldc)
        elif mr == 2:
            fc_gtile2x4_d(a, b, off, K, c, ldc)
        else:
            fc_gtile1x4_d(a, b, off, K, c, ldc)


def wtile_shape(Py_ssize_t Fg, bint is_double):
    """(MR taps, NF filters) of the weight-gradient tile: one vector of filters (12 taps) when a
    group has at most one vector of filters, else two vectors (6 taps)."""
    cdef Py_ssize_t NL = FC_NL_D if is_double else FC_NL_F
    return (12, NL) if Fg <= NL else (6, 2 * NL)


cdef inline void _wtile(Py_ssize_t mr, const floating* x, Py_ssize_t x_img, const Py_ssize_t* xoff,
                        Py_ssize_t xrow, Py_ssize_t xcol, const floating* g, Py_ssize_t g_img,
                        Py_ssize_t ldg, Py_ssize_t N, Py_ssize_t OH, Py_ssize_t OW, floating* c,
                        Py_ssize_t ldc) noexcept nogil:
    if floating is float:
        if mr == 12:
            fc_wtile12x1_f(x, x_img, xoff, xrow, xcol, g, g_img, ldg, N, OH, OW, c, ldc)
        else:
            fc_wtile6x2_f(x, x_img, xoff, xrow, xcol, g, g_img, ldg, N, OH, OW, c, ldc)
    else:
        if mr == 12:
            fc_wtile12x1_d(x, x_img, xoff, xrow, xcol, g, g_img, ldg, N, OH, OW, c, ldc)
        else:
            fc_wtile6x2_d(x, x_img, xoff, xrow, xcol, g, g_img, ldg, N, OH, OW, c, ldc)


# ---------------------------------------------------------------------------------------------
# Layout passes
# ---------------------------------------------------------------------------------------------

cdef inline void _copy_row(const floating* s, Py_ssize_t W, Py_ssize_t left, floating* d,
                           Py_ssize_t n) noexcept nogil:
    """d[b] = s[b - left] for 0 <= b - left < W, else 0, for b < n."""
    cdef Py_ssize_t lo = min(max(left, <Py_ssize_t> 0), n)
    cdef Py_ssize_t hi = min(max(left + W, lo), n), b
    for b in range(lo):
        d[b] = 0
    for b in range(lo, hi):
        d[b] = s[b - left]
    for b in range(hi, n):
        d[b] = 0


cdef inline Py_ssize_t _span_lo(Py_ssize_t v0, Py_ssize_t sw, Py_ssize_t n) noexcept nogil:
    """The first b < n with b*sw + v0 >= 0 (sw >= 1): where a phase's columns start reading x."""
    return min((sw - 1 - v0) // sw if v0 < 0 else 0, n)


cdef inline Py_ssize_t _span_hi(Py_ssize_t W, Py_ssize_t v0, Py_ssize_t sw, Py_ssize_t n,
                                Py_ssize_t lo) noexcept nogil:
    """Past the last b < n with b*sw + v0 < W (at least lo)."""
    return max(min((W - 1 - v0) // sw + 1 if W - 1 - v0 >= 0 else 0, n), lo)


cdef inline void _copy_row_strided(const floating* s, Py_ssize_t v0, Py_ssize_t sw, floating* d,
                                   Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t n) noexcept nogil:
    """d[b] = s[b*sw + v0] for lo <= b < hi, else 0, for b < n (lo, hi: _span_lo, _span_hi)."""
    cdef Py_ssize_t b
    for b in range(lo):
        d[b] = 0
    for b in range(lo, hi):
        d[b] = s[b * sw + v0]
    for b in range(hi, n):
        d[b] = 0


cdef inline void _split_row2(const floating* s, Py_ssize_t W, Py_ssize_t left, floating* d0,
                             floating* d1, Py_ssize_t n) noexcept nogil:
    """d0[b] = s[2b - left] and d1[b] = s[2b + 1 - left] where inside [0, W), else 0, for
    b < n: the two column phases of a zero-padded row in one pass (the interior a vectorised
    deinterleave; the scalar gather per phase was 30% of a stride-2 forward)."""
    # the interior: both phases read inside the row (the spans of _copy_row_strided's phases)
    cdef Py_ssize_t lo = _span_lo(-left, 2, n)
    cdef Py_ssize_t hi = max(min(_span_hi(W, -left, 2, n, lo),
                                 _span_hi(W, 1 - left, 2, n, _span_lo(1 - left, 2, n))), lo)
    cdef Py_ssize_t b, c
    for b in range(lo):
        c = 2 * b - left
        d0[b] = s[c] if 0 <= c < W else 0
        d1[b] = s[c + 1] if 0 <= c + 1 < W else 0
    for b in range(lo, hi):
        d0[b] = s[2 * b - left]
        d1[b] = s[2 * b + 1 - left]
    for b in range(hi, n):
        c = 2 * b - left
        d0[b] = s[c] if 0 <= c < W else 0
        d1[b] = s[c + 1] if 0 <= c + 1 < W else 0


def pad_split(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
              floating[::1] out,               # OUT (N, C, sh, sw, HPh, WPh) (+ slack)
              Py_ssize_t top, Py_ssize_t left, Py_ssize_t sh, Py_ssize_t sw,
              Py_ssize_t HPh, Py_ssize_t WPh, int n_threads):
    """out[n, c, rh, rw, a, b] = x[n, c, a*sh + rh - top, b*sw + rw - left], 0 outside x.

    Zero padding (top rows, left columns; the rest of HPh*sh x WPh*sw on the bottom/right) and
    the split into stride phases in one pass. Parallel over (n, c): each owns its planes. The
    span of a phase's columns that read x depends on the phase only, so it is worked out once per
    phase rather than per row.
    """
    if x.shape[0] * x.shape[1]:
        _pad_split(&x[0, 0, 0, 0], x.shape[0] * x.shape[1], x.shape[2], x.shape[3], &out[0],
                   top, left, sh, sw, HPh, WPh, n_threads)


cdef void _pad_split(const floating* x, Py_ssize_t NC, Py_ssize_t H, Py_ssize_t W,
                     floating* out, Py_ssize_t top, Py_ssize_t left, Py_ssize_t sh,
                     Py_ssize_t sw, Py_ssize_t HPh, Py_ssize_t WPh,
                     int n_threads) noexcept nogil:
    cdef Py_ssize_t nc
    n_threads = _threads_for(NC * sh * sw * HPh * WPh * MOVE, n_threads)
    # Race-free: (n, c) writes only its sh*sw phase planes.
    if n_threads == 1:  # serial: see SERIAL in the header
        for nc in range(NC):
            _pad_split_plane(x, nc, H, W, out, top, left, sh, sw, HPh, WPh)
        return
    for nc in prange(NC, schedule='static', num_threads=n_threads):
        _pad_split_plane(x, nc, H, W, out, top, left, sh, sw, HPh, WPh)


cdef void _pad_split_plane(const floating* x, Py_ssize_t nc, Py_ssize_t H, Py_ssize_t W,
                           floating* out, Py_ssize_t top, Py_ssize_t left, Py_ssize_t sh,
                           Py_ssize_t sw, Py_ssize_t HPh, Py_ssize_t WPh) noexcept nogil:
    """The sh*sw zero-padded phase planes of plane nc of x."""
    cdef Py_ssize_t plane = HPh * WPh, rh, rw, a, h, lo, hi
    cdef floating* d
    cdef const floating* s = x + nc * H * W
    if sh == 1 and sw == 1:
        _pad_plane(s, H, W, top, left, out + nc * plane, HPh, WPh)
        return
    if sw == 2:  # both column phases of a row from one pass over it
        for rh in range(sh):
            d = out + (nc * sh + rh) * 2 * plane
            for a in range(HPh):
                h = a * sh + rh - top
                if h < 0 or h >= H:
                    memset(d + a * WPh, 0, WPh * sizeof(floating))
                    memset(d + plane + a * WPh, 0, WPh * sizeof(floating))
                else:
                    _split_row2(s + h * W, W, left, d + a * WPh, d + plane + a * WPh, WPh)
        return
    for rh in range(sh):
        for rw in range(sw):
            d = out + ((nc * sh + rh) * sw + rw) * plane
            lo = _span_lo(rw - left, sw, WPh)
            hi = _span_hi(W, rw - left, sw, WPh, lo)
            for a in range(HPh):
                h = a * sh + rh - top
                if h < 0 or h >= H:
                    memset(d + a * WPh, 0, WPh * sizeof(floating))
                elif sw == 1:
                    _copy_row(s + h * W, W, left, d + a * WPh, WPh)
                else:
                    _copy_row_strided(s + h * W, rw - left, sw, d + a * WPh, lo, hi, WPh)


def to_pixels_major(const floating[:, :, :, ::1] g,  # IN  (N, F, OH, OW)
                    floating[::1] out,               # OUT (N, OH*OW, F) (+ slack)
                    int n_threads):
    """out[n, i*OW + j, f] = g[n, f, i, j] (fc_pixels_major in _microkernels.h). Parallel
    over n."""
    cdef Py_ssize_t N = g.shape[0], F = g.shape[1], P = g.shape[2] * g.shape[3], n
    if N == 0 or F == 0 or P == 0:
        return
    # Race-free: image n writes only out[n].
    for n in prange(N, nogil=True, schedule='static', num_threads=n_threads):
        if floating is float:
            fc_pixels_major_f(&g[n, 0, 0, 0], &out[n * P * F], F, P)
        else:
            fc_pixels_major_d(&g[n, 0, 0, 0], &out[n * P * F], F, P)


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------

def pack_forward(const floating[:, :, :, ::1] w,  # IN  (F, Cg, KH, KW)
                 floating[::1] apack,             # OUT (G, nfb, Kg, MR)
                 Py_ssize_t G, Py_ssize_t MR):
    """apack[g, fb, k, o] = w[g*Fg + fb*MR + o].flat[k], 0 for the rows past Fg."""
    cdef Py_ssize_t F = w.shape[0], Kg = w.shape[1] * w.shape[2] * w.shape[3]
    cdef Py_ssize_t Fg = F // G, nfb = (Fg + MR - 1) // MR, g, fb, k, o, f
    cdef const floating* ws = &w[0, 0, 0, 0]
    with nogil:
        for g in range(G):
            for fb in range(nfb):
                for k in range(Kg):
                    for o in range(MR):
                        f = fb * MR + o
                        apack[((g * nfb + fb) * Kg + k) * MR + o] = (
                            ws[(g * Fg + f) * Kg + k] if f < Fg else 0)


def forward_offsets(Py_ssize_t Cg, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                    Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t HPh, Py_ssize_t WPh,
                    Py_ssize_t[::1] off):
    """off[(c*KH + p)*KW + q] = flat offset of tap (c, p, q) in a group's phase planes."""
    cdef Py_ssize_t c, p, q
    for c in range(Cg):
        for p in range(KH):
            for q in range(KW):
                off[(c * KH + p) * KW + q] = (
                    ((c * sh + (p * dh) % sh) * sw + (q * dw) % sw) * HPh * WPh
                    + (p * dh) // sh * WPh + (q * dw) // sw)


cdef inline void _store_tile(const floating* ct, Py_ssize_t ldc, Py_ssize_t nrows,
                             Py_ssize_t t0, Py_ssize_t NR, Py_ssize_t T, Py_ssize_t row,
                             Py_ssize_t OW, const floating* bias, bint relu, floating* y,
                             Py_ssize_t y_plane) noexcept nogil:
    """y[o*y_plane + i*OW + j] = ct[o*ldc + u] (+ bias[o], ReLU) for the positions t = t0 + u of
    the tile that are outputs: t < T and j = t % row < OW. Copied by runs of one output row,
    so that the inner loops are contiguous and vectorise."""
    cdef Py_ssize_t n = min(NR, T - t0), o, u, i, j, run, m, r
    cdef floating v, bo
    cdef const floating* src
    cdef floating* dst
    for o in range(nrows):
        bo = bias[o] if bias != NULL else 0
        u = 0
        i = t0 // row
        j = t0 - i * row
        while u < n:
            run = min(n - u, row - j)
            if j < OW:
                m = min(run, OW - j)
                src = ct + o * ldc + u
                dst = y + o * y_plane + i * OW + j
                if relu:
                    for r in range(m):
                        v = src[r] + bo
                        dst[r] = 0 if v < 0 else v  # NaN is kept
                else:
                    for r in range(m):
                        dst[r] = src[r] + bo
            u = u + run
            j = 0
            i = i + 1


def forward(const floating[::1] xs,          # IN  phase planes (N, C, sh, sw, HPh, WPh) + slack
            const floating[::1] apack,       # IN  packed weights (pack_forward)
            const Py_ssize_t[::1] off,       # IN  tap offsets (forward_offsets), Kg of them
            const floating[::1] b,           # IN  (F,) (zeros when there is no bias)
            floating[:, :, :, ::1] y,        # OUT (N, F, OH, OW)
            Py_ssize_t C, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t HPh, Py_ssize_t WPh,
            Py_ssize_t G, Py_ssize_t MR, Py_ssize_t NR, bint relu, int n_threads):
    """y[n,f,i,j] = b[f] + sum_{c,p,q} w[f,c,p,q] * xp[n, g*Cg + c, i*sh + p*dh, j*sw + q*dw]
    (then max(., 0) if relu), on wide rows of the phase planes.

    Parallel over tasks (image, group, run of TILES_PER_TASK tiles): each owns the outputs of
    its tiles for every filter of its group. Each output is one register-tile sum over
    k = 0 .. Kg-1 in order.
    """
    if y.shape[0] and y.shape[1]:
        _forward(&xs[0], &apack[0], &off[0], off.shape[0], &b[0], &y[0, 0, 0, 0], y.shape[0],
                 y.shape[1], y.shape[2], y.shape[3], C, sh, sw, HPh, WPh, G, MR, NR, relu,
                 n_threads)


cdef void _forward(const floating* xs, const floating* apack, const Py_ssize_t* off,
                   Py_ssize_t Kg, const floating* b, floating* y, Py_ssize_t N, Py_ssize_t F,
                   Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t C, Py_ssize_t sh, Py_ssize_t sw,
                   Py_ssize_t HPh, Py_ssize_t WPh, Py_ssize_t G, Py_ssize_t MR, Py_ssize_t NR,
                   bint relu, int n_threads) noexcept nogil:
    cdef Py_ssize_t Fg = F // G, Cg = C // G
    cdef Py_ssize_t nfb = (Fg + MR - 1) // MR
    cdef Py_ssize_t T = (OH - 1) * WPh + OW
    cdef Py_ssize_t ntile = (T + NR - 1) // NR
    cdef Py_ssize_t nrun = (ntile + TILES_PER_TASK - 1) // TILES_PER_TASK
    cdef Py_ssize_t img = C * sh * sw * HPh * WPh, gsz = Cg * sh * sw * HPh * WPh
    cdef Py_ssize_t task
    n_threads = _threads_for(N * F * OH * OW * Kg, n_threads)
    # Race-free: task (n, g, run) writes only y[n, g*Fg:(g+1)*Fg] at its own tiles' positions.
    if n_threads == 1:  # serial: see SERIAL in the header
        for task in range(N * G * nrun):
            _forward_task(xs, apack, off, b, y, task, nrun, G, Fg, Kg, nfb, MR, NR, T, ntile,
                          WPh, OH, OW, img, gsz, relu)
        return
    for task in prange(N * G * nrun, schedule='static', num_threads=n_threads):
        _forward_task(xs, apack, off, b, y, task, nrun, G, Fg, Kg, nfb, MR, NR, T, ntile, WPh,
                      OH, OW, img, gsz, relu)


cdef void _forward_task(const floating* xs, const floating* apack, const Py_ssize_t* off,
                        const floating* b, floating* y, Py_ssize_t task, Py_ssize_t nrun,
                        Py_ssize_t G, Py_ssize_t Fg, Py_ssize_t Kg, Py_ssize_t nfb,
                        Py_ssize_t MR, Py_ssize_t NR, Py_ssize_t T, Py_ssize_t ntile,
                        Py_ssize_t WPh, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t img,
                        Py_ssize_t gsz, bint relu) noexcept nogil:
    cdef floating ct[MAX_CTILE]
    cdef Py_ssize_t run = task % nrun, g = (task // nrun) % G, n = task // (nrun * G)
    cdef Py_ssize_t tile, t0, fb, f0
    cdef const floating* base = xs + n * img + g * gsz
    for tile in range(run * TILES_PER_TASK, min(ntile, (run + 1) * TILES_PER_TASK)):
        t0 = tile * NR
        for fb in range(nfb):
            f0 = g * Fg + fb * MR
            _gtile(MR, apack + (g * nfb + fb) * Kg * MR, base + t0, off, Kg, ct, NR)
            _store_tile(ct, NR, min(MR, Fg - fb * MR), t0, NR, T, WPh, OW, b + f0, relu,
                        y + (n * G * Fg + f0) * OH * OW, OH * OW)


def ftile_shape(bint is_double, Py_ssize_t M):
    """(NP positions, NF filters) of the filters-on-lanes tile for M filters (channels, for the
    input gradient) per group: two vectors of filters (fc_flanes6x2), or one (fc_flanes6x1)
    when one vector holds them all (16 filters in the AVX-512 float build would otherwise
    leave half of the lanes empty: 1.4x the time of the AVX2 build on LeNet's C3)."""
    cdef Py_ssize_t NL = FC_NL_D if is_double else FC_NL_F
    return FTILE_NP, NL if M <= NL else 2 * NL


cdef _check_nf(Py_ssize_t NF, bint is_double):
    """NF must be one of the filters-on-lanes tile widths (one or two vectors of lanes)."""
    cdef Py_ssize_t NL = FC_NL_D if is_double else FC_NL_F
    if NF != NL and NF != 2 * NL:
        raise ValueError(f"NF must be {NL} or {2 * NL} (ftile_shape), got {NF}")


def pack_forward_lanes(const floating[:, :, :, ::1] w,  # IN  (F, Cg, KH, KW)
                       const floating[::1] b,           # IN  (F,)
                       floating[::1] wpk,               # OUT (G, nfb, Kg, NF)
                       floating[::1] bpk,               # OUT (G, nfb, NF)
                       Py_ssize_t G, Py_ssize_t NF, bint rotate):
    """wpk[g, fb, k, fl] = w[g*Fg + fb*NF + fl].flat[k] and bpk[g, fb, fl] = b[g*Fg + fb*NF + fl],
    0 for the filters past Fg.

    With ``rotate`` (the input gradient as a forward pass) the roles of filters and channels
    are exchanged and the kernel turned by 180 degrees: wpk[g, cb, (f, p, q), cl] =
    w[g*Fg + f, cb*NF + cl, KH-1-p, KW-1-q] (0 past Cg), and ``b`` (C zeros) is packed the same.
    """
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Fg = F // G, M = Cg if rotate else Fg, Kg = (Fg if rotate else Cg) * KH * KW
    cdef Py_ssize_t nfb = (M + NF - 1) // NF, g, fb, k, fl, f, e, t, nl, KK = KH * KW
    cdef Py_ssize_t k0, k1, e0, e1, EC = max(1, 64 // KK)
    cdef const floating* ws = &w[0, 0, 0, 0]
    cdef const floating* src
    cdef floating* dst
    # Lane by lane within chunks of 64 taps: each lane's source is read in order (a filter's
    # weights, or a channel's taps turned, filter after filter) and stored with stride NF into
    # a chunk of the block that stays in L1 until its lines are full; no test per element.
    with nogil:
        for g in range(G):
            for fb in range(nfb):
                nl = min(NF, M - fb * NF)  # real lanes of the block
                for fl in range(NF):
                    f = fb * NF + fl
                    bpk[(g * nfb + fb) * NF + fl] = b[g * M + f] if fl < nl else 0
                dst = &wpk[(g * nfb + fb) * Kg * NF]
                if rotate:  # k = e*KK + t reads tap KK-1-t of w[g*Fg + e, f]
                    e0 = 0
                    while e0 < Fg:
                        e1 = min(Fg, e0 + EC)
                        for fl in range(nl):
                            f = fb * NF + fl
                            for e in range(e0, e1):
                                src = ws + ((g * Fg + e) * Cg + f) * KK + KK - 1
                                for t in range(KK):
                                    dst[(e * KK + t) * NF + fl] = src[-t]
                        for fl in range(nl, NF):
                            for k in range(e0 * KK, e1 * KK):
                                dst[k * NF + fl] = 0
                        e0 = e1
                else:
                    k0 = 0
                    while k0 < Kg:
                        k1 = min(Kg, k0 + 64)
                        for fl in range(nl):
                            src = ws + (g * Fg + fb * NF + fl) * Kg
                            for k in range(k0, k1):
                                dst[k * NF + fl] = src[k]
                        for fl in range(nl, NF):
                            for k in range(k0, k1):
                                dst[k * NF + fl] = 0
                        k0 = k1


def forward_lanes(const floating[::1] xs,     # IN  phase planes (N, C, sh, sw, HPh, WPh) + slack
                  const floating[::1] wpk,    # IN  pack_forward_lanes
                  const floating[::1] bpk,    # IN  pack_forward_lanes
                  const Py_ssize_t[::1] off,  # IN  tap offsets (forward_offsets)
                  floating[:, :, :, ::1] y,   # OUT (N, F, OH, OW)
                  Py_ssize_t C, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t HPh, Py_ssize_t WPh,
                  Py_ssize_t G, Py_ssize_t NF, bint relu, int n_threads):
    """The same convolution as ``forward`` with the filters on the vector lanes: tiles of
    FTILE_NP consecutive output positions q = n*OH*OW + i*OW + j of the batch (read at
    n*img + i*WPh + j of the phase planes: only real outputs are computed; a tile may end one
    image and start the next) x NF filters (fc_flanes6x2: each input value broadcast against
    packed weight vectors), stored transposed into the output planes with bias and ReLU.

    The last tile is shifted back to end at the batch's last output; the positions it shares
    with the previous tile (or, in a batch of fewer than FTILE_NP outputs, the positions before
    0, which read position 0) are not stored.

    Parallel over (group, run of tiles): each task owns the outputs at its tiles' positions
    for every filter of its group; each output is one register sum over k = 0 .. Kg-1 in
    order, whatever the thread count or the batch it is in.
    """
    _check_nf(NF, floating is double)
    if y.shape[0] and y.shape[1]:
        _forward_lanes(&xs[0], &wpk[0], &bpk[0], &off[0], off.shape[0], &y[0, 0, 0, 0],
                       y.shape[0], y.shape[1], y.shape[2], y.shape[3], C, sh, sw, HPh, WPh, G,
                       NF, relu, n_threads)


cdef void _forward_lanes(const floating* xs, const floating* wpk, const floating* bpk,
                         const Py_ssize_t* off, Py_ssize_t Kg, floating* y, Py_ssize_t N,
                         Py_ssize_t F, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t C, Py_ssize_t sh,
                         Py_ssize_t sw, Py_ssize_t HPh, Py_ssize_t WPh, Py_ssize_t G,
                         Py_ssize_t NF, bint relu, int n_threads) noexcept nogil:
    cdef Py_ssize_t Fg = F // G, Cg = C // G
    cdef Py_ssize_t img = C * sh * sw * HPh * WPh, gsz = Cg * sh * sw * HPh * WPh
    cdef Py_ssize_t P = OH * OW, Q = N * P
    n_threads = _threads_for(Q * F * Kg, n_threads)
    # The tiles run over the batch's positions image after image (q = n*P + p): a plane of P
    # outputs costs P/FTILE_NP tiles, not a whole last tile per image (7x7: 54 positions
    # computed for 49; 4x4: 18 for 16).
    cdef Py_ssize_t ntile = (Q + FTILE_NP - 1) // FTILE_NP
    cdef Py_ssize_t per_img = (P + FTILE_NP - 1) // FTILE_NP
    # About an image's tiles per task when the image's input (of the group) fits in half of L1
    # and there are images enough to share among the threads: one block of packed weights then
    # stays in L1 over the plane. Else runs of LANE_TILES tiles, whose input rows stay in L1
    # over the filter blocks.
    cdef Py_ssize_t run_len = LANE_TILES
    if N * G >= 4 * n_threads and gsz * <Py_ssize_t> sizeof(floating) <= 16384:
        run_len = per_img
    if Kg > LANE_CHUNK:  # a chunked sum: an image's tiles while their running sums fit the stack
        run_len = per_img if N * G >= 4 * n_threads and per_img <= CHUNK_TILES else LANE_TILES
    cdef Py_ssize_t nrun = (ntile + run_len - 1) // run_len, task
    # With few runs (a batch of a few images) a task takes one filter block of its run, so
    # that the threads get even shares (32->64 @7 at batch 1: runs of 4, 4 and 1 tiles gave one
    # thread 8 tiles and the other 1, and no gain from a second thread).
    cdef Py_ssize_t nfb = (Fg + NF - 1) // NF
    cdef Py_ssize_t fsplit = nfb if G * nrun < 16 * n_threads else 1
    # Race-free: task (g, filter block or all of them, run) writes only y[:, g*Fg:(g+1)*Fg]
    # (of its block) at its own tiles' positions.
    if n_threads == 1:  # serial: see SERIAL in the header
        for task in range(G * nrun):
            _forward_lanes_task(xs, wpk, bpk, off, y, task, nrun, run_len, 1, G, Fg, Kg, NF,
                                WPh, OW, P, Q, ntile, img, gsz, relu)
        return
    for task in prange(G * fsplit * nrun, schedule='static', num_threads=n_threads):
        _forward_lanes_task(xs, wpk, bpk, off, y, task, nrun, run_len, fsplit, G, Fg, Kg, NF,
                            WPh, OW, P, Q, ntile, img, gsz, relu)


cdef void _forward_lanes_task(const floating* xs, const floating* wpk, const floating* bpk,
                              const Py_ssize_t* off, floating* y, Py_ssize_t task,
                              Py_ssize_t nrun, Py_ssize_t run_len, Py_ssize_t fsplit,
                              Py_ssize_t G, Py_ssize_t Fg, Py_ssize_t Kg, Py_ssize_t NF,
                              Py_ssize_t WPh, Py_ssize_t OW, Py_ssize_t P, Py_ssize_t Q,
                              Py_ssize_t ntile, Py_ssize_t img, Py_ssize_t gsz,
                              bint relu) noexcept nogil:
    """Run ``task % nrun`` of group ``task // (nrun*fsplit)``: every filter block (fsplit 1),
    or block ``(task // nrun) % fsplit`` alone (fsplit = the number of blocks)."""
    cdef Py_ssize_t pos[FTILE_NP]
    cdef floating* yp[FTILE_NP]
    cdef floating part[CHUNK_TILES * FTILE_NP * MAX_NF]  # running sums of a chunked sum
    cdef Py_ssize_t run = task % nrun, g = task // (nrun * fsplit)
    cdef Py_ssize_t nfb = (Fg + NF - 1) // NF
    cdef Py_ssize_t fb0 = 0 if fsplit == 1 else (task // nrun) % fsplit
    cdef Py_ssize_t fb1 = nfb if fsplit == 1 else fb0 + 1
    cdef Py_ssize_t t0 = run * run_len, t1 = min(ntile, (run + 1) * run_len)
    cdef Py_ssize_t tile, q0, qs, u, n, p, i, j, fb, kc, k0, kn
    cdef const floating* base = xs + g * gsz
    cdef const floating* wb
    cdef floating* pt
    cdef floating* yb
    cdef floating* ys
    cdef floating** ypp
    # Filter blocks outer: one block's packed weights (or one chunk of them) stay in L1 over
    # the run; chunks of LANE_CHUNK taps in order, each over every tile of the run.
    for fb in range(fb0, fb1):
        wb = wpk + (g * nfb + fb) * Kg * NF
        yb = y + (g * Fg + fb * NF) * P  # filter fb*NF of group g in image 0
        for kc in range((Kg + LANE_CHUNK - 1) // LANE_CHUNK):
            k0 = kc * LANE_CHUNK
            kn = min(<Py_ssize_t> LANE_CHUNK, Kg - k0)
            # the position q of the run's first tile, as (image n, plane offset p, row i,
            # column j); then stepped from tile to tile (no division per tile)
            n = (t0 * FTILE_NP) // P
            p = t0 * FTILE_NP - n * P
            i = p // OW
            j = p - i * OW
            for tile in range(t0, t1):
                # positions qs .. qs+5 (the last tile shifted back to end at Q; positions
                # before 0, in a batch of fewer than FTILE_NP outputs, read position 0);
                # those before q0 belong to the previous tile and are not stored
                q0 = tile * FTILE_NP
                qs = min(q0, Q - FTILE_NP)
                if qs != q0:  # the batch's last tile (n, p, i, j hold q0 there: go back)
                    n = max(qs, <Py_ssize_t> 0) // P
                    p = max(qs, <Py_ssize_t> 0) - n * P
                    i = p // OW
                    j = p - i * OW
                ys = yb + n * G * Fg * P + p
                if qs == q0 and p + FTILE_NP <= P:  # consecutive outputs of one plane
                    for u in range(FTILE_NP):
                        pos[u] = n * img + i * WPh + j
                        j = j + 1
                        if j == OW:
                            j = 0
                            i = i + 1
                    p = p + FTILE_NP
                    ypp = NULL
                else:  # an image's end, or the batch's shifted last tile
                    for u in range(FTILE_NP):
                        if u > 0 and qs + u > 0:  # the next position (row, plane, batch order)
                            p = p + 1
                            j = j + 1
                            if j == OW:
                                j = 0
                                i = i + 1
                            if p == P:
                                p = i = 0
                                n = n + 1
                        pos[u] = n * img + i * WPh + j
                        yp[u] = yb + n * G * Fg * P + p
                    ypp = &yp[0]
                    p = p + 1  # the next tile's first position (none after the last tile)
                    j = j + 1
                    if j == OW:
                        j = 0
                        i = i + 1
                if p == P:
                    p = i = j = 0
                    n = n + 1
                # this tile's running sums (used only by a chunked sum, whose runs have at
                # most CHUNK_TILES tiles)
                pt = &part[0]
                if Kg > LANE_CHUNK:
                    pt = &part[(tile - t0) * FTILE_NP * NF]
                _flanes(NF, base, pos, off + k0, kn, wb + k0 * NF, bpk + (g * nfb + fb) * NF,
                        relu, q0 - qs, min(NF, Fg - fb * NF), ys, ypp, P, pt, k0 == 0,
                        k0 + kn == Kg, Kg >= PF_Y_TAPS)


cdef inline void _flanes(Py_ssize_t NF, const floating* x, const Py_ssize_t* pos,
                         const Py_ssize_t* off, Py_ssize_t K, const floating* w,
                         const floating* bias, int relu, Py_ssize_t u0, Py_ssize_t nf,
                         floating* y, floating** yp, Py_ssize_t plane, floating* part, int first,
                         int last, int pf_y) noexcept nogil:
    """The filters-on-lanes tile of width NF (one vector of lanes, or two)."""
    if floating is float:
        if NF == FC_NL_F:
            fc_flanes6x1_f(x, pos, off, K, w, bias, relu, u0, nf, y, yp, plane, part, first,
                           last, pf_y)
        else:
            fc_flanes6x2_f(x, pos, off, K, w, bias, relu, u0, nf, y, yp, plane, part, first,
                           last, pf_y)
    elif NF == FC_NL_D:
        fc_flanes6x1_d(x, pos, off, K, w, bias, relu, u0, nf, y, yp, plane, part, first, last,
                       pf_y)
    else:
        fc_flanes6x2_d(x, pos, off, K, w, bias, relu, u0, nf, y, yp, plane, part, first, last,
                       pf_y)


# ---------------------------------------------------------------------------------------------
# Input gradient
# ---------------------------------------------------------------------------------------------

def pack_backward_input(const floating[:, :, :, ::1] w,  # IN  (F, Cg, KH, KW)
                        floating[::1] apack,             # OUT per (g, phase, cb): (K_phase, MR)
                        Py_ssize_t[::1] off,             # OUT per phase: K_phase offsets
                        Py_ssize_t[::1] phase_start,     # OUT (sh*sw + 1,) start of each phase
                        Py_ssize_t[::1] row_start,       # OUT (sh*sw, KH + 1): see below
                        Py_ssize_t G, Py_ssize_t MR, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t GH, Py_ssize_t GW):
    """Weights and tap offsets of the input gradient, phase by phase.

    Phase (rh, rw) of the padded input is reached by the taps with (p*dh) % sh == rh and
    (q*dw) % sw == rw; for k = (p, f, q) over those taps (kernel row outermost), ``off[k]`` is
    the offset of dy[f, a - (p*dh)//sh, b - (q*dw)//sw] from gpad position (a, b) (gpad = dy
    with A top rows and B left columns of zeros, A = ((KH-1)*dh)//sh, B = ((KW-1)*dw)//sw) and
    ``apack[.., k, o] = w[g*Fg + f, cb*MR + o, p, q]``. Layout of apack: for each phase, for
    each group, for each channel block cb, the (K_phase, MR) panel. ``row_start[ph, p]`` is
    the index within phase ph of its first tap of kernel row p or later (K_phase for p = KH):
    the taps of the kernel rows p0 .. p1 - 1 are one run, which lets ``backward_input`` leave
    out the rows that read only the zero border of gpad.
    """
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Fg = F // G, ncb = (Cg + MR - 1) // MR
    cdef Py_ssize_t A = ((KH - 1) * dh) // sh, B = ((KW - 1) * dw) // sw
    cdef Py_ssize_t rh, rw, ph, k, k0, f, p, q, g, cb, o, c, K, pos = 0
    cdef Py_ssize_t apos = 0
    k = 0
    for rh in range(sh):
        for rw in range(sw):
            ph = rh * sw + rw
            phase_start[ph] = k
            k0 = k
            for p in range(KH):
                row_start[ph * (KH + 1) + p] = k - k0
                if (p * dh) % sh != rh:
                    continue
                for f in range(Fg):
                    for q in range(KW):
                        if (q * dw) % sw != rw:
                            continue
                        off[k] = (f * GH * GW + (A - (p * dh) // sh) * GW
                                  + (B - (q * dw) // sw))
                        k = k + 1
            K = k - k0
            row_start[ph * (KH + 1) + KH] = K
            for g in range(G):
                for cb in range(ncb):
                    pos = 0
                    for p in range(KH):
                        if (p * dh) % sh != rh:
                            continue
                        for f in range(Fg):
                            for q in range(KW):
                                if (q * dw) % sw != rw:
                                    continue
                                for o in range(MR):
                                    c = cb * MR + o
                                    apack[apos + pos * MR + o] = (
                                        w[g * Fg + f, c, p, q] if c < Cg else 0)
                                pos = pos + 1
                    apos = apos + K * MR
    phase_start[sh * sw] = k


def backward_input(const floating[::1] gpad,      # IN  (N, F, GH, GW) + slack
                   const floating[::1] apack,     # IN  pack_backward_input
                   const Py_ssize_t[::1] off,     # IN  pack_backward_input
                   const Py_ssize_t[::1] phase_start,
                   const Py_ssize_t[::1] row_start,  # IN  pack_backward_input
                   floating[:, :, :, ::1] dx,     # OUT (N, C, H, W)
                   Py_ssize_t F, Py_ssize_t GH, Py_ssize_t GW, Py_ssize_t HPh, Py_ssize_t WPh,
                   Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t G,
                   Py_ssize_t MR, Py_ssize_t NR, Py_ssize_t KH, Py_ssize_t dh, Py_ssize_t OH,
                   int n_threads):
    """dx[n, c, h, w] = sum over the taps (f, p, q) of c's group that read x[n, c, h, w] of
    dy[n, f, i, j] * w[f, c, p, q] (i*sh + p*dh = h + pt, j*sw + q*dw = w + pl).

    For each stride phase (rh, rw): the padded-input positions (a*sh + rh, b*sw + rw),
    a < HPh, b < WPh, on wide rows of width GW over gpad. Parallel over tasks (image, group,
    phase, run of tiles): each dx element belongs to exactly one (phase, position), so each task
    owns what it writes; each element is one register-tile sum in a fixed order.

    A tile over phase rows a0 .. a1 leaves out the kernel rows p whose taps read, for every
    row of the tile, one of the zero rows that border dy in gpad: (p*dh)//sh > a1 or
    <= a0 - OH. Those products are all exact zeros (a weight is finite here: a non-finite
    one takes the direct path), and an exact zero added to a sum that starts at +0 changes
    nothing, not even the sign of a zero, so the result is bitwise the full sum's. For LeNet's
    C3 (5x5 over 10x10) this leaves out 2/7 of the products.
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t Cg = C // G, Fg = F // G
    cdef Py_ssize_t T = (HPh - 1) * GW + WPh
    cdef Py_ssize_t ntile = (T + NR - 1) // NR
    cdef Py_ssize_t nrun = (ntile + TILES_PER_TASK - 1) // TILES_PER_TASK
    cdef Py_ssize_t nph = sh * sw, task
    if N == 0 or C == 0:
        return
    # Race-free: see the docstring.
    for task in prange(N * G * nph * nrun, nogil=True, schedule='static',
                       num_threads=n_threads):
        _backward_input_task(&gpad[0], &apack[0], &off[0], &phase_start[0], &row_start[0],
                             &dx[0, 0, 0, 0], task, nrun, nph, G, Fg, Cg, H, W, GH, GW, HPh,
                             WPh, sh, sw, pt, pl, MR, NR, T, ntile, KH, dh, OH)


cdef void _backward_input_task(const floating* gpad, const floating* apack,
                               const Py_ssize_t* off, const Py_ssize_t* phase_start,
                               const Py_ssize_t* row_start,
                               floating* dx, Py_ssize_t task, Py_ssize_t nrun, Py_ssize_t nph,
                               Py_ssize_t G, Py_ssize_t Fg, Py_ssize_t Cg, Py_ssize_t H,
                               Py_ssize_t W, Py_ssize_t GH, Py_ssize_t GW, Py_ssize_t HPh,
                               Py_ssize_t WPh, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                               Py_ssize_t pl, Py_ssize_t MR, Py_ssize_t NR, Py_ssize_t T,
                               Py_ssize_t ntile, Py_ssize_t KH, Py_ssize_t dh,
                               Py_ssize_t OH) noexcept nogil:
    cdef floating ct[MAX_CTILE]
    cdef Py_ssize_t run = task % nrun, ph = (task // nrun) % nph
    cdef Py_ssize_t g = (task // (nrun * nph)) % G, n = task // (nrun * nph * G)
    cdef Py_ssize_t rh = ph // sw, rw = ph % sw
    cdef Py_ssize_t ncb = (Cg + MR - 1) // MR
    cdef Py_ssize_t k0 = phase_start[ph], K = phase_start[ph + 1] - k0
    cdef const Py_ssize_t* rows = row_start + ph * (KH + 1)
    cdef Py_ssize_t apos = 0, q, tile, t0, cb, nr, a0, a1, p0, p1, klo, khi
    cdef const floating* base = gpad + (n * G + g) * Fg * GH * GW
    cdef floating* dxn = dx + (n * G + g) * Cg * H * W
    # Start of this (phase, group)'s panels: the earlier phases hold G*ncb panels each.
    for q in range(ph):
        apos = apos + G * ncb * (phase_start[q + 1] - phase_start[q]) * MR
    apos = apos + g * ncb * K * MR
    for tile in range(run * TILES_PER_TASK, min(ntile, (run + 1) * TILES_PER_TASK)):
        t0 = tile * NR
        # the kernel rows p0 .. p1 - 1 that read a row of dy for some row a0 .. a1 of the tile
        a0 = t0 // GW
        a1 = (t0 + NR - 1) // GW
        p0 = 0
        while p0 < KH and (p0 * dh) // sh <= a0 - OH:
            p0 = p0 + 1
        p1 = KH
        while p1 > p0 and ((p1 - 1) * dh) // sh > a1:
            p1 = p1 - 1
        klo = rows[p0]
        khi = rows[p1]
        for cb in range(ncb):
            if khi > klo:
                _gtile(MR, apack + apos + (cb * K + klo) * MR, base + t0, off + k0 + klo,
                       khi - klo, ct, NR)
            else:
                memset(ct, 0, MR * NR * sizeof(floating))
            nr = min(MR, Cg - cb * MR)
            _store_phase(ct, NR, nr, t0, min(NR, T - t0), GW, WPh, sh, sw, rh - pt, rw - pl,
                         H, W, dxn + cb * MR * H * W)


cdef inline void _store_phase(const floating* ct, Py_ssize_t ldc, Py_ssize_t nrows,
                              Py_ssize_t t0, Py_ssize_t n, Py_ssize_t row, Py_ssize_t WPh,
                              Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t h0, Py_ssize_t v0,
                              Py_ssize_t H, Py_ssize_t W, floating* dx) noexcept nogil:
    """dx[o, a*sh + h0, b*sw + v0] = ct[o*ldc + u] for the tile positions t0 + u = a*row + b
    with b < WPh that land inside the H x W plane; by runs of one row."""
    cdef Py_ssize_t o, u, a, b, run, blo, bhi, h, r
    cdef const floating* src
    cdef floating* dst
    u = 0
    a = t0 // row
    b = t0 - a * row
    while u < n:
        run = min(n - u, row - b)
        h = a * sh + h0
        if 0 <= h < H:
            # columns b .. b+run-1 of this row; keep those with b' < WPh and 0 <= b'*sw+v0 < W
            blo = max(b, (-v0 + sw - 1) // sw if v0 < 0 else 0)
            bhi = min(b + run, WPh, (W - 1 - v0) // sw + 1 if W - 1 - v0 >= 0 else 0)
            for o in range(nrows):
                src = ct + o * ldc + u - b
                dst = dx + (o * H + h) * W + v0
                if sw == 1:
                    for r in range(blo, bhi):
                        dst[r] = src[r]
                else:
                    for r in range(blo, bhi):
                        dst[r * sw] = src[r]
        u = u + run
        b = 0
        a = a + 1


# ---------------------------------------------------------------------------------------------
# Weight gradient
# ---------------------------------------------------------------------------------------------

def backward_weight(const floating[::1] xs,      # IN  padded input (N, C, HP, WP)
                    const floating[::1] gt,      # IN  dy as (N, OH*OW, F) + slack
                    const Py_ssize_t[::1] off,   # IN  tap offsets (forward_offsets, stride 1)
                    floating[::1] part,          # OUT scratch: (n_chunks, G, nkb*MR, nfb*NF)
                    floating[:, :, :, ::1] dw,   # OUT (F, Cg, KH, KW)
                    Py_ssize_t N, Py_ssize_t C, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t HP,
                    Py_ssize_t WP, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t G, Py_ssize_t MR,
                    Py_ssize_t NF, Py_ssize_t NB, int n_threads):
    """dw[f, c, p, q] = sum_{n, i, j} dy[n, f, i, j] * xp[n, g*Cg + c, i*sh + p*dh, j*sw + q*dw].

    xp is read with the stride itself (rows i*sh*WP, columns j*sw): the tile broadcasts each
    input value, so a stride costs no vector loads, and the input needs only its zero border
    (the split into stride phases was a quarter of the 3x3 stride-2 16->32 @28 weight gradient).
    The batch is cut into chunks of NB images (a size the caller derives from the shapes).
    Tasks (chunk, group, tap block, filter block) each sum their chunk into their own slot of
    ``part`` (register tiles of MR taps x NF filters, positions in the order n, i, j); then each
    dw element adds its chunks in index order. Both loops are race-free: every task and every f
    owns what it writes.
    """
    cdef Py_ssize_t F = dw.shape[0], Kg = off.shape[0]
    cdef Py_ssize_t Fg = F // G, Cg = C // G
    cdef Py_ssize_t nkb = (Kg + MR - 1) // MR, nfb = (Fg + NF - 1) // NF
    cdef Py_ssize_t n_chunks = (N + NB - 1) // NB
    cdef Py_ssize_t ldp = nfb * NF, slot = G * nkb * MR * ldp
    cdef Py_ssize_t img = C * HP * WP, gsz = Cg * HP * WP
    cdef Py_ssize_t task, f, k, ch, g, fl
    cdef floating s
    if N == 0:
        dw[...] = 0
        return
    # Race-free: task writes only its (chunk, g, kb, fb) tile of part.
    for task in prange(n_chunks * G * nkb * nfb, nogil=True, schedule='static',
                       num_threads=n_threads):
        _backward_weight_task(&xs[0], &gt[0], &off[0], &part[0], task, N, G, Fg, Kg, nkb, nfb,
                              MR, NF, F, img, gsz, sh * WP, sw, OH, OW, ldp, slot, NB)
    # Race-free: f writes only dw[f]; chunks are added in index order.
    for f in prange(F, nogil=True, schedule='static', num_threads=n_threads):
        g = f // Fg
        fl = f - g * Fg
        for k in range(Kg):
            s = 0
            for ch in range(n_chunks):
                s = s + part[ch * slot + (g * nkb * MR + k) * ldp + fl]
            (&dw[f, 0, 0, 0])[k] = s


cdef void _backward_weight_task(const floating* xs, const floating* gt, const Py_ssize_t* off,
                                floating* part, Py_ssize_t task, Py_ssize_t N, Py_ssize_t G,
                                Py_ssize_t Fg, Py_ssize_t Kg, Py_ssize_t nkb, Py_ssize_t nfb,
                                Py_ssize_t MR, Py_ssize_t NF, Py_ssize_t F, Py_ssize_t img,
                                Py_ssize_t gsz, Py_ssize_t xrow, Py_ssize_t xcol, Py_ssize_t OH,
                                Py_ssize_t OW, Py_ssize_t ldp, Py_ssize_t slot,
                                Py_ssize_t NB) noexcept nogil:
    cdef Py_ssize_t xoff[12]
    cdef Py_ssize_t fb = task % nfb, kb = (task // nfb) % nkb
    cdef Py_ssize_t g = (task // (nfb * nkb)) % G, ch = task // (nfb * nkb * G)
    cdef Py_ssize_t n0 = ch * NB, nn = min(NB, N - n0), o, k
    for o in range(MR):
        k = min(kb * MR + o, Kg - 1)  # a short last block repeats the last tap (discarded)
        xoff[o] = g * gsz + off[k]
    _wtile(MR, xs + n0 * img, img, xoff, xrow, xcol, gt + n0 * OH * OW * F + g * Fg + fb * NF,
           OH * OW * F, F, nn, OH, OW,
           part + ch * slot + (g * nkb + kb) * MR * ldp + fb * NF, ldp)


# ---------------------------------------------------------------------------------------------
# Weight gradient with the output positions on the vector lanes ("rows")
# ---------------------------------------------------------------------------------------------

def rtile_shape(Py_ssize_t Fg, Py_ssize_t Kg):
    """(MF filters, MK taps) of the positions-on-lanes weight-gradient tile for Fg filters per
    group and Kg taps: 4x3 from three filters up, 2x6 for two, and one filter against 9 or 12
    taps (whichever recomputes fewer clamped taps; 12 on ties)."""
    if Fg >= 3:
        return 4, 3
    if Fg == 2:
        return 2, 6
    return (1, 9) if (Kg + 8) // 9 * 9 < (Kg + 11) // 12 * 12 else (1, 12)


cdef inline void _rtile(Py_ssize_t mf, Py_ssize_t mk, const floating* g, Py_ssize_t g_img,
                        const Py_ssize_t* goff, const floating* x, Py_ssize_t x_img,
                        const Py_ssize_t* xoff, Py_ssize_t N, Py_ssize_t P, int last_exact,
                        floating* c, Py_ssize_t ldc) noexcept nogil:
    if floating is float:
        if mf == 4:
            fc_rtile4x3_f(g, g_img, goff, x, x_img, xoff, N, P, last_exact, c, ldc)
        elif mf == 2:
            fc_rtile2x6_f(g, g_img, goff, x, x_img, xoff, N, P, last_exact, c, ldc)
        elif mk == 9:
            fc_rtile1x9_f(g, g_img, goff, x, x_img, xoff, N, P, last_exact, c, ldc)
        else:
            fc_rtile1x12_f(g, g_img, goff, x, x_img, xoff, N, P, last_exact, c, ldc)
    else:
        if mf == 4:
            fc_rtile4x3_d(g, g_img, goff, x, x_img, xoff, N, P, last_exact, c, ldc)
        elif mf == 2:
            fc_rtile2x6_d(g, g_img, goff, x, x_img, xoff, N, P, last_exact, c, ldc)
        elif mk == 9:
            fc_rtile1x9_d(g, g_img, goff, x, x_img, xoff, N, P, last_exact, c, ldc)
        else:
            fc_rtile1x12_d(g, g_img, goff, x, x_img, xoff, N, P, last_exact, c, ldc)


def wlanes(bint is_double):
    """Lanes per vector of the register tiles (float32 or float64) in this build."""
    return FC_NL_D if is_double else FC_NL_F


def to_wide_rows(const floating[:, :, :, ::1] g,  # IN  (N, F, OH, OW)
                 floating[::1] out,               # OUT (N, F, Pg)
                 Py_ssize_t WPh, Py_ssize_t Pg, int n_threads):
    """out[n, f, i*WPh + j] = g[n, f, i, j] for j < OW; 0 at the other positions < Pg
    (WPh >= OW, Pg >= (OH-1)*WPh + OW). Parallel over (n, f). Rows by memcpy (gcc's vectorised
    copy loop spent its time in prologues and epilogues on 14-28-wide rows: up to 1.8x slower)."""
    cdef Py_ssize_t N = g.shape[0], F = g.shape[1], OH = g.shape[2], OW = g.shape[3]
    cdef Py_ssize_t P = (OH - 1) * WPh + OW, nf, i, j
    cdef const floating* s
    cdef floating* d
    # Race-free: (n, f) writes only out[n, f].
    for nf in prange(N * F, nogil=True, schedule='static', num_threads=n_threads):
        s = &g[nf // F, nf % F, 0, 0]
        d = &out[nf * Pg]
        for i in range(OH):
            memcpy(d + i * WPh, s + i * OW, OW * sizeof(floating))
            if i < OH - 1:
                for j in range(OW, WPh):
                    d[i * WPh + j] = 0
        for j in range(P, Pg):
            d[j] = 0


def backward_weight_rows(const floating[::1] xs,     # IN  phase planes (N, C, sh, sw, HPh, WPh)
                         const floating[::1] gw,     # IN  dy on wide rows (N, F, Pg)
                         const Py_ssize_t[::1] off,  # IN  tap offsets (forward_offsets)
                         floating[::1] part,         # OUT scratch (n_chunks, F, Kg), n_chunks > 1
                         floating[:, :, :, ::1] dw,  # OUT (F, Cg, KH, KW)
                         Py_ssize_t N, Py_ssize_t img, Py_ssize_t Pg, Py_ssize_t P,
                         Py_ssize_t G, Py_ssize_t MF, Py_ssize_t MK, Py_ssize_t NB,
                         int n_threads):
    """dw[f, c, p, q] = sum_{n, t} gw[n, f, t] * xs[n, g*Cg + c's planes, off[(c, p, q)] + t]
    over the P wide-row positions t = i*WPh + j (gw is 0 at the columns j >= OW, whose products
    are dropped this way): the weight gradient as dot products along the phase planes.

    ``img`` is the size of one image's phase planes, ``Pg`` the distance between two planes of
    gw (P, or OH*OW when dy is used as it is). The batch is cut into chunks of NB images (a
    size fixed by the shapes). Tasks (chunk, group, filter block, tap block) each own one
    register tile (fc_rtile, MF filters x MK taps) of their chunk's partial sum; the chunks are
    then added in index order. Both loops are race-free: every task and every f owns what it
    writes.
    """
    cdef Py_ssize_t F = dw.shape[0], Kg = off.shape[0], Fg = F // G
    cdef Py_ssize_t nkb = (Kg + MK - 1) // MK, nfb = (Fg + MF - 1) // MF
    cdef Py_ssize_t n_chunks = (N + NB - 1) // NB, task, f, k, ch
    cdef floating s
    cdef floating* dst
    if N == 0:
        dw[...] = 0
        return
    dst = &dw[0, 0, 0, 0] if n_chunks == 1 else &part[0]
    # Race-free: task writes only its (chunk, f block, k block) tile of part (or dw).
    for task in prange(n_chunks * G * nfb * nkb, nogil=True, schedule='static',
                       num_threads=n_threads):
        _rows_task(&xs[0], &gw[0], &off[0], dst, task, N, img, Pg, P, G, Fg, Kg, nfb, nkb,
                   MF, MK, NB)
    if n_chunks == 1:
        return
    # Race-free: f writes only dw[f]; chunks are added in index order.
    for f in prange(F, nogil=True, schedule='static', num_threads=n_threads):
        for k in range(Kg):
            s = 0
            for ch in range(n_chunks):
                s = s + part[(ch * F + f) * Kg + k]
            (&dw[f, 0, 0, 0])[k] = s


cdef void _rows_task(const floating* xs, const floating* gw, const Py_ssize_t* off,
                     floating* dst, Py_ssize_t task, Py_ssize_t N, Py_ssize_t img,
                     Py_ssize_t Pg, Py_ssize_t P, Py_ssize_t G, Py_ssize_t Fg, Py_ssize_t Kg,
                     Py_ssize_t nfb, Py_ssize_t nkb, Py_ssize_t MF, Py_ssize_t MK,
                     Py_ssize_t NB) noexcept nogil:
    cdef Py_ssize_t goff[12]
    cdef Py_ssize_t xoff[12]
    cdef floating ct[48]
    cdef Py_ssize_t kb = task % nkb, fb = (task // nkb) % nfb
    cdef Py_ssize_t g = (task // (nkb * nfb)) % G, ch = task // (nkb * nfb * G)
    cdef Py_ssize_t F = G * Fg, n0 = ch * NB, nn = min(NB, N - n0), a, b
    cdef Py_ssize_t nf = min(MF, Fg - fb * MF), nk = min(MK, Kg - kb * MK)
    cdef floating* d = dst + (ch * F + g * Fg + fb * MF) * Kg + kb * MK
    # A short last block repeats its last filter / tap (real data; the copies are discarded).
    for a in range(MF):
        goff[a] = (g * Fg + min(fb * MF + a, Fg - 1)) * Pg
    for b in range(MK):
        xoff[b] = g * (img // G) + off[min(kb * MK + b, Kg - 1)]
    _rtile(MF, MK, gw + n0 * F * Pg, F * Pg, goff, xs + n0 * img, img, xoff, nn, P,
           n0 + nn == N, ct, MK)
    for a in range(nf):
        for b in range(nk):
            d[a * Kg + b] = ct[a * MK + b]


cdef inline floating _sum(const floating* a, Py_ssize_t n) noexcept nogil:
    """sum_k a[k] as LANES partial sums added in a fixed order (vectorises without -ffast-math)."""
    cdef floating acc[LANES]
    cdef floating s = 0
    cdef Py_ssize_t k, lane, nb = n - n % LANES
    for lane in range(LANES):
        acc[lane] = 0
    k = 0
    while k < nb:
        for lane in range(LANES):
            acc[lane] = acc[lane] + a[k + lane]
        k = k + LANES
    for lane in range(n - nb):
        acc[lane] = acc[lane] + a[nb + lane]
    for lane in range(LANES):
        s = s + acc[lane]
    return s


def bias_grad(const floating[:, :, :, ::1] dy,  # IN  (N, F, OH, OW)
              floating[::1] db,                 # OUT (F,)
              int n_threads):
    """db[f] = sum_{n,i,j} dy[n,f,i,j], the batch added in the order n = 0, 1, ...

    Each task owns a block of filters and walks the batch image by image, so that it reads its
    part of dy front to back (a filter at a time jumped N times across the whole array: 1.1-1.35x
    slower, measured side by side at batch 64). The order of each db[f]'s sum does not depend on
    the blocks, so neither does the result.
    """
    cdef Py_ssize_t N = dy.shape[0], F = dy.shape[1], HW = dy.shape[2] * dy.shape[3]
    cdef Py_ssize_t nb = min(F, <Py_ssize_t> max(n_threads, 1)), fb = (F + nb - 1) // nb
    cdef Py_ssize_t blk, f, f0, f1, n
    if F == 0:
        return
    # Race-free: block blk writes only db[blk*fb : (blk+1)*fb].
    for blk in prange(nb, nogil=True, schedule='static', num_threads=n_threads):
        f0 = blk * fb
        f1 = min(F, f0 + fb)
        for f in range(f0, f1):
            db[f] = 0
        for n in range(N):
            for f in range(f0, f1):
                db[f] = db[f] + _sum(&dy[n, f, 0, 0], HW)


# ---------------------------------------------------------------------------------------------
# Direct definitions (exact IEEE semantics for inf/NaN; the forced "direct" algorithm)
# ---------------------------------------------------------------------------------------------

def forward_direct(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
                   const floating[:, :, :, ::1] w,  # IN  (F, Cg, KH, KW)
                   const floating[::1] b,           # IN  (F,)
                   floating[:, :, :, ::1] y,        # OUT (N, F, OH, OW)
                   Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                   Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t G, bint relu, int n_threads):
    """y[n,f,i,j] = b[f] + sum over the taps that read x (not padding) of
    w[f,c,p,q] * x[n, g*Cg + c, i*sh + p*dh - pt, j*sw + q*dw - pl]. Parallel over (n, f)."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3], Fg = F // G
    cdef Py_ssize_t nf, n, f, g, i, j, c, p, q, h, v
    cdef floating s
    # Race-free: (n, f) writes only y[n, f].
    for nf in prange(N * F, nogil=True, schedule='static', num_threads=n_threads):
        n = nf // F
        f = nf % F
        g = f // Fg
        for i in range(OH):
            for j in range(OW):
                s = 0
                for c in range(Cg):
                    for p in range(KH):
                        h = i * sh + p * dh - pt
                        if h < 0 or h >= H:
                            continue
                        for q in range(KW):
                            v = j * sw + q * dw - pl
                            if 0 <= v < W:
                                s = s + w[f, c, p, q] * x[n, g * Cg + c, h, v]
                s = s + b[f]
                y[n, f, i, j] = 0 if relu and s < 0 else s


def backward_input_direct(const floating[:, :, :, ::1] dy,  # IN  (N, F, OH, OW)
                          const floating[:, :, :, ::1] w,   # IN  (F, Cg, KH, KW)
                          floating[:, :, :, ::1] dx,        # OUT (N, C, H, W)
                          Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                          Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t G, int n_threads):
    """dx[n,c,h,v] = sum over (f, p, q) with h + pt - p*dh = i*sh, 0 <= i < OH (and the same
    for v) of dy[n,f,i,j] * w[f,c,p,q]: only the products the forward pass formed. Parallel
    over (n, c)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3], Fg = F // G
    cdef Py_ssize_t nc, n, c, g, cl, h, v, f, p, q, ih, jw
    cdef floating s
    # Race-free: (n, c) writes only dx[n, c].
    for nc in prange(N * C, nogil=True, schedule='static', num_threads=n_threads):
        n = nc // C
        c = nc % C
        g = c // Cg
        cl = c - g * Cg
        for h in range(H):
            for v in range(W):
                s = 0
                for f in range(g * Fg, (g + 1) * Fg):
                    for p in range(KH):
                        ih = h + pt - p * dh
                        if ih < 0 or ih % sh != 0 or ih // sh >= OH:
                            continue
                        for q in range(KW):
                            jw = v + pl - q * dw
                            if jw < 0 or jw % sw != 0 or jw // sw >= OW:
                                continue
                            s = s + dy[n, f, ih // sh, jw // sw] * w[f, cl, p, q]
                dx[n, c, h, v] = s


def backward_weight_direct(const floating[:, :, :, ::1] x,   # IN  (N, C, H, W)
                           const floating[:, :, :, ::1] dy,  # IN  (N, F, OH, OW)
                           floating[:, :, :, ::1] dw,        # OUT (F, Cg, KH, KW)
                           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                           Py_ssize_t dh, Py_ssize_t dwl, Py_ssize_t G, int n_threads):
    """dw[f,c,p,q] = sum over n, i, j whose tap reads x (not padding) of
    dy[n,f,i,j] * x[n, g*Cg + c, i*sh + p*dh - pt, j*sw + q*dwl - pl]. Parallel over f."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = dw.shape[0], Cg = dw.shape[1], KH = dw.shape[2], KW = dw.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3], Fg = F // G
    cdef Py_ssize_t f, g, c, p, q, n, i, j, h, v
    cdef floating s
    # Race-free: f writes only dw[f].
    for f in prange(F, nogil=True, schedule='static', num_threads=n_threads):
        g = f // Fg
        for c in range(Cg):
            for p in range(KH):
                for q in range(KW):
                    s = 0
                    for n in range(N):
                        for i in range(OH):
                            h = i * sh + p * dh - pt
                            if h < 0 or h >= H:
                                continue
                            for j in range(OW):
                                v = j * sw + q * dwl - pl
                                if 0 <= v < W:
                                    s = s + dy[n, f, i, j] * x[n, g * Cg + c, h, v]
                    dw[f, c, p, q] = s


def all_finite(const floating[::1] a):
    """True when no element is inf or NaN (v - v is 0 exactly for finite v)."""
    cdef Py_ssize_t k, n = a.shape[0]
    cdef int bad = 0
    with nogil:
        for k in range(n):
            bad = bad | (a[k] - a[k] != 0)
    return not bad


cdef class Snapshot:
    """What an array held, to tell cheaply whether it still holds the same bytes, so that work
    derived from it (a transposed, packed or folded weight) can be reused.

    A read-only array (``frozen``: not writeable, nor is any array it is a view of; see
    ``Module.freeze``) cannot change without first being made writeable again, so its
    snapshot keeps a reference, not a copy: ``same(a)`` is true when ``a`` is that very array
    and still frozen (an identity test and a few flag reads, whatever its size). Any other
    array is copied (C-contiguous), and ``same(a)`` is true when ``a`` is C-contiguous with the
    copy's shape and element format and one memcmp finds the same bytes (NaN equals itself,
    -0.0 differs from 0.0: what matters is that a result computed from it is the same). Done in
    C with no allocation: about 0.1 us plus the memcmp, where the same checks through NumPy
    attributes cost 1.5 us, several times per layer call at batch 1 (memcmp itself runs at 3x
    the speed of ``np.not_equal`` plus a reduction)."""

    cdef readonly object copy  # the bytes (None in reference mode)
    cdef readonly object source  # the frozen array itself (None in copy mode)
    cdef object _shape, _dtype
    cdef Py_buffer _view  # of copy, held for the snapshot's life
    cdef bint _held

    def __cinit__(self, a):
        self._take(a)

    def __dealloc__(self):
        self._release()

    cdef _release(self):
        if self._held:
            PyBuffer_Release(&self._view)
            self._held = False

    cdef _take(self, a):
        import numpy
        self._release()
        self._shape, self._dtype = a.shape, a.dtype
        if _frozen(a):
            self.source, self.copy = a, None
            return
        self.source = None
        self.copy = numpy.array(a, order="C", copy=True)
        PyObject_GetBuffer(self.copy, &self._view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
        self._held = True

    def same(self, a):
        """True when `a` holds the snapshot's bytes in its shape and format."""
        cdef Py_buffer ba
        cdef bint equal
        cdef int k
        if a is None:
            return False
        if not self._held:  # reference mode
            return a is self.source and _frozen(a)
        try:
            PyObject_GetBuffer(a, &ba, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
        except (BufferError, TypeError, ValueError):  # not contiguous, or not an array
            return False
        try:
            equal = ba.ndim == self._view.ndim and ba.len == self._view.len and \
                ba.itemsize == self._view.itemsize and \
                strcmp(ba.format, self._view.format) == 0
            for k in range(ba.ndim if equal else 0):
                equal = equal and ba.shape[k] == self._view.shape[k]
            if equal:
                with nogil:
                    equal = memcmp(ba.buf, self._view.buf, ba.len) == 0
        finally:
            PyBuffer_Release(&ba)
        return equal

    def update(self, a):
        """Take a new snapshot of `a`, of the snapshot's shape and dtype (else ValueError)."""
        if not self.same_layout(a):
            raise ValueError(f"a snapshot of shape {self._shape} and dtype {self._dtype} "
                             f"cannot take an array of shape {getattr(a, 'shape', None)} and "
                             f"dtype {getattr(a, 'dtype', None)}")
        if self._held and not _frozen(a):
            import numpy
            numpy.copyto(self.copy, a)
        else:
            self._take(a)

    def same_layout(self, a):
        """True when `a` has the snapshot's shape and dtype (whatever its bytes)."""
        return a is not None and a.shape == self._shape and a.dtype == self._dtype


def frozen(a):
    """True when the NumPy array `a` cannot be written through itself or the arrays it is a
    view of without first making one writeable again: none of them is writeable, and the
    memory's owner is an array or an immutable ``bytes`` object (NumPy refuses to make a view
    of read-only memory writeable). A view taken while the memory was writeable keeps its own
    flag: writes through it are not excluded (see ``Module.freeze``)."""
    return _frozen(a)


cdef bint _frozen(object a) except -1:
    cdef object o = a
    while True:
        if not isinstance(o, ndarray_type):
            return isinstance(o, bytes) and o is not a
        if o.flags.writeable:
            return False
        if o.base is None:
            return True
        o = o.base


# ---------------------------------------------------------------------------------------------
# Matrix-product tiles
# ---------------------------------------------------------------------------------------------

cdef inline void _corr_tile(Py_ssize_t ob, const floating* inp, Py_ssize_t plane, Py_ssize_t row,
                            Py_ssize_t Cin, const floating* w, Py_ssize_t ws_o, Py_ssize_t ws_i,
                            Py_ssize_t ws_p, Py_ssize_t ws_q, Py_ssize_t KH, Py_ssize_t KW,
                            floating* out, Py_ssize_t ostride) noexcept nogil:
    """out[o*ostride + u] = sum_{c,p,q} w(o,c,p,q) * inp[c*plane + p*row + q + u], o < 4."""
    if floating is float:
        fc_tile4_f(inp, plane, row, Cin, w, ws_o, ws_i, ws_p, ws_q, KH, KW, out, ostride)
    else:
        fc_tile4_d(inp, plane, row, Cin, w, ws_o, ws_i, ws_p, ws_q, KH, KW, out, ostride)


cdef inline void _corr_tile1(const floating* inp, Py_ssize_t plane, Py_ssize_t row, Py_ssize_t Cin,
                             const floating* w, Py_ssize_t ws_i, Py_ssize_t ws_p, Py_ssize_t ws_q,
                             Py_ssize_t KH, Py_ssize_t KW, floating* out,
                             Py_ssize_t n) noexcept nogil:
    """out[u] = sum_{c,p,q} w(c,p,q) * inp[c*plane + p*row + q + u] for u < n (n <= MAX_TILE)."""
    cdef floating a[MAX_TILE]
    cdef floating wv
    cdef const floating* xs
    cdef Py_ssize_t c, p, q, u
    for u in range(n):
        a[u] = 0
    for c in range(Cin):
        for p in range(KH):
            for q in range(KW):
                xs = inp + c * plane + p * row + q
                wv = w[c * ws_i + p * ws_p + q * ws_q]
                for u in range(n):
                    a[u] = a[u] + wv * xs[u]
    for u in range(n):
        out[u] = a[u]


# ---------------------------------------------------------------------------------------------
# Matrix product (dense layers, and a convolution whose kernel covers its whole input)
# ---------------------------------------------------------------------------------------------

cdef inline void _gemm_row(const floating* b, Py_ssize_t N, const floating* a, Py_ssize_t sa_k,
                           Py_ssize_t K, floating* c) noexcept nogil:
    """c[j] = sum_k a[k*sa_k] * b[k*N + j] for j < N: one row of C, each element the same sum,
    in the same order, as in the row tiles (fc_gemrow*). Columns go 8, then 4, then 2 vectors at
    a time; the last 2-vector piece ends at N, recomputing a few columns (the same values)."""
    cdef Py_ssize_t NL = FC_LANES_F if floating is float else FC_LANES_D
    cdef Py_ssize_t j = 0
    while j + 8 * NL <= N:
        if floating is float:
            fc_gemrow8_f(b + j, N, a, sa_k, K, c + j)
        else:
            fc_gemrow8_d(b + j, N, a, sa_k, K, c + j)
        j = j + 8 * NL
    if j + 4 * NL <= N:
        if floating is float:
            fc_gemrow4_f(b + j, N, a, sa_k, K, c + j)
        else:
            fc_gemrow4_d(b + j, N, a, sa_k, K, c + j)
        j = j + 4 * NL
    if N >= 2 * NL:
        while j < N:
            j = min(j, N - 2 * NL)
            if floating is float:
                fc_gemrow2_f(b + j, N, a, sa_k, K, c + j)
            else:
                fc_gemrow2_d(b + j, N, a, sa_k, K, c + j)
            j = j + 2 * NL
    elif j < N:
        _corr_tile1(b + j, 0, N, 1, a, 0, sa_k, 0, K, 1, c + j, N - j)


def gemm(const floating[::1] a,    # IN  A (M, K), element (m, k) at a[m*sa_m + k*sa_k]
         Py_ssize_t sa_m, Py_ssize_t sa_k, Py_ssize_t M, Py_ssize_t K,
         const floating[:, ::1] b,  # IN  B (K, N)
         floating[:, ::1] c,        # OUT C (M, N)
         int n_threads):
    """C = A @ B, with A read through strides so that A may be a transposed view.

    ``C[m, j] = sum_k A[m, k] * B[k, j]``, summed in the order k = 0, 1, ..., K-1 for every
    element. It is the wide-row correlation again: rows of B play the input rows and entries of
    A the kernel taps, so the same register tiles (OB = 6 rows of C x one tile of columns: 12
    vector accumulators, enough to cover the FMA latency; then 4 rows; then single rows 8, 4
    and 2 vectors wide, ``_gemm_row``, for the rows past the last whole block) do the work.

    Parallel over runs of up to GEMM_BLOCKS blocks of OB rows of C, as many runs as threads
    where the rows allow: each task owns its rows. Within a run the column tile is the outer
    loop, so one K x tile panel of B stays in cache while every block of the run reads it
    (the blocks-outer order streamed all of B once per block: a 3136 x 128 layer at batch 64
    read 26 MB of B per call). Each element is the same sum whatever the tile or the run
    length, so results do not depend on the thread count.
    """
    if M and b.shape[1]:
        _gemm(&a[0], sa_m, sa_k, M, K, &b[0, 0], b.shape[1], &c[0, 0], n_threads)


cdef void _gemm(const floating* a, Py_ssize_t sa_m, Py_ssize_t sa_k, Py_ssize_t M, Py_ssize_t K,
                const floating* b, Py_ssize_t N, floating* c, int n_threads) noexcept nogil:
    cdef Py_ssize_t n_blocks = (M + OB - 1) // OB
    n_threads = _threads_for(M * N * K, n_threads)
    # Blocks per run: GEMM_BLOCKS, or more while the run's rows of A stay within 64K elements
    # (short sums, e.g. a weight gradient over a batch of 64: B is then read once per run).
    cdef Py_ssize_t per_run = max(1, min(max(<Py_ssize_t> GEMM_BLOCKS, 65536 // max(OB * K, 1)),
                                         (n_blocks + n_threads - 1) // max(n_threads, 1)))
    cdef Py_ssize_t n_runs = (n_blocks + per_run - 1) // per_run
    cdef Py_ssize_t run
    # Race-free: run writes only rows OB*run*per_run .. OB*(run+1)*per_run - 1 of C.
    if n_threads == 1:  # serial: see SERIAL in the header
        for run in range(n_runs):
            _gemm_run(a, sa_m, sa_k, M, K, b, N, c, run, per_run, n_blocks)
        return
    for run in prange(n_runs, schedule='static', num_threads=n_threads):
        _gemm_run(a, sa_m, sa_k, M, K, b, N, c, run, per_run, n_blocks)


cdef void _gemm_run(const floating* a, Py_ssize_t sa_m, Py_ssize_t sa_k, Py_ssize_t M,
                    Py_ssize_t K, const floating* b, Py_ssize_t N, floating* c, Py_ssize_t run,
                    Py_ssize_t per_run, Py_ssize_t n_blocks) noexcept nogil:
    """Rows OB*run*per_run .. of C = A @ B: register tiles of OB rows x TT columns, the last
    partial block 4 rows together, what is left by one-row tiles."""
    cdef Py_ssize_t TT = FC_TILE_F if floating is float else FC_TILE_D
    cdef Py_ssize_t blk, m0, m, m1, j0, j
    cdef Py_ssize_t blk_end = min(n_blocks, (run + 1) * per_run)
    if N >= TT:
        j0 = 0
        while j0 < N:
            j = min(j0, N - TT)  # the last tile ends at N, recomputing a few columns
            for blk in range(run * per_run, blk_end):
                m0 = blk * OB
                if m0 + OB <= M:
                    if floating is float:
                        fc_tile6_f(b + j, 0, N, 1, a + m0 * sa_m, sa_m, 0, sa_k, 0, K, 1,
                                   c + m0 * N + j, N)
                    else:
                        fc_tile6_d(b + j, 0, N, 1, a + m0 * sa_m, sa_m, 0, sa_k, 0, K, 1,
                                   c + m0 * N + j, N)
                elif m0 + 4 <= M:  # the last, partial block: 4 rows together
                    _corr_tile(4, b + j, 0, N, 1, a + m0 * sa_m, sa_m, 0, sa_k, 0, K, 1,
                               c + m0 * N + j, N)
            j0 = j0 + TT
    for blk in range(run * per_run, blk_end):
        m0 = blk * OB
        m1 = min(m0 + OB, M)  # rows left to the one-row tiles: all of them when N < TT
        if N >= TT:
            m0 = m1 if m0 + OB <= M else (m0 + 4 if m0 + 4 <= M else m0)
        for m in range(m0, m1):
            _gemm_row(b, N, a + m * sa_m, sa_k, K, c + m * N)


# ---------------------------------------------------------------------------------------------
# Bound calls (_bound.pxi): a layer's repeated forward with its arguments fixed once
# ---------------------------------------------------------------------------------------------

cdef struct _FwdArgs:
    Py_ssize_t N, C, H, W, F, OH, OW, sh, sw, HPh, WPh, G, MR, NR, NF, Kg, top, left
    bint lanes, split, relu
    int n_threads
    char* xs
    const char* wpk
    const char* bpk
    const Py_ssize_t* off
    char* y


cdef void _bound_forward(const floating* x, const floating* b, const _FwdArgs* a) noexcept nogil:
    cdef const floating* src = x
    if a.split:
        _pad_split(x, a.N * a.C, a.H, a.W, <floating*> a.xs, a.top, a.left, a.sh, a.sw, a.HPh,
                   a.WPh, a.n_threads)
        src = <const floating*> a.xs
    if a.lanes:
        _forward_lanes(src, <const floating*> a.wpk, <const floating*> a.bpk, a.off, a.Kg,
                       <floating*> a.y, a.N, a.F, a.OH, a.OW, a.C, a.sh, a.sw, a.HPh, a.WPh, a.G,
                       a.NF, a.relu, a.n_threads)
    else:
        _forward(src, <const floating*> a.wpk, a.off, a.Kg, b, <floating*> a.y, a.N, a.F, a.OH,
                 a.OW, a.C, a.sh, a.sw, a.HPh, a.WPh, a.G, a.MR, a.NR, a.relu, a.n_threads)


cdef struct _FwdLink:
    const _FwdArgs* a
    const char* bp
    bint dbl


cdef void _link_forward(void* state, const char* x) noexcept nogil:
    cdef _FwdLink* s = <_FwdLink*> state
    if s.dbl:
        _bound_forward(<const double*> x, <const double*> s.bp, s.a)
    else:
        _bound_forward(<const float*> x, <const float*> s.bp, s.a)


cdef class BoundForward:
    """``forward_lanes`` (``lanes``) or ``forward``, after ``pad_split`` into ``xs`` when xs is
    given (else the input is read as the phase planes), with every argument but the input and
    the bias fixed: ``bound(x, b)`` for x (N, C, H, W) and b (F,) C-contiguous in y's dtype
    (``forward_lanes`` reads the packed bias, not b). The packed weights must hold the packing
    of the weight in use: the caller checks that, as for the unbound kernels."""

    cdef _FwdArgs a
    cdef object keep  # the arrays the pointers point into
    cdef Py_ssize_t x_bytes, b_bytes
    cdef bint dbl
    cdef _FwdLink fl
    cdef _Link link_
    cdef object link_bias

    def __init__(self, bint lanes, x_shape, xs, wpk, bpk, const Py_ssize_t[::1] off, y,
                 Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t HPh, Py_ssize_t WPh, Py_ssize_t G,
                 Py_ssize_t MR, Py_ssize_t NR, Py_ssize_t NF, Py_ssize_t top, Py_ssize_t left,
                 bint relu, int n_threads):
        cdef Py_ssize_t item = y.dtype.itemsize
        self.dbl = item == 8
        self.a.N, self.a.C, self.a.H, self.a.W = x_shape
        self.a.F, self.a.OH, self.a.OW = y.shape[1], y.shape[2], y.shape[3]
        if y.shape[0] != self.a.N or min(x_shape) < 1 or min(y.shape) < 1:
            raise ValueError(f"a bound forward needs non-empty x and y of one batch, got "
                             f"{tuple(x_shape)} and {y.shape}")
        self.a.sh, self.a.sw, self.a.HPh, self.a.WPh, self.a.G = sh, sw, HPh, WPh, G
        if lanes:
            _check_nf(NF, self.dbl)
        self.a.MR, self.a.NR, self.a.NF, self.a.Kg = MR, NR, NF, off.shape[0]
        self.a.top, self.a.left, self.a.lanes, self.a.relu = top, left, lanes, relu
        self.a.split, self.a.n_threads = xs is not None, n_threads
        self.keep = (xs, wpk, bpk, off, y)
        self.a.xs = _bound_data(xs, xs.nbytes, self.dbl, True) if xs is not None else NULL
        self.a.wpk = _bound_data(wpk, wpk.nbytes, self.dbl, False)
        self.a.bpk = _bound_data(bpk, bpk.nbytes, self.dbl, False) if lanes else NULL
        self.a.off = &off[0]
        self.a.y = _bound_data(y, y.nbytes, self.dbl, True)
        self.x_bytes = self.a.N * self.a.C * self.a.H * self.a.W * item
        self.b_bytes = self.a.F * item

    def link(self, b):
        """This call with the bias fixed as a chain link (a capsule; see ``Chain``)."""
        self.link_bias = b
        self.fl.a, self.fl.dbl = &self.a, self.dbl
        self.fl.bp = NULL if self.a.lanes else _bound_data(b, self.b_bytes, self.dbl, False)
        self.link_.fn, self.link_.state = _link_forward, &self.fl
        self.link_.x_bytes, self.link_.out = self.x_bytes, self.a.y
        self.link_.out_bytes = self.a.N * self.a.F * self.a.OH * self.a.OW * (8 if self.dbl
                                                                              else 4)
        return _link_capsule(&self.link_)

    def __call__(self, x, b):
        cdef const char* xp = _bound_data(x, self.x_bytes, self.dbl, False)
        cdef const char* bp = NULL
        if not self.a.lanes:  # (forward_lanes reads the packed bias)
            bp = _bound_data(b, self.b_bytes, self.dbl, False)
        with nogil:
            if self.dbl:
                _bound_forward(<const double*> xp, <const double*> bp, &self.a)
            else:
                _bound_forward(<const float*> xp, <const float*> bp, &self.a)


def gemm_nt(const floating[:, ::1] a,  # IN  A (M, K)
            const floating[:, ::1] b,  # IN  B (N, K)
            floating[:, ::1] c,        # OUT C (M, N)
            int n_threads):
    """C = A @ B.T with both operands read by rows: a dense layer's input and its weight as the
    layer holds it (no transposed copy to make, nor to keep current while cached).

    ``C[i, j]`` is the dot product of row i of A and row j of B in the fixed order of
    fc_dot_block (_microkernels.h: lane sums over k mod 8 (4 for float64), a fixed tree over
    the lanes, then the tail in order), whatever the tile that computes it, M, or the thread
    count. Parallel over blocks of NT_ROWS rows x NT_COLS columns of C: each task owns its
    block.
    """
    if a.shape[0] and b.shape[0]:
        _gemm_nt(&a[0, 0], &b[0, 0], &c[0, 0], a.shape[0], b.shape[0], a.shape[1], n_threads)


cdef void _gemm_nt(const floating* a, const floating* b, floating* c, Py_ssize_t M,
                   Py_ssize_t N, Py_ssize_t K, int n_threads) noexcept nogil:
    cdef Py_ssize_t nbm = (M + NT_ROWS - 1) // NT_ROWS, nbn = (N + NT_COLS - 1) // NT_COLS
    cdef Py_ssize_t task
    n_threads = _threads_for(M * N * K, n_threads)
    # Race-free: task (row block, column block) writes only its block of C.
    if n_threads == 1:  # serial: see SERIAL in the header
        for task in range(nbm * nbn):
            _gemm_nt_task(a, b, c, M, N, K, nbn, task)
        return
    for task in prange(nbm * nbn, schedule='static', num_threads=n_threads):
        _gemm_nt_task(a, b, c, M, N, K, nbn, task)


cdef inline void _gemm_nt_task(const floating* a, const floating* b, floating* c, Py_ssize_t M,
                               Py_ssize_t N, Py_ssize_t K, Py_ssize_t nbn,
                               Py_ssize_t task) noexcept nogil:
    cdef Py_ssize_t i0 = (task // nbn) * NT_ROWS, j0 = (task % nbn) * NT_COLS
    if floating is float:
        fc_dot_block_f(a, K, b, K, K, c, N, i0, min(M, i0 + NT_ROWS), j0, min(N, j0 + NT_COLS))
    else:
        fc_dot_block_d(a, K, b, K, K, c, N, i0, min(M, i0 + NT_ROWS), j0, min(N, j0 + NT_COLS))


cdef void _bound_linear(const floating* x, const floating* w, const floating* bias,
                        floating* y, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N, bint relu,
                        int n_threads) noexcept nogil:
    cdef Py_ssize_t m, j
    cdef floating v
    _gemm_nt(x, w, y, M, N, K, n_threads)
    if bias == NULL and not relu:
        return
    for m in range(M):  # bitwise what NumPy's add and maximum(., 0) give
        for j in range(N):
            v = y[m * N + j]
            if bias != NULL:
                v = v + bias[j]
            if relu and not v > 0 and v == v:
                v = 0
            y[m * N + j] = v


cdef struct _LinLink:
    const char* w
    const char* bias
    char* y
    Py_ssize_t M, K, N
    bint relu, dbl
    int n_threads


cdef void _link_linear(void* state, const char* x) noexcept nogil:
    cdef _LinLink* s = <_LinLink*> state
    if s.dbl:
        _bound_linear(<const double*> x, <const double*> s.w, <const double*> s.bias,
                      <double*> s.y, s.M, s.K, s.N, s.relu, s.n_threads)
    else:
        _bound_linear(<const float*> x, <const float*> s.w, <const float*> s.bias,
                      <float*> s.y, s.M, s.K, s.N, s.relu, s.n_threads)


cdef class BoundLinear:
    """y = x @ w.T (+ bias) (then max(., 0), NaN kept, if relu): ``gemm_nt`` with every argument
    but the input fixed: ``bound(x)`` for x (M, K) C-contiguous (any shape of that size), w
    (N, K) and y (M, N) C-contiguous, bias (N,) or None. Bitwise ``gemm_nt`` then NumPy's add
    of the bias and maximum with 0."""

    cdef object keep
    cdef char* w
    cdef char* bias
    cdef char* y
    cdef Py_ssize_t M, K, N, x_bytes
    cdef bint relu, dbl
    cdef int n_threads
    cdef _LinLink ll
    cdef _Link link_

    def __init__(self, w, bias, y, bint relu, int n_threads):
        cdef Py_ssize_t item = y.dtype.itemsize
        self.dbl = item == 8
        self.M, self.N = y.shape
        self.K = w.shape[1]
        if self.M < 1 or self.K < 1 or self.N < 1 or w.shape[0] != self.N:
            raise ValueError(f"a bound dense product needs non-empty w (N, K) and y (M, N), "
                             f"got w {w.shape} and y {y.shape}")
        self.keep = (w, bias, y)
        self.w = _bound_data(w, w.nbytes, self.dbl, False)
        self.bias = NULL if bias is None else _bound_data(bias, self.N * item, self.dbl, False)
        self.y = _bound_data(y, y.nbytes, self.dbl, True)
        self.relu, self.n_threads = relu, n_threads
        self.x_bytes = self.M * self.K * item

    def link(self):
        """This call as a chain link (a capsule; see ``Chain``)."""
        self.ll.w, self.ll.bias, self.ll.y = self.w, self.bias, self.y
        self.ll.M, self.ll.K, self.ll.N = self.M, self.K, self.N
        self.ll.relu, self.ll.dbl, self.ll.n_threads = self.relu, self.dbl, self.n_threads
        self.link_.fn, self.link_.state = _link_linear, &self.ll
        self.link_.x_bytes, self.link_.out = self.x_bytes, self.y
        self.link_.out_bytes = self.M * self.N * (8 if self.dbl else 4)
        return _link_capsule(&self.link_)

    def __call__(self, x):
        cdef const char* xp = _bound_data(x, self.x_bytes, self.dbl, False)
        with nogil:
            if self.dbl:
                _bound_linear(<const double*> xp, <const double*> self.w,
                              <const double*> self.bias, <double*> self.y, self.M, self.K,
                              self.N, self.relu, self.n_threads)
            else:
                _bound_linear(<const float*> xp, <const float*> self.w,
                              <const float*> self.bias, <float*> self.y, self.M, self.K,
                              self.N, self.relu, self.n_threads)


cdef class Chain:
    """Bound calls run one after another in C, each on the previous one's output: a frozen
    model's eval forward in one call (``nn.container``). ``chain(x)`` runs the links on x (a
    C-contiguous array of the chain's dtype) when every array of ``readonly`` is still
    read-only, and returns whether it ran (False: nothing done; the caller takes its checked
    path). The links must come from bound calls that ``owners`` keep alive, each reading as
    many bytes as the one before writes (else ValueError).

    With ``chunks`` > 1 the links are bound for a slice of the batch: x holds ``chunks`` such
    slices one after another, the links run on each in turn, and each slice's result is copied
    to its place in ``out`` (a C-contiguous array of ``chunks`` results): the intermediate
    arrays of one slice stay in cache from one link to the next."""

    cdef _Link** links
    cdef Py_ssize_t n, x_bytes, chunks, out_bytes
    cdef char* out
    cdef bint dbl
    cdef object owners, readonly

    def __cinit__(self):
        self.links = NULL

    def __init__(self, capsules, owners, readonly, bint dbl, Py_ssize_t chunks=1, out=None):
        cdef Py_ssize_t i
        capsules = tuple(capsules)
        if not capsules or chunks < 1:
            raise ValueError(f"a chain needs at least one link and one chunk, got "
                             f"{len(capsules)} and {chunks}")
        self.links = <_Link**> PyMem_Malloc(len(capsules) * sizeof(_Link*))
        if self.links == NULL:
            raise MemoryError()
        for i, cap in enumerate(capsules):
            self.links[i] = <_Link*> PyCapsule_GetPointer(cap, b"fastcnn._kernels.chain_link")
            if i and self.links[i].x_bytes != self.links[i - 1].out_bytes:
                raise ValueError(f"chain link {i} reads {self.links[i].x_bytes} bytes, link "
                                 f"{i - 1} writes {self.links[i - 1].out_bytes}")
        self.n, self.dbl, self.chunks = len(capsules), dbl, chunks
        self.x_bytes = self.links[0].x_bytes
        self.out_bytes = self.links[self.n - 1].out_bytes
        self.out = NULL
        if chunks > 1:
            self.out = _bound_data(out, chunks * self.out_bytes, dbl, True)
        self.owners, self.readonly = (tuple(owners), capsules, out), tuple(readonly)

    def __dealloc__(self):
        PyMem_Free(self.links)

    def __call__(self, x):
        cdef const char* xp = _bound_data(x, self.chunks * self.x_bytes, self.dbl, False)
        cdef const char* cur
        cdef Py_buffer v
        cdef Py_ssize_t i, c
        for a in self.readonly:
            PyObject_GetBuffer(a, &v, PyBUF_STRIDES)
            i = v.readonly
            PyBuffer_Release(&v)
            if not i:
                return False
        with nogil:
            for c in range(self.chunks):
                cur = xp + c * self.x_bytes
                for i in range(self.n):
                    self.links[i].fn(self.links[i].state, cur)
                    cur = self.links[i].out
                if self.chunks > 1:
                    memcpy(self.out + c * self.out_bytes, cur, self.out_bytes)
        return True
