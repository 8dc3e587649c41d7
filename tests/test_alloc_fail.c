/*
 * Every allocation failure, one at a time (SQLite's malloc tests).
 *
 * The library's allocator (ms_replace_allocator), cJSON's hooks and
 * libuv's allocator are all routed through one counting allocator that can
 * fail the k-th allocation, or every allocation from the k-th on.  For each
 * scenario: run it once to count its allocations K, then K times failing
 * allocation k, then K times failing k and everything after.  Each run must
 * return 0 or MS_ENOMEM, must leave nothing behind (no live library or
 * cJSON allocation, no object in the scenario's namespace directory, a
 * registry that destroys cleanly: no entry stuck loading), and the same
 * scenario must succeed once failures stop.  Leaks of anything else are
 * LeakSanitizer's under the ASan build.
 */
#define _GNU_SOURCE
#include "test_util.h"

#include <cjson/cJSON.h>

#include <dirent.h>
#include <dlpack/dlpack.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* The failing allocator                                                     */
/* ------------------------------------------------------------------------ */

static atomic_long n_allocs;  /* allocations asked for since the reset */
static atomic_long fail_at;   /* index to fail; -1: none */
static atomic_int fail_after; /* also fail every index after fail_at */
static atomic_long live_ms, live_cjson; /* outstanding, per allocator */
static atomic_int uv_paused; /* libuv calls that abort() on failure */

static int should_fail(void) {
  long k = atomic_fetch_add(&n_allocs, 1);
  long f = atomic_load(&fail_at);
  return f >= 0 && (k == f || (atomic_load(&fail_after) && k > f));
}

static void *ms_m(size_t n) {
  void *p = should_fail() ? NULL : malloc(n);
  if (p != NULL)
    atomic_fetch_add(&live_ms, 1);
  return p;
}
static void *ms_c(size_t c, size_t n) {
  void *p = should_fail() ? NULL : calloc(c, n);
  if (p != NULL)
    atomic_fetch_add(&live_ms, 1);
  return p;
}
static void *ms_r(void *p, size_t n) {
  return should_fail() ? NULL : realloc(p, n);
}
static void ms_f(void *p) {
  if (p != NULL)
    atomic_fetch_sub(&live_ms, 1);
  free(p);
}
static void *cj_m(size_t n) {
  void *p = should_fail() ? NULL : malloc(n);
  if (p != NULL)
    atomic_fetch_add(&live_cjson, 1);
  return p;
}
static void cj_f(void *p) {
  if (p != NULL)
    atomic_fetch_sub(&live_cjson, 1);
  free(p);
}
/* libuv: counted and failed, not balanced (its thread pool lives on).
 * uv_loop_init() abort()s when an allocation fails (libuv's choice, not
 * ours): the test's own loop set-up is not failed. */
static int uv_should_fail(void) {
  return !atomic_load(&uv_paused) && should_fail();
}
static void *uv_m(size_t n) { return uv_should_fail() ? NULL : malloc(n); }
static void *uv_c(size_t c, size_t n) {
  return uv_should_fail() ? NULL : calloc(c, n);
}
static void *uv_r(void *p, size_t n) {
  return uv_should_fail() ? NULL : realloc(p, n);
}

/* ------------------------------------------------------------------------ */
/* Scenarios: each creates, uses and destroys its objects, and returns 0 or */
/* the first error.  Anything but MS_ENOMEM is a failure of the test.      */
/* ------------------------------------------------------------------------ */

static char ns_dir[64]; /* the allocator scenarios' private namespace */

#define TRY(expr)                                                              \
  do {                                                                         \
    int rc_ = (expr);                                                          \
    if (rc_ != 0 && rc == 0)                                                   \
      rc = rc_;                                                                \
  } while (0)

static int sc_keys(void) {
  ms_key_t *k = NULL;
  int rc = ms_key_create(
      "/tmp", "{\"b\":[1,2.50,{\"c\":\"x\\u00e9\"}],\"a\":null}", &k);
  ms_key_destroy(k);
  return rc;
}

typedef struct reg_run {
  ms_registry_t *reg;
  ms_key_t *key;
  ms_loader_t loader;
  atomic_int rc;
} reg_run;

