/* Model registry semantics: single-flight loads, failures, timeouts,
 * isolation between keys, refcounts, TTL, LRU budget, destroy, deadlock
 * detection.  Worker threads only record results; cmocka asserts run on the
 * main thread. */
#include "test_util.h"

#include <cjson/cJSON.h>
#include <string.h>

#include "internal/key.h" /* ms__key_set_hash: force bucket collisions */

/* ------------------------------------------------------------------------ */
/* A thread that acquires one key and records what it got.                   */
/* ------------------------------------------------------------------------ */

typedef struct acq_job {
  ms_registry_t *reg;
  const ms_key_t *key;
  ms_loader_t loader;
  uint64_t timeout_ms;
  uv_sem_t *go; /* optional start barrier */
  int rc;
  ms_model_t *model;
  uint64_t done_ns;
  uv_thread_t thread;
} acq_job;

static void acq_thread(void *arg) {
  acq_job *j = arg;
  if (j->go != NULL)
    uv_sem_wait(j->go);
  j->rc = ms_registry_acquire_key(j->reg, j->key, &j->loader, j->timeout_ms,
                                  &j->model);
  j->done_ns = uv_hrtime();
}

static void start_job_gated(acq_job *j, ms_registry_t *reg, const ms_key_t *key,
                            ms_loader_t loader, uint64_t timeout_ms,
                            uv_sem_t *go) {
  memset(j, 0, sizeof(*j));
  j->go = go;
  j->reg = reg;
  j->key = key;
  j->loader = loader;
  j->timeout_ms = timeout_ms;
  assert_int_equal(uv_thread_create(&j->thread, acq_thread, j), 0);
}

static void start_job(acq_job *j, ms_registry_t *reg, const ms_key_t *key,
                      ms_loader_t loader, uint64_t timeout_ms) {
  start_job_gated(j, reg, key, loader, timeout_ms, NULL);
}

static ms_registry_t *new_registry(uint64_t ttl_ms, uint64_t max_bytes) {
  ms_registry_options_t o = MS_REGISTRY_OPTIONS_INIT;
  o.idle_ttl_ms = ttl_ms;
  o.max_bytes = max_bytes;
  ms_registry_t *reg = NULL;
  assert_int_equal(ms_registry_create(&o, &reg), 0);
  return reg;
}

/* ------------------------------------------------------------------------ */

static void test_64_threads_one_load(void **state) {
  (void)state;
  enum { N = 64 };
  ms_registry_t *reg = new_registry(MS_TTL_NEVER, 0);
  ms_key_t *key = make_key("/models/cold.bin", "{\"beam\":5}");
  tl t = {.delay_ms = 100, .bytes = 1000};
  uv_sem_t go;
  assert_int_equal(uv_sem_init(&go, 0), 0);
  static acq_job jobs[N];
  for (int i = 0; i < N; i++)
    start_job_gated(&jobs[i], reg, key, tl_loader(&t), MS_WAIT_FOREVER, &go);
  for (int i = 0; i < N; i++)
    uv_sem_post(&go);
  for (int i = 0; i < N; i++)
    uv_thread_join(&jobs[i].thread);

  assert_int_equal(atomic_load(&t.loads), 1);
  for (int i = 0; i < N; i++) {
    assert_int_equal(jobs[i].rc, 0);
    assert_ptr_equal(jobs[i].model, jobs[0].model);
  }
  ms_registry_stats_t s = get_stats(reg);
  assert_int_equal(s.misses, 1);
  assert_int_equal(s.hits, N - 1);
  assert_int_equal(s.loads, 1);
  assert_int_equal(s.models_held, 1);
  for (int i = 0; i < N; i++)
    ms_model_release(jobs[i].model);
  assert_int_equal(get_stats(reg).models_held, 0);
  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(atomic_load(&t.unloads), 1);
  uv_sem_destroy(&go);
  ms_key_destroy(key);
}

