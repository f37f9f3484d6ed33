// The worker pool behind ctp_parallel_for (design: include/cthreadpool.h).
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include "cthreadpool.h"

#define CTP_MAX_WORKERS 511
// How long an idle worker spins before it sleeps: longer than the gaps between the loops of one step.
#define CTP_SPIN_NS 300000L

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

// The current loop (see worker_main for how it is published).
static ctp_item_fn job_fn;
static void *job_ctx;
static long job_n;
static int job_threads;

static _Atomic long next_item;          // the next unclaimed item
static _Atomic int acks;                // workers that finished their part of the current loop
static _Atomic unsigned long generation;

static pthread_mutex_t sleep_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t caller_mutex = PTHREAD_MUTEX_INITIALIZER;   // one loop at a time
static int workers;                                                 // created so far (under caller_mutex)
static _Thread_local int inside;
static _Thread_local int thread_index;   // 0 on callers, w + 1 on worker w
static unsigned long born_after;   // the generation a new worker starts from (written under caller_mutex)

static void run_items(ctp_item_fn fn, void *ctx, long n) {
    long i;
    while ((i = atomic_fetch_add_explicit(&next_item, 1, memory_order_relaxed)) < n) fn(ctx, i);
}

// The job fields are published like a seqlock: the caller makes `generation` odd, writes them, and makes it
// even again; a worker copies them only between two equal even readings. Workers that take part in a loop
// are waited for (acks) before the next one is written, so only the others (the pool can be larger than the
// loop's thread count) need the check.
static void *worker_main(void *arg) {
    int index = (int)(long)arg;   // worker w takes part in loops of more than w + 1 threads
    inside = 1;
    thread_index = index + 1;
    // The generation before the loop that created it (the creating caller holds caller_mutex and publishes that
    // loop only after creating its workers), so a worker that starts late still takes part in it.
    unsigned long seen = born_after;
    for (;;) {
        unsigned long g = atomic_load_explicit(&generation, memory_order_acquire);
        if (g == seen || (g & 1)) {
            long start = now_ns();
            int spins = 0;
            for (;;) {
                g = atomic_load_explicit(&generation, memory_order_acquire);
                if (g != seen && !(g & 1)) break;
                cpu_relax();
                if (++spins % 64 == 0 && now_ns() - start > CTP_SPIN_NS) {
                    pthread_mutex_lock(&sleep_mutex);
                    for (;;) {
                        g = atomic_load_explicit(&generation, memory_order_acquire);
                        if (g != seen && !(g & 1)) break;
                        pthread_cond_wait(&wake, &sleep_mutex);
                    }
                    pthread_mutex_unlock(&sleep_mutex);
                    break;
                }
            }
        }
        ctp_item_fn fn = job_fn;
        void *ctx = job_ctx;
        long n = job_n;
        int threads = job_threads;
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&generation, memory_order_relaxed) != g) continue;   // rewritten meanwhile
        seen = g;
        if (index + 1 < threads) {
            run_items(fn, ctx, n);
            atomic_fetch_add_explicit(&acks, 1, memory_order_release);
        }
    }
    return NULL;
}

int ctp_inside(void) { return inside; }
int ctp_thread_index(void) { return thread_index; }

void ctp_parallel_for(long n, int threads, ctp_item_fn fn, void *ctx) {
    if (n <= 0) return;
    if (threads > n) threads = (int)n;
    if (threads > CTP_MAX_WORKERS + 1) threads = CTP_MAX_WORKERS + 1;
    if (threads <= 1 || inside || pthread_mutex_trylock(&caller_mutex) != 0) {
        for (long i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    born_after = atomic_load_explicit(&generation, memory_order_relaxed);   // even: no loop is being written
    while (workers < threads - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&t, &attr, worker_main, (void *)(long)workers);
        pthread_attr_destroy(&attr);
        if (failed) break;   // run with the workers there are
        workers++;
    }
    if (threads > workers + 1) threads = workers + 1;
    // Every worker of the last loop has acknowledged it (the caller waited), so none still reads the job.
    atomic_fetch_add_explicit(&generation, 1, memory_order_acq_rel);   // odd: being written
    atomic_thread_fence(memory_order_release);
    job_fn = fn; job_ctx = ctx; job_n = n; job_threads = threads;
    atomic_store_explicit(&next_item, 0, memory_order_relaxed);
    atomic_store_explicit(&acks, 0, memory_order_relaxed);
    pthread_mutex_lock(&sleep_mutex);
    atomic_fetch_add_explicit(&generation, 1, memory_order_release);   // even: published
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&sleep_mutex);
    inside = 1;
    run_items(fn, ctx, n);
    while (atomic_load_explicit(&acks, memory_order_acquire) < threads - 1) cpu_relax();
    inside = 0;
    pthread_mutex_unlock(&caller_mutex);
}
