// What the paths share: halo mask tables, weight packing, the bias gradient. Plain C (no target attributes).
#include <string.h>
#include "conv3_internal.h"

int ck_plane_vectors(int ny, int nx, int lanes) { return (ny * nx + lanes - 1) / lanes; }

// Bit (p % lanes) of entry [p / lanes][dy*3 + dx] for every voxel p of the plane whose tap is inside.
#define BUILD_MASKS(T, LANES)                                                                        \
    int plane = ny * nx, nvec = ck_plane_vectors(ny, nx, LANES);                                     \
    memset(mtab, 0, sizeof(T) * 9 * (size_t)nvec);                                                   \
    for (int p = 0; p < plane; p++) {                                                                \
        int y = p / nx, x = p % nx;                                                                  \
        T *m = mtab + (size_t)(p / LANES) * 9;                                                       \
        for (int dy = 0; dy < 3; dy++) {                                                             \
            if (y + dy - 1 < 0 || y + dy - 1 >= ny) continue;                                        \
            for (int dx = 0; dx < 3; dx++)                                                           \
                if (x + dx - 1 >= 0 && x + dx - 1 < nx) m[dy * 3 + dx] |= (T)(1u << (p % LANES));    \
        }                                                                                            \
    }

void ck_build_masks16(uint16_t *mtab, int ny, int nx) { BUILD_MASKS(uint16_t, 16) }
void ck_build_masks8(uint8_t *mtab, int ny, int nx) { BUILD_MASKS(uint8_t, 8) }

void ck_pack_weights(const float *w, float *wp, int cin, int cout, int flip_transpose, int nm) {
    int m_count = flip_transpose ? cin : cout, c_count = flip_transpose ? cout : cin;
    int ng = (m_count + nm - 1) / nm;
    for (int g = 0; g < ng; g++)
        for (int c = 0; c < c_count; c++)
            for (int k = 0; k < 27; k++)
                for (int j = 0; j < nm; j++) {
                    int m = g * nm + j;
                    float v = 0.0f;
                    if (m < m_count)
                        v = flip_transpose ? w[((size_t)c * cin + m) * 27 + 26 - k] : w[((size_t)m * cin + c) * 27 + k];
                    wp[(((size_t)g * c_count + c) * 27 + k) * nm + j] = v;
                }
}

void ck_bias_grad(const float *dout, float *dbias, int nz, int ny, int nx, int z0, int z1, int m0, int m1) {
    size_t vol = (size_t)nz * ny * nx, plane = (size_t)ny * nx, n = (size_t)(z1 - z0) * plane;
    for (int m = m0; m < m1; m++) {
        const float *p = dout + m * vol + z0 * plane;
        // 8 independent double sums: one running sum would wait for each add's latency (4 cycles per element).
        double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
            for (int k = 0; k < 8; k++) s[k] += p[i + k];
        for (; i < n; i++) s[0] += p[i];
        dbias[m] += (float)(((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])));
    }
}
