/* libuv integration: async acquire on a real loop, deduplicated with a
 * concurrent synchronous caller; callbacks on the loop thread; the
 * idle-eviction timer. */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct cb_result {
  int calls;
  int status;
  ms_model_t *model;
  uv_thread_t thread;
} cb_result;

static void on_acquired(int status, ms_model_t *model, void *user) {
  cb_result *r = user;
  r->calls++;
  r->status = status;
  r->model = model;
  r->thread = uv_thread_self();
}

typedef struct sync_job {
  ms_registry_t *reg;
  ms_key_t *key;
  tl *t;
  int rc;
  ms_model_t *model;
} sync_job;

static void sync_acquire(void *arg) {
  sync_job *j = arg;
  ms_loader_t l = tl_loader(j->t);
  j->rc =
      ms_registry_acquire_key(j->reg, j->key, &l, MS_WAIT_FOREVER, &j->model);
}

static void test_async_dedup_with_sync(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ms_registry_t *reg = NULL;
  assert_int_equal(ms_registry_create(NULL, &reg), 0);
  ms_key_t *key = make_key("/models/async.bin", "{\"n\":1}");
  uv_sem_t started, gate;
  assert_int_equal(uv_sem_init(&started, 0), 0);
  assert_int_equal(uv_sem_init(&gate, 0), 0);
  tl t = {.started = &started, .gate = &gate};

  /* A synchronous caller starts the load and is held inside the loader. */
  sync_job j = {reg, key, &t, -1, NULL};
  uv_thread_t th;
  assert_int_equal(uv_thread_create(&th, sync_acquire, &j), 0);
  uv_sem_wait(&started);

  cb_result r1 = {0}, r2 = {0};
  ms_loader_t l = tl_loader(&t);
  assert_int_equal(ms_registry_acquire_async(reg, &loop, key, &l,
                                             MS_WAIT_FOREVER, on_acquired, &r1),
                   0);
  assert_int_equal(ms_registry_acquire_async(reg, &loop, key, &l,
                                             MS_WAIT_FOREVER, on_acquired, &r2),
                   0);
  assert_int_equal(r1.calls, 0); /* never called from inside the call */
  /* Busy while async requests are pending. */
  assert_int_equal(ms_registry_destroy(reg), MS_EBUSY);

  uv_sem_post(&gate);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  uv_thread_join(&th);

  uv_thread_t self = uv_thread_self();
  assert_int_equal(j.rc, 0);
  assert_int_equal(r1.calls, 1);
  assert_int_equal(r2.calls, 1);
  assert_int_equal(r1.status, 0);
  assert_int_equal(r2.status, 0);
  assert_ptr_equal(r1.model, j.model);
  assert_ptr_equal(r2.model, j.model);
  assert_true(uv_thread_equal(&r1.thread, &self));
  assert_true(uv_thread_equal(&r2.thread, &self));
  assert_int_equal(atomic_load(&t.loads), 1);

  ms_model_release(r1.model);
  ms_model_release(r2.model);
  ms_model_release(j.model);
  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(atomic_load(&t.unloads), 1);
  assert_int_equal(uv_loop_close(&loop), 0);
  uv_sem_destroy(&started);
  uv_sem_destroy(&gate);
  ms_key_destroy(key);
}

