// Trilinear resampling's per-slice loops (NN's Trilinear): forward computes one output z-slice of one plane from two
// input slices, backward one input z-slice's gradient from the output slices that read it. The index/weight tables
// per axis are NN's (i0, i1, w0, w1 per output index; for Z the caller passes the two slices and their weights, or the
// list of output slices and weights). AVX2 + FMA where the CPU has them, plain C elsewhere.
//
// AVX2 build. Z and Y are blends of contiguous rows (8-lane FMAs). Along X, ck_tri_xplan() cuts the output columns
// into blocks of 8: where the taps of a block lie within 8 consecutive input columns (any up-sampling, and the copy of
// an unchanged axis), the block is one unaligned load of those columns and two in-register permutes (vpermps);
// elsewhere (down-sampling) two gathers. The adjoint along X is a gather too: per block of 8 input columns, the plan
// lists the (output column, weight) pairs that read each column, padded to the block's longest list with masked-off
// entries, in the order the scatter form would add them.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include "ckernels.h"

#define AVX2 __attribute__((target("avx2,fma")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

// ---- plan layout (int32 words; weights stored as float bits) ----
// header: [0] forward blocks (ceil(xo/8)), [1] offset of the backward section, [2] backward blocks (ceil(xi/8)).
// forward block (33 words): base (>= 0: taps are row[base + idx]; -1: idx are absolute, gather), idx0[8], idx1[8],
//   w0[8], w1[8] (lanes past xo: index of a valid column, weight 0).
// backward block: k, then k entries of 17 words: kind (0: gather; 1: idx are 8 consecutive columns; 2: every other
//   column, read as two loads and a deinterleave), idx[8] (-1: none, masked off; kinds 1, 2 have none) and w[8].
enum { HDR = 3, FWD_BLOCK = 33, BWD_ENTRY = 17 };

// Output slices of at least this many floats (8 KiB) are written with streaming stores (forward_avx2).
enum { STREAM_FLOATS = 2048 };

static inline int32_t fbits(float f) {
    int32_t i;
    memcpy(&i, &f, 4);
    return i;
}

// The weight with which output d reads input column j: w0 + w1 when it reads it twice (at a clamped edge), 0 when not.
static inline float tap(const int32_t *i0, const int32_t *i1, const float *w0, const float *w1, int d, int j) {
    return (i0[d] == j ? w0[d] : 0.0f) + (i1[d] == j ? w1[d] : 0.0f);
}

