/*
 * Host-scope images under allocation failure (SQLite's malloc tests): the
 * library's allocator fails its k-th allocation, for every k of a cold
 * acquire (build, publish), a warm acquire (another allocator opening the
 * image), release and sweep.  Each run must return 0 or MS_ENOMEM at every
 * step, free every library allocation, leave no entry stuck (the same
 * scenario succeeds once failures stop) and, after a sweep, nothing in the
 * namespace.
 */
#include "internal/image.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <dirent.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_long n_allocs, fail_at = -1, live;

static int should_fail(void) {
  long k = atomic_fetch_add(&n_allocs, 1);
  return k == atomic_load(&fail_at);
}
static void *m_(size_t n) {
  void *p = should_fail() ? NULL : malloc(n);
  if (p != NULL)
    atomic_fetch_add(&live, 1);
  return p;
}
static void *c_(size_t c, size_t n) {
  void *p = should_fail() ? NULL : calloc(c, n);
  if (p != NULL)
    atomic_fetch_add(&live, 1);
  return p;
}
static void *r_(void *p, size_t n) {
  if (should_fail())
    return NULL;
  void *q = realloc(p, n);
  if (p == NULL && q != NULL)
    atomic_fetch_add(&live, 1);
  return q;
}
static void f_(void *p) {
  if (p != NULL)
    atomic_fetch_sub(&live, 1);
  free(p);
}

static char ns_dir[128], src[192];

static int build(ms_image_builder_t *b, const char *path, const char *cfg,
                 void *user) {
  (void)path, (void)cfg, (void)user;
  for (int t = 0; t < 3; t++) {
    char name[16];
    int64_t shape[1] = {1000};
    int32_t *d = NULL;
    snprintf(name, sizeof(name), "t%d", t);
    int rc =
        ms_image_builder_add(b, name, MS_DTYPE_INT32, shape, 1, (void **)&d);
    if (rc != 0)
      return rc;
    for (int i = 0; i < 1000; i++)
      d[i] = t * 1000 + i;
  }
  return 0;
}

static ms_shm_t *shm_new(const char *prefix) {
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.dir = ns_dir;
  o.prefix = prefix;
  ms_shm_t *shm = NULL;
  int rc = ms_shm_create(&o, &shm);
  assert_true(rc == 0 || rc == MS_ENOMEM);
  return shm;
}

static int ok_or_nomem(int rc) { return rc == 0 || rc == MS_ENOMEM; }

/* One run of the scenario; 0 if every step succeeded. */
static int scenario(const char *version) {
  ms_image_options_t o = MS_IMAGE_OPTIONS_INIT;
  o.transform_id = "allocfail";
  o.transform_version = version;
  o.build = build;
  o.timeout_ms = 0; /* nobody else builds: never wait */
  int failed = 0;
  ms_shm_t *a = shm_new("fa-"), *b = shm_new("fb-");
  ms_key_t *key = NULL;
  int rc = ms_key_create(src, "{}", &key);
  assert_true(ok_or_nomem(rc));
  failed |= rc != 0 || a == NULL || b == NULL;
  ms_image_t *i1 = NULL, *i2 = NULL;
  if (!failed) {
    rc = ms_image_acquire(a, key, &o, &i1);
    if (!ok_or_nomem(rc))
      fail_msg("cold acquire: %s: %s", ms_err_name(rc), ms_shm_errmsg(a));
    failed |= rc != 0;
  }
  if (!failed) {
    rc = ms_image_acquire(b, key, &o, &i2);
    if (!ok_or_nomem(rc))
      fail_msg("warm acquire: %s: %s", ms_err_name(rc), ms_shm_errmsg(b));
    failed |= rc != 0;
  }
  if (i2 != NULL) {
    ms_tensor_t *t = NULL;
    assert_int_equal(ms_image_tensor(i2, "t2", &t), 0);
    assert_int_equal(((const int32_t *)ms_tensor_data(t))[7], 2007);
  }
  ms_image_release(i2);
  ms_image_release(i1);
  if (a != NULL) {
    rc = ms_image_sweep(a, NULL);
    assert_true(ok_or_nomem(rc));
  }
  ms_key_destroy(key);
  assert_int_equal(ms_shm_destroy(a), 0);
  assert_int_equal(ms_shm_destroy(b), 0);
  return failed;
}

static size_t ns_count(void) {
  DIR *d = opendir(ns_dir);
  size_t n = 0;
  struct dirent *e;
  while (d != NULL && (e = readdir(d)) != NULL)
    n += e->d_name[0] != '.';
  if (d != NULL)
    closedir(d);
  return n;
}

static void test_every_failure(void **state) {
  (void)state;
  atomic_store(&fail_at, -1);
  atomic_store(&n_allocs, 0);
  assert_int_equal(scenario("count"), 0);
  long k_total = atomic_load(&n_allocs);
  assert_true(k_total > 0);
  for (long k = 0; k < k_total; k++) {
    char v[32];
    snprintf(v, sizeof(v), "k%ld", k);
    atomic_store(&n_allocs, 0);
    atomic_store(&fail_at, k);
    (void)scenario(v);
    atomic_store(&fail_at, -1);
    if (atomic_load(&live) != 0)
      fail_msg("failing allocation %ld of %ld: %ld allocations left", k,
               k_total, atomic_load(&live));
    /* Nothing stuck: the same key works now. */
    assert_int_equal(scenario(v), 0);
    if (ns_count() != 0)
      fail_msg("failing allocation %ld: %zu objects left", k, ns_count());
  }
  printf("image allocation failures: %ld points, each clean\n", k_total);
}

int main(void) {
  snprintf(ns_dir, sizeof(ns_dir), "/dev/shm/msimg-af-XXXXXX");
  char sdir[64] = "/tmp/msimg-af-XXXXXX";
  if (mkdtemp(ns_dir) == NULL || mkdtemp(sdir) == NULL)
    return 1;
  snprintf(src, sizeof(src), "%s/w.bin", sdir);
  FILE *f = fopen(src, "w");
  if (f == NULL)
    return 1;
  fputs("weights\n", f);
  fclose(f);
  if (ms_replace_allocator(m_, r_, c_, f_) != 0)
    return 1;
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_every_failure)};
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  unlink(src);
  rmdir(sdir);
  rmdir(ns_dir);
  return rc;
}
