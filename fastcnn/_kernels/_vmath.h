/* Vectorised element-wise activations and softmax (used by elementwise.pyx).
 *
 * exp and expm1 are evaluated four doubles at a time with GCC/Clang vector extensions (one YMM
 * register in the AVX2 build, two SSE2 registers in the generic one), without -ffast-math:
 *
 *   x = k*ln2 + r,  k = round(x / ln2),  |r| <= ln2/2    (Cody-Waite: ln2 = LN2_HI + LN2_LO,
 *                                                         k*LN2_HI exact for |k| < 2^21)
 *   expm1(r) = r + r^2 * (1/2! + r/3! + ... + r^11/13!)   (Taylor; the first term left out,
 *                                                         r^14/14!, is < 2e-17 * |r|)
 *   exp(x)   = 2^k * (1 + expm1(r))
 *   expm1(x) = (2^k - 1) + 2^k * expm1(r)
 *
 * 2^k is built from its bits, so the vector path covers |x| <= 708 (k in [-1022, 1022]); lanes
 * outside that range, or NaN, are recomputed with the C library (rare: overflow, underflow to
 * subnormals, inf, NaN). This is the float64 path; float32 data takes the float32 kernels at
 * the end of this file (ELU, tanh, sigmoid in float32 arithmetic, eight lanes per vector; GELU in
 * double with float32-accurate polynomials); other float32 ops are widened to double, computed
 * in double and rounded once. Every result depends only
 * on its own input element(s): the thread count cannot change it.
 *
 * Operations (VM_*): y = f(x; a, b) for the forward passes and dx = g * f'(x or y; a) for the
 * backward passes; which of x (input) or y (output) each backward takes is listed below.
 */
#ifndef FASTCNN_VMATH_H
#define FASTCNN_VMATH_H

#include <math.h>
#include <stddef.h>

/* The selects below (x > 0 ? x : x * s) are vectorised only if gcc may evaluate both sides,
   which -ftrapping-math (the default) forbids: the flags of FP exceptions are never read here,
   and the values computed are the same, so it is switched off for this file's functions. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif
#include <stdint.h>
#include <string.h>

typedef double vm_d __attribute__((vector_size(32)));
typedef int64_t vm_l __attribute__((vector_size(32)));
typedef float vm_f4 __attribute__((vector_size(16)));

#define VM_LANES 4

enum {
    /* forward: y = f(x) */
    VM_RELU = 0, VM_LEAKY_RELU = 1, VM_ELU = 2, VM_GELU = 3, VM_GELU_TANH = 4, VM_TANH = 5,
    VM_SIGMOID = 6, VM_EXP = 7,
    /* backward: dx = g * f'(.) ; the second input is the forward input x, except for TANH and
       SIGMOID (the forward output y); RELU accepts either (y > 0 exactly where x > 0) */
    VM_RELU_B = 16, VM_LEAKY_RELU_B = 17, VM_ELU_B = 18, VM_GELU_B = 19, VM_GELU_TANH_B = 20,
    VM_TANH_B = 21, VM_SIGMOID_B = 22
};

static inline vm_d vm_set(double v) { return (vm_d){v, v, v, v}; }
static inline vm_d vm_ld_d(const double *p) { vm_d v; memcpy(&v, p, sizeof v); return v; }
static inline vm_d vm_ld_f(const float *p) {
    vm_f4 v; memcpy(&v, p, sizeof v); return __builtin_convertvector(v, vm_d);
}
static inline void vm_st_d(double *p, vm_d v) { memcpy(p, &v, sizeof v); }
static inline void vm_st_f(float *p, vm_d v) {
    vm_f4 f = __builtin_convertvector(v, vm_f4); memcpy(p, &f, sizeof f);
}
/* m ? a : b, lane by lane (m is all ones or all zeros per lane) */
static inline vm_d vm_sel(vm_l m, vm_d a, vm_d b) {
    return (vm_d)((m & (vm_l)a) | (~m & (vm_l)b));
}
static inline vm_d vm_abs(vm_d x) { return (vm_d)((vm_l)x & ~(vm_l)vm_set(-0.0)); }
#if defined(__AVX__)
#include <immintrin.h>
/* one vptest instead of the extract-and-or chain gcc makes of the generic form (the GELU
   kernels test four masks per vector) */
static inline int vm_any(vm_l m) { return !_mm256_testz_si256((__m256i)m, (__m256i)m); }
#else
static inline int vm_any(vm_l m) { return (m[0] | m[1] | m[2] | m[3]) != 0; }
#endif

/* k = round(y / ln2) (exactly an integer) and 2^k, for |y| <= 708. */
static inline vm_d vm_split(vm_d y, vm_d *k) {
    const vm_d shifter = vm_set(0x1.8p52);
    vm_d t = y * vm_set(1.4426950408889634074) + shifter;
    vm_l ki = (vm_l)t - (vm_l)shifter;
    *k = t - shifter;
    return (vm_d)((ki + 1023) << 52);
}

/* expm1(r) for |r| <= ln2/2: r + r^2 (1/2! + r/3! + ... + r^11/13!). */
static inline vm_d vm_expm1_poly(vm_d r) {
    vm_d p = vm_set(1.0 / 6227020800.0);              /* 1/13! */
    p = p * r + vm_set(1.0 / 479001600.0);
    p = p * r + vm_set(1.0 / 39916800.0);
    p = p * r + vm_set(1.0 / 3628800.0);
    p = p * r + vm_set(1.0 / 362880.0);
    p = p * r + vm_set(1.0 / 40320.0);
    p = p * r + vm_set(1.0 / 5040.0);
    p = p * r + vm_set(1.0 / 720.0);
    p = p * r + vm_set(1.0 / 120.0);
    p = p * r + vm_set(1.0 / 24.0);
    p = p * r + vm_set(1.0 / 6.0);
    p = p * r + vm_set(0.5);
    return r + (r * r) * p;
}

/* expm1(r) for |r| <= ln2/2 and, through scale = 2^k, the reduction of x (|x| <= 708). */
static inline vm_d vm_reduce(vm_d x, vm_d *scale) {
    vm_d k;
    *scale = vm_split(x, &k);
    return vm_expm1_poly((x - k * vm_set(6.93147180369123816490e-01))
                         - k * vm_set(1.90821492927058770002e-10));
}

/* exp and expm1 for |x| <= 708 (callers clamp or fall back to libm outside). */
static inline vm_d vm_exp_in(vm_d x) {
    vm_d s; vm_d p = vm_reduce(x, &s); return s + s * p;
}
static inline vm_d vm_expm1_in(vm_d x) {
    vm_d s; vm_d p = vm_reduce(x, &s); return (s - vm_set(1.0)) + s * p;
}
static inline vm_l vm_in_range(vm_d x) {
    return (x >= vm_set(-708.0)) & (x <= vm_set(708.0));  /* false for NaN */
}

/* ---- scalar versions: the fallback for lanes outside the vector range (and the definition) */
static inline double vm_sigmoid_s(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}
static const double VM_SQRT1_2 = 0.70710678118654752440;
static const double VM_INV_SQRT_2PI = 0.39894228040143267794;
static const double VM_SQRT_2_OVER_PI = 0.79788456080286535588;
static const double VM_GELU_C = 0.044715;

static const double VM_SQRT1_2_LO = -4.833646656726457e-17;  /* 1/sqrt2 - VM_SQRT1_2 */
static const double VM_INV_SQRT_PI = 0.56418958354775628695;

/* Phi(x) = erfc(-x/sqrt2)/2. erfc(z) changes by a relative 2z^2 * (relative change of z), so
   the rounding of z = -x/sqrt2 alone would cost 1e-13 at x = -37: the rounding error dz of z is
   recovered with an fma and applied to first order, erfc(z + dz) = erfc(z) - dz 2/sqrt(pi) e^-z^2. */
