/* libuv glue: event-driven async acquire, idle-eviction timer. */
#include "internal/abi.h"
#include "internal/key.h"
#include "internal/registry.h"

#include <stdio.h>
#include <stdlib.h>

/*
 * Async acquire, event-driven.  The request joins the entry it wants:
 *   - READY: it is completed at once (through its uv_async_t, so the
 *     callback never runs inside the call);
 *   - LOADING: it is queued on the entry's waiters; the thread that
 *     publishes the load result completes every queued request and wakes
 *     its loop with uv_async_send();
 *   - absent: it creates the entry and queues itself, and only the load
 *     itself goes to libuv's thread pool (uv_queue_work).
 * No pool thread ever waits for a load, so any number of waiters cannot
 * starve the pool (a loader that itself needs the pool still gets it).
 * A timer (finite timeout while waiting for another caller's load) and
 * ms_registry_acquire_cancel() take the request off the list instead; the
 * first of load, timer and cancel decides its result, under wait_mutex.
 */

typedef struct load_job {
  uv_work_t work;
  ms_registry_t *reg;
  ms_model_t *entry;
  ms_loader_t loader;
} load_job;

/* Thread pool: only the load. */
static void load_work(uv_work_t *work) {
  load_job *j = work->data;
  ms__registry_load(j->reg, j->entry, &j->loader);
}

/* Loop thread.  Never cancelled (uv_cancel is not used). */
static void load_done(uv_work_t *work, int status) {
  (void)status;
  ms__free(work->data);
}

/* Loop thread: the last handle closed; the last access to reg. */
static void req_closed(uv_handle_t *h) {
  ms_acquire_req_t *req = h->data;
  if (--req->open_handles > 0)
    return;
  ms_registry_t *reg = req->reg;
  ms__free(req);
  atomic_fetch_sub(&reg->pending_async, 1);
}

/* Loop thread, req done: runs the callback once, then frees req. */
static void req_deliver(ms_acquire_req_t *req) {
  ms_registry_t *reg = req->reg;
  uv_mutex_lock(&reg->wait_mutex); /* pairs with the completing thread */
  int status = req->status;
  ms_model_t *model = status == 0 ? req->model : NULL;
  uv_mutex_unlock(&reg->wait_mutex);
  req->delivering = 1;
  if (status != 0)
    ms__errmsg_set(reg, status, "%s", req->errmsg);
  if (req->has_timer)
    (void)uv_timer_stop(&req->timer);
  req->cb(status, model, req->user_data);
  uv_close((uv_handle_t *)&req->async, req_closed);
  if (req->has_timer)
    uv_close((uv_handle_t *)&req->timer, req_closed);
}

static void req_async_cb(uv_async_t *a) {
  ms_acquire_req_t *req = a->data;
  if (!req->delivering)
    req_deliver(req);
}

static void req_timeout_cb(uv_timer_t *t) {
  ms_acquire_req_t *req = t->data;
  char msg[MS__REQ_ERRLEN];
  (void)snprintf(msg, sizeof(msg), "timed out waiting for a model to load");
  if (ms__registry_unwait(req->reg, req, MS_ETIMEDOUT, msg)) {
    atomic_fetch_add_explicit(&req->reg->timeouts, 1, memory_order_relaxed);
    req_deliver(req);
  }
}

