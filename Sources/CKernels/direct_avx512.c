// Direct AVX-512 3x3x3 convolution kernels (design and measured rates: README.md in this folder).
//
// Each z-slice is treated as a flat plane of ny*nx voxels cut into 16-lane vectors, so any X (not only
// multiples of 16) keeps the lanes busy. Shifting a vector by (dy-1)*nx + (dx-1) reaches the tap's
// input; a per-vector mask table [vec][dy][dx] zeroes the lanes whose tap falls outside the volume
// (zero padding without a padded copy; masked-off lanes never fault).
//
// Every function that uses AVX-512 carries its own target attribute: the package builds without -march.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include "conv3_internal.h"

#define AVX512 __attribute__((target("avx512f,fma")))
#define AVX512_INLINE static inline __attribute__((always_inline, target("avx512f,fma")))

// Forward register tile: FWD_NV vectors x FWD_NM output channels = 20 accumulators.
#define FWD_NV 5
#define FWD_NM 4
// Backward-weights register tile: 8 output channels x 3 dx = 24 accumulators, summed over chunks of
// BWW_CHUNK plane vectors (packed dOut chunk: Cout x BWW_CHUNK x 64 B, read from L2/L3).
#define BWW_NM 8
#define BWW_CHUNK 256

// Packed dOut chunk of backward-weights, in floats (one group more than Cout needs: a range [m0, m1) that does not
// start at a multiple of 8 spans one more group).
static size_t bww_dpk_floats(int cout) { return (size_t)BWW_CHUNK * (size_t)((cout + BWW_NM - 1) / BWW_NM + 1) * BWW_NM * 16; }

static int plane_vectors(int ny, int nx) { return ck_plane_vectors(ny, nx, 16); }

// Mask table size in floats (two uint16 masks per float; ck_build_masks16: entry [v][dy*3 + dx]).
static size_t mask_floats(int ny, int nx) { return ((size_t)plane_vectors(ny, nx) * 9 + 1) / 2; }

// Plan of forward / backward-data: packed weights [G][C][27][4] (ck_pack_weights), then the mask table.
static size_t fwd_weight_floats(int cin, int cout, ck_pass pass) {
    int m = pass == CK_PASS_BACKWARD_DATA ? cin : cout, c = pass == CK_PASS_BACKWARD_DATA ? cout : cin;
    return ck_packed_weight_floats(m, c, FWD_NM);
}

size_t ck_avx512_plan_floats(int cin, int cout, int ny, int nx, ck_pass pass) {
    if (pass == CK_PASS_BACKWARD_WEIGHTS) return 0;
    return fwd_weight_floats(cin, cout, pass) + mask_floats(ny, nx);
}

void ck_avx512_plan(const float *w, float *plan, int cin, int cout, int ny, int nx, ck_pass pass) {
    if (pass == CK_PASS_BACKWARD_WEIGHTS) return;
    ck_pack_weights(w, plan, cin, cout, pass == CK_PASS_BACKWARD_DATA, FWD_NM);
    ck_build_masks16((uint16_t *)(plan + fwd_weight_floats(cin, cout, pass)), ny, nx);
}

// Backward-weights builds its mask table per call in the workspace (the pass has no plan).
size_t ck_avx512_workspace_floats(int cin, int cout, int nz, int ny, int nx, int nzslab, ck_pass pass) {
    (void)cin; (void)nz; (void)nzslab;
    return pass == CK_PASS_BACKWARD_WEIGHTS ? bww_dpk_floats(cout) + mask_floats(ny, nx) : 0;
}

// ---- forward / backward-data ----

typedef struct {
    const float *in, *wp, *bias;
    float *out;
    const uint16_t *mtab;
    int c_count, nz, nx, plane, m0, m1;
    size_t vol;
} fwd_args;

