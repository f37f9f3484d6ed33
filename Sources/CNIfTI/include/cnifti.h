// CNIfTI: a small C shim over nifticlib (Debian libnifti2-dev). Swift sees only these declarations;
// nifticlib's own headers stay inside cnifti.c (they include each other with <...> from /usr/include/nifti).
#ifndef CNIFTI_H
#define CNIFTI_H
#include <stdint.h>
#include <stddef.h>

/// What attunet needs of a NIfTI-1 header. Voxel (i, j, k) is stored with i fastest.
typedef struct {
    int ndim;              ///< number of dimensions in use (1..7)
    int64_t dim[7];        ///< nx, ny, nz, nt, ... (unused dims are 1)
    int datatype;          ///< NIfTI datatype code (4 = int16, 16 = float32, 2 = uint8, ...)
    float pixdim[3];       ///< voxel spacing dx, dy, dz (mm when xyz units are mm)
    int sform_code, qform_code;
    float affine[16];      ///< voxel -> world, row-major 4x4 (sform if set, else qform, else pixdim scaling)
    float scl_slope, scl_inter;
    int64_t nvox;
} cnifti_header;

/// Reads header and data and converts voxels to float32 (applying scl_slope/scl_inter when slope != 0).
/// On success returns 0 and *data points to malloc'd memory of nvox floats (free with cnifti_free).
/// On failure returns non-zero and writes one line describing the problem into err.
int cnifti_read_f32(const char *path, cnifti_header *hdr, float **data, char *err, size_t errlen);

/// Reads only the header (cheap). Returns 0 on success.
int cnifti_read_header(const char *path, cnifti_header *hdr, char *err, size_t errlen);

/// Writes a 3D volume nx*ny*nz (x fastest) to path (.nii or .nii.gz). `datatype` is 2 (uint8), 4 (int16)
/// or 16 (float32) and `data` must hold that type. `affine` (row-major 4x4, voxel -> world, mm) is stored as
/// both the sform (srow_x/y/z, exact) and the qform (quaternion, voxel sizes, qfac), with `sform_code` and
/// `qform_code` (0-5; 1 = scanner anatomy). An affine with shear, which no quaternion represents, gets
/// qform_code 0 so that readers use the sform. Returns 0 on success.
int cnifti_write3d(const char *path, int64_t nx, int64_t ny, int64_t nz, int datatype, const void *data,
                   const float affine[16], int qform_code, int sform_code, char *err, size_t errlen);

/// As cnifti_write3d, with `nt` volumes of nx*ny*nz one after the other (a 4-D image, dim[4] = nt; 3-D when
/// nt is 1). pixdim[4] is 1.
int cnifti_write4d(const char *path, int64_t nx, int64_t ny, int64_t nz, int64_t nt, int datatype, const void *data,
                   const float affine[16], int qform_code, int sform_code, char *err, size_t errlen);

void cnifti_free(void *p);

/// Bytes per voxel of a NIfTI datatype code (0 when unknown); also proves nifticlib is linked.
int cnifti_datatype_size(int datatype);
#endif
