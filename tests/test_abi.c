/* The struct_size contract: every public function that takes a struct_size
 * struct accepts the frozen 1.0 size and any larger size, ignores a newer
 * caller's unknown tail, refuses a size below 1.0, and never writes an
 * output struct past min(struct_size, sizeof). */
#include "test_util.h"

#include "internal/abi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TAIL 64 /* bytes a "newer" caller appends */
#define GARBAGE 0xA5

/* A struct of the caller's idea of the size (v1 or bigger) inside a buffer
 * whose every byte starts as GARBAGE. */
typedef struct blob {
  union {
    max_align_t align;
    unsigned char b[512];
  } u;
} blob;

static void *blob_init(blob *bl, const void *init, size_t init_size,
                       size_t struct_size) {
  memset(bl, GARBAGE, sizeof(*bl));
  /* A v1 caller only has the 1.0 fields; a newer one has ours plus a tail
   * we know nothing about (left as garbage). */
  memcpy(bl->u.b, init, init_size < struct_size ? init_size : struct_size);
  memcpy(bl->u.b, &struct_size, sizeof(size_t));
  return bl->u.b;
}

/* Every byte from `from` on is still GARBAGE. */
static void assert_untouched(const blob *bl, size_t from) {
  for (size_t i = from; i < sizeof(bl->u.b); i++)
    if (bl->u.b[i] != GARBAGE)
      fail_msg("byte %zu written (struct output past its size)", i);
}

static size_t sizes_for(size_t v1, size_t cur, size_t out[3]) {
  out[0] = v1;         /* a 1.0 caller */
  out[1] = cur;        /* a caller of this release */
  out[2] = cur + TAIL; /* a newer caller */
  return 3;
}

/* ---- ms_registry_create: options in ------------------------------------ */

static void test_registry_options(void **state) {
  (void)state;
  size_t sizes[3];
  sizes_for(MS__REGISTRY_OPTIONS_V1, sizeof(ms_registry_options_t), sizes);
  for (int i = 0; i < 3; i++) {
    ms_registry_options_t o = MS_REGISTRY_OPTIONS_INIT;
    o.idle_ttl_ms = 0; /* a 1.0 field: must be honoured at every size */
    o.max_bytes = 100;
    blob bl;
    ms_registry_t *reg = NULL;
    assert_int_equal(
        ms_registry_create(blob_init(&bl, &o, sizeof(o), sizes[i]), &reg), 0);
    tl t = {.bytes = 60};
    ms_loader_t l = tl_loader(&t);
    ms_key_t *k1 = make_key("/abi/a", NULL), *k2 = make_key("/abi/b", NULL);
    ms_model_t *m = NULL;
    assert_int_equal(ms_registry_acquire_key(reg, k1, &l, 0, &m), 0);
    ms_model_release(m); /* TTL 0: unloaded now */
    assert_int_equal(atomic_load(&t.unloads), 1);
    assert_int_equal(ms_registry_acquire_key(reg, k1, &l, 0, &m), 0);
    ms_model_t *m2 = NULL; /* 60 + 60 > 100: the budget was copied too */
    assert_int_equal(ms_registry_acquire_key(reg, k2, &l, 0, &m2), MS_ENOMEM);
    ms_model_release(m);
    ms_key_destroy(k1);
    ms_key_destroy(k2);
    assert_int_equal(ms_registry_destroy(reg), 0);
  }
  /* Below 1.0: refused, nothing created. */
  ms_registry_options_t o = MS_REGISTRY_OPTIONS_INIT;
  o.struct_size = MS__REGISTRY_OPTIONS_V1 - 1;
  ms_registry_t *reg = NULL;
  assert_int_equal(ms_registry_create(&o, &reg), MS_EINVAL);
  assert_null(reg);
}

/* ---- loaders in: acquire_key, acquire, acquire_async -------------------- */

static void on_async(int status, ms_model_t *model, void *user) {
  int *st = user;
  *st = status;
  ms_model_release(model);
}

