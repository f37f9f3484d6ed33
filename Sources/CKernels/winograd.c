// Winograd F(2x2x2, 3x3x3) convolution kernels for AVX2+FMA and AVX-512F (API: winograd.h).
//
// Per axis F(2,3): B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
// A^T = [1 1 1 0; 0 1 -1 -1]. A tile is 2x2x2 outputs, read from a 4x4x4 input patch; the 64 transformed
// positions p = i*16 + j*4 + k (z, y, x frequency) are 64 independent GEMMs over the channels
// (64 multiplications per tile and channel pair instead of 216).
//
// Lanes are tiles. The tiles of a call are numbered t = tzi*(nty*(ntx+1)) + ty*(ntx+1) + tx, with one dummy
// tile (tx = ntx) per tile row, so that lane l + 1 always holds the next two x of lane l's tile row. The
// staging (stage_in) reads each input row piece once per tile row, splits it by x parity (two loads and a
// shuffle per vector; masked loads at the volume's edges give the zero padding), applies the z and y
// transforms there, and stores S[(i*4 + j)*2 + parity][lane]; the x transform (tin) then reads lanes l and
// l + 1 of the two parities. Partial edge tiles read zeros and their outputs outside the volume are dropped.
//
// Work is fused over blocks of T tiles (T from the channel counts, so that a block's buffers stay within
// about L2): stage + input transform into V[p][ci][T], the 64 GEMMs, output transform + scatter. Nothing is
// written at full size; the workspace depends on the channel counts only.
//   forward / backward-data: M[co][p][T] = sum_ci U[p][co][ci] V[p][ci][T], register tile 4 output channels
//     x NV vectors of tiles (AVX2: 4 x 2, AVX-512: 4 x 3 accumulators), the 4 weights of a step broadcast
//     from the plan [p][co/4][ci][4]. Output transform with the bias, x-interleaved stores into [C][Z][Y][X].
//     Backward-data is the same code with the plan of the flipped, transposed weights.
//   backward-weights: dU[p][ci][co] += sum_t V[p][ci][t] dM[p][t][co] with dM = A dY A^T computed with the
//     output channels in the lanes (dY staged through an 8x8 transpose, 8 channels at a time), register tile
//     6 input channels x 2 vectors of output channels (or 12 x 1), no horizontal sums; dU (64 * Cin *
//     pad(Cout range, W) floats of the workspace) is transformed once at the end of the call: dw += G^T dU G.
//
// The vector code is written once (the body below, under WINO_BODY) and instantiated twice by including
// this file again: W = 8 under target("avx2,fma") and W = 16 under target("avx512f,fma"); the two differ only
// in the macros that name the vector type, its loads, stores, FMA, masked load, and x-parity shuffles.
// Building with -DWINO_TEST_EMU16 adds a third, test-only instantiation (isa512 = 2) with 16-float generic
// vectors that runs every W = 16 code path on an AVX2 machine.
#ifndef WINO_BODY

#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include "winograd.h"

#define WINO_NR 4   // output channels of the register tile (the plan's channel group)
#ifndef WINO_NV2
#define WINO_NV2 2  // vectors of tiles of the forward register tile, AVX2 (4 x 2 = 8 accumulators)
#endif
#define WINO_NV512 3  // the same, AVX-512 (4 x 3 = 12 accumulators)
#define WINO_NV_OF(w) ((w) == 8 ? WINO_NV2 : WINO_NV512)
#define WINO_NC 12  // input channels of the backward-weights register tile (x 1 vector of output channels)

typedef struct {
    int nx, ny, nz, z0, z1;
    int ntx, nty, rowl;  // tiles per row, tile rows, lanes per tile row (ntx + 1: one dummy)
    long plane_l;        // lanes per tile slice
    long total;          // lanes of the call
    size_t vol;
} wgeo;

static void wgeo_init(wgeo *g, int nz, int ny, int nx, int z0, int z1) {
    g->nx = nx; g->ny = ny; g->nz = nz; g->z0 = z0; g->z1 = z1;
    g->ntx = (nx + 1) / 2; g->nty = (ny + 1) / 2; g->rowl = g->ntx + 1;
    g->plane_l = (long)g->nty * g->rowl;
    int ntz = z1 > z0 ? (z1 - z0 + 1) / 2 : 0;
    g->total = (long)ntz * g->plane_l;
    g->vol = (size_t)nz * ny * nx;
}

static int pad_to(int n, int m) { return (n + m - 1) / m * m; }

