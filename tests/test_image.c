/* Host-scope images (issue 15), with real processes (fork): concurrent cold
 * start, builders killed at random points, failing builds, source files
 * that change, freezing, forged entries and images, keep_ms, the registry
 * loader, and leftovers.  Randomized parts are seeded: MS_SEED=N replays,
 * and the seed is printed on failure.  MS_IMAGE_KILL_ITERS bounds the kill
 * test (default 200). */
#define _GNU_SOURCE /* memmem */
#include "internal/image.h"
#include "internal/key.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "shm_test_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Fixture: a private namespace, a source file, counters shared by children */
/* ------------------------------------------------------------------------ */

#define NT 3     /* tensors per test image */
#define CHUNKS 8 /* progress steps of a slow build */
#define MAXCHILD 16

typedef struct shared {
  _Atomic int builds;    /* build callbacks entered, all processes */
  _Atomic int progress;  /* chunks written by the current build */
  _Atomic int fail_next; /* the next build fails with this code */
  _Atomic int acquired;  /* children holding the image (barrier) */
  uint64_t sums[MAXCHILD];
} shared;

static char ns_dir[128], src_dir[128], src_path[192];
static shared *sh;
static unsigned seed;

typedef struct spec {
  unsigned seed;       /* content */
  size_t elems;        /* per tensor */
  int slow_us;         /* sleep per chunk */
  int overrun;         /* write one byte past tensor 1 */
  const char *version; /* transform version */
  uint64_t keep_ms;
  uint64_t timeout_ms;
  int hold;      /* hold until this many children acquired */
  int linger_us; /* then hold this long */
} spec;

static uint32_t value(unsigned s, int t, size_t i) {
  uint64_t x = ((uint64_t)s << 40) ^ ((uint64_t)t << 32) ^ i;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return (uint32_t)x;
}

static const char *tname(int t) {
  static const char *n[NT] = {"bias", "layer.0.weight", "layer.1.weight"};
  return n[t];
}

static int build_cb(ms_image_builder_t *b, const char *path, const char *cfg,
                    void *user) {
  (void)path, (void)cfg;
  const spec *s = user;
  atomic_fetch_add(&sh->builds, 1);
  atomic_store(&sh->progress, 0);
  int fail = atomic_exchange(&sh->fail_next, 0);
  uint32_t *data[NT];
  for (int t = 0; t < NT; t++) {
    int64_t shape[2] = {(int64_t)s->elems / 4, 4};
    int rc = ms_image_builder_add(b, tname(t), MS_DTYPE_UINT32, shape, 2,
                                  (void **)&data[t]);
    if (rc != 0)
      return rc;
  }
  size_t per = (s->elems + CHUNKS - 1) / CHUNKS;
  for (int c = 0; c < CHUNKS; c++) {
    for (int t = 0; t < NT; t++)
      for (size_t i = (size_t)c * per;
           i < s->elems && i < (size_t)(c + 1) * per; i++)
        data[t][i] = value(s->seed, t, i);
    if (s->slow_us > 0)
      usleep((useconds_t)s->slow_us);
    atomic_fetch_add(&sh->progress, 1);
  }
  if (s->overrun)
    ((unsigned char *)data[1])[s->elems * 4] = 1;
  return fail;
}

static ms_image_options_t opts_of(spec *s) {
  ms_image_options_t o = MS_IMAGE_OPTIONS_INIT;
  o.transform_id = "test-pattern";
  o.transform_version = s->version != NULL ? s->version : "1";
  o.build = build_cb;
  o.user = s;
  o.keep_ms = s->keep_ms;
  o.timeout_ms = s->timeout_ms != 0 ? s->timeout_ms : 20000;
  return o;
}

/* Allocators of mixed configurations (prefix, pool, open cache): what an
 * image does never depends on the configuration of the process asking. */
static ms_shm_t *new_shm_cfg(unsigned v) {
  static const struct {
    const char *prefix;
    uint64_t pool;
    uint32_t cache;
  } cfg[4] = {{"ti-", 256u << 20, 64},
              {"tj_", 0, 0},
              {"tk-", 1u << 20, 1},
              {"ti-", 0, 64}};
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.dir = ns_dir;
  o.prefix = cfg[v % 4].prefix;
  o.pool_bytes = cfg[v % 4].pool;
  o.open_cache = cfg[v % 4].cache;
  ms_shm_t *shm = NULL;
  return ms_shm_create(&o, &shm) == 0 ? shm : NULL;
}

static ms_shm_t *new_shm(void) { return new_shm_cfg(0); }

static ms_key_t *new_key(void) {
  ms_key_t *k = NULL;
  return ms_key_create(src_path, "{\"bits\": 8}", &k) == 0 ? k : NULL;
}

/* 0 if img holds exactly the spec's tensors and bytes; *sum their hash. */
static int image_check(const ms_image_t *img, const spec *s, uint64_t *sum) {
  if (ms_image_count(img) != NT)
    return -1;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (int t = 0; t < NT; t++) {
    ms_tensor_t *x = NULL;
    if (ms_image_tensor(img, tname(t), &x) != 0 ||
        ms_tensor_nbytes(x) != s->elems * 4 || ms_tensor_is_writable(x))
      return -2;
    const uint32_t *d = ms_tensor_data(x);
    for (size_t i = 0; i < s->elems; i++) {
      if (d[i] != value(s->seed, t, i))
        return -3;
      h = (h ^ d[i]) * 0x100000001b3ULL;
    }
  }
  if (sum != NULL)
    *sum = h;
  return 0;
}