// The backward entries of block b (input columns [8b, 8b + 8)) into q; returns their words. Per column, its taps of
// non-zero weight in output order (the order in which the scatter form adds them; an output that reads the column
// twice, at a clamped edge, as one tap of weight w0 + w1). Entry r holds for lane l either the r-th tap of its column
// (rank order, gathered), or, where that gives no more entries, the tap of output key_r + s·l (s = 2 for ×2
// up-sampling, 1 for a copied axis): the entry's columns are then every other one or consecutive, read by loads.
static size_t bwd_block(const int32_t *i0, const int32_t *i1, const float *w0, const float *w1, int xi, int xo, int b,
                        int32_t *q) {
    int lanes = xi - 8 * b < 8 ? xi - 8 * b : 8;
    int kRank = 0, lo[3] = {0, 0, 0}, kKey[3] = {0, 0, 0};
    for (int st = 1; st <= 2; st++) {
        int first = 1, hi = 0;
        for (int l = 0; l < lanes; l++)
            for (int d = 0; d < xo; d++) {
                if (tap(i0, i1, w0, w1, d, 8 * b + l) == 0.0f) continue;
                int key = d - st * l;
                if (first || key < lo[st]) lo[st] = key;
                if (first || key > hi) hi = key;
                first = 0;
            }
        kKey[st] = first ? 0 : hi - lo[st] + 1;
    }
    for (int l = 0; l < lanes; l++) {
        int n = 0;
        for (int d = 0; d < xo; d++) n += tap(i0, i1, w0, w1, d, 8 * b + l) != 0.0f;
        if (n > kRank) kRank = n;
    }
    int st = kKey[2] <= kKey[1] ? 2 : 1, byKey = kKey[st] <= kRank;
    int k = byKey ? kKey[st] : kRank;
    int xoPad = (xo + 7) / 8 * 8;
    q[0] = k;
    int32_t *e = q + 1;
    for (int r = 0; r < k; r++)
        for (int l = 0; l < 8; l++) {
            e[BWD_ENTRY * r + 1 + l] = -1;
            e[BWD_ENTRY * r + 9 + l] = fbits(0.0f);
        }
    for (int l = 0; l < lanes; l++)
        for (int d = 0, rank = 0; d < xo; d++) {
            float w = tap(i0, i1, w0, w1, d, 8 * b + l);
            if (w == 0.0f) continue;
            int r = byKey ? d - st * l - lo[st] : rank++;
            e[BWD_ENTRY * r + 1 + l] = d;
            e[BWD_ENTRY * r + 9 + l] = fbits(w);
        }
    // Kind (low 4 bits): 0 gather; 1, 2: loads of stride 1, 2 from key (bits 4 and up: key + 8); 3, 4: the same, lanes
    // without a tap (idx -1) masked off. Loads of [key, key + 8·st) must stay within the scratch: 8 floats before the
    // rows, 16 after them.
    for (int r = 0; r < k; r++) {
        int32_t *t = e + BWD_ENTRY * r;
        int key = lo[st] + r, full = 1;
        for (int l = 0; l < 8; l++) full &= t[1 + l] >= 0;
        int loads = byKey && key >= -8 && key + 8 * st <= xoPad + 16;
        t[0] = loads ? (full ? st : st + 2) | (key + 8) << 4 : 0;
    }
    return 1 + BWD_ENTRY * (size_t)k;
}

size_t ck_tri_xplan_words(const int32_t *i0, const int32_t *i1, int xi, int xo) {
    size_t nbf = ((size_t)xo + 7) / 8, nbb = ((size_t)xi + 7) / 8;
    size_t words = HDR + nbf * FWD_BLOCK;
    // Backward: at most the number of taps that read each input column (bwd_block may need fewer).
    for (size_t b = 0; b < nbb; b++) {
        int k = 0;
        for (int j = (int)(8 * b); j < (int)(8 * b + 8) && j < xi; j++) {
            int n = 0;
            for (int d = 0; d < xo; d++) n += (i0[d] == j) + (i1[d] == j);
            if (n > k) k = n;
        }
        words += 1 + BWD_ENTRY * (size_t)k;
    }
    return words;
}

void ck_tri_xplan(const int32_t *i0, const int32_t *i1, const float *w0, const float *w1, int xi, int xo,
                  int32_t *plan) {
    int nbf = (xo + 7) / 8, nbb = (xi + 7) / 8;
    plan[0] = nbf;
    plan[2] = nbb;
    int32_t *p = plan + HDR;
    for (int b = 0; b < nbf; b++, p += FWD_BLOCK) {
        int base = i0[8 * b], fits = 1;
        for (int l = 0; l < 8; l++) {
            int d = 8 * b + l;
            if (d >= xo) continue;
            int a = i0[d] - base, c = i1[d] - base;
            if (a < 0 || a > 7 || c < 0 || c > 7) fits = 0;
        }
        p[0] = fits ? base : -1;
        for (int l = 0; l < 8; l++) {
            int d = 8 * b + l, in = d < xo;
            int a = in ? i0[d] : i0[xo - 1], c = in ? i1[d] : i1[xo - 1];
            p[1 + l] = fits ? a - base : a;
            p[9 + l] = fits ? c - base : c;
            p[17 + l] = fbits(in ? w0[d] : 0.0f);
            p[25 + l] = fbits(in ? w1[d] : 0.0f);
        }
    }
    plan[1] = (int32_t)(p - plan);
    for (int b = 0; b < nbb; b++) p += bwd_block(i0, i1, w0, w1, xi, xo, b, p);
}