// The workspace rounded up to 64 bytes (the sizes below include 64 floats of slack for it).
static float *wino_align64(float *p) { return (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

// Stride between the 64 positions of V / M / D: rows + 16 floats, so that the 64 rows written together by
// a transform do not fall into the same few L1 sets (rows * T is often a multiple of 1 KiB).
static size_t pos_stride(size_t rows, int T) { return rows * (size_t)T + 16; }

// Forward / backward-data block: T = k * NV * W tiles, k chosen so V and M of a block stay within ~L2.
static int fwd_T(int cin, int cout, int w) {
    int nvw = WINO_NV_OF(w) * w;
    size_t per = (size_t)64 * (size_t)(cin + pad_to(cout, WINO_NR)) * nvw * 4;
    int k = (int)((size_t)512 * 1024 / per);
    // At least 32 tiles: the staging computes one vector past the block (lane T), wasted on short blocks.
    if (k * nvw < 32) k = (32 + nvw - 1) / nvw;
    if (k > 4) k = 4;
    return k * nvw;
}

// Backward-weights block: T = k * W tiles (the reduction length of one register tile). V [64][cin][T] and
// dM transposed [64][T][pad(Cout range, W)] per block.
static int bww_T(int cin, int cout, int w) {
    size_t per = (size_t)64 * (size_t)(cin + pad_to(cout, w)) * w * 4;
    int k = (int)((size_t)512 * 1024 / per);
    // At least 64 tiles: each block reads and writes all of dU (64 * Cin * Cout floats), which for deep
    // layers lives in L3; fewer tiles per block would make that traffic dominate.
    if (k < 64 / w) k = 64 / w;
    if (k > 16) k = 16;
    return k * w;
}

static size_t fwd_ws(int cin, int cout, int w) {
    int T = fwd_T(cin, cout, w);
    return 64 * pos_stride((size_t)cin, T) + (size_t)pad_to(cout, WINO_NR) * (64 * (size_t)T + 16) + (size_t)32 * (T + w + 16) +
           (size_t)8 * T + (size_t)2 * (T + w + 16) + 2 * (size_t)w + 128;
}

static size_t bww_ws(int cin, int cout, int w) {
    int T = bww_T(cin, cout, w), cop = pad_to(cout, w);
    return 64 * pos_stride((size_t)cin, T) + 64 * pos_stride((size_t)cop, T) + 64 * pos_stride((size_t)cin, cop) +
           (size_t)32 * (T + w + 16) + (size_t)64 * (T + w + 16) + (size_t)2 * (T + w + 16) + 2 * (size_t)w + 128;
}

// 1D filter transform u = G g.
static void g_fwd(const double g[3], double u[4]) {
    u[0] = g[0];
    u[1] = 0.5 * (g[0] + g[1] + g[2]);
    u[2] = 0.5 * (g[0] - g[1] + g[2]);
    u[3] = g[2];
}

// 3D filter transform of one 3x3x3 filter (kz, ky, kx) into u[i*16 + j*4 + k]; flip reverses the taps.
static void filter_transform(const float *w, int flip, double u[64]) {
    double g[27], a[3][3][4], b[3][4][4];
    for (int q = 0; q < 27; q++) g[q] = w[flip ? 26 - q : q];
    for (int z = 0; z < 3; z++)
        for (int y = 0; y < 3; y++) g_fwd(&g[z * 9 + y * 3], a[z][y]);
    for (int z = 0; z < 3; z++)
        for (int k = 0; k < 4; k++) {
            double t[3] = {a[z][0][k], a[z][1][k], a[z][2][k]}, o[4];
            g_fwd(t, o);
            for (int j = 0; j < 4; j++) b[z][j][k] = o[j];
        }
    for (int j = 0; j < 4; j++)
        for (int k = 0; k < 4; k++) {
            double t[3] = {b[0][j][k], b[1][j][k], b[2][j][k]}, o[4];
            g_fwd(t, o);
            for (int i = 0; i < 4; i++) u[i * 16 + j * 4 + k] = o[i];
        }
}

// m ranges in multiples of the vector width: forward / backward-data work in groups of 4 output channels,
// backward-weights has output channels in the lanes (a range that is not a multiple of W pads lanes).
int ck_winograd_channel_group(int isa512) { return isa512 ? 16 : 8; }

size_t ck_winograd_plan_floats(int cin, int cout, ck_pass pass, int isa512) {
    (void)isa512;
    switch (pass) {
    case CK_PASS_FORWARD: return (size_t)64 * pad_to(cout, WINO_NR) * cin;
    case CK_PASS_BACKWARD_DATA: return (size_t)64 * pad_to(cin, WINO_NR) * cout;
    default: return 0;
    }
}

// Plan layout: plan[((p * G + g) * K + c) * 4 + r] = U[p] of output channel 4g + r, input channel c
// (G groups of 4 output channels, K input channels; zero past the last output channel).
void ck_winograd_plan(const float *w, float *plan, int cin, int cout, ck_pass pass, int isa512) {
    (void)isa512;
    if (pass != CK_PASS_FORWARD && pass != CK_PASS_BACKWARD_DATA) return;
    int bd = pass == CK_PASS_BACKWARD_DATA;
    int M = bd ? cin : cout, K = bd ? cout : cin, G = pad_to(M, WINO_NR) / WINO_NR;
    memset(plan, 0, sizeof(float) * ck_winograd_plan_floats(cin, cout, pass, isa512));
    double u[64];
    for (int m = 0; m < M; m++)
        for (int c = 0; c < K; c++) {
            // forward: w[m][c]; backward-data: w'[m][c] = w[c][m] flipped.
            const float *f = bd ? w + ((size_t)c * cin + m) * 27 : w + ((size_t)m * cin + c) * 27;
            filter_transform(f, bd, u);
            int g = m / WINO_NR, r = m % WINO_NR;
            for (int p = 0; p < 64; p++) plan[(((size_t)p * G + g) * K + c) * WINO_NR + r] = (float)u[p];
        }
}

size_t ck_winograd_workspace_floats(int cin, int cout, int nz, int ny, int nx, int nzslab, ck_pass pass,
                                    int isa512) {
    (void)nz; (void)ny; (void)nx; (void)nzslab;
    int w = isa512 ? 16 : 8;
    switch (pass) {
    case CK_PASS_FORWARD: return fwd_ws(cin, cout, w);
    case CK_PASS_BACKWARD_DATA: return fwd_ws(cout, cin, w);
    case CK_PASS_BACKWARD_WEIGHTS: return bww_ws(cin, cout, w);
    }
    return 0;
}

// dw[27] += G^T du G (per axis dg0 = du0 + (du1 + du2)/2, dg1 = (du1 - du2)/2, dg2 = (du1 + du2)/2 + du3), for
// four (co, ci) pairs at once, one per double lane: lane l adds its 27 taps to dw + l * lstride, for the
// nl <= 4 lanes that exist.
typedef double wd4 __attribute__((vector_size(32)));
typedef float wf4 __attribute__((vector_size(16)));

static inline void gt_1d4(const wd4 u[4], wd4 g[3]) {
    wd4 s = 0.5 * (u[1] + u[2]);
    g[0] = u[0] + s;
    g[1] = 0.5 * (u[1] - u[2]);
    g[2] = s + u[3];
}

static void dw_transform4(const wd4 du[64], float *dw, size_t lstride, int nl) {
    wd4 a[4][4][3], b[4][3][3], o[3];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) gt_1d4(&du[i * 16 + j * 4], a[i][j]);
    for (int i = 0; i < 4; i++)
        for (int kx = 0; kx < 3; kx++) {
            wd4 t[4] = {a[i][0][kx], a[i][1][kx], a[i][2][kx], a[i][3][kx]};
            gt_1d4(t, o);
            for (int ky = 0; ky < 3; ky++) b[i][ky][kx] = o[ky];
        }
    for (int ky = 0; ky < 3; ky++)
        for (int kx = 0; kx < 3; kx++) {
            wd4 t[4] = {b[0][ky][kx], b[1][ky][kx], b[2][ky][kx], b[3][ky][kx]};
            gt_1d4(t, o);
            for (int l = 0; l < nl; l++)
                for (int kz = 0; kz < 3; kz++) dw[l * lstride + kz * 9 + ky * 3 + kx] += (float)o[kz][l];
        }
}

// p[k] for the k < W with 0 <= x0 + k < nx, else 0 (masked lanes never fault).
static inline __attribute__((always_inline, target("avx2,fma"))) __m256 mloadx_avx2(const float *p, int x0, int nx) {
    __m256i vx = _mm256_add_epi32(_mm256_set1_epi32(x0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i m = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), vx),
                                    _mm256_cmpgt_epi32(_mm256_set1_epi32(nx), vx));
    return _mm256_maskload_ps(p, m);
}
static inline __attribute__((always_inline, target("avx512f,fma"))) __m512 mloadx_avx512(const float *p, int x0, int nx) {
    __m512i vx = _mm512_add_epi32(_mm512_set1_epi32(x0),
                                  _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    __mmask16 m = _mm512_cmpge_epi32_mask(vx, _mm512_setzero_si512()) & _mm512_cmplt_epi32_mask(vx, _mm512_set1_epi32(nx));
    return _mm512_maskz_loadu_ps(m, p);
}

// dst[c * ds + r] = r_r[c] for r, c < 8 (8x8 transpose of registers into memory).
static inline __attribute__((always_inline, target("avx2,fma"))) void tr8x8(__m256 r0, __m256 r1, __m256 r2, __m256 r3,
                                                                            __m256 r4, __m256 r5, __m256 r6, __m256 r7,
                                                                            float *dst, size_t ds) {
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
           t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
           t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
           u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
           u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
           u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + ds, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
}

// Stages 8 dout channels src + c * vol (c < n8; zero for c >= n8) for lanes [t0, t0 + T), transposed so
// that lanes are channels: Od8[((a*2 + b) * os + 2l + cx) * 8 + c] = src[c][z0 + 2tzi + a][2ty + b][2tx + cx]
// (zero outside [z0, z1) x ny x nx, on dummy lanes, past the last lane). os >= 2T + 8.
static __attribute__((target("avx2,fma"))) void stage_dout8(const float *src, size_t vol, int n8, float *Od8,
                                                             int os, int T, const wgeo *g, long t0) {
    const int nx = g->nx, ny = g->ny;
    const __m256 zero = _mm256_setzero_ps();
    int l = 0;
    while (l < T) {
        long t = t0 + l;
        if (t >= g->total) {
            for (int ab = 0; ab < 4; ab++)
                memset(Od8 + ((size_t)ab * os + 2 * l) * 8, 0, sizeof(float) * 16 * (size_t)(T - l));
            break;
        }
        int tzi = (int)(t / g->plane_l), r = (int)(t % g->plane_l);
        int ty = r / g->rowl, tx = r % g->rowl;
        int run = g->rowl - tx;
        if (run > T - l) run = T - l;
        const int nch = (2 * run + 7) / 8, xb = 2 * tx;  // chunks of 8 x positions (4 lanes)
        for (int a = 0; a < 2; a++) {
            int z = g->z0 + 2 * tzi + a;
            for (int b = 0; b < 2; b++) {
                int y = 2 * ty + b;
                float *d = Od8 + ((size_t)(a * 2 + b) * os + 2 * l) * 8;
                if (z >= g->z1 || y >= ny) {
                    for (int k = 0; k < nch * 8; k++) _mm256_storeu_ps(d + (size_t)k * 8, zero);
                    continue;
                }
                const float *rp = src + ((size_t)z * ny + y) * nx + xb;  // x = xb + k; x >= nx on the dummy
                for (int k = 0; k < nch; k++) {
                    const int x0 = xb + 8 * k;
                    __m256 v[8];
                    if (x0 + 8 <= nx) {
                        for (int c = 0; c < 8; c++) v[c] = c < n8 ? _mm256_loadu_ps(rp + c * vol + 8 * k) : zero;
                    } else {
                        for (int c = 0; c < 8; c++) v[c] = c < n8 ? mloadx_avx2(rp + c * vol + 8 * k, x0, nx) : zero;
                    }
                    tr8x8(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], d + (size_t)k * 64, 8);
                }
                for (int c = 0; c < n8; c++) {
                    const char *pf = (const char *)(rp + c * vol + 2 * run);
                    for (int q = 0; q < 8 * T; q += 64) _mm_prefetch(pf + q, _MM_HINT_T0);
                }
            }
        }
        l += run;
    }
}