static void test_async_failure_and_bad_input(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ms_registry_t *reg = NULL;
  assert_int_equal(ms_registry_create(NULL, &reg), 0);
  ms_key_t *key = make_key("/models/async-fail.bin", NULL);
  tl t = {.fail_code = MS_EIO};
  ms_loader_t l = tl_loader(&t);
  cb_result r = {0};
  assert_int_equal(
      ms_registry_acquire_async(reg, &loop, key, &l, 0, on_acquired, &r), 0);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(r.calls, 1);
  assert_int_equal(r.status, MS_EIO);
  assert_null(r.model);

  assert_int_equal(
      ms_registry_acquire_async(NULL, &loop, key, &l, 0, on_acquired, &r),
      MS_EINVAL);
  assert_int_equal(
      ms_registry_acquire_async(reg, NULL, key, &l, 0, on_acquired, &r),
      MS_EINVAL);
  assert_int_equal(
      ms_registry_acquire_async(reg, &loop, NULL, &l, 0, on_acquired, &r),
      MS_EINVAL);
  assert_int_equal(
      ms_registry_acquire_async(reg, &loop, key, NULL, 0, on_acquired, &r),
      MS_EINVAL);
  assert_int_equal(ms_registry_acquire_async(reg, &loop, key, &l, 0, NULL, &r),
                   MS_EINVAL);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(r.calls, 1); /* rejected calls never call back */
  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  ms_key_destroy(key);
}

/* ---- Waiting is event-driven: waiters never hold pool threads ---------- */

static void inner_work(uv_work_t *w) { (void)w; }
static void inner_done(uv_work_t *w, int status) {
  int *done = w->data;
  *done = status == 0;
}

static ms_registry_t *pool_reg; /* the registry pool_load loads for */

/* A loader that itself needs libuv's thread pool: it queues work on a loop
 * of its own (on the shared pool) and waits for it.  It first waits until
 * 3 other requests wait for it: with one pool thread parked per waiter,
 * that is the whole 4-thread pool, deterministically. */
static int pool_load(void *user, const char *path, const char *config,
                     void **model, size_t *bytes) {
  (void)path, (void)config;
  tl *t = user;
  atomic_fetch_add(&t->loads, 1);
  ms_registry_stats_t s = MS_REGISTRY_STATS_INIT;
  while (ms_registry_stats(pool_reg, &s) == 0 && s.waits < 3)
    uv_sleep(1);
  uv_loop_t inner;
  if (uv_loop_init(&inner) != 0)
    return MS_EIO;
  int done = 0;
  uv_work_t w;
  w.data = &done;
  if (uv_queue_work(&inner, &w, inner_work, inner_done) != 0)
    return MS_EIO;
  (void)uv_run(&inner, UV_RUN_DEFAULT);
  (void)uv_loop_close(&inner);
  if (!done)
    return MS_EIO;
  *model = malloc(16);
  *bytes = 16;
  atomic_fetch_add(&t->live, 1);
  return *model != NULL ? 0 : MS_ENOMEM;
}

/* 8 waiters with MS_WAIT_FOREVER on a 4-thread pool while the load needs
 * the pool: with one pool thread parked per waiter this deadlocks (the
 * inner work never gets a thread); event-driven it completes. */
static void test_waiters_do_not_starve_the_pool(void **state) {
  (void)state;
  enum { N = 8 };
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ms_registry_t *reg = NULL;
  assert_int_equal(ms_registry_create(NULL, &reg), 0);
  ms_key_t *key = make_key("/models/pool.bin", NULL);
  pool_reg = reg;
  tl t = {0};
  ms_loader_t l = tl_loader(&t);
  l.load = pool_load;
  cb_result r[N];
  memset(r, 0, sizeof(r));
  for (int i = 0; i < N; i++)
    assert_int_equal(ms_registry_acquire_async(reg, &loop, key, &l,
                                               MS_WAIT_FOREVER, on_acquired,
                                               &r[i]),
                     0);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  for (int i = 0; i < N; i++) {
    assert_int_equal(r[i].calls, 1);
    assert_int_equal(r[i].status, 0);
    assert_ptr_equal(r[i].model, r[0].model);
  }
  assert_int_equal(atomic_load(&t.loads), 1);
  ms_registry_stats_t s = get_stats(reg);
  assert_int_equal(s.misses, 1);
  assert_int_equal(s.hits, N - 1);
  assert_true(s.waits >= 3 && s.waits <= N - 1); /* the load may end
                                                   before the last request */
  for (int i = 0; i < N; i++)
    ms_model_release(r[i].model);
  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  ms_key_destroy(key);
}