/* Child body: acquire, check, record the checksum, release.  Exit status
 * 0 ok, 1 setup, 2 bad content, 100 + -rc acquire error. */
static int child_acquire(spec *s, int idx) {
  ms_shm_t *shm = new_shm_cfg(s->seed + (unsigned)idx);
  ms_key_t *key = new_key();
  if (shm == NULL || key == NULL)
    return 1;
  ms_image_options_t o = opts_of(s);
  ms_image_t *img = NULL;
  int rc = ms_image_acquire(shm, key, &o, &img);
  if (rc != 0) {
    fprintf(stderr, "child %d: %s: %s\n", idx, ms_err_name(rc),
            ms_shm_errmsg(shm));
    return 100 - rc;
  }
  uint64_t sum = 0;
  int bad = image_check(img, s, &sum);
  if (idx >= 0 && idx < MAXCHILD)
    sh->sums[idx] = sum;
  /* Workers keep their image while they run: wait for the others. */
  if (s->hold > 0)
    atomic_fetch_add(&sh->acquired, 1);
  for (int i = 0; i < 20000 && atomic_load(&sh->acquired) < s->hold; i++)
    usleep(1000);
  if (s->linger_us > 0)
    usleep((useconds_t)s->linger_us);
  ms_image_release(img);
  ms_key_destroy(key);
  ms_shm_destroy(shm);
  return bad != 0 ? 2 : 0;
}

static pid_t spawn(spec *s, int idx) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0)
    _exit(child_acquire(s, idx));
  return pid;
}

static int wait_status(pid_t pid) {
  int st = 0;
  if (waitpid(pid, &st, 0) != pid)
    return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 1000 + WTERMSIG(st);
}