size_t ck_tri_forward_scratch(int yi, int xi, int xo) {
    size_t xoPad = ((size_t)xo + 7) / 8 * 8;
    return (size_t)yi * xi + 8 + (size_t)yi * xoPad;
}

size_t ck_tri_backward_scratch(int yi, int yo, int xo) {
    size_t xoPad = ((size_t)xo + 7) / 8 * 8;
    return (size_t)yo * xo + 8 + (size_t)yi * xoPad + 16;
}

// ---- plain C ----

static void forward_c(const float *a, const float *b, float wa, float wb, int yi, int xi, int yo, int xo,
                      const int32_t *yi0, const int32_t *yi1, const float *yw0, const float *yw1, const int32_t *xi0,
                      const int32_t *xi1, const float *xw0, const float *xw1, float *scratch, float *out) {
    size_t n = (size_t)yi * xi;
    float *blend = scratch, *rows = scratch + n + 8;
    size_t xoPad = ((size_t)xo + 7) / 8 * 8;
    for (size_t i = 0; i < n; i++) blend[i] = wa * a[i] + wb * b[i];
    for (int y = 0; y < yi; y++) {
        const float *r = blend + (size_t)y * xi;
        float *o = rows + (size_t)y * xoPad;
        for (int x = 0; x < xo; x++) o[x] = xw0[x] * r[xi0[x]] + xw1[x] * r[xi1[x]];
    }
    for (int y = 0; y < yo; y++) {
        const float *ra = rows + (size_t)yi0[y] * xoPad, *rb = rows + (size_t)yi1[y] * xoPad;
        float u = yw0[y], v = yw1[y];
        float *o = out + (size_t)y * xo;
        for (int x = 0; x < xo; x++) o[x] = u * ra[x] + v * rb[x];
    }
}

static void backward_c(const float *gplane, size_t outSlice, const int32_t *refOut, const float *refW, int nref,
                       int yi, int xi, int yo, int xo, const int32_t *yi0, const int32_t *yi1, const float *yw0,
                       const float *yw1, const int32_t *xi0, const int32_t *xi1, const float *xw0, const float *xw1,
                       float *scratch, float *out) {
    size_t n = (size_t)yo * xo, xoPad = ((size_t)xo + 7) / 8 * 8;
    float *acc = scratch, *rows = scratch + n + 8;
    const float *first = gplane + (size_t)refOut[0] * outSlice;
    for (size_t i = 0; i < n; i++) acc[i] = refW[0] * first[i];
    for (int r = 1; r < nref; r++) {
        const float *s = gplane + (size_t)refOut[r] * outSlice;
        float w = refW[r];
        for (size_t i = 0; i < n; i++) acc[i] += w * s[i];
    }
    memset(rows, 0, sizeof(float) * (size_t)yi * xoPad);
    for (int y = 0; y < yo; y++) {
        const float *g = acc + (size_t)y * xo;
        float *oa = rows + (size_t)yi0[y] * xoPad, *ob = rows + (size_t)yi1[y] * xoPad;
        float u = yw0[y], v = yw1[y];
        for (int x = 0; x < xo; x++) oa[x] += u * g[x];
        for (int x = 0; x < xo; x++) ob[x] += v * g[x];
    }
    memset(out, 0, sizeof(float) * (size_t)yi * xi);
    for (int y = 0; y < yi; y++) {
        const float *g = rows + (size_t)y * xoPad;
        float *o = out + (size_t)y * xi;
        for (int x = 0; x < xo; x++) {
            float v = g[x];
            o[xi0[x]] += xw0[x] * v;
            o[xi1[x]] += xw1[x] * v;
        }
    }
}

// ---- AVX2 + FMA ----