static void reg_thread(void *arg) {
  reg_run *r = arg;
  ms_model_t *m = NULL;
  int rc = ms_registry_acquire_key(r->reg, r->key, &r->loader, 10000, &m);
  if (rc == 0)
    ms_model_release(m);
  else {
    int zero = 0;
    (void)atomic_compare_exchange_strong(&r->rc, &zero, rc);
  }
}

static int count_model(const ms_model_info_t *info, void *user) {
  (void)info;
  ++*(int *)user;
  return 0;
}

static int sc_registry(void) {
  static tl t; /* the loader allocates with the C library: not counted */
  memset(&t, 0, sizeof(t));
  t.bytes = 1000;
  reg_run r;
  memset(&r, 0, sizeof(r));
  ms_registry_options_t o = MS_REGISTRY_OPTIONS_INIT;
  o.max_bytes = 1u << 20;
  int rc = ms_registry_create(&o, &r.reg);
  if (rc != 0)
    return rc;
  rc = ms_key_create("/tmp/alloc-fail-model", "{\"beam\":5}", &r.key);
  if (rc == 0) {
    r.loader = tl_loader(&t);
    uv_thread_t th[16];
    int started = 0;
    for (; started < 16; started++)
      if (uv_thread_create(&th[started], reg_thread, &r) != 0)
        break;
    for (int i = 0; i < started; i++)
      uv_thread_join(&th[i]);
    rc = atomic_load(&r.rc);
    ms_registry_stats_t s = MS_REGISTRY_STATS_INIT;
    TRY(ms_registry_stats(r.reg, &s));
    char *json = NULL;
    TRY(ms_registry_stats_json(r.reg, &json));
    ms_free(json);
    int n = 0;
    TRY(ms_registry_foreach(r.reg, count_model, &n));
    int ev = ms_registry_evict(r.reg, r.key);
    if (ev != MS_ENOENT)
      TRY(ev);
  }
  ms_key_destroy(r.key);
  int d = ms_registry_destroy(r.reg);
  if (d != 0) /* an entry stuck loading or a model still held */
    return d == MS_ENOMEM ? MS_EIO : d;
  if (atomic_load(&t.live) != 0)
    return MS_EIO; /* a loaded model was never unloaded */
  return rc;
}

typedef struct async_run {
  int status;
  int calls;
} async_run;

static void async_cb(int status, ms_model_t *model, void *user) {
  async_run *a = user;
  a->status = status;
  a->calls++;
  ms_model_release(model);
}

static int sc_async(void) {
  static tl t;
  memset(&t, 0, sizeof(t));
  uv_loop_t loop;
  atomic_store(&uv_paused, 1);
  int init = uv_loop_init(&loop);
  atomic_store(&uv_paused, 0);
  if (init != 0)
    return MS_EIO;
  ms_registry_t *reg = NULL;
  ms_key_t *key = NULL;
  async_run a = {0, 0};
  int rc = ms_registry_create(NULL, &reg);
  if (rc == 0)
    rc = ms_key_create("/tmp/alloc-fail-async", NULL, &key);
  if (rc == 0) {
    ms_loader_t l = tl_loader(&t);
    rc = ms_registry_acquire_async(reg, &loop, key, &l, 10000, async_cb, &a);
    if (rc == 0) {
      (void)uv_run(&loop, UV_RUN_DEFAULT);
      rc = a.calls == 1 ? a.status : MS_EIO;
    }
  }
  ms_key_destroy(key);
  int d = ms_registry_destroy(reg);
  int lc = uv_loop_close(&loop); /* a refused call left no handle */
  if (lc != 0 || (d != 0 && rc == 0))
    rc = MS_EIO;
  return rc;
}

static ms_shm_t *shm_in_ns(const char *prefix, int *rc) {
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.dir = ns_dir;
  o.prefix = prefix;
  o.pool_bytes = 1u << 20;
  ms_shm_t *s = NULL;
  *rc = ms_shm_create(&o, &s);
  return s;
}

/* The consumer side in a real child process; its allocations continue the
 * parent's count, so failure points land on both sides.  Exit 0, 2 for
 * MS_ENOMEM, 1 for anything else. */