// Output channels [4g, 4g+4) ∩ [m0, m1) of plane vectors [v0, v0+nv) of slice z. nv is a constant after inlining.
AVX512_INLINE void fwd_tile(const fwd_args *a, int z, int v0, int nv, int g) {
    __m512 acc[FWD_NV][FWD_NM];
    int jlo = a->m0 - FWD_NM * g, jhi = a->m1 - FWD_NM * g;
#pragma GCC unroll 4
    for (int j = 0; j < FWD_NM; j++) {
        __m512 b = _mm512_set1_ps(a->bias && j >= jlo && j < jhi ? a->bias[FWD_NM * g + j] : 0.0f);
#pragma GCC unroll 5
        for (int v = 0; v < nv; v++) acc[v][j] = b;
    }
    const uint16_t *mt = a->mtab + (size_t)v0 * 9;
    int dz0 = z == 0 ? 1 : 0, dz1 = z == a->nz - 1 ? 2 : 3;
    int nx = a->nx;
    const float *wg = a->wp + (size_t)g * a->c_count * 27 * FWD_NM;
    for (int c = 0; c < a->c_count; c++) {
        for (int dz = dz0; dz < dz1; dz++) {
            const float *ip = a->in + c * a->vol + (size_t)(z + dz - 1) * a->plane + 16 * (size_t)v0;
            const float *wk = wg + ((size_t)c * 27 + dz * 9) * FWD_NM;
#pragma GCC unroll 9
            for (int t = 0; t < 9; t++) {
                ptrdiff_t off = (ptrdiff_t)(t / 3 - 1) * nx + (t % 3 - 1);
                __m512 x[FWD_NV];
#pragma GCC unroll 5
                for (int v = 0; v < nv; v++) x[v] = _mm512_maskz_loadu_ps(mt[v * 9 + t], ip + 16 * v + off);
#pragma GCC unroll 4
                for (int j = 0; j < FWD_NM; j++) {
                    __m512 wv = _mm512_set1_ps(wk[t * FWD_NM + j]);
#pragma GCC unroll 5
                    for (int v = 0; v < nv; v++) acc[v][j] = _mm512_fmadd_ps(x[v], wv, acc[v][j]);
                }
            }
        }
    }
    float *op = a->out + (size_t)z * a->plane + 16 * (size_t)v0;
    // Constant trip counts (no early exit on the channel range) keep acc[][] in registers.
#pragma GCC unroll 4
    for (int j = 0; j < FWD_NM; j++)
#pragma GCC unroll 5
        for (int v = 0; v < nv; v++)
            if (j >= jlo && j < jhi) _mm512_mask_storeu_ps(op + (FWD_NM * g + j) * a->vol + 16 * v, mt[v * 9 + 4], acc[v][j]);
}

AVX512 static void fwd_slices(const fwd_args *a, int z0, int z1) {
    int nvec = (a->plane + 15) / 16, g0 = a->m0 / FWD_NM, g1 = (a->m1 + FWD_NM - 1) / FWD_NM;
    for (int z = z0; z < z1; z++) {
        for (int v0 = 0; v0 < nvec; v0 += FWD_NV) {
            int nv = nvec - v0 < FWD_NV ? nvec - v0 : FWD_NV;
            for (int g = g0; g < g1; g++) {
                switch (nv) {
                case 5: fwd_tile(a, z, v0, 5, g); break;
                case 4: fwd_tile(a, z, v0, 4, g); break;
                case 3: fwd_tile(a, z, v0, 3, g); break;
                case 2: fwd_tile(a, z, v0, 2, g); break;
                default: fwd_tile(a, z, v0, 1, g); break;
                }
            }
        }
    }
}

void ck_avx512_forward(const float *in, const float *plan, const float *bias, float *out, int cin, int cout,
                       int nz, int ny, int nx, int z0, int z1, int m0, int m1, int flip_transpose) {
    ck_pass pass = flip_transpose ? CK_PASS_BACKWARD_DATA : CK_PASS_FORWARD;
    int c_count = flip_transpose ? cout : cin;
    const uint16_t *mtab = (const uint16_t *)(plan + fwd_weight_floats(cin, cout, pass));
    fwd_args a = {in, plan, bias, out, mtab, c_count, nz, nx, ny * nx, m0, m1, (size_t)nz * ny * nx};
    fwd_slices(&a, z0, z1);
}

// ---- backward-weights ----

typedef struct {
    const float *in, *dout;
    float *dw;
    const uint16_t *mtab;
    int cin, cout, nz, nx, plane, m0, m1;
    size_t vol;
} bww_args;