int ms_registry_acquire_async2(ms_registry_t *reg, uv_loop_t *loop,
                               const ms_key_t *key, const ms_loader_t *loader,
                               uint64_t timeout_ms, ms_acquire_cb cb,
                               void *user_data, ms_acquire_req_t **req_out) {
  if (reg == NULL)
    return MS_EINVAL;
  if (loop == NULL || key == NULL || loader == NULL || loader->load == NULL ||
      loader->struct_size < MS__LOADER_V1 || cb == NULL)
    return ms__errmsg_set(reg, MS_EINVAL,
                          "NULL argument, or no load function, or loader "
                          "struct_size too small");

  ms_loader_t l = MS_LOADER_INIT;
  if (ms__struct_in(&l, sizeof(l), loader, MS__LOADER_V1) != 0)
    return MS_EINVAL; /* checked above: cannot happen */
  /* Everything that can fail comes first, before the request's handle
   * exists: a refused call leaves nothing for the loop to close.  The job
   * and the spare entry serve a miss only. */
  ms_acquire_req_t *req = ms__calloc(1, sizeof(*req));
  load_job *job = ms__malloc(sizeof(*job));
  ms_model_t *spare = ms__registry_entry_new(reg, key, &l);
  int rc = req == NULL || job == NULL || spare == NULL
               ? UV_ENOMEM
               : uv_async_init(loop, &req->async, req_async_cb);
  if (rc != 0) {
    ms__free(req);
    ms__free(job);
    ms__registry_entry_drop(spare);
    return ms__errmsg_set(reg, rc == UV_ENOMEM ? MS_ENOMEM : MS_EIO, "%s",
                          rc == UV_ENOMEM ? "out of memory" : uv_strerror(rc));
  }
  req->async.data = req;
  req->open_handles = 1;
  req->reg = reg;
  req->cb = cb;
  req->user_data = user_data;
  atomic_fetch_add(&reg->pending_async, 1); /* until req_closed */

  unsigned slot = ms__br_enter(&reg->lock);
  ms_model_t *load = NULL;
  ms__registry_begin_async(reg, key, req, spare, &load);
  if (load != NULL) {
    job->work.data = job;
    job->reg = reg;
    job->entry = load;
    job->loader = l;
    /* Cannot fail: the work callback is not NULL. */
    (void)uv_queue_work(loop, &job->work, load_work, load_done);
  } else {
    ms__free(job);
  }
  /* The timeout bounds waiting for another caller's load; the request
   * whose miss started the load waits for it like a synchronous loader. */
  if (!req->origin && timeout_ms != MS_WAIT_FOREVER) {
    (void)uv_timer_init(loop, &req->timer); /* cannot fail on a live loop */
    req->timer.data = req;
    req->has_timer = 1;
    req->open_handles++;
    (void)uv_timer_start(&req->timer, req_timeout_cb, timeout_ms, 0);
  }
  ms__br_leave(&reg->lock, slot);
  if (req_out != NULL)
    *req_out = req;
  return 0;
}

int ms_registry_acquire_async(ms_registry_t *reg, uv_loop_t *loop,
                              const ms_key_t *key, const ms_loader_t *loader,
                              uint64_t timeout_ms, ms_acquire_cb cb,
                              void *user_data) {
  return ms_registry_acquire_async2(reg, loop, key, loader, timeout_ms, cb,
                                    user_data, NULL);
}

int ms_registry_acquire_cancel(ms_acquire_req_t *req) {
  if (req == NULL)
    return MS_EINVAL;
  ms_registry_t *reg = req->reg;
  if (req->delivering)
    return ms__errmsg_set(reg, MS_ENOENT,
                          "the request's callback has already run");
  const char *msg = "acquire cancelled";
  if (ms__registry_unwait(reg, req, MS_ECANCELED, msg)) {
    uv_async_send(&req->async); /* the callback runs from the loop */
    return 0;
  }
  /* Already completed, its callback not yet run: turn the result into
   * MS_ECANCELED (the async send is already pending). */
  uv_mutex_lock(&reg->wait_mutex);
  ms_model_t *model = req->status == 0 ? req->model : NULL;
  req->status = MS_ECANCELED;
  req->model = NULL;
  (void)snprintf(req->errmsg, sizeof(req->errmsg), "%s", msg);
  uv_mutex_unlock(&reg->wait_mutex);
  ms_model_release(model);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Idle-eviction timer                                                       */
/* ------------------------------------------------------------------------ */

static void timer_tick(uv_timer_t *t) {
  (void)ms_registry_expire(t->data, NULL);
}

static void timer_closed(uv_handle_t *h) {
  ms_registry_t *reg = h->data;
  ms__free(h);
  atomic_store(&reg->timer, NULL);
}

int ms_registry_timer_start(ms_registry_t *reg, uv_loop_t *loop,
                            uint64_t period_ms) {
  if (reg == NULL)
    return MS_EINVAL;
  if (loop == NULL || period_ms == 0)
    return ms__errmsg_set(reg, MS_EINVAL, "NULL loop or zero period");
  uv_timer_t *t = ms__malloc(sizeof(*t));
  if (t == NULL)
    return ms__errmsg_set(reg, MS_ENOMEM, "out of memory");
  void *expected = NULL;
  if (!atomic_compare_exchange_strong(&reg->timer, &expected, t)) {
    ms__free(t);
    return ms__errmsg_set(reg, MS_EBUSY, "a timer is already attached");
  }
  (void)uv_timer_init(loop, t); /* cannot fail on a valid loop */
  t->data = reg;
  (void)uv_timer_start(t, timer_tick, period_ms, period_ms);
  uv_unref((uv_handle_t *)t);
  return 0;
}

int ms_registry_timer_stop(ms_registry_t *reg) {
  if (reg == NULL)
    return MS_EINVAL;
  uv_timer_t *t = atomic_load(&reg->timer);
  if (t == NULL || uv_is_closing((uv_handle_t *)t))
    return ms__errmsg_set(reg, MS_ENOENT, "no timer attached");
  (void)uv_timer_stop(t);
  uv_close((uv_handle_t *)t, timer_closed);
  return 0;
}
