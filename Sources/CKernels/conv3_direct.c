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
#include "ckernels.h"
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

// Packed dOut chunk of backward-weights, in floats.
static size_t bww_dpk_floats(int cout) { return (size_t)BWW_CHUNK * (size_t)((cout + BWW_NM - 1) / BWW_NM) * BWW_NM * 16; }

static int plane_vectors(int ny, int nx) { return (ny * nx + 15) / 16; }

// Mask table size in floats (two uint16 masks per float).
static size_t mask_floats(int ny, int nx) { return ((size_t)plane_vectors(ny, nx) * 9 + 1) / 2; }

// mtab[v*9 + dy*3 + dx]: lanes of plane vector v whose tap (dy, dx) lies inside the plane.
// Entry dy=1, dx=1 is the set of lanes inside the plane (the store mask).
static void build_masks(uint16_t *mtab, int ny, int nx) {
    int plane = ny * nx, nvec = plane_vectors(ny, nx);
    memset(mtab, 0, sizeof(uint16_t) * 9 * (size_t)nvec);
    for (int p = 0; p < plane; p++) {
        int y = p / nx, x = p % nx;
        uint16_t *m = mtab + (size_t)(p / 16) * 9;
        for (int dy = 0; dy < 3; dy++) {
            if (y + dy - 1 < 0 || y + dy - 1 >= ny) continue;
            for (int dx = 0; dx < 3; dx++)
                if (x + dx - 1 >= 0 && x + dx - 1 < nx) m[dy * 3 + dx] |= (uint16_t)(1u << (p % 16));
        }
    }
}

size_t ck_direct_workspace_floats(int cin, int cout, int ny, int nx, ck_pass pass) {
    size_t masks = mask_floats(ny, nx);
    switch (pass) {
    case CK_PASS_FORWARD:
        return (size_t)(cout + FWD_NM - 1) / FWD_NM * FWD_NM * cin * 27 + masks;
    case CK_PASS_BACKWARD_DATA:
        return (size_t)(cin + FWD_NM - 1) / FWD_NM * FWD_NM * cout * 27 + masks;
    case CK_PASS_BACKWARD_WEIGHTS:
        return bww_dpk_floats(cout) + masks;
    }
    return 0;
}

// ---- forward / backward-data ----

typedef struct {
    const float *in, *wp, *bias;
    float *out;
    const uint16_t *mtab;
    int c_count, m_count, nz, nx, plane;
    size_t vol;
} fwd_args;

