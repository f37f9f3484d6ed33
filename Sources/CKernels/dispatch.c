// Public API: CPU checks, path availability, choice and names, plan and workspace sizes, and the dispatch to the
// paths (gemm.c, direct_avx2.c, direct_avx512.c, winograd.c). The paths never call back into this file.
#include <assert.h>
#include "ckernels.h"
#include "conv3_internal.h"
#include "winograd.h"

// libgcc / compiler-rt fill the CPU model once in a load-time constructor (so these read immutable state and are
// thread-safe); the avx2 / avx512f bits there include the OS (XSAVE) support check.
int ck_cpu_has_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
int ck_cpu_has_avx512(void) { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma"); }

int ck_path_available(ck_path path) {
    switch (path) {
    case CK_PATH_GEMM: return 1;
    case CK_PATH_DIRECT_AVX2: return ck_cpu_has_avx2();
    case CK_PATH_DIRECT_AVX512: return ck_cpu_has_avx512();
    case CK_PATH_WINOGRAD_AVX2: return ck_cpu_has_avx2();
    case CK_PATH_WINOGRAD_AVX512: return ck_cpu_has_avx512();
    default: return 0;  // AUTO is not a path
    }
}

static int is_winograd(ck_path path) { return path == CK_PATH_WINOGRAD_AVX2 || path == CK_PATH_WINOGRAD_AVX512; }
static int isa512(ck_path path) { return path == CK_PATH_WINOGRAD_AVX512; }

int ck_conv3_z_align(ck_path path) { return is_winograd(path) ? 2 : 1; }

ck_path ck_conv3_choose(int cin, int cout, int nz, int ny, int nx, ck_pass pass) {
    // Measured per layer and pass (README.md): the direct kernels beat im2col + sgemm everywhere; on AVX2 (Zen 3)
    // Winograd beats the direct kernels by 1.5-3x in all three passes once both channel counts reach 16 and a
    // slice has at least 16x16 voxels (16->16 to 384->128, 160x160x96 down to 20x20x12); it ties at 8->8 and
    // loses below (4->4, 12->4: its transforms cost more than the few products they save) and on 10x10 slices
    // (too few tiles per row to fill its vectors: measured 0.6x the direct kernels). Its AVX-512 build has not been timed on an AVX-512 CPU, so there the
    // direct kernels stay the choice until it is.
    (void)nz; (void)pass;
    if (ck_cpu_has_avx512()) return CK_PATH_DIRECT_AVX512;
    if (ck_cpu_has_avx2()) {
        if (cin >= 16 && cout >= 16 && ny * nx >= 256) return CK_PATH_WINOGRAD_AVX2;
        return CK_PATH_DIRECT_AVX2;
    }
    return CK_PATH_GEMM;
}

ck_path ck_conv3_resolve(ck_path requested, int cin, int cout, int nz, int ny, int nx, ck_pass pass) {
    if (requested == CK_PATH_AUTO) return ck_conv3_choose(cin, cout, nz, ny, nx, pass);
    return ck_path_available(requested) ? requested : CK_PATH_GEMM;
}

const char *ck_path_name(ck_path path) {
    switch (path) {
    case CK_PATH_AUTO: return "auto";
    case CK_PATH_GEMM: return "im2col-sgemm";
    case CK_PATH_DIRECT_AVX2: return "direct-avx2";
    case CK_PATH_DIRECT_AVX512: return "direct-avx512";
    case CK_PATH_WINOGRAD_AVX2: return "winograd-avx2";
    case CK_PATH_WINOGRAD_AVX512: return "winograd-avx512";
    }
    return "unknown";
}

int ck_conv3_channel_group(ck_path path, ck_pass pass) {
    switch (path) {
    case CK_PATH_DIRECT_AVX2: return 4;                                            // 4-channel register tiles
    case CK_PATH_DIRECT_AVX512: return pass == CK_PASS_BACKWARD_WEIGHTS ? 8 : 4;   // 8 x 3 dx, 5 vectors x 4
    case CK_PATH_WINOGRAD_AVX2: case CK_PATH_WINOGRAD_AVX512: return ck_winograd_channel_group(isa512(path));
    default: return 0;                                                             // whole range (im2col once)
    }
}

size_t ck_conv3_plan_floats(int cin, int cout, int nz, int ny, int nx, ck_pass pass, ck_path path) {
    (void)nz;
    assert(path != CK_PATH_AUTO);
    switch (path) {
    case CK_PATH_DIRECT_AVX2: return ck_avx2_plan_floats(cin, cout, ny, nx, pass);
    case CK_PATH_DIRECT_AVX512: return ck_avx512_plan_floats(cin, cout, ny, nx, pass);
    case CK_PATH_WINOGRAD_AVX2: case CK_PATH_WINOGRAD_AVX512: return ck_winograd_plan_floats(cin, cout, pass, isa512(path));
    default: return ck_gemm_plan_floats(cin, cout, pass);
    }
}

void ck_conv3_plan(const float *w, float *plan, int cin, int cout, int nz, int ny, int nx, ck_pass pass, ck_path path) {
    (void)nz;
    assert(path != CK_PATH_AUTO);
    switch (path) {
    case CK_PATH_DIRECT_AVX2: ck_avx2_plan(w, plan, cin, cout, ny, nx, pass); break;
    case CK_PATH_DIRECT_AVX512: ck_avx512_plan(w, plan, cin, cout, ny, nx, pass); break;
    case CK_PATH_WINOGRAD_AVX2: case CK_PATH_WINOGRAD_AVX512: ck_winograd_plan(w, plan, cin, cout, pass, isa512(path)); break;
    default: ck_gemm_plan(w, plan, cin, cout, pass); break;
    }
}

size_t ck_conv3_workspace_floats(int cin, int cout, int nz, int ny, int nx, int nzslab, ck_pass pass, ck_path path) {
    assert(path != CK_PATH_AUTO);
    if (nzslab < 1) nzslab = 1;
    if (nzslab > nz) nzslab = nz;
    switch (path) {
    case CK_PATH_DIRECT_AVX2: return ck_avx2_workspace_floats(cin, cout, nz, ny, nx, nzslab, pass);
    case CK_PATH_DIRECT_AVX512: return ck_avx512_workspace_floats(cin, cout, nz, ny, nx, nzslab, pass);
    case CK_PATH_WINOGRAD_AVX2: case CK_PATH_WINOGRAD_AVX512:
        return ck_winograd_workspace_floats(cin, cout, nz, ny, nx, nzslab, pass, isa512(path));
    default: return ck_gemm_workspace_floats(cin, cout, nz, ny, nx, nzslab, pass);
    }
}

void ck_conv3_forward(const float *in, const float *plan, const float *bias, float *out,
                      int cin, int cout, int nz, int ny, int nx, int z0, int z1, int m0, int m1,
                      ck_path path, float *workspace) {
    assert(path != CK_PATH_AUTO);
    if (z0 >= z1 || m0 >= m1) return;
    switch (path) {
    case CK_PATH_DIRECT_AVX2: ck_avx2_forward(in, plan, bias, out, cin, cout, nz, ny, nx, z0, z1, m0, m1, 0, workspace); break;
    case CK_PATH_DIRECT_AVX512: ck_avx512_forward(in, plan, bias, out, cin, cout, nz, ny, nx, z0, z1, m0, m1, 0); break;
    case CK_PATH_WINOGRAD_AVX2: case CK_PATH_WINOGRAD_AVX512:
        ck_winograd_forward(in, plan, bias, out, cin, cout, nz, ny, nx, z0, z1, m0, m1, isa512(path), workspace); break;
    default: ck_gemm_forward(in, plan, bias, out, cin, cout, nz, ny, nx, z0, z1, m0, m1, 0, workspace); break;
    }
}

void ck_conv3_backward_data(const float *dout, const float *plan, float *din,
                            int cin, int cout, int nz, int ny, int nx, int z0, int z1, int m0, int m1,
                            ck_path path, float *workspace) {
    assert(path != CK_PATH_AUTO);
    if (z0 >= z1 || m0 >= m1) return;
    switch (path) {
    case CK_PATH_DIRECT_AVX2: ck_avx2_forward(dout, plan, NULL, din, cin, cout, nz, ny, nx, z0, z1, m0, m1, 1, workspace); break;
    case CK_PATH_DIRECT_AVX512: ck_avx512_forward(dout, plan, NULL, din, cin, cout, nz, ny, nx, z0, z1, m0, m1, 1); break;
    case CK_PATH_WINOGRAD_AVX2: case CK_PATH_WINOGRAD_AVX512:
        ck_winograd_backward_data(dout, plan, din, cin, cout, nz, ny, nx, z0, z1, m0, m1, isa512(path), workspace); break;
    default: ck_gemm_forward(dout, plan, NULL, din, cin, cout, nz, ny, nx, z0, z1, m0, m1, 1, workspace); break;
    }
}

void ck_conv3_backward_weights(const float *in, const float *dout, float *dw, float *dbias,
                               int cin, int cout, int nz, int ny, int nx, int z0, int z1, int m0, int m1,
                               ck_path path, float *workspace) {
    assert(path != CK_PATH_AUTO);
    if (z0 >= z1 || m0 >= m1) return;
    switch (path) {
    case CK_PATH_DIRECT_AVX2: ck_avx2_backward_weights(in, dout, dw, dbias, cin, cout, nz, ny, nx, z0, z1, m0, m1, workspace); break;
    case CK_PATH_DIRECT_AVX512: ck_avx512_backward_weights(in, dout, dw, dbias, cin, cout, nz, ny, nx, z0, z1, m0, m1, workspace); break;
    case CK_PATH_WINOGRAD_AVX2: case CK_PATH_WINOGRAD_AVX512:
        ck_winograd_backward_weights(in, dout, dw, dbias, cin, cout, nz, ny, nx, z0, z1, m0, m1, isa512(path), workspace); break;
    default: ck_gemm_backward_weights(in, dout, dw, dbias, cin, cout, nz, ny, nx, z0, z1, m0, m1, workspace); break;
    }
}