static void test_failure_reaches_every_waiter_then_retries(void **state) {
  (void)state;
  enum { N = 8 };
  ms_registry_t *reg = new_registry(MS_TTL_NEVER, 0);
  ms_key_t *key = make_key("/models/broken.bin", NULL);
  uv_sem_t started, gate;
  assert_int_equal(uv_sem_init(&started, 0), 0);
  assert_int_equal(uv_sem_init(&gate, 0), 0);
  tl t = {.fail_code = MS_EIO, .started = &started, .gate = &gate};

  acq_job jobs[N];
  start_job(&jobs[0], reg, key, tl_loader(&t), MS_WAIT_FOREVER);
  uv_sem_wait(&started); /* job 0 is the loader */
  for (int i = 1; i < N; i++)
    start_job(&jobs[i], reg, key, tl_loader(&t), MS_WAIT_FOREVER);
  /* Let the waiters reach the wait before the load fails. */
  while (get_stats(reg).waits < N - 1)
    uv_sleep(1);
  uv_sem_post(&gate);
  for (int i = 0; i < N; i++) {
    uv_thread_join(&jobs[i].thread);
    assert_int_equal(jobs[i].rc, MS_EIO);
    assert_null(jobs[i].model);
  }
  ms_registry_stats_t s = get_stats(reg);
  assert_int_equal(s.load_failures, 1);
  assert_int_equal(s.models_resident, 0);
  assert_int_equal(atomic_load(&t.loads), 1);

  /* Nothing cached: the next acquire runs the loader again. */
  t.fail_code = 0;
  t.gate = NULL;
  t.started = NULL;
  ms_loader_t l = tl_loader(&t);
  ms_model_t *m = NULL;
  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 0, &m), 0);
  assert_int_equal(atomic_load(&t.loads), 2);
  assert_int_equal(((tl_model *)ms_model_get(m))->serial, 2);
  ms_model_release(m);
  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(atomic_load(&t.unloads), 1);

  /* A positive loader return is reported as MS_ELOAD. */
  reg = new_registry(MS_TTL_NEVER, 0);
  t.fail_code = 7;
  l = tl_loader(&t);
  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 0, &m), MS_ELOAD);
  assert_non_null(strstr(ms_registry_errmsg(reg), "broken.bin"));
  assert_int_equal(ms_registry_destroy(reg), 0);
  uv_sem_destroy(&started);
  uv_sem_destroy(&gate);
  ms_key_destroy(key);
}

static void test_waiter_timeout_does_not_cancel_load(void **state) {
  (void)state;
  ms_registry_t *reg = new_registry(MS_TTL_NEVER, 0);
  ms_key_t *key = make_key("/models/slow.bin", NULL);
  uv_sem_t started, gate;
  assert_int_equal(uv_sem_init(&started, 0), 0);
  assert_int_equal(uv_sem_init(&gate, 0), 0);
  tl t = {.started = &started, .gate = &gate};

  acq_job loader, patient;
  start_job(&loader, reg, key, tl_loader(&t), MS_WAIT_FOREVER);
  uv_sem_wait(&started);
  start_job(&patient, reg, key, tl_loader(&t), MS_WAIT_FOREVER);

  /* This caller gives up after 30 ms; the load is still gated. */
  ms_loader_t l = tl_loader(&t);
  ms_model_t *m = NULL;
  uint64_t t0 = uv_hrtime();
  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 30, &m), MS_ETIMEDOUT);
  uint64_t waited_ms = (uv_hrtime() - t0) / 1000000u;
  assert_true(waited_ms >= 29);
  assert_null(m);
  assert_non_null(strstr(ms_registry_errmsg(reg), "timed out"));
  /* timeout 0: do not wait at all. */
  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 0, &m), MS_ETIMEDOUT);

  uv_sem_post(&gate);
  uv_thread_join(&loader.thread);
  uv_thread_join(&patient.thread);
  assert_int_equal(loader.rc, 0);
  assert_int_equal(patient.rc, 0);
  assert_ptr_equal(loader.model, patient.model);

  /* The load was cached for later callers. */
  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 0, &m), 0);
  assert_ptr_equal(m, loader.model);
  assert_int_equal(atomic_load(&t.loads), 1);
  ms_registry_stats_t s = get_stats(reg);
  assert_int_equal(s.timeouts, 2);
  assert_int_equal(s.loads, 1);
  ms_model_release(m);
  ms_model_release(loader.model);
  ms_model_release(patient.model);
  assert_int_equal(ms_registry_destroy(reg), 0);
  uv_sem_destroy(&started);
  uv_sem_destroy(&gate);
  ms_key_destroy(key);
}