static int child_open(const char *desc) {
  pid_t pid = fork();
  if (pid < 0)
    return MS_EIO;
  if (pid == 0) {
    int rc = 0;
    ms_shm_t *c = shm_in_ns("afc-", &rc);
    ms_tensor_t *t = NULL;
    if (rc == 0)
      rc = ms_tensor_open(c, desc, 0, &t);
    if (rc == 0 && ((unsigned char *)ms_tensor_data(t))[4095] != 0x5a)
      rc = MS_EIO;
    ms_tensor_release(t);
    if (ms_shm_destroy(c) != 0)
      rc = MS_EIO;
    _exit(rc == 0 ? 0 : rc == MS_ENOMEM ? 2 : 1);
  }
  int st = 0;
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
    return MS_EIO;
  return WEXITSTATUS(st) == 0 ? 0 : WEXITSTATUS(st) == 2 ? MS_ENOMEM : MS_EIO;
}

static int sc_shm(void) {
  int rc = 0, rc2 = 0;
  ms_shm_t *a = shm_in_ns("afa-", &rc);
  if (a == NULL)
    return rc;
  ms_shm_t *b = shm_in_ns("afb-", &rc2);
  ms_tensor_t *t = NULL, *u = NULL;
  rc = rc2;
  int64_t shape[1] = {8192};
  if (rc == 0)
    rc = ms_tensor_alloc(a, MS_DTYPE_UINT8, 1, shape, "s1", &t);
  char desc[MS_DESCRIPTOR_MAX];
  if (rc == 0) {
    memset(ms_tensor_data(t), 0x5a, 8192);
    rc = ms_tensor_descriptor(t, desc, sizeof(desc));
  }
  if (rc == 0)
    rc = ms_tensor_open(b, desc, 0, &u);
  if (rc == 0 && ((unsigned char *)ms_tensor_data(u))[100] != 0x5a)
    rc = MS_EIO;
  if (rc == 0)
    rc = child_open(desc);
  ms_tensor_release(u);
  ms_tensor_release(t);
  size_t n = 0;
  TRY(ms_shm_sweep(a, &n));
  char *json = NULL;
  TRY(ms_shm_stats_json(a, &json));
  ms_free(json);
  int d = ms_shm_destroy(b) | ms_shm_destroy(a);
  return d != 0 ? MS_EIO : rc;
}

static int sc_serialize(void) {
  int rc = 0;
  ms_shm_t *a = shm_in_ns("afs-", &rc);
  if (a == NULL)
    return rc;
  int64_t shape[2] = {3, 5};
  ms_tensor_t *t = NULL, *h = NULL, *s = NULL;
  void *buf = NULL;
  size_t len = 0;
  rc = ms_tensor_alloc(a, MS_DTYPE_FLOAT32, 2, shape, NULL, &t);
  if (rc == 0) {
    for (int i = 0; i < 15; i++)
      ((float *)ms_tensor_data(t))[i] = (float)i / 4;
    rc = ms_tensor_serialize(t, "x", "{\"k\":\"v\"}", &buf, &len);
  }
  if (rc == 0)
    rc = ms_tensor_deserialize(NULL, buf, len, &h);
  if (rc == 0)
    rc = ms_tensor_deserialize(a, buf, len, &s);
  if (rc == 0 && (memcmp(ms_tensor_data(h), ms_tensor_data(t), 60) != 0 ||
                  memcmp(ms_tensor_data(s), ms_tensor_data(t), 60) != 0))
    rc = MS_EIO;
  ms_free(buf);
  ms_tensor_release(s);
  ms_tensor_release(h);
  ms_tensor_release(t);
  return ms_shm_destroy(a) != 0 ? MS_EIO : rc;
}

static int sc_dlpack(void) {
  int rc = 0;
  ms_shm_t *a = shm_in_ns("afd-", &rc);
  if (a == NULL)
    return rc;
  int64_t shape[1] = {64};
  ms_tensor_t *t = NULL;
  DLManagedTensor *d = NULL;
  rc = ms_tensor_alloc(a, MS_DTYPE_INT32, 1, shape, NULL, &t);
  if (rc == 0)
    rc = ms_tensor_to_dlpack(t, &d);
  ms_tensor_release(t);
  if (d != NULL)
    d->deleter(d);
  return ms_shm_destroy(a) != 0 ? MS_EIO : rc;
}

