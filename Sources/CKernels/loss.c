// The segmentation loss's per-voxel loops (NN's SegmentationLoss): softmax over the classes, the Dice sums and
// the gradient back through the softmax, for voxels [lo, hi) of one sample laid out [C][V]. One AVX2 + FMA build
// (8 voxels per vector, a polynomial exp) chosen at run time, and a plain C build for other CPUs. Plain C
// outside the functions that carry the target attribute; no call into the convolution paths.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include "ckernels.h"

#define AVX2 __attribute__((target("avx2,fma")))

// ---- plain C ----

static void softmax_c(const float *x, float *y, int c, size_t v, size_t lo, size_t hi) {
    for (size_t i = lo; i < hi; i++) {
        float m = -INFINITY, sum = 0.0f;
        for (int k = 0; k < c; k++) m = fmaxf(m, x[k * v + i]);
        for (int k = 0; k < c; k++) {
            float e = expf(x[k * v + i] - m);
            y[k * v + i] = e;
            sum += e;
        }
        float inv = 1.0f / sum;
        for (int k = 0; k < c; k++) y[k * v + i] *= inv;
    }
}

static void dice_sums_c(const float *p, const unsigned char *lab, int c, size_t v, size_t lo, size_t hi, int squared,
                        double *sums) {
    for (int k = 0; k < c; k++) {
        const float *pk = p + k * v;
        double pg = 0.0, pp = 0.0, gg = 0.0;
        for (size_t i = lo; i < hi; i++) {
            double pv = pk[i];
            if (lab[i] == (uint8_t)k) { pg += pv; gg += 1.0; }
            pp += squared ? pv * pv : pv;
        }
        sums[3 * k] = pg; sums[3 * k + 1] = pp; sums[3 * k + 2] = gg;
    }
}

static void dice_grad_c(const float *p, const unsigned char *lab, float *g, int c, size_t v, size_t lo, size_t hi,
                        const float *a, const float *b, int squared) {
    for (size_t i = lo; i < hi; i++) {
        float dot = 0.0f;
        for (int k = 0; k < c; k++) {
            float gk = (lab[i] == (uint8_t)k ? a[k] : 0.0f) + (squared ? b[k] * p[k * v + i] : b[k]);
            g[k * v + i] = gk;
            dot += p[k * v + i] * gk;
        }
        for (int k = 0; k < c; k++) g[k * v + i] = p[k * v + i] * (g[k * v + i] - dot);
    }
}

// ---- AVX2 + FMA ----

// e^x for x <= 0 (softmax arguments after the maximum is subtracted), about 1 ulp: x = n ln2 + r with |r| <= ln2 / 2,
// e^r by Cephes' degree-6 polynomial, 2^n by the exponent bits. Below -87.3 the result is clamped at 2^-126 (e^-87.3),
// which a softmax sum of at least 1 cannot tell from 0.
static inline __attribute__((always_inline, target("avx2,fma"))) __m256 exp_neg(__m256 x) {
    // The constant first: maxps returns its second operand when either is NaN, so a NaN argument stays NaN (a
    // non-finite loss must reach the trainer's check, not become e^-87).
    x = _mm256_max_ps(_mm256_set1_ps(-87.3365447f), x);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// Lanes whose label is k: 8 labels widened to 32-bit lanes and compared.
static inline __attribute__((always_inline, target("avx2,fma"))) __m256i label_lanes(const uint8_t *l) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)l));
}

AVX2 static void softmax_avx2(const float *x, float *y, int c, size_t v, size_t lo, size_t hi) {
    size_t i = lo;
    for (; i + 8 <= hi; i += 8) {
        __m256 m = _mm256_loadu_ps(x + i);
        for (int k = 1; k < c; k++) m = _mm256_max_ps(m, _mm256_loadu_ps(x + k * v + i));
        __m256 sum = _mm256_setzero_ps();
        for (int k = 0; k < c; k++) {
            __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(x + k * v + i), m));
            _mm256_storeu_ps(y + k * v + i, e);
            sum = _mm256_add_ps(sum, e);
        }
        __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), sum);
        for (int k = 0; k < c; k++) _mm256_storeu_ps(y + k * v + i, _mm256_mul_ps(_mm256_loadu_ps(y + k * v + i), inv));
    }
    if (i < hi) softmax_c(x, y, c, v, i, hi);
}

// Σ of 8 floats' lanes in double, 4 + 4.
static inline __attribute__((always_inline, target("avx2,fma"))) __m256d widen_add(__m256d acc, __m256 x) {
    return _mm256_add_pd(_mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(x))),
                         _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)));
}