AVX2_INLINE __m256i tail_mask(int left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// o[i] = wa·a[i] + wb·b[i], i in [0, n): whole vectors, the last one overlapping when n is not a multiple of 8.
AVX2_INLINE void blend_avx2(const float *a, const float *b, __m256 wa, __m256 wb, float *o, size_t n) {
    if (n < 8) {
        __m256i k = tail_mask((int)n);
        __m256 v = _mm256_fmadd_ps(wb, _mm256_maskload_ps(b, k), _mm256_mul_ps(wa, _mm256_maskload_ps(a, k)));
        _mm256_maskstore_ps(o, k, v);
        return;
    }
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 v0 = _mm256_fmadd_ps(wb, _mm256_loadu_ps(b + i), _mm256_mul_ps(wa, _mm256_loadu_ps(a + i)));
        __m256 v1 = _mm256_fmadd_ps(wb, _mm256_loadu_ps(b + i + 8), _mm256_mul_ps(wa, _mm256_loadu_ps(a + i + 8)));
        _mm256_storeu_ps(o + i, v0);
        _mm256_storeu_ps(o + i + 8, v1);
    }
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(wb, _mm256_loadu_ps(b + i), _mm256_mul_ps(wa, _mm256_loadu_ps(a + i))));
    if (i < n) {  // o may not alias a or b: the overlap recomputes the same values
        i = n - 8;
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(wb, _mm256_loadu_ps(b + i), _mm256_mul_ps(wa, _mm256_loadu_ps(a + i))));
    }
}

// The X pass of one row into xoPad columns of o (lanes past xo: 0).
AVX2_INLINE void xrow_avx2(const float *r, const int32_t *blocks, int nb, float *o) {
    for (int b = 0; b < nb; b++, blocks += FWD_BLOCK) {
        __m256i j0 = _mm256_loadu_si256((const __m256i *)(blocks + 1));
        __m256i j1 = _mm256_loadu_si256((const __m256i *)(blocks + 9));
        __m256 w0 = _mm256_loadu_ps((const float *)(blocks + 17));
        __m256 w1 = _mm256_loadu_ps((const float *)(blocks + 25));
        __m256 a, c;
        if (blocks[0] >= 0) {
            __m256 v = _mm256_loadu_ps(r + blocks[0]);
            a = _mm256_permutevar8x32_ps(v, j0);
            c = _mm256_permutevar8x32_ps(v, j1);
        } else {
            a = _mm256_i32gather_ps(r, j0, 4);
            c = _mm256_i32gather_ps(r, j1, 4);
        }
        _mm256_storeu_ps(o + 8 * b, _mm256_fmadd_ps(w1, c, _mm256_mul_ps(w0, a)));
    }
}

AVX2 static void forward_avx2(const float *a, const float *b, float wa, float wb, int yi, int xi, int yo, int xo,
                              const int32_t *yi0, const int32_t *yi1, const float *yw0, const float *yw1,
                              const int32_t *xplan, float *scratch, float *out) {
    size_t n = (size_t)yi * xi, xoPad = ((size_t)xo + 7) / 8 * 8;
    // blend is followed by 8 spare floats: a block's load may run up to 7 columns past the slice's last row.
    float *blend = scratch, *rows = scratch + n + 8;
    blend_avx2(a, b, _mm256_set1_ps(wa), _mm256_set1_ps(wb), blend, n);
    int nb = xplan[0];
    for (int y = 0; y < yi; y++) xrow_avx2(blend + (size_t)y * xi, xplan + HDR, nb, rows + (size_t)y * xoPad);
    // Large slices (the volume is then far beyond L2): the Y blend streams its rows to memory without reading the
    // lines first (measured on the main job: 0.6 → 0.4 ms for the 2×8×32×48×48 up-sampling, the consumers no slower).
    // The fence makes the streamed stores visible before the caller's work item ends.
    if ((size_t)yo * xo >= STREAM_FLOATS && xo % 8 == 0 && ((uintptr_t)out & 31) == 0) {
        for (int y = 0; y < yo; y++) {
            const float *ra = rows + (size_t)yi0[y] * xoPad, *rb = rows + (size_t)yi1[y] * xoPad;
            __m256 u = _mm256_set1_ps(yw0[y]), v = _mm256_set1_ps(yw1[y]);
            float *o = out + (size_t)y * xo;
            for (int x = 0; x < xo; x += 8)
                _mm256_stream_ps(o + x,
                                 _mm256_fmadd_ps(v, _mm256_loadu_ps(rb + x), _mm256_mul_ps(u, _mm256_loadu_ps(ra + x))));
        }
        _mm_sfence();
        return;
    }
    for (int y = 0; y < yo; y++)
        blend_avx2(rows + (size_t)yi0[y] * xoPad, rows + (size_t)yi1[y] * xoPad, _mm256_set1_ps(yw0[y]),
                   _mm256_set1_ps(yw1[y]), out + (size_t)y * xo, (size_t)xo);
}