static void write_source(const char *text) {
  FILE *f = fopen(src_path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static size_t ns_count(void) {
  DIR *d = opendir(ns_dir);
  size_t n = 0;
  struct dirent *e;
  while (d != NULL && (e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') {
      n++;
    }
  if (d != NULL)
    closedir(d);
  return n;
}

static void ns_print(void) {
  DIR *d = opendir(ns_dir);
  struct dirent *e;
  while (d != NULL && (e = readdir(d)) != NULL)
    if (e->d_name[0] != '.')
      fprintf(stderr, "  left: %s\n", e->d_name);
  if (d != NULL)
    closedir(d);
}

/* After everything exited: one image sweep and one allocator sweep leave
 * nothing. */
static void assert_clean(void) {
  ms_shm_t *shm = new_shm();
  assert_non_null(shm);
  assert_int_equal(ms_image_sweep(shm, NULL), 0);
  assert_int_equal(ms_shm_destroy(shm), 0);
  if (ns_count() != 0) {
    ns_print();
    fprintf(stderr, "seed %u\n", seed);
  }
  assert_int_equal(ns_count(), 0);
}

static int setup(void **state) {
  (void)state;
  snprintf(ns_dir, sizeof(ns_dir), "/dev/shm/msimg-test-XXXXXX");
  snprintf(src_dir, sizeof(src_dir), "/tmp/msimg-src-XXXXXX");
  if (mkdtemp(ns_dir) == NULL || mkdtemp(src_dir) == NULL)
    return -1;
  snprintf(src_path, sizeof(src_path), "%s/weights.bin", src_dir);
  sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (sh == MAP_FAILED)
    return -1;
  memset(sh, 0, sizeof(*sh));
  return write_text(src_path, "weights v1\n");
}

static int teardown(void **state) {
  (void)state;
  (void)remove_prefix(ns_dir, NULL);
  rmdir(ns_dir);
  unlink(src_path);
  rmdir(src_dir);
  munmap(sh, sizeof(*sh));
  return 0;
}

static void reset_counters(void) {
  atomic_store(&sh->builds, 0);
  atomic_store(&sh->progress, 0);
  atomic_store(&sh->fail_next, 0);
  atomic_store(&sh->acquired, 0);
  memset(sh->sums, 0, sizeof(sh->sums));
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */
/* ------------------------------------------------------------------------ */

static void test_cold_start_8(void **state) {
  (void)state;
  reset_counters();
  spec s = {.seed = seed,
            .elems = 1u << 16,
            .slow_us = 2000,
            .version = "cold",
            .hold = 8};
  pid_t pid[8];
  for (int i = 0; i < 8; i++)
    pid[i] = spawn(&s, i);
  for (int i = 0; i < 8; i++)
    assert_int_equal(wait_status(pid[i]), 0);
  assert_int_equal(atomic_load(&sh->builds), 1);
  for (int i = 1; i < 8; i++)
    assert_true(sh->sums[i] == sh->sums[0]);
  assert_true(sh->sums[0] != 0);
  assert_clean();
}

static void test_builder_killed(void **state) {
  (void)state;
  const char *env = getenv("MS_IMAGE_KILL_ITERS");
  int iters = env != NULL ? atoi(env) : 200;
  srand(seed);
  int takeovers = 0;
  for (int it = 0; it < iters; it++) {
    reset_counters();
    char ver[32];
    snprintf(ver, sizeof(ver), "kill%d", it);
    spec slow = {.seed = seed + (unsigned)it,
                 .elems = 4096,
                 .slow_us = 300,
                 .version = ver,
                 .linger_us = 1000};
    spec waiter = slow;
    waiter.slow_us = 0;
    waiter.linger_us = 0;
    waiter.hold = 2; /* the two waiters run side by side */
    pid_t b = spawn(&slow, 15);
    while (atomic_load(&sh->builds) == 0) {
      int st;
      if (waitpid(b, &st, WNOHANG) == b)
        fail_msg("builder exited early (seed %u, iteration %d)", seed, it);
      usleep(50);
    }
    pid_t w[2] = {spawn(&waiter, 0), spawn(&waiter, 1)};
    /* Any point: before a chunk, or up to ~2 ms after the last one
     * (sealing, publishing, reading back, releasing). */
    int target = rand() % (CHUNKS + 1);
    while (atomic_load(&sh->progress) < target && atomic_load(&sh->builds) == 1)
      usleep(20);
    usleep((useconds_t)(rand() % (target == CHUNKS ? 2000 : 300)));
    kill(b, SIGKILL);
    (void)wait_status(b);
    for (int i = 0; i < 2; i++) {
      int st = wait_status(w[i]);
      if (st != 0)
        fail_msg("waiter %d exited %d (seed %u, iteration %d, target %d)", i,
                 st, seed, it, target);
    }
    int builds = atomic_load(&sh->builds);
    if (builds < 1 || builds > 2)
      fail_msg("%d builds (seed %u, iteration %d)", builds, seed, it);
    takeovers += builds == 2;
    if (sh->sums[0] != sh->sums[1])
      fail_msg("waiters saw different bytes (seed %u, iteration %d)", seed, it);
    if (it % 50 == 49) { /* keep the namespace small */
      ms_shm_t *shm = new_shm();
      assert_non_null(shm);
      assert_int_equal(ms_image_sweep(shm, NULL), 0);
      ms_shm_destroy(shm);
    }
  }
  printf("builder killed: %d iterations, %d rebuilt by a waiter\n", iters,
         takeovers);
  assert_true(iters == 0 || takeovers > 0); /* the kills did land mid-build */
  assert_clean();
}

static void test_failed_build(void **state) {
  (void)state;
  reset_counters();
  spec s = {.seed = seed, .elems = 4096, .slow_us = 20000, .version = "fail"};
  atomic_store(&sh->fail_next, MS_EIO);
  pid_t b = spawn(&s, 0);
  while (atomic_load(&sh->builds) == 0)
    usleep(100);
  pid_t w[3] = {spawn(&s, 1), spawn(&s, 2), spawn(&s, 3)};
  assert_int_equal(wait_status(b), 100 - MS_EIO);
  for (int i = 0; i < 3; i++)
    assert_int_equal(wait_status(w[i]), 100 - MS_EIO);
  assert_int_equal(atomic_load(&sh->builds), 1);
  /* The next acquire builds again, and succeeds. */
  s.slow_us = 0;
  assert_int_equal(wait_status(spawn(&s, 4)), 0);
  assert_int_equal(atomic_load(&sh->builds), 2);
  assert_clean();
}

static void test_timeout(void **state) {
  (void)state;
  reset_counters();
  spec s = {.seed = seed, .elems = 4096, .slow_us = 50000, .version = "slow"};
  pid_t b = spawn(&s, 0);
  while (atomic_load(&sh->builds) == 0)
    usleep(100);
  ms_shm_t *shm = new_shm();
  ms_key_t *key = new_key();
  spec quick = s;
  quick.timeout_ms = 30;
  ms_image_options_t o = opts_of(&quick);
  o.timeout_ms = 30;
  ms_image_t *img = NULL;
  assert_int_equal(ms_image_acquire(shm, key, &o, &img), MS_ETIMEDOUT);
  o.timeout_ms = 0;
  assert_int_equal(ms_image_acquire(shm, key, &o, &img), MS_ETIMEDOUT);
  assert_int_equal(wait_status(b), 0);
  assert_int_equal(atomic_load(&sh->builds), 1);
  ms_key_destroy(key);
  ms_shm_destroy(shm);
  assert_clean();
}

static void test_source_changed(void **state) {
  (void)state;
  reset_counters();
  write_source("weights v1\n");
  ms_shm_t *shm = new_shm();
  ms_key_t *key = new_key();
  spec s1 = {.seed = seed, .elems = 4096, .version = "src"};
  ms_image_options_t o = opts_of(&s1);
  ms_image_t *a = NULL, *b = NULL;
  assert_int_equal(ms_image_acquire(shm, key, &o, &a), 0);
  assert_int_equal(ms_image_built_here(a), 1);
  size_t with_a = ns_count();
  /* Same key, same file: found, not built. */
  assert_int_equal(wait_status(spawn(&s1, 0)), 0);
  assert_int_equal(atomic_load(&sh->builds), 1);

  /* Edit the file (new size and mtime): a new image. */
  write_source("weights v2, longer\n");
  spec s2 = s1;
  s2.seed = seed + 1;
  o = opts_of(&s2);
  assert_int_equal(ms_image_acquire(shm, key, &o, &b), 0);
  assert_int_equal(ms_image_built_here(b), 1);
  assert_int_equal(atomic_load(&sh->builds), 2);
  assert_int_equal(image_check(a, &s1, NULL), 0); /* the old one is intact */
  assert_int_equal(image_check(b, &s2, NULL), 0);
  /* The old image goes with its holder: its regions are unlinked at once
   * (its entry stays until a sweep). */
  size_t both = ns_count();
  assert_true(both > with_a);
  ms_image_release(a);
  assert_int_equal(ns_count(), both - NT);
  ms_image_release(b);
  ms_key_destroy(key);
  ms_shm_destroy(shm);
  assert_clean();
}

/* A consumer writing into an image dies of SIGSEGV; the bytes stay. */
static void test_frozen(void **state) {
  (void)state;
  reset_counters();
  write_source("weights v1\n");
  spec s = {.seed = seed, .elems = 4096, .version = "frozen"};
  ms_shm_t *shm = new_shm();
  ms_key_t *key = new_key();
  ms_image_options_t o = opts_of(&s);
  ms_image_t *img = NULL;
  assert_int_equal(ms_image_acquire(shm, key, &o, &img), 0);
  for (int who = 0; who < 2; who++) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
      signal(SIGSEGV, SIG_DFL); /* not cmocka's handler: die of it */
      ms_tensor_t *t = NULL;
      if (who == 0) { /* the builder's own handle, inherited */
        ms_image_tensor(img, tname(1), &t);
        ((volatile uint32_t *)ms_tensor_data(t))[7] = 0;
        _exit(0);
      }
      ms_shm_t *s2 = new_shm(); /* a consumer of its own */
      ms_key_t *k2 = new_key();
      ms_image_t *i2 = NULL;
      if (s2 == NULL || k2 == NULL || ms_image_acquire(s2, k2, &o, &i2) != 0)
        _exit(3);
      ms_image_tensor(i2, tname(1), &t);
      ((volatile uint32_t *)ms_tensor_data(t))[7] = 0;
      _exit(0);
    }
    assert_int_equal(wait_status(pid), 1000 + SIGSEGV);
  }
  assert_int_equal(image_check(img, &s, NULL), 0);
  assert_int_equal(atomic_load(&sh->builds), 1);
  /* Frozen for the library too: no writable open of its descriptors. */
  ms_tensor_t *t = NULL, *w = NULL;
  char desc[MS_DESCRIPTOR_MAX];
  assert_int_equal(ms_image_tensor(img, tname(0), &t), 0);
  assert_int_equal(ms_tensor_descriptor(t, desc, sizeof(desc)), 0);
  ms_shm_t *other = new_shm();
  assert_int_equal(ms_tensor_open(other, desc, MS_OPEN_WRITE, &w), MS_EACCES);
  assert_int_equal(ms_tensor_open(other, desc, 0, &w), 0);
  assert_int_equal(ms_tensor_is_writable(w), 0);
  ms_tensor_release(w);
  ms_shm_destroy(other);
  ms_image_release(img);
  ms_key_destroy(key);
  ms_shm_destroy(shm);
  assert_clean();
}

static void test_overrun(void **state) {
  (void)state;
  reset_counters();
  spec s = {.seed = seed, .elems = 4096, .overrun = 1, .version = "over"};
  ms_shm_t *shm = new_shm();
  ms_key_t *key = new_key();
  ms_image_options_t o = opts_of(&s);
  ms_image_t *img = NULL;
  assert_int_equal(ms_image_acquire(shm, key, &o, &img), MS_EBADREGION);
  assert_non_null(strstr(ms_shm_errmsg(shm), "outside"));
  s.overrun = 0; /* the next acquire builds again */
  assert_int_equal(ms_image_acquire(shm, key, &o, &img), 0);
  ms_image_release(img);
  ms_key_destroy(key);
  ms_shm_destroy(shm);
  assert_clean();
}

static void test_bad_args(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm();
  ms_key_t *key = new_key();
  spec s = {.seed = seed, .elems = 64, .version = "args"};
  ms_image_options_t o = opts_of(&s);
  ms_image_t *img = NULL;
  assert_int_equal(ms_image_acquire(NULL, key, &o, &img), MS_EINVAL);
  assert_int_equal(ms_image_acquire(shm, NULL, &o, &img), MS_EINVAL);
  assert_int_equal(ms_image_acquire(shm, key, NULL, &img), MS_EINVAL);
  assert_int_equal(ms_image_acquire(shm, key, &o, NULL), MS_EINVAL);
  /* A caller built against a later header (a longer struct) works. */
  struct {
    ms_image_options_t o;
    uint64_t later_field;
  } newer = {o, 12345};
  newer.o.struct_size = sizeof(newer);
  assert_int_equal(ms_image_acquire(shm, key, &newer.o, &img), 0);
  ms_image_release(img);
  ms_image_options_t bad = o;
  bad.struct_size = 8;
  assert_int_equal(ms_image_acquire(shm, key, &bad, &img), MS_EINVAL);
  bad = o;
  bad.transform_id = "";
  assert_int_equal(ms_image_acquire(shm, key, &bad, &img), MS_EINVAL);
  bad.transform_id = "has/slash";
  assert_int_equal(ms_image_acquire(shm, key, &bad, &img), MS_EINVAL);
  bad = o;
  bad.transform_version = "sp ace";
  assert_int_equal(ms_image_acquire(shm, key, &bad, &img), MS_EINVAL);
  bad = o;
  bad.build = NULL;
  assert_int_equal(ms_image_acquire(shm, key, &bad, &img), MS_EINVAL);
  ms_key_t *missing = NULL;
  assert_int_equal(ms_key_create("/nonexistent/weights.bin", NULL, &missing),
                   0);
  assert_int_equal(ms_image_acquire(shm, missing, &o, &img), MS_ENOENT);
  ms_key_destroy(missing);
  assert_int_equal(
      ms_image_builder_add(NULL, "x", MS_DTYPE_INT8, NULL, 0, (void **)&img),
      MS_EINVAL);
  assert_int_equal(ms_image_tensor(NULL, "x", NULL), MS_EINVAL);
  assert_int_equal(ms_image_count(NULL), 0);
  ms_image_release(NULL);
  assert_int_equal(ms_image_sweep(NULL, NULL), MS_EINVAL);
  ms_key_destroy(key);
  ms_shm_destroy(shm);
  assert_clean();
}

/* Build callbacks that break the builder's rules. */
static int build_dup(ms_image_builder_t *b, const char *p, const char *c,
                     void *u) {
  (void)p, (void)c, (void)u;
  int64_t shape[1] = {4};
  void *d;
  int rc = ms_image_builder_add(b, "x", MS_DTYPE_INT8, shape, 1, &d);
  if (rc == 0)
    rc = ms_image_builder_add(b, "x", MS_DTYPE_INT8, shape, 1, &d);
  return rc;
}
static int build_none(ms_image_builder_t *b, const char *p, const char *c,
                      void *u) {
  (void)b, (void)p, (void)c, (void)u;
  return 0;
}
static int build_badshape(ms_image_builder_t *b, const char *p, const char *c,
                          void *u) {
  (void)p, (void)c, (void)u;
  int64_t shape[1] = {-1};
  void *d;
  int rc = ms_image_builder_add(b, "x", MS_DTYPE_INT8, shape, 1, &d);
  if (rc != MS_EINVAL)
    return MS_EIO;
  rc = ms_image_builder_add(b, "", MS_DTYPE_INT8, shape, 0, &d);
  return rc == MS_EINVAL ? MS_ECANCELED : MS_EIO;
}

/* A build that asks for its own image (MS_EDEADLK), then for another
 * key's (a nested build). */
static int build_nested(ms_image_builder_t *b, const char *p, const char *c,
                        void *u) {
  (void)p, (void)c;
  ms_shm_t *shm = u;
  ms_key_t *key = new_key();
  ms_image_options_t o = MS_IMAGE_OPTIONS_INIT;
  o.transform_id = "rules";
  o.transform_version = "nested";
  o.build = build_nested;
  o.user = shm;
  ms_image_t *img = NULL;
  int rc = ms_image_acquire(shm, key, &o, &img);
  if (rc == MS_EDEADLK) { /* our own key: refused; another: built */
    spec s = {.seed = 7, .elems = 64, .version = "inner"};
    ms_image_options_t inner = opts_of(&s);
    rc = ms_image_acquire(shm, key, &inner, &img);
    if (rc == 0)
      rc = image_check(img, &s, NULL) == 0 ? 0 : MS_EIO;
    ms_image_release(img);
  } else {
    rc = MS_EIO;
  }
  ms_key_destroy(key);
  int64_t shape[1] = {4};
  void *d;
  return rc != 0 ? rc
                 : ms_image_builder_add(b, "x", MS_DTYPE_INT8, shape, 1, &d);
}

static void test_builder_rules(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm();
  ms_key_t *key = new_key();
  ms_image_options_t o = MS_IMAGE_OPTIONS_INIT;
  o.transform_id = "rules";
  ms_image_t *img = NULL;
  o.build = build_dup;
  assert_int_equal(ms_image_acquire(shm, key, &o, &img), MS_EINVAL);
  o.build = build_none;
  assert_int_equal(ms_image_acquire(shm, key, &o, &img), MS_EINVAL);
  o.build = build_badshape;
  assert_int_equal(ms_image_acquire(shm, key, &o, &img), MS_ECANCELED);
  o.build = build_nested;
  o.transform_version = "nested";
  o.user = shm;
  assert_int_equal(ms_image_acquire(shm, key, &o, &img), 0);
  ms_image_release(img);
  ms_key_destroy(key);
  ms_shm_destroy(shm);
  assert_clean();
}

/* ------------------------------------------------------------------------ */
/* Forged entries and images                                                 */
/* ------------------------------------------------------------------------ */

static void index_path(const char *version, char *out, size_t len) {
  ms_key_t *key = new_key();
  struct stat st;
  assert_int_equal(stat(src_path, &st), 0);
  ms__img_key k = {ms_key_path(key),
                   ms_key_config(key),
                   "test-pattern",
                   version,
                   (uint64_t)st.st_dev,
                   (uint64_t)st.st_ino,
                   (uint64_t)st.st_size,
                   (uint64_t)st.st_mtim.tv_sec * 1000000000u +
                       (uint64_t)st.st_mtim.tv_nsec};
  char hex[33], idx[64], lock[64], prefix[MS__PREFIX_MAX + 1];
  ms__img_hash(&k, hex);
  ms__img_names(hex, idx, lock, prefix);
  snprintf(out, len, "%s/%s", ns_dir, idx);
  ms_key_destroy(key);
}

static void put_file(const char *path, const void *buf, size_t n) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, buf, n), (ssize_t)n);
  close(fd);
}

