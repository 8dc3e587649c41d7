/*
 * The weights scenario: a pre-fork server's workers each need float32
 * weights dequantized from an int8 file with per-row scales.  Measured
 * twice with the same 4 processes started at once:
 *   - shared: every worker acquires the host image (one transform, one
 *     copy, mapped read-only by all);
 *   - private: every worker dequantizes into its own heap (the baseline).
 * PSS (/proc/<pid>/smaps_rollup) is summed over the workers while each
 * holds and has read all of its weights.  next_use is the acquire of the
 * existing image by a new process (a restarted worker), 5 times.
 */
#include "bench.h"
#include "rss.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NPROC 4
#define LAYERS 4

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The source: LAYERS x (rows x cols int8, then rows float32 scales). */
typedef struct wsrc {
  char dir[64], path[96], ns[64];
  long rows, cols;
} wsrc;

static int write_source(wsrc *s) {
  FILE *f = fopen(s->path, "wb");
  if (f == NULL)
    return -1;
  uint64_t x = 88172645463325252ULL;
  size_t n = (size_t)(s->rows * s->cols);
  int8_t *q = malloc(n);
  float *sc = malloc((size_t)s->rows * sizeof(float));
  int rc = q != NULL && sc != NULL ? 0 : -1;
  for (int l = 0; l < LAYERS && rc == 0; l++) {
    for (size_t i = 0; i < n; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      q[i] = (int8_t)(x & 0xff);
    }
    for (long r = 0; r < s->rows; r++)
      sc[r] = (float)(1 + r % 997) / 65536.0f;
    if (fwrite(q, 1, n, f) != n ||
        fwrite(sc, sizeof(float), (size_t)s->rows, f) != (size_t)s->rows)
      rc = -1;
  }
  free(q);
  free(sc);
  return fclose(f) == 0 ? rc : -1;
}

/* Dequantizes layer l of the mapped source into out. */
static void dequant(const wsrc *s, const unsigned char *map, int l,
                    float *out) {
  size_t n = (size_t)(s->rows * s->cols);
  const int8_t *q = (const int8_t *)(map + (size_t)l * (n + 4 * s->rows));
  const float *sc = (const float *)(q + n);
  for (long r = 0; r < s->rows; r++)
    for (long c = 0; c < s->cols; c++)
      out[r * s->cols + c] = (float)q[r * s->cols + c] * sc[r];
}

static unsigned char *map_source(const wsrc *s, size_t *len) {
  int fd = open(s->path, O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    if (fd >= 0)
      close(fd);
    return NULL;
  }
  void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  *len = (size_t)st.st_size;
  return p == MAP_FAILED ? NULL : p;
}

typedef struct build_ctx {
  const wsrc *s;
  double transform_s;
} build_ctx;

static int build(ms_image_builder_t *b, const char *path, const char *cfg,
                 void *user) {
  (void)path, (void)cfg;
  build_ctx *c = user;
  double t0 = now_s();
  size_t len = 0;
  unsigned char *map = map_source(c->s, &len);
  if (map == NULL)
    return MS_EIO;
  int rc = 0;
  for (int l = 0; l < LAYERS && rc == 0; l++) {
    char name[32];
    snprintf(name, sizeof(name), "layers.%d.weight", l);
    int64_t shape[2] = {c->s->rows, c->s->cols};
    float *out = NULL;
    rc = ms_image_builder_add(b, name, MS_DTYPE_FLOAT32, shape, 2,
                              (void **)&out);
    if (rc == 0)
      dequant(c->s, map, l, out);
  }
  munmap(map, len);
  c->transform_s = now_s() - t0;
  return rc;
}

/* What a worker reports. */
typedef struct report {
  int rc, built;
  double transform_s, use_s;
  uint64_t sum;
} report;

static ms_image_options_t image_options(build_ctx *c) {
  ms_image_options_t o = MS_IMAGE_OPTIONS_INIT;
  o.transform_id = "bench-dequant-int8";
  o.transform_version = "1";
  o.build = build;
  o.user = c;
  o.timeout_ms = 600000;
  return o;
}

/* Worker: (shared) acquire the image or (private) dequantize into the
 * heap, read every byte, report, wait for the parent's byte, exit. */