static void test_slow_load_does_not_block_other_keys(void **state) {
  (void)state;
  ms_registry_t *reg = new_registry(MS_TTL_NEVER, 0);
  ms_key_t *ka = make_key("/models/a.bin", NULL);
  ms_key_t *kb = make_key("/models/b.bin", NULL);
  ms_key_t *kc = make_key("/models/c.bin", NULL);
  uv_sem_t started, gate;
  assert_int_equal(uv_sem_init(&started, 0), 0);
  assert_int_equal(uv_sem_init(&gate, 0), 0);
  tl slow = {.started = &started, .gate = &gate};
  tl fast = {0};
  ms_loader_t lf = tl_loader(&fast);

  ms_model_t *b = NULL, *b2 = NULL, *c = NULL;
  assert_int_equal(ms_registry_acquire_key(reg, kb, &lf, 0, &b), 0);

  acq_job ja;
  start_job(&ja, reg, ka, tl_loader(&slow), MS_WAIT_FOREVER);
  uv_sem_wait(&started); /* A's loader is running and held at the gate */

  /* A hit on B and a whole load of C complete while A is still loading. */
  assert_int_equal(ms_registry_acquire_key(reg, kb, &lf, 0, &b2), 0);
  assert_ptr_equal(b, b2);
  assert_int_equal(ms_registry_acquire_key(reg, kc, &lf, 0, &c), 0);
  assert_int_equal(atomic_load(&fast.loads), 2);
  /* Stats and listing do not wait for A either. */
  char *json = NULL;
  assert_int_equal(ms_registry_stats_json(reg, &json), 0);
  ms_free(json);
  assert_int_equal(ja.done_ns, 0); /* A has not returned */

  uv_sem_post(&gate);
  uv_thread_join(&ja.thread);
  assert_int_equal(ja.rc, 0);
  ms_model_release(ja.model);
  ms_model_release(b);
  ms_model_release(b2);
  ms_model_release(c);
  assert_int_equal(ms_registry_destroy(reg), 0);
  uv_sem_destroy(&started);
  uv_sem_destroy(&gate);
  ms_key_destroy(ka);
  ms_key_destroy(kb);
  ms_key_destroy(kc);
}

static void test_key_identity(void **state) {
  (void)state;
  ms_registry_t *reg = new_registry(MS_TTL_NEVER, 0);
  tl t = {0};
  ms_loader_t l = tl_loader(&t);
  ms_model_t *m1 = NULL, *m2 = NULL, *m3 = NULL, *m4 = NULL;

  assert_int_equal(ms_registry_acquire(reg, "/models/x.bin",
                                       "{\"b\":1,\"a\":{\"z\":2,\"y\":[3]}}",
                                       &l, 0, &m1),
                   0);
  assert_int_equal(ms_registry_acquire(
                       reg, "/models/x.bin",
                       " { \"a\" : { \"y\" : [ 3 ] , \"z\" : 2 } ,\n\"b\":1}",
                       &l, 0, &m2),
                   0);
  assert_ptr_equal(m1, m2);
  assert_string_equal(ms_model_config(m1),
                      "{\"a\":{\"y\":[3],\"z\":2},\"b\":1}");
  assert_int_equal(ms_registry_acquire(reg, "/models/x.bin",
                                       "{\"a\":{\"y\":[3],\"z\":2},\"b\":2}",
                                       &l, 0, &m3),
                   0);
  assert_ptr_not_equal(m1, m3);
  assert_int_equal(ms_registry_acquire(reg, "/models/y.bin",
                                       "{\"a\":{\"y\":[3],\"z\":2},\"b\":1}",
                                       &l, 0, &m4),
                   0);
  assert_ptr_not_equal(m1, m4);
  assert_int_equal(atomic_load(&t.loads), 3);

  /* Malformed config: MS_EINVAL and a message that names the problem. */
  ms_model_t *bad = NULL;
  assert_int_equal(
      ms_registry_acquire(reg, "/models/x.bin", "{\"a\":", &l, 0, &bad),
      MS_EINVAL);
  assert_null(bad);
  assert_non_null(strstr(ms_registry_errmsg(reg), "malformed config JSON"));

  ms_model_release(m1);
  ms_model_release(m2);
  ms_model_release(m3);
  ms_model_release(m4);
  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(atomic_load(&t.unloads), 3);
}

static void test_hash_collisions_stay_distinct(void **state) {
  (void)state;
  ms_registry_t *reg = new_registry(MS_TTL_NEVER, 0);
  tl t = {0};
  ms_loader_t l = tl_loader(&t);
  enum { N = 40 }; /* more than the initial bucket count: forces growth */
  ms_key_t *keys[N];
  ms_model_t *models[N];
  char path[64];
  for (int i = 0; i < N; i++) {
    (void)snprintf(path, sizeof(path), "/models/collide-%d.bin", i);
    keys[i] = make_key(path, NULL);
    ms__key_set_hash(keys[i], 42); /* every key in one bucket */
    assert_int_equal(ms_registry_acquire_key(reg, keys[i], &l, 0, &models[i]),
                     0);
  }
  for (int i = 0; i < N; i++) {
    ms_model_t *again = NULL;
    assert_int_equal(ms_registry_acquire_key(reg, keys[i], &l, 0, &again), 0);
    assert_ptr_equal(again, models[i]);
    assert_string_equal(ms_model_path(again), ms_key_path(keys[i]));
    for (int j = 0; j < i; j++)
      assert_ptr_not_equal(models[i], models[j]);
    ms_model_release(again);
  }
  assert_int_equal(atomic_load(&t.loads), N);
  /* Evicting one leaves the others of the bucket in place. */
  ms_model_release(models[7]);
  assert_int_equal(ms_registry_evict(reg, keys[7]), 0);
  for (int i = 0; i < N; i++) {
    if (i == 7)
      continue;
    ms_model_t *again = NULL;
    assert_int_equal(ms_registry_acquire_key(reg, keys[i], &l, 0, &again), 0);
    assert_ptr_equal(again, models[i]);
    ms_model_release(again);
    ms_model_release(models[i]);
  }
  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(atomic_load(&t.unloads), N);
  for (int i = 0; i < N; i++)
    ms_key_destroy(keys[i]);
}

