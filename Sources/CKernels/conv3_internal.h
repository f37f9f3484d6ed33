// Shared declarations between the CKernels implementation files (not part of the public API).
// dispatch.c stands above the paths; the paths use only common.c, never each other or the dispatcher.
#ifndef CONV3_INTERNAL_H
#define CONV3_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "ckernels.h"

// ---- common.c: what the paths share ----

/// Lane masks of a z-plane of ny*nx voxels cut into `lanes`-wide vectors (8 or 16): entry [v][dy*3 + dx] has bit l
/// set when voxel 8v+l (resp. 16v+l) lies in the plane and its tap (dy, dx) lies inside the plane. Entry (1, 1) is
/// the set of lanes inside the plane (the store mask). ck_plane_vectors gives the vector count.
int ck_plane_vectors(int ny, int nx, int lanes);
void ck_build_masks16(uint16_t *mtab, int ny, int nx);
void ck_build_masks8(uint8_t *mtab, int ny, int nx);

/// Packs weights as wp[g][c][27][nm] for output channel m = nm*g + j (zero past the channel count).
/// Forward: m over Cout, c over Cin. flip_transpose (backward-data): m over Cin, c over Cout, taps reversed,
/// wp[..][c][k][j] = w[c][m][26 - k].
void ck_pack_weights(const float *w, float *wp, int cin, int cout, int flip_transpose, int nm);
static inline size_t ck_packed_weight_floats(int m_count, int c_count, int nm) {
    return (size_t)((m_count + nm - 1) / nm) * nm * (size_t)c_count * 27;
}

/// dbias[m] += sum of dout[m] over output slices [z0, z1), for m in [m0, m1) (accumulated in double).
void ck_bias_grad(const float *dout, float *dbias, int nz, int ny, int nx, int z0, int z1, int m0, int m1);

// ---- direct_avx2.c (callers check ck_cpu_has_avx2() first) ----
size_t ck_avx2_plan_floats(int cin, int cout, int ny, int nx, ck_pass pass);
void ck_avx2_plan(const float *w, float *plan, int cin, int cout, int ny, int nx, ck_pass pass);
size_t ck_avx2_workspace_floats(int cin, int cout, int nz, int ny, int nx, int nzslab, ck_pass pass);
/// Forward (flip_transpose = 0: m over Cout, c over Cin) or backward-data (1: m over Cin, c over Cout).
void ck_avx2_forward(const float *in, const float *plan, const float *bias, float *out, int cin, int cout,
                     int nz, int ny, int nx, int z0, int z1, int m0, int m1, int flip_transpose, float *workspace);
size_t ck_avx2_fwd_workspace_floats(int c_count, int ny, int nx);
void ck_avx2_backward_weights(const float *in, const float *dout, float *dw, float *dbias, int cin, int cout,
                              int nz, int ny, int nx, int z0, int z1, int m0, int m1, float *workspace);

// ---- direct_avx512.c (callers check ck_cpu_has_avx512() first) ----
size_t ck_avx512_plan_floats(int cin, int cout, int ny, int nx, ck_pass pass);
void ck_avx512_plan(const float *w, float *plan, int cin, int cout, int ny, int nx, ck_pass pass);
size_t ck_avx512_workspace_floats(int cin, int cout, int nz, int ny, int nx, int nzslab, ck_pass pass);
void ck_avx512_forward(const float *in, const float *plan, const float *bias, float *out, int cin, int cout,
                       int nz, int ny, int nx, int z0, int z1, int m0, int m1, int flip_transpose);
void ck_avx512_backward_weights(const float *in, const float *dout, float *dw, float *dbias, int cin, int cout,
                                int nz, int ny, int nx, int z0, int z1, int m0, int m1, float *workspace);

// ---- gemm.c: im2col + sgemm ----
size_t ck_gemm_plan_floats(int cin, int cout, ck_pass pass);
void ck_gemm_plan(const float *w, float *plan, int cin, int cout, ck_pass pass);
size_t ck_gemm_workspace_floats(int cin, int cout, int nz, int ny, int nx, int nzslab, ck_pass pass);
void ck_gemm_forward(const float *in, const float *plan, const float *bias, float *out, int cin, int cout,
                     int nz, int ny, int nx, int z0, int z1, int m0, int m1, int flip_transpose, float *workspace);
void ck_gemm_backward_weights(const float *in, const float *dout, float *dw, float *dbias, int cin, int cout,
                              int nz, int ny, int nx, int z0, int z1, int m0, int m1, float *workspace);

#endif