static void *get_file(const char *path, size_t *n) {
  int fd = open(path, O_RDONLY);
  assert_true(fd >= 0);
  struct stat st;
  fstat(fd, &st);
  void *buf = malloc((size_t)st.st_size);
  assert_int_equal(read(fd, buf, (size_t)st.st_size), st.st_size);
  close(fd);
  *n = (size_t)st.st_size;
  return buf;
}

static int acquire_rc(spec *s) {
  ms_shm_t *shm = new_shm();
  ms_key_t *key = new_key();
  ms_image_options_t o = opts_of(s);
  ms_image_t *img = NULL;
  int rc = ms_image_acquire(shm, key, &o, &img);
  if (rc == 0 && image_check(img, s, NULL) != 0)
    rc = 1;
  ms_image_release(img);
  ms_key_destroy(key);
  ms_shm_destroy(shm);
  return rc;
}

static void test_forged(void **state) {
  (void)state;
  reset_counters();
  write_source("weights v1\n");
  spec s = {.seed = seed, .elems = 4096, .version = "forge"};
  char idx[512];
  index_path("forge", idx, sizeof(idx));
  /* A real image, held here while its entry is forged. */
  ms_shm_t *shm = new_shm();
  ms_key_t *key = new_key();
  ms_image_options_t o = opts_of(&s);
  ms_image_t *held = NULL;
  assert_int_equal(ms_image_acquire(shm, key, &o, &held), 0);
  size_t n = 0;
  unsigned char *good = get_file(idx, &n);
  srand(seed);
  unsigned char *buf = malloc(n);

  /* Garbage of every size from a header up: MS_EBADREGION, no crash. */
  for (int i = 0; i < 200; i++) {
    size_t len = sizeof(ms__img_idx) + (size_t)rand() % n;
    unsigned char *g = malloc(len);
    for (size_t j = 0; j < len; j++)
      g[j] = (unsigned char)rand();
    put_file(idx, g, len);
    free(g);
    int rc = acquire_rc(&s);
    if (rc != MS_EBADREGION)
      fail_msg("garbage %d: %d (seed %u)", i, rc, seed);
  }
  /* An object too short to be an entry is a creation cut short: nobody
   * builds it, so it is discarded and the image built again. */
  put_file(idx, good, 100);
  assert_int_equal(acquire_rc(&s), 0);
  /* The real entry with one byte changed: refused, or an image of the
   * image's own regions (a byte nothing depends on, such as last_used; a
   * generation that makes the image look gone, which rebuilds it; or a
   * renamed tensor: the owner of the entry could as well rewrite the
   * data), never a crash or a region outside the image. */
  for (int i = 0; i < 300; i++) {
    memcpy(buf, good, n);
    size_t at = (size_t)rand() % n;
    buf[at] ^= (unsigned char)(1 + rand() % 255);
    put_file(idx, buf, n);
    int rc = acquire_rc(&s);
    if (rc != 0 && rc != MS_EBADREGION && rc != 1)
      fail_msg("flip at %zu: %d (seed %u)", at, rc, seed);
  }
  /* An entry for another key under this key's name. */
  memcpy(buf, good, n);
  buf[sizeof(ms__img_idx)] ^= 1; /* the path's first byte */
  put_file(idx, buf, n);
  assert_int_equal(acquire_rc(&s), MS_EBADREGION);
  /* Group-writable: refused before it is read. */
  put_file(idx, good, n);
  chmod(idx, 0620);
  assert_int_equal(acquire_rc(&s), MS_EACCES);
  chmod(idx, 0600);
  /* A descriptor naming a region that is not the image's. */
  memcpy(buf, good, n);
  unsigned char *d = memmem(buf, n, "ms1:mi", 6);
  assert_non_null(d);
  d[4] = 'x';
  put_file(idx, buf, n);
  assert_int_equal(acquire_rc(&s), MS_EBADREGION);
  /* A forged image tensor: the region header of a real tensor rewritten. */
  put_file(idx, good, n);
  assert_int_equal(acquire_rc(&s), 0);
  d = memmem(good, n, "ms1:mi", 6);
  char rname[128] = {0};
  memcpy(rname, d + 4, 65);
  char rpath[512];
  snprintf(rpath, sizeof(rpath), "%s/%s", ns_dir, rname);
  int fd = open(rpath, O_RDWR);
  assert_true(fd >= 0);
  int64_t huge = INT64_MAX / 2; /* shape[0]: no longer fits the data */
  assert_int_equal(pwrite(fd, &huge, 8, 72), 8);
  close(fd);
  assert_int_equal(acquire_rc(&s), MS_EBADREGION);
  free(buf);
  free(good);
  ms_image_release(held);
  ms_key_destroy(key);
  ms_shm_destroy(shm);
  assert_clean();
}