static void test_refcount_and_explicit_evict(void **state) {
  (void)state;
  ms_registry_t *reg = new_registry(MS_TTL_NEVER, 0);
  ms_key_t *key = make_key("/models/rc.bin", NULL);
  tl t = {.bytes = 123};
  ms_loader_t l = tl_loader(&t);
  ms_model_t *a = NULL, *b = NULL;
  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 0, &a), 0);
  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 0, &b), 0);
  assert_ptr_equal(ms_model_retain(a), a);
  assert_int_equal(ms_model_bytes(a), 123);

  ms_model_release(a);
  ms_model_release(b);
  assert_int_equal(ms_registry_evict(reg, key), MS_EBUSY); /* one left */
  assert_int_equal(get_stats(reg).models_held, 1);
  ms_model_release(a);
  assert_int_equal(get_stats(reg).models_held, 0);
  assert_int_equal(atomic_load(&t.unloads), 0); /* idle, still cached */
  assert_int_equal(get_stats(reg).bytes_resident, 123);

  assert_int_equal(ms_registry_evict(reg, key), 0);
  assert_int_equal(atomic_load(&t.unloads), 1);
  assert_int_equal(ms_registry_evict(reg, key), MS_ENOENT);
  ms_registry_stats_t s = get_stats(reg);
  assert_int_equal(s.evictions, 1);
  assert_int_equal(s.bytes_resident, 0);
  assert_int_equal(s.models_resident, 0);
  assert_int_equal(s.hits, 1); /* hits survive eviction */

  /* Trim unloads every idle model and no held one. */
  ms_key_t *k2 = make_key("/models/rc2.bin", NULL);
  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 0, &a), 0);
  assert_int_equal(ms_registry_acquire_key(reg, k2, &l, 0, &b), 0);
  ms_model_release(a);
  size_t n = 99;
  assert_int_equal(ms_registry_trim(reg, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(get_stats(reg).models_resident, 1);
  ms_model_release(b);
  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(atomic_load(&t.unloads), 3);
  assert_int_equal(atomic_load(&t.live), 0);
  ms_key_destroy(key);
  ms_key_destroy(k2);
}

static void test_idle_ttl(void **state) {
  (void)state;
  ms_registry_t *reg = new_registry(80, 0);
  ms_key_t *key = make_key("/models/ttl.bin", NULL);
  ms_key_t *other = make_key("/models/other.bin", NULL);
  tl t = {0};
  ms_loader_t l = tl_loader(&t);
  ms_model_t *m = NULL;
  size_t n = 99;

  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 0, &m), 0);
  uv_sleep(120); /* held: the TTL clock does not run */
  assert_int_equal(ms_registry_expire(reg, &n), 0);
  assert_int_equal(n, 0);
  ms_model_release(m);
  /* No upper timing bounds (a loaded machine may stall this thread for any
   * time): the order of passes decides, and the clock is only read to know
   * when a pass cannot yet have expired the model. */
  uint64_t clock0 = uv_hrtime(); /* before the pass that starts the clock */
  assert_int_equal(ms_registry_expire(reg, &n), 0);
  assert_int_equal(n, 0); /* just became idle: this pass starts its clock */
  uv_sleep(40);
  assert_int_equal(ms_registry_expire(reg, &n), 0);
  if (uv_hrtime() - clock0 < 80 * 1000000u)
    assert_int_equal(n, 0); /* the TTL cannot have run out yet */
  /* Eventually a pass unloads it, never before the TTL has run out. */
  size_t expired = n;
  while (expired == 0) {
    uv_sleep(20);
    assert_int_equal(ms_registry_expire(reg, &n), 0);
    expired = n;
  }
  assert_true(uv_hrtime() - clock0 >= 80 * 1000000u);
  assert_int_equal(expired, 1);
  assert_int_equal(atomic_load(&t.unloads), 1);

  /* Being acquired again restarts the clock. */
  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 0, &m), 0);
  ms_model_release(m);
  assert_int_equal(ms_registry_expire(reg, &n), 0);
  uv_sleep(120);
  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 0, &m), 0);
  ms_model_release(m);
  assert_int_equal(ms_registry_expire(reg, &n), 0);
  assert_int_equal(n, 0);
  assert_int_equal(atomic_load(&t.unloads), 1);

  /* A miss runs a pass too, and drops expired idle models. */
  uv_sleep(120);
  assert_int_equal(ms_registry_acquire_key(reg, other, &l, 0, &m), 0);
  assert_int_equal(atomic_load(&t.unloads), 2);
  ms_model_release(m);
  assert_int_equal(ms_registry_destroy(reg), 0);
  ms_key_destroy(key);
  ms_key_destroy(other);

  /* TTL 0: unloaded at the last release, on the releasing thread. */
  reg = new_registry(0, 0);
  key = make_key("/models/ttl0.bin", NULL);
  tl t0 = {0};
  l = tl_loader(&t0);
  ms_model_t *a = NULL, *b = NULL;
  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 0, &a), 0);
  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 0, &b), 0);
  ms_model_release(a);
  assert_int_equal(atomic_load(&t0.unloads), 0);
  ms_model_release(b);
  assert_int_equal(atomic_load(&t0.unloads), 1);
  assert_int_equal(get_stats(reg).models_resident, 0);
  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(atomic_load(&t0.unloads), 1);
  ms_key_destroy(key);
}