// One chunk: slices [z, z+nzc) x plane vectors [v0, v0+nq), output channels [m0, m1) (groups of 8 from m0/8).
// dw[m][c][dz][dy][dx] += sum over the chunk of dout[m] * in[c] shifted by the tap. The 24 accumulators
// (8 channels of group g x 3 dx) run over the whole chunk before one horizontal reduction each, so the
// chunk must be long. The chunk's dOut is packed first as dpk[g][s][i][8][16], invalid lanes and absent
// channels zeroed: the channels of one volume are often a multiple of 4 KiB apart, so reading them in
// place thrashes L1 sets. Channel c is the outer loop so its input rows are reused by every group.
AVX512_INLINE void bww_chunk(const bww_args *a, int z, int nzc, int v0, int nq, float *dpk) {
    const uint16_t *mt = a->mtab + (size_t)v0 * 9;
    int g0 = a->m0 / BWW_NM, ng = (a->m1 + BWW_NM - 1) / BWW_NM - g0, nx = a->nx;
    size_t gstride = (size_t)nzc * nq * BWW_NM * 16;
    for (int g = 0; g < ng; g++)
        for (int s = 0; s < nzc; s++)
            for (int i = 0; i < nq; i++)
                for (int co = 0; co < BWW_NM; co++) {
                    int m = (g0 + g) * BWW_NM + co;
                    __m512 d = _mm512_setzero_ps();
                    if (m >= a->m0 && m < a->m1)
                        d = _mm512_maskz_loadu_ps(mt[i * 9 + 4], a->dout + m * a->vol + (size_t)(z + s) * a->plane + 16 * (size_t)(v0 + i));
                    _mm512_storeu_ps(dpk + g * gstride + ((size_t)(s * nq + i) * BWW_NM + co) * 16, d);
                }
    for (int c = 0; c < a->cin; c++)
        for (int g = 0; g < ng; g++)
            for (int dz = 0; dz < 3; dz++)
                for (int dy = 0; dy < 3; dy++) {
                    __m512 acc[BWW_NM][3];
#pragma GCC unroll 8
                    for (int co = 0; co < BWW_NM; co++)
                        acc[co][0] = acc[co][1] = acc[co][2] = _mm512_setzero_ps();
                    for (int s = 0; s < nzc; s++) {
                        int zz = z + s + dz - 1;
                        if (zz < 0 || zz >= a->nz) continue;
                        const float *ip = a->in + c * a->vol + (size_t)zz * a->plane + 16 * (size_t)v0 + (ptrdiff_t)(dy - 1) * nx - 1;
                        const float *dq = dpk + g * gstride + (size_t)s * nq * BWW_NM * 16;
                        for (int i = 0; i < nq; i++, ip += 16, dq += BWW_NM * 16) {
                            __m512 x0 = _mm512_maskz_loadu_ps(mt[i * 9 + dy * 3 + 0], ip);
                            __m512 x1 = _mm512_maskz_loadu_ps(mt[i * 9 + dy * 3 + 1], ip + 1);
                            __m512 x2 = _mm512_maskz_loadu_ps(mt[i * 9 + dy * 3 + 2], ip + 2);
#pragma GCC unroll 8
                            for (int co = 0; co < BWW_NM; co++) {
                                __m512 d = _mm512_loadu_ps(dq + co * 16);
                                acc[co][0] = _mm512_fmadd_ps(d, x0, acc[co][0]);
                                acc[co][1] = _mm512_fmadd_ps(d, x1, acc[co][1]);
                                acc[co][2] = _mm512_fmadd_ps(d, x2, acc[co][2]);
                            }
                        }
                    }
                    int jlo = a->m0 - (g0 + g) * BWW_NM, jhi = a->m1 - (g0 + g) * BWW_NM;
                    float *wp = a->dw + ((size_t)(g0 + g) * BWW_NM * a->cin + c) * 27 + (dz * 3 + dy) * 3;
#pragma GCC unroll 8
                    for (int co = 0; co < BWW_NM; co++)
#pragma GCC unroll 3
                        for (int dx = 0; dx < 3; dx++)
                            if (co >= jlo && co < jhi) wp[(size_t)co * a->cin * 27 + dx] += _mm512_reduce_add_ps(acc[co][dx]);
                }
}

AVX512 static void bww_run(const bww_args *a, int z0, int z1, float *dpk) {
    int nvec = (a->plane + 15) / 16;
    // Chunks: BWW_CHUNK vectors of one slice, or whole planes of several slices when the plane is small.
    int nq = nvec < BWW_CHUNK ? nvec : BWW_CHUNK;
    int zstep = nvec < BWW_CHUNK ? BWW_CHUNK / nvec : 1;
    for (int z = z0; z < z1; z += zstep) {
        int nzc = z1 - z < zstep ? z1 - z : zstep;
        for (int v0 = 0; v0 < nvec; v0 += nq)
            bww_chunk(a, z, nzc, v0, nvec - v0 < nq ? nvec - v0 : nq, dpk);
    }
}

void ck_avx512_backward_weights(const float *in, const float *dout, float *dw, float *dbias, int cin, int cout,
                                int nz, int ny, int nx, int z0, int z1, int m0, int m1, float *workspace) {
    uint16_t *mtab = (uint16_t *)(workspace + bww_dpk_floats(cout));
    ck_build_masks16(mtab, ny, nx);
    bww_args a = {in, dout, dw, mtab, cin, cout, nz, nx, ny * nx, m0, m1, (size_t)nz * ny * nx};
    bww_run(&a, z0, z1, workspace);
    if (dbias) ck_bias_grad(dout, dbias, nz, ny, nx, z0, z1, m0, m1);
}
