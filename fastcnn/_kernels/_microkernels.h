/* Register-blocked inner loops of the convolution kernels (conv.pyx).
 *
 * Written with GCC/Clang vector extensions rather than intrinsics: one source serves every
 * build. Vectors are 64 bytes where AVX-512 is enabled (one ZMM register) and 32 bytes
 * otherwise: one YMM register in the AVX2+FMA build, two SSE2 registers in the baseline build.
 * No -ffast-math: every sum below runs in a fixed order that depends only on the sizes, so
 * results are reproducible and independent of the thread count.
 *
 * Suffix _f: float32, FC_LANES_F lanes per vector; _d: float64, FC_LANES_D lanes per vector.
 */
#ifndef FASTCNN_MICROKERNELS_H
#define FASTCNN_MICROKERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define FC_VECTOR_BYTES 64
#else
#define FC_VECTOR_BYTES 32
#endif

typedef float fc_vf __attribute__((vector_size(FC_VECTOR_BYTES)));
typedef double fc_vd __attribute__((vector_size(FC_VECTOR_BYTES)));
typedef int32_t fc_vi32 __attribute__((vector_size(FC_VECTOR_BYTES)));  /* masks for fc_vf */
typedef int64_t fc_vi64 __attribute__((vector_size(FC_VECTOR_BYTES)));  /* masks for fc_vd */

/* Lanes per vector, and output positions per tile (two vectors). */
#define FC_LANES_F (FC_VECTOR_BYTES / 4)
#define FC_LANES_D (FC_VECTOR_BYTES / 8)
#define FC_TILE_F (2 * FC_LANES_F)
#define FC_TILE_D (2 * FC_LANES_D)

/* Unaligned vector load and store through memcpy (one vmovups, or two movups). */
static inline fc_vf fc_load_f(const float *p) { fc_vf v; memcpy(&v, p, sizeof v); return v; }
static inline fc_vd fc_load_d(const double *p) { fc_vd v; memcpy(&v, p, sizeof v); return v; }
static inline void fc_store_f(float *p, fc_vf v) { memcpy(p, &v, sizeof v); }
static inline void fc_store_d(double *p, fc_vd v) { memcpy(p, &v, sizeof v); }

/* One tile of a stride-1 "wide row" correlation for NB output channels:
 *
 *   out[o*ostride + u] = sum_{c,p,q} w[o*ws_o + c*ws_i + p*ws_p + q*ws_q] * inp[c*plane + p*row + q + u]
 *
 * for o < NB and u < FC_TILE. The 2*NB accumulators live in registers for the whole (c, p, q)
 * sum; each tap loads two input vectors and uses each of them for NB output channels. NB = 1,
 * 4 and 6 are built: 4, 6, 8, 12, 16 ... channels need no wasted work, and one or two channels
 * (a single-channel input gradient) still run on vectors. */