static inline double vm_phi_s(double x) {
    double z = -x * VM_SQRT1_2;
    double dz = fma(-x, VM_SQRT1_2, -z) - x * VM_SQRT1_2_LO;
    double c = 0.5 * erfc(z);
    return z > 1.0 ? c - dz * VM_INV_SQRT_PI * exp(-z * z) : c;
}
/* exp(-x^2/2) with x^2 = h + l split exactly (the rounding of x^2 would cost x^2/2 ulps) */
static inline double vm_gauss_s(double x) {
    double h = x * x, l = fma(x, x, -h);
    double e = exp(-0.5 * h);
    return e - e * (0.5 * l);
}
static inline double vm_gelu_s(double x) { return x * vm_phi_s(x); }
static inline double vm_gelu_b_s(double x) {
    return vm_phi_s(x) + x * (VM_INV_SQRT_2PI * vm_gauss_s(x));
}
/* ---- Phi(x) = erfc(-x/sqrt2)/2 four doubles at a time (the exact GELU and its gradient).
 *
 * erfc(z) piecewise in a = |z|, with the published rational approximations and coefficients of
 * Sun Microsystems' fdlibm / FreeBSD msun s_erf.c (errors below 2^-57 relative on each piece):
 *   a < 0.84375:        erf(z) = z + z R(z^2)     erfc = 1 - erf (z < 1/4), 1/2 - ((z - 1/2) + z R)
 *   0.84375 <= a < 1.25: s = a - 1, erf(a) = erx + P(s)/Q(s)
 *   1.25 <= a:          erfc(a) = exp(-a^2 - 0.5625 + R(1/a^2)/S(1/a^2)) / a  (two coefficient
 *                       sets, split at a = 1/0.35), erfc(-a) = 2 - erfc(a)
 * As in vm_phi_s, z = -x/sqrt2 is a rounded value: its error dz (fma) is carried to first order
 * in each piece (the term dz (1 + R) of erf, s = a - 1 + da, and -2 a da in the exponent with
 * the 1/a factor corrected), and a^2 is split exactly (h + l), so that the exponent is not
 * rounded to an absolute 2^-53 a^2. exp(hi + lo) reduces hi + lo with Cody-Waite and keeps lo.
 * The caller keeps |x| <= 37 (a <= 26.2, the exponent >= -686): other lanes (NaN, inf, huge)
 * go through the scalar vm_phi_s. */
#if defined(__FMA__)
#include <immintrin.h>
/* a * b - p exactly (p = a * b rounded) */
static inline vm_d vm_prod_err(vm_d a, vm_d b, vm_d p) {
    return (vm_d)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)(-p));
}
#else
static inline vm_d vm_prod_err(vm_d a, vm_d b, vm_d p) {   /* Dekker, Veltkamp splitting */
    const vm_d c = vm_set(134217729.0);   /* 2^27 + 1 */
    vm_d ta = c * a, tb = c * b;
    vm_d ah = ta - (ta - a), bh = tb - (tb - b);
    vm_d al = a - ah, bl = b - bh;
    return ((ah * bh - p) + ah * bl + al * bh) + al * bl;
}
#endif
/* exp(hi + lo), |hi + lo| <= 708, |lo| small against hi's ulp scale allowed */
static inline vm_d vm_exp_hl(vm_d hi, vm_d lo) {
    vm_d k;
    vm_d s = vm_split(hi + lo, &k);
    vm_d r = ((hi - k * vm_set(6.93147180369123816490e-01)) + lo)
             - k * vm_set(1.90821492927058770002e-10);
    return s + s * vm_expm1_poly(r);
}
static inline vm_l vm_gelu_ok(vm_d x) { return vm_abs(x) <= vm_set(37.0); }  /* false: NaN */
/* Phi(x) for |x| <= 37 */
static inline vm_d vm_phi_v(vm_d x) {
    const vm_d one = vm_set(1.0), half = vm_set(0.5), zero = vm_set(0.0);
    vm_d z = -x * vm_set(VM_SQRT1_2);
    vm_d dz = vm_prod_err(-x, vm_set(VM_SQRT1_2), z) - x * vm_set(VM_SQRT1_2_LO);
    vm_d a = vm_abs(z);
    vm_l neg = z < zero;
    vm_d da = vm_sel(neg, -dz, dz);           /* |z_exact| = a + da */
    vm_l m_s = a < vm_set(0.84375), m_m = ~m_s & (a < vm_set(1.25)), m_t = ~(m_s | m_m);
    vm_d ec = zero;                           /* erfc(z_exact) */
    if (vm_any(m_s)) {
        vm_d t = z * z;
        vm_d r = vm_set(-2.37630166566501626084e-05);
        r = r * t + vm_set(-5.77027029648944159157e-03);
        r = r * t + vm_set(-2.84817495755985104766e-02);
        r = r * t + vm_set(-3.25042107247001499370e-01);
        r = r * t + vm_set(1.28379167095512558561e-01);
        vm_d q = vm_set(-3.96022827877536812320e-06);
        q = q * t + vm_set(1.32494738004321644526e-04);
        q = q * t + vm_set(5.08130628187576562776e-03);
        q = q * t + vm_set(6.50222499887672944485e-02);
        q = q * t + vm_set(3.97917223959155352819e-01);
        q = q * t + one;
        vm_d y = r / q;
        vm_d w = z * y + dz * (one + y);      /* erf(z + dz) = z + w */
        vm_d e1 = one - (z + w), e2 = half - ((z - half) + w);
        ec = vm_sel(m_s, vm_sel(z < vm_set(0.25), e1, e2), ec);
    }
    if (vm_any(m_m)) {
        vm_d s = (a - one) + da;
        vm_d p = vm_set(-2.16637559486879084300e-03);
        p = p * s + vm_set(3.54783043256182359371e-02);
        p = p * s + vm_set(-1.10894694282396677476e-01);
        p = p * s + vm_set(3.18346619901161753674e-01);
        p = p * s + vm_set(-3.72207876035701323847e-01);
        p = p * s + vm_set(4.14856118683748331666e-01);
        p = p * s + vm_set(-2.36211856075265944077e-03);
        vm_d q = vm_set(1.19844998467991074170e-02);
        q = q * s + vm_set(1.36370839120290507362e-02);
        q = q * s + vm_set(1.26171219808761642112e-01);
        q = q * s + vm_set(7.18286544141962662868e-02);
        q = q * s + vm_set(5.40397917702171048937e-01);
        q = q * s + vm_set(1.06420880400844228286e-01);
        q = q * s + one;
        vm_d pq = p / q;
        const vm_d erx = vm_set(8.45062911510467529297e-01);
        vm_d e = vm_sel(neg, one + (erx + pq), (one - erx) - pq);
        ec = vm_sel(m_m, e, ec);
    }
    if (vm_any(m_t)) {
        vm_d at = vm_sel(m_t, a, vm_set(2.0)), inv = one / at;
        vm_d s = inv * inv;
        vm_l m_a = at < vm_set(1.0 / 0.35);
        vm_d rs = zero;
        if (vm_any(m_t & m_a)) {
            vm_d r = vm_set(-9.81432934416914548592e+00);
            r = r * s + vm_set(-8.12874355063065934246e+01);
            r = r * s + vm_set(-1.84605092906711035994e+02);
            r = r * s + vm_set(-1.62396669462573470355e+02);
            r = r * s + vm_set(-6.23753324503260060396e+01);
            r = r * s + vm_set(-1.05586262253232909814e+01);
            r = r * s + vm_set(-6.93858572707181764372e-01);
            r = r * s + vm_set(-9.86494403484714822705e-03);
            vm_d q = vm_set(-6.04244152148580987438e-02);
            q = q * s + vm_set(6.57024977031928170135e+00);
            q = q * s + vm_set(1.08635005541779435134e+02);
            q = q * s + vm_set(4.29008140027567833386e+02);
            q = q * s + vm_set(6.45387271733267880336e+02);
            q = q * s + vm_set(4.34565877475229228821e+02);
            q = q * s + vm_set(1.37657754143519042600e+02);
            q = q * s + vm_set(1.96512716674392571292e+01);
            q = q * s + one;
            rs = r / q;
        }
        if (vm_any(m_t & ~m_a)) {
            vm_d r = vm_set(-4.83519191608651397019e+02);
            r = r * s + vm_set(-1.02509513161107724954e+03);
            r = r * s + vm_set(-6.37566443368389627722e+02);
            r = r * s + vm_set(-1.60636384855821916062e+02);
            r = r * s + vm_set(-1.77579549177547519889e+01);
            r = r * s + vm_set(-7.99283237680523006574e-01);
            r = r * s + vm_set(-9.86494292470009928597e-03);
            vm_d q = vm_set(-2.24409524465858183362e+01);
            q = q * s + vm_set(4.74528541206955367215e+02);
            q = q * s + vm_set(2.55305040643316442583e+03);
            q = q * s + vm_set(3.19985821950859553908e+03);
            q = q * s + vm_set(1.53672958608443695994e+03);
            q = q * s + vm_set(3.25792512996573918826e+02);
            q = q * s + vm_set(3.03380607434824582924e+01);
            q = q * s + one;
            rs = vm_sel(m_a, rs, r / q);
        }
        vm_d h = at * at, l = vm_prod_err(at, at, h);
        vm_d dat = vm_sel(m_t, da, zero);
        /* exp(-(a + da)^2 - 0.5625 + R/S) / (a + da) */
        vm_d e = vm_exp_hl(-h, ((rs - vm_set(0.5625)) - l) - vm_set(2.0) * at * dat);
        vm_d q = e * inv;
        q = q - q * (dat * inv);
        ec = vm_sel(m_t, vm_sel(neg, vm_set(2.0) - q, q), ec);
    }
    return half * ec;
}
/* exp(-x^2/2) for |x| <= 37, x^2 split exactly */
static inline vm_d vm_gauss_v(vm_d x) {
    vm_d h = x * x, l = vm_prod_err(x, x, h);
    return vm_exp_hl(vm_set(-0.5) * h, vm_set(-0.5) * l);
}