/* ------------------------------------------------------------------------ */
/* keep_ms, registry, threads                                                */
/* ------------------------------------------------------------------------ */

static void test_keep(void **state) {
  (void)state;
  reset_counters();
  write_source("weights v1\n");
  spec s = {.seed = seed, .elems = 4096, .version = "keep", .keep_ms = 300};
  assert_int_equal(wait_status(spawn(&s, 0)), 0); /* built, released, gone */
  assert_int_equal(atomic_load(&sh->builds), 1);
  assert_int_equal(wait_status(spawn(&s, 1)), 0); /* a restart finds it */
  assert_int_equal(atomic_load(&sh->builds), 1);
  ms_shm_t *shm = new_shm();
  size_t n = 99;
  assert_int_equal(ms_image_sweep(shm, &n), 0);
  assert_int_equal(n, 0); /* kept */
  assert_int_equal(wait_status(spawn(&s, 2)), 0);
  assert_int_equal(atomic_load(&sh->builds), 1);
  usleep(400 * 1000);
  assert_int_equal(ms_image_sweep(shm, &n), 0);
  assert_true(n >= NT + 2); /* the tensors, the entry and the lock */
  ms_shm_destroy(shm);
  assert_int_equal(ns_count(), 0);
  /* Without keep_ms an unheld image goes with its last holder. */
  spec s0 = s;
  s0.keep_ms = 0;
  s0.version = "nokeep";
  assert_int_equal(wait_status(spawn(&s0, 0)), 0);
  assert_int_equal(wait_status(spawn(&s0, 1)), 0);
  assert_int_equal(atomic_load(&sh->builds), 3);
  assert_clean();
}

