// BatchNorm3d's per-element loops, with the ReLU that follows it in ConvBNReLU fused in (NN's BatchNorm3d). Every
// call covers one run of n elements of one channel (a piece of NN's parallelForPieces): the statistics are summed
// in double, in an order fixed by n alone, so per-piece partial sums added in piece order give the same result on
// any number of threads. AVX2 + FMA where the CPU has them (16 elements per iteration, the tail through masked loads
// and stores), plain C elsewhere.
//
// The ReLU's mask is y > 0 with y = (x − mean)·scale + shift computed exactly as the forward pass computes it (one
// FMA on AVX2), so backward recomputes it from x instead of reading y. NaN stays NaN in the forward ReLU (as
// max(y, 0)), and a NaN y passes no gradient (y > 0 is false), as NN's ReLU.
#include <immintrin.h>
#include "ckernels.h"

#define AVX2 __attribute__((target("avx2,fma")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

// ---- plain C ----

// The normalised value; one expression, used by the forward pass and by backward's mask alike.
static inline float bn_value(float x, float mu, float scale, float shift) { return (x - mu) * scale + shift; }

static void sums_c(const float *x, size_t n, double *sum, double *sumsq) {
    double s = 0, q = 0;
    for (size_t i = 0; i < n; i++) {
        double a = x[i];
        s += a;
        q += a * a;
    }
    *sum = s;
    *sumsq = q;
}

static void apply_c(const float *x, float *y, size_t n, float mu, float scale, float shift, int relu) {
    for (size_t i = 0; i < n; i++) {
        float v = bn_value(x[i], mu, scale, shift);
        y[i] = relu && v <= 0 ? 0.0f : v;
    }
}

static inline float masked_dy(float dy, float x, float mu, float scale, float shift, int relu) {
    return relu && !(bn_value(x, mu, scale, shift) > 0) ? 0.0f : dy;
}

static void backward_sums_c(const float *dy, const float *x, size_t n, float mu, float scale, float shift, int relu,
                            double *sum, double *dot) {
    double s = 0, q = 0;
    for (size_t i = 0; i < n; i++) {
        double d = masked_dy(dy[i], x[i], mu, scale, shift, relu);
        s += d;
        q += d * (double)(x[i] - mu);
    }
    *sum = s;
    *dot = q;
}

static void backward_apply_c(const float *dy, const float *x, float *dx, size_t n, float mu, float scale, float shift,
                             int relu, int train, float a, float mdy, float bx) {
    for (size_t i = 0; i < n; i++) {
        float d = masked_dy(dy[i], x[i], mu, scale, shift, relu);
        dx[i] = train ? a * (d - mdy) - bx * (x[i] - mu) : a * d;
    }
}

// ---- AVX2 + FMA ----

AVX2_INLINE __m256i tail_mask(size_t left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// acc[0] += low 4 lanes, acc[1] += high 4 lanes, in double.
AVX2_INLINE void add_wide(__m256d *acc, __m256 v) {
    acc[0] = _mm256_add_pd(acc[0], _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    acc[1] = _mm256_add_pd(acc[1], _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

// acc[0..1] += a · b in double (a and b widened first: the products are exact).
AVX2_INLINE void fma_wide(__m256d *acc, __m256 a, __m256 b) {
    acc[0] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)), _mm256_cvtps_pd(_mm256_castps256_ps128(b)),
                             acc[0]);
    acc[1] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1)),
                             acc[1]);
}

// The four accumulators of one sum, added in a fixed order.
AVX2_INLINE double hsum4(const __m256d *acc) {
    __m256d t = _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3]));
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

AVX2 static void sums_avx2(const float *x, size_t n, double *sum, double *sumsq) {
    __m256d s[4], q[4];
    for (int j = 0; j < 4; j++) s[j] = q[j] = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        add_wide(s, a);
        add_wide(s + 2, b);
        fma_wide(q, a, a);
        fma_wide(q + 2, b, b);
    }
    for (; i < n; i += 8) {  // masked-off lanes load 0
        __m256 a = _mm256_maskload_ps(x + i, tail_mask(n - i));
        add_wide(s, a);
        fma_wide(q, a, a);
    }
    *sum = hsum4(s);
    *sumsq = hsum4(q);
}

// The normalised value, then the ReLU (zero where y <= 0: NaN stays).
AVX2_INLINE __m256 apply8(__m256 x, __m256 mu, __m256 sc, __m256 sh, int relu) {
    __m256 y = _mm256_fmadd_ps(_mm256_sub_ps(x, mu), sc, sh);
    return relu ? _mm256_andnot_ps(_mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_LE_OQ), y) : y;
}

AVX2 static void apply_avx2(const float *x, float *y, size_t n, float mu, float scale, float shift, int relu) {
    __m256 m = _mm256_set1_ps(mu), sc = _mm256_set1_ps(scale), sh = _mm256_set1_ps(shift);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        _mm256_storeu_ps(y + i, apply8(a, m, sc, sh, relu));
        _mm256_storeu_ps(y + i + 8, apply8(b, m, sc, sh, relu));
    }
    for (; i < n; i += 8) {
        __m256i k = tail_mask(n - i);
        _mm256_maskstore_ps(y + i, k, apply8(_mm256_maskload_ps(x + i, k), m, sc, sh, relu));
    }
}

