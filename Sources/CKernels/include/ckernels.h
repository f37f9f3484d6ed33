// CKernels: C kernels where Swift cannot reach the machine's speed.
//
// 3x3x3 convolution (stride 1, zero padding 1) over one sample, layout [C][Z][Y][X] (X fastest),
// weights [Cout][Cin][3][3][3] (kz, ky, kx), float32. Several implementations ("paths") behind one API:
//   - CK_PATH_GEMM: tiled im2col + OpenBLAS sgemm with a bounded workspace (portable, every CPU);
//   - CK_PATH_DIRECT_AVX2: direct AVX2 + FMA kernels (8-lane vectors, 16 ymm registers);
//   - CK_PATH_DIRECT_AVX512: direct AVX-512F kernels (16-lane vectors, 32 zmm registers);
//   - CK_PATH_WINOGRAD_AVX2 / _AVX512: Winograd F(2x2x2, 3x3x3) (3.375x fewer multiplications), input and output
//     transforms fused with the products over blocks of tiles; z-slabs start on even slices (ck_conv3_z_align).
// The direct kernels carry __attribute__((target)) and run only where ck_path_available() says so.
//
// Use: resolve the path once (ck_conv3_resolve), make the pass's plan once (packed weights, halo masks: read-only,
// shared by all threads), then cut the pass into items (output z-slab x output-channel range) and run each item
// with a per-thread workspace. Calls are thread-safe given disjoint output ranges and distinct workspaces.
#ifndef CKERNELS_H
#define CKERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    CK_PATH_AUTO = 0,
    CK_PATH_GEMM = 1,
    CK_PATH_DIRECT_AVX2 = 2,
    CK_PATH_DIRECT_AVX512 = 3,
    CK_PATH_WINOGRAD_AVX2 = 4,
    CK_PATH_WINOGRAD_AVX512 = 5,
} ck_path;

typedef enum {
    CK_PASS_FORWARD = 0,
    CK_PASS_BACKWARD_DATA = 1,
    CK_PASS_BACKWARD_WEIGHTS = 2,
} ck_pass;

/// 1 when the CPU (and OS) runs AVX2 and FMA, else 0.
int ck_cpu_has_avx2(void);
/// 1 when the CPU (and OS) runs AVX-512F and FMA, else 0.
int ck_cpu_has_avx512(void);

/// 1 when `path` is implemented and this CPU runs it (CK_PATH_GEMM always; CK_PATH_AUTO: 0).
int ck_path_available(ck_path path);

/// The path CK_PATH_AUTO resolves to for this shape and pass: never CK_PATH_AUTO, always an available path.
ck_path ck_conv3_choose(int cin, int cout, int nz, int ny, int nx, ck_pass pass);

/// The path a request runs: CK_PATH_AUTO -> ck_conv3_choose; an unavailable path -> CK_PATH_GEMM.
ck_path ck_conv3_resolve(ck_path requested, int cin, int cout, int nz, int ny, int nx, ck_pass pass);

/// Name of a path: "auto", "im2col-sgemm", "direct-avx2", "direct-avx512", "winograd-avx2", "winograd-avx512".
const char *ck_path_name(ck_path path);

/// Granularity of the output-channel ranges [m0, m1) for best efficiency on a resolved path: ranges should start
/// at multiples of it (a range that does not wastes part of a register tile). 0 means the path prefers the whole
/// channel range in one call (im2col + sgemm: splitting channels repeats the im2col).
int ck_conv3_channel_group(ck_path path, ck_pass pass);

/// Output z-slabs of one call must start at multiples of this on a resolved path (2 for Winograd's 2-slice tiles,
/// else 1); a slab may end anywhere up to nz.
int ck_conv3_z_align(ck_path path);

/// Floats of the plan of one pass of one layer on a resolved path (may be 0: then `plan` may be NULL).
size_t ck_conv3_plan_floats(int cin, int cout, int nz, int ny, int nx, ck_pass pass, ck_path path);

/// Fills the plan (packed weights, halo masks, ...) from w [Cout][Cin][3][3][3]. Make it once per pass, with the
/// same resolved path as the calls that use it (for CK_PASS_BACKWARD_WEIGHTS `w` is not read).
void ck_conv3_plan(const float *w, float *plan, int cin, int cout, int nz, int ny, int nx, ck_pass pass, ck_path path);

