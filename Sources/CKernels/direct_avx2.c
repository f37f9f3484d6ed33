// Direct AVX2 + FMA 3x3x3 convolution kernels (design and measured rates: README.md in this folder).
//
// Forward / backward-data: each z-slice is a flat plane of ny*nx voxels cut into 8-lane vectors, so any X keeps
// the lanes busy. A register tile is FWD_NV plane vectors x FWD_NM output channels; shifting a vector by
// (dy-1)*nx + (dx-1) reaches a tap's input, and a per-vector lane mask [vec][dy][dx] (in the plan) zeroes the lanes
// whose tap falls outside the plane. Tiles whose taps all lie inside use plain loads; the others AND a plain load
// with the mask where the read provably stays inside the slice, and use _mm256_maskload_ps (never faults on masked
// lanes) only at the first and last rows of a plane.
//
// Backward-weights: the chunk's dOut and each input channel's rows are packed with a zero column between rows
// (row stride nx + 1) and zero rows around, so every tap is a plain unaligned load and no mask is needed.
//
// Every function that uses AVX2 carries its own target attribute: the package builds without -march.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include "conv3_internal.h"

#define AVX2 __attribute__((target("avx2,fma")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

// Forward register tile: FWD_NV plane vectors x FWD_NM output channels = 12 accumulators (+ 3 inputs + 1 weight).
#ifndef FWD_NV
#define FWD_NV 3
#endif
#define FWD_NM 4
// Software prefetch distance of the forward tile's input rows, in floats (0: none). Since the strips are packed
// (see fwd_needs_packing) 0 measured as fast as 48 or 96 and faster than 192.
#ifndef FWD_PREFETCH
#define FWD_PREFETCH 0
#endif
// Backward-weights register tile: BWW_NM output channels x 3 dx = 12 accumulators, summed over a chunk of about
// BWW_CHUNK plane vectors before one horizontal reduction.
#define BWW_NM 4
#ifndef BWW_CHUNK
#define BWW_CHUNK 160
#endif

// ---- plan of forward / backward-data ----
// [packed weights [G][C][27][4]] [mask pool: distinct mask sets, 9 taps x 8 int32 lanes each] [per vector: the
// offset of its mask set in the pool, in int32] [per vector: 1 when all nine taps are full]. A plane has few
// distinct mask sets (interior, row starts and ends at each phase of X against the 8 lanes, first and last rows),
// so the pool stays in L1 where a full table (288 B per vector) would not even fit in L2 at 160 x 160.

static size_t round8(size_t n) { return (n + 7) & ~(size_t)7; }

static size_t fwd_weight_floats(int cin, int cout, ck_pass pass) {
    int m = pass == CK_PASS_BACKWARD_DATA ? cin : cout, c = pass == CK_PASS_BACKWARD_DATA ? cout : cin;
    return round8(ck_packed_weight_floats(m, c, FWD_NM));
}

size_t ck_avx2_plan_floats(int cin, int cout, int ny, int nx, ck_pass pass) {
    if (pass == CK_PASS_BACKWARD_WEIGHTS) return 0;
    size_t nvec = (size_t)ck_plane_vectors(ny, nx, 8);
    return fwd_weight_floats(cin, cout, pass) + nvec * 72 + 2 * round8(nvec);
}

void ck_avx2_plan(const float *w, float *plan, int cin, int cout, int ny, int nx, ck_pass pass) {
    if (pass == CK_PASS_BACKWARD_WEIGHTS) return;
    ck_pack_weights(w, plan, cin, cout, pass == CK_PASS_BACKWARD_DATA, FWD_NM);
    int nvec = ck_plane_vectors(ny, nx, 8), plane = ny * nx, npool = 0;
    int32_t *pool = (int32_t *)(plan + fwd_weight_floats(cin, cout, pass));
    int32_t *index = pool + (size_t)nvec * 72, *flags = index + round8((size_t)nvec);
    int32_t set[72];
    for (int v = 0; v < nvec; v++) {
        int full = 1;
        for (int t = 0; t < 9; t++) {
            int dy = t / 3, dx = t % 3;
            for (int l = 0; l < 8; l++) {
                int p = 8 * v + l, ok = 0;
                if (p < plane) {
                    int y = p / nx + dy - 1, x = p % nx + dx - 1;
                    ok = y >= 0 && y < ny && x >= 0 && x < nx;
                }
                set[t * 8 + l] = ok ? -1 : 0;
                if (!ok) full = 0;
            }
        }
        int k = 0;
        while (k < npool && memcmp(pool + (size_t)k * 72, set, sizeof set) != 0) k++;
        if (k == npool) memcpy(pool + (size_t)npool++ * 72, set, sizeof set);
        index[v] = 72 * k;
        flags[v] = full;
    }
}

