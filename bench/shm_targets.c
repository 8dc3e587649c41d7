/*
 * ms-shm-targets: measures the shared-memory targets with two real
 * processes, against heap baselines taken in the same run.
 *
 *   - open latency of a descriptor in another process (first open and
 *     cached reopen), median, at 1 MiB .. 1 GiB;
 *   - a consumer reading a tensor in place vs reading its own heap;
 *   - the allocate + write + hand-off + read + release cycle, pooled and
 *     fresh, vs the heap floor (memcpy + read of the same bytes).
 *
 * Usage: ms-shm-targets [--reps N] [--sizes MiB,MiB,...]
 * (the consumer role is the same binary, run as: ms-shm-targets --consumer)
 */
#include <modelshare.h>
#include <uv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MIB (1024.0 * 1024.0)
#define GIB (1024.0 * MIB)

/* Reads every byte (8 at a time) so that the compiler cannot skip it. */
static uint64_t read_all(const void *p, size_t n) {
  const uint64_t *w = p;
  uint64_t a = 0, b = 0, c = 0, d = 0;
  size_t i = 0, words = n / 8;
  for (; i + 4 <= words; i += 4) {
    a += w[i];
    b ^= w[i + 1];
    c += w[i + 2];
    d ^= w[i + 3];
  }
  for (; i < words; i++)
    a += w[i];
  return a + b + c + d;
}

static int cmp_u64(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
  return a < b ? -1 : a > b;
}

static uint64_t median(uint64_t *v, int n) {
  qsort(v, (size_t)n, sizeof(*v), cmp_u64);
  return v[n / 2];
}

static void die(const char *what, int rc) {
  fprintf(stderr, "ms-shm-targets: %s: %s\n", what, ms_strerror(rc));
  exit(1);
}

/* ------------------------------------------------------------------------ */
/* Consumer process: one request per line on stdin, one reply per line.      */
/*   open DESC   -> "<open ns> <read ns> <checksum>"  (opens, reads, keeps   */
/*                  the mapping cached after release)                        */
/*   heap BYTES  -> "<read ns>"  (reads a pre-faulted heap buffer)           */
/* ------------------------------------------------------------------------ */

static int consumer(void) {
  ms_shm_t *shm = NULL;
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.open_cache = 256;
  int rc = ms_shm_create(&o, &shm);
  if (rc != 0)
    die("consumer: ms_shm_create", rc);
  char line[256];
  void *heap = NULL;
  size_t heap_n = 0;
  while (fgets(line, sizeof(line), stdin) != NULL) {
    line[strcspn(line, "\n")] = '\0';
    if (strncmp(line, "open ", 5) == 0) {
      ms_tensor_t *t = NULL;
      uint64_t t0 = uv_hrtime();
      rc = ms_tensor_open(shm, line + 5, 0, &t);
      uint64_t t1 = uv_hrtime();
      if (rc != 0)
        die("consumer: ms_tensor_open", rc);
      uint64_t sum = read_all(ms_tensor_data(t), ms_tensor_nbytes(t));
      uint64_t t2 = uv_hrtime();
      ms_tensor_release(t);
      printf("%llu %llu %llu\n", (unsigned long long)(t1 - t0),
             (unsigned long long)(t2 - t1), (unsigned long long)sum);
    } else if (strncmp(line, "heap ", 5) == 0) {
      size_t n = strtoull(line + 5, NULL, 10);
      if (n != heap_n) {
        free(heap);
        heap = malloc(n);
        memset(heap, 1, n); /* pre-fault */
        heap_n = n;
      }
      uint64_t t0 = uv_hrtime();
      uint64_t sum = read_all(heap, n);
      uint64_t t1 = uv_hrtime();
      printf("%llu %llu\n", (unsigned long long)(t1 - t0),
             (unsigned long long)sum);
    }
    fflush(stdout);
  }
  free(heap);
  return ms_shm_destroy(shm) == 0 ? 0 : 1;
}

/* ------------------------------------------------------------------------ */
/* Producer side                                                             */
/* ------------------------------------------------------------------------ */

typedef struct peer {
  pid_t pid;
  FILE *in, *out;
} peer;