static void use(ms_registry_t *reg, ms_key_t *key, ms_loader_t *l) {
  ms_model_t *m = NULL;
  assert_int_equal(ms_registry_acquire_key(reg, key, l, 0, &m), 0);
  uv_sleep(2); /* distinct idle timestamps */
  ms_model_release(m);
}

static int resident(ms_registry_t *reg, ms_key_t *key) {
  /* evict() would change state; look at the listing instead. */
  char *json = NULL;
  assert_int_equal(ms_registry_stats_json(reg, &json), 0);
  cJSON *root = cJSON_Parse(json);
  ms_free(json);
  assert_non_null(root);
  int found = 0;
  cJSON *m;
  cJSON_ArrayForEach(m, cJSON_GetObjectItem(root, "models")) {
    if (strcmp(cJSON_GetObjectItem(m, "path")->valuestring, ms_key_path(key)) ==
        0)
      found = 1;
  }
  cJSON_Delete(root);
  return found;
}

static void test_lru_under_budget(void **state) {
  (void)state;
  ms_registry_t *reg = new_registry(MS_TTL_NEVER, 300);
  tl t = {.bytes = 100};
  ms_loader_t l = tl_loader(&t);
  ms_key_t *a = make_key("/m/a", NULL), *b = make_key("/m/b", NULL),
           *c = make_key("/m/c", NULL), *d = make_key("/m/d", NULL),
           *e = make_key("/m/e", NULL);
  use(reg, a, &l);
  use(reg, b, &l);
  use(reg, c, &l);
  assert_int_equal(get_stats(reg).bytes_resident, 300);
  use(reg, d, &l); /* evicts a, the least recently used */
  assert_false(resident(reg, a));
  assert_true(resident(reg, b) && resident(reg, c) && resident(reg, d));
  use(reg, b, &l); /* b becomes the most recent */
  use(reg, e, &l); /* evicts c */
  assert_false(resident(reg, c));
  assert_true(resident(reg, b) && resident(reg, d) && resident(reg, e));
  ms_registry_stats_t s = get_stats(reg);
  assert_int_equal(s.bytes_resident, 300);
  assert_int_equal(s.evictions, 2);
  assert_int_equal(atomic_load(&t.unloads), 2);
  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(atomic_load(&t.unloads), 5);
  ms_key_destroy(a), ms_key_destroy(b), ms_key_destroy(c), ms_key_destroy(d),
      ms_key_destroy(e);
}

