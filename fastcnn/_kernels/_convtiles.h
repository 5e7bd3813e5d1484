/* Register tiles of the general convolution kernels (conv.pyx), GCC/Clang vector extensions.
 *
 * Two tile shapes cover forward, input gradient and weight gradient:
 *
 * fc_gtile{MR}x{NV}: MR output channels x NV vectors of output positions,
 *
 *     c[o*ldc + u] = sum_{k<K} a[k*MR + o] * b[off[k] + u]        o < MR, u < NV*NL
 *
 *   ``a`` is a packed weight panel (MR values per k), ``b`` an input plane set read through a
 *   table of row offsets (one per tap k = (channel, kernel row, kernel column)); each a value
 *   is broadcast against NV input vectors. Sums run k = 0, 1, ... in order.
 *
 * fc_wtile{MR}x{NV}: MR taps x NV vectors of filters, for the weight gradient,
 *
 *     c[o*ldc + v*NL + l] = sum_{n<N} sum_{i<OH} sum_{j<OW}
 *                           x[n*x_img + xoff[o] + i*xrow + j*xcol]
 *                           * g[n*g_img + (i*OW + j)*ldg + v*NL + l]
 *
 *   with g the output gradient laid out (N, OH*OW, F) (filters contiguous). Every product is a
 *   real (input, output-gradient) pair: no padding column of a wide row is ever read. Sums run
 *   n, i, j in order, so the result depends on the shapes only.
 *
 * NL = lanes per vector (8 float / 4 double with 32-byte vectors, twice that with AVX-512).
 */
#ifndef FASTCNN_CONVTILES_H
#define FASTCNN_CONVTILES_H

#include <stddef.h>
#include <string.h>

#if defined(__AVX512F__)
#define FC_VB 64
#else
#define FC_VB 32
#endif

typedef float fc_gvf __attribute__((vector_size(FC_VB)));
typedef double fc_gvd __attribute__((vector_size(FC_VB)));
typedef int fc_gvfi __attribute__((vector_size(FC_VB)));        /* lanes of fc_gvf as integers */
typedef long long fc_gvdi __attribute__((vector_size(FC_VB)));  /* lanes of fc_gvd as integers */
#define FC_NL_F (FC_VB / 4)
#define FC_NL_D (FC_VB / 8)

static inline fc_gvf fc_gload_f(const float *p) { fc_gvf v; memcpy(&v, p, sizeof v); return v; }
static inline fc_gvd fc_gload_d(const double *p) { fc_gvd v; memcpy(&v, p, sizeof v); return v; }
static inline void fc_gstore_f(float *p, fc_gvf v) { memcpy(p, &v, sizeof v); }
static inline void fc_gstore_d(double *p, fc_gvd v) { memcpy(p, &v, sizeof v); }

#define FC_DEFINE_GTILE(MR, NV, SUF, T, V, LOAD, STORE, NL)                                     \
static inline void fc_gtile##MR##x##NV##_##SUF(const T *a, const T *b, const ptrdiff_t *off,     \
                                               ptrdiff_t K, T *c, ptrdiff_t ldc)                 \
{                                                                                                \
    V acc[MR][NV];                                                                               \
    for (int o = 0; o < MR; o++)                                                                 \
        for (int v = 0; v < NV; v++) acc[o][v] = (V){0};                                         \
    for (ptrdiff_t k = 0; k < K; k++) {                                                          \
        const T *bk = b + off[k];                                                                \
        const T *ak = a + k * MR;                                                                \
        V xv[NV];                                                                                \
        for (int v = 0; v < NV; v++) xv[v] = LOAD(bk + v * NL);                                  \
        for (int o = 0; o < MR; o++) {                                                           \
            T s = ak[o];                                                                         \
            for (int v = 0; v < NV; v++) acc[o][v] += s * xv[v];                                 \
        }                                                                                        \
    }                                                                                            \
    for (int o = 0; o < MR; o++)                                                                 \
        for (int v = 0; v < NV; v++) STORE(c + o * ldc + v * NL, acc[o][v]);                     \
}

