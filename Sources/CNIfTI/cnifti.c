// nifticlib wrapper: converts its NULL returns and stderr chatter into one error line for the caller.
#include "cnifti.h"
#include <nifti1_io.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void fill_header(const nifti_image *nim, cnifti_header *h) {
    memset(h, 0, sizeof(*h));
    h->ndim = nim->ndim;
    for (int i = 0; i < 7; i++) h->dim[i] = nim->dim[i + 1] > 0 && i < nim->ndim ? nim->dim[i + 1] : 1;
    h->datatype = nim->datatype;
    h->pixdim[0] = nim->dx; h->pixdim[1] = nim->dy; h->pixdim[2] = nim->dz;
    h->sform_code = nim->sform_code; h->qform_code = nim->qform_code;
    mat44 m;
    if (nim->sform_code > 0) m = nim->sto_xyz;
    else if (nim->qform_code > 0) m = nim->qto_xyz;
    else {
        memset(&m, 0, sizeof m);
        m.m[0][0] = nim->dx; m.m[1][1] = nim->dy; m.m[2][2] = nim->dz; m.m[3][3] = 1;
    }
    for (int r = 0; r < 4; r++) for (int c = 0; c < 4; c++) h->affine[r * 4 + c] = m.m[r][c];
    h->scl_slope = nim->scl_slope; h->scl_inter = nim->scl_inter;
    h->nvox = (int64_t)nim->nvox;
}

static int check_file(const char *path, char *err, size_t errlen) {
    struct stat st;
    if (stat(path, &st) != 0) { snprintf(err, errlen, "%s: no such file", path); return 1; }
    if (!S_ISREG(st.st_mode)) { snprintf(err, errlen, "%s: not a regular file", path); return 1; }
    // An uncompressed header alone is 348 bytes; a small gzip'ed file can legitimately be shorter.
    size_t n = strlen(path);
    int gz = n > 3 && strcmp(path + n - 3, ".gz") == 0;
    if (!gz && st.st_size < 348) { snprintf(err, errlen, "%s: too short to be a NIfTI file (%lld bytes)", path, (long long)st.st_size); return 1; }
    return 0;
}

// nifticlib prints some of its errors to stderr whatever its debug level (nifti_convert_nhdr2nim's "bad
// dim[0]", "bad datatype", a missing image file for a two-file header, ...), and a damaged header can claim a
// volume of terabytes. So the raw header is checked here first, .nii and .nii.gz alike (through znzlib), and
// nifticlib only ever sees headers that pass; the reason for a refusal is the caller's one error line.
static int check_header(const char *path, char *err, size_t errlen) {
    znzFile f = znzopen(path, "rb", nifti_is_gzfile(path));
    if (znz_isnull(f)) { snprintf(err, errlen, "%s: cannot open the file", path); return 1; }
    struct nifti_1_header h;
    memset(&h, 0, sizeof h);
    long n = (long)znzread(&h, 1, sizeof h, f);
    znzclose(f);
    if (n != (long)sizeof h) {
        snprintf(err, errlen, "%s: not a readable NIfTI-1 file (header truncated: %ld of 348 bytes)", path, n < 0 ? 0 : n);
        return 1;
    }
    int swap = 0;
    if (h.sizeof_hdr != 348) {
        int size = h.sizeof_hdr;
        nifti_swap_4bytes(1, &size);
        if (size != 348) { snprintf(err, errlen, "%s: not a NIfTI-1 file (bad header: sizeof_hdr %d)", path, h.sizeof_hdr); return 1; }
        swap = 1;
    }
    if (swap) {
        nifti_swap_2bytes(8, h.dim);
        nifti_swap_2bytes(1, &h.datatype);
        nifti_swap_4bytes(1, &h.vox_offset);
    }
    if (memcmp(h.magic, "n+1", 4) != 0) {
        snprintf(err, errlen, "%s: not a single-file NIfTI-1 file (bad header: magic is not \"n+1\")", path);
        return 1;
    }
    if (h.dim[0] < 1 || h.dim[0] > 7) {
        snprintf(err, errlen, "%s: not a NIfTI-1 file (bad header: dim[0] = %d, not 1-7)", path, h.dim[0]);
        return 1;
    }
    double voxels = 1;
    for (int i = 1; i <= h.dim[0]; i++) {
        if (h.dim[i] < 1) { snprintf(err, errlen, "%s: bad NIfTI header: dim[%d] = %d", path, i, h.dim[i]); return 1; }
        voxels *= h.dim[i];
    }
    int nbyper = 0, swapsize = 0;
    nifti_datatype_sizes(h.datatype, &nbyper, &swapsize);
    if (nbyper <= 0 || h.datatype == DT_BINARY) {
        snprintf(err, errlen, "%s: unsupported NIfTI datatype %d", path, h.datatype);
        return 1;
    }
    if (!(h.vox_offset >= 0 && h.vox_offset < 2147483647.0f)) {
        snprintf(err, errlen, "%s: bad NIfTI header: vox_offset %g", path, (double)h.vox_offset);
        return 1;
    }
    // 2^40 bytes: far beyond any CT volume, and every size below stays exact in size_t.
    if (voxels * nbyper > 1099511627776.0) {
        snprintf(err, errlen, "%s: bad NIfTI header: implausible volume of %.0f voxels", path, voxels);
        return 1;
    }
    if (!nifti_is_gzfile(path)) {
        struct stat st;
        double offset = h.vox_offset < 348 ? 348 : (double)(long)h.vox_offset;
        if (stat(path, &st) != 0 || (double)st.st_size < offset + voxels * nbyper) {
            snprintf(err, errlen, "%s: voxel data is truncated (%.0f voxels of %d bytes expected after byte %.0f, the file has %lld bytes)",
                     path, voxels, nbyper, offset, (long long)st.st_size);
            return 1;
        }
    }
    return 0;
}