static int worker(const wsrc *s, int shared, int in, int out) {
  char go;
  if (read(in, &go, 1) != 1) /* start together */
    return 1;
  report r = {0};
  build_ctx c = {s, 0};
  ms_shm_t *shm = NULL;
  ms_key_t *key = NULL;
  ms_image_t *img = NULL;
  float *heap = NULL;
  size_t n = (size_t)(s->rows * s->cols);
  double t0 = now_s();
  if (shared) {
    ms_shm_options_t so = MS_SHM_OPTIONS_INIT;
    so.dir = s->ns;
    r.rc = ms_shm_create(&so, &shm);
    if (r.rc == 0)
      r.rc = ms_key_create(s->path, "{}", &key);
    t0 = now_s();
    ms_image_options_t o = image_options(&c);
    if (r.rc == 0)
      r.rc = ms_image_acquire(shm, key, &o, &img);
    r.use_s = now_s() - t0;
    r.built = ms_image_built_here(img);
    for (int l = 0; r.rc == 0 && l < LAYERS; l++) {
      char name[32];
      ms_tensor_t *t = NULL;
      snprintf(name, sizeof(name), "layers.%d.weight", l);
      r.rc = ms_image_tensor(img, name, &t);
      if (r.rc == 0)
        r.sum += msb_read_all(ms_tensor_data(t), ms_tensor_nbytes(t));
    }
  } else {
    size_t len = 0;
    unsigned char *map = map_source(s, &len);
    heap = malloc(n * sizeof(float) * LAYERS);
    r.rc = map != NULL && heap != NULL ? 0 : MS_ENOMEM;
    for (int l = 0; r.rc == 0 && l < LAYERS; l++)
      dequant(s, map, l, heap + (size_t)l * n);
    if (map != NULL)
      munmap(map, len);
    r.use_s = now_s() - t0;
    r.built = 1;
    for (int l = 0; r.rc == 0 && l < LAYERS; l++)
      r.sum += msb_read_all(heap + (size_t)l * n, n * sizeof(float));
  }
  r.transform_s = shared ? c.transform_s : r.use_s;
  if (write(out, &r, sizeof(r)) != (ssize_t)sizeof(r))
    return 1;
  (void)read(in, &go, 1); /* hold until measured */
  free(heap);
  ms_image_release(img);
  ms_key_destroy(key);
  ms_shm_destroy(shm);
  return r.rc == 0 ? 0 : 1;
}

static double next_use(const wsrc *s);

/* Runs NPROC workers; fills r[], the PSS sum while they hold, and (when
 * next is not NULL) the next-use times of 5 new processes meanwhile. */
static int run_workers(const wsrc *s, int shared, report *r, size_t *pss,
                       double *next) {
  int to[NPROC][2], from[NPROC][2];
  pid_t pid[NPROC];
  int ok = 1;
  for (int i = 0; i < NPROC; i++) {
    if (pipe(to[i]) != 0 || pipe(from[i]) != 0)
      return -1;
    fflush(NULL);
    pid[i] = fork();
    if (pid[i] == 0) {
      close(to[i][1]);
      close(from[i][0]);
      _exit(worker(s, shared, to[i][0], from[i][1]));
    }
    close(to[i][0]);
    close(from[i][1]);
  }
  for (int i = 0; i < NPROC; i++)
    ok &= write(to[i][1], "g", 1) == 1;
  for (int i = 0; i < NPROC; i++)
    ok &= read(from[i][0], &r[i], sizeof(r[i])) == (ssize_t)sizeof(r[i]) &&
          r[i].rc == 0;
  *pss = 0;
  for (int i = 0; i < NPROC; i++)
    *pss += ms_example_pss_bytes_of((long)pid[i]);
  for (int i = 0; ok && next != NULL && i < 5; i++) {
    next[i] = next_use(s);
    ok &= next[i] >= 0;
  }
  for (int i = 0; i < NPROC; i++) {
    ok &= write(to[i][1], "g", 1) == 1;
    close(to[i][1]);
    close(from[i][0]);
  }
  for (int i = 0; i < NPROC; i++) {
    int st = 0;
    ok &= waitpid(pid[i], &st, 0) == pid[i] && WIFEXITED(st) &&
          WEXITSTATUS(st) == 0;
  }
  return ok ? 0 : -1;
}

/* A new process acquiring the existing image: the acquire's time. */
static double next_use(const wsrc *s) {
  int p[2];
  if (pipe(p) != 0)
    return -1;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    ms_shm_options_t so = MS_SHM_OPTIONS_INIT;
    so.dir = s->ns;
    ms_shm_t *shm = NULL;
    ms_key_t *key = NULL;
    ms_image_t *img = NULL;
    build_ctx c = {s, 0};
    ms_image_options_t o = image_options(&c);
    double t = -1;
    if (ms_shm_create(&so, &shm) == 0 &&
        ms_key_create(s->path, "{}", &key) == 0) {
      double t0 = now_s();
      if (ms_image_acquire(shm, key, &o, &img) == 0 &&
          !ms_image_built_here(img))
        t = now_s() - t0;
    }
    ms_image_release(img);
    ms_key_destroy(key);
    ms_shm_destroy(shm);
    _exit(write(p[1], &t, sizeof(t)) == (ssize_t)sizeof(t) ? 0 : 1);
  }
  close(p[1]);
  double t = -1;
  if (read(p[0], &t, sizeof(t)) != (ssize_t)sizeof(t))
    t = -1;
  close(p[0]);
  waitpid(pid, NULL, 0);
  return t;
}