// dM = A dY A^T per axis (dm = [y0, y0 + y1, y0 - y1, -y1]) of the lanes [0, T) of a transposed staging
// (8 channels a vector): Dt[p * pstride + l * ldd + c] for c < 8.
static __attribute__((target("avx2,fma"))) void tdout8(const float *Od8, int os, int T, float *Dt, size_t pstride,
                                                        size_t ldd) {
    for (int l = 0; l < T; l++) {
        __m256 s[16];  // [a][b][k]
        for (int ab = 0; ab < 4; ab++) {
            const float *o = Od8 + ((size_t)ab * os + 2 * l) * 8;
            __m256 y0 = _mm256_loadu_ps(o), y1 = _mm256_loadu_ps(o + 8);
            s[ab * 4 + 0] = y0;
            s[ab * 4 + 1] = y0 + y1;
            s[ab * 4 + 2] = y0 - y1;
            s[ab * 4 + 3] = -y1;
        }
        __m256 q[32];  // [a][j][k]
        for (int ak = 0; ak < 8; ak++) {
            int a = ak >> 2, k = ak & 3;
            __m256 y0 = s[(a * 2 + 0) * 4 + k], y1 = s[(a * 2 + 1) * 4 + k];
            q[a * 16 + 0 + k] = y0;
            q[a * 16 + 4 + k] = y0 + y1;
            q[a * 16 + 8 + k] = y0 - y1;
            q[a * 16 + 12 + k] = -y1;
        }
        float *dl = Dt + (size_t)l * ldd;
        for (int jk = 0; jk < 16; jk++) {
            __m256 y0 = q[jk], y1 = q[16 + jk];
            _mm256_storeu_ps(dl + (size_t)jk * pstride, y0);
            _mm256_storeu_ps(dl + (size_t)(16 + jk) * pstride, y0 + y1);
            _mm256_storeu_ps(dl + (size_t)(32 + jk) * pstride, y0 - y1);
            _mm256_storeu_ps(dl + (size_t)(48 + jk) * pstride, -y1);
        }
    }
}

