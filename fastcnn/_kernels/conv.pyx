"""Direct 2-D convolution: forward, input gradient and weight gradient (no im2col).

Shapes (NCHW, C-contiguous, validated by ``fastcnn.functional``):

    x  (N, C, H, W)      w  (F, C, KH, KW)      b  (F,)      y, dy  (N, F, OH, OW)
    OH = (H + 2*ph - KH) // sh + 1              OW = (W + 2*pw - KW) // sw + 1

``xp`` is ``x`` zero-padded by ``ph`` rows and ``pw`` columns on every side (``HP x WP``).

Stride-1 layers (all of LeNet-5) take the "wide row" fast path: a padded plane of width ``WP`` is
read as one flat vector, and output position ``(i, j)`` is computed at flat index ``t = i*WP + j``.
Then tap ``(p, q)`` of the kernel reads the input at ``t + p*WP + q`` for every output at once, so
the innermost loop runs over ``T = (OH-1)*WP + OW`` contiguous elements and vectorises; the
``WP - OW`` positions per row that are not real outputs are computed and dropped (they never read
outside the plane). Strided layers use the plain definition.

Where the filters fill whole vectors (F a multiple of 16 floats with AVX-512, 8 otherwise) and
the wide rows would waste more, the forward pass and the weight gradient put the filters on the
vector lanes instead (fc_crow, fc_dwrow in _microkernels.h): every product is then an output's.
A convolution whose kernel covers its whole input (LeNet's C5) is a matrix product: ``gemm``.

Every reduction runs in an order fixed by the shapes alone, never by the thread count, so results
are bitwise identical for any number of threads.
"""

from cython.parallel cimport parallel, prange
from cython cimport floating
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from libc.stdint cimport int64_t

include "_pool_plane.pxi"