int msb_weights(const msb_opts *o, cJSON *root) {
  wsrc s = {.rows = o->quick ? 1024 : 4096, .cols = o->quick ? 1024 : 4096};
  snprintf(s.dir, sizeof(s.dir), "/tmp/msb-weights-XXXXXX");
  snprintf(s.ns, sizeof(s.ns), "/dev/shm/msb-weights-XXXXXX");
  if (mkdtemp(s.dir) == NULL || mkdtemp(s.ns) == NULL)
    return -1;
  snprintf(s.path, sizeof(s.path), "%s/weights.i8", s.dir);
  const uint64_t image_bytes = (uint64_t)LAYERS * s.rows * s.cols * 4;
  msb_progress("weights: %d processes, %.0f MiB float32 image", NPROC,
               (double)image_bytes / (1 << 20));
  report sh[NPROC], pr[NPROC];
  size_t pss_shared = 0, pss_private = 0;
  double next[5] = {0};
  int rc = write_source(&s);
  if (rc == 0) /* next_use: new processes while the workers hold it */
    rc = run_workers(&s, 1, sh, &pss_shared, next);
  if (rc == 0)
    rc = run_workers(&s, 0, pr, &pss_private, NULL);
  ms_shm_options_t so = MS_SHM_OPTIONS_INIT;
  so.dir = s.ns;
  ms_shm_t *shm = NULL;
  if (ms_shm_create(&so, &shm) == 0) { /* the image's entry */
    (void)ms_image_sweep(shm, NULL);
    ms_shm_destroy(shm);
  }
  unlink(s.path);
  rmdir(s.dir);
  rmdir(s.ns);
  if (rc != 0) {
    fprintf(stderr, "weights: a worker failed\n");
    return -1;
  }
  int runs = 0;
  double transform_s = 0, first_use_s = 0;
  for (int i = 0; i < NPROC; i++) {
    runs += sh[i].built;
    if (sh[i].built)
      transform_s = sh[i].transform_s;
    if (sh[i].use_s > first_use_s)
      first_use_s = sh[i].use_s;
    if (sh[i].sum != pr[0].sum || pr[i].sum != pr[0].sum) {
      fprintf(stderr, "weights: workers saw different bytes\n");
      return -1;
    }
  }
  double next_med = msb_median(next, 5);
  double ratio = (double)pss_shared / (double)image_bytes;
  double ratio_private = (double)pss_private / (double)image_bytes;
  int ok_runs = runs == 1, ok_ratio = ratio <= 1.1,
      ok_next = next_med <= 0.01 * transform_s;
  printf("\nweights: %d processes, %.0f MiB float32 image from int8 + "
         "per-row scales\n",
         NPROC, (double)image_bytes / (1 << 20));
  printf("  %-22s %12s %28s\n", "", "measured", "target");
  printf("  %-22s %12d %28s  %s\n", "transform_runs", runs, "= 1",
         msb_pass(ok_runs));
  printf("  %-22s %12.3f %28s  %s\n", "sharing_ratio", ratio,
         "<= 1.1 (private run below)", msb_pass(ok_ratio));
  printf("  %-22s %12.6f %28s  %s\n", "next_use_s_median", next_med,
         "<= 1% of transform_s", msb_pass(ok_next));
  printf("  %-22s %12.3f\n", "transform_s", transform_s);
  printf("  %-22s %12.3f   (slowest of %d concurrent cold acquires)\n",
         "first_use_s", first_use_s, NPROC);
  printf("  %-22s %12.1f MiB\n", "pss_bytes_shared",
         (double)pss_shared / (1 << 20));
  printf("  %-22s %12.1f MiB  (ratio %.2f: each process transforms "
         "privately)\n",
         "pss_bytes_private", (double)pss_private / (1 << 20), ratio_private);
  cJSON *w = cJSON_AddObjectToObject(root, "weights");
  cJSON_AddNumberToObject(w, "processes", NPROC);
  cJSON_AddNumberToObject(w, "image_bytes", (double)image_bytes);
  cJSON_AddNumberToObject(w, "transform_s", transform_s);
  cJSON_AddNumberToObject(w, "first_use_s", first_use_s);
  cJSON_AddNumberToObject(w, "next_use_s_median", next_med);
  cJSON_AddNumberToObject(w, "transform_runs", runs);
  cJSON_AddNumberToObject(w, "pss_bytes_shared", (double)pss_shared);
  cJSON_AddNumberToObject(w, "pss_bytes_private", (double)pss_private);
  cJSON_AddNumberToObject(w, "sharing_ratio", ratio);
  return ok_runs && ok_ratio && ok_next ? MSB_ALL_PASS : MSB_MISSED;
}