/* The descriptor channel's set-up and one message of each kind. */
static int sc_channel(void) {
  int rc = 0, rc2 = 0;
  ms_shm_t *a = shm_in_ns("afp-", &rc);
  if (a == NULL)
    return rc;
  ms_shm_t *b = shm_in_ns("afq-", &rc2);
  ms_channel_t *p = NULL, *c = NULL;
  ms_tensor_t *t = NULL, *u = NULL;
  rc = rc2;
  if (rc == 0)
    rc = ms_channel_create(a, "allocfail", NULL, &p);
  if (rc == 0)
    rc = ms_channel_open(b, "allocfail", NULL, &c);
  int64_t shape[1] = {4096};
  if (rc == 0)
    rc = ms_tensor_alloc(a, MS_DTYPE_UINT8, 1, shape, NULL, &t);
  if (rc == 0) {
    memset(ms_tensor_data(t), 0x6b, 4096);
    rc = ms_channel_send_tensor(p, t, "u", 1, 1000);
  }
  ms_tensor_release(t);
  char buf[8];
  size_t n = 0;
  if (rc == 0)
    rc = ms_channel_recv_tensor(c, 0, 1000, &u, buf, sizeof(buf), &n);
  if (rc == 0 && (n != 1 || ((unsigned char *)ms_tensor_data(u))[4095] != 0x6b))
    rc = MS_EIO;
  ms_tensor_release(u);
  if (rc == 0)
    rc = ms_channel_send(p, "hi", 2, 1000);
  if (rc == 0)
    rc = ms_channel_recv(c, buf, sizeof(buf), &n, 1000);
  if (rc == 0 && (n != 2 || memcmp(buf, "hi", 2) != 0))
    rc = MS_EIO;
  ms_channel_close(c);
  ms_channel_close(p);
  int d = ms_shm_destroy(b) | ms_shm_destroy(a);
  return d != 0 ? MS_EIO : rc;
}

static int wk_infer(void *user, void *model, ms_tensor_t *const *inputs,
                    size_t n_in, ms_worker_out_t *out, ms_tensor_t **outputs,
                    size_t *n_out) {
  (void)user, (void)model, (void)inputs, (void)n_in, (void)out, (void)outputs,
      (void)n_out;
  return MS_EINVAL;
}

/* A model worker set up and torn down without listening (ms_worker_run
 * makes a libuv loop, whose set-up abort()s on allocation failure). */
static int sc_worker(void) {
  int rc = 0;
  ms_shm_t *shm = shm_in_ns("afw-", &rc);
  if (shm == NULL)
    return rc;
  ms_worker_options_t o = MS_WORKER_OPTIONS_INIT;
  o.endpoint = "/nonexistent/allocfail.sock"; /* never bound */
  ms_worker_t *w = NULL;
  rc = ms_worker_create(&o, NULL, shm, &w);
  tl t = {0};
  ms_loader_t l = tl_loader(&t);
  ms_worker_model_t m = MS_WORKER_MODEL_INIT;
  m.path = "/models/allocfail";
  m.config_json = "{\"a\":1}";
  m.loader = &l;
  m.infer = wk_infer;
  if (rc == 0)
    rc = ms_worker_add_model(w, "m", &m);
  char *json = NULL;
  if (rc == 0)
    rc = ms_worker_stats_json(w, &json);
  ms_free(json);
  int d = ms_worker_destroy(w) | ms_shm_destroy(shm);
  if (atomic_load(&t.live) != 0)
    return MS_EIO; /* the model was not unloaded */
  return d != 0 ? MS_EIO : rc;
}

/* ------------------------------------------------------------------------ */
/* The driver                                                                */
/* ------------------------------------------------------------------------ */

static int ns_empty(void) {
  DIR *d = opendir(ns_dir);
  if (d == NULL)
    return 0;
  struct dirent *e;
  int n = 0;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') {
      fprintf(stderr, "left behind: %s/%s\n", ns_dir, e->d_name);
      n++;
    }
  closedir(d);
  return n == 0;
}

