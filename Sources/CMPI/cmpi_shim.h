// Thin static-inline wrappers over OpenMPI. MPI's handles and constants (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM,
// MPI_IN_PLACE, ...) are macros over globals of incomplete type, which Swift cannot import; these wrappers are
// the only way Swift reaches them. Every function returns the MPI error code unless it says otherwise.
#ifndef CMPI_SHIM_H
#define CMPI_SHIM_H
#include <mpi.h>
#include <string.h>

static inline int cmpi_thread_single(void) { return MPI_THREAD_SINGLE; }
static inline int cmpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int cmpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline int cmpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }

static inline int cmpi_init_thread(int required, int *provided) {
    return MPI_Init_thread(NULL, NULL, required, provided);
}
static inline int cmpi_initialized(void) { int f = 0; MPI_Initialized(&f); return f; }
static inline int cmpi_finalized(void) { int f = 0; MPI_Finalized(&f); return f; }
static inline int cmpi_finalize(void) { return MPI_Finalize(); }
static inline int cmpi_query_thread(void) { int p = 0; MPI_Query_thread(&p); return p; }

static inline MPI_Comm cmpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm cmpi_comm_null(void) { return MPI_COMM_NULL; }
static inline int cmpi_comm_rank(MPI_Comm c) { int r = -1; MPI_Comm_rank(c, &r); return r; }
static inline int cmpi_comm_size(MPI_Comm c) { int s = -1; MPI_Comm_size(c, &s); return s; }
static inline int cmpi_comm_split(MPI_Comm c, int color, int key, MPI_Comm *out) {
    return MPI_Comm_split(c, color, key, out);
}
static inline int cmpi_comm_free(MPI_Comm *c) { return MPI_Comm_free(c); }
/// Errors return to the caller instead of aborting the job, so we can print one clear line.
static inline int cmpi_errors_return(MPI_Comm c) { return MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN); }

static inline int cmpi_allreduce_sum_f32(MPI_Comm c, float *buf, long count) {
    return MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, c);
}
static inline int cmpi_allreduce_sum_f64(MPI_Comm c, double *buf, long count) {
    return MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_DOUBLE, MPI_SUM, c);
}
static inline int cmpi_allreduce_max_f64(MPI_Comm c, double *buf, long count) {
    return MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_DOUBLE, MPI_MAX, c);
}
static inline int cmpi_allreduce_min_f64(MPI_Comm c, double *buf, long count) {
    return MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_DOUBLE, MPI_MIN, c);
}
static inline int cmpi_iallreduce_sum_f32(MPI_Comm c, float *buf, long count, MPI_Request *req) {
    return MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, c, req);
}
static inline int cmpi_wait(MPI_Request *req) { return MPI_Wait(req, MPI_STATUS_IGNORE); }
static inline int cmpi_test(MPI_Request *req) { int flag = 0; MPI_Test(req, &flag, MPI_STATUS_IGNORE); return flag; }
static inline MPI_Request cmpi_request_null(void) { return MPI_REQUEST_NULL; }

static inline int cmpi_bcast_f32(MPI_Comm c, float *buf, long count, int root) {
    return MPI_Bcast(buf, (int)count, MPI_FLOAT, root, c);
}
static inline int cmpi_bcast_bytes(MPI_Comm c, void *buf, long count, int root) {
    return MPI_Bcast(buf, (int)count, MPI_BYTE, root, c);
}
/// Gathers `count` bytes from every rank into `recv` (size * count bytes) on `root`.
static inline int cmpi_gather_bytes(MPI_Comm c, const void *send, long count, void *recv, int root) {
    return MPI_Gather(send, (int)count, MPI_BYTE, recv, (int)count, MPI_BYTE, root, c);
}
static inline int cmpi_allgather_bytes(MPI_Comm c, const void *send, long count, void *recv) {
    return MPI_Allgather(send, (int)count, MPI_BYTE, recv, (int)count, MPI_BYTE, c);
}
static inline int cmpi_barrier(MPI_Comm c) { return MPI_Barrier(c); }
static inline double cmpi_wtime(void) { return MPI_Wtime(); }
static inline int cmpi_abort(MPI_Comm c, int code) { return MPI_Abort(c, code); }

/// Copies the `len` characters of an MPI string into buf (buflen bytes), NUL-terminated and cut to fit.
static inline void cmpi_copy_string(char *buf, int buflen, const char *src, int len) {
    if (buflen <= 0) return;
    int n = len < buflen - 1 ? len : buflen - 1;
    memcpy(buf, src, (size_t)n);
    buf[n] = 0;
}
/// One of MPI's string getters (same signature: buffer, length out) into buf, cut to fit.
static inline int cmpi_get_string(int (*get)(char *, int *), char *buf, int buflen) {
    char tmp[MPI_MAX_LIBRARY_VERSION_STRING + MPI_MAX_PROCESSOR_NAME];
    int len = 0;
    int rc = get(tmp, &len);
    cmpi_copy_string(buf, buflen, tmp, len);
    return rc;
}
/// MPI library version string (e.g. "Open MPI v4.1.4, ..."), written into buf (at least 256 bytes).
static inline int cmpi_library_version(char *buf, int buflen) { return cmpi_get_string(MPI_Get_library_version, buf, buflen); }
static inline int cmpi_processor_name(char *buf, int buflen) { return cmpi_get_string(MPI_Get_processor_name, buf, buflen); }
static inline int cmpi_error_string(int code, char *buf, int buflen) {
    char tmp[MPI_MAX_ERROR_STRING];
    int len = 0;
    int rc = MPI_Error_string(code, tmp, &len);
    cmpi_copy_string(buf, buflen, tmp, len);
    return rc;
}
static inline int cmpi_success(void) { return MPI_SUCCESS; }
#endif
