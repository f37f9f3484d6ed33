// CKernels: C kernels where Swift cannot reach the machine's speed.
//
// 3x3x3 convolution (stride 1, zero padding 1) over one sample, layout [C][Z][Y][X] (X fastest),
// weights [Cout][Cin][3][3][3] (kz, ky, kx), float32. Two implementations behind one API:
//   - CK_PATH_DIRECT: direct AVX-512 kernels (register tile of x-vectors x output channels, packed
//     weights, masked loads for the halo), compiled with __attribute__((target)), used only when
//     ck_cpu_has_avx512() says the CPU can run them;
//   - CK_PATH_GEMM: tiled im2col + OpenBLAS sgemm with a bounded workspace (portable).
// CK_PATH_AUTO asks ck_conv3_choose, which today decides by the CPU alone (direct where AVX-512 runs).
//
// Work is split by output z-slices [z0, z1) so a caller can spread one layer over threads.
// All functions are thread-safe given distinct output ranges and distinct workspaces.
#ifndef CKERNELS_H
#define CKERNELS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    CK_PATH_AUTO = 0,
    CK_PATH_DIRECT = 1,
    CK_PATH_GEMM = 2,
} ck_path;

typedef enum {
    CK_PASS_FORWARD = 0,
    CK_PASS_BACKWARD_DATA = 1,
    CK_PASS_BACKWARD_WEIGHTS = 2,
} ck_pass;

/// 1 when the CPU (and OS) can run the AVX-512F + FMA kernels, else 0.
int ck_cpu_has_avx512(void);

/// The path CK_PATH_AUTO resolves to for this shape and pass (never CK_PATH_AUTO).
/// Never CK_PATH_DIRECT on a CPU without AVX-512.
ck_path ck_conv3_choose(int cin, int cout, int nz, int ny, int nx, ck_pass pass);

/// Human-readable name of a resolved path ("direct-avx512", "im2col-sgemm").
const char *ck_path_name(ck_path path);

/// Floats of scratch memory one call of `pass` needs on `path` for output slices [z0, z0+nzslab)
/// (pass nzslab = nz for the whole volume). Bounded: never proportional to the whole volume times 27*Cin.
size_t ck_conv3_workspace_floats(int cin, int cout, int nz, int ny, int nx, int nzslab, ck_pass pass, ck_path path);

/// out[co][z][y][x] = bias[co] + sum_{ci,kz,ky,kx} w[co][ci][kz][ky][kx] * in[ci][z+kz-1][y+ky-1][x+kx-1]
/// for z in [z0, z1). Overwrites out in that range. bias may be NULL.
void ck_conv3_forward(const float *in, const float *w, const float *bias, float *out,
                      int cin, int cout, int nz, int ny, int nx, int z0, int z1,
                      ck_path path, float *workspace);

/// din = d(loss)/d(in) for z in [z0, z1) given dout = d(loss)/d(out): a forward convolution of dout
/// with the flipped, transposed weights. Overwrites din in that range.
void ck_conv3_backward_data(const float *dout, const float *w, float *din,
                            int cin, int cout, int nz, int ny, int nx, int z0, int z1,
                            ck_path path, float *workspace);

/// dw += d(loss)/d(w) and, if dbias != NULL, dbias += d(loss)/d(bias), summed over output slices
/// z in [z0, z1) only (so a caller can split over threads with private dw buffers and add them up).
void ck_conv3_backward_weights(const float *in, const float *dout, float *dw, float *dbias,
                               int cin, int cout, int nz, int ny, int nx, int z0, int z1,
                               ck_path path, float *workspace);

#ifdef __cplusplus
}
#endif
#endif
