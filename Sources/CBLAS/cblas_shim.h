// OpenBLAS's cblas.h (Debian: /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h via pkg-config "openblas").
// Exposes cblas_sgemm, openblas_set_num_threads, openblas_get_num_threads, openblas_get_corename, openblas_get_config.
#include <cblas.h>