static inline double vm_scalar(int op, double x, double g, double a) {
    switch (op) {
    case VM_ELU: return x > 0 || x != x ? x : a * expm1(x);
    case VM_TANH: return tanh(x);
    case VM_SIGMOID: return vm_sigmoid_s(x);
    case VM_EXP: return exp(x);
    case VM_ELU_B: return x <= 0 ? g * (a * exp(x)) : g;
    case VM_GELU: return vm_gelu_s(x);
    case VM_GELU_B: return g * vm_gelu_b_s(x);
    case VM_GELU_TANH:
        return x * vm_sigmoid_s(2.0 * VM_SQRT_2_OVER_PI * (x + VM_GELU_C * x * x * x));
    case VM_GELU_TANH_B: {     /* the float32 kernels' fallback (NaN, inf): as the vector form */
        double s = vm_sigmoid_s(2.0 * VM_SQRT_2_OVER_PI * (x + VM_GELU_C * x * x * x));
        double du = VM_SQRT_2_OVER_PI * (1.0 + 3.0 * VM_GELU_C * x * x);
        return g * (s * (1.0 - s) == 0.0 ? s : s + 2.0 * x * (s * (1.0 - s)) * du);
    }
    default: return NAN;
    }
}

/* ---- vector forms of the exp-based functions; *bad marks lanes to redo in scalar */
static inline vm_d vm_sigmoid_v(vm_d x, vm_l *bad) {
    vm_d ax = vm_abs(x);
    vm_l ok = ax <= vm_set(708.0);
    *bad = ~ok;
    vm_d t = vm_exp_in(vm_sel(ok, -ax, vm_set(0.0)));  /* exp(-|x|) */
    vm_d s = vm_set(1.0) / (vm_set(1.0) + t);
    return vm_sel(x >= vm_set(0.0), s, t * s);
}
static inline vm_d vm_tanh_v(vm_d x, vm_l *bad) {
    /* tanh|x| = e / (e + 2), e = expm1(2|x|): accurate near 0; |x| >= 20 gives 1 exactly */
    vm_d ax = vm_abs(x);
    *bad = x != x;
    ax = vm_sel(ax < vm_set(20.0), ax, vm_set(20.0));
    vm_d e = vm_expm1_in(ax + ax);
    vm_d t = e / (e + vm_set(2.0));
    return (vm_d)((vm_l)t | ((vm_l)x & (vm_l)vm_set(-0.0)));
}