cdef extern from "_microkernels.h" nogil:
    # Register-blocked inner loops (GCC/Clang vector extensions), documented in the header.
    const int FC_TILE_F  # output positions per tile, float32
    const int FC_TILE_D  # output positions per tile, float64
    void fc_tile4_f(const float* inp, Py_ssize_t plane, Py_ssize_t row, Py_ssize_t Cin,
                    const float* w, Py_ssize_t ws_o, Py_ssize_t ws_i, Py_ssize_t ws_p,
                    Py_ssize_t ws_q, Py_ssize_t KH, Py_ssize_t KW, float* out, Py_ssize_t ostride)
    void fc_tile4_d(const double* inp, Py_ssize_t plane, Py_ssize_t row, Py_ssize_t Cin,
                    const double* w, Py_ssize_t ws_o, Py_ssize_t ws_i, Py_ssize_t ws_p,
                    Py_ssize_t ws_q, Py_ssize_t KH, Py_ssize_t KW, double* out,
                    Py_ssize_t ostride)
    void fc_tile1_f(const float* inp, Py_ssize_t plane, Py_ssize_t row, Py_ssize_t Cin,
                    const float* w, Py_ssize_t ws_o, Py_ssize_t ws_i, Py_ssize_t ws_p,
                    Py_ssize_t ws_q, Py_ssize_t KH, Py_ssize_t KW, float* out, Py_ssize_t ostride)
    void fc_tile1_d(const double* inp, Py_ssize_t plane, Py_ssize_t row, Py_ssize_t Cin,
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
    const int FC_LANES_F  # lanes per vector, float32
    const int FC_LANES_D  # lanes per vector, float64
    const int FC_ROW  # output positions per channel-vectorised row tile
    void fc_crow_f(const float* x, Py_ssize_t plane, Py_ssize_t row, Py_ssize_t Cin,
                   const float* wt, Py_ssize_t F, Py_ssize_t KH, Py_ssize_t KW, const float* b,
                   int relu, float* out)
    void fc_crow_d(const double* x, Py_ssize_t plane, Py_ssize_t row, Py_ssize_t Cin,
                   const double* wt, Py_ssize_t F, Py_ssize_t KH, Py_ssize_t KW, const double* b,
                   int relu, double* out)
    void fc_dwrow3_f(const float* x, Py_ssize_t x_img, Py_ssize_t row, const float* g,
                     Py_ssize_t gs, Py_ssize_t N, Py_ssize_t OH, Py_ssize_t OW, float* acc)
    void fc_dwrow3_d(const double* x, Py_ssize_t x_img, Py_ssize_t row, const double* g,
                     Py_ssize_t gs, Py_ssize_t N, Py_ssize_t OH, Py_ssize_t OW, double* acc)
    void fc_dwrow5_f(const float* x, Py_ssize_t x_img, Py_ssize_t row, const float* g,
                     Py_ssize_t gs, Py_ssize_t N, Py_ssize_t OH, Py_ssize_t OW, float* acc)
    void fc_dwrow5_d(const double* x, Py_ssize_t x_img, Py_ssize_t row, const double* g,
                     Py_ssize_t gs, Py_ssize_t N, Py_ssize_t OH, Py_ssize_t OW, double* acc)
    void fc_dw4x2_f(const float* g0, const float* g1, const float* g2, const float* g3,
                    const float* x, Py_ssize_t xlen, Py_ssize_t n, float* acc)
    void fc_dw4x2_d(const double* g0, const double* g1, const double* g2, const double* g3,
                    const double* x, Py_ssize_t xlen, Py_ssize_t n, double* acc)

cdef enum:
    OB = 4        # output channels per block (gemm, weight gradient): each vector loaded feeds OB
    DW_CHUNKS = 8  # batch chunks of the wide weight gradient (fixed, never the thread count)
    MAX_TILE = 32  # the largest FC_TILE_F or FC_TILE_D of any build (AVX-512 float32)
    LANES = 16    # independent partial sums in _sum, added in a fixed order at the end


# ---------------------------------------------------------------------------------------------
# Helpers. All of them assume valid sizes and non-overlapping buffers.
# ---------------------------------------------------------------------------------------------

cdef inline void _pad_planes(const floating* src, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t top, Py_ssize_t left, Py_ssize_t sh, Py_ssize_t sw,
                             floating* dst, Py_ssize_t DH, Py_ssize_t DW) noexcept nogil:
    """dst[c] (DH x DW) = zeros with src[c, i, j] placed at (top + i*sh, left + j*sw).

    With sh = sw = 1 this is zero padding; with larger steps it also dilates (zeros between rows
    and columns), as the input gradient of a strided convolution needs.
    """
    cdef Py_ssize_t c, i, j
    cdef const floating* s
    cdef floating* d
    memset(dst, 0, C * DH * DW * sizeof(floating))
    for c in range(C):
        for i in range(H):
            s = src + (c * H + i) * W
            d = dst + (c * DH + top + i * sh) * DW + left
            for j in range(W):
                d[j * sw] = s[j]


cdef inline Py_ssize_t _block(Py_ssize_t n) noexcept nogil:
    """Channels per correlation tile for n output channels: 6 when that divides n, else 4, and
    1 below 4 channels."""
    return 6 if n % 6 == 0 else 4 if n >= 4 else 1


cdef inline void _corr_tile(Py_ssize_t ob, const floating* inp, Py_ssize_t plane, Py_ssize_t row,
                            Py_ssize_t Cin, const floating* w, Py_ssize_t ws_o, Py_ssize_t ws_i,
                            Py_ssize_t ws_p, Py_ssize_t ws_q, Py_ssize_t KH, Py_ssize_t KW,
                            floating* out, Py_ssize_t ostride) noexcept nogil:
    """out[o*ostride + u] = sum_{c,p,q} w(o,c,p,q) * inp[c*plane + p*row + q + u], o < ob, u < tile.

    ``ob`` is 1, 4 or 6; ``w(o, c, p, q) = w[o*ws_o + c*ws_i + p*ws_p + q*ws_q]``: negative strides
    read the kernel rotated by 180 degrees. The accumulators stay in registers for the whole sum.
    """
    if floating is float:
        if ob == 6:
            fc_tile6_f(inp, plane, row, Cin, w, ws_o, ws_i, ws_p, ws_q, KH, KW, out, ostride)
        elif ob == 4:
            fc_tile4_f(inp, plane, row, Cin, w, ws_o, ws_i, ws_p, ws_q, KH, KW, out, ostride)
        else:
            fc_tile1_f(inp, plane, row, Cin, w, ws_o, ws_i, ws_p, ws_q, KH, KW, out, ostride)
    else:
        if ob == 6:
            fc_tile6_d(inp, plane, row, Cin, w, ws_o, ws_i, ws_p, ws_q, KH, KW, out, ostride)
        elif ob == 4:
            fc_tile4_d(inp, plane, row, Cin, w, ws_o, ws_i, ws_p, ws_q, KH, KW, out, ostride)
        else:
            fc_tile1_d(inp, plane, row, Cin, w, ws_o, ws_i, ws_p, ws_q, KH, KW, out, ostride)


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


cdef inline void _corr_wide(Py_ssize_t ob, const floating* inp, Py_ssize_t plane,
                            Py_ssize_t row, Py_ssize_t Cin, const floating* w, Py_ssize_t ws_o,
                            Py_ssize_t ws_i, Py_ssize_t ws_p, Py_ssize_t ws_q, Py_ssize_t n_out,
                            Py_ssize_t KH, Py_ssize_t KW, floating* out, Py_ssize_t T,
                            Py_ssize_t base, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Stride-1 correlation over flat "wide" rows, for n_out output channels in tiles of ob.

    out[o*T + t] = sum_{c,p,q} w(o,c,p,q) * inp[c*plane + p*row + q + t],  0 <= t < T.

    Tiles of FC_TILE positions; the last tile is shifted back to end at T and recomputes a few
    positions with exactly the same operations, so no separate remainder loop is needed.
    Only rows r0 <= r < r1 of each input plane may be non-zero (``inp`` starts ``base`` elements
    into the plane): kernel rows p that would read only zero rows for a whole tile are skipped.
    The input gradient uses this for the zero rows of its padded output gradient.
    """
    cdef Py_ssize_t TT = FC_TILE_F if floating is float else FC_TILE_D
    cdef Py_ssize_t o, t0, t, n, p0, p1, u
    o = 0
    while o + ob <= n_out and T >= TT:
        t0 = 0
        while t0 < T:
            t = min(t0, T - TT)
            # Input rows this tile reads through kernel row p: (base+t)//row + p up to
            # (base+t+TT+KW-2)//row + p; keep the p for which that range meets [r0, r1).
            p0 = max(<Py_ssize_t> 0, r0 - (base + t + TT + KW - 2) // row)
            p1 = min(KH, r1 - (base + t) // row)
            if p1 > p0:
                _corr_tile(ob, inp + t + p0 * row, plane, row, Cin, w + o * ws_o + p0 * ws_p,
                           ws_o, ws_i, ws_p, ws_q, p1 - p0, KW, out + o * T + t, T)
            else:
                for n in range(ob):
                    for u in range(TT):
                        out[(o + n) * T + t + u] = 0
            t0 = t0 + TT
        o = o + ob
    while o < n_out:
        t0 = 0
        while t0 < T:
            n = min(TT, T - t0)
            _corr_tile1(inp + t0, plane, row, Cin, w + o * ws_o, ws_i, ws_p, ws_q,
                        KH, KW, out + o * T + t0, n)
            t0 = t0 + TT
        o = o + 1


cdef inline void _dw4x2(const floating* gw, Py_ssize_t TP, const floating* x, Py_ssize_t xlen,
                        floating* acc) noexcept nogil:
    """acc[(2r + k)*NL + l] += lane l of sum_t gw[r*TP + t] * x[t + k], r < 4, k < 2, t < TP;
    only xlen elements of x are read (see the header)."""
    if floating is float:
        fc_dw4x2_f(gw, gw + TP, gw + 2 * TP, gw + 3 * TP, x, xlen, TP, acc)
    else:
        fc_dw4x2_d(gw, gw + TP, gw + 2 * TP, gw + 3 * TP, x, xlen, TP, acc)


cdef bint _all_finite(const floating* a, Py_ssize_t n) noexcept nogil:
    """True when no element is inf or NaN (v - v is 0 exactly for finite v)."""
    cdef Py_ssize_t k
    cdef int bad = 0
    for k in range(n):
        bad = bad | (a[k] - a[k] != 0)
    return not bad


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


cdef inline void _store_rows(const floating* acc, Py_ssize_t row, floating bias, bint relu,
                             floating* y, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """y[i, j] = acc[i*row + j] + bias (then max(., 0) if relu): keep the real outputs of a
    wide-row result, dropping the row - OW columns that are not outputs."""
    cdef Py_ssize_t i, j
    cdef floating v
    for i in range(OH):
        for j in range(OW):
            v = acc[i * row + j] + bias
            y[i * OW + j] = 0 if relu and v < 0 else v  # NaN < 0 is false: NaN is kept


cdef inline void _conv_plane_strided(const floating* xp, Py_ssize_t C, Py_ssize_t HP,
                                     Py_ssize_t WP, const floating* w, Py_ssize_t KH,
                                     Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw, floating bias,
                                     bint relu, floating* y, Py_ssize_t OH,
                                     Py_ssize_t OW) noexcept nogil:
    """One output plane straight from the definition (any stride), on padded input planes:
    y[i, j] = bias + sum_{c,p,q} w[c, p, q] * xp[c, i*sh + p, j*sw + q]."""
    cdef Py_ssize_t i, j, c, p, q
    cdef floating v
    for i in range(OH):
        for j in range(OW):
            v = 0
            for c in range(C):
                for p in range(KH):
                    for q in range(KW):
                        v = v + (w[(c * KH + p) * KW + q]
                                 * xp[(c * HP + i * sh + p) * WP + j * sw + q])
            v = v + bias
            y[i * OW + j] = 0 if relu and v < 0 else v


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------

cdef inline bint _rows_beat_wide(Py_ssize_t F, Py_ssize_t OW, Py_ssize_t WP, Py_ssize_t NL,
                                 bint wide) noexcept nogil:
    """Use channel-vectorised row tiles (fc_crow) rather than wide rows? They need F a multiple of
    the vector width and rows of at least FC_ROW outputs, and win when they compute fewer
    positions that are not outputs: FC_ROW * ceil(OW / FC_ROW) positions per row against WP."""
    if not wide or F % NL != 0 or OW < FC_ROW:
        return False
    return ((OW + FC_ROW - 1) // FC_ROW) * FC_ROW < WP


cdef inline void _forward_block(const floating* xin, Py_ssize_t C, Py_ssize_t HP, Py_ssize_t WP,
                                const floating* w, const floating* wt, const floating* b,
                                Py_ssize_t F, Py_ssize_t f0, Py_ssize_t nb, Py_ssize_t ob,
                                Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                                Py_ssize_t OH, Py_ssize_t OW, bint relu, bint rows,
                                floating* acc, floating* out) noexcept nogil:
    """Planes f0 .. f0+nb-1 of one image's (bias, ReLU) convolution into out (nb x OH x OW).

    ``xin`` holds the image's padded planes. Three ways, by shape: channel-vectorised row tiles
    (``rows``: nb is the vector width, wt the weights as (C, KH, KW, F)), wide rows (stride 1;
    acc is scratch for ob wide planes), or the plain definition (any stride).
    """
    cdef Py_ssize_t T = (OH - 1) * WP + OW
    cdef Py_ssize_t fb, o, i, j0, j
    if rows:
        for i in range(OH):
            j0 = 0
            while j0 < OW:
                j = min(j0, OW - FC_ROW)  # the last tile is shifted back to end at OW
                _row_tile(xin + i * WP + j, HP * WP, WP, C, wt + f0, F, KH, KW, b + f0, nb,
                          relu, out + i * OW + j, OH * OW)
                j0 = j0 + FC_ROW
    elif sh == 1 and sw == 1:
        # A short last block (F % ob != 0) recomputes the ob channels ending at F, so it too
        # runs on the register tiles; only its own last nb planes are kept.
        fb = F - ob if nb < ob and F >= ob else f0
        _corr_wide(ob, xin, HP * WP, WP, C, w + fb * C * KH * KW, C * KH * KW, KH * KW, KW, 1,
                   min(ob, F - fb), KH, KW, acc, T, 0, 0, HP)
        for o in range(nb):
            _store_rows(acc + (f0 - fb + o) * T, WP, b[f0 + o], relu, out + o * OH * OW, OH, OW)
    else:
        for o in range(nb):
            _conv_plane_strided(xin, C, HP, WP, w + (f0 + o) * C * KH * KW, KH, KW, sh, sw,
                                b[f0 + o], relu, out + o * OH * OW, OH, OW)


cdef inline void _row_tile(const floating* x, Py_ssize_t plane, Py_ssize_t row, Py_ssize_t C,
                           const floating* wt, Py_ssize_t F, Py_ssize_t KH, Py_ssize_t KW,
                           const floating* b, Py_ssize_t nl, bint relu, floating* out,
                           Py_ssize_t out_plane) noexcept nogil:
    """FC_ROW outputs of a row for nl channels, with bias and ReLU (fc_crow), transposed into nl
    output planes: out[l*out_plane + r]."""
    cdef floating tile[FC_ROW * 16]  # FC_ROW positions x up to 16 lanes
    cdef Py_ssize_t lane, r
    if floating is float:
        fc_crow_f(x, plane, row, C, wt, F, KH, KW, b, relu, tile)
    else:
        fc_crow_d(x, plane, row, C, wt, F, KH, KW, b, relu, tile)
    for lane in range(nl):
        for r in range(FC_ROW):
            out[lane * out_plane + r] = tile[r * nl + lane]


cdef class _Scratch:
    """A malloc'd buffer owned by a Python object, so that it is freed however the call ends."""
    cdef void* data

    def __cinit__(self, Py_ssize_t nbytes):
        self.data = malloc(max(nbytes, 1))
        if self.data == NULL:
            raise MemoryError("fastcnn: could not allocate kernel scratch memory")

    def __dealloc__(self):
        free(self.data)


cdef _Scratch _transposed(const floating[:, :, :, ::1] w):
    """w (F, C, KH, KW) copied to (C, KH, KW, F), the layout of the row tiles' weights."""
    cdef Py_ssize_t F = w.shape[0], K = w.shape[1] * w.shape[2] * w.shape[3], f, k
    cdef _Scratch wt = _Scratch(F * K * sizeof(floating))
    cdef floating* d = <floating*> wt.data
    cdef const floating* s = &w[0, 0, 0, 0]
    for f in range(F):
        for k in range(K):
            d[k * F + f] = s[f * K + k]
    return wt


def conv2d_forward(const floating[:, :, :, ::1] x,   # IN  (N, C, H, W)
                   const floating[:, :, :, ::1] w,   # IN  (F, C, KH, KW)
                   const floating[::1] b,            # IN  (F,)  (zeros when there is no bias)
                   floating[:, :, :, ::1] y,         # OUT (N, F, OH, OW)
                   Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                   bint relu, int n_threads):
    """y[n,f,i,j] = b[f] + sum_{c,p,q} w[f,c,p,q] * xp[n,c, i*sh+p, j*sw+q], then max(., 0) if relu.

    Parallel over (n, block of filters): each task owns y[n, f0:f0+block].
    """
    cdef int64_t[:, :, :, ::1] no_argmax = None
    _forward(x, w, b, y, no_argmax, sh, sw, ph, pw, y.shape[2], y.shape[3], relu,
             0, 0, 0, 0, 0, 0, n_threads)


def conv2d_relu_maxpool_forward(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
                                const floating[:, :, :, ::1] w,  # IN  (F, C, KH, KW)
                                const floating[::1] b,           # IN  (F,)
                                floating[:, :, :, ::1] y,        # OUT (N, F, PH, PW) pooled
                                int64_t[:, :, :, ::1] argmax,    # OUT (N, F, PH, PW)
                                Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                                Py_ssize_t OH, Py_ssize_t OW,
                                Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t psh, Py_ssize_t psw,
                                Py_ssize_t pph, Py_ssize_t ppw, int n_threads):
    """y = max_pool2d(relu(conv2d(x, w, b))) with the argmax, never storing the conv output.

    Each block of relu(conv) planes (OH x OW) is computed into a per-thread buffer and pooled at
    once, with the same code as maxpool2d_forward: the result and argmax (flat index into the
    OH x OW plane) are bitwise those of the three separate steps. Parallel as conv2d_forward.
    """
    _forward(x, w, b, y, argmax, sh, sw, ph, pw, OH, OW, True, kh, kw, psh, psw, pph, ppw,
             n_threads)


cdef _forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
              const floating[::1] b, floating[:, :, :, ::1] y, int64_t[:, :, :, ::1] argmax,
              Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
              Py_ssize_t OH, Py_ssize_t OW, bint relu, Py_ssize_t kh, Py_ssize_t kw,
              Py_ssize_t psh, Py_ssize_t psw, Py_ssize_t pph, Py_ssize_t ppw, int n_threads):
    """Both forward kernels: y is the convolution itself when argmax is None, else its pooling."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t HP = H + 2 * ph, WP = W + 2 * pw
    cdef Py_ssize_t NL = FC_LANES_F if floating is float else FC_LANES_D
    cdef bint pool = argmax is not None
    cdef bint padded = ph > 0 or pw > 0
    cdef bint rows = _rows_beat_wide(F, OW, WP, NL, sh == 1 and sw == 1)
    cdef Py_ssize_t T = (OH - 1) * WP + OW
    cdef Py_ssize_t ob = NL if rows else _block(F)
    cdef Py_ssize_t n_fb = (F + ob - 1) // ob
    cdef Py_ssize_t pad_size = C * HP * WP if padded else 0
    cdef Py_ssize_t task, n, f0, nb, o
    cdef floating* scratch
    cdef floating* planes
    cdef const floating* xin
    cdef _Scratch wt = _transposed(w) if rows else None
    cdef const floating* wtp = <const floating*> wt.data if rows else NULL
    cdef int fail = 0
    cdef int* failed = &fail  # written through the pointer, so it stays shared
    with nogil, parallel(num_threads=n_threads):
        scratch = <floating*> malloc((pad_size + ob * T + (ob * OH * OW if pool else 0) + 1)
                                     * sizeof(floating))
        if scratch == NULL:
            failed[0] = 1
        planes = scratch + pad_size + ob * T
        # Race-free: task (n, f-block) writes only y[n, f0:f0+nb] (and argmax[n, f0:f0+nb]);
        # scratch is per thread.
        for task in prange(N * n_fb, schedule='static'):
            if scratch == NULL:
                continue
            n = task // n_fb
            f0 = (task % n_fb) * ob
            nb = min(ob, F - f0)
            if padded:
                _pad_planes(&x[n, 0, 0, 0], C, H, W, ph, pw, 1, 1, scratch, HP, WP)
                xin = scratch
            else:
                xin = &x[n, 0, 0, 0]
            if not pool:
                _forward_block(xin, C, HP, WP, &w[0, 0, 0, 0], wtp, &b[0], F, f0, nb, ob, KH,
                               KW, sh, sw, OH, OW, relu, rows, scratch + pad_size,
                               &y[n, f0, 0, 0])
            else:
                _forward_block(xin, C, HP, WP, &w[0, 0, 0, 0], wtp, &b[0], F, f0, nb, ob, KH,
                               KW, sh, sw, OH, OW, True, rows, scratch + pad_size, planes)
                for o in range(nb):
                    _pool_plane(planes + o * OH * OW, &y[n, f0 + o, 0, 0],
                                &argmax[n, f0 + o, 0, 0], OH, OW, y.shape[2], y.shape[3],
                                kh, kw, psh, psw, pph, ppw)
        free(scratch)
    if fail:
        raise MemoryError("fastcnn: could not allocate kernel scratch memory")


# ---------------------------------------------------------------------------------------------
# Input gradient
# ---------------------------------------------------------------------------------------------

def conv2d_backward_input(const floating[:, :, :, ::1] dy,  # IN  (N, F, OH, OW)
                          const floating[:, :, :, ::1] w,   # IN  (F, C, KH, KW)
                          floating[:, :, :, ::1] dx,        # OUT (N, C, H, W)
                          Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                          int n_threads):
    """dx = full correlation of the zero-dilated, zero-padded dy with w rotated 180 degrees.

    gpad[n,f] (GH x GW, GH = HP + KH - 1) holds dy[n,f,i,j] at (KH-1 + i*sh, KW-1 + j*sw) and
    zeros elsewhere (sh-1 zeros between rows, KH-1 rows of padding on top, and at the bottom also
    the rows of xp that no window reached). Then, with f and c swapping roles,

        dxp[n,c,u,v] = sum_{f,p,q} gpad[n,f,u+p,v+q] * w[f,c,KH-1-p,KW-1-q]
        dx = dxp cropped by (ph, pw)

    computed only for the kept (u, v), as a stride-1 wide-row correlation. Parallel over
    (n, block of ob input channels), ob = 6 or 4: each task owns dx[n, c0:c0+ob].
    """
    cdef Py_ssize_t N = dy.shape[0], F = dy.shape[1], OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t C = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t GH = H + 2 * ph + KH - 1, GW = W + 2 * pw + KW - 1
    cdef Py_ssize_t T = (H - 1) * GW + W
    cdef Py_ssize_t t0 = ph * GW + pw
    cdef Py_ssize_t ob = _block(C)
    cdef Py_ssize_t n_cb = (C + ob - 1) // ob
    cdef Py_ssize_t gsize = F * GH * GW
    cdef Py_ssize_t task, n, c0, cb, nb, o, i, j
    cdef floating* scratch
    cdef floating* acc
    cdef floating* dxp

    cdef int fail = 0
    cdef int* failed = &fail  # written through the pointer, so it stays shared
    with nogil, parallel(num_threads=n_threads):
        scratch = <floating*> malloc((gsize + ob * T + 1) * sizeof(floating))
        if scratch == NULL:
            failed[0] = 1
        acc = scratch + gsize
        # Race-free: task (n, c-block) writes only dx[n, c0:c0+nb]; scratch is per thread.
        for task in prange(N * n_cb, schedule='static'):
            if scratch == NULL:
                continue
            n = task // n_cb
            c0 = (task % n_cb) * ob
            nb = min(ob, C - c0)
            _pad_planes(&dy[n, 0, 0, 0], F, OH, OW, KH - 1, KW - 1, sh, sw,
                        scratch, GH, GW)
            # Output channel c reads w[f, c, KH-1-p, KW-1-q]: start at w[0, c0, KH-1, KW-1]
            # and walk p, q with negative strides (the 180-degree rotation).
            # As in the forward pass, a short last block recomputes the ob channels ending at C.
            cb = C - ob if nb < ob and C >= ob else c0
            # Rows of gpad below KH-1 and from KH + (OH-1)*sh on are zero padding.
            _corr_wide(ob, scratch + t0, GH * GW, GW, F, &w[0, cb, KH - 1, KW - 1],
                       KH * KW, C * KH * KW, -KW, -1, min(ob, C - cb), KH, KW, acc, T,
                       t0, KH - 1, KH + (OH - 1) * sh)
            for o in range(nb):
                dxp = &dx[n, c0 + o, 0, 0]
                for i in range(H):
                    for j in range(W):
                        dxp[i * W + j] = acc[(c0 - cb + o) * T + i * GW + j]
        free(scratch)
    if fail:
        raise MemoryError("fastcnn: could not allocate kernel scratch memory")


# ---------------------------------------------------------------------------------------------
# Weight gradient
# ---------------------------------------------------------------------------------------------

cdef inline void _dw_row_task(const floating* x, Py_ssize_t x_img, Py_ssize_t row,
                              const floating* gt, Py_ssize_t F, Py_ssize_t N, Py_ssize_t OH,
                              Py_ssize_t OW, Py_ssize_t KW, Py_ssize_t NL,
                              floating* dw, Py_ssize_t dw_f) noexcept nogil:
    """One kernel row (KW taps) of one input channel for NL filters (fc_dwrow), written to
    dw[l*dw_f + q]. The accumulators are local to this call, hence to its thread."""
    cdef floating acc[5 * 16]  # KW <= 5 taps x up to 16 lanes
    cdef Py_ssize_t q, lane
    for q in range(KW * NL):
        acc[q] = 0
    if floating is float:
        if KW == 5:
            fc_dwrow5_f(x, x_img, row, gt, F, N, OH, OW, acc)
        else:
            fc_dwrow3_f(x, x_img, row, gt, F, N, OH, OW, acc)
    else:
        if KW == 5:
            fc_dwrow5_d(x, x_img, row, gt, F, N, OH, OW, acc)
        else:
            fc_dwrow3_d(x, x_img, row, gt, F, N, OH, OW, acc)
    for lane in range(NL):
        for q in range(KW):
            dw[lane * dw_f + q] = acc[q * NL + lane]


cdef _backward_weight_rows(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dy,
                           floating[:, :, :, ::1] dw, int n_threads):
    """conv2d_backward_weight for stride 1, no padding, F a multiple of the vector width and
    KW in (3, 5): filters on the vector lanes (see fc_dwrow), every product a useful one.

    dy is first copied to (N, OH, OW, F) so that a vector of filters is contiguous. Parallel
    over (c, p, block of filters): each task owns dw[f0:f0+NL, c, p, :] and sums the batch in a
    fixed order.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = dy.shape[1], OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t KH = dw.shape[2], KW = dw.shape[3]
    cdef Py_ssize_t NL = FC_LANES_F if floating is float else FC_LANES_D
    cdef Py_ssize_t n_fb = F // NL
    cdef Py_ssize_t n, f, i, j, t, c, p, fb
    cdef _Scratch buf = _Scratch(N * OH * OW * F * sizeof(floating))
    cdef floating* gt = <floating*> buf.data
    cdef const floating* g
    # Race-free: image n writes only gt[n].
    for n in prange(N, nogil=True, schedule='static', num_threads=n_threads):
        for f in range(F):
            g = &dy[n, f, 0, 0]
            for i in range(OH):
                for j in range(OW):
                    gt[((n * OH + i) * OW + j) * F + f] = g[i * OW + j]
    # Race-free: task (c, p, fb) writes only dw[fb*NL:(fb+1)*NL, c, p, :].
    for t in prange(C * KH * n_fb, nogil=True, schedule='static', num_threads=n_threads):
        c = t // (KH * n_fb)
        p = (t // n_fb) % KH
        fb = t % n_fb
        _dw_row_task(&x[0, c, p, 0], C * H * W, W, gt + fb * NL, F, N, OH, OW, KW, NL,
                     &dw[fb * NL, c, p, 0], C * KH * KW)


cdef _bias_grad(const floating[:, :, :, ::1] dy, floating[::1] db, int n_threads):
    """db[f] = sum_{n,i,j} dy[n,f,i,j], the batch added in the order n = 0, 1, ..."""
    cdef Py_ssize_t N = dy.shape[0], F = dy.shape[1], HW = dy.shape[2] * dy.shape[3], f, n
    cdef floating s
    # Race-free: f writes only db[f].
    for f in prange(F, nogil=True, schedule='static', num_threads=n_threads):
        s = 0
        for n in range(N):
            s = s + _sum(&dy[n, f, 0, 0], HW)
        db[f] = s


cdef _backward_weight_wide(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dy,
                           floating[:, :, :, ::1] dw, Py_ssize_t ph, Py_ssize_t pw,
                           int n_threads):
    """Stride-1 weight gradient on wide rows, in tasks of (chunk of images, block of OB filters).

    With dy[n, f] laid out on rows of width WP (zeros in the extra columns), tap (p, q) is
    dw[f,c,p,q] = sum_n sum_t g[n,f,t] * xp[n,c, t + p*WP + q], computed for 4 filters and 2 taps
    at a time with one partial sum per vector lane. The batch is cut into DW_CHUNKS fixed chunks
    (by shape, never by thread count); each task accumulates its own chunk, and the chunks' lanes
    are then added in order: chunk 0 lane 0, lane 1, ..., chunk 1 lane 0, ...
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = dy.shape[1], OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t KH = dw.shape[2], KW = dw.shape[3]
    cdef Py_ssize_t HP = H + 2 * ph, WP = W + 2 * pw
    cdef bint padded = ph > 0 or pw > 0
    cdef Py_ssize_t NL = FC_LANES_F if floating is float else FC_LANES_D
    cdef Py_ssize_t T = (OH - 1) * WP + OW
    cdef Py_ssize_t TP = (T + NL - 1) // NL * NL  # wide length rounded up to whole vectors
    cdef Py_ssize_t QP = (KW + 1) // 2           # tap pairs per kernel row
    cdef Py_ssize_t acc_size = C * KH * QP * 8 * NL
    cdef Py_ssize_t pad_size = C * HP * WP if padded else 0
    cdef Py_ssize_t n_fb = (F + OB - 1) // OB
    cdef Py_ssize_t n_ch = min(N, <Py_ssize_t> DW_CHUNKS)
    cdef _Scratch accs = _Scratch(n_ch * n_fb * acc_size * sizeof(floating))
    cdef floating* acc_all = <floating*> accs.data
    cdef Py_ssize_t task, ch, f0, fb, nb, r, f, n, c, p, q, k, i, j, lane
    cdef floating* scratch
    cdef floating* gw
    cdef floating* acc
    cdef floating* a
    cdef const floating* xin
    cdef const floating* g
    cdef floating s
    cdef int fail = 0
    cdef int* failed = &fail  # written through the pointer, so it stays shared
    with nogil, parallel(num_threads=n_threads):
        scratch = <floating*> malloc((pad_size + OB * TP + 1) * sizeof(floating))
        if scratch == NULL:
            failed[0] = 1
        # Race-free: task (ch, block) writes only its own accumulator region; scratch is per
        # thread.
        for task in prange(n_ch * n_fb, schedule='static'):
            if scratch == NULL:
                continue
            ch = task // n_fb
            f0 = (task % n_fb) * OB
            nb = min(<Py_ssize_t> OB, F - f0)
            # A short last block works on the OB filters ending at F (when there are that many)
            # and keeps its own; with fewer than OB filters the missing rows repeat filter 0.
            fb = F - OB if nb < OB and F >= OB else f0
            gw = scratch + pad_size
            acc = acc_all + task * acc_size
            memset(acc, 0, acc_size * sizeof(floating))
            memset(gw, 0, OB * TP * sizeof(floating))
            for n in range(ch * N // n_ch, (ch + 1) * N // n_ch):
                if padded:
                    _pad_planes(&x[n, 0, 0, 0], C, H, W, ph, pw, 1, 1, scratch, HP, WP)
                    xin = scratch
                else:
                    xin = &x[n, 0, 0, 0]
                for r in range(OB):
                    g = &dy[n, fb + r if fb + r < F else fb, 0, 0]
                    for i in range(OH):
                        for j in range(OW):
                            gw[r * TP + i * WP + j] = g[i * OW + j]
                for c in range(C):
                    for p in range(KH):
                        for k in range(QP):
                            _dw4x2(gw, TP, xin + c * HP * WP + p * WP + 2 * k,
                                   HP * WP - p * WP - 2 * k,
                                   acc + ((c * KH + p) * QP + k) * 8 * NL)
        free(scratch)
    if fail:
        raise MemoryError("fastcnn: could not allocate kernel scratch memory")
    # Race-free: f writes only dw[f]. Row r = f - fb of block f0's accumulators holds filter f;
    # dw[f, c, p, 2k + kk] is in tap pair k, tap kk.
    for f in prange(F, nogil=True, schedule='static', num_threads=n_threads):
        f0 = f // OB * OB
        fb = F - OB if F - f0 < OB and F >= OB else f0
        r = f - fb
        for c in range(C):
            for p in range(KH):
                for q in range(KW):
                    s = 0
                    for ch in range(n_ch):
                        a = acc_all + ((ch * n_fb + f // OB) * acc_size
                                       + (((c * KH + p) * QP + q // 2) * 8 + 2 * r + q % 2) * NL)
                        for lane in range(NL):
                            s = s + a[lane]
                    dw[f, c, p, q] = s


def conv2d_backward_weight(const floating[:, :, :, ::1] x,   # IN  (N, C, H, W)
                           const floating[:, :, :, ::1] dy,  # IN  (N, F, OH, OW)
                           floating[:, :, :, ::1] dw,        # OUT (F, C, KH, KW)
                           floating[::1] db,                 # OUT (F,)
                           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                           int n_threads):
    """dw[f,c,p,q] = sum_{n,i,j} dy[n,f,i,j] * xp[n,c, i*sh+p, j*sw+q]; db[f] = sum dy[n,f,i,j].

    The correlation of the padded input with the output gradient, by shape: filters on vector
    lanes (_backward_weight_rows: stride 1, no padding, F a multiple of the vector width, 3- or
    5-wide kernels), wide rows (_backward_weight_wide: stride 1, finite input), or the plain
    definition (any stride, or input holding inf/NaN, which wide rows would leak into taps that
    never see it). Every sum runs in an order fixed by the shapes, whatever the thread count.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = dy.shape[1], OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t KH = dw.shape[2], KW = dw.shape[3]
    cdef Py_ssize_t HP = H + 2 * ph, WP = W + 2 * pw
    cdef Py_ssize_t NL = FC_LANES_F if floating is float else FC_LANES_D
    cdef bint stride1 = sh == 1 and sw == 1
    cdef Py_ssize_t f, n, c, p, q, i, j
    cdef floating* scratch
    cdef const floating* xin
    cdef const floating* g
    cdef floating s
    cdef int fail = 0
    cdef int* failed = &fail  # written through the pointer, so it stays shared

    _bias_grad(dy, db, n_threads)
    if N == 0:
        dw[...] = 0
        return
    if (stride1 and ph == 0 and pw == 0 and F % NL == 0 and (KW == 3 or KW == 5)
            and OW + KW - 1 <= W):
        _backward_weight_rows(x, dy, dw, n_threads)
        return
    if stride1 and _all_finite(&x[0, 0, 0, 0], N * C * H * W):
        _backward_weight_wide(x, dy, dw, ph, pw, n_threads)
        return
    with nogil, parallel(num_threads=n_threads):
        scratch = <floating*> malloc((C * HP * WP + 1) * sizeof(floating))
        if scratch == NULL:
            failed[0] = 1
        # Race-free: f writes only dw[f]; the batch runs in the order n = 0, 1, ...
        for f in prange(F, schedule='static'):
            if scratch == NULL:
                continue
            memset(&dw[f, 0, 0, 0], 0, C * KH * KW * sizeof(floating))
            for n in range(N):
                _pad_planes(&x[n, 0, 0, 0], C, H, W, ph, pw, 1, 1, scratch, HP, WP)
                xin = scratch
                g = &dy[n, f, 0, 0]
                for c in range(C):
                    for p in range(KH):
                        for q in range(KW):
                            s = 0
                            for i in range(OH):
                                for j in range(OW):
                                    s = s + g[i * OW + j] * xin[(c * HP + i * sh + p) * WP
                                                                + j * sw + q]
                            dw[f, c, p, q] = dw[f, c, p, q] + s
        free(scratch)
    if fail:
        raise MemoryError("fastcnn: could not allocate kernel scratch memory")


# ---------------------------------------------------------------------------------------------
# Matrix product (dense layers, and a convolution whose kernel covers its whole input)
# ---------------------------------------------------------------------------------------------

def gemm(const floating[::1] a,    # IN  A (M, K), element (m, k) at a[m*sa_m + k*sa_k]
         Py_ssize_t sa_m, Py_ssize_t sa_k, Py_ssize_t M, Py_ssize_t K,
         const floating[:, ::1] b,  # IN  B (K, N)
         floating[:, ::1] c,        # OUT C (M, N)
         int n_threads):
    """C = A @ B, with A read through strides so that A may be a transposed view.

    ``C[m, j] = sum_k A[m, k] * B[k, j]``, summed in the order k = 0, 1, ..., K-1 for every
    element. It is the wide-row correlation again: rows of B play the input rows and entries of
    A the kernel taps, so the same register tiles (4 rows of C x one tile of columns) do the
    work. Parallel over blocks of 4 rows of C: each task owns those rows.
    """
    cdef Py_ssize_t N = b.shape[1]
    cdef Py_ssize_t TT = FC_TILE_F if floating is float else FC_TILE_D
    cdef Py_ssize_t n_blocks = (M + OB - 1) // OB
    cdef Py_ssize_t blk, m0, m, j0, j, nj
    if M == 0 or N == 0:
        return
    # Race-free: block blk writes only rows m0 .. m0+3 of C.
    for blk in prange(n_blocks, nogil=True, schedule='static', num_threads=n_threads):
        m0 = blk * OB
        if m0 + OB <= M and N >= TT:
            j0 = 0
            while j0 < N:
                j = min(j0, N - TT)  # the last tile ends at N, recomputing a few columns
                _corr_tile(OB, &b[0, j], 0, N, 1, &a[m0 * sa_m], sa_m, 0, sa_k, 0, K, 1,
                           &c[m0, j], N)
                j0 = j0 + TT
        else:
            for m in range(m0, min(m0 + OB, M)):
                j0 = 0
                while j0 < N:
                    nj = min(TT, N - j0)
                    _corr_tile1(&b[0, j0], 0, N, 1, &a[m * sa_m], 0, sa_k, 0, K, 1,
                                &c[m, j0], nj)
                    j0 = j0 + TT