static void test_over_budget_is_enomem_and_changes_nothing(void **state) {
  (void)state;
  ms_registry_t *reg = new_registry(MS_TTL_NEVER, 300);
  ms_key_t *big = make_key("/m/big", NULL), *idle = make_key("/m/idle", NULL),
           *next = make_key("/m/next", NULL), *huge = make_key("/m/huge", NULL);
  tl t200 = {.bytes = 200}, t50 = {.bytes = 50}, t400 = {.bytes = 400};
  ms_loader_t l200 = tl_loader(&t200), l50 = tl_loader(&t50),
              l400 = tl_loader(&t400);
  ms_model_t *held = NULL, *m = NULL;
  assert_int_equal(ms_registry_acquire_key(reg, big, &l200, 0, &held), 0);
  use(reg, idle, &l50);

  /* 200 held + 200 new > 300 even without the idle 50: refused. */
  assert_int_equal(ms_registry_acquire_key(reg, next, &l200, 0, &m), MS_ENOMEM);
  assert_null(m);
  assert_non_null(strstr(ms_registry_errmsg(reg), "budget"));
  assert_int_equal(atomic_load(&t200.loads), 2);
  assert_int_equal(atomic_load(&t200.unloads), 1); /* the refused model */
  assert_true(resident(reg, idle));                /* nothing evicted */
  ms_registry_stats_t s = get_stats(reg);
  assert_int_equal(s.bytes_resident, 250);
  assert_int_equal(s.evictions, 0);
  assert_int_equal(s.load_failures, 1);

  /* Bigger than the whole budget. */
  assert_int_equal(ms_registry_acquire_key(reg, huge, &l400, 0, &m), MS_ENOMEM);
  assert_int_equal(atomic_load(&t400.unloads), 1);

  /* An absurd size cannot wrap the accounting, budget or not. */
  ms_registry_t *nobudget = new_registry(MS_TTL_NEVER, 0);
  tl tmax = {.bytes = SIZE_MAX};
  ms_loader_t lmax = tl_loader(&tmax);
  ms_model_t *ok = NULL;
  assert_int_equal(ms_registry_acquire_key(nobudget, big, &l50, 0, &ok), 0);
  assert_int_equal(ms_registry_acquire_key(nobudget, huge, &lmax, 0, &m),
                   MS_ERANGE);
  assert_non_null(strstr(ms_registry_errmsg(nobudget), "absurd size"));
  assert_int_equal(atomic_load(&tmax.unloads), 1);
  assert_int_equal(get_stats(nobudget).bytes_resident, 50);
  ms_model_release(ok);
  assert_int_equal(ms_registry_destroy(nobudget), 0);

  /* After the holder lets go, the same request fits (idle ones evicted). */
  ms_model_release(held);
  assert_int_equal(ms_registry_acquire_key(reg, next, &l200, 0, &m), 0);
  assert_true(get_stats(reg).bytes_resident <= 300);
  ms_model_release(m);
  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(atomic_load(&t200.live) + atomic_load(&t50.live) +
                       atomic_load(&t400.live),
                   0);
  ms_key_destroy(big), ms_key_destroy(idle), ms_key_destroy(next),
      ms_key_destroy(huge);
}

static void test_destroy_busy(void **state) {
  (void)state;
  ms_registry_t *reg = new_registry(MS_TTL_NEVER, 0);
  ms_key_t *k1 = make_key("/m/1", NULL), *k2 = make_key("/m/2", NULL);
  tl t = {0};
  ms_loader_t l = tl_loader(&t);
  ms_model_t *m1 = NULL, *m2 = NULL;
  assert_int_equal(ms_registry_acquire_key(reg, k1, &l, 0, &m1), 0);
  assert_int_equal(ms_registry_acquire_key(reg, k2, &l, 0, &m2), 0);
  ms_model_release(m2);
  assert_int_equal(ms_registry_destroy(reg), MS_EBUSY);
  /* Nothing changed: both still there and usable. */
  assert_int_equal(atomic_load(&t.unloads), 0);
  assert_int_equal(get_stats(reg).models_resident, 2);
  ms_model_t *again = NULL;
  assert_int_equal(ms_registry_acquire_key(reg, k2, &l, 0, &again), 0);
  assert_ptr_equal(again, m2);
  ms_model_release(again);
  ms_model_release(m1);
  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(atomic_load(&t.unloads), 2);
  assert_int_equal(ms_registry_destroy(NULL), 0);
  ms_key_destroy(k1), ms_key_destroy(k2);
}

/* A loader that acquires from the registry inside its load. */
typedef struct nested {
  ms_registry_t *reg;
  ms_key_t *self_key;
  ms_key_t *dep_key;
  tl dep;
  int self_rc;
  ms_model_t *dep_model;
} nested;

static int nested_load(void *user, const char *path, const char *config,
                       void **model, size_t *bytes) {
  nested *n = user;
  (void)path, (void)config;
  ms_loader_t self = MS_LOADER_INIT;
  self.load = nested_load;
  self.user = n;
  ms_model_t *m = NULL;
  n->self_rc =
      ms_registry_acquire_key(n->reg, n->self_key, &self, MS_WAIT_FOREVER, &m);
  ms_loader_t dl = tl_loader(&n->dep);
  int rc = ms_registry_acquire_key(n->reg, n->dep_key, &dl, MS_WAIT_FOREVER,
                                   &n->dep_model);
  *model = NULL;
  *bytes = 0;
  return rc;
}

static void test_loader_reentry(void **state) {
  (void)state;
  nested n = {0};
  n.reg = new_registry(MS_TTL_NEVER, 0);
  n.self_key = make_key("/m/outer", NULL);
  n.dep_key = make_key("/m/tokenizer", NULL);
  ms_loader_t l = MS_LOADER_INIT;
  l.load = nested_load;
  l.user = &n;
  ms_model_t *m = NULL;
  assert_int_equal(ms_registry_acquire_key(n.reg, n.self_key, &l, 1000, &m), 0);
  assert_int_equal(n.self_rc, MS_EDEADLK);
  assert_non_null(n.dep_model);
  assert_int_equal(atomic_load(&n.dep.loads), 1);
  ms_model_release(n.dep_model);
  ms_model_release(m);
  assert_int_equal(ms_registry_destroy(n.reg), 0);
  ms_key_destroy(n.self_key);
  ms_key_destroy(n.dep_key);
}