/* Apply a forward op to n elements: one template per storage type T (double, float). */
#define VM_DEFINE_UNARY(T, N, LD, ST)                                                         \
static inline vm_d vm_unary_v_##N(int op, vm_d x, double a, vm_l *bad) {                   \
    const vm_d zero = vm_set(0.0);                                                          \
    *bad = (vm_l){0, 0, 0, 0};                                                              \
    switch (op) {                                                                           \
    case VM_ELU: {                                                                          \
        vm_d xc = vm_sel(x < zero, x, zero);                                                \
        xc = vm_sel(xc > vm_set(-40.0), xc, vm_set(-40.0)); /* expm1 = -1 below -37.5 */    \
        vm_d em = vm_set(a) * vm_expm1_in(xc);                                              \
        return vm_sel((x > zero) | (x != x), x, em);                                        \
    }                                                                                       \
    case VM_GELU_TANH: {                                                                    \
        /* 0.5 x (1 + tanh u) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3) */       \
        vm_d u = vm_set(2.0 * VM_SQRT_2_OVER_PI) * (x + vm_set(VM_GELU_C) * x * x * x);    \
        vm_l b2;                                                                            \
        vm_d s = vm_sigmoid_v(u, &b2);                                                      \
        vm_d big = vm_sel(u > zero, vm_set(1.0), zero);  /* |2u| > 708: sigmoid is 0 or 1 */\
        s = vm_sel(b2 & (u == u), big, s);                                                  \
        return x * s;                                                                       \
    }                                                                                       \
    case VM_GELU: {            /* x Phi(x); |x| > 37, NaN: scalar */                        \
        vm_l ok = vm_gelu_ok(x);                                                            \
        *bad = ~ok;                                                                         \
        vm_d xs = vm_sel(ok, x, zero);                                                      \
        return xs * vm_phi_v(xs);                                                           \
    }                                                                                       \
    case VM_TANH: return vm_tanh_v(x, bad);                                                 \
    case VM_SIGMOID: return vm_sigmoid_v(x, bad);                                           \
    case VM_EXP: {                                                                          \
        vm_l ok = vm_in_range(x);                                                           \
        *bad = ~ok;                                                                         \
        return vm_exp_in(vm_sel(ok, x, zero));                                              \
    }                                                                                       \
    default: return x;                                                                      \
    }                                                                                       \
}                                                                                           \
static void vm_unary_##N(int op, const T *x, T *y, ptrdiff_t n, double a) {                \
    ptrdiff_t i;                                                                            \
    if (op == VM_RELU) {       /* NaN < 0 is false: NaN is kept */                          \
        for (i = 0; i < n; i++) y[i] = x[i] < 0 ? (T)0 : x[i];                              \
        return;                                                                             \
    }                                                                                       \
    if (op == VM_LEAKY_RELU) {                                                              \
        const T s = (T)a;      /* multiply unconditionally: a select gcc can vectorise */   \
        for (i = 0; i < n; i++) { T v = x[i], m = v * s; y[i] = v > 0 ? v : m; }            \
        return;                                                                             \
    }                                                                                       \
    for (i = 0; i < n; i += VM_LANES) {                                                     \
        T in[VM_LANES], out[VM_LANES];                                                      \
        const T *px = x + i;                                                                \
        T *py = y + i;                                                                      \
        ptrdiff_t m = n - i < VM_LANES ? n - i : VM_LANES;                                  \
        if (m < VM_LANES) {    /* tail: pad a local vector */                               \
            for (ptrdiff_t j = 0; j < VM_LANES; j++) in[j] = j < m ? x[i + j] : (T)0;       \
            px = in;                                                                        \
            py = out;                                                                       \
        }                                                                                   \
        vm_l bad;                                                                           \
        vm_d r = vm_unary_v_##N(op, LD(px), a, &bad);                                       \
        if (vm_any(bad)) {                                                                  \
            for (int j = 0; j < VM_LANES; j++)                                              \
                if (bad[j]) r[j] = vm_scalar(op, (double)px[j], 0.0, a);                    \
        }                                                                                   \
        ST(py, r);                                                                          \
        if (m < VM_LANES)                                                                   \
            for (ptrdiff_t j = 0; j < m; j++) y[i + j] = out[j];                            \
    }                                                                                       \
}                                                                                           \
static void vm_binary_##N(int op, const T *g, const T *x, T *dx, ptrdiff_t n, double a) {  \
    ptrdiff_t i;                                                                            \
    const vm_d zero = vm_set(0.0), one = vm_set(1.0);                                       \
    switch (op) {                                                                           \
    case VM_RELU_B:            /* x > 0: NaN stops the gradient, as the fused kernels */    \
        for (i = 0; i < n; i++) dx[i] = x[i] > 0 ? g[i] : (T)0;                             \
        return;                                                                             \
    case VM_LEAKY_RELU_B: {                                                                 \
        const T s = (T)a;                                                                   \
        for (i = 0; i < n; i++) { T m = g[i] * s; dx[i] = x[i] > 0 ? g[i] : m; }            \
        return;                                                                             \
    }                                                                                       \
    case VM_TANH_B:            /* y = tanh(x): dx = g (1 - y^2) */                          \
        for (i = 0; i < n; i++) dx[i] = (T)((double)g[i] * (1.0 - (double)x[i] * x[i]));    \
        return;                                                                             \
    case VM_SIGMOID_B:         /* y = sigmoid(x): dx = g y (1 - y) */                       \
        for (i = 0; i < n; i++)                                                             \
            dx[i] = (T)((double)g[i] * ((1.0 - (double)x[i]) * (double)x[i]));              \
        return;                                                                             \
    default: break;                                                                         \
    }                                                                                       \
    for (i = 0; i < n; i += VM_LANES) {                                                     \
        T in[VM_LANES], gin[VM_LANES], out[VM_LANES];                                       \
        const T *px = x + i, *pg = g + i;                                                   \
        T *pd = dx + i;                                                                     \
        ptrdiff_t m = n - i < VM_LANES ? n - i : VM_LANES;                                  \
        if (m < VM_LANES) {                                                                 \
            for (ptrdiff_t j = 0; j < VM_LANES; j++) {                                      \
                in[j] = j < m ? x[i + j] : (T)0;                                            \
                gin[j] = j < m ? g[i + j] : (T)0;                                           \
            }                                                                               \
            px = in; pg = gin; pd = out;                                                    \
        }                                                                                   \
        vm_d xv = LD(px), gv = LD(pg), r;                                                   \
        vm_l bad = (vm_l){0, 0, 0, 0};                                                      \
        if (op == VM_GELU_B) { /* g (Phi(x) + x exp(-x^2/2) / sqrt(2 pi)) */                \
            bad = ~vm_gelu_ok(xv);                                                          \
            vm_d xs = vm_sel(bad, zero, xv);                                                \
            r = gv * (vm_phi_v(xs) + xs * (vm_set(VM_INV_SQRT_2PI) * vm_gauss_v(xs)));     \
        } else if (op == VM_ELU_B) {  /* dx = g for x > 0, g * a * exp(x) otherwise */      \
            vm_l neg = xv <= zero;                                                          \
            bad = neg & (xv < vm_set(-708.0));                                              \
            vm_d e = vm_exp_in(vm_sel(neg & ~bad, xv, zero));                               \
            r = vm_sel(neg, gv * (vm_set(a) * e), vm_sel(xv != xv, xv, gv)); /* NaN: NaN */ \
        } else {               /* VM_GELU_TANH_B: s = sigmoid(2u), dx = g (s + 2 x s (1-s) u') */ \
            vm_d x2 = xv * xv;                                                              \
            vm_d u = vm_set(2.0 * VM_SQRT_2_OVER_PI) * (xv + vm_set(VM_GELU_C) * x2 * xv); \
            vm_l b2;                                                                        \
            vm_d s = vm_sigmoid_v(u, &b2);                                                  \
            s = vm_sel(b2 & (u == u), vm_sel(u > zero, one, zero), s);                      \
            vm_d du = vm_set(VM_SQRT_2_OVER_PI) * (one + vm_set(3.0 * VM_GELU_C) * x2);    \
            vm_d d = s + vm_set(2.0) * xv * (s * (one - s)) * du;                           \
            d = vm_sel(s * (one - s) == zero, s, d);  /* saturated: no inf * 0 */           \
            r = gv * d;                                                                     \
        }                                                                                   \
        if (vm_any(bad)) {                                                                  \
            for (int j = 0; j < VM_LANES; j++)                                              \
                if (bad[j]) r[j] = vm_scalar(op, (double)px[j], (double)pg[j], a);          \
        }                                                                                   \
        ST(pd, r);                                                                          \
        if (m < VM_LANES)                                                                   \
            for (ptrdiff_t j = 0; j < m; j++) dx[i + j] = out[j];                           \
    }                                                                                       \
}

VM_DEFINE_UNARY(double, double, vm_ld_d, vm_st_d)
VM_DEFINE_UNARY(float, floatw, vm_ld_f, vm_st_f)  /* float32 widened to double */
/* ---- float32 kernels -------------------------------------------------------------------------
 *
 * ELU, tanh and sigmoid (forward) and the ELU backward work in float32 itself, eight lanes per
 * 32-byte vector: their argument is the input element, exact, so float arithmetic is enough for
 * results within ~1 ulp (measured: see tests/test_activation.py).
 *
 *   x = n*ln2 + r, n = round(x log2 e), |r| <= ln2/2 (Cody-Waite: LN2F_HI has 15 bits, n*LN2F_HI
 *   is exact for |n| < 2^9);  expm1(r) = r + r^2 (c2 + c3 r + ... + c7 r^5), c_k fitted (weighted
 *   least squares on Chebyshev nodes, relative error 2.4e-9 with the float32 coefficients);
 *   exp(x) = 2^n + 2^n expm1(r),  expm1(x) = (2^n - 1) + 2^n expm1(r)  for |x| <= 87.
 *   sigmoid(x) = (x >= 0 ? 1 : t) / (1 + t), t = exp(-|x|) (one division, no overflow)
 *   tanh|x| = |x| + |x|^3 Q(|x|^2) for |x| < 0.55 (Q fitted as above, 3.3e-9), else
 *             1 - 2 / (exp(2|x|) + 1) (|x| clamped at 9.5, where float32 tanh is 1); sign of x.
 * Lanes outside the range (|x| > 87 for sigmoid and the ELU gradient, NaN) are redone in double
 * with the C library, as the widened path does.
 *
 * GELU (both forms) is computed in double from float32 data, four lanes at a time, with
 * approximations good to ~1e-10 relative (float32 needs 6e-8): the argument of tanh/erfc is a
 * computed quantity whose rounding float32 arithmetic would amplify (by up to 2u^2 for erfc).
 *   exp: as above with expm1(r) to degree 8 (Taylor, error < 3e-10)
 *   Phi(x) = 1/2 + x P(x^2)                       for |x| <= 2 (P degree 10, error 1.6e-10)
 *   Phi(-u) = exp(-u^2/2) G(1 / (1 + u/2))        for 2 < u <= 14.5 (G degree 10, 3.6e-11),
 *   Phi(-u) = 0 beyond (x Phi(x) is below the float32 subnormals there), Phi(u) = 1 - Phi(-u).
 */