/* One run with the given failure point; checks the run's promises. */
static void run_once(const char *name, int (*fn)(void), long k, int after) {
  long ms0 = atomic_load(&live_ms), cj0 = atomic_load(&live_cjson);
  atomic_store(&fail_after, after);
  atomic_store(&n_allocs, 0);
  atomic_store(&fail_at, k);
  int rc = fn();
  atomic_store(&fail_at, -1);
  if (rc != 0 && rc != MS_ENOMEM)
    fail_msg("%s: failing allocation %ld%s gave %s, not MS_ENOMEM", name, k,
             after ? " and after" : "", ms_err_name(rc));
  if (atomic_load(&live_ms) != ms0 || atomic_load(&live_cjson) != cj0)
    fail_msg("%s: failing allocation %ld%s leaked %ld library and %ld cJSON "
             "allocations",
             name, k, after ? " and after" : "", atomic_load(&live_ms) - ms0,
             atomic_load(&live_cjson) - cj0);
  if (!ns_empty())
    fail_msg("%s: failing allocation %ld left objects in %s", name, k, ns_dir);
  /* Failures stop: the same operations succeed. */
  atomic_store(&n_allocs, 0);
  rc = fn();
  if (rc != 0)
    fail_msg("%s: after failing allocation %ld, a clean run gave %s", name, k,
             ms_err_name(rc));
}

static void run_scenario(const char *name, int (*fn)(void)) {
  atomic_store(&fail_at, -1);
  atomic_store(&n_allocs, 0);
  assert_int_equal(fn(), 0);
  long k_count = atomic_load(&n_allocs);
  assert_true(k_count > 0);
  for (long k = 0; k < k_count; k++) {
    run_once(name, fn, k, 0);
    run_once(name, fn, k, 1);
  }
  printf("scenario %-10s K=%ld allocations; %ld failure runs passed\n", name,
         k_count, 2 * k_count);
  fflush(stdout);
}

static void test_keys(void **s) { (void)s, run_scenario("keys", sc_keys); }
static void test_registry(void **s) {
  (void)s, run_scenario("registry", sc_registry);
}
static void test_async(void **s) { (void)s, run_scenario("async", sc_async); }
static void test_shm(void **s) { (void)s, run_scenario("shm", sc_shm); }
static void test_serialize(void **s) {
  (void)s, run_scenario("serialize", sc_serialize);
}
static void test_channel(void **s) {
  (void)s, run_scenario("channel", sc_channel);
}
static void test_worker(void **s) {
  (void)s, run_scenario("worker", sc_worker);
}
static void test_dlpack(void **s) {
  (void)s, run_scenario("dlpack", sc_dlpack);
}

static void test_replace_allocator_contract(void **s) {
  (void)s;
  assert_int_equal(ms_replace_allocator(NULL, realloc, calloc, free),
                   MS_EINVAL);
  int rc = 0;
  ms_shm_t *shm = shm_in_ns("afx-", &rc);
  assert_int_equal(rc, 0);
  /* Live memory from the current allocator: refused, nothing changed. */
  assert_int_equal(ms_replace_allocator(malloc, realloc, calloc, free),
                   MS_EBUSY);
  long before = atomic_load(&live_ms);
  assert_int_equal(ms_shm_destroy(shm), 0);
  assert_true(atomic_load(&live_ms) < before); /* freed through ours */
  assert_int_equal(ms_replace_allocator(ms_m, ms_r, ms_c, ms_f), 0);
}

/* ------------------------------------------------------------------------ */
/* Descriptor, address-space and tmpfs exhaustion, each in a child process  */
/* ------------------------------------------------------------------------ */

/* Runs fn in a child; fails the test unless it exits 0.  The child reports
 * what went wrong on stderr. */
static void in_child(int (*fn)(void)) {
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0)
    _exit(fn());
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail_msg("child failed (status %#x)", st);
}

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);               \
      return 1;                                                                \
    }                                                                          \
  } while (0)

static int highest_fd(void) {
  int hi = 0;
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  while (d != NULL && (e = readdir(d)) != NULL)
    if (atoi(e->d_name) > hi)
      hi = atoi(e->d_name);
  if (d != NULL)
    closedir(d);
  return hi;
}