static int count_models(const ms_model_info_t *info, void *user) {
  int *n = user;
  assert_true(info->struct_size >= sizeof(*info));
  assert_non_null(info->path);
  (*n)++;
  return 0;
}

static void test_stats_json_and_foreach(void **state) {
  (void)state;
  ms_registry_t *reg = new_registry(MS_TTL_NEVER, 0);
  tl t = {.bytes = 4096, .delay_ms = 5};
  ms_loader_t l = tl_loader(&t);
  ms_model_t *a = NULL, *b = NULL, *c = NULL;
  assert_int_equal(
      ms_registry_acquire(reg, "/m/j1", "{\"q\":\"int8\"}", &l, 0, &a), 0);
  assert_int_equal(
      ms_registry_acquire(reg, "/m/j1", "{\"q\":\"int8\"}", &l, 0, &b), 0);
  assert_int_equal(ms_registry_acquire(reg, "/m/j2", NULL, &l, 0, &c), 0);
  ms_model_release(c);

  char *json = NULL;
  assert_int_equal(ms_registry_stats_json(reg, &json), 0);
  cJSON *root = cJSON_Parse(json);
  assert_non_null(root);
  assert_int_equal(cJSON_GetObjectItem(root, "hits")->valuedouble, 1);
  assert_int_equal(cJSON_GetObjectItem(root, "misses")->valuedouble, 2);
  assert_int_equal(cJSON_GetObjectItem(root, "loads")->valuedouble, 2);
  assert_int_equal(cJSON_GetObjectItem(root, "bytes_resident")->valuedouble,
                   8192);
  assert_int_equal(cJSON_GetObjectItem(root, "models_resident")->valuedouble,
                   2);
  assert_int_equal(cJSON_GetObjectItem(root, "models_held")->valuedouble, 1);
  assert_true(cJSON_GetObjectItem(root, "load_ms_total")->valuedouble >= 10);
  /* Both units of the same total, consistent with the struct. */
  double total_ns = cJSON_GetObjectItem(root, "load_ns_total")->valuedouble;
  assert_int_equal((uint64_t)total_ns, get_stats(reg).load_ns_total);
  assert_int_equal(cJSON_GetObjectItem(root, "load_ms_total")->valuedouble,
                   (double)((uint64_t)total_ns / 1000000u));
  cJSON *models = cJSON_GetObjectItem(root, "models");
  assert_int_equal(cJSON_GetArraySize(models), 2);
  int saw_j1 = 0;
  cJSON *m;
  cJSON_ArrayForEach(m, models) {
    if (strcmp(cJSON_GetObjectItem(m, "path")->valuestring, "/m/j1") == 0) {
      saw_j1 = 1;
      assert_string_equal(cJSON_GetObjectItem(m, "config")->valuestring,
                          "{\"q\":\"int8\"}");
      assert_int_equal(cJSON_GetObjectItem(m, "refcount")->valuedouble, 2);
      assert_int_equal(cJSON_GetObjectItem(m, "bytes")->valuedouble, 4096);
      assert_int_equal(cJSON_GetObjectItem(m, "hits")->valuedouble, 1);
      double load_ns = cJSON_GetObjectItem(m, "load_ns")->valuedouble;
      assert_true(load_ns >= 5e6);
      assert_int_equal(cJSON_GetObjectItem(m, "load_ms")->valuedouble,
                       (double)((uint64_t)load_ns / 1000000u));
    }
  }
  assert_true(saw_j1);
  cJSON_Delete(root);
  ms_free(json);

  int n = 0;
  assert_int_equal(ms_registry_foreach(reg, count_models, &n), 0);
  assert_int_equal(n, 2);

  /* A struct_size below the first released size is refused, untouched
   * (sizes from 1.0 up: tests/test_abi.c). */
  struct {
    ms_registry_stats_t s;
    uint64_t canary;
  } small;
  memset(&small, 0xAB, sizeof(small));
  small.s.struct_size = offsetof(ms_registry_stats_t, misses);
  assert_int_equal(ms_registry_stats(reg, &small.s), MS_EINVAL);
  assert_int_equal(small.s.hits, 0xABABABABABABABABULL);

  ms_model_release(a);
  ms_model_release(b);
  assert_int_equal(ms_registry_destroy(reg), 0);
}

static int never_called(void *user, const char *p, const char *c, void **m,
                        size_t *b) {
  (void)user, (void)p, (void)c, (void)m, (void)b;
  fail_msg("%s", "loader must not run on bad input");
  return 0;
}