typedef float vm_f __attribute__((vector_size(32)));
typedef int32_t vm_i __attribute__((vector_size(32)));
#define VF_LANES 8

static inline vm_f vf_set(float v) { return (vm_f){v, v, v, v, v, v, v, v}; }
static inline vm_f vf_ld(const float *p) { vm_f v; memcpy(&v, p, sizeof v); return v; }
static inline void vf_st(float *p, vm_f v) { memcpy(p, &v, sizeof v); }
static inline vm_f vf_sel(vm_i m, vm_f a, vm_f b) {
    return (vm_f)((m & (vm_i)a) | (~m & (vm_i)b));
}
static inline vm_f vf_abs(vm_f x) { return (vm_f)((vm_i)x & ~(vm_i)vf_set(-0.0f)); }
static inline int vf_any(vm_i m) {
    vm_l w; memcpy(&w, &m, sizeof w);
    return ((w[0] | w[1]) | (w[2] | w[3])) != 0;
}

#define VF_LN2_HI 0x1.62e4p-1f     /* 15 bits: n * VF_LN2_HI is exact for |n| < 2^9 */
#define VF_LN2_LO 0x1.7f7d1cp-20f  /* ln2 - VF_LN2_HI */

/* expm1(r) for |r| <= ln2/2 (a little beyond is fine): r + r^2 (c2 + c3 r + ... + c7 r^5) */
static inline vm_f vf_expm1_poly(vm_f r) {
    vm_f q = vf_set(0.00019851791148539633f);
    q = q * r + vf_set(0.0013942025834694505f);
    q = q * r + vf_set(0.008333380334079266f);
    q = q * r + vf_set(0.04166634380817413f);
    q = q * r + vf_set(0.1666666567325592f);
    q = q * r + vf_set(0.5f);
    return r + (r * r) * q;
}
/* expm1(r) and 2^n for |x| <= 87 */
static inline vm_f vf_reduce(vm_f x, vm_f *scale) {
    const vm_f shifter = vf_set(0x1.8p23f);
    vm_f t = x * vf_set(1.44269504088896341f) + shifter;
    vm_f k = t - shifter;
    vm_i ki = (vm_i)t - (vm_i)shifter;
    *scale = (vm_f)((ki + 127) << 23);
    return vf_expm1_poly((x - k * vf_set(VF_LN2_HI)) - k * vf_set(VF_LN2_LO));
}
static inline vm_f vf_exp_in(vm_f x) { vm_f s; vm_f p = vf_reduce(x, &s); return s + s * p; }
static inline vm_f vf_expm1_in(vm_f x) {
    vm_f s; vm_f p = vf_reduce(x, &s); return (s - vf_set(1.0f)) + s * p;
}

static inline vm_f vf_elu(vm_f x, float a, vm_i *bad) {
    const vm_f zero = vf_set(0.0f);
    vm_f xc = vf_sel(x < zero, x, zero);
    xc = vf_sel(xc > vf_set(-40.0f), xc, vf_set(-40.0f));   /* expm1 is -1 below -17.4 */
    vm_f em = vf_set(a) * vf_expm1_in(xc);
    *bad = (vm_i){0};
    return vf_sel((x > zero) | (x != x), x, em);
}
static inline vm_f vf_sigmoid(vm_f x, vm_i *bad) {
    vm_f ax = vf_abs(x);
    vm_i ok = ax <= vf_set(87.0f);
    *bad = ~ok;
    vm_f t = vf_exp_in(vf_sel(ok, -ax, vf_set(0.0f)));
    return vf_sel(x >= vf_set(0.0f), vf_set(1.0f), t) / (vf_set(1.0f) + t);
}
static inline vm_f vf_tanh(vm_f x, vm_i *bad) {
    vm_f ax = vf_abs(x);
    vm_f x2 = ax * ax;
    vm_f q = vf_set(-0.006287678610533476f);
    q = q * x2 + vf_set(0.021082071587443352f);
    q = q * x2 + vf_set(-0.05385512486100197f);
    q = q * x2 + vf_set(0.13332617282867432f);
    q = q * x2 + vf_set(-0.33333319425582886f);
    vm_f ts = ax + (ax * x2) * q;
    vm_f ac = vf_sel(ax < vf_set(9.5f), ax, vf_set(9.5f));
    vm_f tb = vf_set(1.0f) - vf_set(2.0f) / (vf_exp_in(ac + ac) + vf_set(1.0f));
    vm_f t = vf_sel(ax < vf_set(0.55f), ts, tb);
    t = (vm_f)((vm_i)t | ((vm_i)x & (vm_i)vf_set(-0.0f)));
    *bad = (vm_i){0};
    return vf_sel(x != x, x, t);
}
/* dx = g for x > 0 (NaN: NaN), g * a * exp(x) otherwise */
static inline vm_f vf_elu_b(vm_f g, vm_f x, float a, vm_i *bad) {
    const vm_f zero = vf_set(0.0f);
    vm_i neg = x <= zero;
    *bad = neg & (x < vf_set(-87.0f));
    vm_f e = vf_exp_in(vf_sel(neg & ~*bad, x, zero));
    return vf_sel(neg, g * (vf_set(a) * e), vf_sel(x != x, x, g));
}

/* ---- exact GELU in float32, eight lanes.
 *
 * With u = |x| and phi the normal density, Phi(-u) = exp(-u^2/2) G(u), G(u) = Phi(-u) / (sqrt(2pi)
 * phi(u)) (the Mills ratio over sqrt(2pi): smooth, from 1/2 at 0 to ~ 0.4/u). G is a degree-8
 * polynomial in v = u - m_i on each of eight intervals of u,
 *   [0, .5) [.5, 1) [1, 2) [2, 3) [3, 5) [5, 7) [7, 11) [11, 15)
 * (m_i: 0, .75, 1.5, 2.5, 4, 6, 9, 13)
 * picked from the exponent and first mantissa bit of u + 1, the coefficients of each lane fetched
 * with one shuffle per degree (vpermps). Coefficients fitted here (iteratively reweighted least
 * squares for the minimax relative error, each coefficient rounded to float32 from the top degree
 * down and the lower ones refitted; float32 Horner evaluation within 1.4 ulp of G). u - m_i is
 * exact (m_i has few bits and u lies near it).
 * exp(-u^2/2): u^2 = h + l split exactly, -h/2 reduced by Cody-Waite (exact), the -l/2 added to
 * the reduced argument; 2^n is applied as two factors 2^(n/2) so that results far in the tail
 * (u up to 14.75, n down to -157) round once into the float32 subnormals.
 *   forward   x < 0: -(u G (1 + p)) 2^n        x >= 0: x - x Phi(-u)
 *   backward  x < 0: g w 2^n, w = (G - u/sqrt(2pi)) (1 + p)      x >= 0: g - g w 2^n
 * (exp(-u^2/2) = (1 + p) 2^n). u is clamped at 14.75, where both results are below the smallest
 * subnormal; NaN and +-inf lanes are redone in double.
 */