// Output channels [4g, 4g+4) of plane vectors [v0, v0+nv) of slice z. nv is a constant after inlining.
AVX512_INLINE void fwd_tile(const fwd_args *a, int z, int v0, int nv, int g) {
    __m512 acc[FWD_NV][FWD_NM];
    int mvalid = a->m_count - FWD_NM * g;
    if (mvalid > FWD_NM) mvalid = FWD_NM;
#pragma GCC unroll 4
    for (int j = 0; j < FWD_NM; j++) {
        __m512 b = _mm512_set1_ps(a->bias && j < mvalid ? a->bias[FWD_NM * g + j] : 0.0f);
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
    // Constant trip counts (no early exit on mvalid) keep acc[][] in registers.
#pragma GCC unroll 4
    for (int j = 0; j < FWD_NM; j++)
#pragma GCC unroll 5
        for (int v = 0; v < nv; v++)
            if (j < mvalid) _mm512_mask_storeu_ps(op + (FWD_NM * g + j) * a->vol + 16 * v, mt[v * 9 + 4], acc[v][j]);
}

AVX512 static void fwd_slices(const fwd_args *a, int z0, int z1) {
    int nvec = (a->plane + 15) / 16, ng = (a->m_count + FWD_NM - 1) / FWD_NM;
    for (int z = z0; z < z1; z++) {
        for (int v0 = 0; v0 < nvec; v0 += FWD_NV) {
            int nv = nvec - v0 < FWD_NV ? nvec - v0 : FWD_NV;
            for (int g = 0; g < ng; g++) {
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

// wp[g][c][27][4] for output channel m = 4g+j (zero past m_count). With flip_transpose the conv is the
// backward-data one: output channel m = ci, input channel c = co, taps reversed.
static void pack_weights(const float *w, float *wp, int cin, int cout, int flip_transpose) {
    int m_count = flip_transpose ? cin : cout, c_count = flip_transpose ? cout : cin;
    int ng = (m_count + FWD_NM - 1) / FWD_NM;
    for (int g = 0; g < ng; g++)
        for (int c = 0; c < c_count; c++)
            for (int k = 0; k < 27; k++)
                for (int j = 0; j < FWD_NM; j++) {
                    int m = g * FWD_NM + j;
                    float v = 0.0f;
                    if (m < m_count)
                        v = flip_transpose ? w[((size_t)c * cin + m) * 27 + 26 - k] : w[((size_t)m * cin + c) * 27 + k];
                    wp[(((size_t)g * c_count + c) * 27 + k) * FWD_NM + j] = v;
                }
}

void ck_direct_forward(const float *in, const float *w, const float *bias, float *out,
                       int cin, int cout, int nz, int ny, int nx, int z0, int z1,
                       int flip_transpose, float *workspace) {
    int m_count = flip_transpose ? cin : cout, c_count = flip_transpose ? cout : cin;
    size_t wfloats = (size_t)(m_count + FWD_NM - 1) / FWD_NM * FWD_NM * c_count * 27;
    uint16_t *mtab = (uint16_t *)(workspace + wfloats);
    pack_weights(w, workspace, cin, cout, flip_transpose);
    build_masks(mtab, ny, nx);
    fwd_args a = {in, workspace, bias, out, mtab, c_count, m_count, nz, nx, ny * nx, (size_t)nz * ny * nx};
    fwd_slices(&a, z0, z1);
}

// ---- backward-weights ----

typedef struct {
    const float *in, *dout;
    float *dw;
    const uint16_t *mtab;
    int cin, cout, nz, nx, plane;
    size_t vol;
} bww_args;

// One chunk: slices [z, z+nzc) x plane vectors [v0, v0+nq), all output channels.
// dw[m][c][dz][dy][dx] += sum over the chunk of dout[m] * in[c] shifted by the tap. The 24 accumulators
// (8 channels of group g x 3 dx) run over the whole chunk before one horizontal reduction each, so the
// chunk must be long. The chunk's dOut is packed first as dpk[g][s][i][8][16], invalid lanes and absent
// channels zeroed: the channels of one volume are often a multiple of 4 KiB apart, so reading them in
// place thrashes L1 sets. Channel c is the outer loop so its input rows are reused by every group.
AVX512_INLINE void bww_chunk(const bww_args *a, int z, int nzc, int v0, int nq, float *dpk) {
    const uint16_t *mt = a->mtab + (size_t)v0 * 9;
    int ng = (a->cout + BWW_NM - 1) / BWW_NM, nx = a->nx;
    size_t gstride = (size_t)nzc * nq * BWW_NM * 16;
    for (int g = 0; g < ng; g++)
        for (int s = 0; s < nzc; s++)
            for (int i = 0; i < nq; i++)
                for (int co = 0; co < BWW_NM; co++) {
                    int m = g * BWW_NM + co;
                    __m512 d = _mm512_setzero_ps();
                    if (m < a->cout)
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
                    int mcount = a->cout - g * BWW_NM;
                    float *wp = a->dw + ((size_t)g * BWW_NM * a->cin + c) * 27 + (dz * 3 + dy) * 3;
#pragma GCC unroll 8
                    for (int co = 0; co < BWW_NM; co++)
#pragma GCC unroll 3
                        for (int dx = 0; dx < 3; dx++)
                            if (co < mcount) wp[(size_t)co * a->cin * 27 + dx] += _mm512_reduce_add_ps(acc[co][dx]);
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

void ck_direct_backward_weights(const float *in, const float *dout, float *dw, float *dbias,
                                int cin, int cout, int nz, int ny, int nx, int z0, int z1,
                                float *workspace) {
    uint16_t *mtab = (uint16_t *)(workspace + bww_dpk_floats(cout));
    build_masks(mtab, ny, nx);
    bww_args a = {in, dout, dw, mtab, cin, cout, nz, nx, ny * nx, (size_t)nz * ny * nx};
    bww_run(&a, z0, z1, workspace);
    if (dbias) ck_bias_grad(dout, dbias, cout, nz, ny, nx, z0, z1);
}
