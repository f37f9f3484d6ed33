// Static-inline wrappers for HDF5's macros (H5T_NATIVE_FLOAT is `(H5open(), H5T_NATIVE_FLOAT_g)`,
// H5F_ACC_RDONLY is `(H5check(), H5open(), 0u)`, H5P_DEFAULT imports as Int32), which Swift cannot use directly.
#ifndef CHDF5_SHIM_H
#define CHDF5_SHIM_H
#include <hdf5.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <errno.h>

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
static inline hid_t chdf5_p_dataset_access(void) { return H5P_DATASET_ACCESS; }
static inline hid_t chdf5_p_file_access(void) { return H5P_FILE_ACCESS; }
static inline hid_t chdf5_p_link_create(void) { return H5P_LINK_CREATE; }
static inline size_t chdf5_variable(void) { return H5T_VARIABLE; }
/// Silence HDF5's automatic error-stack printing on the calling thread (the setting is per thread in a
/// thread-safe HDF5); we turn failures into one clear line ourselves. Cheap after the first call on a thread.
static inline void chdf5_silence_errors(void) {
    static _Thread_local int silenced = 0;
    if (!silenced) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); silenced = 1; }
}
/// Appends the description of every entry of the calling thread's current HDF5 error stack to `buf` (NUL-
/// terminated, cut at `size`), innermost last: how HDF5Kit tells a failed checksum or a full disk from other
/// failures (the stack is kept per thread whether or not it is printed).
static herr_t chdf5_append_error(unsigned n, const H5E_error2_t *e, void *data) {
    (void)n;
    char **cursor = (char **)data;   /* cursor[0]: where to write, cursor[1]: the end of the buffer */
    if (e->desc && cursor[0] < cursor[1]) {
        int w = snprintf(cursor[0], (size_t)(cursor[1] - cursor[0]), "%s\n", e->desc);
        if (w > 0) cursor[0] += (w < cursor[1] - cursor[0]) ? w : (cursor[1] - cursor[0]);
    }
    return 0;
}
static inline void chdf5_error_text(char *buf, size_t size) {
    if (size == 0) return;
    buf[0] = 0;
    char *cursor[2] = { buf, buf + size - 1 };
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, chdf5_append_error, cursor);
    *cursor[0] = 0;
}
/// True when the calling thread's HDF5 error stack holds an allocation failure (H5E_NOSPACE, H5E_CANTALLOC):
/// how the probe of a damaged file (`H5Probe`) tells "needed more memory than its limit" from other failures.
static herr_t chdf5_find_allocation_failure(unsigned n, const H5E_error2_t *e, void *data) {
    (void)n;
    if (e->min_num == H5E_NOSPACE || e->min_num == H5E_CANTALLOC) *(int *)data = 1;
    return 0;
}
static inline int chdf5_error_is_allocation_failure(void) {
    int found = 0;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, chdf5_find_allocation_failure, &found);
    return found;
}
/// Gives up a file being written that met a full disk: its sec2 descriptor is pointed at an empty in-memory
/// file (memfd), so that what HDF5 still writes as its objects and the file close cannot fail, and the file
/// closes cleanly (HDF5 1.10 frees a file whose close failed but keeps its identifier, and its exit handler
/// then crashes on it). The caller removes the file on disk. Returns 0 on success.
static inline int chdf5_discard_file_data(hid_t file) {
    void *handle = NULL;
    if (H5Fget_vfd_handle(file, H5P_DEFAULT, &handle) < 0 || handle == NULL) return -1;
    int fd = *(int *)handle;
#ifdef SYS_memfd_create
    int sink = (int)syscall(SYS_memfd_create, "attunet-discarded", 1u /* MFD_CLOEXEC */);
    if (sink >= 0) {
        int r = dup2(sink, fd);
        close(sink);
        if (r >= 0) return 0;
    }
#endif
    return ftruncate(fd, 0);
}
/// Allocates the disk blocks of a file being written up to HDF5's end of allocation (Linux fallocate), so
/// that the metadata a flush writes there cannot meet a full disk: HDF5 1.10 cannot recover from a failed
/// metadata flush. Returns 0, or the errno (ENOSPC: the disk is full); 0 where fallocate is not supported.
static inline int chdf5_reserve_file_space(hid_t file) {
#ifdef SYS_fallocate
    void *handle = NULL;
    haddr_t eoa = 0;
    if (H5Fget_vfd_handle(file, H5P_DEFAULT, &handle) < 0 || handle == NULL || H5Fget_eoa(file, &eoa) < 0) return 0;
    if (syscall(SYS_fallocate, *(int *)handle, 0, (off_t)0, (off_t)eoa) == 0) return 0;
    return (errno == ENOSPC || errno == EDQUOT) ? errno : 0;
#else
    (void)file;
    return 0;
#endif
}
static inline int chdf5_version(unsigned *maj, unsigned *min, unsigned *rel) { return (int)H5get_libversion(maj, min, rel); }
#endif