// ---- forward / backward-data ----

typedef struct {
    const float *in, *wp, *bias;
    float *out;
    const int32_t *pool, *index, *flags;  // mask sets, per-vector offset into pool, per-vector "all taps full"
    int c_count, nz, nx, plane, m0, m1;
    size_t vol;
    int c0, c1;  // the input-channel block of this tile pass: starts from the bias when c0 = 0, else from out
    // Where the tiles read input channel c, slice zz, plane position p: xin[c * xc + zz * xz + xoff + p]. Either the
    // tensor itself (xin = in, xc = vol, xz = plane, xoff = 0) or the strip's packed copy in the workspace.
    const float *xin;
    ptrdiff_t xc, xz, xoff;
} fwd_args;

// Start value of accumulator (v, j): the bias on the first channel block, else the partial sum stored in out.
AVX2_INLINE __m256 acc_start(const fwd_args *a, const float *op, const int32_t *mv, int v, int m, int mode) {
    if (m < a->m0 || m >= a->m1) return _mm256_setzero_ps();
    if (a->c0 == 0) return _mm256_set1_ps(a->bias ? a->bias[m] : 0.0f);
    const float *p = op + m * a->vol + 8 * v;
    return mode == 2 ? _mm256_maskload_ps(p, _mm256_loadu_si256((const __m256i *)(mv + 4 * 8))) : _mm256_loadu_ps(p);
}

// Tap loads: 0 = plain (all lanes inside), 1 = plain load AND mask (read stays inside the slice), 2 = maskload.
AVX2_INLINE __m256 tap_load(const float *p, const int32_t *m, int mode) {
    if (mode == 0) return _mm256_loadu_ps(p);
    if (mode == 1) return _mm256_and_ps(_mm256_loadu_ps(p), _mm256_loadu_ps((const float *)m));
    return _mm256_maskload_ps(p, _mm256_loadu_si256((const __m256i *)m));
}

// Output channels [4g, 4g+4) ∩ [m0, m1) of plane vectors [v0, v0+nv) of slice z. nv, mode: constants after inlining.
AVX2_INLINE void fwd_tile(const fwd_args *a, int z, int v0, int nv, int g, int mode) {
    __m256 acc[FWD_NV][FWD_NM];
    const int32_t *mt[FWD_NV];
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) mt[v] = a->pool + a->index[v0 + v];
    float *op = a->out + (size_t)z * a->plane + 8 * (size_t)v0;
