/* libuv integration: async acquire on a real loop, deduplicated with a
 * concurrent synchronous caller; callbacks on the loop thread; the
 * idle-eviction timer. */
#include "test_util.h"

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
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_async_dedup_with_sync),
      cmocka_unit_test(test_async_failure_and_bad_input),
      cmocka_unit_test(test_eviction_timer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