/* ---- Cancel, timeout and the error text on the loop thread ------------- */

typedef struct cb_text {
  cb_result r;
  ms_registry_t *reg;
  ms_acquire_req_t *req;
  int cancel_in_cb; /* what cancel returned from inside the callback */
  char msg[256];
} cb_text;

static void on_text(int status, ms_model_t *model, void *user) {
  cb_text *c = user;
  on_acquired(status, model, &c->r);
  (void)snprintf(c->msg, sizeof(c->msg), "%s", ms_registry_errmsg(c->reg));
  c->cancel_in_cb = ms_registry_acquire_cancel(c->req);
}

static void test_cancel_timeout_and_errmsg(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ms_registry_t *reg = NULL;
  assert_int_equal(ms_registry_create(NULL, &reg), 0);
  ms_key_t *key = make_key("/models/cancel.bin", NULL);
  uv_sem_t started, gate;
  assert_int_equal(uv_sem_init(&started, 0), 0);
  assert_int_equal(uv_sem_init(&gate, 0), 0);
  tl t = {.started = &started, .gate = &gate};
  ms_loader_t l = tl_loader(&t);

  /* origin starts the (gated) load; w1 waits forever; w2 times out. */
  cb_text origin = {.reg = reg}, w1 = {.reg = reg}, w2 = {.reg = reg};
  assert_int_equal(ms_registry_acquire_async2(reg, &loop, key, &l,
                                              MS_WAIT_FOREVER, on_text, &origin,
                                              &origin.req),
                   0);
  uv_sem_wait(&started);
  assert_int_equal(ms_registry_acquire_async2(reg, &loop, key, &l,
                                              MS_WAIT_FOREVER, on_text, &w1,
                                              &w1.req),
                   0);
  assert_int_equal(ms_registry_acquire_async2(reg, &loop, key, &l, 20, on_text,
                                              &w2, &w2.req),
                   0);
  /* Cancel both the origin and w1: their callbacks come from the loop,
   * never from inside the call; cancelling twice is harmless. */
  assert_int_equal(ms_registry_acquire_cancel(w1.req), 0);
  assert_int_equal(ms_registry_acquire_cancel(w1.req), 0);
  assert_int_equal(ms_registry_acquire_cancel(origin.req), 0);
  assert_int_equal(w1.r.calls + origin.r.calls, 0);
  assert_int_equal(ms_registry_acquire_cancel(NULL), MS_EINVAL);
  /* w2's timer fires while the load is still held at the gate. */
  while (w2.r.calls == 0)
    assert_true(uv_run(&loop, UV_RUN_ONCE) != 0);
  assert_int_equal(w2.r.status, MS_ETIMEDOUT);
  assert_non_null(strstr(w2.msg, "timed out"));
  assert_int_equal(w1.r.calls, 1);
  assert_int_equal(w1.r.status, MS_ECANCELED);
  assert_null(w1.r.model);
  assert_non_null(strstr(w1.msg, "cancel"));
  assert_int_equal(w1.cancel_in_cb, MS_ENOENT); /* too late inside cb */
  assert_int_equal(origin.r.status, MS_ECANCELED);
  assert_int_equal(ms_registry_destroy(reg), MS_EBUSY); /* still loading */

  /* The load goes on and stays cached, idle: nobody holds it. */
  uv_sem_post(&gate);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ms_registry_stats_t s = get_stats(reg);
  assert_int_equal(s.loads, 1);
  assert_int_equal(s.models_resident, 1);
  assert_int_equal(s.models_held, 0);
  assert_int_equal(s.timeouts, 1);

  /* A hit completes at once, but a cancel before its callback still wins:
   * the reference it had obtained is released again. */
  cb_text hit = {.reg = reg};
  assert_int_equal(ms_registry_acquire_async2(reg, &loop, key, &l, 0, on_text,
                                              &hit, &hit.req),
                   0);
  assert_int_equal(ms_registry_acquire_cancel(hit.req), 0);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(hit.r.calls, 1);
  assert_int_equal(hit.r.status, MS_ECANCELED);
  assert_int_equal(get_stats(reg).models_held, 0);

  /* The loader's own failure text reaches the loop thread. */
  ms_key_t *bad = make_key("/models/cancel-fail.bin", NULL);
  tl tf = {.fail_code = MS_EIO};
  ms_loader_t lf = tl_loader(&tf);
  cb_text fail = {.reg = reg};
  assert_int_equal(ms_registry_acquire_async2(reg, &loop, bad, &lf, 0, on_text,
                                              &fail, &fail.req),
                   0);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(fail.r.status, MS_EIO);
  assert_non_null(strstr(fail.msg, "loader for \"/models/cancel-fail.bin\""));
  assert_non_null(strstr(fail.msg, "input/output error"));

  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  uv_sem_destroy(&started);
  uv_sem_destroy(&gate);
  ms_key_destroy(key);
  ms_key_destroy(bad);
}