static void test_registry_loader(void **state) {
  (void)state;
  reset_counters();
  write_source("weights v1\n");
  spec s = {.seed = seed, .elems = 4096, .version = "reg"};
  ms_image_options_t o = opts_of(&s);
  ms_shm_t *shm = new_shm();
  ms_image_source_t src = MS_IMAGE_SOURCE_INIT;
  src.shm = shm;
  src.options = &o;
  ms_loader_t ld;
  assert_int_equal(ms_image_loader(&src, &ld), 0);
  ms_image_source_t bad = src;
  bad.struct_size = 4;
  assert_int_equal(ms_image_loader(&bad, &ld), MS_EINVAL);
  ms_registry_t *reg = NULL;
  assert_int_equal(ms_registry_create(NULL, &reg), 0);
  ms_model_t *m1 = NULL, *m2 = NULL;
  assert_int_equal(ms_registry_acquire(reg, src_path, "{\"bits\":8}", &ld,
                                       MS_WAIT_FOREVER, &m1),
                   0);
  assert_int_equal(ms_registry_acquire(reg, src_path, "{ \"bits\" : 8 }", &ld,
                                       MS_WAIT_FOREVER, &m2),
                   0);
  assert_ptr_equal(ms_model_get(m1), ms_model_get(m2));
  assert_int_equal(image_check(ms_model_get(m1), &s, NULL), 0);
  assert_int_equal(ms_model_bytes(m1), NT * 4096 * 4);
  /* Another process, with its own registry: the same host image. */
  assert_int_equal(wait_status(spawn(&s, 0)), 0);
  assert_int_equal(atomic_load(&sh->builds), 1);
  ms_model_release(m1);
  ms_model_release(m2);
  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(ms_shm_destroy(shm), 0);
  assert_clean();
}

