// CThreadPool: the persistent worker threads of attunet's parallel loops (Tensor's parallelFor).
//
// A loop of n items runs on the calling thread and up to threads - 1 workers, which claim items one at a time
// from a shared counter. Between loops the workers spin for a short while (layers' loops follow each other
// within microseconds during a training step) and then sleep on a condition variable. libdispatch's
// concurrentPerform, used before, woke its workers too late for loops shorter than a few milliseconds: the
// calling thread ran most of their items alone.
#ifndef CTHREADPOOL_H
#define CTHREADPOOL_H

#ifdef __cplusplus
extern "C" {
#endif

/// One item of a loop: fn(ctx, item).
typedef void (*ctp_item_fn)(void *ctx, long item);

/// Runs fn(ctx, i) for every i in [0, n) on the calling thread and up to threads - 1 pool workers, and returns
/// when all have finished. Items may run in any order and on any of those threads. When another loop is using
/// the pool, when threads <= 1, or when called from inside an item, the items run inline on the calling thread.
void ctp_parallel_for(long n, int threads, ctp_item_fn fn, void *ctx);

/// 1 on a pool worker and on a calling thread while it runs items, else 0 (a loop there runs inline).
int ctp_inside(void);

/// Inside an item of ctp_parallel_for: which of the loop's threads runs it, in [0, threads) (0: the calling
/// thread). For per-thread scratch; 0 outside a loop.
int ctp_thread_index(void);

#ifdef __cplusplus
}
#endif
#endif