static const float VF_MILLS_MID[8] = {0.0f, 0.75f, 1.5f, 2.5f, 4.0f, 6.0f, 9.0f, 13.0f};
static const float VF_MILLS[9][8] = {   /* VF_MILLS[j][i]: coefficient of v^j on interval i */
    {0.5f, 0.30023247f, 0.20578067f, 0.14133133f,
     0.09441064f, 0.06477931f, 0.04379879f, 0.030509414f},
    {-0.3989423f, -0.17376794f, -0.09027128f, -0.045613952f,
     -0.021299714f, -0.010266394f, -0.00475318f, -0.002319892f},
    {0.24999994f, 0.084953256f, 0.035186876f, 0.013648226f,
     0.0046058903f, 0.0015904738f, 0.0005100819f, 0.00017540948f},
    {-0.13297954f, -0.036684334f, -0.012497041f, -0.0038311346f,
     -0.0009587387f, -0.00024118487f, -5.4149896e-05f, -1.31896095e-05f},
    {0.06248736f, 0.014360001f, 0.004110346f, 0.001017601f,
     0.0001927565f, 3.5842713e-05f, 5.688049e-06f, 9.863661e-07f},
    {-0.02652215f, -0.005182547f, -0.0012655493f, -0.00025734882f,
     -3.746633e-05f, -5.2221453e-06f, -5.8955214e-07f, -7.330799e-08f},
    {0.010157984f, 0.0017454459f, 0.00036838988f, 6.232853e-05f,
     7.088975e-06f, 7.477143e-07f, 6.071085e-08f, 5.424321e-09f},
    {-0.003256315f, -0.00056015875f, -0.00010587598f, -1.4916678e-05f,
     -1.4029039e-06f, -1.09867784e-07f, -6.809125e-09f, -4.1946072e-10f},
    {0.000642519f, 0.00016769681f, 2.773407e-05f, 3.3328092e-06f,
     2.495578e-07f, 1.5158966e-08f, 6.8523637e-10f, 3.068536e-11f},
};
#if defined(__FMA__)
static inline vm_f vf_prod_err(vm_f a, vm_f b, vm_f p) {   /* a * b - p exactly */
    return (vm_f)_mm256_fmsub_ps((__m256)a, (__m256)b, (__m256)p);
}
#else
static inline vm_f vf_prod_err(vm_f a, vm_f b, vm_f p) {   /* Dekker, Veltkamp splitting */
    const vm_f c = vf_set(4097.0f);   /* 2^12 + 1 */
    vm_f ta = c * a, tb = c * b;
    vm_f ah = ta - (ta - a), bh = tb - (tb - b);
    vm_f al = a - ah, bl = b - bh;
    return ((ah * bh - p) + ah * bl + al * bh) + al * bl;
}
#endif
static inline vm_f vf_lookup(const float *table, vm_i idx) {   /* table[idx], idx in [0, 8) */
#if defined(__AVX2__)
    return (vm_f)_mm256_permutevar8x32_ps((__m256)vf_ld(table), (__m256i)idx);
#else
    return __builtin_shuffle(vf_ld(table), idx);
#endif
}
/* G(u) for 0 <= u <= 14.75 */
static inline vm_f vf_mills(vm_f u) {
    vm_i idx = ((vm_i)(u + vf_set(1.0f)) >> 22) - 254;   /* (exponent of u+1) * 2 + mantissa bit */
    vm_f v = u - vf_lookup(VF_MILLS_MID, idx);
    vm_f p = vf_lookup(VF_MILLS[8], idx);
    for (int j = 7; j >= 0; j--) p = p * v + vf_lookup(VF_MILLS[j], idx);
    return p;
}
/* exp(-u^2/2) = (1 + p) * s * s2 for 0 <= u <= 14.75; returns p */
static inline vm_f vf_gauss_split(vm_f u, vm_f *s, vm_f *s2) {
    const vm_f shifter = vf_set(0x1.8p23f);
    vm_f h = u * u, l = vf_prod_err(u, u, h);
    vm_f a = vf_set(-0.5f) * h;
    vm_f t = a * vf_set(1.44269504088896341f) + shifter;
    vm_f k = t - shifter;
    vm_i n = (vm_i)t - (vm_i)shifter, n1 = n >> 1;
    *s = (vm_f)((n1 + 127) << 23);
    *s2 = (vm_f)((n - n1 + 127) << 23);
    return vf_expm1_poly(((a - k * vf_set(VF_LN2_HI)) - k * vf_set(VF_LN2_LO))
                         - vf_set(0.5f) * l);
}
static inline vm_i vf_neg(vm_f x) { return (vm_i)x < (vm_i){0}; }   /* sign bit, -0.0 too */
static inline vm_f vf_gelu(vm_f x, vm_i *bad) {
    vm_f ax = vf_abs(x);
    *bad = ~(ax <= vf_set(3.4028234e38f));   /* NaN, +-inf */
    vm_f u = vf_sel(ax < vf_set(14.75f), ax, vf_set(14.75f)), s, s2;
    vm_f p = vf_gauss_split(u, &s, &s2);
    vm_f gm = vf_mills(u);
    gm = gm + gm * p;                        /* Phi(-u) / 2^n */
    vm_f yn = -(((u * gm) * s) * s2);
    vm_f yp = x - x * ((gm * s) * s2);
    return vf_sel(vf_neg(x), yn, yp);
}
static inline vm_f vf_gelu_b(vm_f g, vm_f x, vm_i *bad) {
    vm_f ax = vf_abs(x);
    *bad = ~(ax <= vf_set(3.4028234e38f));
    vm_f u = vf_sel(ax < vf_set(14.75f), ax, vf_set(14.75f)), s, s2;
    vm_f p = vf_gauss_split(u, &s, &s2);
    vm_f w = vf_mills(u) - u * vf_set(0.398942280401432678f);
    w = w + w * p;                           /* (Phi(-u) - u phi(u)) / 2^n */
    vm_f dn = ((g * w) * s) * s2;
    vm_f dp = g - g * ((w * s) * s2);
    return vf_sel(vf_neg(x), dn, dp);
}

/* ---- GELU, tanh form, in float32: x * sigmoid(v), v = 2 sqrt(2/pi) (x + 0.044715 x^3).
 *
 * v is a computed quantity: its rounding in float32 would be amplified by |v| in exp(-|v|). So
 * w = |v| and its Cody-Waite reduction w = n ln2 - r... are done in double, four lanes at a time
 * (x^3 of a float32 is nearly exact there), and only r (|r| <= ln2/2) is rounded to float32;
 * exp(-w) = (1 + p) 2^n, p = expm1(r), is finished in float32, eight lanes at a time, with 2^n
 * applied as two factors (n down to -206 at |x| = 12, past which the function is x or -0).
 * With t = exp(-w) and 1 / (1 + t) = sigmoid(w):
 *   forward   x >= 0: x / (1 + t)            x < 0: (x (1 + p) / (1 + t)) 2^n
 *   backward  s(1 - s) = t / (1 + t)^2,  v' = 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2):
 *             x >= 0: g (1 + x v' t / (1 + t)) / (1 + t)
 *             x < 0:  (g (1 + p) (1 + x v' / (1 + t)) / (1 + t)) 2^n
 * x is clamped to [-12, 12] except where it multiplies 1 / (1 + t) for x >= 0; NaN and +-inf
 * lanes are redone in double.
 */
typedef int32_t vm_i4 __attribute__((vector_size(16)));
/* halves of an eight-lane vector and back: register moves with AVX (a round trip through memory
   would stall on store forwarding), memory in the generic build */