typedef struct thr_arg {
  ms_shm_t *shm;
  spec *s;
  int rc;
} thr_arg;

static void thr_main(void *p) {
  thr_arg *a = p;
  ms_key_t *key = new_key();
  ms_image_options_t o = opts_of(a->s);
  ms_image_t *img = NULL;
  a->rc = ms_image_acquire(a->shm, key, &o, &img);
  if (a->rc == 0 && image_check(img, a->s, NULL) != 0)
    a->rc = 1;
  ms_image_release(img);
  ms_key_destroy(key);
}

/* A build sweeps its key's prefix (E1) in an allocator that has cached
 * mappings of other processes' regions, some of them no longer LIVE: the
 * allocator's table and open cache stay whole (the sweep of another
 * prefix once ran on a copy of the allocator, and its cache prune freed
 * mappings the real one still listed: a use after free at the next
 * lookup, stats or destroy). */
static void test_build_beside_cached_mappings(void **state) {
  (void)state;
  reset_counters();
  write_source("weights v1\n");
  ms_shm_t *a = new_shm_cfg(0); /* an open cache of 64 */
  ms_shm_t *b = new_shm_cfg(1); /* unpooled: released regions go DEAD */
  assert_non_null(a);
  assert_non_null(b);
  enum { N = 3 };
  ms_tensor_t *t[N], *u = NULL;
  char desc[N][MS_DESCRIPTOR_MAX];
  for (int i = 0; i < N; i++) {
    int64_t shape[1] = {4096};
    assert_int_equal(ms_tensor_alloc(b, MS_DTYPE_UINT8, 1, shape, NULL, &t[i]),
                     0);
    assert_int_equal(ms_tensor_descriptor(t[i], desc[i], sizeof(desc[i])), 0);
    assert_int_equal(ms_tensor_open(a, desc[i], 0, &u), 0);
    ms_tensor_release(u); /* cached in a */
  }
  for (int i = 0; i < N; i++)
    ms_tensor_release(t[i]); /* unlinked: a's cache must drop them */
  spec s = {.seed = seed, .elems = 4096, .version = "cached"};
  ms_key_t *key = new_key();
  ms_image_options_t o = opts_of(&s);
  ms_image_t *img = NULL;
  assert_int_equal(ms_image_acquire(a, key, &o, &img), 0);
  assert_true(ms_image_built_here(img));
  assert_int_equal(image_check(img, &s, NULL), 0);
  ms_shm_stats_t st = MS_SHM_STATS_INIT;
  assert_int_equal(ms_shm_stats(a, &st), 0);
  assert_int_equal(ms_tensor_open(a, desc[0], 0, &u), MS_ENOENT);
  ms_image_release(img);
  ms_key_destroy(key);
  assert_int_equal(ms_shm_destroy(a), 0);
  assert_int_equal(ms_shm_destroy(b), 0);
  assert_clean();
}