static inline __attribute__((always_inline, target("avx2,fma"))) double hsum_pd(__m256d a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

AVX2 static void dice_sums_avx2(const float *p, const unsigned char *lab, int c, size_t v, size_t lo, size_t hi,
                                int squared, double *sums) {
    size_t end = lo + (hi - lo) / 8 * 8;
    for (int k = 0; k < c; k++) {
        const float *pk = p + k * v;
        __m256i kk = _mm256_set1_epi32(k);
        __m256d pg = _mm256_setzero_pd(), pp = _mm256_setzero_pd();
        __m256i gg = _mm256_setzero_si256();
        for (size_t i = lo; i < end; i += 8) {
            __m256 x = _mm256_loadu_ps(pk + i);
            __m256i is = _mm256_cmpeq_epi32(label_lanes(lab + i), kk);
            pg = widen_add(pg, _mm256_and_ps(x, _mm256_castsi256_ps(is)));
            gg = _mm256_sub_epi32(gg, is);  // is = -1 on the class's lanes
            if (squared) {
                __m128 lo4 = _mm256_castps256_ps128(x), hi4 = _mm256_extractf128_ps(x, 1);
                __m256d a = _mm256_cvtps_pd(lo4), b = _mm256_cvtps_pd(hi4);
                pp = _mm256_fmadd_pd(a, a, pp);
                pp = _mm256_fmadd_pd(b, b, pp);
            } else {
                pp = widen_add(pp, x);
            }
        }
        int32_t cnt[8];
        _mm256_storeu_si256((__m256i *)cnt, gg);
        double tpg = 0.0, tpp = 0.0, tgg = 0.0;
        for (size_t i = end; i < hi; i++) {
            double pv = pk[i];
            if (lab[i] == (uint8_t)k) { tpg += pv; tgg += 1.0; }
            tpp += squared ? pv * pv : pv;
        }
        double count = tgg;
        for (int l = 0; l < 8; l++) count += cnt[l];
        sums[3 * k] = hsum_pd(pg) + tpg;
        sums[3 * k + 1] = hsum_pd(pp) + tpp;
        sums[3 * k + 2] = count;
    }
}

AVX2 static void dice_grad_avx2(const float *p, const unsigned char *lab, float *g, int c, size_t v, size_t lo, size_t hi,
                                const float *a, const float *b, int squared) {
    size_t i = lo;
    for (; i + 8 <= hi; i += 8) {
        __m256i l = label_lanes(lab + i);
        __m256 dot = _mm256_setzero_ps();
        for (int k = 0; k < c; k++) {
            __m256 pk = _mm256_loadu_ps(p + k * v + i);
            __m256 is = _mm256_castsi256_ps(_mm256_cmpeq_epi32(l, _mm256_set1_epi32(k)));
            __m256 bk = _mm256_set1_ps(b[k]);
            __m256 gk = _mm256_add_ps(_mm256_and_ps(is, _mm256_set1_ps(a[k])), squared ? _mm256_mul_ps(bk, pk) : bk);
            _mm256_storeu_ps(g + k * v + i, gk);
            dot = _mm256_add_ps(dot, _mm256_mul_ps(pk, gk));
        }
        for (int k = 0; k < c; k++) {
            __m256 pk = _mm256_loadu_ps(p + k * v + i);
            _mm256_storeu_ps(g + k * v + i, _mm256_mul_ps(pk, _mm256_sub_ps(_mm256_loadu_ps(g + k * v + i), dot)));
        }
    }
    if (i < hi) dice_grad_c(p, lab, g, c, v, i, hi, a, b, squared);
}

// ---- API ----

void ck_softmax_channels(const float *x, float *y, int c, size_t v, size_t lo, size_t hi) {
    if (ck_cpu_has_avx2()) softmax_avx2(x, y, c, v, lo, hi);
    else softmax_c(x, y, c, v, lo, hi);
}

void ck_dice_sums(const float *p, const unsigned char *lab, int c, size_t v, size_t lo, size_t hi, int squared,
                  double *sums) {
    if (ck_cpu_has_avx2()) dice_sums_avx2(p, lab, c, v, lo, hi, squared, sums);
    else dice_sums_c(p, lab, c, v, lo, hi, squared, sums);
}

void ck_dice_gradient(const float *p, const unsigned char *lab, float *g, int c, size_t v, size_t lo, size_t hi,
                      const float *a, const float *b, int squared) {
    if (ck_cpu_has_avx2()) dice_grad_avx2(p, lab, g, c, v, lo, hi, a, b, squared);
    else dice_grad_c(p, lab, g, c, v, lo, hi, a, b, squared);
}