// dy where the forward ReLU passed it (y > 0, false for NaN), else 0; t = x − mean.
AVX2_INLINE __m256 masked_dy8(__m256 dy, __m256 t, __m256 sc, __m256 sh, int relu) {
    if (!relu) return dy;
    return _mm256_and_ps(dy, _mm256_cmp_ps(_mm256_fmadd_ps(t, sc, sh), _mm256_setzero_ps(), _CMP_GT_OQ));
}

AVX2 static void backward_sums_avx2(const float *dy, const float *x, size_t n, float mu, float scale, float shift,
                                    int relu, double *sum, double *dot) {
    __m256 m = _mm256_set1_ps(mu), sc = _mm256_set1_ps(scale), sh = _mm256_set1_ps(shift);
    __m256d s[4], q[4];
    for (int j = 0; j < 4; j++) s[j] = q[j] = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 ta = _mm256_sub_ps(_mm256_loadu_ps(x + i), m), tb = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), m);
        __m256 da = masked_dy8(_mm256_loadu_ps(dy + i), ta, sc, sh, relu);
        __m256 db = masked_dy8(_mm256_loadu_ps(dy + i + 8), tb, sc, sh, relu);
        add_wide(s, da);
        add_wide(s + 2, db);
        fma_wide(q, da, ta);
        fma_wide(q + 2, db, tb);
    }
    for (; i < n; i += 8) {  // masked-off lanes: dy = 0 and x − mean = 0
        __m256i k = tail_mask(n - i);
        __m256 t = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, k), m), _mm256_castsi256_ps(k));
        __m256 d = masked_dy8(_mm256_maskload_ps(dy + i, k), t, sc, sh, relu);
        add_wide(s, d);
        fma_wide(q, d, t);
    }
    *sum = hsum4(s);
    *dot = hsum4(q);
}

// train: a·(dy − mdy) − bx·(x − mean); else a·dy (dy masked by the ReLU first).
AVX2_INLINE __m256 backward8(__m256 dy, __m256 x, __m256 m, __m256 sc, __m256 sh, int relu, int train, __m256 a,
                             __m256 mdy, __m256 bx) {
    __m256 t = _mm256_sub_ps(x, m);
    __m256 d = masked_dy8(dy, t, sc, sh, relu);
    return train ? _mm256_fnmadd_ps(bx, t, _mm256_mul_ps(a, _mm256_sub_ps(d, mdy))) : _mm256_mul_ps(a, d);
}

AVX2 static void backward_apply_avx2(const float *dy, const float *x, float *dx, size_t n, float mu, float scale,
                                     float shift, int relu, int train, float a, float mdy, float bx) {
    __m256 m = _mm256_set1_ps(mu), sc = _mm256_set1_ps(scale), sh = _mm256_set1_ps(shift);
    __m256 av = _mm256_set1_ps(a), mv = _mm256_set1_ps(mdy), bv = _mm256_set1_ps(bx);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 r0 = backward8(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(x + i), m, sc, sh, relu, train, av, mv, bv);
        __m256 r1 =
            backward8(_mm256_loadu_ps(dy + i + 8), _mm256_loadu_ps(x + i + 8), m, sc, sh, relu, train, av, mv, bv);
        _mm256_storeu_ps(dx + i, r0);  // after both loads: dx may be dy
        _mm256_storeu_ps(dx + i + 8, r1);
    }
    for (; i < n; i += 8) {
        __m256i k = tail_mask(n - i);
        __m256 r = backward8(_mm256_maskload_ps(dy + i, k), _mm256_maskload_ps(x + i, k), m, sc, sh, relu, train, av,
                             mv, bv);
        _mm256_maskstore_ps(dx + i, k, r);
    }
}

// ---- API ----

// Set by tests only (ck_bn_set_portable), before the calls it affects.
static volatile int portable_only = 0;

void ck_bn_set_portable(int on) { portable_only = on != 0; }

static int use_avx2(void) { return !portable_only && ck_cpu_has_avx2(); }

void ck_bn_sums(const float *x, size_t n, double *sum, double *sumsq) {
    if (use_avx2()) sums_avx2(x, n, sum, sumsq);
    else sums_c(x, n, sum, sumsq);
}

void ck_bn_apply(const float *x, float *y, size_t n, float mean, float scale, float shift, int relu) {
    if (use_avx2()) apply_avx2(x, y, n, mean, scale, shift, relu);
    else apply_c(x, y, n, mean, scale, shift, relu);
}

void ck_bn_backward_sums(const float *dy, const float *x, size_t n, float mean, float scale, float shift, int relu,
                         double *sum, double *dot) {
    if (use_avx2()) backward_sums_avx2(dy, x, n, mean, scale, shift, relu, sum, dot);
    else backward_sums_c(dy, x, n, mean, scale, shift, relu, sum, dot);
}

void ck_bn_backward_apply(const float *dy, const float *x, float *dx, size_t n, float mean, float scale, float shift,
                          int relu, int train, float a, float mdy, float bx) {
    if (use_avx2()) backward_apply_avx2(dy, x, dx, n, mean, scale, shift, relu, train, a, mdy, bx);
    else backward_apply_c(dy, x, dx, n, mean, scale, shift, relu, train, a, mdy, bx);
}
