/* A C face for Google Benchmark: the bench's micro-benchmark bodies are C;
 * this shim registers them, runs them with repetitions, and hands back the
 * median time per iteration. */
#ifndef MSB_GBENCH_SHIM_H
#define MSB_GBENCH_SHIM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct msb_state msb_state; /* a benchmark::State */
typedef void (*msb_body)(msb_state *st, void *arg);

/* Registers a benchmark; threads > 1 runs the body on that many threads.
 * bytes_per_iter > 0 makes Google Benchmark report a bandwidth too. */
void msb_add(const char *name, msb_body fn, void *arg, int threads,
             int64_t bytes_per_iter);
int msb_keep_running(msb_state *st);
void msb_pause(msb_state *st);
void msb_resume(msb_state *st);
int msb_thread_index(const msb_state *st);
/* Runs every registered benchmark `reps` times for at least min_time_s
 * each; a progress line per benchmark goes to stderr. */
void msb_run(int reps, double min_time_s);
/* Median real time per iteration in ns (per thread), or -1. */
double msb_median_ns(const char *name);

#ifdef __cplusplus
}
#endif

#endif
