"""Depthwise 2-D convolution (groups == C; F = mult*C filters, filter f reads channel f // mult):
forward, input gradient and weight gradient (DESIGN.md section 3 with Cg = 1).

Shapes (NCHW, C-contiguous, validated by ``fastcnn.functional.conv``):

    x  (N, C, H, W)     w  (F, 1, KH, KW)     b  (F,)     y, dy  (N, F, OH, OW)

Each (image, channel) plane is small, so a kernel copies it into a stack buffer of DWBUF
elements (zero-padded and split by stride phase, exactly as ``conv.pad_split`` lays out one
plane), and runs over "wide rows" of that buffer with the positions on the vector lanes and
each weight broadcast (``_dwconv.h``). The wide-row positions past an output row are computed
and dropped (forward, input gradient) or multiplied by zeros of the output gradient (weight
gradient: the caller uses this kernel only when x and dy are finite). Planes larger than the
buffer, kernels of more than DWK taps, and the input gradient with stride > 1 are left to the
general kernels (``conv.pyx``) by the caller: see ``fastcnn.functional.conv._dw_ok``.

Every output is one sum in an order fixed by the shapes: bitwise identical for any number of
threads.
"""

from cython.parallel cimport prange
from cython cimport floating
from libc.string cimport memcpy, memset

include "_pad_plane.pxi"

cdef extern from "_dwconv.h" nogil:
    const int FC_NL_F
    const int FC_NL_D
    void fc_dwcorr_f(const float*, const Py_ssize_t*, const float*, Py_ssize_t, Py_ssize_t,
                     Py_ssize_t, float*, int)
    void fc_dwcorr_d(const double*, const Py_ssize_t*, const double*, Py_ssize_t, Py_ssize_t,
                     Py_ssize_t, double*, int)
    void fc_dwdot_f(const float*, const Py_ssize_t*, const float*, Py_ssize_t, Py_ssize_t,
                    float*)
    void fc_dwdot_d(const double*, const Py_ssize_t*, const double*, Py_ssize_t, Py_ssize_t,
                    double*)

cdef enum:
    DWBUF = 4096  # elements of each per-plane stack buffer
    DWK = 64      # largest KH*KW
    DWSLACK = 16  # zeros after a plane: the last vector of the last tap reads up to NL-1 past it


def limits():
    """(DWBUF, DWK, DWSLACK): the buffer size, the most taps, the slack after a plane."""
    return DWBUF, DWK, DWSLACK


def lanes(bint is_double):
    return FC_NL_D if is_double else FC_NL_F


cdef inline Py_ssize_t _round(Py_ssize_t P, Py_ssize_t NL) noexcept nogil:
    return (P + NL - 1) // NL * NL


cdef void _planes(const floating* s, Py_ssize_t H, Py_ssize_t W, Py_ssize_t top,
                  Py_ssize_t left, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t HPh, Py_ssize_t WPh,
                  floating* d) noexcept nogil:
    """d[rh, rw, a, b] = s[a*sh + rh - top, b*sw + rw - left] (0 outside the H x W plane s),
    then DWSLACK zeros."""
    cdef Py_ssize_t rh, rw, a, b, h, v, lo, hi
    cdef floating* r
    if sh == 1 and sw == 1:
        _pad_plane(s, H, W, top, left, d, HPh, WPh)
        memset(d + HPh * WPh, 0, DWSLACK * sizeof(floating))
        return
    for rh in range(sh):
        for rw in range(sw):
            for a in range(HPh):
                r = d + ((rh * sw + rw) * HPh + a) * WPh
                h = a * sh + rh - top
                if h < 0 or h >= H:
                    for b in range(WPh):
                        r[b] = 0
                    continue
                if sw == 1:
                    lo = min(max(left, <Py_ssize_t> 0), WPh)
                    hi = min(max(left + W, lo), WPh)
                    for b in range(lo):
                        r[b] = 0
                    for b in range(lo, hi):
                        r[b] = s[h * W + b - left]
                    for b in range(hi, WPh):
                        r[b] = 0
                else:
                    for b in range(WPh):
                        v = b * sw + rw - left
                        r[b] = s[h * W + v] if 0 <= v < W else 0
    memset(d + sh * sw * HPh * WPh, 0, DWSLACK * sizeof(floating))


cdef inline void _corr(const floating* x, const Py_ssize_t* off, const floating* w, Py_ssize_t ws,
                       Py_ssize_t K, Py_ssize_t P, floating* c, int acc) noexcept nogil:
    if floating is float:
        fc_dwcorr_f(x, off, w, ws, K, P, c, acc)
    else:
        fc_dwcorr_d(x, off, w, ws, K, P, c, acc)


