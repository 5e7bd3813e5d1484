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
typedef int fc_gvfi __attribute__((vector_size(FC_VB)));
typedef long long fc_gvdi __attribute__((vector_size(FC_VB)));
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

/* fc_flanes{NP}x{NV}: NP output positions x NV vectors of filters (forward with the filters on
 * the vector lanes: each input value is broadcast against vectors of packed weights), written
 * straight into the output planes with bias and optional ReLU:
 *
 *     s[u][l] = sum_{k<K} x[pos[u] + off[k]] * w[k*NV*NL + l]       (k = 0, 1, ... in order)
 *     y[l*plane + u - u0] = relu?(s[u][l] + bias[l])                u0 <= u < NP, l < nf
 *
 * ``pos`` holds each position's offset in the input planes (any NP positions: no padding column
 * or stride gap is ever computed). The bias is added (and ReLU applied, NaN kept: v < 0 ? 0 : v)
 * on whole vectors; the transposed store then runs filter by filter over the NP positions. */
#define FC_DEFINE_FLANES(NP, NV, SUF, T, V, LOAD, STORE, NL, VI)                                \
static inline void fc_flanes##NP##x##NV##_##SUF(const T *x, const ptrdiff_t *pos,                \
                                                const ptrdiff_t *off, ptrdiff_t K, const T *w,   \
                                                const T *bias, int relu, ptrdiff_t u0,           \
                                                ptrdiff_t nf, T *y, ptrdiff_t plane)             \
{                                                                                                \
    V acc[NP][NV];                                                                               \
    const T *xp[NP];                                                                             \
    for (int u = 0; u < NP; u++) xp[u] = x + pos[u];                                             \
    for (int u = 0; u < NP; u++)                                                                 \
        for (int v = 0; v < NV; v++) acc[u][v] = (V){0};                                         \
    for (ptrdiff_t k = 0; k < K; k++) {                                                          \
        const ptrdiff_t o = off[k];                                                              \
        const T *wk = w + k * NV * NL;                                                           \
        V wv[NV];                                                                                \
        for (int v = 0; v < NV; v++) wv[v] = LOAD(wk + v * NL);                                  \
        for (int u = 0; u < NP; u++) {                                                           \
            T s = xp[u][o];                                                                      \
            for (int v = 0; v < NV; v++) acc[u][v] += s * wv[v];                                 \
        }                                                                                        \
    }                                                                                            \
    T ct[NP][NV * NL];                                                                           \
    V bv[NV];                                                                                    \
    for (int v = 0; v < NV; v++) bv[v] = LOAD(bias + v * NL);                                    \
    for (int u = 0; u < NP; u++)                                                                 \
        for (int v = 0; v < NV; v++) {                                                           \
            V r = acc[u][v] + bv[v];                                                             \
            if (relu) r = (V)((VI)r & ~(VI)(r < (V){0}));                                        \
            STORE(&ct[u][v * NL], r);                                                            \
        }                                                                                        \
    if (nf == NV * NL && u0 == 0) {                                                              \
        for (int l = 0; l < NV * NL; l++)                                                        \
            for (int u = 0; u < NP; u++) y[l * plane + u] = ct[u][l];                            \
        return;                                                                                  \
    }                                                                                            \
    for (ptrdiff_t l = 0; l < nf; l++)                                                           \
        for (int u = (int)u0; u < NP; u++) y[l * plane + u - u0] = ct[u][l];                          \
}

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

#endif