// acc[i] (+)= Σ_{r < m} w[r]·s[r][i], i in [0, n) (add: onto acc), in order r = 0, 1, ...; the slices' tails through
// masked loads (never past a slice), acc written in whole vectors.
AVX2_INLINE void zsum_avx2(float *acc, size_t n, const float *const *s, const float *w, int m, int add) {
    __m256 wv[4];
    for (int r = 0; r < m; r++) wv[r] = _mm256_set1_ps(w[r]);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = add ? _mm256_fmadd_ps(wv[0], _mm256_loadu_ps(s[0] + i), _mm256_loadu_ps(acc + i))
                       : _mm256_mul_ps(wv[0], _mm256_loadu_ps(s[0] + i));
        for (int r = 1; r < m; r++) v = _mm256_fmadd_ps(wv[r], _mm256_loadu_ps(s[r] + i), v);
        _mm256_storeu_ps(acc + i, v);
    }
    if (i < n) {
        __m256i k = tail_mask((int)(n - i));
        __m256 v = add ? _mm256_fmadd_ps(wv[0], _mm256_maskload_ps(s[0] + i, k), _mm256_loadu_ps(acc + i))
                       : _mm256_mul_ps(wv[0], _mm256_maskload_ps(s[0] + i, k));
        for (int r = 1; r < m; r++) v = _mm256_fmadd_ps(wv[r], _mm256_maskload_ps(s[r] + i, k), v);
        _mm256_storeu_ps(acc + i, v);
    }
}