static void test_bad_input(void **state) {
  (void)state;
  ms_registry_t *reg = NULL;
  ms_registry_options_t small = MS_REGISTRY_OPTIONS_INIT;
  small.struct_size = 4;
  assert_int_equal(ms_registry_create(NULL, NULL), MS_EINVAL);
  assert_int_equal(ms_registry_create(&small, &reg), MS_EINVAL);
  assert_null(reg);
  assert_int_equal(ms_registry_create(NULL, &reg), 0);

  ms_loader_t l = MS_LOADER_INIT;
  l.load = never_called;
  ms_loader_t noload = MS_LOADER_INIT;
  ms_loader_t oldsize = l;
  oldsize.struct_size = sizeof(size_t);
  ms_key_t *key = make_key("/m/bad", NULL);
  ms_model_t *m = NULL;
  assert_int_equal(ms_registry_acquire_key(NULL, key, &l, 0, &m), MS_EINVAL);
  assert_int_equal(ms_registry_acquire_key(reg, NULL, &l, 0, &m), MS_EINVAL);
  assert_int_equal(ms_registry_acquire_key(reg, key, NULL, 0, &m), MS_EINVAL);
  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 0, NULL), MS_EINVAL);
  assert_int_equal(ms_registry_acquire_key(reg, key, &noload, 0, &m),
                   MS_EINVAL);
  assert_int_equal(ms_registry_acquire_key(reg, key, &oldsize, 0, &m),
                   MS_EINVAL);
  assert_int_equal(ms_registry_acquire(reg, NULL, NULL, &l, 0, &m), MS_EINVAL);
  assert_int_equal(ms_registry_acquire(reg, "", NULL, &l, 0, &m), MS_EINVAL);
  assert_non_null(strstr(ms_registry_errmsg(reg), "empty"));
  char *longpath = malloc(MS_PATH_MAX + 2);
  memset(longpath, 'a', MS_PATH_MAX + 1);
  longpath[MS_PATH_MAX + 1] = '\0';
  assert_int_equal(ms_registry_acquire(reg, longpath, NULL, &l, 0, &m),
                   MS_EINVAL);
  free(longpath);
  assert_int_equal(ms_registry_acquire(reg, "/m/x", "[1,2", &l, 0, &m),
                   MS_EINVAL);
  assert_int_equal(ms_registry_acquire(reg, "/m/x", "{} {}", &l, 0, &m),
                   MS_EINVAL);
  assert_null(m);

  assert_int_equal(ms_registry_evict(NULL, key), MS_EINVAL);
  assert_int_equal(ms_registry_evict(reg, NULL), MS_EINVAL);
  assert_int_equal(ms_registry_trim(NULL, NULL), MS_EINVAL);
  assert_int_equal(ms_registry_expire(NULL, NULL), MS_EINVAL);
  assert_int_equal(ms_registry_stats(reg, NULL), MS_EINVAL);
  assert_int_equal(ms_registry_stats(NULL, NULL), MS_EINVAL);
  assert_int_equal(ms_registry_stats_json(reg, NULL), MS_EINVAL);
  assert_int_equal(ms_registry_foreach(reg, NULL, NULL), MS_EINVAL);
  assert_int_equal(ms_registry_timer_start(reg, NULL, 10), MS_EINVAL);
  assert_int_equal(ms_registry_timer_stop(reg), MS_ENOENT);
  assert_string_equal(ms_registry_errmsg(NULL), "");

  /* NULL handles are no-ops. */
  ms_model_release(NULL);
  assert_null(ms_model_retain(NULL));
  assert_null(ms_model_get(NULL));
  assert_int_equal(ms_model_bytes(NULL), 0);
  assert_null(ms_model_path(NULL));

  /* Nothing was created by all of the above. */
  ms_registry_stats_t s = get_stats(reg);
  assert_int_equal(s.misses + s.hits + s.models_resident, 0);
  assert_int_equal(ms_registry_destroy(reg), 0);
  ms_key_destroy(key);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_64_threads_one_load),
      cmocka_unit_test(test_failure_reaches_every_waiter_then_retries),
      cmocka_unit_test(test_waiter_timeout_does_not_cancel_load),
      cmocka_unit_test(test_slow_load_does_not_block_other_keys),
      cmocka_unit_test(test_key_identity),
      cmocka_unit_test(test_hash_collisions_stay_distinct),
      cmocka_unit_test(test_refcount_and_explicit_evict),
      cmocka_unit_test(test_idle_ttl),
      cmocka_unit_test(test_lru_under_budget),
      cmocka_unit_test(test_over_budget_is_enomem_and_changes_nothing),
      cmocka_unit_test(test_destroy_busy),
      cmocka_unit_test(test_loader_reentry),
      cmocka_unit_test(test_stats_json_and_foreach),
      cmocka_unit_test(test_bad_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