#pragma GCC unroll 4
    for (int j = 0; j < FWD_NM; j++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[v][j] = acc_start(a, op, mt[v], v, FWD_NM * g + j, mode);
    int dz0 = z == 0 ? 1 : 0, dz1 = z == a->nz - 1 ? 2 : 3;
    int nx = a->nx;
    const float *wg = a->wp + (size_t)g * a->c_count * 27 * FWD_NM;
    for (int c = a->c0; c < a->c1; c++) {
        for (int dz = dz0; dz < dz1; dz++) {
            const float *ip = a->xin + ((ptrdiff_t)c * a->xc + (ptrdiff_t)(z + dz - 1) * a->xz + a->xoff + 8 * (ptrdiff_t)v0);
            const float *wk = wg + ((size_t)c * 27 + dz * 9) * FWD_NM;
#ifndef TAP_UNROLL
#define TAP_UNROLL 9
#endif
#pragma GCC unroll TAP_UNROLL
            for (int t = 0; t < 9; t++) {
                ptrdiff_t off = (ptrdiff_t)(t / 3 - 1) * nx + (t % 3 - 1);
                __m256 x[FWD_NV];
#pragma GCC unroll 4
                for (int v = 0; v < nv; v++) x[v] = tap_load(ip + 8 * v + off, mt[v] + t * 8, mode);
#pragma GCC unroll 4
                for (int j = 0; j < FWD_NM; j++) {
                    __m256 wv = _mm256_broadcast_ss(wk + t * FWD_NM + j);
#pragma GCC unroll 4
                    for (int v = 0; v < nv; v++) acc[v][j] = _mm256_fmadd_ps(x[v], wv, acc[v][j]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < FWD_NM; j++) {
        int m = FWD_NM * g + j;
        if (m < a->m0 || m >= a->m1) continue;
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            if (mode == 2)
                _mm256_maskstore_ps(op + m * a->vol + 8 * v, _mm256_loadu_si256((const __m256i *)(mt[v] + 4 * 8)), acc[v][j]);
            else
                _mm256_storeu_ps(op + m * a->vol + 8 * v, acc[v][j]);
        }
    }
}

// The 3-vector tile in inline assembly: 12 accumulators + 3 inputs + 1 weight use all 16 ymm registers, and clang
// spills an accumulator when this is written with intrinsics (a store-forwarding round trip on the FMA chain per
// tap: half the rate, measured). Here the accumulators are register operands and ymm12-15 the scratch.
// The 9 taps of one (input channel, dz): row pointers r0, r1, r2 = input at (dy - 1) * nx - 1 from the tile start,
// so tap (dy, dx) of vector v is at r_dy + 4 dx + 32 v bytes; its mask at m_v + 32 t; weight j at wk + 16 t + 4 j.
#define CK_STR_(x) #x
#define CK_STR(x) CK_STR_(x)
#define X_LOAD0(R, DX, T, V, REG) "vmovups " #DX "*4+" #V "*32(%[" #R "]), %%" #REG "\n\t"
#define X_LOAD1(R, DX, T, V, REG) X_LOAD0(R, DX, T, V, REG) "vandps " #T "*32(%[m" #V "]), %%" #REG ", %%" #REG "\n\t"
#define X_LOAD2(R, DX, T, V, REG) "vmovups " #T "*32(%[m" #V "]), %%" #REG "\n\t" \
    "vmaskmovps " #DX "*4+" #V "*32(%[" #R "]), %%" #REG ", %%" #REG "\n\t"
#define FMA_J(T, J) "vbroadcastss " #T "*16+" #J "*4(%[wk]), %%ymm15\n\t" \
    "vfmadd231ps %%ymm15, %%ymm12, %[a0" #J "]\n\t" \
    "vfmadd231ps %%ymm15, %%ymm13, %[a1" #J "]\n\t" \
    "vfmadd231ps %%ymm15, %%ymm14, %[a2" #J "]\n\t"
#define TAP(M, R, DX, T) X_LOAD##M(R, DX, T, 0, ymm12) X_LOAD##M(R, DX, T, 1, ymm13) X_LOAD##M(R, DX, T, 2, ymm14) \
    FMA_J(T, 0) FMA_J(T, 1) FMA_J(T, 2) FMA_J(T, 3)
#define TAPS9(M) TAP(M, r0, 0, 0) TAP(M, r0, 1, 1) TAP(M, r0, 2, 2) TAP(M, r1, 0, 3) TAP(M, r1, 1, 4) \
    TAP(M, r1, 2, 5) TAP(M, r2, 0, 6) TAP(M, r2, 1, 7) TAP(M, r2, 2, 8)
#define TAPS9_ASM(M)                                                                                       \
    __asm__(TAPS9(M)                                                                                       \
            : [a00] "+x"(a00), [a01] "+x"(a01), [a02] "+x"(a02), [a03] "+x"(a03),                          \
              [a10] "+x"(a10), [a11] "+x"(a11), [a12] "+x"(a12), [a13] "+x"(a13),                          \
              [a20] "+x"(a20), [a21] "+x"(a21), [a22] "+x"(a22), [a23] "+x"(a23)                           \
            : [r0] "r"(r0), [r1] "r"(r1), [r2] "r"(r2), [m0] "r"(mt0), [m1] "r"(mt1), [m2] "r"(mt2),       \
              [wk] "r"(wk)                                                                                 \
            : "xmm12", "xmm13", "xmm14", "xmm15", "memory")

AVX2_INLINE void fwd_tile3(const fwd_args *a, int z, int v0, int g, int mode) {
    const int32_t *mt0 = a->pool + a->index[v0], *mt1 = a->pool + a->index[v0 + 1], *mt2 = a->pool + a->index[v0 + 2];
    const int32_t *mt[3] = {mt0, mt1, mt2};
    float *op = a->out + (size_t)z * a->plane + 8 * (size_t)v0;
    int mb = FWD_NM * g;
    __m256 a00 = acc_start(a, op, mt0, 0, mb, mode), a01 = acc_start(a, op, mt0, 0, mb + 1, mode),
           a02 = acc_start(a, op, mt0, 0, mb + 2, mode), a03 = acc_start(a, op, mt0, 0, mb + 3, mode),
           a10 = acc_start(a, op, mt1, 1, mb, mode), a11 = acc_start(a, op, mt1, 1, mb + 1, mode),
           a12 = acc_start(a, op, mt1, 1, mb + 2, mode), a13 = acc_start(a, op, mt1, 1, mb + 3, mode),
           a20 = acc_start(a, op, mt2, 2, mb, mode), a21 = acc_start(a, op, mt2, 2, mb + 1, mode),
           a22 = acc_start(a, op, mt2, 2, mb + 2, mode), a23 = acc_start(a, op, mt2, 2, mb + 3, mode);
    int dz0 = z == 0 ? 1 : 0, dz1 = z == a->nz - 1 ? 2 : 3;
    int nx = a->nx;
    const float *wg = a->wp + (size_t)g * a->c_count * 27 * FWD_NM;
    for (int c = a->c0; c < a->c1; c++) {
        for (int dz = dz0; dz < dz1; dz++) {
            const float *ip = a->xin + ((ptrdiff_t)c * a->xc + (ptrdiff_t)(z + dz - 1) * a->xz + a->xoff + 8 * (ptrdiff_t)v0);
            const float *wk = wg + ((size_t)c * 27 + dz * 9) * FWD_NM;
            const float *r0 = ip - nx - 1, *r1 = ip - 1, *r2 = ip + nx - 1;
#if FWD_PREFETCH
            // The tile reads 3 * Cin * 3 rows of 1.5 cache lines, too many streams for the hardware prefetchers when
            // Cin is large: fetch the lines of the tile FWD_PREFETCH floats ahead (2 lines per row: the tile
            // advances 1.5 lines). A prefetch never faults, so reading past the tensor is harmless.
            _mm_prefetch((const char *)(r0 + FWD_PREFETCH), _MM_HINT_T0);
            _mm_prefetch((const char *)(r0 + FWD_PREFETCH + 16), _MM_HINT_T0);
            _mm_prefetch((const char *)(r1 + FWD_PREFETCH), _MM_HINT_T0);
            _mm_prefetch((const char *)(r1 + FWD_PREFETCH + 16), _MM_HINT_T0);
            _mm_prefetch((const char *)(r2 + FWD_PREFETCH), _MM_HINT_T0);
            _mm_prefetch((const char *)(r2 + FWD_PREFETCH + 16), _MM_HINT_T0);
#endif
            if (mode == 0) TAPS9_ASM(0);
            else if (mode == 1) TAPS9_ASM(1);
            else TAPS9_ASM(2);
        }
    }
    __m256 acc[3][FWD_NM] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23}};
#pragma GCC unroll 4
    for (int j = 0; j < FWD_NM; j++) {
        int m = FWD_NM * g + j;
        if (m < a->m0 || m >= a->m1) continue;
#pragma GCC unroll 3
        for (int v = 0; v < 3; v++) {
            if (mode == 2)
                _mm256_maskstore_ps(op + m * a->vol + 8 * v, _mm256_loadu_si256((const __m256i *)(mt[v] + 4 * 8)), acc[v][j]);
            else
                _mm256_storeu_ps(op + m * a->vol + 8 * v, acc[v][j]);
        }
    }
}

#define FWD_CASE(NV)                                              \
    case NV:                                                      \
        if (mode == 0) fwd_tile(a, z, v0, NV, g, 0);              \
        else if (mode == 1) fwd_tile(a, z, v0, NV, g, 1);         \
        else fwd_tile(a, z, v0, NV, g, 2);                        \
        break;

// Tiles are run in strips of the plane whose input (C channels x 3 slices) fits in about FWD_STRIP_FLOATS (half
// of a 512 KiB L2), output-channel groups outside the tiles of a strip: a group's packed weights stay in L1 over
// the strip and the strip's input in L2 over the groups. 0: one group after the other per tile (no strips).
#ifndef FWD_STRIP_FLOATS
#define FWD_STRIP_FLOATS 32768
#endif

// Prefetches into L2 the input a strip [s0, s1) of output slice z reads: C channels x 3 slices x the plane range
// [8 s0 - nx - 1, 8 s1 + nx + 1). Issued one strip ahead, so the first group's pass over a strip finds it in L2
// (the per-tile prefetch alone cannot cover L3 latency for 3 C row streams).
#ifndef FWD_STRIP_PREFETCH
#define FWD_STRIP_PREFETCH 1
#endif
AVX2_INLINE void prefetch_strip(const fwd_args *a, int z, int s0, int s1) {
    ptrdiff_t lo = 8 * (ptrdiff_t)s0 - a->nx - 1, hi = 8 * (ptrdiff_t)s1 + a->nx + 1;
    if (lo < 0) lo = 0;
    if (hi > a->plane) hi = a->plane;
    for (int c = 0; c < a->c_count; c++)
        for (int dz = 0; dz < 3; dz++) {
            int zz = z + dz - 1;
            if (zz < 0 || zz >= a->nz) continue;
            const char *p = (const char *)(a->in + c * a->vol + (size_t)zz * a->plane);
            for (ptrdiff_t i = lo * 4 & ~(ptrdiff_t)63; i < hi * 4; i += 64) _mm_prefetch(p + i, _MM_HINT_T1);
        }
}

// Input channels per tile pass: a group's packed weights for FWD_CB channels (432 B each) stay in L1 over a strip;
// the partial sums go through out between blocks (12 loads and stores per tile per block).
#ifndef FWD_CB
#define FWD_CB 32
#endif

// Strip geometry: channel block cb, strip length in vectors, and the packed segment stride (floats) of one
// (channel, slice) of a strip: 8 strip + 2 nx + 2 floats, rounded to a whole number of cache lines, and an odd one, so
// that the same position of the 3 cb segments falls into different L1 sets.
typedef struct { int cb, strip; ptrdiff_t seg; } fwd_geom;

#ifndef FWD_PACK
#define FWD_PACK 1
#endif

static fwd_geom fwd_geometry(int c_count, int ny, int nx) {
    fwd_geom q;
    int nvec = ck_plane_vectors(ny, nx, 8);
    q.cb = FWD_CB > 0 && c_count > FWD_CB ? FWD_CB : c_count;
    q.strip = nvec;
    if (FWD_STRIP_FLOATS > 0) {
        q.strip = FWD_STRIP_FLOATS / (3 * 8 * q.cb) / FWD_NV * FWD_NV;
        if (q.strip < FWD_NV) q.strip = FWD_NV;
        if (q.strip > nvec) q.strip = nvec;
    }
    ptrdiff_t lines = (8 * (ptrdiff_t)q.strip + 2 * nx + 2 + 15) / 16;
    q.seg = 16 * (lines | 1);
    return q;
}

// Whether the 3 cb row streams of a tile pass read in place would crowd L1 sets: channel c, slice dz starts at
// (c vol + dz plane) floats, and when vol and plane are multiples of 4 KiB (160 x 160 x 96: both) every stream maps
// to the same sets and the 8 ways cannot hold them (4 KiB aliasing). Packs when some set gets more than 4 streams.
static int fwd_needs_packing(int cb, size_t vol, size_t plane) {
    int count[64] = {0};
    for (int c = 0; c < cb; c++)
        for (int dz = 0; dz < 3; dz++)
            if (++count[(((size_t)c * vol + dz * plane) * 4 / 64) % 64] > 4) return 1;
    return 0;
}

// Copies plane positions [lo, hi) ∩ [0, plane) of channels [c0, c1) x slices z-1 .. z+1 into seg-strided segments:
// position p of (c, dz) at ws[((c - c0) * 3 + dz) * seg + p - lo].
AVX2_INLINE void pack_strip(const fwd_args *a, float *ws, ptrdiff_t seg, int z, ptrdiff_t lo, ptrdiff_t hi) {
    ptrdiff_t b = lo < 0 ? 0 : lo, e = hi > a->plane ? a->plane : hi;
    for (int c = a->c0; c < a->c1; c++)
        for (int dz = 0; dz < 3; dz++) {
            int zz = z + dz - 1;
            if (zz < 0 || zz >= a->nz) continue;
            const float *src = a->in + c * a->vol + (size_t)zz * a->plane;
            float *dst = ws + ((ptrdiff_t)(c - a->c0) * 3 + dz) * seg - lo;
            ptrdiff_t p = b;
            for (; p + 32 <= e; p += 32) {
                __m256 x0 = _mm256_loadu_ps(src + p), x1 = _mm256_loadu_ps(src + p + 8);
                __m256 x2 = _mm256_loadu_ps(src + p + 16), x3 = _mm256_loadu_ps(src + p + 24);
                _mm256_storeu_ps(dst + p, x0); _mm256_storeu_ps(dst + p + 8, x1);
                _mm256_storeu_ps(dst + p + 16, x2); _mm256_storeu_ps(dst + p + 24, x3);
            }
            for (; p + 8 <= e; p += 8) _mm256_storeu_ps(dst + p, _mm256_loadu_ps(src + p));
            for (; p < e; p++) dst[p] = src[p];
        }
}

size_t ck_avx2_fwd_workspace_floats(int c_count, int ny, int nx) {
    fwd_geom q = fwd_geometry(c_count, ny, nx);
    return (size_t)3 * q.cb * q.seg;
}

AVX2 static void fwd_slices(fwd_args *a, int z0, int z1, float *ws) {
    int nvec = (a->plane + 7) / 8, g0 = a->m0 / FWD_NM, g1 = (a->m1 + FWD_NM - 1) / FWD_NM;
    const int32_t *flags = a->flags;
    fwd_geom q = fwd_geometry(a->c_count, a->plane / a->nx, a->nx);
    int strip = q.strip, pack = FWD_PACK && ws != NULL && fwd_needs_packing(q.cb, a->vol, a->plane);
    for (int z = z0; z < z1; z++) {
        for (int s0 = 0; s0 < nvec; s0 += strip) {
            int s1 = s0 + strip < nvec ? s0 + strip : nvec;
            if (FWD_STRIP_PREFETCH && strip < nvec) {
                if (s1 < nvec) prefetch_strip(a, z, s1, s1 + strip < nvec ? s1 + strip : nvec);
                else if (z + 1 < z1) prefetch_strip(a, z + 1, 0, strip);
            }
            ptrdiff_t lo = 8 * (ptrdiff_t)s0 - a->nx - 1, hi = 8 * (ptrdiff_t)s1 + a->nx + 1;
            for (a->c0 = 0; a->c0 < a->c_count; a->c0 += q.cb) {
              a->c1 = a->c0 + q.cb < a->c_count ? a->c0 + q.cb : a->c_count;
              if (pack) {
                  pack_strip(a, ws, q.seg, z, lo, hi);
                  // c * xc + zz * xz + xoff + p = ((c - c0) * 3 + zz - (z - 1)) * seg + p - lo
                  a->xin = ws; a->xc = 3 * q.seg; a->xz = q.seg;
                  a->xoff = -(ptrdiff_t)a->c0 * 3 * q.seg - (ptrdiff_t)(z - 1) * q.seg - lo;
              }
              for (int g = g0; g < g1; g++) {
                for (int v0 = s0; v0 < s1; v0 += FWD_NV) {
                    int nv = s1 - v0 < FWD_NV ? s1 - v0 : FWD_NV;
                    int mode = 0;
                    for (int v = 0; v < nv; v++)
                        if (!flags[v0 + v]) mode = 1;
                    // A plain load of a tap reads [8 v0 - nx - 1, 8 (v0 + nv) + nx + 1) of the slice: inside it,
                    // the read cannot leave the tensor; else (first and last rows) maskload.
                    if (mode == 1 && (8 * v0 - a->nx - 1 < 0 || 8 * (v0 + nv) + a->nx + 1 > a->plane)) mode = 2;
                    switch (nv) {
                    case 3:
                        if (mode == 0) fwd_tile3(a, z, v0, g, 0);
                        else if (mode == 1) fwd_tile3(a, z, v0, g, 1);
                        else fwd_tile3(a, z, v0, g, 2);
                        break;
                    FWD_CASE(2)
                    default:
                        if (mode == 0) fwd_tile(a, z, v0, 1, g, 0);
                        else if (mode == 1) fwd_tile(a, z, v0, 1, g, 1);
                        else fwd_tile(a, z, v0, 1, g, 2);
                        break;
                    }
                }
              }
            }
        }
    }
}

void ck_avx2_forward(const float *in, const float *plan, const float *bias, float *out, int cin, int cout,
                     int nz, int ny, int nx, int z0, int z1, int m0, int m1, int flip_transpose, float *workspace) {
    ck_pass pass = flip_transpose ? CK_PASS_BACKWARD_DATA : CK_PASS_FORWARD;
    int c_count = flip_transpose ? cout : cin;
    const int32_t *pool = (const int32_t *)(plan + fwd_weight_floats(cin, cout, pass));
    int nvec = ck_plane_vectors(ny, nx, 8);
    const int32_t *index = pool + (size_t)nvec * 72, *flags = index + round8((size_t)nvec);
    size_t vol = (size_t)nz * ny * nx, plane = (size_t)ny * nx;
    fwd_args a = {in, plan, bias, out, pool, index, flags, c_count, nz, nx, ny * nx, m0, m1, vol, 0, c_count,
                  in, (ptrdiff_t)vol, (ptrdiff_t)plane, 0};
    fwd_slices(&a, z0, z1, workspace);
}

// ---- backward-weights ----

// A chunk is slices [z, z + nzc) x rows [y0, y0 + nr) of the output. In the packed layout a row has stride
// P = nx + 1 (column nx is zero), so the chunk of one slice is L = nr * P floats, nq = ceil(L / 8) vectors.
typedef struct {
    int P, nr, nzc, nq;
    size_t S;  // floats per packed input slice: BW_GUARD + (nr + 2) rows of P, + tail, rounded to 8
} bw_geom;

#define BW_GUARD 8

static bw_geom bw_geometry(int ny, int nx, int nzmax) {
    bw_geom q;
    q.P = nx + 1;
    int plane_vecs = (ny * q.P + 7) / 8;
    if (plane_vecs <= BWW_CHUNK) {
        q.nr = ny;
        q.nzc = BWW_CHUNK / plane_vecs;
        if (q.nzc > nzmax) q.nzc = nzmax;
        if (q.nzc < 1) q.nzc = 1;
    } else {
        q.nr = BWW_CHUNK * 8 / q.P;
        if (q.nr < 1) q.nr = 1;
        if (q.nr > ny) q.nr = ny;
        q.nzc = 1;
    }
    q.nq = (q.nr * q.P + 7) / 8;
    q.S = round8((size_t)BW_GUARD + (size_t)(q.nr + 2) * q.P + 16);
    return q;
}

// Workspace: packed dOut [group][s][i][4][8] for up to ceil(cout/4)+1 groups, a flat staging row block, and the
// packed input slices of one channel [nzc + 2][S].
static size_t bw_dpk_floats(int cout, bw_geom q) {
    return (size_t)((cout + BWW_NM - 1) / BWW_NM + 1) * q.nzc * q.nq * BWW_NM * 8;
}

size_t ck_avx2_workspace_floats(int cin, int cout, int nz, int ny, int nx, int nzslab, ck_pass pass) {
    (void)nz;
    if (pass != CK_PASS_BACKWARD_WEIGHTS) return ck_avx2_fwd_workspace_floats(pass == CK_PASS_FORWARD ? cin : cout, ny, nx);
    bw_geom q = bw_geometry(ny, nx, nzslab < 1 ? 1 : nzslab);
    // + Cout doubles: the bias gradient's sums.
    return round8(bw_dpk_floats(cout, q) + round8((size_t)q.nq * 8 + 16) + (size_t)(q.nzc + 2) * q.S) + 2 * (size_t)cout;
}

// dst[0, nx) = src[0, nx), then zeros up to the next multiple of 8 past nx (at least dst[nx], the pad column):
// writes up to 8 floats past dst[nx]; reads nothing past src[nx - 1].
AVX2_INLINE void copy_row_pad(float *dst, const float *src, int nx) {
    int i = 0;
    for (; i + 8 <= nx; i += 8) _mm256_storeu_ps(dst + i, _mm256_loadu_ps(src + i));
    __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(nx - i), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_storeu_ps(dst + i, _mm256_maskload_ps(src + i, tail));
}

AVX2_INLINE void zero_floats(float *dst, size_t n) {  // n rounded up to a multiple of 8
    for (size_t i = 0; i < n; i += 8) _mm256_storeu_ps(dst + i, _mm256_setzero_ps());
}

AVX2_INLINE __m128 hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

typedef struct {
    const float *in, *dout;
    float *dw;
    int cin, cout, nz, ny, nx, m0, m1;
    size_t vol, plane;
    double *bsum;  // per output channel: the bias gradient's sum over the call, or NULL
} bww_args;

AVX2 static void bww_chunk(const bww_args *a, bw_geom q, int z, int nzc, int y0, int nr, float *ws) {
    int g0 = a->m0 / BWW_NM, g1 = (a->m1 + BWW_NM - 1) / BWW_NM, ngl = g1 - g0;
    int P = q.P, nx = a->nx;
    int nq = (nr * P + 7) / 8;                       // vectors per slice in this chunk (nr <= q.nr)
    size_t gstride = (size_t)nzc * nq * BWW_NM * 8;  // floats per group in dpk
    float *dpk = ws;
    float *flat = ws + bw_dpk_floats(a->cout, q);
    float *ipk = flat + round8((size_t)q.nq * 8 + 16);
    // dOut of the chunk: per channel and slice, rows into a flat padded block, then interleaved [i][j][8].
    for (int gl = 0; gl < ngl; gl++)
        for (int j = 0; j < BWW_NM; j++) {
            int m = (g0 + gl) * BWW_NM + j;
            int live = m >= a->m0 && m < a->m1;
            for (int s = 0; s < nzc; s++) {
                float *dst = dpk + gl * gstride + (size_t)s * nq * BWW_NM * 8 + j * 8;
                if (!live) {
                    for (int i = 0; i < nq; i++) _mm256_storeu_ps(dst + (size_t)i * BWW_NM * 8, _mm256_setzero_ps());
                    continue;
                }
                const float *src = a->dout + m * a->vol + (size_t)(z + s) * a->plane + (size_t)y0 * nx;
                // Rows in increasing order: each row's zero tail is overwritten by the next row, except the pad column.
                for (int r = 0; r < nr; r++) copy_row_pad(flat + (size_t)r * P, src + (size_t)r * nx, nx);
                zero_floats(flat + (size_t)nr * P, (size_t)nq * 8 - (size_t)nr * P + 8);
                __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
                for (int i = 0; i < nq; i++) {
                    __m256 d = _mm256_loadu_ps(flat + 8 * i);
                    _mm256_storeu_ps(dst + (size_t)i * BWW_NM * 8, d);
                    if (i & 1) sum1 = _mm256_add_ps(sum1, d); else sum0 = _mm256_add_ps(sum0, d);
                }
                // The bias gradient from the staged rows (pads are zero): a float sum over one chunk row block, then
                // double across chunks. A separate pass over dOut cost 30% of the whole pass when Cin = 1.
                if (a->bsum) {
                    __m128 h = hsum4(_mm256_add_ps(sum0, sum1), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
                    a->bsum[m] += (double)_mm_cvtss_f32(h);
                }
            }
        }
    size_t S = q.S;
    for (int c = 0; c < a->cin; c++) {
        // Input slices z-1 .. z+nzc, rows y0-1 .. y0+nr, zero column and rows outside the volume.
        for (int sp = 0; sp < nzc + 2; sp++) {
            int zz = z - 1 + sp;
            if (zz < 0 || zz >= a->nz) continue;
            float *dst = ipk + sp * S;
            const float *src = a->in + c * a->vol + (size_t)zz * a->plane;
            zero_floats(dst, BW_GUARD);
            for (int r = 0; r < nr + 2; r++) {
                int yy = y0 - 1 + r;
                if (yy < 0 || yy >= a->ny) zero_floats(dst + BW_GUARD + (size_t)r * P, (size_t)P + 8);
                else copy_row_pad(dst + BW_GUARD + (size_t)r * P, src + (size_t)yy * nx, nx);
            }
            zero_floats(dst + BW_GUARD + (size_t)(nr + 2) * P, 16);
        }
        for (int gl = 0; gl < ngl; gl++) {
            float *wrow = a->dw + ((size_t)(g0 + gl) * BWW_NM * a->cin + c) * 27;
            for (int dz = 0; dz < 3; dz++) {
                for (int dy = 0; dy < 3; dy++) {
                    __m256 acc[BWW_NM][3];
#pragma GCC unroll 4
                    for (int j = 0; j < BWW_NM; j++) acc[j][0] = acc[j][1] = acc[j][2] = _mm256_setzero_ps();
                    for (int s = 0; s < nzc; s++) {
                        int zz = z + s + dz - 1;
                        if (zz < 0 || zz >= a->nz) continue;
                        const float *ip = ipk + (s + dz) * S + BW_GUARD + (size_t)dy * P - 1;
                        const float *dq = dpk + gl * gstride + (size_t)s * nq * BWW_NM * 8;
                        for (int i = 0; i < nq; i++, ip += 8, dq += BWW_NM * 8) {
                            __m256 x0 = _mm256_loadu_ps(ip), x1 = _mm256_loadu_ps(ip + 1), x2 = _mm256_loadu_ps(ip + 2);
#pragma GCC unroll 4
                            for (int j = 0; j < BWW_NM; j++) {
                                __m256 d = _mm256_loadu_ps(dq + 8 * j);
                                acc[j][0] = _mm256_fmadd_ps(d, x0, acc[j][0]);
                                acc[j][1] = _mm256_fmadd_ps(d, x1, acc[j][1]);
                                acc[j][2] = _mm256_fmadd_ps(d, x2, acc[j][2]);
                            }
                        }
                    }
                    float sums[3][4];
#pragma GCC unroll 3
                    for (int dx = 0; dx < 3; dx++) _mm_storeu_ps(sums[dx], hsum4(acc[0][dx], acc[1][dx], acc[2][dx], acc[3][dx]));
                    for (int j = 0; j < BWW_NM; j++) {
                        int m = (g0 + gl) * BWW_NM + j;
                        if (m < a->m0 || m >= a->m1) continue;
                        float *wp = wrow + (size_t)j * a->cin * 27 + dz * 9 + dy * 3;
                        wp[0] += sums[0][j]; wp[1] += sums[1][j]; wp[2] += sums[2][j];
                    }
                }
            }
        }
    }
}

void ck_avx2_backward_weights(const float *in, const float *dout, float *dw, float *dbias, int cin, int cout,
                              int nz, int ny, int nx, int z0, int z1, int m0, int m1, float *workspace) {
    bw_geom q = bw_geometry(ny, nx, z1 - z0);
    double *bsum = NULL;
    if (dbias) {
        bsum = (double *)(workspace + round8(bw_dpk_floats(cout, q) + round8((size_t)q.nq * 8 + 16) + (size_t)(q.nzc + 2) * q.S));
        for (int m = m0; m < m1; m++) bsum[m] = 0.0;
    }
    bww_args a = {in, dout, dw, cin, cout, nz, ny, nx, m0, m1, (size_t)nz * ny * nx, (size_t)ny * nx, bsum};
    for (int z = z0; z < z1; z += q.nzc) {
        int nzc = z1 - z < q.nzc ? z1 - z : q.nzc;
        for (int y0 = 0; y0 < ny; y0 += q.nr)
            bww_chunk(&a, q, z, nzc, y0, ny - y0 < q.nr ? ny - y0 : q.nr, workspace);
    }
    if (dbias)
        for (int m = m0; m < m1; m++) dbias[m] += (float)a.bsum[m];
}