static void test_loader_sizes(void **state) {
  (void)state;
  size_t sizes[3];
  sizes_for(MS__LOADER_V1, sizeof(ms_loader_t), sizes);
  for (int i = 0; i < 3; i++) {
    ms_registry_options_t o = MS_REGISTRY_OPTIONS_INIT;
    o.idle_ttl_ms = 0;
    ms_registry_t *reg = NULL;
    assert_int_equal(ms_registry_create(&o, &reg), 0);
    tl t = {0};
    ms_loader_t l0 = tl_loader(&t);
    blob bl;
    const ms_loader_t *l = blob_init(&bl, &l0, sizeof(l0), sizes[i]);
    ms_key_t *k = make_key("/abi/loader", NULL);
    ms_model_t *m = NULL;
    assert_int_equal(ms_registry_acquire_key(reg, k, l, 0, &m), 0);
    ms_model_release(m);
    assert_int_equal(ms_registry_acquire(reg, "/abi/loader2", NULL, l, 0, &m),
                     0);
    ms_model_release(m);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    int st = 1;
    assert_int_equal(
        ms_registry_acquire_async(reg, &loop, k, l, 0, on_async, &st), 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(st, 0);
    /* load, user and unload were all copied: three loads, three unloads. */
    assert_int_equal(atomic_load(&t.loads), 3);
    assert_int_equal(atomic_load(&t.unloads), 3);
    assert_int_equal(atomic_load(&t.live), 0);
    ms_key_destroy(k);
    assert_int_equal(ms_registry_destroy(reg), 0);
  }
  ms_registry_t *reg = NULL;
  assert_int_equal(ms_registry_create(NULL, &reg), 0);
  tl t = {0};
  ms_loader_t small = tl_loader(&t);
  small.struct_size = MS__LOADER_V1 - 1;
  ms_key_t *k = make_key("/abi/small", NULL);
  ms_model_t *m = NULL;
  assert_int_equal(ms_registry_acquire_key(reg, k, &small, 0, &m), MS_EINVAL);
  assert_int_equal(atomic_load(&t.loads), 0);
  ms_key_destroy(k);
  assert_int_equal(ms_registry_destroy(reg), 0);
}

/* ---- ms_registry_stats: stats out -------------------------------------- */

static void test_registry_stats_out(void **state) {
  (void)state;
  ms_registry_t *reg = NULL;
  assert_int_equal(ms_registry_create(NULL, &reg), 0);
  tl t = {.bytes = 7};
  ms_loader_t l = tl_loader(&t);
  ms_key_t *k = make_key("/abi/stats", NULL);
  ms_model_t *m = NULL, *m2 = NULL;
  assert_int_equal(ms_registry_acquire_key(reg, k, &l, 0, &m), 0);
  assert_int_equal(ms_registry_acquire_key(reg, k, &l, 0, &m2), 0);
  size_t sizes[3];
  sizes_for(MS__REGISTRY_STATS_V1, sizeof(ms_registry_stats_t), sizes);
  for (int i = 0; i < 3; i++) {
    blob bl;
    ms_registry_stats_t init = MS_REGISTRY_STATS_INIT;
    ms_registry_stats_t *s = blob_init(&bl, &init, sizeof(init), sizes[i]);
    assert_int_equal(ms_registry_stats(reg, s), 0);
    assert_int_equal(s->struct_size, sizes[i]); /* the caller's, kept */
    assert_int_equal(s->hits, 1);
    assert_int_equal(s->misses, 1);
    assert_int_equal(s->loads, 1);
    assert_int_equal(s->bytes_resident, 7);
    assert_int_equal(s->models_held, 1);
    assert_true(s->load_ns_total > 0); /* the last 1.0 field */
    size_t n = sizes[i] < sizeof(*s) ? sizes[i] : sizeof(*s);
    assert_untouched(&bl, n);
  }
  blob bl;
  ms_registry_stats_t init = MS_REGISTRY_STATS_INIT;
  ms_registry_stats_t *s =
      blob_init(&bl, &init, sizeof(init), MS__REGISTRY_STATS_V1 - 1);
  blob before = bl;
  assert_int_equal(ms_registry_stats(reg, s), MS_EINVAL);
  assert_memory_equal(&bl, &before, sizeof(bl)); /* refused: untouched */
  ms_model_release(m);
  ms_model_release(m2);
  ms_key_destroy(k);
  assert_int_equal(ms_registry_destroy(reg), 0);
}

/* ---- ms_registry_foreach: info produced by the library ----------------- */

static int check_info(const ms_model_info_t *info, void *user) {
  int *n = user;
  assert_true(info->struct_size >= MS__MODEL_INFO_V1);
  assert_true(info->struct_size <= sizeof(*info));
  assert_string_equal(info->path, "/abi/info");
  assert_int_equal(info->bytes, 3);
  assert_true(info->load_ns > 0); /* the last 1.0 field */
  (*n)++;
  return 0;
}

static void test_model_info(void **state) {
  (void)state;
  ms_registry_t *reg = NULL;
  assert_int_equal(ms_registry_create(NULL, &reg), 0);
  tl t = {.bytes = 3};
  ms_loader_t l = tl_loader(&t);
  ms_model_t *m = NULL;
  assert_int_equal(ms_registry_acquire(reg, "/abi/info", NULL, &l, 0, &m), 0);
  int n = 0;
  assert_int_equal(ms_registry_foreach(reg, check_info, &n), 0);
  assert_int_equal(n, 1);
  ms_model_release(m);
  assert_int_equal(ms_registry_destroy(reg), 0);
}

/* ---- ms_capabilities: caps out ----------------------------------------- */

static void test_capabilities_out(void **state) {
  (void)state;
  size_t sizes[3];
  sizes_for(MS__CAPABILITIES_V1, sizeof(ms_capabilities_t), sizes);
  for (int i = 0; i < 3; i++) {
    blob bl;
    ms_capabilities_t init = MS_CAPABILITIES_INIT;
    ms_capabilities_t *c = blob_init(&bl, &init, sizeof(init), sizes[i]);
    assert_int_equal(ms_capabilities(NULL, c), 0);
    assert_int_equal(c->struct_size, sizes[i]);
    assert_int_equal(c->shm_available, 1);
    assert_int_equal(c->page_size, (uint64_t)sysconf(_SC_PAGESIZE));
    assert_true(c->max_region_bytes > 0); /* the last 1.0 field */
    size_t n = sizes[i] < sizeof(*c) ? sizes[i] : sizeof(*c);
    assert_untouched(&bl, n);
  }
  blob bl;
  ms_capabilities_t init = MS_CAPABILITIES_INIT;
  ms_capabilities_t *c =
      blob_init(&bl, &init, sizeof(init), MS__CAPABILITIES_V1 - 1);
  blob before = bl;
  assert_int_equal(ms_capabilities(NULL, c), MS_EINVAL);
  assert_memory_equal(&bl, &before, sizeof(bl));
}

/* ---- ms_shm_create (options in) and ms_shm_stats (stats out) ----------- */

static void test_shm_options_and_stats(void **state) {
  (void)state;
  size_t sizes[3];
  sizes_for(MS__SHM_OPTIONS_V1, sizeof(ms_shm_options_t), sizes);
  for (int i = 0; i < 3; i++) {
    ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
    o.prefix = "msabi_";
    o.max_bytes = 4096; /* a 1.0 field: honoured at every size */
    blob bl;
    ms_shm_t *shm = NULL;
    assert_int_equal(
        ms_shm_create(blob_init(&bl, &o, sizeof(o), sizes[i]), &shm), 0);
    int64_t big = 8192, small = 1024;
    ms_tensor_t *t = NULL;
    assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, &big, NULL, &t),
                     MS_EQUOTA);
    assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, &small, NULL, &t),
                     0);

    /* ms_shm_stats at the 1.0 size (88 bytes in 1.0) and larger. */
    size_t ss[3];
    sizes_for(88, sizeof(ms_shm_stats_t), ss);
    for (int j = 0; j < 3; j++) {
      blob sb;
      ms_shm_stats_t init = MS_SHM_STATS_INIT;
      ms_shm_stats_t *s = blob_init(&sb, &init, sizeof(init), ss[j]);
      assert_int_equal(ms_shm_stats(shm, s), 0);
      assert_int_equal(s->allocations, 1);
      assert_int_equal(s->bytes_allocated, 1024);
      size_t n = ss[j] < sizeof(*s) ? ss[j] : sizeof(*s);
      assert_untouched(&sb, n);
    }
    ms_tensor_release(t);
    assert_int_equal(ms_shm_destroy(shm), 0);
  }
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.prefix = "msabi_";
  o.struct_size = MS__SHM_OPTIONS_V1 - 1;
  ms_shm_t *shm = NULL;
  assert_int_equal(ms_shm_create(&o, &shm), MS_EINVAL);
  assert_null(shm);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_registry_options),
      cmocka_unit_test(test_loader_sizes),
      cmocka_unit_test(test_registry_stats_out),
      cmocka_unit_test(test_model_info),
      cmocka_unit_test(test_capabilities_out),
      cmocka_unit_test(test_shm_options_and_stats),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