static int set_nofile(rlim_t n) {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) != 0)
    return -1;
  r.rlim_cur = n;
  return setrlimit(RLIMIT_NOFILE, &r);
}

static int child_fd_exhaustion(void) {
  atomic_store(&fail_at, -1);
  int rc = 0;
  ms_shm_t *a = shm_in_ns("afe-", &rc), *b = shm_in_ns("aff-", &rc);
  CHECK(a != NULL && b != NULL);
  int64_t shape[1] = {4096};
  ms_tensor_t *t = NULL, *u = NULL;
  CHECK(ms_tensor_alloc(a, MS_DTYPE_UINT8, 1, shape, NULL, &t) == 0);
  char desc[MS_DESCRIPTOR_MAX];
  CHECK(ms_tensor_descriptor(t, desc, sizeof(desc)) == 0);
  struct rlimit saved;
  CHECK(getrlimit(RLIMIT_NOFILE, &saved) == 0);
  /* No descriptor left: every call that needs one fails cleanly. */
  CHECK(set_nofile((rlim_t)highest_fd() + 1) == 0);
  int fillers[1024], nfill = 0; /* take whatever lower numbers are free */
  while (nfill < 1024 && (fillers[nfill] = dup(0)) >= 0)
    nfill++;
  CHECK(nfill < 1024);
  ms_shm_t *c = NULL;
  c = shm_in_ns("afg-", &rc);
  CHECK(c == NULL && rc == MS_EIO);
  CHECK(ms_tensor_open(b, desc, 0, &u) == MS_EIO && u == NULL);
  int64_t big[1] = {1 << 20};
  ms_tensor_t *v = NULL;
  CHECK(ms_tensor_alloc(a, MS_DTYPE_UINT8, 1, big, NULL, &v) == MS_EIO);
  CHECK(v == NULL);
  size_t n = 99;
  CHECK(ms_shm_sweep(a, &n) == MS_EIO && n == 99);
  ms_shm_stats_t s = MS_SHM_STATS_INIT;
  CHECK(ms_shm_stats(a, &s) == 0 && s.regions_active == 1);
  /* Lifted: the same calls succeed. */
  while (nfill > 0)
    close(fillers[--nfill]);
  CHECK(setrlimit(RLIMIT_NOFILE, &saved) == 0);
  c = shm_in_ns("afg-", &rc);
  CHECK(c != NULL);
  CHECK(ms_tensor_open(b, desc, 0, &u) == 0);
  CHECK(ms_tensor_alloc(a, MS_DTYPE_UINT8, 1, big, NULL, &v) == 0);
  CHECK(ms_shm_sweep(a, &n) == 0);
  ms_tensor_release(v);
  ms_tensor_release(u);
  ms_tensor_release(t);
  CHECK(ms_shm_destroy(c) == 0 && ms_shm_destroy(b) == 0 &&
        ms_shm_destroy(a) == 0);
  CHECK(ns_empty());
  return 0;
}

static int child_address_space(void) {
  atomic_store(&fail_at, -1);
  int rc = 0;
  ms_shm_t *a = shm_in_ns("afh-", &rc), *b = shm_in_ns("afi-", &rc);
  CHECK(a != NULL && b != NULL);
  int64_t shape[1] = {64 << 20};
  ms_tensor_t *t = NULL, *u = NULL;
  CHECK(ms_tensor_alloc(a, MS_DTYPE_UINT8, 1, shape, NULL, &t) == 0);
  char desc[MS_DESCRIPTOR_MAX];
  CHECK(ms_tensor_descriptor(t, desc, sizeof(desc)) == 0);
  /* Room for 16 MiB more mappings: a 64 MiB map fails. */
  struct rlimit saved, r;
  CHECK(getrlimit(RLIMIT_AS, &saved) == 0);
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long pages = 0;
  CHECK(f != NULL && fscanf(f, "%lu", &pages) == 1);
  fclose(f);
  r = saved;
  r.rlim_cur = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (16u << 20);
  CHECK(setrlimit(RLIMIT_AS, &r) == 0);
  CHECK(ms_tensor_open(b, desc, 0, &u) == MS_ENOMEM && u == NULL);
  ms_tensor_t *v = NULL;
  CHECK(ms_tensor_alloc(a, MS_DTYPE_UINT8, 1, shape, NULL, &v) == MS_ENOMEM);
  CHECK(setrlimit(RLIMIT_AS, &saved) == 0);
  CHECK(ms_tensor_open(b, desc, 0, &u) == 0);
  CHECK(ms_tensor_alloc(a, MS_DTYPE_UINT8, 1, shape, NULL, &v) == 0);
  ms_tensor_release(v);
  ms_tensor_release(u);
  ms_tensor_release(t);
  CHECK(ms_shm_destroy(b) == 0 && ms_shm_destroy(a) == 0);
  CHECK(ns_empty());
  return 0;
}