// nifti_image_load accepts a short read silently (it keeps what it got), so read the voxels ourselves and
// insist on every byte. The buffer grows as data arrives (16 MiB at a time): a .nii.gz whose header claims
// more than the stream holds costs no more memory than the stream gives.
static int load_data(nifti_image *nim) {
    size_t bytes = nim->nvox * (size_t)nim->nbyper;
    if (!nim->iname || bytes == 0) return 1;
    // znzseek returns gzseek's new offset for .gz files but fseek's 0 otherwise: both are >= 0 on success.
    znzFile f = znzopen(nim->iname, "rb", nifti_is_gzfile(nim->iname));
    if (znz_isnull(f)) return 1;
    char *buf = NULL;
    size_t have = 0, capacity = 0;
    int ok = znzseek(f, nim->iname_offset, SEEK_SET) >= 0;
    while (ok && have < bytes) {
        size_t want = bytes - have < ((size_t)16 << 20) ? bytes - have : ((size_t)16 << 20);
        if (have + want > capacity) {
            size_t grown = capacity * 2 > have + want ? capacity * 2 : have + want;
            if (grown > bytes) grown = bytes;
            char *more = realloc(buf, grown);
            if (!more) { ok = 0; break; }
            buf = more; capacity = grown;
        }
        long got = (long)znzread(buf + have, 1, want, f);
        if (got <= 0) { ok = 0; break; }
        have += (size_t)got;
    }
    znzclose(f);
    if (!ok || have != bytes) { free(buf); return 1; }
    if (nim->swapsize > 1 && nim->byteorder != nifti_short_order())
        nifti_swap_Nbytes(nim->nvox, nim->swapsize, buf);
    nim->data = buf;
    return 0;
}

int cnifti_read_header(const char *path, cnifti_header *hdr, char *err, size_t errlen) {
    if (check_file(path, err, errlen) || check_header(path, err, errlen)) return 1;
    nifti_set_debug_level(0);
    nifti_image *nim = nifti_image_read(path, 0);
    if (!nim) { snprintf(err, errlen, "%s: not a readable NIfTI-1 file (bad or truncated header)", path); return 1; }
    fill_header(nim, hdr);
    nifti_image_free(nim);
    return 0;
}

