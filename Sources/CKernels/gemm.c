// Portable 3x3x3 convolution: im2col over a tile of R output rows, then one cblas_sgemm per tile.
// The tile keeps the column buffer bounded (a few MB) whatever the volume; small tiles also measured
// faster than whole slices for the wide full-resolution layers.
#include <string.h>
#include <cblas.h>
#include "conv3_internal.h"

// Tile size, measured: a column buffer of about 4 MB (1M floats) and about 1024 voxels per tile were best
// for the wide layers; deep low-resolution layers need at least a few hundred voxels for OpenBLAS.
#define COL_FLOATS_MAX ((size_t)1 << 20)
#define TILE_VOXELS_TARGET 1024
#define TILE_VOXELS_MIN 256

// Output rows (flattened (z, y)) per tile for `c` input channels, out of `nrows` available.
static int tile_rows(int c, int nx, int nrows) {
    int r = (TILE_VOXELS_TARGET + nx - 1) / nx;
    int cap = (int)(COL_FLOATS_MAX / ((size_t)27 * c * nx));
    int floor_rows = (TILE_VOXELS_MIN + nx - 1) / nx;
    if (cap < floor_rows) cap = floor_rows;
    if (r > cap) r = cap;
    if (r > nrows) r = nrows;
    if (r < 1) r = 1;
    return r;
}

// col[(c*27 + kz*9 + ky*3 + kx)][j*nx + x] = src[c][z+kz-1][y+ky-1][x+kx-1] (0 outside) for the rows
// r0 + j (r = z*ny + y), j in [0, nr).
static void im2col_rows(const float *src, float *col, int c_count, int nz, int ny, int nx, int r0, int nr) {
    size_t nt = (size_t)nr * nx;
    for (int c = 0; c < c_count; c++) {
        for (int k = 0; k < 27; k++) {
            int kz = k / 9, ky = (k / 3) % 3, kx = k % 3;
            float *dst = col + ((size_t)c * 27 + k) * nt;
            for (int j = 0; j < nr; j++, dst += nx) {
                int r = r0 + j, zz = r / ny + kz - 1, yy = r % ny + ky - 1;
                if (zz < 0 || zz >= nz || yy < 0 || yy >= ny) {
                    memset(dst, 0, sizeof(float) * nx);
                    continue;
                }
                const float *row = src + (((size_t)c * nz + zz) * ny + yy) * nx;
                if (kx == 1) {
                    memcpy(dst, row, sizeof(float) * nx);
                } else if (kx == 0) {
                    dst[0] = 0.0f;
                    memcpy(dst + 1, row, sizeof(float) * (nx - 1));
                } else {
                    memcpy(dst, row + 1, sizeof(float) * (nx - 1));
                    dst[nx - 1] = 0.0f;
                }
            }
        }
    }
}

// dst[m][rows z0..z1) = wmat[m][c*27] * im2col(src) (+ bias[m]) for m in [m0, m1); wmat is row-major
// [m_count][c_count*27] (the plan), so a channel range is a row subset of it.
static void gemm_conv(const float *src, const float *wmat, const float *bias, float *dst,
                      int c_count, int nz, int ny, int nx, int z0, int z1, int m0, int m1, float *col) {
    int rbeg = z0 * ny, rend = z1 * ny;
    int rt = tile_rows(c_count, nx, rend - rbeg);
    size_t vol = (size_t)nz * ny * nx;
    int k = 27 * c_count;
    for (int r0 = rbeg; r0 < rend; r0 += rt) {
        int nr = rend - r0 < rt ? rend - r0 : rt;
        int nt = nr * nx;
        float *c_tile = dst + (size_t)m0 * vol + (size_t)r0 * nx;
        im2col_rows(src, col, c_count, nz, ny, nx, r0, nr);
        if (bias) {
            for (int m = m0; m < m1; m++) {
                float *o = c_tile + (size_t)(m - m0) * vol;
                for (int i = 0; i < nt; i++) o[i] = bias[m];
            }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m1 - m0, nt, k,
                    1.0f, wmat + (size_t)m0 * k, k, col, nt, bias ? 1.0f : 0.0f, c_tile, (int)vol);
    }
}

size_t ck_gemm_plan_floats(int cin, int cout, ck_pass pass) {
    return pass == CK_PASS_BACKWARD_WEIGHTS ? 0 : (size_t)27 * cin * cout;
}

void ck_gemm_plan(const float *w, float *plan, int cin, int cout, ck_pass pass) {
    if (pass == CK_PASS_FORWARD) {
        memcpy(plan, w, sizeof(float) * 27 * (size_t)cin * cout);
    } else if (pass == CK_PASS_BACKWARD_DATA) {
        // din = conv(dout, w') with w'[ci][co][k] = w[co][ci][26-k]: a forward conv, no col2im.
        for (int ci = 0; ci < cin; ci++)
            for (int co = 0; co < cout; co++)
                for (int k = 0; k < 27; k++)
                    plan[((size_t)ci * cout + co) * 27 + k] = w[((size_t)co * cin + ci) * 27 + 26 - k];
    }
}

size_t ck_gemm_workspace_floats(int cin, int cout, int nz, int ny, int nx, int nzslab, ck_pass pass) {
    (void)nz;
    int nrows = nzslab * ny;
    if (nrows < 1) nrows = 1;
    int c = pass == CK_PASS_BACKWARD_DATA ? cout : cin;
    return (size_t)27 * c * nx * tile_rows(c, nx, nrows);
}

void ck_gemm_forward(const float *in, const float *plan, const float *bias, float *out, int cin, int cout,
                     int nz, int ny, int nx, int z0, int z1, int m0, int m1, int flip_transpose, float *workspace) {
    gemm_conv(in, plan, bias, out, flip_transpose ? cout : cin, nz, ny, nx, z0, z1, m0, m1, workspace);
}

void ck_gemm_backward_weights(const float *in, const float *dout, float *dw, float *dbias, int cin, int cout,
                              int nz, int ny, int nx, int z0, int z1, int m0, int m1, float *workspace) {
    (void)cout;
    int rbeg = z0 * ny, rend = z1 * ny;
    int rt = tile_rows(cin, nx, rend - rbeg);
    size_t vol = (size_t)nz * ny * nx;
    int k = 27 * cin;
    // dw[m][ci*27+k] += dout_tile[m][n] * col[ci*27+k][n] for m in [m0, m1)
    for (int r0 = rbeg; r0 < rend; r0 += rt) {
        int nr = rend - r0 < rt ? rend - r0 : rt;
        int nt = nr * nx;
        im2col_rows(in, workspace, cin, nz, ny, nx, r0, nr);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m1 - m0, k, nt,
                    1.0f, dout + (size_t)m0 * vol + (size_t)r0 * nx, (int)vol, workspace, nt, 1.0f, dw + (size_t)m0 * k, k);
    }
    if (dbias) ck_bias_grad(dout, dbias, nz, ny, nx, z0, z1, m0, m1);
}