static peer spawn_consumer(const char *self) {
  int to[2], from[2];
  if (pipe(to) != 0 || pipe(from) != 0)
    exit(1);
  peer p;
  p.pid = fork();
  if (p.pid == 0) {
    dup2(to[0], 0);
    dup2(from[1], 1);
    close(to[0]), close(to[1]), close(from[0]), close(from[1]);
    execl(self, self, "--consumer", (char *)NULL);
    _exit(127);
  }
  close(to[0]);
  close(from[1]);
  p.in = fdopen(to[1], "w");
  p.out = fdopen(from[0], "r");
  return p;
}

static void ask(peer *p, const char *cmd, const char *arg, uint64_t *a,
                uint64_t *b) {
  fprintf(p->in, "%s %s\n", cmd, arg);
  fflush(p->in);
  unsigned long long x = 0, y = 0, z = 0;
  char line[128];
  if (fgets(line, sizeof(line), p->out) == NULL ||
      sscanf(line, "%llu %llu %llu", &x, &y, &z) < 2) {
    fprintf(stderr, "ms-shm-targets: consumer died\n");
    exit(1);
  }
  *a = x;
  if (b != NULL)
    *b = y;
}

static ms_tensor_t *alloc_bytes(ms_shm_t *shm, size_t n) {
  int64_t shape[1] = {(int64_t)n};
  ms_tensor_t *t = NULL;
  int rc = ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &t);
  if (rc != 0)
    die("ms_tensor_alloc", rc);
  return t;
}