int cnifti_read_f32(const char *path, cnifti_header *hdr, float **data, char *err, size_t errlen) {
    *data = NULL;
    if (check_file(path, err, errlen) || check_header(path, err, errlen)) return 1;
    nifti_set_debug_level(0);
    nifti_image *nim = nifti_image_read(path, 0);
    if (!nim) { snprintf(err, errlen, "%s: not a readable NIfTI-1 file (bad or truncated header)", path); return 1; }
    fill_header(nim, hdr);
    if (load_data(nim) != 0) {
        snprintf(err, errlen, "%s: voxel data is truncated or unreadable (%lld voxels of %d bytes expected)", path,
                 (long long)nim->nvox, nim->nbyper);
        nifti_image_free(nim);
        return 1;
    }
    size_t n = nim->nvox;
    float *out = (float *)malloc(n * sizeof(float) + 1);
    if (!out) { snprintf(err, errlen, "%s: out of memory for %zu voxels", path, n); nifti_image_free(nim); return 1; }
    const void *src = nim->data;
    switch (nim->datatype) {
    case DT_UINT8:   for (size_t i = 0; i < n; i++) out[i] = ((const uint8_t *)src)[i]; break;
    case DT_INT8:    for (size_t i = 0; i < n; i++) out[i] = ((const int8_t *)src)[i]; break;
    case DT_INT16:   for (size_t i = 0; i < n; i++) out[i] = ((const int16_t *)src)[i]; break;
    case DT_UINT16:  for (size_t i = 0; i < n; i++) out[i] = ((const uint16_t *)src)[i]; break;
    case DT_INT32:   for (size_t i = 0; i < n; i++) out[i] = (float)((const int32_t *)src)[i]; break;
    case DT_UINT32:  for (size_t i = 0; i < n; i++) out[i] = (float)((const uint32_t *)src)[i]; break;
    case DT_INT64:   for (size_t i = 0; i < n; i++) out[i] = (float)((const int64_t *)src)[i]; break;
    case DT_UINT64:  for (size_t i = 0; i < n; i++) out[i] = (float)((const uint64_t *)src)[i]; break;
    case DT_FLOAT32: memcpy(out, src, n * sizeof(float)); break;
    case DT_FLOAT64: for (size_t i = 0; i < n; i++) out[i] = (float)((const double *)src)[i]; break;
    default:
        snprintf(err, errlen, "%s: unsupported NIfTI datatype %d (%s)", path, nim->datatype, nifti_datatype_string(nim->datatype));
        free(out); nifti_image_free(nim); return 1;
    }
    if (nim->scl_slope != 0 && isfinite(nim->scl_slope) && isfinite(nim->scl_inter) &&
        !(nim->scl_slope == 1 && nim->scl_inter == 0)) {
        for (size_t i = 0; i < n; i++) out[i] = out[i] * nim->scl_slope + nim->scl_inter;
    }
    nifti_image_free(nim);
    *data = out;
    return 0;
}

int cnifti_write3d(const char *path, int64_t nx, int64_t ny, int64_t nz, int datatype, const void *data,
                   const float affine[16], int qform_code, int sform_code, char *err, size_t errlen) {
    return cnifti_write4d(path, nx, ny, nz, 1, datatype, data, affine, qform_code, sform_code, err, errlen);
}

