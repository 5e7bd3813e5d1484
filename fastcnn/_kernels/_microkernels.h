/* Register-blocked inner loops of the convolution kernels (conv.pyx).
 *
 * Written with GCC/Clang vector extensions rather than intrinsics: one source serves the
 * baseline build (each 32-byte vector becomes two SSE2 registers) and the AVX2+FMA build (one
 * YMM register, fused multiply-add). No -ffast-math: every sum below runs in a fixed order that
 * depends only on the sizes, so results are reproducible and independent of the thread count.
 *
 * Suffix _f: float32, 8 lanes per vector; _d: float64, 4 lanes per vector.
 */
#ifndef FASTCNN_MICROKERNELS_H
#define FASTCNN_MICROKERNELS_H

#include <stddef.h>
#include <string.h>

typedef float fc_v8f __attribute__((vector_size(32)));
typedef double fc_v4d __attribute__((vector_size(32)));

/* Unaligned vector load and store through memcpy (compiles to one vmovups / two movups). */
static inline fc_v8f fc_load_f(const float *p) { fc_v8f v; memcpy(&v, p, sizeof v); return v; }
static inline fc_v4d fc_load_d(const double *p) { fc_v4d v; memcpy(&v, p, sizeof v); return v; }
static inline void fc_store_f(float *p, fc_v8f v) { memcpy(p, &v, sizeof v); }
static inline void fc_store_d(double *p, fc_v4d v) { memcpy(p, &v, sizeof v); }

/* Positions per tile: two vectors. */
#define FC_TILE_F 16
#define FC_TILE_D 8

/* One tile of a stride-1 "wide row" correlation for 4 output channels:
 *
 *   out[o*ostride + u] = sum_{c,p,q} w[o*ws_o + c*ws_i + p*ws_p + q*ws_q] * inp[c*plane + p*row + q + u]
 *
 * for o < 4 and u < FC_TILE. The 8 accumulators live in registers for the whole (c, p, q) sum;
 * each tap loads two input vectors and uses each of them for 4 output channels. */
#define FC_DEFINE_TILE4(SUFFIX, T, V, LOAD, STORE, NL)                                          \
static inline void fc_tile4_##SUFFIX(const T *inp, ptrdiff_t plane, ptrdiff_t row,               \
                                     ptrdiff_t Cin, const T *w, ptrdiff_t ws_o, ptrdiff_t ws_i,  \
                                     ptrdiff_t ws_p, ptrdiff_t ws_q, ptrdiff_t KH, ptrdiff_t KW, \
                                     T *out, ptrdiff_t ostride)                                  \
{                                                                                                \
    V a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};    \
    for (ptrdiff_t c = 0; c < Cin; c++) {                                                        \
        for (ptrdiff_t p = 0; p < KH; p++) {                                                     \
            const T *xs = inp + c * plane + p * row;                                             \
            const T *wp = w + c * ws_i + p * ws_p;                                               \
            for (ptrdiff_t q = 0; q < KW; q++) {                                                 \
                V x0 = LOAD(xs + q), x1 = LOAD(xs + q + NL);                                     \
                const T *wq = wp + q * ws_q;                                                     \
                T w0 = wq[0], w1 = wq[ws_o], w2 = wq[2 * ws_o], w3 = wq[3 * ws_o];                \
                a00 += w0 * x0; a01 += w0 * x1;                                                  \
                a10 += w1 * x0; a11 += w1 * x1;                                                  \
                a20 += w2 * x0; a21 += w2 * x1;                                                  \
                a30 += w3 * x0; a31 += w3 * x1;                                                  \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    STORE(out, a00); STORE(out + NL, a01);                                                       \
    STORE(out + ostride, a10); STORE(out + ostride + NL, a11);                                   \
    STORE(out + 2 * ostride, a20); STORE(out + 2 * ostride + NL, a21);                           \
    STORE(out + 3 * ostride, a30); STORE(out + 3 * ostride + NL, a31);                           \
}

FC_DEFINE_TILE4(f, float, fc_v8f, fc_load_f, fc_store_f, 8)
FC_DEFINE_TILE4(d, double, fc_v4d, fc_load_d, fc_store_d, 4)

/* Dot products of one vector g with 4 shifted windows of x, sharing the loads of g:
 *
 *   out[k] += sum_{t < n} g[t] * x[t + k]     for k < 4
 *
 * Each sum runs on 2*NL lanes (lane l takes t = l, l + 2*NL, ...), the lanes are added in order
 * 0, 1, ..., and the tail t >= n - n % (2*NL) is added last, one element at a time. */
#define FC_DEFINE_DOT4(SUFFIX, T, V, LOAD, NL)                                                   \
static inline void fc_dot4_##SUFFIX(const T *g, const T *x, ptrdiff_t n, T *out)                 \
{                                                                                                \
    V s00 = {0}, s01 = {0}, s10 = {0}, s11 = {0}, s20 = {0}, s21 = {0}, s30 = {0}, s31 = {0};    \
    ptrdiff_t t = 0, nb = n - n % (2 * NL);                                                      \
    for (; t < nb; t += 2 * NL) {                                                                \
        V g0 = LOAD(g + t), g1 = LOAD(g + t + NL);                                               \
        s00 += g0 * LOAD(x + t);     s01 += g1 * LOAD(x + t + NL);                               \
        s10 += g0 * LOAD(x + t + 1); s11 += g1 * LOAD(x + t + 1 + NL);                           \
        s20 += g0 * LOAD(x + t + 2); s21 += g1 * LOAD(x + t + 2 + NL);                           \
        s30 += g0 * LOAD(x + t + 3); s31 += g1 * LOAD(x + t + 3 + NL);                           \
    }                                                                                            \
    V lo[4] = {s00, s10, s20, s30}, hi[4] = {s01, s11, s21, s31};                                \
    for (int k = 0; k < 4; k++) {                                                                \
        T s = 0;                                                                                 \
        for (int l = 0; l < NL; l++) s += lo[k][l];                                              \
        for (int l = 0; l < NL; l++) s += hi[k][l];                                              \
        for (ptrdiff_t u = nb; u < n; u++) s += g[u] * x[u + k];                                 \
        out[k] += s;                                                                             \
    }                                                                                            \
}

/* The same sum for a single window: out = sum_{t < n} g[t] * x[t], same lane order. */
#define FC_DEFINE_DOT1(SUFFIX, T, V, LOAD, NL)                                                   \
static inline T fc_dot1_##SUFFIX(const T *g, const T *x, ptrdiff_t n)                            \
{                                                                                                \
    V s0 = {0}, s1 = {0};                                                                        \
    ptrdiff_t t = 0, nb = n - n % (2 * NL);                                                      \
    for (; t < nb; t += 2 * NL) {                                                                \
        s0 += LOAD(g + t) * LOAD(x + t);                                                         \
        s1 += LOAD(g + t + NL) * LOAD(x + t + NL);                                               \
    }                                                                                            \
    T s = 0;                                                                                     \
    for (int l = 0; l < NL; l++) s += s0[l];                                                     \
    for (int l = 0; l < NL; l++) s += s1[l];                                                     \
    for (ptrdiff_t u = nb; u < n; u++) s += g[u] * x[u];                                         \
    return s;                                                                                    \
}

FC_DEFINE_DOT4(f, float, fc_v8f, fc_load_f, 8)
FC_DEFINE_DOT4(d, double, fc_v4d, fc_load_d, 4)
FC_DEFINE_DOT1(f, float, fc_v8f, fc_load_f, 8)
FC_DEFINE_DOT1(d, double, fc_v4d, fc_load_d, 4)

#endif
