// 1x1x1 convolutions with few channels (NN's Conv3d: the gates, deep supervision, the final classifier), where an
// sgemm with 1 to 16 rows or a K of a few channels runs far below its rate. One sample laid out [C][V], voxels
// [lo, hi). AVX2 + FMA only: callers check ck_cpu_has_avx2() and use sgemm elsewhere.
#include <immintrin.h>
#include "ckernels.h"

#define AVX2 __attribute__((target("avx2,fma")))

// Output rows [m0, m1) of one tile: out[m][i] = init + Σ_k w[m * wm + k * wk] in[k][i], init = bias[m] (or 0).
// A register tile is 4 rows x 2 vectors (16 voxels); a tail of fewer than 8 voxels goes through a masked load
// and store.
AVX2 static void pw_rows(const float *in, const float *w, ptrdiff_t wm, ptrdiff_t wk, const float *bias, float *out,
                         int kc, size_t v, size_t lo, size_t hi, int m0, int m1) {
    for (int m = m0; m < m1; m += 4) {
        int nm = m1 - m < 4 ? m1 - m : 4;
        float wl[4] = {0, 0, 0, 0}, bl[4] = {0, 0, 0, 0};
        for (int j = 0; j < nm; j++) bl[j] = bias ? bias[m + j] : 0.0f;
        size_t i = lo;
        for (; i + 16 <= hi; i += 16) {
            __m256 a0[4], a1[4];
            for (int j = 0; j < 4; j++) a0[j] = a1[j] = _mm256_set1_ps(bl[j]);
            for (int k = 0; k < kc; k++) {
                __m256 x0 = _mm256_loadu_ps(in + (size_t)k * v + i), x1 = _mm256_loadu_ps(in + (size_t)k * v + i + 8);
                for (int j = 0; j < 4; j++) {
                    wl[j] = j < nm ? w[(m + j) * wm + k * wk] : 0.0f;
                    __m256 wv = _mm256_set1_ps(wl[j]);
                    a0[j] = _mm256_fmadd_ps(x0, wv, a0[j]);
                    a1[j] = _mm256_fmadd_ps(x1, wv, a1[j]);
                }
            }
            for (int j = 0; j < nm; j++) {
                _mm256_storeu_ps(out + (size_t)(m + j) * v + i, a0[j]);
                _mm256_storeu_ps(out + (size_t)(m + j) * v + i + 8, a1[j]);
            }
        }
        for (; i < hi; i += 8) {
            int n = hi - i < 8 ? (int)(hi - i) : 8;
            __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            __m256 a0[4];
            for (int j = 0; j < 4; j++) a0[j] = _mm256_set1_ps(bl[j]);
            for (int k = 0; k < kc; k++) {
                __m256 x0 = _mm256_maskload_ps(in + (size_t)k * v + i, mask);
                for (int j = 0; j < nm; j++) a0[j] = _mm256_fmadd_ps(x0, _mm256_set1_ps(w[(m + j) * wm + k * wk]), a0[j]);
            }
            for (int j = 0; j < nm; j++) _mm256_maskstore_ps(out + (size_t)(m + j) * v + i, mask, a0[j]);
        }
    }
}

void ck_conv1_forward(const float *in, const float *w, const float *bias, float *out, int cin, int cout, size_t v,
                      size_t lo, size_t hi, int m0, int m1) {
    (void)cout;
    pw_rows(in, w, cin, 1, bias, out, cin, v, lo, hi, m0, m1);
}

void ck_conv1_backward_data(const float *dout, const float *w, float *din, int cin, int cout, size_t v, size_t lo,
                            size_t hi, int c0, int c1) {
    pw_rows(dout, w, 1, cin, NULL, din, cout, v, lo, hi, c0, c1);
}

static inline __attribute__((always_inline, target("avx2,fma"))) float hsum(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

AVX2 void ck_conv1_backward_weights(const float *in, const float *dout, float *dw, int cin, size_t v, size_t lo,
                                    size_t hi, int m0, int m1, int c0, int c1, int assign) {
    size_t n8 = lo + (hi - lo) / 8 * 8;
    __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(hi - n8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int m = m0; m < m1; m += 4) {
        int nm = m1 - m < 4 ? m1 - m : 4;
        const float *d[4];
        for (int j = 0; j < 4; j++) d[j] = dout + (size_t)(j < nm ? m + j : m) * v;
        for (int c = c0; c < c1; c += 2) {
            int nc = c1 - c < 2 ? 1 : 2;
            const float *x0p = in + (size_t)c * v, *x1p = in + (size_t)(c + nc - 1) * v;
            __m256 a[4][2];
            for (int j = 0; j < 4; j++) a[j][0] = a[j][1] = _mm256_setzero_ps();
            for (size_t i = lo; i < n8; i += 8) {
                __m256 x0 = _mm256_loadu_ps(x0p + i), x1 = _mm256_loadu_ps(x1p + i);
                for (int j = 0; j < 4; j++) {
                    __m256 dv = _mm256_loadu_ps(d[j] + i);
                    a[j][0] = _mm256_fmadd_ps(dv, x0, a[j][0]);
                    a[j][1] = _mm256_fmadd_ps(dv, x1, a[j][1]);
                }
            }
            if (n8 < hi) {
                __m256 x0 = _mm256_maskload_ps(x0p + n8, mask), x1 = _mm256_maskload_ps(x1p + n8, mask);
                for (int j = 0; j < 4; j++) {
                    __m256 dv = _mm256_maskload_ps(d[j] + n8, mask);
                    a[j][0] = _mm256_fmadd_ps(dv, x0, a[j][0]);
                    a[j][1] = _mm256_fmadd_ps(dv, x1, a[j][1]);
                }
            }
            for (int j = 0; j < nm; j++)
                for (int k = 0; k < nc; k++) {
                    float s = hsum(a[j][k]);
                    float *t = dw + (size_t)(m + j) * cin + c + k;
                    *t = assign ? s : *t + s;
                }
        }
    }
}