// dbias[co] += sum of dout[co] over slices [z0, z1), accumulated in double.
static __attribute__((target("avx2,fma"))) void bias_grad_avx2(const float *dout, float *dbias, const wgeo *g,
                                                                int m0, int m1) {
    size_t plane = (size_t)g->ny * g->nx, n = (size_t)(g->z1 - g->z0) * plane;
    for (int co = m0; co < m1; co++) {
        const float *p = dout + co * g->vol + (size_t)g->z0 * plane;
        __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm_loadu_ps(p + i)));
            a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm_loadu_ps(p + i + 4)));
        }
        double t[4];
        _mm256_storeu_pd(t, _mm256_add_pd(a0, a1));
        double s = (t[0] + t[1]) + (t[2] + t[3]);
        for (; i < n; i++) s += p[i];
        dbias[co] += (float)s;
    }
}

// ---- the vector code, twice ----
#define WINO_BODY 1

#define W 8
#define SUF avx2
#define TGT __attribute__((target("avx2,fma")))
#define VF __m256
#define LD(p) _mm256_loadu_ps(p)
#define ST(p, v) _mm256_storeu_ps((p), (v))
#define SET1(s) _mm256_set1_ps(s)
#define VZERO() _mm256_setzero_ps()
#define FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
// e = p[0, 2, .., 2W-2], o = p[1, 3, .., 2W-1]
#define MLOADX(p, x0, nx) mloadx_avx2((p), (x0), (nx))
#define DEINT(p, e, o) DEINT2(_mm256_loadu_ps(p), _mm256_loadu_ps((p) + 8), e, o)
#define DEINT2(lo, hi, e, o) do { \
        __m256 lo_ = (lo), hi_ = (hi); \
        e = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo_, hi_, 0x88)), 0xD8)); \
        o = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo_, hi_, 0xDD)), 0xD8)); \
    } while (0)
// p[2q] = e[q], p[2q + 1] = o[q]
#define INTERLEAVE_ST(p, e, o) do { \
        __m256 l_ = _mm256_unpacklo_ps(e, o), h_ = _mm256_unpackhi_ps(e, o); \
        _mm256_storeu_ps(p, _mm256_permute2f128_ps(l_, h_, 0x20)); \
        _mm256_storeu_ps((p) + 8, _mm256_permute2f128_ps(l_, h_, 0x31)); \
    } while (0)
#include "winograd.c"
#undef W
#undef SUF
#undef TGT
#undef VF
#undef LD
#undef ST
#undef SET1
#undef VZERO
#undef FMA
#undef DEINT
#undef DEINT2
#undef MLOADX
#undef INTERLEAVE_ST

#define W 16
#define SUF avx512
#define TGT __attribute__((target("avx512f,fma")))
#define VF __m512
#define LD(p) _mm512_loadu_ps(p)
#define ST(p, v) _mm512_storeu_ps((p), (v))
#define SET1(s) _mm512_set1_ps(s)
#define VZERO() _mm512_setzero_ps()
#define FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define MLOADX(p, x0, nx) mloadx_avx512((p), (x0), (nx))
#define DEINT(p, e, o) DEINT2(_mm512_loadu_ps(p), _mm512_loadu_ps((p) + 16), e, o)
#define DEINT2(lo, hi, e, o) do { \
        __m512 lo_ = (lo), hi_ = (hi); \
        e = _mm512_permutex2var_ps(lo_, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), hi_); \
        o = _mm512_permutex2var_ps(lo_, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), hi_); \
    } while (0)
#define INTERLEAVE_ST(p, e, o) do { \
        _mm512_storeu_ps(p, _mm512_permutex2var_ps(e, _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), o)); \
        _mm512_storeu_ps((p) + 16, _mm512_permutex2var_ps(e, _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), o)); \
    } while (0)
#include "winograd.c"

#ifdef WINO_TEST_EMU16
// Test only (never built in the package): the 16-lane code paths of the AVX-512 instantiation, run with
// 16-float GCC vectors on an AVX2 machine (isa512 = 2), to check everything that depends on W = 16.
#undef W
#undef SUF
#undef TGT
#undef VF
#undef LD
#undef ST
#undef SET1
#undef VZERO
#undef FMA
#undef DEINT
#undef DEINT2
#undef MLOADX
#undef INTERLEAVE_ST
typedef float wemu16 __attribute__((vector_size(64)));
#define EMU static inline __attribute__((always_inline, target("avx2,fma")))
EMU wemu16 emu_ld(const float *p) { wemu16 v; memcpy(&v, p, 64); return v; }
EMU void emu_st(float *p, wemu16 v) { memcpy(p, &v, 64); }
EMU wemu16 emu_mloadx(const float *p, int x0, int nx) {
    wemu16 v = {0};
    for (int k = 0; k < 16; k++)
        if (x0 + k >= 0 && x0 + k < nx) v[k] = p[k];
    return v;
}
#define W 16
#define SUF emu16
#define TGT __attribute__((target("avx2,fma")))
#define VF wemu16
#define LD(p) emu_ld(p)
#define ST(p, v) emu_st((p), (v))
#define SET1(s) ((wemu16){0} + (s))
#define VZERO() ((wemu16){0})
#define FMA(a, b, c) ((a) * (b) + (c))
#define MLOADX(p, x0, nx) emu_mloadx((p), (x0), (nx))
#define DEINT(p, e, o) DEINT2(emu_ld(p), emu_ld((p) + 16), e, o)
#define DEINT2(lo, hi, e, o) do { \
        wemu16 lo_ = (lo), hi_ = (hi); \
        for (int k_ = 0; k_ < 8; k_++) { \
            e[k_] = lo_[2 * k_]; o[k_] = lo_[2 * k_ + 1]; e[8 + k_] = hi_[2 * k_]; o[8 + k_] = hi_[2 * k_ + 1]; \
        } \
    } while (0)
