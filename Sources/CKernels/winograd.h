// Winograd F(2x2x2, 3x3x3) convolution kernels (internal to CKernels; design notes in winograd.c).
//
// One sample per call, float32, activations [C][Z][Y][X] (X fastest), weights [Cout][Cin][3][3][3]
// (kz, ky, kx), stride 1, zero padding 1. Each call covers output slices z in [z0, z1) and the output
// channels m in [m0, m1) (Cout for forward, Cin for backward-data, Cout rows of dw for
// backward-weights). isa512 = 0 runs the AVX2+FMA code, 1 the AVX-512F code; the caller checks the CPU.
// Thread-safe given distinct output ranges and distinct workspaces; the plan is read-only and shared.
#ifndef CK_WINOGRAD_H
#define CK_WINOGRAD_H

#include <stddef.h>
#include "ckernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Preferred granularity of m ranges (m0 and m1 multiples of it, or m1 = the channel count): 8 (AVX2),
/// 16 (AVX-512). Any range is correct; forward / backward-data compute groups of 4 channels, backward-weights
/// has output channels in the vector lanes.
int ck_winograd_channel_group(int isa512);

/// Floats of the plan of `pass` (forward / backward-data: transformed filters; backward-weights: 0).
size_t ck_winograd_plan_floats(int cin, int cout, ck_pass pass, int isa512);

/// Builds the plan from w [Cout][Cin][3][3][3]: U = G g G^T (forward) or the same of the flipped,
/// transposed weights (backward-data). Nothing for backward-weights.
void ck_winograd_plan(const float *w, float *plan, int cin, int cout, ck_pass pass, int isa512);

/// Floats of per-thread scratch one call needs (independent of nz, ny, nx and nzslab: bounded by the
/// channel counts). Any float* works (aligned to 64 bytes inside). Backward-weights holds the transformed
/// weight gradient of the whole call: 64 * cin * pad(cout, 8 or 16) floats, plus the block buffers.
size_t ck_winograd_workspace_floats(int cin, int cout, int nz, int ny, int nx, int nzslab, ck_pass pass,
                                    int isa512);

/// out[co] = bias[co] + conv(in, w)[co] for z in [z0, z1), co in [m0, m1); bias may be NULL.
void ck_winograd_forward(const float *in, const float *plan, const float *bias, float *out,
                         int cin, int cout, int nz, int ny, int nx, int z0, int z1, int m0, int m1,
                         int isa512, float *ws);

/// din[ci] for z in [z0, z1), ci in [m0, m1), from dout and the backward-data plan. Overwrites.
void ck_winograd_backward_data(const float *dout, const float *plan, float *din,
                               int cin, int cout, int nz, int ny, int nx, int z0, int z1, int m0, int m1,
                               int isa512, float *ws);

/// dw[co] += and (dbias != NULL) dbias[co] += for co in [m0, m1), summed over output slices [z0, z1).
void ck_winograd_backward_weights(const float *in, const float *dout, float *dw, float *dbias,
                                  int cin, int cout, int nz, int ny, int nx, int z0, int z1,
                                  int m0, int m1, int isa512, float *ws);

#ifdef __cplusplus
}
#endif
#endif