AVX2 static void backward_avx2(const float *gplane, size_t outSlice, const int32_t *refOut, const float *refW, int nref,
                               int yi, int xi, int yo, int xo, const int32_t *yi0, const int32_t *yi1,
                               const float *yw0, const float *yw1, const int32_t *xplan, float *scratch, float *out) {
    size_t n = (size_t)yo * xo, xoPad = ((size_t)xo + 7) / 8 * 8;
    // acc: n floats and up to 7 more of the last vector (then 8 spare); rows: [yi][xoPad] and 16 spare (a deinterleaved
    // pair of loads may reach 8 columns past a row).
    float *acc = scratch, *rows = scratch + n + 8;
    // Zᵀ: acc = Σ_r w_r · slice_r, up to 4 slices per pass over acc.
    for (int r0 = 0; r0 < nref; r0 += 4) {
        int m = nref - r0 < 4 ? nref - r0 : 4;
        const float *sl[4];
        float w[4];
        for (int r = 0; r < m; r++) {
            sl[r] = gplane + (size_t)refOut[r0 + r] * outSlice;
            w[r] = refW[r0 + r];
        }
        switch (m) {  // m as a constant in each copy of the loop
        case 1: zsum_avx2(acc, n, sl, w, 1, r0 > 0); break;
        case 2: zsum_avx2(acc, n, sl, w, 2, r0 > 0); break;
        case 3: zsum_avx2(acc, n, sl, w, 3, r0 > 0); break;
        default: zsum_avx2(acc, n, sl, w, 4, r0 > 0); break;
        }
    }
    // Yᵀ: rows[i0] += w0 · acc row, rows[i1] += w1 · acc row (whole vectors of xoPad; lanes past xo unused).
    memset(rows, 0, sizeof(float) * (size_t)yi * xoPad);
    for (int y = 0; y < yo; y++) {
        const float *g = acc + (size_t)y * xo;
        float *oa = rows + (size_t)yi0[y] * xoPad, *ob = rows + (size_t)yi1[y] * xoPad;
        __m256 u = _mm256_set1_ps(yw0[y]), v = _mm256_set1_ps(yw1[y]);
        for (size_t x = 0; x < xoPad; x += 8) {
            __m256 gv = _mm256_loadu_ps(g + x);
            _mm256_storeu_ps(oa + x, _mm256_fmadd_ps(u, gv, _mm256_loadu_ps(oa + x)));
            _mm256_storeu_ps(ob + x, _mm256_fmadd_ps(v, gv, _mm256_loadu_ps(ob + x)));
        }
    }
    // Xᵀ: per block of 8 input columns, gather the output columns that read them.
    int nbb = xplan[2];
    const int32_t *bwd = xplan + xplan[1];
    for (int y = 0; y < yi; y++) {
        const float *g = rows + (size_t)y * xoPad;
        float *o = out + (size_t)y * xi;
        const int32_t *p = bwd;
        for (int b = 0; b < nbb; b++) {
            int k = p[0];
            const int32_t *e = p + 1;
            __m256 s = _mm256_setzero_ps();
            for (int r = 0; r < k; r++, e += BWD_ENTRY) {
                __m256 v;
                int kind = e[0] & 15;
                const float *at = g + ((e[0] >> 4) - 8);
                __m256i idx = _mm256_loadu_si256((const __m256i *)(e + 1));
                __m256 m = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(-1)));
                if (kind == 0) {
                    v = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), g, idx, m, 4);
                } else {
                    if (kind & 1) {
                        v = _mm256_loadu_ps(at);
                    } else {
                        __m256 lo = _mm256_loadu_ps(at), hi = _mm256_loadu_ps(at + 8);
                        __m256 even = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));  // 0 2 8 10 4 6 12 14
                        v = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), _MM_SHUFFLE(3, 1, 2, 0)));
                    }
                    if (kind > 2) v = _mm256_and_ps(v, m);
                }
                s = _mm256_fmadd_ps(_mm256_loadu_ps((const float *)(e + 9)), v, s);
            }
            int left = xi - 8 * b;
            if (left >= 8) _mm256_storeu_ps(o + 8 * b, s);
            else _mm256_maskstore_ps(o + 8 * b, tail_mask(left), s);
            p += 1 + BWD_ENTRY * k;
        }
    }
}

// ---- API ----

// Set by tests only (ck_tri_set_portable), before the calls it affects.
static volatile int portable_only = 0;

void ck_tri_set_portable(int on) { portable_only = on != 0; }

static int use_avx2(void) { return !portable_only && ck_cpu_has_avx2(); }

void ck_tri_forward(const float *a, const float *b, float wa, float wb, int yi, int xi, int yo, int xo,
                    const int32_t *yi0, const int32_t *yi1, const float *yw0, const float *yw1, const int32_t *xi0,
                    const int32_t *xi1, const float *xw0, const float *xw1, const int32_t *xplan, float *scratch,
                    float *out) {
    if (use_avx2()) forward_avx2(a, b, wa, wb, yi, xi, yo, xo, yi0, yi1, yw0, yw1, xplan, scratch, out);
    else forward_c(a, b, wa, wb, yi, xi, yo, xo, yi0, yi1, yw0, yw1, xi0, xi1, xw0, xw1, scratch, out);
}

void ck_tri_backward(const float *gplane, size_t outSlice, const int32_t *refOut, const float *refW, int nref, int yi,
                     int xi, int yo, int xo, const int32_t *yi0, const int32_t *yi1, const float *yw0,
                     const float *yw1, const int32_t *xi0, const int32_t *xi1, const float *xw0, const float *xw1,
                     const int32_t *xplan, float *scratch, float *out) {
    if (nref == 0) {
        memset(out, 0, sizeof(float) * (size_t)yi * xi);
        return;
    }
    if (use_avx2())
        backward_avx2(gplane, outSlice, refOut, refW, nref, yi, xi, yo, xo, yi0, yi1, yw0, yw1, xplan, scratch, out);
    else
        backward_c(gplane, outSlice, refOut, refW, nref, yi, xi, yo, xo, yi0, yi1, yw0, yw1, xi0, xi1, xw0, xw1,
                   scratch, out);
}