/* A 1 MiB tmpfs of our own (a private mount namespace; root, as in CI):
 * the pool refills until the store is full, then MS_ENOSPC, nothing left
 * half-made, and a release makes room again. */
static int child_full_tmpfs(void) {
  atomic_store(&fail_at, -1);
  char dir[] = "/tmp/ms-allocfail-tmpfs-XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  if (unshare(CLONE_NEWNS) != 0 ||
      mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
      mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0700") != 0) {
    fprintf(stderr, "cannot mount a private tmpfs (needs root, as CI has)\n");
    (void)rmdir(dir);
    return 1;
  }
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.dir = dir;
  o.prefix = "afj-";
  ms_shm_t *a = NULL;
  CHECK(ms_shm_create(&o, &a) == 0);
  int64_t shape[1] = {60 << 10};
  ms_tensor_t *t[64] = {0};
  int n = 0, rc = 0;
  while (n < 64 &&
         (rc = ms_tensor_alloc(a, MS_DTYPE_UINT8, 1, shape, NULL, &t[n])) == 0)
    memset(ms_tensor_data(t[n++]), 1, 60 << 10);
  CHECK(rc == MS_ENOSPC && n > 4 && n < 64 && t[n] == NULL);
  /* Exactly the held regions and our token are there: no half-made one. */
  DIR *d = opendir(dir);
  struct dirent *e;
  int files = 0;
  while (d != NULL && (e = readdir(d)) != NULL)
    files += e->d_name[0] != '.';
  if (d != NULL)
    closedir(d);
  CHECK(files == n + 1);
  ms_tensor_release(t[--n]);
  CHECK(ms_tensor_alloc(a, MS_DTYPE_UINT8, 1, shape, NULL, &t[n]) == 0);
  for (int i = 0; i <= n; i++)
    ms_tensor_release(t[i]);
  CHECK(ms_shm_destroy(a) == 0);
  CHECK(umount(dir) == 0 && rmdir(dir) == 0);
  return 0;
}

static void test_fd_exhaustion(void **s) {
  (void)s, in_child(child_fd_exhaustion);
}
static void test_address_space(void **s) {
  (void)s, in_child(child_address_space);
}
static void test_full_tmpfs(void **s) { (void)s, in_child(child_full_tmpfs); }

int main(void) {
  /* Before anything else touches libuv, cJSON or the library. */
  if (uv_replace_allocator(uv_m, uv_r, uv_c, free) != 0 ||
      ms_replace_allocator(ms_m, ms_r, ms_c, ms_f) != 0)
    return 1;
  cJSON_Hooks hooks = {cj_m, cj_f};
  cJSON_InitHooks(&hooks);
  atomic_store(&fail_at, -1);
  (void)snprintf(ns_dir, sizeof(ns_dir), "/dev/shm/ms-allocfail-XXXXXX");
  if (mkdtemp(ns_dir) == NULL)
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_replace_allocator_contract),
      cmocka_unit_test(test_keys),
      cmocka_unit_test(test_registry),
      cmocka_unit_test(test_async),
      cmocka_unit_test(test_shm),
      cmocka_unit_test(test_serialize),
      cmocka_unit_test(test_dlpack),
      cmocka_unit_test(test_channel),
      cmocka_unit_test(test_worker),
      cmocka_unit_test(test_fd_exhaustion),
      cmocka_unit_test(test_address_space),
      cmocka_unit_test(test_full_tmpfs),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  (void)rmdir(ns_dir);
  return failed;
}