#if defined(__AVX__)
static inline vm_f4 vf_half(vm_f v, int h) {
    return (vm_f4)(h ? _mm256_extractf128_ps((__m256)v, 1) : _mm256_castps256_ps128((__m256)v));
}
static inline vm_f vf_join(vm_f4 lo, vm_f4 hi) {
    return (vm_f)_mm256_insertf128_ps(_mm256_castps128_ps256((__m128)lo), (__m128)hi, 1);
}
static inline vm_i vi_join(vm_i4 lo, vm_i4 hi) {
    return (vm_i)_mm256_insertf128_si256(_mm256_castsi128_si256((__m128i)lo), (__m128i)hi, 1);
}
#else
static inline vm_f4 vf_half(vm_f v, int h) {
    vm_f4 r; memcpy(&r, (const char *)&v + 16 * h, sizeof r); return r;
}
static inline vm_f vf_join(vm_f4 lo, vm_f4 hi) {
    vm_f r; memcpy(&r, &lo, 16); memcpy((char *)&r + 16, &hi, 16); return r;
}
static inline vm_i vi_join(vm_i4 lo, vm_i4 hi) {
    vm_i r; memcpy(&r, &lo, 16); memcpy((char *)&r + 16, &hi, 16); return r;
}
#endif
/* -w = -|v(x)| reduced: returns r (float32) and n, for |x| <= 12 */
static inline vm_f vf_gelu_tanh_reduce(vm_f ax, vm_i *n) {
    vm_f4 rh[2];
    vm_i4 nh[2];
    for (int h = 0; h < 2; h++) {
        vm_d xd = __builtin_convertvector(vf_half(ax, h), vm_d);
        vm_d w = -(xd * (vm_set(2.0 * VM_SQRT_2_OVER_PI)
                         + vm_set(2.0 * VM_SQRT_2_OVER_PI * VM_GELU_C) * (xd * xd)));
        vm_d k;
        vm_split(w, &k);
        vm_d r = (w - k * vm_set(6.93147180369123816490e-01))
                 - k * vm_set(1.90821492927058770002e-10);
        rh[h] = __builtin_convertvector(r, vm_f4);
        nh[h] = __builtin_convertvector(k, vm_i4);
    }
    *n = vi_join(nh[0], nh[1]);
    return vf_join(rh[0], rh[1]);
}
static inline vm_f vf_clamp12(vm_f x) {
    vm_f c = vf_sel(x < vf_set(12.0f), x, vf_set(12.0f));
    return vf_sel(c > vf_set(-12.0f), c, vf_set(-12.0f));
}
/* p and the factors 2^n1, 2^n2 (n1 + n2 = n) of exp(-|v|) = (1 + p) 2^n, xc in [-12, 12] */
static inline vm_f vf_gelu_tanh_exp(vm_f xc, vm_f *s1, vm_f *s2) {
    vm_i n;
    vm_f r = vf_gelu_tanh_reduce(vf_abs(xc), &n);
    vm_i n1 = n >> 1;
    *s1 = (vm_f)((n1 + 127) << 23);
    *s2 = (vm_f)((n - n1 + 127) << 23);
    return vf_expm1_poly(r);
}
static inline vm_f vf_gelu_tanh(vm_f x, vm_i *bad) {
    *bad = ~(vf_abs(x) <= vf_set(3.4028234e38f));   /* NaN, +-inf */
    vm_f xc = vf_clamp12(vf_sel(*bad, vf_set(0.0f), x)), s1, s2;
    vm_f p = vf_gelu_tanh_exp(xc, &s1, &s2);
    vm_f d = vf_set(1.0f) + (s1 + s1 * p) * s2;     /* 1 + t */
    vm_f yn = (((xc + xc * p) / d) * s1) * s2;
    return vf_sel(vf_neg(x), yn, x / d);
}
static inline vm_f vf_gelu_tanh_b(vm_f g, vm_f x, vm_i *bad) {
    *bad = ~(vf_abs(x) <= vf_set(3.4028234e38f));
    vm_f xc = vf_clamp12(vf_sel(*bad, vf_set(0.0f), x)), s1, s2;
    vm_f p = vf_gelu_tanh_exp(xc, &s1, &s2);
    vm_f t = (s1 + s1 * p) * s2;
    vm_f inv = vf_set(1.0f) / (vf_set(1.0f) + t);
    vm_f xv = xc * (vf_set((float)(2.0 * VM_SQRT_2_OVER_PI))
                    + vf_set((float)(6.0 * VM_SQRT_2_OVER_PI * VM_GELU_C)) * (xc * xc));
    vm_f dp = g * ((vf_set(1.0f) + (xv * t) * inv) * inv);
    vm_f dn = ((g * ((inv + inv * p) * (vf_set(1.0f) + xv * inv))) * s1) * s2;
    return vf_sel(vf_neg(x), dn, dp);
}

/* load VF_LANES floats of p + i (m valid ones, the rest 0) */
static inline vm_f vf_ld_part(const float *p, ptrdiff_t m) {
    float b[VF_LANES] = {0};
    if (m == VF_LANES) return vf_ld(p);
    for (ptrdiff_t j = 0; j < m; j++) b[j] = p[j];
    return vf_ld(b);
}
static inline void vf_st_part(float *p, vm_f v, ptrdiff_t m) {
    float b[VF_LANES];
    if (m == VF_LANES) { vf_st(p, v); return; }
    vf_st(b, v);
    for (ptrdiff_t j = 0; j < m; j++) p[j] = b[j];
}

/* The ReLU family in explicit eight-lane selects (gcc's own vectorisation of the scalar loops
   ran ReLU at half the speed of LeakyReLU); the scalar tails make the same select, so every
   element gets the same bits whichever path it takes. */
static void vf_relu_family(int op, const float *g, const float *x, float *y, ptrdiff_t n,
                           float s) {
    const vm_f zero = vf_set(0.0f), sv = vf_set(s);
    ptrdiff_t i = 0;
    switch (op) {
    case VM_RELU:              /* x < 0 ? 0 : x (NaN and -0.0 kept) */
        for (; i + VF_LANES <= n; i += VF_LANES) {
            vm_f v = vf_ld(x + i);
            vf_st(y + i, (vm_f)((vm_i)v & ~(v < zero)));
        }
        for (; i < n; i++) y[i] = x[i] < 0 ? 0.0f : x[i];
        return;
    case VM_LEAKY_RELU:        /* x > 0 ? x : s x */
        for (; i + VF_LANES <= n; i += VF_LANES) {
            vm_f v = vf_ld(x + i);
            vf_st(y + i, vf_sel(v > zero, v, v * sv));
        }
        for (; i < n; i++) y[i] = x[i] > 0 ? x[i] : x[i] * s;
        return;
    case VM_RELU_B:            /* x > 0 ? g : 0 */
        for (; i + VF_LANES <= n; i += VF_LANES)
            vf_st(y + i, (vm_f)((vm_i)vf_ld(g + i) & (vf_ld(x + i) > zero)));
        for (; i < n; i++) y[i] = x[i] > 0 ? g[i] : 0.0f;
        return;
    default:                   /* VM_LEAKY_RELU_B: x > 0 ? g : s g */
        for (; i + VF_LANES <= n; i += VF_LANES) {
            vm_f gv = vf_ld(g + i);
            vf_st(y + i, vf_sel(vf_ld(x + i) > zero, gv, gv * sv));
        }
        for (; i < n; i++) y[i] = x[i] > 0 ? g[i] : g[i] * s;
    }
}

/* The lanes of r marked in bad, redone in double with the scalar definition (rare: NaN, inf,
   arguments beyond the vector range); out of line, so that the loops keep their constants in
   registers. */
__attribute__((noinline)) static vm_f vf_fixup(int op, vm_f x, vm_f g, vm_f r, vm_i bad,
                                               double a) {
    for (int j = 0; j < VF_LANES; j++)
        if (bad[j]) r[j] = (float)vm_scalar(op, (double)x[j], (double)g[j], a);
    return r;
}

/* One vector of a float32 op. Always inlined with a constant op: each op gets its own loop. */
static inline __attribute__((always_inline)) vm_f vf_apply(int op, vm_f gv, vm_f xv, double a) {
    const float af = (float)a;
    vm_i bad;
    vm_f r;
    switch (op) {
    case VM_ELU: r = vf_elu(xv, af, &bad); break;
    case VM_TANH: r = vf_tanh(xv, &bad); break;
    case VM_SIGMOID: r = vf_sigmoid(xv, &bad); break;
    case VM_GELU: r = vf_gelu(xv, &bad); break;
    case VM_GELU_TANH: r = vf_gelu_tanh(xv, &bad); break;
    case VM_ELU_B: r = vf_elu_b(gv, xv, af, &bad); break;
    case VM_GELU_B: r = vf_gelu_b(gv, xv, &bad); break;
    default: r = vf_gelu_tanh_b(gv, xv, &bad); break;   /* VM_GELU_TANH_B */
    }
    if (vf_any(bad)) r = vf_fixup(op, xv, gv, r, bad, a);
    return r;
}