#define FC_DEFINE_TILE(NB, SUFFIX, T, V, LOAD, STORE, NL)                                       \
static inline void fc_tile##NB##_##SUFFIX(const T *inp, ptrdiff_t plane, ptrdiff_t row,          \
                                          ptrdiff_t Cin, const T *w, ptrdiff_t ws_o,             \
                                          ptrdiff_t ws_i, ptrdiff_t ws_p, ptrdiff_t ws_q,        \
                                          ptrdiff_t KH, ptrdiff_t KW, T *out, ptrdiff_t ostride) \
{                                                                                                \
    V a[NB][2];                                                                                  \
    for (int o = 0; o < NB; o++) {                                                               \
        a[o][0] = (V){0};                                                                        \
        a[o][1] = (V){0};                                                                        \
    }                                                                                            \
    for (ptrdiff_t c = 0; c < Cin; c++) {                                                        \
        for (ptrdiff_t p = 0; p < KH; p++) {                                                     \
            const T *xs = inp + c * plane + p * row;                                             \
            const T *wp = w + c * ws_i + p * ws_p;                                               \
            for (ptrdiff_t q = 0; q < KW; q++) {                                                 \
                V x0 = LOAD(xs + q), x1 = LOAD(xs + q + NL);                                     \
                const T *wq = wp + q * ws_q;                                                     \
                for (int o = 0; o < NB; o++) {                                                   \
                    T wv = wq[o * ws_o];                                                         \
                    a[o][0] += wv * x0;                                                          \
                    a[o][1] += wv * x1;                                                          \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    for (int o = 0; o < NB; o++) {                                                               \
        STORE(out + o * ostride, a[o][0]);                                                       \
        STORE(out + o * ostride + NL, a[o][1]);                                                  \
    }                                                                                            \
}

FC_DEFINE_TILE(4, f, float, fc_vf, fc_load_f, fc_store_f, FC_LANES_F)
FC_DEFINE_TILE(4, d, double, fc_vd, fc_load_d, fc_store_d, FC_LANES_D)
FC_DEFINE_TILE(6, f, float, fc_vf, fc_load_f, fc_store_f, FC_LANES_F)
FC_DEFINE_TILE(6, d, double, fc_vd, fc_load_d, fc_store_d, FC_LANES_D)
FC_DEFINE_TILE(1, f, float, fc_vf, fc_load_f, fc_store_f, FC_LANES_F)
FC_DEFINE_TILE(1, d, double, fc_vd, fc_load_d, fc_store_d, FC_LANES_D)

/* One row of a matrix product, NV vectors of columns at a time (the rows of C that the 6- and
 * 4-row tiles leave over, e.g. the single row of a batch-1 dense layer):
 *
 *   c[j] = sum_k a[k*sa_k] * b[k*ldb + j]     for j < NV*NL, in the order k = 0, 1, ..., K-1
 *
 * Each element is the same chain of fused multiply-adds as in fc_tile* (a product added to a
 * running sum that starts at 0), so a row computed here equals, bitwise, the row computed
 * inside a tile. NV independent chains cover the FMA latency that the two chains of fc_tile1
 * leave exposed (one row, 120 columns, K = 400: 15.5 -> 4 us). NV = 8, 4 and 2 are built. */
#define FC_DEFINE_GEMROW(NV, SUFFIX, T, V, LOAD, STORE, NL)                                      \
static inline void fc_gemrow##NV##_##SUFFIX(const T *b, ptrdiff_t ldb, const T *a,               \
                                            ptrdiff_t sa_k, ptrdiff_t K, T *c)                   \
{                                                                                                \
    V acc[NV];                                                                                   \
    for (int v = 0; v < NV; v++) acc[v] = (V){0};                                                \
    for (ptrdiff_t k = 0; k < K; k++) {                                                          \
        T av = a[k * sa_k];                                                                      \
        const T *bk = b + k * ldb;                                                               \
        for (int v = 0; v < NV; v++) acc[v] += av * LOAD(bk + v * NL);                           \
    }                                                                                            \
    for (int v = 0; v < NV; v++) STORE(c + v * NL, acc[v]);                                      \
}

FC_DEFINE_GEMROW(8, f, float, fc_vf, fc_load_f, fc_store_f, FC_LANES_F)
FC_DEFINE_GEMROW(8, d, double, fc_vd, fc_load_d, fc_store_d, FC_LANES_D)
FC_DEFINE_GEMROW(4, f, float, fc_vf, fc_load_f, fc_store_f, FC_LANES_F)
FC_DEFINE_GEMROW(4, d, double, fc_vd, fc_load_d, fc_store_d, FC_LANES_D)
FC_DEFINE_GEMROW(2, f, float, fc_vf, fc_load_f, fc_store_f, FC_LANES_F)
FC_DEFINE_GEMROW(2, d, double, fc_vd, fc_load_d, fc_store_d, FC_LANES_D)

/* Channel-vectorised forward tile: FC_ROW consecutive output positions of one row, for NL
 * output channels at once (one vector of channels per position), plus bias and optional ReLU:
 *
 *   out[r*NL + l] = b[l] + sum_{c,p,q} x[c*plane + p*row + q + r] * wt[((c*KH + p)*KW + q)*F + l]
 *
 * for r < FC_ROW, l < NL, with wt the weights laid out (C, KH, KW, F); with relu, negative
 * results become 0 (a NaN stays NaN). Each tap loads one vector of NL weights and broadcasts
 * FC_ROW inputs: no position is computed that is not an output, which suits small planes
 * (LeNet's C3: rows of 10) where the wide rows waste a third. */
#define FC_ROW 10
#define FC_DEFINE_CROW(SUFFIX, T, V, VI, LOAD, STORE, NL)                                        \
static inline void fc_crow_##SUFFIX(const T *x, ptrdiff_t plane, ptrdiff_t row, ptrdiff_t Cin,   \
                                    const T *wt, ptrdiff_t F, ptrdiff_t KH, ptrdiff_t KW,        \
                                    const T *b, int relu, T *out)                                \
{                                                                                                \
    V a[FC_ROW];                                                                                 \
    for (int r = 0; r < FC_ROW; r++) a[r] = (V){0};                                              \
    for (ptrdiff_t c = 0; c < Cin; c++) {                                                        \
        for (ptrdiff_t p = 0; p < KH; p++) {                                                     \
            const T *xs = x + c * plane + p * row;                                               \
            const T *ws = wt + (c * KH + p) * KW * F;                                            \
            for (ptrdiff_t q = 0; q < KW; q++) {                                                 \
                V wv = LOAD(ws + q * F);                                                         \
                for (int r = 0; r < FC_ROW; r++) a[r] += xs[q + r] * wv;                         \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    V bias = LOAD(b);                                                                            \
    for (int r = 0; r < FC_ROW; r++) {                                                           \
        V v = a[r] + bias;                                                                       \
        if (relu) v = (V)((VI)v & ~(VI)(v < 0)); /* lanes below 0 cleared, NaN kept */           \
        STORE(out + r * NL, v);                                                                  \
    }                                                                                            \
}

FC_DEFINE_CROW(f, float, fc_vf, fc_vi32, fc_load_f, fc_store_f, FC_LANES_F)
FC_DEFINE_CROW(d, double, fc_vd, fc_vi64, fc_load_d, fc_store_d, FC_LANES_D)

/* Channel-vectorised weight-gradient row: the KW taps (p, 0..KW-1) of one input channel for NL
 * filters at once (one vector of filters per tap), summed over every output position of the
 * batch:
 *
 *   acc[q*NL + l] += sum_{n, i, j} x[n*x_img + i*row + j + q] * g[((n*OH + i)*OW + j)*gs + l]
 *
 * with g the output gradient laid out (N, OH, OW, F) (gs = F, pointer already at the filter
 * block) and x pointing at the input row p of channel c. The KW accumulators stay in registers
 * for the whole batch, so every product is a useful one and the sum over positions runs in a
 * fixed order. Built for KW = 3 and 5. */
#define FC_DEFINE_DWROW(KWN, SUFFIX, T, V, LOAD, STORE, NL)                                      \
static inline void fc_dwrow##KWN##_##SUFFIX(const T *x, ptrdiff_t x_img, ptrdiff_t row,         \
                                            const T *g, ptrdiff_t gs, ptrdiff_t N,              \
                                            ptrdiff_t OH, ptrdiff_t OW, T *acc)                 \
{                                                                                                \
    V a[KWN];                                                                                    \
    for (int q = 0; q < KWN; q++) a[q] = LOAD(acc + q * NL);                                     \
    for (ptrdiff_t n = 0; n < N; n++) {                                                          \
        for (ptrdiff_t i = 0; i < OH; i++) {                                                     \
            const T *xr = x + n * x_img + i * row;                                               \
            const T *gr = g + (n * OH + i) * OW * gs;                                            \
            for (ptrdiff_t j = 0; j < OW; j++) {                                                 \
                V gv = LOAD(gr + j * gs);                                                        \
                for (int q = 0; q < KWN; q++) a[q] += xr[j + q] * gv;                            \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    for (int q = 0; q < KWN; q++) STORE(acc + q * NL, a[q]);                                     \
}

FC_DEFINE_DWROW(3, f, float, fc_vf, fc_load_f, fc_store_f, FC_LANES_F)
FC_DEFINE_DWROW(3, d, double, fc_vd, fc_load_d, fc_store_d, FC_LANES_D)
FC_DEFINE_DWROW(5, f, float, fc_vf, fc_load_f, fc_store_f, FC_LANES_F)
FC_DEFINE_DWROW(5, d, double, fc_vd, fc_load_d, fc_store_d, FC_LANES_D)

/* Weight-gradient tile: 4 output-gradient rows g_r against 2 neighbouring taps of x.
 *
 *   acc[(2*r + k)*NL + l] += sum over t = l (mod NL) of g_r[t] * x[t + k]     r < 4, k < 2
 *
 * for t = 0, NL, 2*NL, ... < n, where n is a multiple of NL and every g_r is readable (zero
 * padded) up to n. Only xlen elements are readable from x: loads past them see zeros, so no
 * read leaves the input plane. The accumulators keep one partial sum per lane; the caller adds
 * the lanes up, in order, once the whole batch has been accumulated. */
#define FC_DEFINE_DW4X2(SUFFIX, T, V, LOAD, STORE, NL)                                           \
static inline V fc_load_upto_##SUFFIX(const T *p, ptrdiff_t avail)                               \
{                                                                                                \
    V v = {0};                                                                                   \
    if (avail >= NL) memcpy(&v, p, sizeof v);                                                    \
    else if (avail > 0) memcpy(&v, p, (size_t)avail * sizeof(T));                                \
    return v;                                                                                    \
}                                                                                                \
static inline void fc_dw4x2_##SUFFIX(const T *g0, const T *g1, const T *g2, const T *g3,          \
                                     const T *x, ptrdiff_t xlen, ptrdiff_t n, T *acc)            \
{                                                                                                \
    V a00 = LOAD(acc), a01 = LOAD(acc + NL), a10 = LOAD(acc + 2 * NL), a11 = LOAD(acc + 3 * NL); \
    V a20 = LOAD(acc + 4 * NL), a21 = LOAD(acc + 5 * NL);                                        \
    V a30 = LOAD(acc + 6 * NL), a31 = LOAD(acc + 7 * NL);                                        \
    ptrdiff_t t = 0;                                                                             \
    for (; t < n && t + NL + 1 <= xlen; t += NL) {                                               \
        V x0 = LOAD(x + t), x1 = LOAD(x + t + 1);                                                \
        V h0 = LOAD(g0 + t), h1 = LOAD(g1 + t), h2 = LOAD(g2 + t), h3 = LOAD(g3 + t);            \
        a00 += h0 * x0; a01 += h0 * x1;                                                          \
        a10 += h1 * x0; a11 += h1 * x1;                                                          \
        a20 += h2 * x0; a21 += h2 * x1;                                                          \
        a30 += h3 * x0; a31 += h3 * x1;                                                          \
    }                                                                                            \
    for (; t < n; t += NL) {                                                                     \
        V x0 = fc_load_upto_##SUFFIX(x + t, xlen - t);                                           \
        V x1 = fc_load_upto_##SUFFIX(x + t + 1, xlen - t - 1);                                   \
        V h0 = LOAD(g0 + t), h1 = LOAD(g1 + t), h2 = LOAD(g2 + t), h3 = LOAD(g3 + t);            \
        a00 += h0 * x0; a01 += h0 * x1;                                                          \
        a10 += h1 * x0; a11 += h1 * x1;                                                          \
        a20 += h2 * x0; a21 += h2 * x1;                                                          \
        a30 += h3 * x0; a31 += h3 * x1;                                                          \
    }                                                                                            \
    STORE(acc, a00); STORE(acc + NL, a01); STORE(acc + 2 * NL, a10); STORE(acc + 3 * NL, a11);   \
    STORE(acc + 4 * NL, a20); STORE(acc + 5 * NL, a21);                                          \
    STORE(acc + 6 * NL, a30); STORE(acc + 7 * NL, a31);                                          \
}

FC_DEFINE_DW4X2(f, float, fc_vf, fc_load_f, fc_store_f, FC_LANES_F)
FC_DEFINE_DW4X2(d, double, fc_vd, fc_load_d, fc_store_d, FC_LANES_D)

/* 2x2 max-pooling with stride 2 and no padding, for a plane without NaN:
 *
 *   y[i, j] = max of x[2i, 2j], x[2i, 2j+1], x[2i+1, 2j], x[2i+1, 2j+1]    am[i, j] = its flat index
 *
 * reduced as a tree of pairs with strict '>' (so ties keep the earlier element in row-major
 * order) written as C conditional expressions, which compilers turn into selects rather than
 * branches. Returns 0 without writing anything when the plane holds a NaN: the caller then
 * takes the general path, which implements the NaN rule. */
#define FC_DEFINE_POOL2X2(SUFFIX, T)                                                             \
static inline int fc_pool2x2_##SUFFIX(const T *x, ptrdiff_t H, ptrdiff_t W, T *y, int64_t *am,   \
                                      ptrdiff_t OH, ptrdiff_t OW)                                \
{                                                                                                \
    int nan = 0;                                                                                 \
    for (ptrdiff_t k = 0; k < H * W; k++) nan |= x[k] != x[k];                                   \
    if (nan) return 0;                                                                           \
    for (ptrdiff_t i = 0; i < OH; i++) {                                                         \
        for (ptrdiff_t j = 0; j < OW; j++) {                                                     \
            ptrdiff_t k = 2 * i * W + 2 * j;                                                     \
            T a = x[k], b = x[k + 1], c = x[k + W], d = x[k + W + 1];                            \
            T m1 = b > a ? b : a, m2 = d > c ? d : c;                                            \
            ptrdiff_t k1 = b > a ? k + 1 : k, k2 = d > c ? k + W + 1 : k + W;                    \
            y[i * OW + j] = m2 > m1 ? m2 : m1;                                                   \
            am[i * OW + j] = m2 > m1 ? k2 : k1;                                                  \
        }                                                                                        \
    }                                                                                            \
    return 1;                                                                                    \
}

FC_DEFINE_POOL2X2(f, float)
FC_DEFINE_POOL2X2(d, double)

/* ---- fc_pixels_major_{f,d}: d[t*F + f] = g[f*P + t] for f < F, t < P (one image of the output
 * gradient, planes-major to pixels-major). Blocks of 8x8 floats (4x4 doubles) are transposed in
 * registers (AVX2: unpack, shuffle, 128-bit permute; one 32-byte vector per block row in every
 * build), the edges element by element. Storing one plane at a time across every position
 * instead touched each cache line of d F times: measured 2.7x slower (64 images, 32 filters of
 * 14x14, 1 thread). */
typedef float fc_v8f __attribute__((vector_size(32)));
typedef double fc_v4d __attribute__((vector_size(32)));
typedef int32_t fc_v8i __attribute__((vector_size(32)));
typedef int64_t fc_v4l __attribute__((vector_size(32)));

/* A row through a local vector (a memcpy straight into an array element went through the
 * stack in two 16-byte halves and stalled the 32-byte reload: 3x slower transposes). */
static inline fc_v8f fc_ld8_f(const float *p) { fc_v8f v; memcpy(&v, p, sizeof v); return v; }
static inline fc_v4d fc_ld4_d(const double *p) { fc_v4d v; memcpy(&v, p, sizeof v); return v; }

static inline void fc_tr8_f(const float *s, ptrdiff_t ls, float *d, ptrdiff_t ld) {
    fc_v8f r[8], t[8], u[8];
    for (int k = 0; k < 8; k++) r[k] = fc_ld8_f(s + k * ls);
    for (int k = 0; k < 8; k += 2) {   /* interleave row pairs */
        t[k] = __builtin_shuffle(r[k], r[k + 1], (fc_v8i){0, 8, 1, 9, 4, 12, 5, 13});
        t[k + 1] = __builtin_shuffle(r[k], r[k + 1], (fc_v8i){2, 10, 3, 11, 6, 14, 7, 15});
    }
    for (int k = 0; k < 8; k += 4) {   /* then pairs of pairs */
        u[k] = __builtin_shuffle(t[k], t[k + 2], (fc_v8i){0, 1, 8, 9, 4, 5, 12, 13});
        u[k + 1] = __builtin_shuffle(t[k], t[k + 2], (fc_v8i){2, 3, 10, 11, 6, 7, 14, 15});
        u[k + 2] = __builtin_shuffle(t[k + 1], t[k + 3], (fc_v8i){0, 1, 8, 9, 4, 5, 12, 13});
        u[k + 3] = __builtin_shuffle(t[k + 1], t[k + 3], (fc_v8i){2, 3, 10, 11, 6, 7, 14, 15});
    }
    for (int k = 0; k < 4; k++) {      /* then the 128-bit halves */
        fc_v8f lo = __builtin_shuffle(u[k], u[k + 4], (fc_v8i){0, 1, 2, 3, 8, 9, 10, 11});
        fc_v8f hi = __builtin_shuffle(u[k], u[k + 4], (fc_v8i){4, 5, 6, 7, 12, 13, 14, 15});
        memcpy(d + k * ld, &lo, sizeof lo);
        memcpy(d + (k + 4) * ld, &hi, sizeof hi);
    }
}

static inline void fc_tr4_d(const double *s, ptrdiff_t ls, double *d, ptrdiff_t ld) {
    fc_v4d r[4], t[4];
    for (int k = 0; k < 4; k++) r[k] = fc_ld4_d(s + k * ls);
    t[0] = __builtin_shuffle(r[0], r[1], (fc_v4l){0, 4, 2, 6});
    t[1] = __builtin_shuffle(r[0], r[1], (fc_v4l){1, 5, 3, 7});
    t[2] = __builtin_shuffle(r[2], r[3], (fc_v4l){0, 4, 2, 6});
    t[3] = __builtin_shuffle(r[2], r[3], (fc_v4l){1, 5, 3, 7});
    for (int k = 0; k < 2; k++) {
        fc_v4d lo = __builtin_shuffle(t[k], t[k + 2], (fc_v4l){0, 1, 4, 5});
        fc_v4d hi = __builtin_shuffle(t[k], t[k + 2], (fc_v4l){2, 3, 6, 7});
        memcpy(d + k * ld, &lo, sizeof lo);
        memcpy(d + (k + 2) * ld, &hi, sizeof hi);
    }
}

#define FC_DEFINE_PIXELS_MAJOR(SUF, T, B, TR)                                                    \
static void fc_pixels_major_##SUF(const T *g, T *d, ptrdiff_t F, ptrdiff_t P) {                  \
    ptrdiff_t FB = F - F % B, PB = P - P % B;                                                    \
    for (ptrdiff_t f0 = 0; f0 < FB; f0 += B) {                                                   \
        for (ptrdiff_t t0 = 0; t0 < PB; t0 += B) TR(g + f0 * P + t0, P, d + t0 * F + f0, F);    \
        for (ptrdiff_t t = PB; t < P; t++)                                                       \
            for (ptrdiff_t f = f0; f < f0 + B; f++) d[t * F + f] = g[f * P + t];                 \
    }                                                                                            \
    for (ptrdiff_t t = 0; t < P; t++)                                                            \
        for (ptrdiff_t f = FB; f < F; f++) d[t * F + f] = g[f * P + t];                          \
}
FC_DEFINE_PIXELS_MAJOR(f, float, 8, fc_tr8_f)
FC_DEFINE_PIXELS_MAJOR(d, double, 4, fc_tr4_d)

/* ---- Dot-product tiles for c = a @ b.T with both operands read by rows (a dense layer's
 * input (M, K) and weight (N, K) as it holds them: no transposed copy of the weight to make,
 * or to keep current while it is cached):
 *
 *   c[i*ldc + j] = fc_red(sum over vector steps s of A_s * B_s, lane by lane)
 *
 * where step s holds a[i][s*NL .. s*NL + NL-1] (and b[j][...]), the last step padded with zeros
 * past K: lane l of a 32-byte vector sums k = l (mod NL) in order (a fused multiply-add chain
 * from 0), and fc_red adds the lanes by a fixed tree. Every element is that same computation
 * whichever tile computes it (4x3 register tiles, a 1x4 tile for the last rows, single
 * elements at the edges), whatever M and the thread count, and in every build (32-byte
 * vectors throughout: two SSE registers in the baseline one). (A scalar loop over the last
 * K % NL terms instead was compiled differently from one tile to the next: fused in one,
 * vectorised multiplies and separate adds in another.) */
static inline float fc_red_f(fc_v8f v) {
    typedef float v4 __attribute__((vector_size(16)));
    v4 lo, hi;
    memcpy(&lo, &v, 16);
    memcpy(&hi, (const char *)&v + 16, 16);
    v4 t = lo + hi;                      /* l_i + l_{i+4} */
    return (t[0] + t[2]) + (t[1] + t[3]);
}
static inline double fc_red_d(fc_v4d v) {
    return (v[0] + v[2]) + (v[1] + v[3]);
}
/* fc_red of four vectors at once (lane m of the result: fc_red(v[m]), the same tree of adds). */
typedef float fc_v4f __attribute__((vector_size(16)));
typedef int32_t fc_v4i __attribute__((vector_size(16)));
static inline fc_v4f fc_red4_f(const fc_v8f *v) {
    fc_v4f t[4];
    for (int m = 0; m < 4; m++) {
        fc_v4f lo, hi;
        memcpy(&lo, &v[m], 16);
        memcpy(&hi, (const char *)&v[m] + 16, 16);
        t[m] = lo + hi;
    }
    fc_v4f s01 = __builtin_shuffle(t[0], t[1], (fc_v4i){0, 1, 4, 5}) +
                 __builtin_shuffle(t[0], t[1], (fc_v4i){2, 3, 6, 7});   /* t0+t2, t1+t3 */
    fc_v4f s23 = __builtin_shuffle(t[2], t[3], (fc_v4i){0, 1, 4, 5}) +
                 __builtin_shuffle(t[2], t[3], (fc_v4i){2, 3, 6, 7});
    return __builtin_shuffle(s01, s23, (fc_v4i){0, 2, 4, 6}) +
           __builtin_shuffle(s01, s23, (fc_v4i){1, 3, 5, 7});
}
static inline fc_v4d fc_red4_d(const fc_v4d *v) {
    fc_v4d r;
    for (int m = 0; m < 4; m++) r[m] = fc_red_d(v[m]);
    return r;
}
/* The last step's operand: p[0 .. n-1] then zeros (0 < n < NL). */
static inline fc_v8f fc_ldpart_f(const float *p, ptrdiff_t n) {
    float t[8] = {0};
    memcpy(t, p, (size_t)n * sizeof *p);
    return fc_ld8_f(t);
}
static inline fc_v4d fc_ldpart_d(const double *p, ptrdiff_t n) {
    double t[4] = {0};
    memcpy(t, p, (size_t)n * sizeof *p);
    return fc_ld4_d(t);
}
#define FC_DEFINE_DOT(SUF, T, V, V4, NL, LD)                                                     \
static inline void fc_dot4x3_##SUF(const T *a, ptrdiff_t lda, const T *b, ptrdiff_t ldb,         \
                                   ptrdiff_t K, T *c, ptrdiff_t ldc)                             \
{                                                                                                \
    V acc[4][3];                                                                                 \
    ptrdiff_t K8 = K - K % NL;                                                                   \
    for (int i = 0; i < 4; i++)                                                                  \
        for (int j = 0; j < 3; j++) acc[i][j] = (V){0};                                          \
    for (ptrdiff_t k = 0; k < K8; k += NL) {                                                     \
        V b0 = LD(b + k), b1 = LD(b + ldb + k), b2 = LD(b + 2 * ldb + k);                        \
        for (int i = 0; i < 4; i++) {                                                            \
            V av = LD(a + i * lda + k);                                                          \
            acc[i][0] += av * b0;                                                                \
            acc[i][1] += av * b1;                                                                \
            acc[i][2] += av * b2;                                                                \
        }                                                                                        \
    }                                                                                            \
    if (K8 < K) {                                                                                \
        V b0 = fc_ldpart_##SUF(b + K8, K - K8), b1 = fc_ldpart_##SUF(b + ldb + K8, K - K8);      \
        V b2 = fc_ldpart_##SUF(b + 2 * ldb + K8, K - K8);                                        \
        for (int i = 0; i < 4; i++) {                                                            \
            V av = fc_ldpart_##SUF(a + i * lda + K8, K - K8);                                    \
            acc[i][0] += av * b0;                                                                \
            acc[i][1] += av * b1;                                                                \
            acc[i][2] += av * b2;                                                                \
        }                                                                                        \
    }                                                                                            \
    for (int j = 0; j < 3; j++) {                                                                \
        V col[4] = {acc[0][j], acc[1][j], acc[2][j], acc[3][j]};                                 \
        V4 r = fc_red4_##SUF(col);                                                               \
        for (int i = 0; i < 4; i++) c[i * ldc + j] = r[i];                                       \
    }                                                                                            \
}                                                                                                \
static inline void fc_dot1x4_##SUF(const T *a, const T *b, ptrdiff_t ldb, ptrdiff_t K, T *c)     \
{                                                                                                \
    V acc[4];                                                                                    \
    ptrdiff_t K8 = K - K % NL;                                                                   \
    for (int j = 0; j < 4; j++) acc[j] = (V){0};                                                 \
    for (ptrdiff_t k = 0; k < K8; k += NL) {                                                     \
        V av = LD(a + k);                                                                        \
        for (int j = 0; j < 4; j++) acc[j] += av * LD(b + j * ldb + k);                          \
    }                                                                                            \
    if (K8 < K) {                                                                                \
        V av = fc_ldpart_##SUF(a + K8, K - K8);                                                  \
        for (int j = 0; j < 4; j++) acc[j] += av * fc_ldpart_##SUF(b + j * ldb + K8, K - K8);    \
    }                                                                                            \
    for (int j = 0; j < 4; j++) c[j] = fc_red_##SUF(acc[j]);                                     \
}                                                                                                \
static inline T fc_dot1_##SUF(const T *a, const T *b, ptrdiff_t K)                               \
{                                                                                                \
    V acc = (V){0};                                                                              \
    ptrdiff_t K8 = K - K % NL;                                                                   \
    for (ptrdiff_t k = 0; k < K8; k += NL) acc += LD(a + k) * LD(b + k);                         \
    if (K8 < K) acc += fc_ldpart_##SUF(a + K8, K - K8) * fc_ldpart_##SUF(b + K8, K - K8);        \
    return fc_red_##SUF(acc);                                                                    \
}                                                                                                \
/* Rows i0..i1-1 x columns j0..j1-1 of c: 4x3 tiles, then 1x4 tiles and single elements. */    \
static void fc_dot_block_##SUF(const T *a, ptrdiff_t lda, const T *b, ptrdiff_t ldb,             \
                               ptrdiff_t K, T *c, ptrdiff_t ldc, ptrdiff_t i0, ptrdiff_t i1,     \
                               ptrdiff_t j0, ptrdiff_t j1)                                       \
{                                                                                                \
    ptrdiff_t i = i0;                                                                            \
    for (; i + 4 <= i1; i += 4) {                                                                \
        ptrdiff_t j = j0;                                                                        \
        for (; j + 3 <= j1; j += 3)                                                              \
            fc_dot4x3_##SUF(a + i * lda, lda, b + j * ldb, ldb, K, c + i * ldc + j, ldc);        \
        for (; j < j1; j++)                                                                      \
            for (int r = 0; r < 4; r++)                                                          \
                c[(i + r) * ldc + j] = fc_dot1_##SUF(a + (i + r) * lda, b + j * ldb, K);         \
    }                                                                                            \
    for (; i < i1; i++) {                                                                        \
        ptrdiff_t j = j0;                                                                        \
        for (; j + 4 <= j1; j += 4)                                                              \
            fc_dot1x4_##SUF(a + i * lda, b + j * ldb, ldb, K, c + i * ldc + j);                  \
        for (; j < j1; j++) c[i * ldc + j] = fc_dot1_##SUF(a + i * lda, b + j * ldb, K);         \
    }                                                                                            \
}
FC_DEFINE_DOT(f, float, fc_v8f, fc_v4f, 8, fc_ld8_f)
FC_DEFINE_DOT(d, double, fc_v4d, fc_v4d, 4, fc_ld4_d)

#endif