static const char *pass(int ok) { return ok ? "PASS" : "MISS"; }

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--consumer") == 0)
    return consumer();
  int reps = 9;
  size_t sizes[16] = {1, 10, 100};
  int nsizes = 3;
  size_t open_sizes[] = {1, 16, 256, 1024};
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      reps = atoi(argv[++i]);
    } else if (strcmp(argv[i], "--sizes") == 0 && i + 1 < argc) {
      nsizes = 0;
      for (char *s = strtok(argv[++i], ","); s && nsizes < 16;
           s = strtok(NULL, ","))
        sizes[nsizes++] = strtoull(s, NULL, 10);
    } else {
      fprintf(stderr, "usage: %s [--reps N] [--sizes MiB,...]\n", argv[0]);
      return 2;
    }
  }
  if (reps < 5 || reps > 1000)
    reps = 9;

  ms_shm_options_t po = MS_SHM_OPTIONS_INIT;
  po.pool_bytes = 4ull << 30;
  ms_shm_t *pooled = NULL, *fresh = NULL;
  int rc = ms_shm_create(&po, &pooled);
  ms_shm_options_t fo = MS_SHM_OPTIONS_INIT;
  fo.pool_bytes = 0;
  if (rc == 0)
    rc = ms_shm_create(&fo, &fresh);
  if (rc != 0)
    die("ms_shm_create", rc);
  peer c = spawn_consumer(argv[0]);
  uint64_t *v = calloc((size_t)reps, sizeof(uint64_t));
  uint64_t *w = calloc((size_t)reps, sizeof(uint64_t));
  char desc[MS_DESCRIPTOR_MAX];
  int all_ok = 1;

  /* 1. Open latency in another process. */
  printf("open latency in another process (median of %d)\n", reps);
  printf("  %8s  %12s  %12s\n", "size", "first open", "cached reopen");
  for (size_t s = 0; s < sizeof(open_sizes) / sizeof(open_sizes[0]); s++) {
    size_t n = open_sizes[s] << 20;
    for (int r = 0; r < reps; r++) {
      ms_tensor_t *t = alloc_bytes(fresh, n);
      if (ms_tensor_descriptor(t, desc, sizeof(desc)) != 0)
        exit(1);
      uint64_t read_ns;
      ask(&c, "open", desc, &v[r], &read_ns);
      ask(&c, "open", desc, &w[r], &read_ns);
      ms_tensor_release(t);
    }
    uint64_t first = median(v, reps), again = median(w, reps);
    int ok = first <= 10000 && again <= 1000;
    all_ok &= ok;
    printf("  %5zu MiB  %9.2f us  %9.2f us  %s (<= 10 us, <= 1 us)\n",
           open_sizes[s], first / 1e3, again / 1e3, pass(ok));
  }

  /* 2. Reading in place vs the consumer's own heap; 3. the full cycle. */
  printf("\nreading in place and the full cycle (median of %d)\n", reps);
  printf("  %8s  %10s  %10s  %6s  %10s  %10s  %6s  %10s  %6s  %10s  %6s\n",
         "size", "heap read", "shm read", "ratio", "floor", "pooled w1",
         "ratio", "pooled w4", "ratio", "fresh w1", "ratio");
  for (int s = 0; s < nsizes; s++) {
    size_t n = sizes[s] << 20;
    char arg[32];
    (void)snprintf(arg, sizeof(arg), "%zu", n);
    unsigned char *src = malloc(n), *dst = malloc(n);
    memset(src, 7, n);
    memset(dst, 0, n);

    /* Consumer: heap read vs cached in-place read of the same size. */
    ms_tensor_t *t = alloc_bytes(pooled, n);
    memcpy(ms_tensor_data(t), src, n);
    if (ms_tensor_descriptor(t, desc, sizeof(desc)) != 0)
      exit(1);
    uint64_t dummy;
    ask(&c, "open", desc, &dummy, &dummy); /* map + fault once */
    for (int r = 0; r < reps; r++) {
      ask(&c, "heap", arg, &v[r], NULL);
      ask(&c, "open", desc, &dummy, &w[r]);
    }
    double heap_read = n / GIB / (median(v, reps) / 1e9);
    double shm_read = n / GIB / (median(w, reps) / 1e9);
    ms_tensor_release(t);

    /* Floor: memcpy into a heap buffer, then read it. */
    for (int r = 0; r < reps; r++) {
      uint64_t t0 = uv_hrtime();
      memcpy(dst, src, n);
      volatile uint64_t sum = read_all(dst, n);
      (void)sum;
      v[r] = uv_hrtime() - t0;
    }
    double floor_gibs = n / GIB / (median(v, reps) / 1e9);

    /* Cycle: allocate, write, hand the descriptor over, the consumer opens
     * and reads it all, releases, replies; the producer releases.  With a
     * window of 1 every frame waits for the previous round trip; with a
     * window of 4, frames stream as in a pipeline (both processes busy). */
    double cycle[3]; /* pooled w1, pooled w4, fresh w1 */
    ms_shm_t *alloc_from[3] = {pooled, pooled, fresh};
    const int window[3] = {1, 4, 1};
    const int frames = 8;
    for (int k = 0; k < 3; k++) {
      for (int r = -1; r < reps; r++) { /* r = -1 warms the pool */
        ms_tensor_t *inflight[8] = {0};
        int sent = 0, done = 0;
        uint64_t t0 = uv_hrtime();
        while (done < frames) {
          if (sent < frames && sent - done < window[k]) {
            ms_tensor_t *u = alloc_bytes(alloc_from[k], n);
            memcpy(ms_tensor_data(u), src, n);
            if (ms_tensor_descriptor(u, desc, sizeof(desc)) != 0)
              exit(1);
            fprintf(c.in, "open %s\n", desc);
            fflush(c.in);
            inflight[sent++ % 8] = u;
            continue;
          }
          char line[128];
          if (fgets(line, sizeof(line), c.out) == NULL)
            exit(1);
          ms_tensor_release(inflight[done++ % 8]);
        }
        if (r >= 0)
          w[r] = (uv_hrtime() - t0) / frames;
      }
      cycle[k] = n / GIB / (median(w, reps) / 1e9);
    }
    int ok = shm_read >= 0.9 * heap_read && cycle[1] >= 0.9 * floor_gibs;
    all_ok &= ok;
    printf("  %5zu MiB  %7.2f G/s  %7.2f G/s  %5.0f%%  %7.2f G/s  %7.2f G/s  "
           "%5.0f%%  %7.2f G/s  %5.0f%%  %7.2f G/s  %5.0f%%  %s\n",
           sizes[s], heap_read, shm_read, 100 * shm_read / heap_read,
           floor_gibs, cycle[0], 100 * cycle[0] / floor_gibs, cycle[1],
           100 * cycle[1] / floor_gibs, cycle[2], 100 * cycle[2] / floor_gibs,
           pass(ok));
    free(src);
    free(dst);
  }
  printf("\ntargets: read in place >= 90%% of heap read; pooled streaming "
         "cycle (w4) >= 90%% of the floor: %s\n",
         all_ok ? "all PASS" : "some MISS");

  fclose(c.in);
  fclose(c.out);
  int status;
  waitpid(c.pid, &status, 0);
  free(v);
  free(w);
  if (ms_shm_destroy(pooled) != 0 || ms_shm_destroy(fresh) != 0)
    return 1;
  return 0;
}