#define INTERLEAVE_ST(p, e, o) do { \
        wemu16 e_ = (e), o_ = (o); \
        for (int k_ = 0; k_ < 16; k_++) { (p)[2 * k_] = e_[k_]; (p)[2 * k_ + 1] = o_[k_]; } \
    } while (0)
#include "winograd.c"
#define WINO_FWD(isa) ((isa) == 2 ? wino_fwd_emu16 : (isa) ? wino_fwd_avx512 : wino_fwd_avx2)
#define WINO_BWW(isa) ((isa) == 2 ? wino_bww_emu16 : (isa) ? wino_bww_avx512 : wino_bww_avx2)
#else
#define WINO_FWD(isa) ((isa) ? wino_fwd_avx512 : wino_fwd_avx2)
#define WINO_BWW(isa) ((isa) ? wino_bww_avx512 : wino_bww_avx2)
#endif

// ---- exported entry points ----

void ck_winograd_forward(const float *in, const float *plan, const float *bias, float *out,
                         int cin, int cout, int nz, int ny, int nx, int z0, int z1, int m0, int m1,
                         int isa512, float *ws) {
    if (z1 <= z0 || m1 <= m0) return;
    WINO_FWD(isa512)(in, plan, bias, out, cin, cout, nz, ny, nx, z0, z1, m0, m1, ws);
}

void ck_winograd_backward_data(const float *dout, const float *plan, float *din,
                               int cin, int cout, int nz, int ny, int nx, int z0, int z1, int m0, int m1,
                               int isa512, float *ws) {
    if (z1 <= z0 || m1 <= m0) return;
    WINO_FWD(isa512)(dout, plan, NULL, din, cout, cin, nz, ny, nx, z0, z1, m0, m1, ws);
}

void ck_winograd_backward_weights(const float *in, const float *dout, float *dw, float *dbias,
                                  int cin, int cout, int nz, int ny, int nx, int z0, int z1,
                                  int m0, int m1, int isa512, float *ws) {
    if (z1 <= z0 || m1 <= m0) return;
    WINO_BWW(isa512)(in, dout, dw, cin, cout, nz, ny, nx, z0, z1, m0, m1, ws);
    if (dbias) {
        wgeo g;
        wgeo_init(&g, nz, ny, nx, z0, z1);
        bias_grad_avx2(dout, dbias, &g, m0, m1);
    }
}

#else  // WINO_BODY: instantiated with W, SUF, TGT, VF, LD, ST, SET1, VZERO, FMA, MLOADX, DEINT, DEINT2, INTERLEAVE_ST

#define WCAT_(a, b) a##_##b
#define WCAT(a, b) WCAT_(a, b)
#define FN(n) WCAT(n, SUF)
#define KI static inline __attribute__((always_inline)) TGT
#define KF static TGT __attribute__((noinline))
#define NV WINO_NV_OF(W)

// Stages the input channel `src` for the lanes [t0, t0 + npos), with the z and y transforms applied:
// S[(i*4 + j)*2 + par][l] = sum_{z,y} B^T[i][z] B^T[j][y] src[z0 + 2tzi - 1 + z][2ty - 1 + y][2tx - 1 + par]
// (zero outside the volume and past the last lane). The x transform (tin) then reads lanes l and l + 1.
// Whole vectors of W lanes: a run's last vector spills into the next run's lanes (rewritten by it) or into
// the slack past npos (ss >= npos + W - 1).
KF void FN(stage_in)(const float *src, float *S, int ss, const wgeo *g, long t0, int npos, const float *zrow) {
    const int nx = g->nx, ny = g->ny, nz = g->nz;
    int l = 0;
    while (l < npos) {
        long t = t0 + l;
        if (t >= g->total) {
            for (int a = 0; a < 32; a++) memset(S + (size_t)a * ss + l, 0, sizeof(float) * (size_t)(npos - l));
            break;
        }
        int tzi = (int)(t / g->plane_l), r = (int)(t % g->plane_l);
        int ty = r / g->rowl, tx = r % g->rowl;
        int run = g->rowl - tx;
        if (run > npos - l) run = npos - l;
        const int nvr = (run + W - 1) / W;
        const int zb = g->z0 + 2 * tzi - 1, yb = 2 * ty - 1, xb = 2 * tx - 1;
        const float *rows[16];  // x = xb + position; rows outside the volume read the zero row
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) {
                int z = zb + i, y = yb + j;
                rows[i * 4 + j] = z < 0 || z >= nz || y < 0 || y >= ny ? zrow : src + ((size_t)z * ny + y) * nx + xb;
            }
        float *sl = S + l;
        for (int v = 0; v < nvr; v++) {
            const int x0 = xb + 2 * v * W, q = 2 * v * W;
            const int inner = x0 >= 0 && x0 + 2 * W <= nx;
            VF e[16], o[16];
#pragma GCC unroll 16
            for (int ij = 0; ij < 16; ij++) {
                const float *rp = rows[ij];
                if (inner) {
                    DEINT(rp + q, e[ij], o[ij]);
                } else {
                    DEINT2(MLOADX(rp + q, x0, nx), MLOADX(rp + q + W, x0 + W, nx), e[ij], o[ij]);
                }
            }
            // y: [d0 - d2, d1 + d2, d2 - d1, d1 - d3] over j, then the same over i.
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                VF d0 = e[i * 4], d1 = e[i * 4 + 1], d2 = e[i * 4 + 2], d3 = e[i * 4 + 3];
                e[i * 4] = d0 - d2; e[i * 4 + 1] = d1 + d2; e[i * 4 + 2] = d2 - d1; e[i * 4 + 3] = d1 - d3;
                d0 = o[i * 4]; d1 = o[i * 4 + 1]; d2 = o[i * 4 + 2]; d3 = o[i * 4 + 3];
                o[i * 4] = d0 - d2; o[i * 4 + 1] = d1 + d2; o[i * 4 + 2] = d2 - d1; o[i * 4 + 3] = d1 - d3;
            }
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                VF d0 = e[j], d1 = e[4 + j], d2 = e[8 + j], d3 = e[12 + j];
                ST(sl + (size_t)((0 * 4 + j) * 2) * ss + v * W, d0 - d2);
                ST(sl + (size_t)((1 * 4 + j) * 2) * ss + v * W, d1 + d2);
                ST(sl + (size_t)((2 * 4 + j) * 2) * ss + v * W, d2 - d1);
                ST(sl + (size_t)((3 * 4 + j) * 2) * ss + v * W, d1 - d3);
                d0 = o[j]; d1 = o[4 + j]; d2 = o[8 + j]; d3 = o[12 + j];
                ST(sl + (size_t)((0 * 4 + j) * 2 + 1) * ss + v * W, d0 - d2);
                ST(sl + (size_t)((1 * 4 + j) * 2 + 1) * ss + v * W, d1 + d2);
                ST(sl + (size_t)((2 * 4 + j) * 2 + 1) * ss + v * W, d2 - d1);
                ST(sl + (size_t)((3 * 4 + j) * 2 + 1) * ss + v * W, d1 - d3);
            }
        }
        // The next block reads on from here (or the next rows, which follow in memory): a block touches 16
        // short row pieces per channel, too many streams for the hardware prefetcher.
        for (int ij = 0; ij < 16; ij++) {
            const char *pf = (const char *)(rows[ij] + 2 * run);
            for (int b = 0; b < 8 * npos; b += 64) _mm_prefetch(pf + b, _MM_HINT_T0);
        }
        l += run;
    }
}

