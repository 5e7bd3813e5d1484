"""Pooling kernels: max (caching the argmax), average and adaptive average, each forward beside
its backward.

Shapes (NCHW, C-contiguous, validated by ``fastcnn.functional``):

    x, dx  (N, C, H, W)      y, dy, argmax  (N, C, OH, OW)
    floor mode: OH = (H + 2*ph - dh*(kh-1) - 1) // sh + 1
    ceil mode:  the same rounded up, minus one when the last window would start past H + ph

Max: padding acts as -inf, so it is never the maximum; the caller checks that every window holds
at least one real element. Average: padding counts as zeros in the divisor when
``count_include_pad``; a ceil-mode window running past the padded input is cut there.

Every plane (n, c) is owned by one thread and every sum runs in an order fixed by the shapes, so
results are bitwise identical for any thread count.
"""

from cython.parallel cimport parallel, prange, threadid
from cython cimport floating
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memset


include "_pool_plane.pxi"
include "_bound.pxi"
include "_threads.pxi"

cdef enum:
    SMALL_PLANE = 1024   # average pooling: planes of at most this many values go in groups ...
    GROUP_VALUES = 4096  # ... of about this many input values (whole planes)
    GAP_GROUP = 64       # planes per task of float32 global average pooling

cdef extern from *:
    """
    #include <string.h>
    /* Row loops of the pooling kernels, one output row at a time; `restrict` and a constant input
       step (1, 2, or any) let the compiler vectorise them. The max update keeps the running
       maximum unless the new value is larger or the first NaN (ties keep the earlier tap), and
       records the winning tap as its offset within the window. */
    #define FCP_DEFINE(T, SUF)                                                                   \
    static inline void fcp_add_##SUF(T *restrict y, const T *restrict x, ptrdiff_t s,          \
                                     ptrdiff_t n) {                                            \
        if (s == 1) { for (ptrdiff_t j = 0; j < n; j++) y[j] += x[j]; }                        \
        else if (s == 2) { for (ptrdiff_t j = 0; j < n; j++) y[j] += x[2 * j]; }               \
        else { for (ptrdiff_t j = 0; j < n; j++) y[j] += x[s * j]; }                           \
    }                                                                                          \
    static inline void fcp_max_##SUF(T *restrict y, int32_t *restrict t, const T *restrict x, \
                                     ptrdiff_t s, int32_t tap, ptrdiff_t n) {                  \
        if (s == 1) {                                                                          \
            for (ptrdiff_t j = 0; j < n; j++) {                                                \
                T v = x[j], b = y[j]; int w = (v > b) | ((v != v) & (b == b));                 \
                y[j] = w ? v : b; t[j] = w ? tap : t[j]; }                                     \
        } else if (s == 2) {                                                                   \
            for (ptrdiff_t j = 0; j < n; j++) {                                                \
                T v = x[2 * j], b = y[j]; int w = (v > b) | ((v != v) & (b == b));             \
                y[j] = w ? v : b; t[j] = w ? tap : t[j]; }                                     \
        } else {                                                                               \
            for (ptrdiff_t j = 0; j < n; j++) {                                                \
                T v = x[s * j], b = y[j]; int w = (v > b) | ((v != v) & (b == b));             \
                y[j] = w ? v : b; t[j] = w ? tap : t[j]; }                                     \
        }                                                                                      \
    }                                                                                          \
    static inline void fcp_scatter_##SUF(T *restrict d, const T *restrict g, ptrdiff_t s,     \
                                         ptrdiff_t n) {                                        \
        if (s == 1) { for (ptrdiff_t j = 0; j < n; j++) d[j] += g[j]; }                        \
        else if (s == 2) { for (ptrdiff_t j = 0; j < n; j++) d[2 * j] += g[j]; }               \
        else { for (ptrdiff_t j = 0; j < n; j++) d[s * j] += g[j]; }                           \
    }
    /* 2x2 / stride 2 average pooling of one plane without padding (OH <= H/2, OW <= W/2):
       the two input rows of a block of output rows are copied side by side into scratch, so
       that one flat loop over the block's outputs (no per-row tails) adds each window in the
       scalar loop's order, ((0 + a) + b) + c) + d, and divides by div. Returns 0 when a row
       does not fit the scratch. The backward pass spreads (0 + g / div) over each window and
       zeroes the rows and columns no window reads. */
    #define FCP_CAP 512
    #define FCP_DEFINE_AVG2(T, SUF)                                                            \
    static inline int fcp_avg2_##SUF(const T *restrict x, ptrdiff_t H, ptrdiff_t W,          \
                                     T *restrict y, ptrdiff_t OH, ptrdiff_t OW, T div) {      \
        T A[FCP_CAP], B[FCP_CAP];                                                             \
        ptrdiff_t L = 2 * OW, rows, i0, r, m, n;                                              \
        if (L > FCP_CAP || 2 * OH > H || L > W) return 0;                                     \
        rows = FCP_CAP / L;                                                                   \
        for (i0 = 0; i0 < OH; i0 += rows) {                                                   \
            ptrdiff_t nr = OH - i0 < rows ? OH - i0 : rows;                                   \
            for (r = 0; r < nr; r++) {                                                        \
                memcpy(A + r * L, x + 2 * (i0 + r) * W, L * sizeof(T));                       \
                memcpy(B + r * L, x + (2 * (i0 + r) + 1) * W, L * sizeof(T));                 \
            }                                                                                 \
            n = nr * OW;                                                                      \
            T *restrict yo = y + i0 * OW;                                                     \
            for (m = 0; m < n; m++)                                                           \
                yo[m] = (((((T)0 + A[2 * m]) + A[2 * m + 1]) + B[2 * m]) + B[2 * m + 1]) / div; \
        }                                                                                     \
        return 1;                                                                             \
    }                                                                                         \
    static inline void fcp_avg2_back_##SUF(const T *restrict g, T *restrict dx, ptrdiff_t H,  \
                                           ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, T div) {  \
        ptrdiff_t i, j;                                                                       \
        /* both rows of a window row written directly (a memcpy call per short row cost more \
           than the row) */                                                                   \
        for (i = 0; i < OH; i++) {                                                            \
            T *restrict d0 = dx + 2 * i * W;                                                  \
            T *restrict d1 = d0 + W;                                                          \
            const T *restrict gr = g + i * OW;                                                \
            for (j = 0; j < OW; j++) {                                                        \
                T s = (T)0 + gr[j] / div;                                                     \
                d0[2 * j] = s; d0[2 * j + 1] = s; d1[2 * j] = s; d1[2 * j + 1] = s;           \
            }                                                                                 \
            for (j = 2 * OW; j < W; j++) { d0[j] = 0; d1[j] = 0; }                            \
        }                                                                                     \
        if (2 * OH < H) memset(dx + 2 * OH * W, 0, (H - 2 * OH) * W * sizeof(T));             \
    }                                                                                         \
    /* fcp_avg2_back over G consecutive planes */                                             \
    static void fcp_avg2_back_group_##SUF(const T *g, T *dx, ptrdiff_t G, ptrdiff_t H,        \
                                          ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, T div) {   \
        for (ptrdiff_t p = 0; p < G; p++)                                                     \
            fcp_avg2_back_##SUF(g + p * OH * OW, dx + p * H * W, H, W, OH, OW, div);          \
    }
    FCP_DEFINE(float, f)
    FCP_DEFINE(double, d)
    FCP_DEFINE_AVG2(float, f)
    FCP_DEFINE_AVG2(double, d)
    /* Max-pooling of one plane without dilation, separably and without data-dependent
       branches (the row-major scan of each window mispredicts about twice per random window,
       and short rows leave per-tap row loops all tails):
       1. the plane is copied into scratch P padded with -inf to the window grid, rows grouped
          by phase r % sh (row pitch Wp = OWp*sw, OWp >= OW, so that column j of row r is
          flat index r*OWp + j: one flat loop per tap, no per-row tails; columns j >= OW are
          computed and never used);
       2. horizontal: each row's winner over the kw taps (larger, or the first NaN: ties keep
          the leftmost) and its tap q;
       3. vertical: tap p reads rows i*sh + p, a contiguous run of phase p % sh; the winner
          over the kh rows (ties keep the topmost), with its offset p*W + q in the plane;
       4. out, and outputs whose maximum is -inf are redone by the scalar scan (a padding cell
          may have come first among equal -inf values there).
       Row-major first-max = topmost row holding the max, leftmost in it; the same for the
       first NaN: so results are those of the scalar scan, bitwise. buf holds
       fms_scratch_SUF(...) elements of T. */
    #include <math.h>
    #define FMS_WINS(v, b) (((v) > (b)) | (((v) != (v)) & ((b) == (b))))
    #define FMS_DEFINE(T, SUF, UT)                                                                \
    static inline T fms_sel_##SUF(int w, T b, T a) {                                             \
        UT ub, ua, m = (UT)0 - (UT)w; T r;                                                       \
        memcpy(&ub, &b, sizeof(T)); memcpy(&ua, &a, sizeof(T)); ub = (ub & m) | (ua & ~m);       \
        memcpy(&r, &ub, sizeof(T)); return r;                                                    \
    }                                                                                            \
    static inline size_t fms_scratch_##SUF(ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t kh,            \
                                           ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw) {          \
        ptrdiff_t OWp = OW + (kw > sw ? (kw - sw + sw - 1) / sw : 0), Wp = OWp * sw;            \
        ptrdiff_t Hp = (OH - 1) * sh + kh, R = (Hp + sh - 1) / sh;                              \
        return (size_t)(sh * R * Wp + kw + 8) + 2 * (size_t)(sh * R * OWp + 8)                  \
               + 2 * (size_t)(OH * OWp + 8);                                                    \
    }                                                                                            \
    static void fms_max_##SUF(const T *restrict x, ptrdiff_t H, ptrdiff_t W, T *restrict y,     \
                              int64_t *restrict am, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t kh,   \
                              ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,           \
                              ptrdiff_t pw, T *restrict buf) {                                  \
        ptrdiff_t OWp = OW + (kw > sw ? (kw - sw + sw - 1) / sw : 0), Wp = OWp * sw;            \
        ptrdiff_t Hp = (OH - 1) * sh + kh, R = (Hp + sh - 1) / sh, r, c, m, q, p, i, j;         \
        ptrdiff_t nH = sh * R * OWp + 8, nB = OH * OWp + 8;                                      \
        T *restrict P = buf;                                   /* T-aligned sections */          \
        T *restrict hv = P + sh * R * Wp + kw + 8;                                               \
        int32_t *restrict hq = (int32_t *)(hv + nH);                                             \
        T *restrict bv = hv + 2 * nH;                                                            \
        int32_t *restrict bd = (int32_t *)(bv + nB);                                             \
        const T ninf = -(T)INFINITY;                                                             \
        /* 1. the padded plane, rows grouped by phase r % sh, -inf outside x */                  \
        for (r = 0; r < Hp; r++) {                                                               \
            T *restrict row = P + ((r % sh) * R + r / sh) * Wp;                                  \
            ptrdiff_t u = r - ph;                                                                \
            if (u < 0 || u >= H) { for (c = 0; c < Wp; c++) row[c] = ninf; continue; }          \
            ptrdiff_t c0 = pw < Wp ? pw : Wp, c1 = pw + W < Wp ? pw + W : Wp;                    \
            for (c = 0; c < c0; c++) row[c] = ninf;                                              \
            memcpy(row + c0, x + u * W, (c1 - c0) * sizeof(T));                                  \
            for (c = c1; c < Wp; c++) row[c] = ninf;                                             \
        }                                                                                        \
        for (c = 0; c < kw + 8; c++) P[sh * R * Wp + c] = ninf;                                  \
        /* 2. horizontal: per phase one flat loop per tap (columns j >= OW are never used) */    \
        for (ptrdiff_t f = 0; f < sh; f++) {                                                     \
            ptrdiff_t n = ((Hp - f + sh - 1) / sh) * OWp;                                        \
            const T *restrict src = P + f * R * Wp;                                              \
            T *restrict hvf = hv + f * R * OWp;                                                  \
            int32_t *restrict hqf = hq + f * R * OWp;                                            \
            for (m = 0; m < n; m++) { hvf[m] = src[m * sw]; hqf[m] = 0; }                        \
            for (q = 1; q < kw; q++)                                                             \
                for (m = 0; m < n; m++) {                                                        \
                    T v = src[m * sw + q], b = hvf[m]; int w = FMS_WINS(v, b);                   \
                    hvf[m] = fms_sel_##SUF(w, v, b);                                             \
                    hqf[m] = (hqf[m] & ~-(int32_t)w) | ((int32_t)q & -(int32_t)w);               \
                }                                                                                \
        }                                                                                        \
        /* 3. vertical: tap p reads rows i*sh + p, i.e. rows p/sh.. of phase p % sh */           \
        ptrdiff_t n = OH * OWp;                                                                  \
        for (m = 0; m < n; m++) { bv[m] = hv[m]; bd[m] = hq[m]; }                                \
        for (p = 1; p < kh; p++) {                                                               \
            const T *restrict sv = hv + ((p % sh) * R + p / sh) * OWp;                           \
            const int32_t *restrict sq = hq + ((p % sh) * R + p / sh) * OWp;                     \
            int32_t dp = (int32_t)(p * W);                                                       \
            for (m = 0; m < n; m++) {                                                            \
                T v = sv[m], b = bv[m]; int w = FMS_WINS(v, b);                                  \
                bv[m] = fms_sel_##SUF(w, v, b);                                                  \
                bd[m] = (bd[m] & ~-(int32_t)w) | ((dp + sq[m]) & -(int32_t)w);                   \
            }                                                                                    \
        }                                                                                        \
        /* 4. out; a -inf maximum may be a padding cell that came first: redo it exactly */      \
        for (i = 0; i < OH; i++) {                                                               \
            int64_t org = (int64_t)(i * sh - ph) * W - pw;                                       \
            for (j = 0; j < OW; j++) {                                                           \
                y[i * OW + j] = bv[i * OWp + j];                                                 \
                am[i * OW + j] = org + j * sw + bd[i * OWp + j];                                 \
            }                                                                                    \
        }                                                                                        \
        for (m = 0; m < OH * OW; m++) {                                                          \
            if (y[m] != ninf) continue;                                                          \
            i = m / OW; j = m % OW;                                                              \
            ptrdiff_t u0 = i * sh - ph, u1 = u0 + kh, v0 = j * sw - pw, v1 = v0 + kw;            \
            u0 = u0 < 0 ? 0 : u0; v0 = v0 < 0 ? 0 : v0;                                       \
            u1 = u1 > H ? H : u1; v1 = v1 > W ? W : v1;                                       \
            int64_t bk = u0 * W + v0; T b = x[bk];                                               \
            for (ptrdiff_t u = u0; u < u1; u++)                                                  \
                for (ptrdiff_t v = v0; v < v1; v++)                                              \
                    if (FMS_WINS(x[u * W + v], b)) { b = x[u * W + v]; bk = u * W + v; }         \
            y[m] = b; am[m] = bk;                                                                \
        }                                                                                        \
    }
    FMS_DEFINE(float, f, uint32_t)
    FMS_DEFINE(double, d, uint64_t)
    /* The 2x2 / stride 2 kernels over G consecutive planes at once (small planes: one call,
       and flat loops that run over the row pairs of all G planes, instead of a few short loops
       per plane). Row pair pp = b*OH + i of the group is rows 2i, 2i+1 of plane b; every plane's
       outputs follow its predecessor's, so the flat passes (_pool_plane.pxi's exact passes,
       fcp_avg2's sums) run over the row pairs of all G planes: the same operations, in the same
       order, for every output (fpg_max2 with am NULL: the values only). Return 0 (nothing
       done) when a row pair does not fit the scratch or a plane outgrows int32 indices. */
    #define FPG_DEFINE(T, SUF)                                                                 \
    static inline int fpg_max2_##SUF(const T *restrict x, ptrdiff_t G, ptrdiff_t H,           \
                                     ptrdiff_t W, T *restrict y, int64_t *restrict am,         \
                                     ptrdiff_t OH, ptrdiff_t OW) {                             \
        T v[FPP_CAP + 8]; int32_t t[FPP_CAP + 8];                                              \
        ptrdiff_t L = 2 * OW, Lv = (2 * OW + 7) & ~(ptrdiff_t)7, rows, p0, r, c, m, n;         \
        ptrdiff_t P = G * OH;                                                                  \
        if (L > FPP_CAP || 2 * OH > H || L > W || H * W >= 2147483647) return 0;               \
        rows = FPP_CAP / L;                                                                    \
        for (p0 = 0; p0 < P; p0 += rows) {                                                     \
            ptrdiff_t nr = P - p0 < rows ? P - p0 : rows;                                      \
            for (r = 0; r < nr; r++) {                                                         \
                ptrdiff_t b = (p0 + r) / OH, i = (p0 + r) % OH;                                \
                const T *restrict r0 = x + b * H * W + 2 * i * W;                              \
                const T *restrict r1 = r0 + W;                                                 \
                T *restrict vr = v + r * L;                                                    \
                int32_t *restrict tr = t + r * L;                                              \
                int32_t base = (int32_t)(2 * i * W), below = (int32_t)W;                       \
                /* whole vectors unless this is the plane's last row pair (_pool_plane.pxi) */ \
                ptrdiff_t len = i < OH - 1 ? Lv : L;                                           \
                for (c = 0; c < len; c++) {                                                    \
                    T a = r0[c], bb = r1[c];                                                   \
                    int w = FPP_WINS(bb, a);                                                   \
                    vr[c] = fpp_sel_##SUF(w, bb, a);                                           \
                    tr[c] = base + (int32_t)c + (below & -(int32_t)w);                         \
                }                                                                              \
            }                                                                                  \
            n = nr * OW;                                                                       \
            T *restrict yo = y + p0 * OW;                                                      \
            int64_t *restrict ao = am ? am + p0 * OW : NULL;  /* NULL: values only */         \
            for (m = 0; m < n; m++) {                                                          \
                T l = v[2 * m], rr = v[2 * m + 1];                                             \
                int32_t tl = t[2 * m], tq = t[2 * m + 1];                                      \
                int same = (rr == l) | ((rr != rr) & (l != l));                                \
                int w = FPP_WINS(rr, l) | (same & (tq < tl));                                  \
                yo[m] = fpp_sel_##SUF(w, rr, l);                                               \
                if (ao) ao[m] = (int64_t)(tl + ((tq - tl) & -(int32_t)w));                     \
            }                                                                                  \
        }                                                                                      \
        return 1;                                                                              \
    }                                                                                          \
    static inline int fpg_avg2_##SUF(const T *restrict x, ptrdiff_t G, ptrdiff_t H,           \
                                     ptrdiff_t W, T *restrict y, ptrdiff_t OH, ptrdiff_t OW,   \
                                     T div) {                                                  \
        T A[FCP_CAP], B[FCP_CAP];                                                              \
        ptrdiff_t L = 2 * OW, rows, p0, r, m, n, P = G * OH;                                   \
        if (L > FCP_CAP || 2 * OH > H || L > W) return 0;                                      \
        rows = FCP_CAP / L;                                                                    \
        for (p0 = 0; p0 < P; p0 += rows) {                                                     \
            ptrdiff_t nr = P - p0 < rows ? P - p0 : rows;                                      \
            /* plane b, output row i of row p0 + r: stepped, not divided (an integer       \
               division per output row was most of the time at 7x7 planes) */               \
            ptrdiff_t b = p0 / OH, i = p0 % OH;                                                \
            for (r = 0; r < nr; r++) {                                                         \
                const T *restrict r0 = x + b * H * W + 2 * i * W;                              \
                for (m = 0; m < L; m++) { A[r * L + m] = r0[m]; B[r * L + m] = r0[W + m]; }    \
                if (++i == OH) { i = 0; b++; }                                                 \
            }                                                                                  \
            n = nr * OW;                                                                       \
            T *restrict yo = y + p0 * OW;                                                      \
            for (m = 0; m < n; m++)                                                            \
                yo[m] = (((((T)0 + A[2 * m]) + A[2 * m + 1]) + B[2 * m]) + B[2 * m + 1]) / div; \
        }                                                                                      \
        return 1;                                                                              \
    }
    FPG_DEFINE(float, f)
    FPG_DEFINE(double, d)
    /* The 2x2 / stride 2 window over G consecutive planes (whole windows), across output
       columns in vectors of NL lanes: a step loads 2*NL columns of both rows of a row pair and
       splits each row into its even and odd columns (one shuffle each), then folds the window
       in scan order, (a + b) + (c + d) with u + v = (v > u ? v : u), a max instruction. For
       numbers + is associative and keeps the first of equal values (-0 and +0 included), so
       this is the row-major scan's maximum and, with the winners' offsets (0, 1, W, W + 1),
       its argmax, bitwise. A NaN breaks that: the function then returns 0, and the caller
       redoes the group by the exact passes (fpg_max2), which overwrite everything.
       The split leaves the lanes in a fixed order (pairs from the first and the second vector
       interleaved), put back by one permutation before the stores. A step's loads that would
       run past the group read a zero-padded copy; its stores run whole vectors into the
       outputs of the following row pairs (rewritten when those come), except at the group's
       end. am may be NULL (values only). */
    #define FPF_DEFINE(T, SUF, IT, NL, EVEN, ODD, BACK)                                        \
    static inline int fpf_max2_##SUF(const T *restrict x, ptrdiff_t G, ptrdiff_t H,           \
                                     ptrdiff_t W, T *restrict y, int64_t *restrict am,         \
                                     ptrdiff_t OH, ptrdiff_t OW) {                             \
        typedef T VT __attribute__((vector_size(NL * sizeof(T))));                             \
        typedef IT VI __attribute__((vector_size(NL * sizeof(T))));                            \
        const VI ev = EVEN, od = ODD, back = BACK;                                             \
        const T *end = x + G * H * W;                                                          \
        VI bad = {0};                                                                          \
        ptrdiff_t R = G * OH, rp, b = 0, i = 0, j, l;                                          \
        for (rp = 0; rp < R; rp++) {                                                           \
            const T *r0 = x + (b * H + 2 * i) * W, *r1 = r0 + W;                               \
            int64_t base = 2 * i * W;                                                          \
            for (j = 0; j < OW; j += NL) {                                                     \
                VT a0, a1, b0, b1;                                                             \
                if (r1 + 2 * j + 2 * NL <= end) {                                              \
                    memcpy(&a0, r0 + 2 * j, sizeof a0);                                        \
                    memcpy(&a1, r0 + 2 * j + NL, sizeof a1);                                   \
                    memcpy(&b0, r1 + 2 * j, sizeof b0);                                        \
                    memcpy(&b1, r1 + 2 * j + NL, sizeof b1);                                   \
                } else {                                                                       \
                    T ta[2 * NL] = {0}, tb[2 * NL] = {0};                                      \
                    ptrdiff_t n2 = 2 * (OW - j < NL ? OW - j : NL);                            \
                    memcpy(ta, r0 + 2 * j, n2 * sizeof(T));                                   \
                    memcpy(tb, r1 + 2 * j, n2 * sizeof(T));                                   \
                    memcpy(&a0, ta, sizeof a0); memcpy(&a1, ta + NL, sizeof a1);               \
                    memcpy(&b0, tb, sizeof b0); memcpy(&b1, tb + NL, sizeof b1);               \
                }                                                                              \
                VT ea = __builtin_shuffle(a0, a1, ev), oa = __builtin_shuffle(a0, a1, od);     \
                VT eb = __builtin_shuffle(b0, b1, ev), ob = __builtin_shuffle(b0, b1, od);     \
                bad |= (VI)(ea != ea) | (VI)(oa != oa) | (VI)(eb != eb) | (VI)(ob != ob);      \
                VI ga = (VI)(oa > ea), gb = (VI)(ob > eb);                                     \
                VT ha = (VT)((ga & (VI)oa) | (~ga & (VI)ea));                                  \
                VT hb = (VT)((gb & (VI)ob) | (~gb & (VI)eb));                                  \
                VI gv = (VI)(hb > ha);                                                         \
                VT m = __builtin_shuffle((VT)((gv & (VI)hb) | (~gv & (VI)ha)), back);          \
                /* whole vectors unless they would pass the group's last output */            \
                ptrdiff_t k = rp * OW + j, n = k + NL <= R * OW ? NL : OW - j;                 \
                if (n == NL) memcpy(y + k, &m, sizeof m);                                      \
                else for (l = 0; l < n; l++) y[k + l] = m[l];                                  \
                if (am) {                                                                      \
                    VI t = (gv & ((IT)W + (gb & 1))) | (~gv & (ga & 1));                       \
                    t = __builtin_shuffle(t, back);                                            \
                    for (l = 0; l < n; l++) am[k + l] = base + 2 * (j + l) + (int64_t)t[l];    \
                }                                                                              \
            }                                                                                  \
            if (++i == OH) { i = 0; b++; }                                                     \
        }                                                                                      \
        for (l = 0; l < NL; l++) if (bad[l]) return 0;                                         \
        return 1;                                                                              \
    }
    #define FPF_E8 {0, 2, 8, 10, 4, 6, 12, 14}
    #define FPF_O8 {1, 3, 9, 11, 5, 7, 13, 15}
    #define FPF_B8 {0, 1, 4, 5, 2, 3, 6, 7}
    FPF_DEFINE(float, f, int32_t, 8, FPF_E8, FPF_O8, FPF_B8)
    #define FPF_E4 {0, 4, 2, 6}
    #define FPF_O4 {1, 5, 3, 7}
    #define FPF_B4 {0, 2, 1, 3}
    FPF_DEFINE(double, d, int64_t, 4, FPF_E4, FPF_O4, FPF_B4)
    /* The 2x2 max-pool's gradient over G consecutive planes, by blocks: when every output
       (i, j)'s argmax lies in the 2x2 block at rows 2i, 2i+1 and columns 2j, 2j+1 (what a 2x2 /
       stride 2 pool without padding gives; the blocks do not overlap), the scatter's additions
       into the zeroed d write each block's elements at most once, so a run of NO blocks can be
       written whole, in vectors, instead of element by element (and without zeroing d first:
       the runs write every element of rows < 2*OH, columns < 2*OW): their argmax's offsets in
       their blocks (0, 1, W or W + 1) and their gradients are duplicated into the lanes of
       their 2*NO columns (one 32-byte vector per row), compared with each column's own offset
       and, when the pool's input x (a ReLU's output) is given, masked by x > 0. The last run of
       a row pair ends at its last output, overlapping the one before (its blocks are written
       again with the same values). The value is 0 + g, what the scatter adds to its zeroed d
       (-0 becomes +0): d is bitwise the scatter's. Return 0 (the caller zeroes and scatters,
       which overwrites everything written here) when the runs would cover the row's outputs
       less than 3/4 efficiently (OW < NO, or OW = 5 with NO = 4: the scatter measured 10-15%
       faster there on real ReLU outputs) and when an argmax lies outside its block (another
       pool's indices; checked once per row pair). Indices are those the kernels take, in
       [0, H*W); H*W < 2**31, so their offsets fit IT. */
    #if defined(__has_builtin)
    #if __has_builtin(__builtin_shufflevector)
    #define FPB_VECTORS 1
    #endif
    #endif
    #ifdef FPB_VECTORS
    #define FPB_DEFINE(T, SUF, IT, NO, DUPG, DUPC, PAR, STEP)                                  \
    static inline int fpb_max2_##SUF(const T *restrict g, const int64_t *restrict am,         \
                                     const T *restrict x, T *restrict d, ptrdiff_t G,          \
                                     ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW) {   \
        typedef T VH __attribute__((vector_size(NO * sizeof(T))));                             \
        typedef T VT __attribute__((vector_size(2 * NO * sizeof(T))));                         \
        typedef IT VI __attribute__((vector_size(2 * NO * sizeof(T))));                        \
        typedef int64_t VL __attribute__((vector_size(NO * 8)));                               \
        const VI par = PAR; const VL step = STEP;                                              \
        ptrdiff_t R = G * OH, rp, b = 0, i = 0, j, l;                                          \
        if (2 * OH > H || 2 * OW > W || H * W >= 2147483647) return 0;                         \
        if (OW < NO || 4 * OW < 3 * NO * ((OW + NO - 1) / NO)) return 0;  /* see above */      \
        /* zero what the runs do not write: a last row or column of odd H or W */             \
        for (rp = 0; rp < G && (2 * OH < H || 2 * OW < W); rp++) {                              \
            T *dp = d + rp * H * W;                                                            \
            for (l = 0; l < 2 * OH && 2 * OW < W; l++)                                         \
                memset(dp + l * W + 2 * OW, 0, (W - 2 * OW) * sizeof(T));                      \
            memset(dp + 2 * OH * W, 0, (H - 2 * OH) * W * sizeof(T));                          \
        }                                                                                      \
        for (rp = 0; rp < R; rp++) {                                                           \
            T *d0 = d + (b * H + 2 * i) * W, *d1 = d0 + W;                                     \
            const T *x0 = x ? x + (b * H + 2 * i) * W : NULL, *x1 = x ? x0 + W : NULL;         \
            const T *gp = g + rp * OW;                                                         \
            const int64_t *ap = am + rp * OW;                                                  \
            int64_t base = 2 * i * W;                                                          \
            VL bad = {0};                                                                      \
            for (j = 0; j < OW; j += NO) {                                                     \
                VH gh; VL rel; VT x0v, x1v;                                                    \
                if (j + NO > OW) j = OW - NO;  /* the last run overlaps: its blocks again */   \
                memcpy(&gh, gp + j, sizeof gh); memcpy(&rel, ap + j, sizeof rel);              \
                rel = rel - (base + 2 * j) - step;                                             \
                bad |= ~((rel == 0) | (rel == 1) | (rel == W) | (rel == W + 1));               \
                gh = gh + (T)0;                                                                \
                VI gv = (VI)__builtin_shufflevector(gh, gh, DUPG);                             \
                VI cv = DUPC(rel);                                                             \
                VI m0 = (VI)(cv == par), m1 = (VI)(cv == par + (IT)W);                         \
                if (x) {                                                                       \
                    memcpy(&x0v, x0 + 2 * j, sizeof x0v); memcpy(&x1v, x1 + 2 * j, sizeof x1v);\
                    m0 &= (VI)(x0v > 0); m1 &= (VI)(x1v > 0);                                  \
                }                                                                              \
                VT o0 = (VT)(m0 & gv), o1 = (VT)(m1 & gv);                                     \
                memcpy(d0 + 2 * j, &o0, sizeof o0); memcpy(d1 + 2 * j, &o1, sizeof o1);        \
            }                                                                                  \
            for (l = 0; l < NO; l++) if (bad[l]) return 0;                                     \
            if (++i == OH) { i = 0; b++; }                                                     \
        }                                                                                      \
        return 1;                                                                              \
    }
    #define FPB_ARGS(...) __VA_ARGS__
    typedef int32_t fpb_v8si __attribute__((vector_size(32)));
    #define FPB_DUPC_F(rel) __builtin_shufflevector((fpb_v8si)(rel), (fpb_v8si)(rel),          \
                                                    0, 0, 2, 2, 4, 4, 6, 6)
    #define FPB_DUPC_D(rel) __builtin_shufflevector(rel, rel, 0, 0, 1, 1)
    FPB_DEFINE(float, f, int32_t, 4, FPB_ARGS(0, 0, 1, 1, 2, 2, 3, 3), FPB_DUPC_F,
               FPB_ARGS({0, 1, 0, 1, 0, 1, 0, 1}), FPB_ARGS({0, 2, 4, 6}))
    FPB_DEFINE(double, d, int64_t, 2, FPB_ARGS(0, 0, 1, 1), FPB_DUPC_D,
               FPB_ARGS({0, 1, 0, 1}), FPB_ARGS({0, 2}))
    #else
    /* No __builtin_shufflevector (an old compiler): always the zeroing pass and the scatter. */
    #define FPB_NONE(T, SUF)                                                                   \
    static inline int fpb_max2_##SUF(const T *g, const int64_t *am, const T *x, T *d,          \
                                     ptrdiff_t G, ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH,      \
                                     ptrdiff_t OW) { return 0; }
    FPB_NONE(float, f)
    FPB_NONE(double, d)
    #endif
    """
    enum: FCP_CAP_ "FCP_CAP"
    int fpg_max2_f(const float* x, Py_ssize_t G, Py_ssize_t H, Py_ssize_t W, float* y,
                   int64_t* am, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil
    int fpg_max2_d(const double* x, Py_ssize_t G, Py_ssize_t H, Py_ssize_t W, double* y,
                   int64_t* am, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil
    int fpf_max2_f(const float* x, Py_ssize_t G, Py_ssize_t H, Py_ssize_t W, float* y,
                   int64_t* am, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil
    int fpf_max2_d(const double* x, Py_ssize_t G, Py_ssize_t H, Py_ssize_t W, double* y,
                   int64_t* am, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil
    int fpb_max2_f(const float* g, const int64_t* am, const float* x, float* d, Py_ssize_t G,
                   Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil
    int fpb_max2_d(const double* g, const int64_t* am, const double* x, double* d,
                   Py_ssize_t G, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH,
                   Py_ssize_t OW) noexcept nogil
    int fpg_avg2_f(const float* x, Py_ssize_t G, Py_ssize_t H, Py_ssize_t W, float* y,
                   Py_ssize_t OH, Py_ssize_t OW, float div) noexcept nogil
    int fpg_avg2_d(const double* x, Py_ssize_t G, Py_ssize_t H, Py_ssize_t W, double* y,
                   Py_ssize_t OH, Py_ssize_t OW, double div) noexcept nogil
    size_t fms_scratch_f(Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw,
                         Py_ssize_t sh, Py_ssize_t sw) noexcept nogil
    size_t fms_scratch_d(Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw,
                         Py_ssize_t sh, Py_ssize_t sw) noexcept nogil
    void fms_max_f(const float* x, Py_ssize_t H, Py_ssize_t W, float* y, int64_t* am,
                   Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                   Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, float* buf) noexcept nogil
    void fms_max_d(const double* x, Py_ssize_t H, Py_ssize_t W, double* y, int64_t* am,
                   Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                   Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, double* buf) noexcept nogil
    int fcp_avg2_f(const float* x, Py_ssize_t H, Py_ssize_t W, float* y, Py_ssize_t OH,
                   Py_ssize_t OW, float div) noexcept nogil
    int fcp_avg2_d(const double* x, Py_ssize_t H, Py_ssize_t W, double* y, Py_ssize_t OH,
                   Py_ssize_t OW, double div) noexcept nogil
    void fcp_avg2_back_group_f(const float* g, float* dx, Py_ssize_t G, Py_ssize_t H,
                               Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, float div) noexcept nogil
    void fcp_avg2_back_group_d(const double* g, double* dx, Py_ssize_t G, Py_ssize_t H,
                               Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                               double div) noexcept nogil
    void fcp_avg2_back_f(const float* g, float* dx, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH,
                         Py_ssize_t OW, float div) noexcept nogil
    void fcp_avg2_back_d(const double* g, double* dx, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t OH, Py_ssize_t OW, double div) noexcept nogil
    void fcp_add_f(float* y, const float* x, Py_ssize_t s, Py_ssize_t n) noexcept nogil
    void fcp_add_d(double* y, const double* x, Py_ssize_t s, Py_ssize_t n) noexcept nogil
    void fcp_max_f(float* y, int32_t* t, const float* x, Py_ssize_t s, int32_t tap,
                   Py_ssize_t n) noexcept nogil
    void fcp_max_d(double* y, int32_t* t, const double* x, Py_ssize_t s, int32_t tap,
                   Py_ssize_t n) noexcept nogil
    void fcp_scatter_f(float* d, const float* g, Py_ssize_t s, Py_ssize_t n) noexcept nogil
    void fcp_scatter_d(double* d, const double* g, Py_ssize_t s, Py_ssize_t n) noexcept nogil


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

cdef inline Py_ssize_t _first_inside(Py_ssize_t start, Py_ssize_t d) noexcept nogil:
    """Smallest tap p >= 0 with start + p*d >= 0."""
    if start >= 0:
        return 0
    return (-start + d - 1) // d


cdef inline Py_ssize_t _end_inside(Py_ssize_t start, Py_ssize_t d, Py_ssize_t k,
                                   Py_ssize_t size) noexcept nogil:
    """One past the last tap p < k with start + p*d < size (start < size)."""
    return min(k, (size - 1 - start) // d + 1)


cdef inline void _interior(Py_ssize_t size, Py_ssize_t out, Py_ssize_t k, Py_ssize_t s,
                           Py_ssize_t p, Py_ssize_t d, Py_ssize_t* lo,
                           Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the outputs whose whole window (k taps, dilation d) lies inside [0, size)."""
    cdef Py_ssize_t last = size - 1 - (k - 1) * d + p  # j*s <= last
    lo[0] = min((p + s - 1) // s, out)
    hi[0] = min(last // s + 1, out) if last >= 0 else 0
    if hi[0] < lo[0]:
        hi[0] = lo[0]


# ---------------------------------------------------------------------------------------------
# Max-pooling
# ---------------------------------------------------------------------------------------------

cdef inline void _max_plane(const floating* x, floating* y, int64_t* am, int32_t* tr,
                            Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh,
                            Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                            Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """Max-pool one plane with dilation; same result as a row-major scan of every window.

    The taps are visited in row-major window order and each one updates a whole output row at
    once (vectorisable): a tap replaces the running maximum when it is larger or the first NaN,
    so ties keep the first element and the first NaN wins, exactly as _pool_plane.
    """
    cdef Py_ssize_t i, j, p, q, p0, p1, q0, q1, u, hs, vs, base, jlo, jhi
    cdef int32_t off
    cdef floating best, val
    cdef int64_t best_k, k
    cdef floating* yr
    cdef int64_t* ar
    _interior(W, OW, kw, sw, pw, dw, &jlo, &jhi)
    for i in range(OH):
        hs = i * sh - ph
        p0 = _first_inside(hs, dh)
        p1 = _end_inside(hs, dh, kh, H)
        yr = y + i * OW
        ar = am + i * OW
        # Border columns: clip each window.
        j = 0
        while j < OW:
            if j == jlo and jhi > jlo:
                j = jhi
                continue
            vs = j * sw - pw
            q0 = _first_inside(vs, dw)
            q1 = _end_inside(vs, dw, kw, W)
            best_k = (hs + p0 * dh) * W + vs + q0 * dw
            best = x[best_k]
            for p in range(p0, p1):
                for q in range(q0, q1):
                    k = (hs + p * dh) * W + vs + q * dw
                    val = x[k]
                    if _wins(val, best):
                        best = val
                        best_k = k
            yr[j] = best
            ar[j] = best_k
            j = j + 1
        if jhi <= jlo:
            continue
        # Interior columns: one pass over the output row per tap, recording the winning tap's
        # offset within the window (tr), turned into the flat index at the end.
        u = hs + p0 * dh
        base = u * W - pw
        for j in range(jlo, jhi):
            yr[j] = x[base + j * sw]
            tr[j] = 0
        for p in range(p0, p1):
            for q in range(kw):
                if p == p0 and q == 0:
                    continue
                off = (p - p0) * dh * W + q * dw
                if floating is float:
                    fcp_max_f(yr + jlo, tr + jlo, x + base + off + jlo * sw, sw, off,
                              jhi - jlo)
                else:
                    fcp_max_d(yr + jlo, tr + jlo, x + base + off + jlo * sw, sw, off,
                              jhi - jlo)
        for j in range(jlo, jhi):
            ar[j] = base + j * sw + tr[j]


cdef void _max2_groups(const floating* x, floating* y, int64_t* am, Py_ssize_t P,
                       Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                       int n_threads) noexcept nogil:
    """2x2/2 max-pool of P consecutive planes (whole windows) in groups of G planes (G fixed by
    the shape) per task, by fpf_max2's vectors (with the argmax, or with ``am`` NULL the values
    only); a group holding a NaN is redone exactly by fpg_max2 (with the argmax, else plane by
    plane by the window scan; values-only callers have checked that fpg_max2 takes the
    shape)."""
    cdef Py_ssize_t G = max(1, GROUP_VALUES // (H * W)), grp
    n_threads = _threads_for(P * H * W * MOVE, n_threads)
    # Race-free: group grp writes only planes [grp*G, grp*G + G) of y and am.
    if n_threads == 1:  # serial: libgomp's team of one costs system calls (_threads.pxi)
        for grp in range((P + G - 1) // G):
            _max2_group(x, y, am, grp * G, min(G, P - grp * G), H, W, OH, OW)
        return
    for grp in prange((P + G - 1) // G, schedule='static', num_threads=n_threads):
        _max2_group(x, y, am, grp * G, min(G, P - grp * G), H, W, OH, OW)


cdef void _max2_group(const floating* x, floating* y, int64_t* am, Py_ssize_t p0, Py_ssize_t g,
                      Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """Planes p0 .. p0 + g - 1 of _max2_groups: the vector path, else the exact passes, else
    (rows over the exact passes' scratch, with the argmax) the window scan."""
    cdef Py_ssize_t b
    cdef const floating* xg = x + p0 * H * W
    cdef floating* yg = y + p0 * OH * OW
    cdef int64_t* ag = NULL if am == NULL else am + p0 * OH * OW
    if floating is float:
        if fpf_max2_f(xg, g, H, W, yg, ag, OH, OW) or fpg_max2_f(xg, g, H, W, yg, ag, OH, OW):
            return
    else:
        if fpf_max2_d(xg, g, H, W, yg, ag, OH, OW) or fpg_max2_d(xg, g, H, W, yg, ag, OH, OW):
            return
    # (never with am NULL: the values-only callers check the shape first)
    for b in range(g):
        _pool_plane(xg + b * H * W, yg + b * OH * OW, ag + b * OH * OW, H, W, OH, OW,
                    2, 2, 2, 2, 0, 0)


def maxpool2_values(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
                    floating[:, :, :, ::1] y,        # OUT (N, C, OH, OW)
                    int n_threads):
    """y = 2x2 / stride 2 max-pooling of x without the argmax (eval mode): bitwise the values
    of ``maxpool2d_forward``. Parallel over groups of planes (about 4096 input values a task).
    Returns False (nothing written) where fpg_max2 does not take the shape (a partial window,
    a row pair longer than its scratch, 2*OW > 512, or a plane of 2**31 values): use
    ``maxpool2d_forward`` then."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    if (y.shape[0] != N or y.shape[1] != C or 2 * OH > H or 2 * OW > W or 2 * OW > FPP_CAP
            or H * W >= 2147483647):
        return False
    if N * C and OH and OW:
        with nogil:
            _max2_groups(&x[0, 0, 0, 0], &y[0, 0, 0, 0], NULL, N * C, H, W, OH, OW, n_threads)
    return True


cdef Py_ssize_t _max_scratch(Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                             Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t dh, Py_ssize_t dw, bint dbl) noexcept nogil:
    """Scratch elements per thread of maxpool2d_forward's per-plane paths: fms_max's buffer
    (no dilation, planes up to 2**20 elements) then _max_plane's OW + 1 int32 column table."""
    cdef Py_ssize_t item = 8 if dbl else 4, nbuf = 0
    if not (dh == 1 and dw == 1 and OH > 0 and OW > 0 and H * W <= (1 << 20)):
        return (OW + 1) * 4 // item + 2
    if dbl:
        nbuf = fms_scratch_d(OH, OW, kh, kw, sh, sw)
    else:
        nbuf = fms_scratch_f(OH, OW, kh, kw, sh, sw)
    return nbuf + (OW + 1) * 4 // item + 2


def maxpool2d_scratch(Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh,
                      Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
                      bint is_double, int n_threads):
    """Elements of the scratch array ``maxpool2d_forward`` needs (``n_threads`` threads' parts):
    the caller (a layer's workspace) owns it, so that no call allocates."""
    return n_threads * _max_scratch(H, W, OH, OW, kh, kw, sh, sw, dh, dw, is_double)


def maxpool2d_forward(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
                      floating[:, :, :, ::1] y,        # OUT (N, C, OH, OW)
                      int64_t[:, :, :, ::1] argmax,    # OUT (N, C, OH, OW) flat index u*W+v
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t ph, Py_ssize_t pw, int n_threads,
                      Py_ssize_t dh, Py_ssize_t dw,
                      floating[::1] scratch):          # WORK maxpool2d_scratch(...) elements
    """y[n,c,i,j] = max over p < kh, q < kw of x[n,c, i*sh-ph+p*dh, j*sw-pw+q*dw] (real
    positions only); argmax[n,c,i,j] = u*W + v of that maximum in x[n,c].

    Ties go to the first element in row-major order; a NaN is the maximum (the first NaN wins).
    OH, OW come from y (floor or ceil mode). The plain 2x2/2 window takes _max2_groups'
    vectorised path when every window is whole, other windows without dilation the separable
    fms_max path, dilated ones _max_plane. Parallel over (n, c) planes or groups of them.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t plane
    cdef bint pool2 = (kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0
                       and dh == 1 and dw == 1 and 2 * OH <= H and 2 * OW <= W)
    cdef int32_t* tr
    cdef floating* buf
    cdef size_t nbuf = 0
    cdef Py_ssize_t per = _max_scratch(H, W, OH, OW, kh, kw, sh, sw, dh, dw, floating is double)
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"maxpool2d_forward: padding ({ph}, {pw}) is more than half the kernel "
                         f"({kh}, {kw})")
    if N * C == 0 or OH == 0 or OW == 0:
        return
    if pool2:
        # Groups of planes per task and per call (one plane a group from 4096 values up).
        with nogil:
            _max2_groups(&x[0, 0, 0, 0], &y[0, 0, 0, 0], &argmax[0, 0, 0, 0], N * C, H, W, OH,
                         OW, n_threads)
        return
    # The separable branch-free path: no dilation, and planes small enough that its scratch
    # (about two planes) stays in cache and its int32 offsets cannot overflow.
    if dh == 1 and dw == 1 and H * W <= (1 << 20):
        if floating is float:
            nbuf = fms_scratch_f(OH, OW, kh, kw, sh, sw)
        else:
            nbuf = fms_scratch_d(OH, OW, kh, kw, sh, sw)
    if scratch.shape[0] < n_threads * per:
        raise ValueError(f"maxpool2d_forward needs {n_threads * per} elements of scratch, got "
                         f"{scratch.shape[0]}")
    with nogil, parallel(num_threads=n_threads):
        buf = &scratch[0] + threadid() * per
        tr = <int32_t*> (buf + nbuf)
        # Race-free: plane (n, c) writes only y[n, c] and argmax[n, c]; tr, buf are per thread.
        for plane in prange(N * C, schedule='static'):
            if nbuf > 0:
                if floating is float:
                    fms_max_f(&x[plane // C, plane % C, 0, 0], H, W,
                              &y[plane // C, plane % C, 0, 0],
                              &argmax[plane // C, plane % C, 0, 0], OH, OW, kh, kw, sh, sw, ph,
                              pw, buf)
                else:
                    fms_max_d(&x[plane // C, plane % C, 0, 0], H, W,
                              &y[plane // C, plane % C, 0, 0],
                              &argmax[plane // C, plane % C, 0, 0], OH, OW, kh, kw, sh, sw, ph,
                              pw, buf)
            else:
                _max_plane(&x[plane // C, plane % C, 0, 0], &y[plane // C, plane % C, 0, 0],
                           &argmax[plane // C, plane % C, 0, 0], tr, H, W, OH, OW, kh, kw, sh,
                           sw, ph, pw, dh, dw)


cdef void _scatter_planes(const floating* g, const int64_t* a, const floating* x, floating* d,
                          Py_ssize_t p0, Py_ssize_t np_, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """Planes p0 .. p0 + np_ - 1 (H*W values of d and x, OH*OW of g and a each): d = 0, then
    d[a[k]] += g[k] for k in row-major order, where x[a[k]] > 0 when the pool's input x is
    given (a ReLU's output: NULL, no mask). When every index lies in its output's 2x2 block
    (a 2x2 / stride 2 pool), fpb_max2 writes that same result densely instead; else one memset
    for the group (a 7x7 plane alone is 196 bytes) and the scatter."""
    cdef Py_ssize_t p, k, in_size = H * W, out_size = OH * OW
    cdef const floating* gp
    cdef const int64_t* ap
    cdef const floating* xp
    cdef floating* dp
    cdef const floating* xg = NULL if x == NULL else x + p0 * in_size
    if out_size > 0:
        if floating is float:
            if fpb_max2_f(g + p0 * out_size, a + p0 * out_size, xg, d + p0 * in_size, np_,
                          H, W, OH, OW):
                return
        else:
            if fpb_max2_d(g + p0 * out_size, a + p0 * out_size, xg, d + p0 * in_size, np_,
                          H, W, OH, OW):
                return
    memset(d + p0 * in_size, 0, np_ * in_size * sizeof(floating))
    for p in range(p0, p0 + np_):
        gp = g + p * out_size
        ap = a + p * out_size
        dp = d + p * in_size
        if x == NULL:
            for k in range(out_size):
                dp[ap[k]] = dp[ap[k]] + gp[k]
        else:
            xp = x + p * in_size
            for k in range(out_size):
                if xp[ap[k]] > 0:
                    dp[ap[k]] = dp[ap[k]] + gp[k]


cdef void _max_scatter(const floating* g, const int64_t* a, const floating* x, floating* d,
                       Py_ssize_t P, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                       int n_threads) noexcept nogil:
    """_scatter_planes over P planes in groups of about GROUP_VALUES input values."""
    cdef Py_ssize_t G = max(1, GROUP_VALUES // max(H * W, <Py_ssize_t> 1)), grp
    n_threads = _threads_for(P * H * W * MOVE, n_threads)
    # Race-free: group grp writes only its planes of d.
    if n_threads == 1:  # serial: libgomp's team of one costs system calls (_threads.pxi)
        for grp in range((P + G - 1) // G):
            _scatter_planes(g, a, x, d, grp * G, min(G, P - grp * G), H, W, OH, OW)
        return
    for grp in prange((P + G - 1) // G, schedule='static', num_threads=n_threads):
        _scatter_planes(g, a, x, d, grp * G, min(G, P - grp * G), H, W, OH, OW)


def maxpool2d_backward(const floating[:, :, :, ::1] dy,    # IN  (N, C, OH, OW)
                       const int64_t[:, :, :, ::1] argmax,  # IN  (N, C, OH, OW), each in [0, H*W)
                       floating[:, :, :, ::1] dx,          # OUT (N, C, H, W)
                       int n_threads):
    """dx[n,c].flat[argmax[n,c,i,j]] += dy[n,c,i,j]; overlapping windows add up.

    Parallel over groups of (n, c) planes: each task owns its planes of dx and adds in row-major
    order of (i, j).
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef bint empty = dy.shape[2] * dy.shape[3] == 0
    if N * C == 0 or H * W == 0:
        return
    with nogil:
        _max_scatter(NULL if empty else &dy[0, 0, 0, 0], NULL if empty else &argmax[0, 0, 0, 0],
                     NULL, &dx[0, 0, 0, 0], N * C, H, W, dy.shape[2], dy.shape[3], n_threads)


def maxpool2d_relu_backward(const floating[:, :, :, ::1] dy,    # IN  (N, C, OH, OW)
                            const int64_t[:, :, :, ::1] argmax,  # IN  (N, C, OH, OW)
                            const floating[:, :, :, ::1] x,     # IN  (N, C, H, W) pool input
                            floating[:, :, :, ::1] dx,          # OUT (N, C, H, W)
                            int n_threads):
    """Gradient through ReLU then max-pool: dx[n,c].flat[argmax] += dy * (x.flat[argmax] > 0).

    x is the pool's input, the ReLU's output: the ReLU passed the gradient on exactly where
    x > 0, and everywhere else the pool's gradient is 0 already, so the ReLU's own backward
    pass is not needed. Bitwise that pass after ``maxpool2d_backward``. Parallel over groups of
    (n, c) planes, as maxpool2d_backward.
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef bint empty = dy.shape[2] * dy.shape[3] == 0
    if x.shape[0] != N or x.shape[1] != C or x.shape[2] != H or x.shape[3] != W:
        raise ValueError(f"maxpool2d_relu_backward: x has shape "
                         f"{(x.shape[0], x.shape[1], x.shape[2], x.shape[3])}, dx "
                         f"{(N, C, H, W)}")
    if N * C == 0 or H * W == 0:
        return
    with nogil:
        _max_scatter(NULL if empty else &dy[0, 0, 0, 0], NULL if empty else &argmax[0, 0, 0, 0],
                     &x[0, 0, 0, 0], &dx[0, 0, 0, 0], N * C, H, W, dy.shape[2], dy.shape[3],
                     n_threads)


# ---------------------------------------------------------------------------------------------
# Average pooling
# ---------------------------------------------------------------------------------------------

cdef inline Py_ssize_t _avg_divisor(Py_ssize_t i, Py_ssize_t j, Py_ssize_t H, Py_ssize_t W,
                                    Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                                    Py_ssize_t ph, Py_ssize_t pw, bint include_pad,
                                    Py_ssize_t override) noexcept nogil:
    """PyTorch's divisor of window (i, j): the override, else the window cut at the padded
    input's end (count_include_pad) or cut to the real input."""
    cdef Py_ssize_t hs = i * sh - ph, vs = j * sw - pw
    cdef Py_ssize_t he = min(hs + kh, H + ph), ve = min(vs + kw, W + pw)
    if override > 0:
        return override
    if include_pad:
        return (he - hs) * (ve - vs)
    return (min(he, H) - max(hs, 0)) * (min(ve, W) - max(vs, 0))


cdef inline void _avg_plane(const floating* x, floating* y, Py_ssize_t H, Py_ssize_t W,
                            Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw,
                            Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                            bint include_pad, Py_ssize_t override) noexcept nogil:
    """Average-pool one plane: y = (sum of the window's real elements, row-major) / divisor.

    Interior columns (window inside the input's width) add one tap to a whole output row at a
    time (vectorisable); each output still sums its taps in row-major order.
    """
    cdef Py_ssize_t i, j, u, v, u0, u1, v0, v1, q, hs, vs, base, jlo, jhi
    cdef floating acc, div
    cdef floating* yr
    cdef int done = 0
    if kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0:
        # Every window is whole: divisor 4 (or the override) everywhere.
        div = override if override > 0 else 4
        if floating is float:
            done = fcp_avg2_f(x, H, W, y, OH, OW, div)
        else:
            done = fcp_avg2_d(x, H, W, y, OH, OW, div)
        if done:
            return
    _interior(W, OW, kw, sw, pw, 1, &jlo, &jhi)
    for i in range(OH):
        hs = i * sh - ph
        u0 = max(hs, 0)
        u1 = min(hs + kh, H)
        yr = y + i * OW
        j = 0
        while j < OW:
            if j == jlo and jhi > jlo:
                j = jhi
                continue
            vs = j * sw - pw
            v0 = max(vs, 0)
            v1 = min(vs + kw, W)
            acc = 0
            for u in range(u0, u1):
                for v in range(v0, v1):
                    acc = acc + x[u * W + v]
            yr[j] = acc / _avg_divisor(i, j, H, W, kh, kw, sh, sw, ph, pw, include_pad,
                                       override)
            j = j + 1
        if jhi <= jlo:
            continue
        for j in range(jlo, jhi):
            yr[j] = 0
        for u in range(u0, u1):
            for q in range(kw):
                base = u * W - pw + q + jlo * sw
                if floating is float:
                    fcp_add_f(yr + jlo, x + base, sw, jhi - jlo)
                else:
                    fcp_add_d(yr + jlo, x + base, sw, jhi - jlo)
        # Interior windows of one row share their divisor.
        div = _avg_divisor(i, jlo, H, W, kh, kw, sh, sw, ph, pw, include_pad, override)
        for j in range(jlo, jhi):
            yr[j] = yr[j] / div


def avgpool2d_forward(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
                      floating[:, :, :, ::1] y,        # OUT (N, C, OH, OW)
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t ph, Py_ssize_t pw, bint count_include_pad,
                      Py_ssize_t divisor_override, int n_threads):
    """y[n,c,i,j] = sum of xp[n,c] over the window (i*sh-ph+p, j*sw-pw+q), p < kh, q < kw,
    divided by divisor_override (> 0), else by the number of window positions inside the padded
    input (count_include_pad) or inside the input.

    Parallel over (n, c) planes: each task owns y[n, c].
    """
    if x.shape[0] * x.shape[1] and y.shape[2] * y.shape[3]:
        with nogil:
            _avgpool_forward(&x[0, 0, 0, 0], &y[0, 0, 0, 0], x.shape[0] * x.shape[1],
                             x.shape[2], x.shape[3], y.shape[2], y.shape[3], kh, kw, sh, sw,
                             ph, pw, count_include_pad, divisor_override, n_threads)


cdef void _avgpool_forward(const floating* x, floating* y, Py_ssize_t P, Py_ssize_t H,
                           Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh,
                           Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                           Py_ssize_t pw, bint count_include_pad, Py_ssize_t divisor_override,
                           int n_threads) noexcept nogil:
    """avgpool2d_forward over P consecutive planes (P, OH, OW > 0)."""
    cdef Py_ssize_t plane, G, grp, p0
    cdef floating div = divisor_override if divisor_override > 0 else 4
    if (kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and 2 * OH <= H
            and 2 * OW <= W and H * W <= SMALL_PLANE and 2 * OW <= FCP_CAP_):
        # Small planes, whole 2x2 windows: groups of G planes (G fixed by the shape) per task.
        G = max(1, GROUP_VALUES // (H * W))
        # Race-free: group grp writes only planes [grp*G, grp*G + G) of y.
        for grp in prange((P + G - 1) // G, schedule='static', num_threads=n_threads):
            p0 = grp * G
            if floating is float:
                fpg_avg2_f(x + p0 * H * W, min(G, P - p0), H, W, y + p0 * OH * OW, OH, OW, div)
            else:
                fpg_avg2_d(x + p0 * H * W, min(G, P - p0), H, W, y + p0 * OH * OW, OH, OW, div)
        return
    # Race-free: plane p writes only its plane of y.
    for plane in prange(P, schedule='static', num_threads=n_threads):
        _avg_plane(x + plane * H * W, y + plane * OH * OW, H, W, OH, OW, kh, kw, sh, sw, ph,
                   pw, count_include_pad, divisor_override)


cdef struct _PlanesLink:  # a kernel over P planes H x W -> OH x OW (chain link state)
    char* y
    Py_ssize_t P, H, W, OH, OW
    bint dbl
    int n_threads


cdef struct _AvgLink:
    _PlanesLink p  # first: the state _planes fills, at the struct's own address
    Py_ssize_t kh, kw, sh, sw, ph, pw, divisor_override
    bint count_include_pad


cdef void _link_avg(void* state, const char* x) noexcept nogil:
    cdef _AvgLink* s = <_AvgLink*> state
    if s.p.dbl:
        _avgpool_forward(<const double*> x, <double*> s.p.y, s.p.P, s.p.H, s.p.W, s.p.OH,
                         s.p.OW, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, s.count_include_pad,
                         s.divisor_override, s.p.n_threads)
    else:
        _avgpool_forward(<const float*> x, <float*> s.p.y, s.p.P, s.p.H, s.p.W, s.p.OH,
                         s.p.OW, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, s.count_include_pad,
                         s.divisor_override, s.p.n_threads)


cdef class _BoundPoolCall:
    """A pooling kernel with its output and window fixed: ``bound(x)`` for x (N, C, H, W)
    C-contiguous of the output's dtype (_bound.pxi), and the same call as a chain ``link()``
    (see ``conv.Chain``). A subclass fills ``link_``: the kernel's link function, its state (a
    struct inside the subclass), the bytes it reads and the output it writes."""

    cdef object keep
    cdef _Link link_
    cdef bint dbl

    cdef char* _fix(self, _link_fn fn, void* state, x_shape, y) except NULL:
        """Fix the output y (kept alive) and the link: fn on state, reading x (x_shape)."""
        self.dbl, self.keep = y.dtype.itemsize == 8, y
        self.link_.out = _bound_data(y, y.nbytes, self.dbl, True)
        self.link_.fn, self.link_.state, self.link_.out_bytes = fn, state, y.nbytes
        self.link_.x_bytes = x_shape[0] * x_shape[1] * x_shape[2] * x_shape[3] * y.dtype.itemsize
        return self.link_.out

    def link(self):
        """This call as a chain link (a capsule)."""
        return _link_capsule(&self.link_)

    def __call__(self, x):
        cdef const char* xp = _bound_data(x, self.link_.x_bytes, self.dbl, False)
        with nogil:
            self.link_.fn(self.link_.state, xp)


cdef int _planes(_BoundPoolCall call, _PlanesLink* s, _link_fn fn, x_shape, y,
                 int n_threads, what) except -1:
    """Fill a plane kernel's bound call: x (N, C, H, W) to y (N, C, OH, OW), all non-empty
    (else ValueError naming `what`)."""
    N, C, s.H, s.W = x_shape
    s.P, s.OH, s.OW = N * C, y.shape[2], y.shape[3]
    if tuple(y.shape[:2]) != (N, C) or min(s.P, s.H, s.W, s.OH, s.OW) < 1:
        raise ValueError(f"{what} does not take x {tuple(x_shape)} to y {y.shape}")
    s.y = call._fix(fn, s, x_shape, y)
    s.dbl, s.n_threads = call.dbl, n_threads
    return 0


cdef class BoundAvgPool(_BoundPoolCall):
    """``avgpool2d_forward`` with y and the window fixed."""

    cdef _AvgLink s

    def __init__(self, x_shape, y, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                 Py_ssize_t ph, Py_ssize_t pw, bint count_include_pad,
                 Py_ssize_t divisor_override, int n_threads):
        self.s.kh, self.s.kw, self.s.sh, self.s.sw, self.s.ph, self.s.pw = kh, kw, sh, sw, ph, pw
        self.s.count_include_pad, self.s.divisor_override = count_include_pad, divisor_override
        _planes(self, &self.s.p, _link_avg, x_shape, y, n_threads, "a bound average pool")


cdef inline void _avg_back_plane(const floating* g, floating* dx, floating* gs, Py_ssize_t H,
                                 Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh,
                                 Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                                 Py_ssize_t pw, bint include_pad,
                                 Py_ssize_t override) noexcept nogil:
    """dx[u, v] = sum over the windows (i, j) holding (u, v), in row-major order of (i, j), of
    g[i, j] / divisor(i, j). gs is scratch of OH*OW.

    Each input row u gathers from the window rows i that cover it; within a row, tap q runs
    from kw-1 down so that the windows j reaching one pixel come in increasing order.
    """
    cdef Py_ssize_t i, j, u, q, ia, ib, jlo, jhi, base, v
    cdef floating* dr
    cdef const floating* gr
    cdef floating div
    if (kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0
            and 2 * OH <= H and 2 * OW <= W):
        # Windows tile the plane without overlap: each pixel gets 0 + g / div of its window.
        div = override if override > 0 else 4
        if floating is float:
            fcp_avg2_back_f(g, dx, H, W, OH, OW, div)
        else:
            fcp_avg2_back_d(g, dx, H, W, OH, OW, div)
        return
    for i in range(OH):
        for j in range(OW):
            gs[i * OW + j] = g[i * OW + j] / _avg_divisor(i, j, H, W, kh, kw, sh, sw, ph, pw,
                                                          include_pad, override)
    _interior(W, OW, kw, sw, pw, 1, &jlo, &jhi)
    for u in range(H):
        dr = dx + u * W
        memset(dr, 0, W * sizeof(floating))
        # Windows i with i*sh - ph <= u < i*sh - ph + kh.
        ia = u + ph - kh + 1
        ia = 0 if ia <= 0 else (ia + sh - 1) // sh
        ib = min((u + ph) // sh + 1, OH)
        for i in range(ia, ib):
            gr = gs + i * OW
            q = kw - 1
            while q >= 0:
                base = q - pw
                for j in range(jlo):
                    v = base + j * sw
                    if 0 <= v < W:
                        dr[v] = dr[v] + gr[j]
                if jhi > jlo:
                    if floating is float:
                        fcp_scatter_f(dr + base + jlo * sw, gr + jlo, sw, jhi - jlo)
                    else:
                        fcp_scatter_d(dr + base + jlo * sw, gr + jlo, sw, jhi - jlo)
                for j in range(jhi, OW):
                    v = base + j * sw
                    if 0 <= v < W:
                        dr[v] = dr[v] + gr[j]
                q = q - 1


def avgpool2d_backward(const floating[:, :, :, ::1] dy,  # IN  (N, C, OH, OW)
                       floating[:, :, :, ::1] dx,        # OUT (N, C, H, W)
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t ph, Py_ssize_t pw, bint count_include_pad,
                       Py_ssize_t divisor_override, int n_threads,
                       floating[::1] scratch):  # WORK n_threads * (OH * OW + 1) elements
    """dx[n,c,u,v] = sum over the windows (i, j) that hold (u, v) of dy[n,c,i,j] / divisor(i, j)
    (each gradient spread evenly over its window, as avgpool2d_forward's divisor).

    Parallel over (n, c) planes: each task owns dx[n, c] (and one thread's part of the
    scratch, owned by the caller so that no call allocates).
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t plane, G, grp, p0, per = OH * OW + 1
    cdef floating* gs
    cdef floating div = divisor_override if divisor_override > 0 else 4
    if N * C == 0:
        return
    if (kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and 2 * OH <= H
            and 2 * OW <= W and 0 < OH and 0 < OW and H * W <= SMALL_PLANE):
        # Small planes, whole 2x2 windows: groups of G planes (no scratch, no per-plane index
        # division), each plane as _avg_back_plane's 2x2 case writes it.
        G = max(1, GROUP_VALUES // (H * W))
        # Race-free: group grp writes only planes [grp*G, grp*G + G) of dx.
        for grp in prange((N * C + G - 1) // G, nogil=True, schedule='static',
                          num_threads=n_threads):
            p0 = grp * G
            if floating is float:
                fcp_avg2_back_group_f(&dy[0, 0, 0, 0] + p0 * OH * OW,
                                      &dx[0, 0, 0, 0] + p0 * H * W, min(G, N * C - p0), H, W,
                                      OH, OW, div)
            else:
                fcp_avg2_back_group_d(&dy[0, 0, 0, 0] + p0 * OH * OW,
                                      &dx[0, 0, 0, 0] + p0 * H * W, min(G, N * C - p0), H, W,
                                      OH, OW, div)
        return
    if scratch.shape[0] < n_threads * per:
        raise ValueError(f"avgpool2d_backward needs {n_threads * per} elements of scratch, got "
                         f"{scratch.shape[0]}")
    with nogil, parallel(num_threads=n_threads):
        gs = &scratch[0] + threadid() * per
        # Race-free: plane (n, c) writes only dx[n, c]; gs is per thread.
        for plane in prange(N * C, schedule='static'):
            _avg_back_plane(&dy[plane // C, plane % C, 0, 0], &dx[plane // C, plane % C, 0, 0],
                            gs, H, W, OH, OW, kh, kw, sh, sw, ph, pw, count_include_pad,
                            divisor_override)


# ---------------------------------------------------------------------------------------------
# Adaptive average pooling
# ---------------------------------------------------------------------------------------------

# Global average pooling of float32 planes, 8 planes a step (GCC/Clang vector extensions). A
# plane's sum keeps _plane_sum's order exactly: lane i of one vector accumulator is its partial
# sum i (elements k = i mod 8 in increasing k), the last n % 8 elements go to lanes 0.. (other
# lanes keep their value: a blend, not an added zero, so even -0 and NaN payloads are kept), and
# the lanes are added ((0+4) + (1+5)) + ((2+6) + (3+7)). The 8 plane sums are then divided by
# H and by W as one vector (the same IEEE divisions as the scalar s / H / W). Before this the
# per-plane cost (an integer division for the plane's (n, c), two int-to-float conversions and
# two scalar divisions) made the 7x7 case 2.3-3.3x the time of a copy.
cdef extern from *:
    """
    #include <string.h>
    typedef float gp_vf __attribute__((vector_size(32)));
    typedef int32_t gp_vi __attribute__((vector_size(32)));
    static inline float gp_plane_sum(const float *x, ptrdiff_t n) {
        const gp_vi iota = {0, 1, 2, 3, 4, 5, 6, 7};
        gp_vf acc = {0}, t = {0};
        ptrdiff_t k = 0;
        for (; k + 8 <= n; k += 8) { gp_vf v; memcpy(&v, x + k, 32); acc += v; }
        if (k < n) {
            gp_vi m = iota < (int32_t)(n - k);
            gp_vf r;
            ptrdiff_t rem = n - k;  /* 1..7; lane by lane (a loop here became a memcpy call) */
            t[0] = x[k];
            if (rem > 1) t[1] = x[k + 1];
            if (rem > 2) t[2] = x[k + 2];
            if (rem > 3) t[3] = x[k + 3];
            if (rem > 4) t[4] = x[k + 4];
            if (rem > 5) t[5] = x[k + 5];
            if (rem > 6) t[6] = x[k + 6];
            r = acc + t;
            acc = (gp_vf)(((gp_vi)r & m) | ((gp_vi)acc & ~m));
        }
        return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    }
    /* y[p] = sum(x[p*n : (p+1)*n]) / H / W for planes p < P */
    static void gp_gap_f(const float *x, float *y, ptrdiff_t P, ptrdiff_t n, float H, float W) {
        ptrdiff_t p = 0;
        for (; p + 8 <= P; p += 8) {
            gp_vf s;
            for (int i = 0; i < 8; i++) s[i] = gp_plane_sum(x + (p + i) * n, n);
            s = s / H / W;
            memcpy(y + p, &s, 32);
        }
        for (; p < P; p++) y[p] = gp_plane_sum(x + p * n, n) / H / W;
    }
    /* dx[p*n : (p+1)*n] = g[p] / H / W for planes p < P */
    static void gp_gap_back_f(const float *g, float *dx, ptrdiff_t P, ptrdiff_t n, float H,
                              float W) {
        ptrdiff_t p = 0;
        for (; p < P; p += 8) {
            gp_vf d = {0};
            int m = P - p < 8 ? (int)(P - p) : 8;
            for (int i = 0; i < m; i++) d[i] = g[p + i];
            d = d / H / W;
            for (int i = 0; i < m; i++) {
                float v = d[i];
                float *o = dx + (p + i) * n;
                for (ptrdiff_t k = 0; k < n; k++) o[k] = v;
            }
        }
    }
    """
    void gp_gap_f(const float* x, float* y, Py_ssize_t P, Py_ssize_t n, float H,
                  float W) noexcept nogil
    void gp_gap_back_f(const float* g, float* dx, Py_ssize_t P, Py_ssize_t n, float H,
                       float W) noexcept nogil


cdef inline Py_ssize_t _start(Py_ssize_t i, Py_ssize_t size, Py_ssize_t out) noexcept nogil:
    """First input index of adaptive window i: floor(i * size / out)."""
    return (i * size) // out


cdef inline Py_ssize_t _end(Py_ssize_t i, Py_ssize_t size, Py_ssize_t out) noexcept nogil:
    """One past the last input index of adaptive window i: ceil((i + 1) * size / out)."""
    return ((i + 1) * size + out - 1) // out


cdef inline floating _plane_sum(const floating* x, Py_ssize_t n) noexcept nogil:
    """Sum of n contiguous values in 8 interleaved partial sums (element k goes to sum k % 8),
    added pairwise at the end: vectorisable, and the order depends on n alone."""
    cdef floating s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0
    cdef Py_ssize_t k = 0
    while k + 8 <= n:
        s0 = s0 + x[k]
        s1 = s1 + x[k + 1]
        s2 = s2 + x[k + 2]
        s3 = s3 + x[k + 3]
        s4 = s4 + x[k + 4]
        s5 = s5 + x[k + 5]
        s6 = s6 + x[k + 6]
        s7 = s7 + x[k + 7]
        k = k + 8
    if k < n:
        s0 = s0 + x[k]
    if k + 1 < n:
        s1 = s1 + x[k + 1]
    if k + 2 < n:
        s2 = s2 + x[k + 2]
    if k + 3 < n:
        s3 = s3 + x[k + 3]
    if k + 4 < n:
        s4 = s4 + x[k + 4]
    if k + 5 < n:
        s5 = s5 + x[k + 5]
    if k + 6 < n:
        s6 = s6 + x[k + 6]
    return ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7))


cdef inline void _adaptive_plane(const floating* x, floating* y, Py_ssize_t H, Py_ssize_t W,
                                 Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """y[i, j] = (sum of the window, row-major) / kh / kw; a (1, 1) output sums the plane in
    eight interleaved partial sums instead (global average pooling)."""
    cdef Py_ssize_t i, j, u, v, u0, u1, v0, v1
    cdef floating acc
    if OH == 1 and OW == 1:
        y[0] = _plane_sum(x, H * W) / H / W
        return
    for i in range(OH):
        u0 = _start(i, H, OH)
        u1 = _end(i, H, OH)
        for j in range(OW):
            v0 = _start(j, W, OW)
            v1 = _end(j, W, OW)
            acc = 0
            for u in range(u0, u1):
                for v in range(v0, v1):
                    acc = acc + x[u * W + v]
            y[i * OW + j] = acc / (u1 - u0) / (v1 - v0)


def adaptive_avgpool2d_forward(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
                               floating[:, :, :, ::1] y,        # OUT (N, C, OH, OW)
                               int n_threads):
    """y[n,c,i,j] = mean of x[n,c, u0:u1, v0:v1] with u0 = floor(i*H/OH),
    u1 = ceil((i+1)*H/OH) (the same for v over W, OW); divided as sum / (u1-u0) / (v1-v0).

    Parallel over (n, c) planes: each task owns y[n, c].
    """
    if x.shape[0] * x.shape[1] and x.shape[2] * x.shape[3] and y.shape[2] * y.shape[3]:
        with nogil:
            _adaptive_forward(&x[0, 0, 0, 0], &y[0, 0, 0, 0], x.shape[0] * x.shape[1],
                              x.shape[2], x.shape[3], y.shape[2], y.shape[3], n_threads)


cdef void _adaptive_forward(const floating* x, floating* y, Py_ssize_t P, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                            int n_threads) noexcept nogil:
    """adaptive_avgpool2d_forward over P consecutive planes (P, H*W, OH*OW > 0)."""
    cdef Py_ssize_t plane, grp, p0
    if floating is float:
        if OH == 1 and OW == 1:
            # Race-free: group grp writes only y's planes [grp*GAP_GROUP, +GAP_GROUP).
            for grp in prange((P + GAP_GROUP - 1) // GAP_GROUP, schedule='static',
                              num_threads=n_threads):
                p0 = grp * GAP_GROUP
                gp_gap_f(x + p0 * H * W, y + p0, min(<Py_ssize_t> GAP_GROUP, P - p0), H * W,
                         <float> H, <float> W)
            return
    # Race-free: plane p writes only its plane of y.
    for plane in prange(P, schedule='static', num_threads=n_threads):
        _adaptive_plane(x + plane * H * W, y + plane * OH * OW, H, W, OH, OW)


cdef void _link_adaptive(void* state, const char* x) noexcept nogil:
    cdef _PlanesLink* s = <_PlanesLink*> state
    if s.dbl:
        _adaptive_forward(<const double*> x, <double*> s.y, s.P, s.H, s.W, s.OH, s.OW,
                          s.n_threads)
    else:
        _adaptive_forward(<const float*> x, <float*> s.y, s.P, s.H, s.W, s.OH, s.OW,
                          s.n_threads)


cdef class BoundAdaptiveAvgPool(_BoundPoolCall):
    """``adaptive_avgpool2d_forward`` with y fixed."""

    cdef _PlanesLink s

    def __init__(self, x_shape, y, int n_threads):
        _planes(self, &self.s, _link_adaptive, x_shape, y, n_threads,
                "a bound adaptive average pool")


cdef inline void _adaptive_back_plane(const floating* g, floating* dx, Py_ssize_t H,
                                      Py_ssize_t W, Py_ssize_t OH,
                                      Py_ssize_t OW) noexcept nogil:
    """dx = 0, then each g[i, j] / kh / kw is added to its window, windows in row-major order
    (the plane is the thread's own)."""
    cdef Py_ssize_t i, j, u, v, u0, u1, v0, v1
    cdef floating delta
    if OH == 1 and OW == 1:
        delta = g[0] / H / W
        for u in range(H * W):
            dx[u] = delta
        return
    memset(dx, 0, H * W * sizeof(floating))
    for i in range(OH):
        u0 = _start(i, H, OH)
        u1 = _end(i, H, OH)
        for j in range(OW):
            v0 = _start(j, W, OW)
            v1 = _end(j, W, OW)
            delta = g[i * OW + j] / (u1 - u0) / (v1 - v0)
            for u in range(u0, u1):
                for v in range(v0, v1):
                    dx[u * W + v] = dx[u * W + v] + delta


def adaptive_avgpool2d_backward(const floating[:, :, :, ::1] dy,  # IN  (N, C, OH, OW)
                                floating[:, :, :, ::1] dx,        # OUT (N, C, H, W)
                                int n_threads):
    """dx[n,c,u,v] = sum over the adaptive windows (i, j) holding (u, v) of
    dy[n,c,i,j] / (u1-u0) / (v1-v0).

    Parallel over (n, c) planes: each task owns dx[n, c].
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t plane, grp, P = N * C, p0
    if floating is float:
        if OH == 1 and OW == 1 and P > 0 and H * W > 0:
            # Race-free: group grp writes only dx's planes [grp*GAP_GROUP, +GAP_GROUP).
            for grp in prange((P + GAP_GROUP - 1) // GAP_GROUP, nogil=True, schedule='static',
                              num_threads=n_threads):
                p0 = grp * GAP_GROUP
                gp_gap_back_f(&dy[0, 0, 0, 0] + p0, &dx[0, 0, 0, 0] + p0 * H * W,
                              min(<Py_ssize_t> GAP_GROUP, P - p0), H * W, <float> H, <float> W)
            return
    # Race-free: plane (n, c) writes only dx[n, c].
    for plane in prange(N * C, nogil=True, schedule='static', num_threads=n_threads):
        _adaptive_back_plane(&dy[plane // C, plane % C, 0, 0], &dx[plane // C, plane % C, 0, 0],
                             H, W, OH, OW)


cdef void _link_max2(void* state, const char* x) noexcept nogil:
    cdef _PlanesLink* s = <_PlanesLink*> state
    if s.dbl:
        _max2_groups(<const double*> x, <double*> s.y, NULL, s.P, s.H, s.W, s.OH, s.OW,
                     s.n_threads)
    else:
        _max2_groups(<const float*> x, <float*> s.y, NULL, s.P, s.H, s.W, s.OH, s.OW,
                     s.n_threads)


cdef class BoundMaxPool2Values(_BoundPoolCall):
    """``maxpool2_values`` with y fixed. Made only for shapes that ``maxpool2_values`` takes
    (else ValueError)."""

    cdef _PlanesLink s

    def __init__(self, x_shape, y, int n_threads):
        _planes(self, &self.s, _link_max2, x_shape, y, n_threads, "maxpool2_values")
        if (2 * self.s.OH > self.s.H or 2 * self.s.OW > self.s.W or 2 * self.s.OW > FPP_CAP
                or self.s.H * self.s.W >= 2147483647):
            raise ValueError(f"maxpool2_values does not take x {tuple(x_shape)} to y {y.shape}")