int cnifti_write4d(const char *path, int64_t nx, int64_t ny, int64_t nz, int64_t nt, int datatype, const void *data,
                   const float affine[16], int qform_code, int sform_code, char *err, size_t errlen) {
    if (datatype != DT_UINT8 && datatype != DT_INT16 && datatype != DT_FLOAT32) {
        snprintf(err, errlen, "%s: cannot write datatype %d", path, datatype); return 1;
    }
    // NIFTI_XFORM_UNKNOWN (0) ... NIFTI_XFORM_MNI_152 (4), and 5 (TEMPLATE_OTHER) of later nifti1.h versions.
    if (qform_code < 0 || qform_code > 5 || sform_code < 0 || sform_code > 5) {
        snprintf(err, errlen, "%s: invalid qform/sform code %d/%d (0-5)", path, qform_code, sform_code); return 1;
    }
    nifti_set_debug_level(0);
    if (nt < 1) { snprintf(err, errlen, "%s: invalid 4th dimension %lld", path, (long long)nt); return 1; }
    int dims[8] = {nt > 1 ? 4 : 3, (int)nx, (int)ny, (int)nz, (int)nt, 1, 1, 1};
    nifti_image *nim = nifti_make_new_nim(dims, datatype, 0);
    if (!nim) { snprintf(err, errlen, "%s: cannot create NIfTI image", path); return 1; }
    mat44 m;
    for (int r = 0; r < 4; r++) for (int c = 0; c < 4; c++) m.m[r][c] = affine[r * 4 + c];
    nim->sform_code = sform_code;
    nim->qform_code = qform_code;
    nim->sto_xyz = m;
    nim->sto_ijk = nifti_mat44_inverse(m);
    nifti_mat44_to_quatern(m, &nim->quatern_b, &nim->quatern_c, &nim->quatern_d, &nim->qoffset_x, &nim->qoffset_y,
                           &nim->qoffset_z, &nim->dx, &nim->dy, &nim->dz, &nim->qfac);
    nim->qto_xyz = nifti_quatern_to_mat44(nim->quatern_b, nim->quatern_c, nim->quatern_d, nim->qoffset_x,
                                          nim->qoffset_y, nim->qoffset_z, nim->dx, nim->dy, nim->dz, nim->qfac);
    nim->qto_ijk = nifti_mat44_inverse(nim->qto_xyz);
    // A qform is a rotation, voxel sizes and a flip: it cannot carry shear. When the quaternion does not give the
    // affine back, the qform is marked unknown (code 0) so that readers take the sform, which is exact.
    for (int r = 0; r < 3; r++) for (int c = 0; c < 4; c++) {
        float d = fabsf(nim->qto_xyz.m[r][c] - m.m[r][c]);
        if (d > 1e-4f * (1.0f + fabsf(m.m[r][c]))) nim->qform_code = NIFTI_XFORM_UNKNOWN;
    }
    nim->pixdim[1] = nim->dx; nim->pixdim[2] = nim->dy; nim->pixdim[3] = nim->dz;
    nim->xyz_units = NIFTI_UNITS_MM;
    size_t len = strlen(path);
    int single = (len > 4 && strcmp(path + len - 4, ".nii") == 0) || (len > 7 && strcmp(path + len - 7, ".nii.gz") == 0);
    if (!single || nifti_set_filenames(nim, path, 0, 1) != 0) {
        snprintf(err, errlen, "%s: not a valid NIfTI file name (use .nii or .nii.gz)", path);
        nim->data = NULL; nifti_image_free(nim); return 1;
    }
    // nifti_image_write stores the quaternion only when qform_code > 0 (pixdim alone otherwise), so a qform
    // code of 0 would lose the qform. Write the single-file header ourselves, as nifti_image_write would, with
    // the quaternion always filled in (nibabel does the same), then the 4-byte extension flag and the voxels.
    nim->nifti_type = NIFTI_FTYPE_NIFTI1_1;
    nifti_set_iname_offset(nim);
    struct nifti_1_header h = nifti_convert_nim2nhdr(nim);
    h.quatern_b = nim->quatern_b; h.quatern_c = nim->quatern_c; h.quatern_d = nim->quatern_d;
    h.qoffset_x = nim->qoffset_x; h.qoffset_y = nim->qoffset_y; h.qoffset_z = nim->qoffset_z;
    h.pixdim[0] = nim->qfac;
    size_t bytes = nim->nvox * (size_t)nim->nbyper;
    int ok = h.vox_offset == 352;
    znzFile f = ok ? znzopen(path, "wb", nifti_is_gzfile(path)) : NULL;
    if (znz_isnull(f)) ok = 0;
    else {
        const char extension[4] = {0, 0, 0, 0};
        ok = znzwrite(&h, 1, sizeof h, f) == sizeof h && znzwrite(extension, 1, 4, f) == 4 &&
             znzwrite(data, 1, bytes, f) == bytes;
        if (znzclose(f) != 0) ok = 0;
    }
    nifti_image_free(nim);
    struct stat st;
    if (!ok || stat(path, &st) != 0 || st.st_size == 0) { snprintf(err, errlen, "%s: write failed", path); return 1; }
    return 0;
}

void cnifti_free(void *p) { free(p); }

int cnifti_datatype_size(int datatype) {
    int nbyper = 0, swapsize = 0;
    nifti_datatype_sizes(datatype, &nbyper, &swapsize);
    return nbyper;
}
