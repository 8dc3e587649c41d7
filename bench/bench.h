/* modelshare-bench: shared declarations of the scenario files. */
#ifndef MSB_BENCH_H
#define MSB_BENCH_H

#include <modelshare.h>

#include <cjson/cJSON.h>

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#define MSB_MAX_SIZES 8

typedef struct msb_opts {
  int quick;
  int instances;                   /* registry: model instances */
  int reps;                        /* scenario repetitions (medians) */
  size_t sizes_mib[MSB_MAX_SIZES]; /* shm sizes */
  int nsizes;
  size_t vision_mib; /* vision frame size */
  int vision_frames;
  const char *self; /* argv[0], to start consumer processes */
} msb_opts;

/* Where a target stands: "PASS" or "MISS", printed beside each figure.
 * Every MISS is counted (msb_misses), and the bench exits non-zero when any
 * target was missed. */
const char *msb_pass(int ok);
/* How many MISS verdicts msb_pass has given so far. */
int msb_misses(void);
/* Sorts v and returns its median. */
double msb_median(double *v, int n);
/* Reads every byte of p (8 at a time); the sum defeats dead-code removal. */
uint64_t msb_read_all(const void *p, size_t n);
/* Resident set size of this process. */
size_t msb_rss(void);
/* Online CPUs (bench_micro.c). */
int msb_nproc(void);
void msb_progress(const char *fmt, ...);

/* Scenarios: each prints its table to stdout and adds its JSON object, and
 * returns its pass state: MSB_ALL_PASS when every target passed,
 * MSB_MISSED when any was missed, negative when it could not run. */
#define MSB_ALL_PASS 0
#define MSB_MISSED 1
void msb_micro_register(void);
void msb_micro_done(void);
int msb_registry(const msb_opts *o, cJSON *root);
int msb_dedup(const msb_opts *o, cJSON *root);
int msb_shm(const msb_opts *o, cJSON *root);
int msb_vision(const msb_opts *o, cJSON *root);
int msb_python(const msb_opts *o, cJSON *root); /* bench_python.c */
int msb_channel(const msb_opts *o, cJSON *root);
int msb_memfd(const msb_opts *o, cJSON *root);   /* bench_memfd.c */
int msb_weights(const msb_opts *o, cJSON *root); /* bench_weights.c */
int msb_worker(const msb_opts *o, cJSON *root);  /* bench_worker.c */

/* A consumer process started as `self --consumer`, driven through its
 * stdin (in) and stdout (out) (bench_shm.c). */
typedef struct msb_peer {
  pid_t pid;
  FILE *in, *out;
} msb_peer;
/* Starts it; big_pipe: the request pipe gets the largest buffer allowed.
 * 0, or -1 if it could not be started. */
int msb_peer_start(const char *self, int big_pipe, msb_peer *p);
/* Closes its pipes and waits for it. */
void msb_peer_stop(msb_peer *p);

/* The consumer process of the shm and vision scenarios. */
int msb_consumer_main(void);
/* The peer process of the channel scenario (--channel-peer ...). */
int msb_channel_peer_main(int argc, char **argv);
/* The peer processes of the worker scenario (--worker-peer ...). */
int msb_worker_peer_main(int argc, char **argv);
/* The consumer's "chan NAME FRAMES" command (bench_channel.c): 0 or an
 * exit status. */
int msb_channel_cycle_peer(ms_shm_t *shm, const char *args);
/* The acknowledgement of the shm scenario's channel cycle: when the
 * consumer had the frame and when it had read every byte (uv_hrtime, one
 * clock for both processes), and the CPU it read it on. */
typedef struct msb_chan_ack {
  uint64_t frame, got_ns, read_ns;
  int32_t cpu;
  uint32_t reserved;
} msb_chan_ack;
/* The CPU the calling thread runs on, or -1 (bench_channel.c). */
int msb_cpu(void);
/* The shm scenario's library-free two-process cycle of n bytes
 * (bench_channel.c): seconds per frame, or -1. */
double msb_two_process_cycle(const void *src, size_t n, int frames,
                             int use_futex);

#endif