cdef void _offsets(Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh,
                   Py_ssize_t dw, Py_ssize_t HPh, Py_ssize_t WPh, Py_ssize_t* off) noexcept nogil:
    """off[p*KW + q] = offset of tap (p, q) in one plane's phase planes (as conv.forward_offsets
    with one channel)."""
    cdef Py_ssize_t p, q
    for p in range(KH):
        for q in range(KW):
            off[p * KW + q] = (((p * dh) % sh * sw + (q * dw) % sw) * HPh * WPh
                               + (p * dh) // sh * WPh + (q * dw) // sw)


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------

def forward(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
            const floating[:, :, :, ::1] w,  # IN  (F, 1, KH, KW), F = mult*C
            const floating[::1] b,           # IN  (F,) (zeros when there is no bias)
            floating[:, :, :, ::1] y,        # OUT (N, F, OH, OW)
            Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh,
            Py_ssize_t dw, Py_ssize_t HPh, Py_ssize_t WPh, bint relu, int n_threads):
    """y[n,f,i,j] = b[f] + sum_{p,q} w[f,0,p,q] * xp[n, f // mult, i*sh + p*dh, j*sw + q*dw]
    (then max(., 0) if relu), xp zero-padded (pt top rows, pl left columns), summed over the
    taps in order. Parallel over (n, f): each task owns y[n, f]."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], F = w.shape[0]
    cdef Py_ssize_t KH = w.shape[2], KW = w.shape[3], task
    cdef Py_ssize_t off[DWK]
    if N == 0:
        return
    _offsets(KH, KW, sh, sw, dh, dw, HPh, WPh, off)
    # Race-free: task (n, f) writes only y[n, f].
    for task in prange(N * F, nogil=True, schedule='static', num_threads=n_threads):
        _forward_plane(&x[0, 0, 0, 0], &w[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], task, C, F,
                       x.shape[2], x.shape[3], y.shape[2], y.shape[3], KH * KW, sh, sw, pt, pl,
                       HPh, WPh, off, relu)


cdef void _forward_plane(const floating* x, const floating* w, const floating* b, floating* y,
                         Py_ssize_t task, Py_ssize_t C, Py_ssize_t F, Py_ssize_t H,
                         Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t K,
                         Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                         Py_ssize_t HPh, Py_ssize_t WPh, const Py_ssize_t* off,
                         bint relu) noexcept nogil:
    cdef floating xb[DWBUF]
    cdef floating cb[DWBUF]
    cdef Py_ssize_t NL = FC_NL_F if floating is float else FC_NL_D
    cdef Py_ssize_t n = task // F, f = task % F, i, j
    cdef floating v, bf = b[f]
    cdef floating* yr
    _planes(x + (n * C + f // (F // C)) * H * W, H, W, pt, pl, sh, sw, HPh, WPh, xb)
    _corr(xb, off, w + f * K, 1, K, _round((OH - 1) * WPh + OW, NL), cb, 0)
    for i in range(OH):
        yr = y + (task * OH + i) * OW
        for j in range(OW):
            v = cb[i * WPh + j] + bf
            yr[j] = 0 if relu and v < 0 else v  # NaN is kept


# ---------------------------------------------------------------------------------------------
# Input gradient (stride 1)
# ---------------------------------------------------------------------------------------------

def backward_input(const floating[:, :, :, ::1] dy,  # IN  (N, F, OH, OW)
                   const floating[:, :, :, ::1] w,   # IN  (F, 1, KH, KW)
                   floating[:, :, :, ::1] dx,        # OUT (N, C, H, W)
                   Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, int n_threads):
    """Stride 1: dx[n,c,h,v] = sum_{m < mult} sum_{p,q} w[f,0,p,q] * dy[n,f, h+pt-p*dh, v+pl-q*dw]
    (f = c*mult + m; dy read as 0 outside its plane), i.e. the correlation of the zero-extended
    dy with the kernel rotated by 180 degrees, summed over m, then the taps, in order. Parallel
    over (n, c): each task owns dx[n, c]."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t A = (KH - 1) * dh, B = (KW - 1) * dw, GW = W + B, task
    cdef Py_ssize_t off[DWK]
    if N == 0:
        return
    # tap k' = p'*KW + q' of the rotated kernel reads gpad at p'*dh rows, q'*dw columns down
    _offsets(KH, KW, 1, 1, dh, dw, H + A, GW, off)
    # Race-free: task (n, c) writes only dx[n, c].
    for task in prange(N * C, nogil=True, schedule='static', num_threads=n_threads):
        _input_plane(&dy[0, 0, 0, 0], &w[0, 0, 0, 0], &dx[0, 0, 0, 0], task, C, H, W,
                     dy.shape[1], dy.shape[2], dy.shape[3], KH * KW, A - pt, B - pl, H + A, GW,
                     off)


cdef void _input_plane(const floating* dy, const floating* w, floating* dx, Py_ssize_t task,
                       Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t F, Py_ssize_t OH,
                       Py_ssize_t OW, Py_ssize_t K, Py_ssize_t top, Py_ssize_t left,
                       Py_ssize_t GH, Py_ssize_t GW, const Py_ssize_t* off) noexcept nogil:
    cdef floating gb[DWBUF]
    cdef floating cb[DWBUF]
    cdef Py_ssize_t NL = FC_NL_F if floating is float else FC_NL_D
    cdef Py_ssize_t n = task // C, c = task % C, mult = F // C, m, f, h, v
    cdef floating* dr
    for m in range(mult):
        f = c * mult + m
        # gpad[a, b] = dy[n, f, a - top, b - left] (0 outside), GH x GW
        _planes(dy + (n * F + f) * OH * OW, OH, OW, top, left, 1, 1, GH, GW, gb)
        _corr(gb, off, w + f * K + K - 1, -1, K, _round((H - 1) * GW + W, NL), cb, m > 0)
    for h in range(H):
        dr = dx + (task * H + h) * W
        for v in range(W):
            dr[v] = cb[h * GW + v]


# ---------------------------------------------------------------------------------------------
# Weight gradient
# ---------------------------------------------------------------------------------------------

def backward_weight(const floating[:, :, :, ::1] x,   # IN  (N, C, H, W), finite
                    const floating[:, :, :, ::1] dy,  # IN  (N, F, OH, OW), finite
                    floating[:, :, :, ::1] dwt,       # OUT (F, 1, KH, KW)
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh,
                    Py_ssize_t dw, Py_ssize_t HPh, Py_ssize_t WPh, int n_threads):
    """dw[f,0,p,q] = sum_{n,i,j} dy[n,f,i,j] * xp[n, f // mult, i*sh + p*dh, j*sw + q*dw].

    Per filter, a dot product along the wide rows of each image's phase planes with dy laid
    out on the same wide rows (zeros in the gap columns and after the last output, so those
    products add 0: x must be finite). Lane l of tap k sums the positions t = l (mod NL) of
    images 0, 1, ... in order, then the lanes are added in order. Parallel over f: each task
    owns dw[f] and reduces over the whole batch itself.
    """
    cdef Py_ssize_t F = dwt.shape[0], KH = dwt.shape[2], KW = dwt.shape[3], f
    cdef Py_ssize_t off[DWK]
    if x.shape[0] == 0:
        dwt[...] = 0
        return
    _offsets(KH, KW, sh, sw, dh, dw, HPh, WPh, off)
    # Race-free: task f writes only dw[f].
    for f in prange(F, nogil=True, schedule='static', num_threads=n_threads):
        _weight_filter(&x[0, 0, 0, 0], &dy[0, 0, 0, 0], &dwt[0, 0, 0, 0], f, x.shape[0],
                       x.shape[1], x.shape[2], x.shape[3], F, dy.shape[2], dy.shape[3],
                       KH * KW, sh, sw, pt, pl, HPh, WPh, off)


cdef void _weight_filter(const floating* x, const floating* dy, floating* dwt, Py_ssize_t f,
                         Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t F,
                         Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t K, Py_ssize_t sh,
                         Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t HPh,
                         Py_ssize_t WPh, const Py_ssize_t* off) noexcept nogil:
    cdef floating xb[DWBUF]
    cdef floating gb[DWBUF]
    cdef floating vacc[DWK * 16]
    cdef Py_ssize_t c = f // (F // C)
    cdef Py_ssize_t NL = FC_NL_F if floating is float else FC_NL_D
    cdef Py_ssize_t P = _round((OH - 1) * WPh + OW, NL), n, i, j, k, ln
    cdef const floating* gr
    cdef floating s
    for k in range(K * NL):
        vacc[k] = 0
    for k in range(P):
        gb[k] = 0
    for n in range(N):
        _planes(x + (n * C + c) * H * W, H, W, pt, pl, sh, sw, HPh, WPh, xb)
        for i in range(OH):
            gr = dy + ((n * F + f) * OH + i) * OW
            for j in range(OW):
                gb[i * WPh + j] = gr[j]
        if floating is float:
            fc_dwdot_f(xb, off, gb, K, P, vacc)
        else:
            fc_dwdot_d(xb, off, gb, K, P, vacc)
    for k in range(K):
        s = 0
        for ln in range(NL):
            s = s + vacc[k * NL + ln]
        dwt[f * K + k] = s
