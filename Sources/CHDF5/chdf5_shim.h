// Static-inline wrappers for HDF5's macros (H5T_NATIVE_FLOAT is `(H5open(), H5T_NATIVE_FLOAT_g)`,
// H5F_ACC_RDONLY is `(H5check(), H5open(), 0u)`, H5P_DEFAULT imports as Int32), which Swift cannot use directly.
#ifndef CHDF5_SHIM_H
#define CHDF5_SHIM_H
#include <hdf5.h>

static inline hid_t chdf5_native_float(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t chdf5_native_double(void) { return H5T_NATIVE_DOUBLE; }
static inline hid_t chdf5_native_int8(void) { return H5T_NATIVE_INT8; }
static inline hid_t chdf5_native_uint8(void) { return H5T_NATIVE_UINT8; }
static inline hid_t chdf5_native_int16(void) { return H5T_NATIVE_INT16; }
static inline hid_t chdf5_native_int32(void) { return H5T_NATIVE_INT32; }
static inline hid_t chdf5_native_int64(void) { return H5T_NATIVE_INT64; }
static inline hid_t chdf5_c_s1(void) { return H5T_C_S1; }
static inline unsigned chdf5_acc_rdonly(void) { return H5F_ACC_RDONLY; }
static inline unsigned chdf5_acc_rdwr(void) { return H5F_ACC_RDWR; }
static inline unsigned chdf5_acc_trunc(void) { return H5F_ACC_TRUNC; }
static inline unsigned chdf5_acc_excl(void) { return H5F_ACC_EXCL; }
static inline hid_t chdf5_p_default(void) { return H5P_DEFAULT; }
static inline hid_t chdf5_s_all(void) { return H5S_ALL; }
static inline hid_t chdf5_p_dataset_create(void) { return H5P_DATASET_CREATE; }
static inline hid_t chdf5_p_file_access(void) { return H5P_FILE_ACCESS; }
static inline hid_t chdf5_p_link_create(void) { return H5P_LINK_CREATE; }
static inline size_t chdf5_variable(void) { return H5T_VARIABLE; }
/// Silence HDF5's automatic error-stack printing on the calling thread (the setting is per thread in a
/// thread-safe HDF5); we turn failures into one clear line ourselves. Cheap after the first call on a thread.
static inline void chdf5_silence_errors(void) {
    static _Thread_local int silenced = 0;
    if (!silenced) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); silenced = 1; }
}
static inline int chdf5_version(unsigned *maj, unsigned *min, unsigned *rel) { return (int)H5get_libversion(maj, min, rel); }
#endif
