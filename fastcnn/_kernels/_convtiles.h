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
 *                           x[n*x_img + xoff[o] + i*xrow + j] * g[n*g_img + (i*OW + j)*ldg + v*NL + l]
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
typedef int fc_gvi32 __attribute__((vector_size(FC_VB)));
typedef long long fc_gvi64 __attribute__((vector_size(FC_VB)));
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
                                               ptrdiff_t xrow, const T *g, ptrdiff_t g_img,      \
                                               ptrdiff_t ldg, ptrdiff_t N, ptrdiff_t OH,         \
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
                    T s = xr[o][j];                                                              \
                    for (int v = 0; v < NV; v++) acc[o][v] += s * gv[v];                         \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    for (int o = 0; o < MR; o++)                                                                 \
        for (int v = 0; v < NV; v++) STORE(c + o * ldc + v * NL, acc[o][v]);                     \
}

/* fc_ftile{NP}x{NV}: NP consecutive output positions x NV vectors of filters (forward, the
 * filters on the vector lanes: each input value is broadcast against a vector of packed weights),
 *
 *     c[u*NV*NL + v*NL + l] = sum_{k<K} x[off[k] + u] * w[k*NV*NL + v*NL + l]        u < NP
 *
 * summed k = 0, 1, ... in order. No position is computed that is not an output (apart from a
 * row's shifted-back last tile, which recomputes the same values). */
#define FC_DEFINE_FTILE(NP, NV, SUF, T, V, LOAD, STORE, NL)                                     \
static inline void fc_ftile##NP##x##NV##_##SUF(const T *x, const ptrdiff_t *off, ptrdiff_t K,    \
                                               const T *w, T *c)                                 \
{                                                                                                \
    V acc[NP][NV];                                                                               \
    for (int u = 0; u < NP; u++)                                                                 \
        for (int v = 0; v < NV; v++) acc[u][v] = (V){0};                                         \
    for (ptrdiff_t k = 0; k < K; k++) {                                                          \
        const T *xk = x + off[k];                                                                \
        const T *wk = w + k * NV * NL;                                                           \
        V wv[NV];                                                                                \
        for (int v = 0; v < NV; v++) wv[v] = LOAD(wk + v * NL);                                  \
        for (int u = 0; u < NP; u++) {                                                           \
            T s = xk[u];                                                                         \
            for (int v = 0; v < NV; v++) acc[u][v] += s * wv[v];                                 \
        }                                                                                        \
    }                                                                                            \
    for (int u = 0; u < NP; u++)                                                                 \
        for (int v = 0; v < NV; v++) STORE(c + u * NV * NL + v * NL, acc[u][v]);                 \
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

#define FC_BOTH_R(MF, MK)                                                                        \
    FC_DEFINE_RTILE(MF, MK, f, float, fc_gvf, fc_gvi32, fc_gload_f, fc_gstore_f, FC_NL_F)        \
    FC_DEFINE_RTILE(MF, MK, d, double, fc_gvd, fc_gvi64, fc_gload_d, fc_gstore_d, FC_NL_D)

#define FC_BOTH(M, MR, NV)                                                                       \
    M(MR, NV, f, float, fc_gvf, fc_gload_f, fc_gstore_f, FC_NL_F)                                \
    M(MR, NV, d, double, fc_gvd, fc_gload_d, fc_gstore_d, FC_NL_D)

FC_BOTH(FC_DEFINE_GTILE, 6, 2)
FC_BOTH(FC_DEFINE_GTILE, 4, 3)
FC_BOTH(FC_DEFINE_GTILE, 2, 4)
FC_BOTH(FC_DEFINE_GTILE, 1, 4)
FC_BOTH(FC_DEFINE_WTILE, 6, 2)
FC_BOTH(FC_DEFINE_WTILE, 12, 1)
FC_BOTH(FC_DEFINE_FTILE, 6, 2)
FC_BOTH_R(4, 3)
FC_BOTH_R(2, 6)
FC_BOTH_R(1, 12)
FC_BOTH_R(1, 9)

#endif