/* An allocator on the memfd backend builds an image of named regions (a
 * memfd could not outlive its builder), made like every other region:
 * the random part of each name is the header's identity.  Another
 * allocator, named, finds and maps the same image. */
static void test_memfd_builder(void **state) {
  (void)state;
  reset_counters();
  write_source("weights v1\n");
  ms_shm_options_t so = MS_SHM_OPTIONS_INIT;
  so.dir = ns_dir;
  so.prefix = "tm-";
  so.backend = MS_SHM_BACKEND_MEMFD;
  ms_shm_t *a = NULL;
  assert_int_equal(ms_shm_create(&so, &a), 0);
  ms_shm_t *b = new_shm();
  assert_non_null(b);
  spec s = {.seed = seed, .elems = 4096, .version = "memfd"};
  ms_key_t *key = new_key();
  ms_image_options_t o = opts_of(&s);
  ms_image_t *img = NULL, *img2 = NULL;
  assert_int_equal(ms_image_acquire(a, key, &o, &img), 0);
  assert_true(ms_image_built_here(img));
  for (int t = 0; t < NT; t++) {
    ms_tensor_t *x = NULL;
    assert_int_equal(ms_image_tensor(img, tname(t), &x), 0);
    char desc[MS_DESCRIPTOR_MAX], hex[33];
    assert_int_equal(ms_tensor_descriptor(x, desc, sizeof(desc)), 0);
    /* ms1:mi<13 hex>-<16 hex token>-<32 hex identity>:<generation> */
    assert_int_equal(strncmp(desc, "ms1:mi", 6), 0);
    const ms__hdr *h =
        (const ms__hdr *)((const char *)ms_tensor_data(x) - 4096);
    for (int i = 0; i < 16; i++)
      snprintf(hex + 2 * i, 3, "%02x", h->ident[i]);
    assert_non_null(strstr(desc, hex));
    assert_int_equal(desc[4 + 16 + 17 + 32], ':');
  }
  assert_int_equal(ms_image_acquire(b, key, &o, &img2), 0);
  assert_false(ms_image_built_here(img2));
  assert_int_equal(image_check(img2, &s, NULL), 0);
  assert_int_equal(atomic_load(&sh->builds), 1);
  ms_image_release(img2);
  ms_image_release(img);
  ms_key_destroy(key);
  assert_int_equal(ms_shm_destroy(b), 0);
  assert_int_equal(ms_shm_destroy(a), 0);
  assert_clean();
}

static void test_threads(void **state) {
  (void)state;
  reset_counters();
  write_source("weights v1\n");
  spec s = {.seed = seed, .elems = 4096, .slow_us = 1000, .version = "thr"};
  ms_shm_t *shm = new_shm();
  uv_thread_t t[4];
  thr_arg a[4];
  for (int i = 0; i < 4; i++) {
    a[i] = (thr_arg){shm, &s, -1};
    assert_int_equal(uv_thread_create(&t[i], thr_main, &a[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    uv_thread_join(&t[i]);
    assert_int_equal(a[i].rc, 0);
  }
  /* Threads that overlap the build share it; the rest find it or (after
   * its last release) build again. */
  assert_true(atomic_load(&sh->builds) >= 1);
  assert_int_equal(ms_shm_destroy(shm), 0);
  assert_clean();
}

int main(void) {
  const char *e = getenv("MS_SEED");
  seed = e != NULL ? (unsigned)strtoul(e, NULL, 10) : (unsigned)time(NULL);
  printf("test_image: seed %u (MS_SEED=%u replays)\n", seed, seed);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_args),
      cmocka_unit_test(test_builder_rules),
      cmocka_unit_test(test_cold_start_8),
      cmocka_unit_test(test_failed_build),
      cmocka_unit_test(test_timeout),
      cmocka_unit_test(test_source_changed),
      cmocka_unit_test(test_frozen),
      cmocka_unit_test(test_overrun),
      cmocka_unit_test(test_forged),
      cmocka_unit_test(test_keep),
      cmocka_unit_test(test_registry_loader),
      cmocka_unit_test(test_threads),
      cmocka_unit_test(test_build_beside_cached_mappings),
      cmocka_unit_test(test_memfd_builder),
      cmocka_unit_test(test_builder_killed),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
