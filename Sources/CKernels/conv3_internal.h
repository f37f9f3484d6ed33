// Shared declarations between the CKernels implementation files (not part of the public API).
#ifndef CONV3_INTERNAL_H
#define CONV3_INTERNAL_H

#include <stddef.h>

// Direct AVX-512 path (conv3_direct.c); callers must check ck_cpu_has_avx512() first.
size_t ck_direct_workspace_floats(int cin, int cout, int ny, int nx, ck_pass pass);
void ck_direct_forward(const float *in, const float *w, const float *bias, float *out,
                       int cin, int cout, int nz, int ny, int nx, int z0, int z1,
                       int flip_transpose, float *workspace);
void ck_direct_backward_weights(const float *in, const float *dout, float *dw, float *dbias,
                                int cin, int cout, int nz, int ny, int nx, int z0, int z1,
                                float *workspace);

// im2col + sgemm path (conv3_gemm.c).
size_t ck_gemm_workspace_floats(int cin, int cout, int nz, int ny, int nx, int nzslab, ck_pass pass);
void ck_gemm_forward(const float *in, const float *w, const float *bias, float *out,
                     int cin, int cout, int nz, int ny, int nx, int z0, int z1, float *workspace);
void ck_gemm_backward_data(const float *dout, const float *w, float *din,
                           int cin, int cout, int nz, int ny, int nx, int z0, int z1, float *workspace);
void ck_gemm_backward_weights(const float *in, const float *dout, float *dw, float *dbias,
                              int cin, int cout, int nz, int ny, int nx, int z0, int z1, float *workspace);

// Sum of dout[co] over output slices [z0, z1), added to dbias[co] (plain C, shared by both paths).
void ck_bias_grad(const float *dout, float *dbias, int cout, int nz, int ny, int nx, int z0, int z1);

#endif