/// Floats of per-thread scratch for one call of `pass` on a resolved path covering at most `nzslab` output slices
/// (any channel range). Bounded: never proportional to the volume times 27*Cin.
size_t ck_conv3_workspace_floats(int cin, int cout, int nz, int ny, int nx, int nzslab, ck_pass pass, ck_path path);

/// out[m][z][y][x] = bias[m] + sum_{ci,kz,ky,kx} w[m][ci][kz][ky][kx] * in[ci][z+kz-1][y+ky-1][x+kx-1]
/// for z in [z0, z1) and output channels m in [m0, m1) (of Cout). Overwrites exactly that range. bias may be NULL.
void ck_conv3_forward(const float *in, const float *plan, const float *bias, float *out,
                      int cin, int cout, int nz, int ny, int nx, int z0, int z1, int m0, int m1,
                      ck_path path, float *workspace);

/// din = d(loss)/d(in) for z in [z0, z1) and input channels m in [m0, m1) (of Cin), given dout: a forward
/// convolution of dout with the flipped, transposed weights (held by the plan). Overwrites exactly that range.
void ck_conv3_backward_data(const float *dout, const float *plan, float *din,
                            int cin, int cout, int nz, int ny, int nx, int z0, int z1, int m0, int m1,
                            ck_path path, float *workspace);

/// dw[m][*] += d(loss)/d(w[m]) and, if dbias != NULL, dbias[m] += d(loss)/d(bias[m]) for output channels m in
/// [m0, m1), summed over output slices z in [z0, z1) only. Concurrent calls must write disjoint dw rows (distinct
/// m ranges, or private dw buffers for z ranges of the same m range). Needs no plan.
void ck_conv3_backward_weights(const float *in, const float *dout, float *dw, float *dbias,
                               int cin, int cout, int nz, int ny, int nx, int z0, int z1, int m0, int m1,
                               ck_path path, float *workspace);

// ---- The segmentation loss's per-voxel loops (loss.c): one sample laid out [C][V], voxels [lo, hi). AVX2 + FMA where
// the CPU has them (8 voxels per vector; exp by a polynomial, about 1 ulp), plain C elsewhere. ----

/// y[k][i] = softmax over the c classes of x[.][i] (the maximum subtracted first).
void ck_softmax_channels(const float *x, float *y, int c, size_t v, size_t lo, size_t hi);

/// Per class k: sums[3k] = Σ p·[lab = k], sums[3k + 1] = Σ p² (squared) or Σ p, sums[3k + 2] = Σ [lab = k],
/// accumulated in double.
void ck_dice_sums(const float *p, const unsigned char *lab, int c, size_t v, size_t lo, size_t hi, int squared,
                  double *sums);

/// g[k][i] = d(loss)/d(logit): with dL/dp_k = a[k]·[lab = k] + b[k]·p_k (squared) or + b[k], taken back through
/// the softmax: g_k = p_k (dL/dp_k − Σ_j p_j dL/dp_j).
void ck_dice_gradient(const float *p, const unsigned char *lab, float *g, int c, size_t v, size_t lo, size_t hi,
                      const float *a, const float *b, int squared);

// ---- 1x1x1 convolutions with few channels (pointwise.c), AVX2 + FMA only (check ck_cpu_has_avx2() first): one
// sample laid out [C][V], voxels [lo, hi), weights [Cout][Cin]. ----

/// out[m][i] = bias[m] (0 when NULL) + Σ_c w[m][c] in[c][i] for output channels m in [m0, m1).
void ck_conv1_forward(const float *in, const float *w, const float *bias, float *out, int cin, int cout, size_t v,
                      size_t lo, size_t hi, int m0, int m1);

/// din[c][i] = Σ_m w[m][c] dout[m][i] for input channels c in [c0, c1).
void ck_conv1_backward_data(const float *dout, const float *w, float *din, int cin, int cout, size_t v, size_t lo,
                            size_t hi, int c0, int c1);

/// dw[m][c] = (assign) or += Σ_i dout[m][i] in[c][i] over voxels [lo, hi), for m in [m0, m1), c in [c0, c1).
void ck_conv1_backward_weights(const float *in, const float *dout, float *dw, int cin, size_t v, size_t lo,
                               size_t hi, int m0, int m1, int c0, int c1, int assign);

