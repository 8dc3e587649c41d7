/* ms_registry_destroy racing calls still inside the registry: a TTL-0
 * release, a failing load, synchronous waiters.  Destroy is retried until it
 * succeeds; it must refuse (MS_EBUSY) for as long as any of those calls can
 * still touch the registry, which ASan (use after free) and TSan (a
 * destroyed mutex or condition variable in use) check.  Seeded: set
 * MS_TEST_SEED to replay; the seed is printed on failure. */
#include "test_util.h"

#include <stdio.h>
#include <string.h>

static unsigned seed;
static unsigned rnd_state;

static unsigned rnd(void) { /* xorshift32, reproducible from the seed */
  rnd_state ^= rnd_state << 13;
  rnd_state ^= rnd_state >> 17;
  rnd_state ^= rnd_state << 5;
  return rnd_state;
}

/* A few hundred ns to a few us of busy work: shifts the interleavings. */
static void jitter(unsigned n) {
  volatile unsigned x = 0;
  for (unsigned i = 0; i < n % 4000; i++)
    x += i;
}

/* Retries destroy until it succeeds; every refusal must be MS_EBUSY. */
static int destroy_until_done(ms_registry_t *reg) {
  int busy = 0;
  for (;;) {
    int rc = ms_registry_destroy(reg);
    if (rc == 0)
      return busy;
    if (rc != MS_EBUSY)
      fail_msg("destroy returned %d (seed %u)", rc, seed);
    busy++;
  }
}

typedef struct job {
  ms_registry_t *reg;
  ms_key_t *key;
  ms_loader_t loader;
  ms_model_t *model;
  unsigned jitter;
  int rc;
  uv_thread_t th;
} job;

static void release_job(void *arg) {
  job *j = arg;
  jitter(j->jitter);
  ms_model_release(j->model);
}

static void acquire_job(void *arg) {
  job *j = arg;
  j->rc = ms_registry_acquire_key(j->reg, j->key, &j->loader, MS_WAIT_FOREVER,
                                  &j->model);
  if (j->rc == 0) {
    jitter(j->jitter);
    ms_model_release(j->model);
  }
}

/* A TTL-0 release unloads under the write lock after its last reference
 * went: destroy must not free reg in between. */
static void test_destroy_vs_ttl0_release(void **state) {
  (void)state;
  for (int it = 0; it < 300; it++) {
    ms_registry_options_t o = MS_REGISTRY_OPTIONS_INIT;
    o.idle_ttl_ms = 0;
    ms_registry_t *reg = NULL;
    assert_int_equal(ms_registry_create(&o, &reg), 0);
    tl t = {0};
    job j = {.reg = reg, .loader = tl_loader(&t), .jitter = rnd()};
    ms_key_t *key = make_key("/destroy/ttl0", NULL);
    assert_int_equal(ms_registry_acquire_key(reg, key, &j.loader, 0, &j.model),
                     0);
    assert_int_equal(uv_thread_create(&j.th, release_job, &j), 0);
    jitter(rnd());
    (void)destroy_until_done(reg);
    uv_thread_join(&j.th);
    if (atomic_load(&t.unloads) != 1 || atomic_load(&t.live) != 0)
      fail_msg("unloads %d live %d (seed %u, iteration %d)",
               atomic_load(&t.unloads), atomic_load(&t.live), seed, it);
    ms_key_destroy(key);
  }
}

/* A failing load publishes FAILED (the entry leaves the table) and then
 * still runs inside the registry; waiters wake after that on the
 * registry's condition variable.  Destroy must wait for all of them. */
static void test_destroy_vs_failing_load_and_waiters(void **state) {
  (void)state;
  enum { WAITERS = 4 };
  for (int it = 0; it < 150; it++) {
    ms_registry_t *reg = NULL;
    assert_int_equal(ms_registry_create(NULL, &reg), 0);
    uv_sem_t started, gate;
    assert_int_equal(uv_sem_init(&started, 0), 0);
    assert_int_equal(uv_sem_init(&gate, 0), 0);
    int fail = it % 2 == 0; /* odd iterations: a successful load */
    tl t = {
        .fail_code = fail ? MS_ELOAD : 0, .started = &started, .gate = &gate};
    ms_key_t *key = make_key("/destroy/load", NULL);
    job jobs[1 + WAITERS];
    memset(jobs, 0, sizeof(jobs));
    for (int i = 0; i < 1 + WAITERS; i++) {
      jobs[i].reg = reg;
      jobs[i].key = key;
      jobs[i].loader = tl_loader(&t);
      jobs[i].jitter = rnd();
    }
    assert_int_equal(uv_thread_create(&jobs[0].th, acquire_job, &jobs[0]), 0);
    uv_sem_wait(&started); /* the loader is inside: calls in progress */
    for (int i = 1; i < 1 + WAITERS; i++)
      assert_int_equal(uv_thread_create(&jobs[i].th, acquire_job, &jobs[i]), 0);
    /* Wait until every waiter is counted as waiting. */
    while (get_stats(reg).waits < WAITERS)
      uv_sleep(0);
    assert_int_equal(ms_registry_destroy(reg), MS_EBUSY);
    uv_sem_post(&gate);
    jitter(rnd());
    (void)destroy_until_done(reg);
    for (int i = 0; i < 1 + WAITERS; i++) {
      uv_thread_join(&jobs[i].th);
      if (jobs[i].rc != (fail ? MS_ELOAD : 0))
        fail_msg("job %d got %d (seed %u, iteration %d)", i, jobs[i].rc, seed,
                 it);
    }
    assert_int_equal(atomic_load(&t.loads), 1);
    assert_int_equal(atomic_load(&t.live), 0);
    uv_sem_destroy(&started);
    uv_sem_destroy(&gate);
    ms_key_destroy(key);
  }
}

int main(void) {
  const char *env = getenv("MS_TEST_SEED");
  seed = env != NULL ? (unsigned)strtoul(env, NULL, 10)
                     : (unsigned)(uv_hrtime() % 1000000007u);
  if (seed == 0)
    seed = 1;
  rnd_state = seed;
  printf("test_registry_destroy: seed %u (MS_TEST_SEED to replay)\n", seed);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_destroy_vs_ttl0_release),
      cmocka_unit_test(test_destroy_vs_failing_load_and_waiters),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