/* dx (or y) = op over n elements: full vectors, then the tail through a zero-padded vector
   (g is NULL for the forward ops) */
static inline __attribute__((always_inline)) void vf_map(int op, const float *g, const float *x,
                                                         float *y, ptrdiff_t n, double a) {
    const vm_f zero = vf_set(0.0f);
    ptrdiff_t i = 0;
    for (; i + VF_LANES <= n; i += VF_LANES)
        vf_st(y + i, vf_apply(op, g ? vf_ld(g + i) : zero, vf_ld(x + i), a));
    if (i < n)
        vf_st_part(y + i, vf_apply(op, g ? vf_ld_part(g + i, n - i) : zero,
                                   vf_ld_part(x + i, n - i), a), n - i);
}

static void vm_unary_float(int op, const float *x, float *y, ptrdiff_t n, double a) {
    switch (op) {
    case VM_RELU: case VM_LEAKY_RELU: vf_relu_family(op, NULL, x, y, n, (float)a); return;
    case VM_ELU: vf_map(VM_ELU, NULL, x, y, n, a); return;
    case VM_TANH: vf_map(VM_TANH, NULL, x, y, n, a); return;
    case VM_SIGMOID: vf_map(VM_SIGMOID, NULL, x, y, n, a); return;
    case VM_GELU: vf_map(VM_GELU, NULL, x, y, n, a); return;
    case VM_GELU_TANH: vf_map(VM_GELU_TANH, NULL, x, y, n, a); return;
    default: vm_unary_floatw(op, x, y, n, a);
    }
}

static void vm_binary_float(int op, const float *g, const float *x, float *dx, ptrdiff_t n,
                            double a) {
    ptrdiff_t i;
    switch (op) {
    case VM_RELU_B: case VM_LEAKY_RELU_B:
        vf_relu_family(op, g, x, dx, n, (float)a);
        return;
    case VM_TANH_B:            /* y = tanh(x): dx = g (1 - y^2); 1 - y^2 is rounded once with
                                  an FMA (gcc contracts it), else computed in double */
#if defined(__FMA__)
        for (i = 0; i < n; i++) dx[i] = g[i] * (1.0f - x[i] * x[i]);
#else
        for (i = 0; i < n; i++) dx[i] = (float)((double)g[i] * (1.0 - (double)x[i] * x[i]));
#endif
        return;
    case VM_SIGMOID_B:         /* y = sigmoid(x): dx = g y (1 - y) */
        for (i = 0; i < n; i++) dx[i] = g[i] * ((1.0f - x[i]) * x[i]);
        return;
    case VM_ELU_B: vf_map(VM_ELU_B, g, x, dx, n, a); return;
    case VM_GELU_B: vf_map(VM_GELU_B, g, x, dx, n, a); return;
    case VM_GELU_TANH_B: vf_map(VM_GELU_TANH_B, g, x, dx, n, a); return;
    default: vm_binary_floatw(op, g, x, dx, n, a);
    }
}

/* ---- softmax / log-softmax over axis k of one (K, I) slab, columns [i0, i1) of it --------
 *
 *   m = max_k x[k, i] (NaN wins),  s = sum_k exp(x[k, i] - m) (double, in order k = 0, 1, ...)
 *   softmax:     y = exp(x - m) / s
 *   log-softmax: y = (x - m) - log(s)
 *
 * Columns are done VM_LANES at a time (the exponentials of a row segment are one vector op).
 * I == 1 (softmax over the last axis) is a row: the exponentials run along k instead. */
#define VM_SOFTMAX_CHUNK 64

static inline vm_d vm_exp_any(vm_d z) {
    vm_l ok = vm_in_range(z);
    vm_d r = vm_exp_in(vm_sel(ok, z, vm_set(0.0)));
    if (vm_any(~ok))
        for (int j = 0; j < VM_LANES; j++)
            if (!ok[j]) r[j] = exp(z[j]);
    return r;
}

#define VM_DEFINE_SOFTMAX(T)                                                                 \
static void vm_softmax_row_##T(const T *x, T *y, ptrdiff_t K, int logmode) {                \
    double m = x[0], s = 0.0;                                                               \
    ptrdiff_t k;                                                                            \
    for (k = 1; k < K; k++)                                                                 \
        if (x[k] > m || x[k] != x[k]) m = x[k];                                             \
    /* four partial sums, lanes k % 4, added in a fixed order: independent of threads */    \
    vm_d acc = vm_set(0.0);                                                                 \
    for (k = 0; k + VM_LANES <= K; k += VM_LANES) {                                         \
        vm_d z = (vm_d){x[k], x[k + 1], x[k + 2], x[k + 3]} - vm_set(m);                   \
        vm_d e = vm_exp_any(z);                                                             \
        acc += e;                                                                           \
        if (!logmode) for (int j = 0; j < VM_LANES; j++) y[k + j] = (T)e[j];                \
    }                                                                                       \
    s = (acc[0] + acc[1]) + (acc[2] + acc[3]);                                              \
    for (; k < K; k++) {                                                                    \
        double e = exp((double)x[k] - m);                                                   \
        s += e;                                                                             \
        if (!logmode) y[k] = (T)e;                                                          \
    }                                                                                       \
    if (logmode) {                                                                          \
        double ls = log(s);                                                                 \
        for (k = 0; k < K; k++) y[k] = (T)(((double)x[k] - m) - ls);                        \
    } else {                                                                                \
        /* recompute in double for float32 (y holds rounded values); double divides */      \
        for (k = 0; k < K; k++) y[k] = (T)((double)y[k] / s);                               \
    }                                                                                       \
}                                                                                           \
static void vm_softmax_cols_##T(const T *x, T *y, ptrdiff_t K, ptrdiff_t I, ptrdiff_t i0,  \
                                ptrdiff_t i1, int logmode) {                                \
    double m[VM_SOFTMAX_CHUNK], s[VM_SOFTMAX_CHUNK];                                        \
    ptrdiff_t w = i1 - i0, k, j;                                                            \
    for (j = 0; j < w; j++) { m[j] = x[i0 + j]; s[j] = 0.0; }                               \
    for (k = 1; k < K; k++)                                                                 \
        for (j = 0; j < w; j++) {                                                           \
            double v = x[k * I + i0 + j];                                                   \
            if (v > m[j] || v != v) m[j] = v;                                               \
        }                                                                                   \
    for (k = 0; k < K; k++) {                                                               \
        const T *xr = x + k * I + i0;                                                       \
        T *yr = y + k * I + i0;                                                             \
        for (j = 0; j < w; j += VM_LANES) {                                                 \
            double z[VM_LANES];                                                             \
            for (int l = 0; l < VM_LANES; l++)                                              \
                z[l] = j + l < w ? (double)xr[j + l] - m[j + l] : 0.0;                      \
            vm_d e = vm_exp_any(vm_ld_d(z));                                                \
            for (int l = 0; l < VM_LANES && j + l < w; l++) {                               \
                s[j + l] += e[l];                                                           \
                if (!logmode) yr[j + l] = (T)e[l];                                          \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    if (logmode) for (j = 0; j < w; j++) s[j] = log(s[j]);                                  \
    for (k = 0; k < K; k++) {                                                               \
        const T *xr = x + k * I + i0;                                                       \
        T *yr = y + k * I + i0;                                                             \
        if (logmode)                                                                        \
            for (j = 0; j < w; j++) yr[j] = (T)(((double)xr[j] - m[j]) - s[j]);             \
        else                                                                                \
            for (j = 0; j < w; j++) yr[j] = (T)((double)yr[j] / s[j]);                      \
    }                                                                                       \
}

VM_DEFINE_SOFTMAX(double)
VM_DEFINE_SOFTMAX(float)

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#endif