// ---- BatchNorm3d's per-element loops (batchnorm.c), optionally with the ReLU after it fused in: n elements of one
// channel. AVX2 + FMA where the CPU has them, plain C elsewhere. Sums are in double, in an order that depends on n
// only. y = (x − mean)·scale + shift is computed the same way by every function (one FMA on AVX2), so the ReLU's
// mask y > 0 is recomputed from x in backward. ----

/// *sum = Σ x[i], *sumsq = Σ x[i]², i in [0, n).
void ck_bn_sums(const float *x, size_t n, double *sum, double *sumsq);

/// y[i] = (x[i] − mean)·scale + shift; with relu, 0 where that is <= 0 (NaN stays NaN). y may be x.
void ck_bn_apply(const float *x, float *y, size_t n, float mean, float scale, float shift, int relu);

/// With d[i] = dy[i] (relu: 0 where the forward's y[i] > 0 does not hold): *sum = Σ d[i], *dot = Σ d[i]·(x[i] − mean),
/// the subtraction in float.
void ck_bn_backward_sums(const float *dy, const float *x, size_t n, float mean, float scale, float shift, int relu,
                         double *sum, double *dot);

/// dx[i] = a·(d[i] − mdy) − bx·(x[i] − mean) (train), or a·d[i] (not train), d as in ck_bn_backward_sums. dx may be
/// dy.
void ck_bn_backward_apply(const float *dy, const float *x, float *dx, size_t n, float mean, float scale, float shift,
                          int relu, int train, float a, float mdy, float bx);

/// For tests: 1 makes the ck_bn_* functions run their plain C code on any CPU, 0 (the default) lets them pick AVX2.
void ck_bn_set_portable(int on);

// ---- Trilinear resampling's per-slice loops (resample.c), NN's Trilinear: one plane's slices [Y][X] (X fastest),
// per-axis tables as NN's (output index d reads input indices i0[d], i1[d] with weights w0[d], w1[d]). AVX2 + FMA
// where the CPU has them, plain C elsewhere. ----

/// The int32 words of ck_tri_xplan's X plan for these X tables (xi inputs, xo outputs).
size_t ck_tri_xplan_words(const int32_t *i0, const int32_t *i1, int xi, int xo);

/// Fills `plan` (ck_tri_xplan_words words): the X tables cut into blocks of 8 columns for the AVX2 build (forward:
/// one load and two permutes per block where its taps lie within 8 input columns, else gathers; backward: the
/// (output column, weight) lists of each input column, in output order). Read-only, shared by all threads.
void ck_tri_xplan(const int32_t *i0, const int32_t *i1, const float *w0, const float *w1, int xi, int xo,
                  int32_t *plan);

/// The scratch floats ck_tri_forward needs per thread.
size_t ck_tri_forward_scratch(int yi, int xi, int xo);

/// The scratch floats ck_tri_backward needs per thread.
size_t ck_tri_backward_scratch(int yi, int yo, int xo);

/// One output slice out[yo][xo] from the input slices a and b (each [yi][xi]) with Z weights wa, wb: Z blend, X pass
/// on the input rows, Y blend of rows into out. `scratch` is private to the caller's thread; out may not alias a, b.
void ck_tri_forward(const float *a, const float *b, float wa, float wb, int yi, int xi, int yo, int xo,
                    const int32_t *yi0, const int32_t *yi1, const float *yw0, const float *yw1, const int32_t *xi0,
                    const int32_t *xi1, const float *xw0, const float *xw1, const int32_t *xplan, float *scratch,
                    float *out);

/// One input slice's gradient out[yi][xi] (overwritten) = Xᵀ Yᵀ Σ_r refW[r] · dy slice refOut[r], the dy slices
/// [yo][xo] at gplane + refOut[r]·outSlice (nref = 0: zeros). The adjoint of ck_tri_forward.
void ck_tri_backward(const float *gplane, size_t outSlice, const int32_t *refOut, const float *refW, int nref, int yi,
                     int xi, int yo, int xo, const int32_t *yi0, const int32_t *yi1, const float *yw0,
                     const float *yw1, const int32_t *xi0, const int32_t *xi1, const float *xw0, const float *xw1,
                     const int32_t *xplan, float *scratch, float *out);

/// For tests: 1 makes ck_tri_forward and ck_tri_backward run their plain C code on any CPU, 0 (the default) lets them
/// pick AVX2.
void ck_tri_set_portable(int on);

#ifdef __cplusplus
}
#endif
#endif