// x transform of one staged channel: V[(ij*4 + k) * pstride + l] for l in [0, nvec * W), from
// a = S[ij][0][l], b = S[ij][1][l], c = S[ij][0][l + 1], d = S[ij][1][l + 1]: [a - c, b + c, c - b, b - d].
KF void FN(tin)(const float *S, int ss, float *V, size_t pstride, int nvec) {
    for (int v = 0; v < nvec; v++) {
        const int o = v * W;
#pragma GCC unroll 4
        for (int ij = 0; ij < 16; ij++) {
            const float *s0 = S + (size_t)(2 * ij) * ss + o, *s1 = s0 + ss;
            VF a = LD(s0), b = LD(s1), c = LD(s0 + 1), d = LD(s1 + 1);
            ST(V + (size_t)(ij * 4 + 0) * pstride + o, a - c);
            ST(V + (size_t)(ij * 4 + 1) * pstride + o, b + c);
            ST(V + (size_t)(ij * 4 + 2) * pstride + o, c - b);
            ST(V + (size_t)(ij * 4 + 3) * pstride + o, b - d);
        }
    }
}

// M[r * mstride + j*W] = sum_ci U[ci*4 + r] * V[ci*T + j*W] for r < 4, j < NV.
KI void FN(gemm_fwd)(const float *U, const float *V, int T, int cin, float *M, size_t mstride) {
    VF acc[WINO_NR][NV];
#pragma GCC unroll 4
    for (int r = 0; r < WINO_NR; r++)
#pragma GCC unroll 3
        for (int j = 0; j < NV; j++) acc[r][j] = VZERO();
    for (int ci = 0; ci < cin; ci++) {
        const float *vp = V + (size_t)ci * T;
        VF x[NV];
#pragma GCC unroll 3
        for (int j = 0; j < NV; j++) x[j] = LD(vp + j * W);
#pragma GCC unroll 4
        for (int r = 0; r < WINO_NR; r++) {
            VF b = SET1(U[ci * WINO_NR + r]);
#pragma GCC unroll 3
            for (int j = 0; j < NV; j++) acc[r][j] = FMA(b, x[j], acc[r][j]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < WINO_NR; r++)
#pragma GCC unroll 3
        for (int j = 0; j < NV; j++) ST(M + (size_t)r * mstride + j * W, acc[r][j]);
}

// Output transform of one channel: Ob[(a*2 + b)*2 + c][l] = bias + (A^T M A)[a][b][c], M[p*T + l].
KF void FN(tout)(const float *M, int T, float bias, float *Ob, int nvec) {
    VF bv = SET1(bias);
    for (int v = 0; v < nvec; v++) {
        const int o = v * W;
        VF s[32];
#pragma GCC unroll 16
        for (int ij = 0; ij < 16; ij++) {
            const float *m = M + (size_t)(ij * 4) * T + o;
            VF m0 = LD(m), m1 = LD(m + T), m2 = LD(m + 2 * T), m3 = LD(m + 3 * T);
            s[ij * 2 + 0] = m0 + m1 + m2;
            s[ij * 2 + 1] = m1 - m2 - m3;
        }
        VF q[16];  // [i][b][c]
#pragma GCC unroll 8
        for (int ic = 0; ic < 8; ic++) {
            int i = ic >> 1, c = ic & 1;
            VF d0 = s[(i * 4 + 0) * 2 + c], d1 = s[(i * 4 + 1) * 2 + c], d2 = s[(i * 4 + 2) * 2 + c],
               d3 = s[(i * 4 + 3) * 2 + c];
            q[i * 4 + 0 + c] = d0 + d1 + d2;
            q[i * 4 + 2 + c] = d1 - d2 - d3;
        }
#pragma GCC unroll 4
        for (int bc = 0; bc < 4; bc++) {
            VF d0 = q[bc], d1 = q[4 + bc], d2 = q[8 + bc], d3 = q[12 + bc];
            ST(Ob + (size_t)bc * T + o, d0 + d1 + d2 + bv);
            ST(Ob + (size_t)(4 + bc) * T + o, d1 - d2 - d3 + bv);
        }
    }
}

// Writes the 2x2x2 outputs of lanes [t0, t0 + T) of one channel from Ob into dst (= out + co*vol).
KF void FN(scatter_out)(const float *Ob, int T, float *dst, const wgeo *g, long t0) {
    const int nx = g->nx, ny = g->ny;
    int l = 0;
    while (l < T) {
        long t = t0 + l;
        if (t >= g->total) break;
        int tzi = (int)(t / g->plane_l), r = (int)(t % g->plane_l);
        int ty = r / g->rowl, tx = r % g->rowl;
        int run = g->rowl - tx;
        if (run > T - l) run = T - l;
        int nt = g->ntx - tx;  // real tiles in the run
        if (nt > run) nt = run;
        if (nt > 0) {
            int nf = (nx - 2 * tx) / 2;  // tiles with both x inside
            if (nf > nt) nf = nt;
            for (int a = 0; a < 2; a++) {
                int z = g->z0 + 2 * tzi + a;
                if (z >= g->z1) continue;
                for (int b = 0; b < 2; b++) {
                    int y = 2 * ty + b;
                    if (y >= ny) continue;
                    float *row = dst + ((size_t)z * ny + y) * nx + 2 * tx;
                    const float *e0 = Ob + (size_t)((a * 2 + b) * 2) * T + l, *e1 = e0 + T;
                    int q = 0;
                    for (; q + W <= nf; q += W) INTERLEAVE_ST(row + 2 * q, LD(e0 + q), LD(e1 + q));
                    for (; q < nf; q++) {
                        row[2 * q] = e0[q];
                        row[2 * q + 1] = e1[q];
                    }
                    if (nf < nt) row[2 * nf] = e0[nf];
                    const char *pf = (const char *)(row + 2 * run);
                    for (int q2 = 0; q2 < 8 * T; q2 += 64) _mm_prefetch(pf + q2, _MM_HINT_T0);
                }
            }
        }
        l += run;
    }
}

TGT static void FN(wino_fwd)(const float *in, const float *plan, const float *bias, float *out,
                             int cin, int cout, int nz, int ny, int nx, int z0, int z1, int m0, int m1,
                             float *ws) {
    wgeo g;
    wgeo_init(&g, nz, ny, nx, z0, z1);
    const int T = fwd_T(cin, cout, W), ss = pad_to(T + W, 16), G = pad_to(cout, WINO_NR) / WINO_NR;
    const int g0 = m0 / WINO_NR, g1 = pad_to(m1, WINO_NR) / WINO_NR, mp = (g1 - g0) * WINO_NR;
    const size_t vstride = pos_stride((size_t)cin, T), mrow = 64 * (size_t)T + 16;
    float *V = wino_align64(ws);                 // [p][ci][T], p stride vstride
    float *M = V + 64 * vstride;                 // [co - 4 g0][p][T], co stride mrow
    float *S = M + (size_t)mp * mrow;            // [32][ss]
    float *Ob = S + (size_t)32 * ss;             // [8][T]
    float *Z = Ob + (size_t)8 * T;               // zero row: [2 ss + 2 W]
    memset(Z, 0, sizeof(float) * (size_t)(2 * ss + 2 * W));
    for (long t0 = 0; t0 < g.total; t0 += T) {
        for (int ci = 0; ci < cin; ci++) {
            FN(stage_in)(in + (size_t)ci * g.vol, S, ss, &g, t0, T + 1, Z);
            FN(tin)(S, ss, V + (size_t)ci * T, vstride, T / W);
        }
        for (int p = 0; p < 64; p++) {
            const float *Vp = V + (size_t)p * vstride;
            for (int gg = g0; gg < g1; gg++) {
                const float *Up = plan + (((size_t)p * G + gg) * cin) * WINO_NR;
                float *Mp = M + (size_t)((gg - g0) * WINO_NR) * mrow + (size_t)p * T;
                for (int c = 0; c < T; c += NV * W)
                    FN(gemm_fwd)(Up, Vp + c, T, cin, Mp + c, mrow);
            }
        }
        for (int co = m0; co < m1; co++) {
            FN(tout)(M + (size_t)(co - g0 * WINO_NR) * mrow, T, bias ? bias[co] : 0.0f, Ob, T / W);
            FN(scatter_out)(Ob, T, out + (size_t)co * g.vol, &g, t0);
        }
    }
}

// ---- backward-weights ----

// dU[c * ldu + u*W + lanes] += sum_t V[c * T + t] * Dt[t * ldd + u*W + lanes] for c < nc, u < nco
// (lanes = output channels; nc * nco <= 12 accumulators).
KI void FN(gemm_bww)(const float *V, int T, const float *Dt, size_t ldd, float *dU, size_t ldu, int nc, int nco) {
    VF acc[WINO_NC];
#pragma GCC unroll 12
    for (int c = 0; c < WINO_NC; c++)
        if (c < nc * nco) acc[c] = LD(dU + (c / nco) * ldu + (c % nco) * W);
    int t = 0;
    if (2 * nc * nco <= WINO_NC) {
        // Few accumulators: a second set for the odd tiles keeps enough FMAs in flight.
        VF acc2[WINO_NC / 2];
#pragma GCC unroll 6
        for (int c = 0; c < WINO_NC / 2; c++) acc2[c] = VZERO();
        for (; t + 2 <= T; t += 2) {
            VF d0 = LD(Dt + (size_t)t * ldd), d1 = nco > 1 ? LD(Dt + (size_t)t * ldd + W) : d0;
            VF e0 = LD(Dt + (size_t)(t + 1) * ldd), e1 = nco > 1 ? LD(Dt + (size_t)(t + 1) * ldd + W) : e0;
#pragma GCC unroll 6
            for (int c = 0; c < WINO_NC / 2; c++)
                if (c < nc) {
                    VF b = SET1(V[(size_t)c * T + t]), b2 = SET1(V[(size_t)c * T + t + 1]);
                    acc[c * nco] = FMA(b, d0, acc[c * nco]);
                    acc2[c * nco] = FMA(b2, e0, acc2[c * nco]);
                    if (nco > 1) {
                        acc[c * nco + 1] = FMA(b, d1, acc[c * nco + 1]);
                        acc2[c * nco + 1] = FMA(b2, e1, acc2[c * nco + 1]);
                    }
                }
        }
#pragma GCC unroll 6
        for (int c = 0; c < WINO_NC / 2; c++)
            if (c < nc * nco) acc[c] = acc[c] + acc2[c];
    }
    for (; t < T; t++) {
        VF d0 = LD(Dt + (size_t)t * ldd), d1 = nco > 1 ? LD(Dt + (size_t)t * ldd + W) : d0;
#pragma GCC unroll 12
        for (int c = 0; c < WINO_NC; c++)
            if (c < nc) {
                VF b = SET1(V[(size_t)c * T + t]);
                acc[c * nco] = FMA(b, d0, acc[c * nco]);
                if (nco > 1) acc[c * nco + 1] = FMA(b, d1, acc[c * nco + 1]);
            }
    }
#pragma GCC unroll 12
    for (int c = 0; c < WINO_NC; c++)
        if (c < nc * nco) ST(dU + (c / nco) * ldu + (c % nco) * W, acc[c]);
}

// nco = 1: nc <= 12; nco = 2: nc <= 6.
KF void FN(gemm_bww_any)(const float *V, int T, const float *Dt, size_t ldd, float *dU, size_t ldu, int nc, int nco) {
    if (nco == 2) {
        switch (nc) {
        case 6: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 6, 2); break;
        case 5: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 5, 2); break;
        case 4: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 4, 2); break;
        case 3: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 3, 2); break;
        case 2: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 2, 2); break;
        default: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 1, 2); break;
        }
        return;
    }
    switch (nc) {
    case 12: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 12, 1); break;
    case 11: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 11, 1); break;
    case 10: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 10, 1); break;
    case 9: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 9, 1); break;
    case 8: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 8, 1); break;
    case 7: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 7, 1); break;
    case 6: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 6, 1); break;
    case 5: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 5, 1); break;
    case 4: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 4, 1); break;
    case 3: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 3, 1); break;
    case 2: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 2, 1); break;
    default: FN(gemm_bww)(V, T, Dt, ldd, dU, ldu, 1, 1); break;
    }
}