/* Keeps the loop running until the timer has expired the idle model. */
typedef struct ttl_watch {
  uv_timer_t poll;
  tl *t;
  ms_registry_t *reg;
  uint64_t started;
} ttl_watch;

static void poll_unloaded(uv_timer_t *h) {
  ttl_watch *w = h->data;
  if (atomic_load(&w->t->unloads) > 0 ||
      uv_hrtime() - w->started > 5000000000ULL) {
    uv_timer_stop(h);
    (void)ms_registry_timer_stop(w->reg);
    uv_close((uv_handle_t *)h, NULL);
  }
}

static void test_eviction_timer(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ms_registry_options_t o = MS_REGISTRY_OPTIONS_INIT;
  o.idle_ttl_ms = 50;
  ms_registry_t *reg = NULL;
  assert_int_equal(ms_registry_create(&o, &reg), 0);
  ms_key_t *key = make_key("/models/timer.bin", NULL);
  tl t = {0};
  ms_loader_t l = tl_loader(&t);
  ms_model_t *m = NULL;
  assert_int_equal(ms_registry_acquire_key(reg, key, &l, 0, &m), 0);
  ms_model_release(m);

  assert_int_equal(ms_registry_timer_start(reg, &loop, 10), 0);
  assert_int_equal(ms_registry_timer_start(reg, &loop, 10), MS_EBUSY);
  assert_int_equal(ms_registry_destroy(reg), MS_EBUSY); /* timer attached */
  ttl_watch w = {.t = &t, .reg = reg, .started = uv_hrtime()};
  assert_int_equal(uv_timer_init(&loop, &w.poll), 0);
  w.poll.data = &w;
  assert_int_equal(uv_timer_start(&w.poll, poll_unloaded, 5, 5), 0);
  uint64_t t0 = uv_hrtime();
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  uint64_t took_ms = (uv_hrtime() - t0) / 1000000u;
  assert_int_equal(atomic_load(&t.unloads), 1);
  assert_true(took_ms >= 40 && took_ms < 5000);
  assert_int_equal(ms_registry_timer_stop(reg), MS_ENOENT);
  assert_int_equal(ms_registry_destroy(reg), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  ms_key_destroy(key);
}

int main(void) {
  /* libuv's default pool: 4 threads (the starvation test counts on it). */
  (void)uv_os_setenv("UV_THREADPOOL_SIZE", "4");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_async_dedup_with_sync),
      cmocka_unit_test(test_async_failure_and_bad_input),
      cmocka_unit_test(test_waiters_do_not_starve_the_pool),
      cmocka_unit_test(test_cancel_timeout_and_errmsg),
      cmocka_unit_test(test_eviction_timer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