#define FC_DEFINE_WTILE(MR, NV, SUF, T, V, LOAD, STORE, NL)                                     \
static inline void fc_wtile##MR##x##NV##_##SUF(const T *x, ptrdiff_t x_img, const ptrdiff_t *xoff, \
                                               ptrdiff_t xrow, ptrdiff_t xcol, const T *g,       \
                                               ptrdiff_t g_img, ptrdiff_t ldg, ptrdiff_t N,      \
                                               ptrdiff_t OH,                                     \
                                               ptrdiff_t OW, T *c, ptrdiff_t ldc)                \
{                                                                                                \
    V acc[MR][NV];                                                                               \
    for (int o = 0; o < MR; o++)                                                                 \
        for (int v = 0; v < NV; v++) acc[o][v] = (V){0};                                         \
    for (ptrdiff_t n = 0; n < N; n++) {                                                          \
        const T *xn = x + n * x_img;                                                             \
        const T *gn = g + n * g_img;                                                             \
        for (ptrdiff_t i = 0; i < OH; i++) {                                                     \
            const T *xr[MR];                                                                     \
            for (int o = 0; o < MR; o++) xr[o] = xn + xoff[o] + i * xrow;                        \
            const T *gr = gn + i * OW * ldg;                                                     \
            for (ptrdiff_t j = 0; j < OW; j++) {                                                 \
                V gv[NV];                                                                        \
                for (int v = 0; v < NV; v++) gv[v] = LOAD(gr + j * ldg + v * NL);                \
                for (int o = 0; o < MR; o++) {                                                   \
                    T s = xr[o][j * xcol];                                                       \
                    for (int v = 0; v < NV; v++) acc[o][v] += s * gv[v];                         \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    for (int o = 0; o < MR; o++)                                                                 \
        for (int v = 0; v < NV; v++) STORE(c + o * ldc + v * NL, acc[o][v]);                     \
}

/* fc_flanes{NP}x{NV}: NP output positions x NV vectors of filters (forward with the filters on
 * the vector lanes: each input value is broadcast against vectors of packed weights), written
 * straight into the output planes with bias and optional ReLU:
 *
 *     s[u][l] = sum_{k<K} x[pos[u] + off[k]] * w[k*NV*NL + l]       (k = 0, 1, ... in order)
 *     out_u[l*plane] = relu?(s[u][l] + bias[l])                     l < nf
 *
 * ``pos`` holds each position's offset in the input planes: any NP positions, of one image or
 * of two (no padding column, stride gap or partial last tile of an image is ever computed).
 * Their outputs (filter 0 of the block) are out_u = y + u (NP consecutive outputs of a plane,
 * ``yp`` NULL), or out_u = yp[u] for u0 <= u < NP (the others are not stored). A long sum may
 * run in chunks of taps (the caller offsets ``off`` and ``w``): ``first`` starts from 0, else
 * from the running sums a previous chunk left in ``part`` (NP x NV vectors); without ``last``
 * the running sums go back to ``part`` and nothing else is done. Storing a float sum and
 * loading it again changes nothing, so a chunked sum is bitwise the one-pass sum. Each tap
 * prefetches the next cache line of its plane after the last position: with many input planes
 * (1x1 kernels, input gradients) the hardware prefetchers cannot follow that many streams
 * (measured 1.3-1.9x on 1x1 shapes, neutral on 3x3); a prefetch never faults, so reading past
 * a plane there is harmless. With ``pf_y`` the output lines two past the tile's are prefetched
 * before the sum (worth it for long sums only: without it 1.04-1.08x the time on 32->64 @14,
 * batch 64; with it 1.1x on 1->32 @28, 9 taps). The bias is added (and ReLU applied, NaN kept:
 * v < 0 ? 0 : v) on whole vectors; the transposed store then runs filter by filter over
 * consecutive outputs, else position by position. */
/* fc_tstore_{f,d}(NP, NV, r, y, plane): y[(v*NL + l)*plane + u] = r[u*NV + v][l] for u < NP,
 * by in-register transposes where the build has them (float, NP = 6: each run of 8 filter
 * lanes, one YMM register or one half of a ZMM register, as a 6x8 transpose); returns 0 when
 * it did nothing (the caller then stores element by element). Without it the AVX-512 build
 * stored a tile through the stack element by element: 1.8-2x the time of the AVX2 build on
 * short sums (1->16 and 1->32 3x3 at 28x28, batch 64). */
#if defined(__AVX__) && (FC_VB == 32 || FC_VB == 64)
#include <immintrin.h>
/* y[l*plane + u] = a_u[l] for u < 6, l < 8 */
static inline __attribute__((always_inline)) void
fc_tstore6x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, float *y,
             ptrdiff_t plane)
{
    __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
    __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
    __m256 f04 = _mm256_shuffle_ps(t0, t2, 0x44), f15 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 f26 = _mm256_shuffle_ps(t1, t3, 0x44), f37 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 g0 = _mm256_unpacklo_ps(a4, a5), g1 = _mm256_unpackhi_ps(a4, a5);
    _mm_storeu_ps(y + 0 * plane, _mm256_castps256_ps128(f04));
    _mm_storeu_ps(y + 4 * plane, _mm256_extractf128_ps(f04, 1));
    _mm_storeu_ps(y + 1 * plane, _mm256_castps256_ps128(f15));
    _mm_storeu_ps(y + 5 * plane, _mm256_extractf128_ps(f15, 1));
    _mm_storeu_ps(y + 2 * plane, _mm256_castps256_ps128(f26));
    _mm_storeu_ps(y + 6 * plane, _mm256_extractf128_ps(f26, 1));
    _mm_storeu_ps(y + 3 * plane, _mm256_castps256_ps128(f37));
    _mm_storeu_ps(y + 7 * plane, _mm256_extractf128_ps(f37, 1));
    __m128 g0l = _mm256_castps256_ps128(g0), g0h = _mm256_extractf128_ps(g0, 1);
    __m128 g1l = _mm256_castps256_ps128(g1), g1h = _mm256_extractf128_ps(g1, 1);
    _mm_storel_pi((__m64 *)(y + 0 * plane + 4), g0l);
    _mm_storeh_pi((__m64 *)(y + 1 * plane + 4), g0l);
    _mm_storel_pi((__m64 *)(y + 4 * plane + 4), g0h);
    _mm_storeh_pi((__m64 *)(y + 5 * plane + 4), g0h);
    _mm_storel_pi((__m64 *)(y + 2 * plane + 4), g1l);
    _mm_storeh_pi((__m64 *)(y + 3 * plane + 4), g1l);
    _mm_storel_pi((__m64 *)(y + 6 * plane + 4), g1h);
    _mm_storeh_pi((__m64 *)(y + 7 * plane + 4), g1h);
}

/* lanes 8e .. 8e+7 of r as one YMM register */
#if FC_VB == 64
#define FC_RUN8(r, e)                                                                         \
    ((e) ? _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd((__m512)(r)), 1))           \
         : _mm512_castps512_ps256((__m512)(r)))
#else
#define FC_RUN8(r, e) ((__m256)(r))
#endif

static inline int fc_tstore_f(int np, int nv, const fc_gvf *r, float *y, ptrdiff_t plane)
{
    if (np != 6) return 0;
    for (int v = 0; v < nv; v++)
        for (int e = 0; e < FC_VB / 32; e++, y += 8 * plane)
            fc_tstore6x8(FC_RUN8(r[0 * nv + v], e), FC_RUN8(r[1 * nv + v], e),
                         FC_RUN8(r[2 * nv + v], e), FC_RUN8(r[3 * nv + v], e),
                         FC_RUN8(r[4 * nv + v], e), FC_RUN8(r[5 * nv + v], e), y, plane);
    return 1;
}
#else
static inline int fc_tstore_f(int np, int nv, const fc_gvf *r, float *y, ptrdiff_t plane)
{
    (void)np; (void)nv; (void)r; (void)y; (void)plane;
    return 0;
}
#endif
static inline int fc_tstore_d(int np, int nv, const fc_gvd *r, double *y, ptrdiff_t plane)
{
    (void)np; (void)nv; (void)r; (void)y; (void)plane;
    return 0;
}

/* The starting sums of a tile of up to 6 x 2 vectors. */
static const float fc_zeros_f[12 * FC_NL_F];
static const double fc_zeros_d[12 * FC_NL_D];

#define FC_DEFINE_FLANES(NP, NV, SUF, T, V, LOAD, STORE, NL, VI)                                \
static inline void fc_flanes##NP##x##NV##_##SUF(const T *x, const ptrdiff_t *pos,                \
                                                const ptrdiff_t *off, ptrdiff_t K, const T *w,   \
                                                const T *bias, int relu, ptrdiff_t u0,           \
                                                ptrdiff_t nf, T *y, T *const *yp,                \
                                                ptrdiff_t plane, T *part, int first, int last,   \
                                                int pf_y)                                        \
{                                                                                                \
    V acc[NP][NV];                                                                               \
    const T *xp[NP];                                                                             \
    T *yl = yp ? yp[NP - 1] : y + NP - 1;                                                        \
    for (int u = 0; u < NP; u++) xp[u] = x + pos[u];                                             \
    for (ptrdiff_t l = 0; last && pf_y && l < nf; l++)                                          \
        __builtin_prefetch(yl + l * plane + 128 / sizeof(T), 1);                                 \
    /* (zeros loaded, not assigned: GCC turned the assignment into a rep stos into a stack  \
     * copy of acc) */                                                                           \
    const T *init = first ? fc_zeros_##SUF : part;                                               \
    for (int u = 0; u < NP; u++)                                                                 \
        for (int v = 0; v < NV; v++) acc[u][v] = LOAD(init + (u * NV + v) * NL);                 \
    for (ptrdiff_t k = 0; k < K; k++) {                                                          \
        const ptrdiff_t o = off[k];                                                              \
        const T *wk = w + k * NV * NL;                                                           \
        __builtin_prefetch(xp[NP - 1] + o + 64 / sizeof(T));                                     \
        V wv[NV];                                                                                \
        for (int v = 0; v < NV; v++) wv[v] = LOAD(wk + v * NL);                                  \
        for (int u = 0; u < NP; u++) {                                                           \
            T s = xp[u][o];                                                                      \
            for (int v = 0; v < NV; v++) acc[u][v] += s * wv[v];                                 \
        }                                                                                        \
    }                                                                                            \
    if (!last) {                                                                                 \
        for (int u = 0; u < NP; u++)                                                             \
            for (int v = 0; v < NV; v++) STORE(part + (u * NV + v) * NL, acc[u][v]);             \
        return;                                                                                  \
    }                                                                                            \
    T ct[NP][NV * NL];                                                                           \
    V bv[NV];                                                                                    \
    for (int v = 0; v < NV; v++) bv[v] = LOAD(bias + v * NL);                                    \
    for (int u = 0; u < NP; u++)                                                                 \
        for (int v = 0; v < NV; v++) {                                                           \
            V r = acc[u][v] + bv[v];                                                             \
            if (relu) r = (V)((VI)r & ~(VI)(r < (V){0}));                                        \
            acc[u][v] = r;                                                                       \
        }                                                                                        \
    if (!yp && nf == NV * NL && fc_tstore_##SUF(NP, NV, &acc[0][0], y, plane)) return;           \
    for (int u = 0; u < NP; u++)                                                                 \
        for (int v = 0; v < NV; v++) STORE(&ct[u][v * NL], acc[u][v]);                          \
    if (!yp) {                                                                                   \
        for (ptrdiff_t l = 0; l < nf; l++)                                                       \
            for (int u = 0; u < NP; u++) y[l * plane + u] = ct[u][l];                            \
        return;                                                                                  \
    }                                                                                            \
    for (int u = (int)u0; u < NP; u++)                                                           \
        for (ptrdiff_t l = 0; l < nf; l++) yp[u][l * plane] = ct[u][l];                          \
}

/* fc_rtile{MF}x{MK}: MF filters x MK taps with the output positions on the vector lanes, for the
 * weight gradient over "wide rows" (positions t = i*WPh + j of a phase plane; the output gradient
 * holds zeros at the columns j >= OW),
 *
 *     c[a*ldc + b] = sum_{n<N} sum_{t<P} g[n*g_img + goff[a] + t] * x[n*x_img + xoff[b] + t]
 *
 *   Lane l of a vector accumulator sums t = l (mod NL), n then t in order. The last partial
 *   vector of a row (P % NL positions) is loaded whole and both operands are masked to 0 past
 *   P, so the extra lanes add 0 * 0 whatever memory holds there (it must be readable: up to
 *   NL - 1 elements past each row); with last_exact, the last image's trailing positions are
 *   instead read one by one into a scalar sum (no read past P: the end of the caller's array).
 *   Then c = ((lane 0 + lane 1) + ...) + scalar. */
#define FC_DEFINE_RTILE(MF, MK, SUF, T, V, VI, LOAD, STORE, NL)                                 \
static inline void fc_rtile##MF##x##MK##_##SUF(const T *g, ptrdiff_t g_img, const ptrdiff_t *goff, \
                                               const T *x, ptrdiff_t x_img,                     \
                                               const ptrdiff_t *xoff, ptrdiff_t N, ptrdiff_t P, \
                                               int last_exact, T *c, ptrdiff_t ldc)             \
{                                                                                                \
    V acc[MF][MK];                                                                               \
    T sacc[MF][MK];                                                                              \
    ptrdiff_t PV = P - P % NL;                                                                   \
    VI mask;                                                                                     \
    for (int l = 0; l < NL; l++) mask[l] = l < P % NL ? -1 : 0;                                  \
    for (int a = 0; a < MF; a++)                                                                 \
        for (int b = 0; b < MK; b++) { acc[a][b] = (V){0}; sacc[a][b] = 0; }                     \
    for (ptrdiff_t n = 0; n < N; n++) {                                                          \
        const T *gr[MF], *xr[MK];                                                                \
        for (int a = 0; a < MF; a++) gr[a] = g + n * g_img + goff[a];                            \
        for (int b = 0; b < MK; b++) xr[b] = x + n * x_img + xoff[b];                            \
        for (ptrdiff_t t = 0; t < PV; t += NL) {                                                 \
            V xv[MK];                                                                            \
            for (int b = 0; b < MK; b++) xv[b] = LOAD(xr[b] + t);                                \
            for (int a = 0; a < MF; a++) {                                                       \
                V gv = LOAD(gr[a] + t);                                                          \
                for (int b = 0; b < MK; b++) acc[a][b] += gv * xv[b];                            \
            }                                                                                    \
        }                                                                                        \
        if (PV == P) continue;                                                                   \
        if (last_exact && n == N - 1) {                                                          \
            for (ptrdiff_t t = PV; t < P; t++)                                                   \
                for (int a = 0; a < MF; a++)                                                     \
                    for (int b = 0; b < MK; b++) sacc[a][b] += gr[a][t] * xr[b][t];              \
        } else {                                                                                 \
            V xv[MK];                                                                            \
            for (int b = 0; b < MK; b++) xv[b] = (V)((VI)LOAD(xr[b] + PV) & mask);               \
            for (int a = 0; a < MF; a++) {                                                       \
                V gv = (V)((VI)LOAD(gr[a] + PV) & mask);                                         \
                for (int b = 0; b < MK; b++) acc[a][b] += gv * xv[b];                            \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    for (int a = 0; a < MF; a++)                                                                 \
        for (int b = 0; b < MK; b++) {                                                           \
            T s = 0;                                                                             \
            for (int l = 0; l < NL; l++) s += acc[a][b][l];                                      \
            c[a * ldc + b] = s + sacc[a][b];                                                     \
        }                                                                                        \
}

/* The rtile vectors are 32 bytes in every build: with 64-byte vectors each unaligned load
 * (every tap's row starts one element further) spans two cache lines, and the tile, 7 loads
 * per 12 multiply-adds, waits on them (AVX-512 build on an AMD EPYC whose FMA peak is the same
 * with 32- and 64-byte vectors: LeNet's C1 and 1->16 @28 weight gradients 1.2-1.5x the AVX2
 * build's time). */
typedef float fc_rvf __attribute__((vector_size(32)));
typedef double fc_rvd __attribute__((vector_size(32)));
typedef int fc_rvfi __attribute__((vector_size(32)));
typedef long long fc_rvdi __attribute__((vector_size(32)));
static inline fc_rvf fc_rload_f(const float *p) { fc_rvf v; memcpy(&v, p, sizeof v); return v; }
static inline fc_rvd fc_rload_d(const double *p) { fc_rvd v; memcpy(&v, p, sizeof v); return v; }

#define FC_BOTH_R(MF, MK)                                                                        \
    FC_DEFINE_RTILE(MF, MK, f, float, fc_rvf, fc_rvfi, fc_rload_f, -, 8)                         \
    FC_DEFINE_RTILE(MF, MK, d, double, fc_rvd, fc_rvdi, fc_rload_d, -, 4)

#define FC_BOTH(M, MR, NV)                                                                       \
    M(MR, NV, f, float, fc_gvf, fc_gload_f, fc_gstore_f, FC_NL_F)                                \
    M(MR, NV, d, double, fc_gvd, fc_gload_d, fc_gstore_d, FC_NL_D)

FC_BOTH(FC_DEFINE_GTILE, 6, 2)
FC_BOTH(FC_DEFINE_GTILE, 4, 3)
FC_BOTH(FC_DEFINE_GTILE, 2, 4)
FC_BOTH(FC_DEFINE_GTILE, 1, 4)
FC_BOTH(FC_DEFINE_WTILE, 6, 2)
FC_BOTH(FC_DEFINE_WTILE, 12, 1)
FC_DEFINE_FLANES(6, 2, f, float, fc_gvf, fc_gload_f, fc_gstore_f, FC_NL_F, fc_gvfi)
FC_DEFINE_FLANES(6, 2, d, double, fc_gvd, fc_gload_d, fc_gstore_d, FC_NL_D, fc_gvdi)
FC_DEFINE_FLANES(6, 1, f, float, fc_gvf, fc_gload_f, fc_gstore_f, FC_NL_F, fc_gvfi)
FC_DEFINE_FLANES(6, 1, d, double, fc_gvd, fc_gload_d, fc_gstore_d, FC_NL_D, fc_gvdi)
FC_BOTH_R(4, 3)
FC_BOTH_R(2, 6)
FC_BOTH_R(1, 12)
FC_BOTH_R(1, 9)

#endif