TGT static void FN(wino_bww)(const float *in, const float *dout, float *dw, int cin, int cout,
                             int nz, int ny, int nx, int z0, int z1, int m0, int m1, float *ws) {
    wgeo g;
    wgeo_init(&g, nz, ny, nx, z0, z1);
    const int T = bww_T(cin, cout, W), ss = pad_to(T + W, 16), mr = m1 - m0, cop = pad_to(mr, W);
    const size_t vstride = pos_stride((size_t)cin, T), dtstride = pos_stride((size_t)cop, T);
    float *V = wino_align64(ws);                // [p][cin][T], p stride vstride
    float *Dt = V + 64 * vstride;               // [p][T][cop], p stride dtstride
    // dU's position stride is padded: unpadded, deep layers' 64 rows of one (ci, co) fall into one cache set.
    const size_t ustride = pos_stride((size_t)cin, cop);
    float *dU = Dt + 64 * dtstride;             // [p][cin][cop], p stride ustride
    float *S = dU + 64 * ustride;               // [32][ss]
    float *Od8 = S + (size_t)32 * ss;           // [4][2 ss][8]
    float *Z = Od8 + (size_t)64 * ss;           // zero row: [2 ss + 2 W]
    memset(Z, 0, sizeof(float) * (size_t)(2 * ss + 2 * W));
    memset(dU, 0, sizeof(float) * 64 * ustride);
    // Channels past the range stay zero in Dt (lanes of the last vector).
    for (int p = 0; p < 64; p++) memset(Dt + p * dtstride, 0, sizeof(float) * (size_t)T * cop);
    // Register tiles: 6 input channels x 2 vectors of output channels, or 12 x 1 for a last single vector;
    // input channels in balanced groups.
    const int ngr2 = (cin + WINO_NC / 2 - 1) / (WINO_NC / 2), gsz2 = (cin + ngr2 - 1) / ngr2;
    const int ngr1 = (cin + WINO_NC - 1) / WINO_NC, gsz1 = (cin + ngr1 - 1) / ngr1;
    for (long t0 = 0; t0 < g.total; t0 += T) {
        for (int ci = 0; ci < cin; ci++) {
            FN(stage_in)(in + (size_t)ci * g.vol, S, ss, &g, t0, T + 1, Z);
            FN(tin)(S, ss, V + (size_t)ci * T, vstride, T / W);
        }
        for (int c0 = 0; c0 < mr; c0 += 8) {
            stage_dout8(dout + (size_t)(m0 + c0) * g.vol, g.vol, mr - c0 < 8 ? mr - c0 : 8, Od8, 2 * ss, T, &g, t0);
            tdout8(Od8, 2 * ss, T, Dt + c0, dtstride, (size_t)cop);
        }
        for (int p = 0; p < 64; p++) {
            const float *Vp = V + p * vstride, *Dp = Dt + p * dtstride;
            float *dUp = dU + p * ustride;
            for (int cv = 0; cv < cop;) {
                const int nco = cop - cv >= 2 * W ? 2 : 1, gsz = nco == 2 ? gsz2 : gsz1;
                for (int ci = 0; ci < cin; ci += gsz)
                    FN(gemm_bww_any)(Vp + (size_t)ci * T, T, Dp + cv, (size_t)cop, dUp + (size_t)ci * cop + cv,
                                     (size_t)cop, cin - ci < gsz ? cin - ci : gsz, nco);
                cv += nco * W;
            }
        }
    }
    // Input channel outer, four output channels at a time: the 64 positions x a few cache lines of output
    // channels stay in L1 (output channel outer walks all of dU, megabytes for deep layers, once per input
    // channel). Lanes past m1 read dU's zero padding (cop is a multiple of W >= 4).
    wd4 du[64];
    for (int ci = 0; ci < cin; ci++)
        for (int co = m0; co < m1; co += 4) {
            for (int p = 0; p < 64; p++) {
                wf4 f;
                memcpy(&f, dU + p * ustride + (size_t)ci * cop + (co - m0), sizeof f);
                du[p] = __builtin_convertvector(f, wd4);
            }
            dw_transform4(du, dw + ((size_t)co * cin + ci) * 27, (size_t)cin * 27, m1 - co < 4 ? m1 - co : 4);
        }
}

#undef NV
#undef FN
#undef KI
#undef KF
#undef WCAT
#undef WCAT_
#endif  // WINO_BODY
