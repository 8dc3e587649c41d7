/* libuv glue: async acquire on the thread pool, idle-eviction timer. */
#include "internal/abi.h"
#include "internal/key.h"
#include "internal/registry.h"

#include <stdlib.h>

typedef struct ms__acquire_req {
  uv_work_t work;
  ms_registry_t *reg;
  ms_key_t *key; /* private copy */
  ms_loader_t loader;
  uint64_t timeout_ms;
  ms_acquire_cb cb;
  void *user_data;
  int status;
  ms_model_t *model;
} ms__acquire_req;

/* Thread pool: a hit or a wait or a load, deduplicated like any caller. */
static void acquire_work(uv_work_t *work) {
  ms__acquire_req *req = work->data;
  req->status = ms_registry_acquire_key(req->reg, req->key, &req->loader,
                                        req->timeout_ms, &req->model);
}

/* Loop thread. */
static void acquire_done(uv_work_t *work, int status) {
  ms__acquire_req *req = work->data;
  ms_acquire_cb cb = req->cb;
  void *user_data = req->user_data;
  int rc = req->status;
  ms_model_t *model = rc == 0 ? req->model : NULL;
  (void)status; /* never cancelled: uv_cancel is not exposed */
  atomic_fetch_sub(&req->reg->pending_async, 1);
  ms_key_destroy(req->key);
  free(req);
  cb(rc, model, user_data);
}

int ms_registry_acquire_async(ms_registry_t *reg, uv_loop_t *loop,
                              const ms_key_t *key, const ms_loader_t *loader,
                              uint64_t timeout_ms, ms_acquire_cb cb,
                              void *user_data) {
  if (reg == NULL)
    return MS_EINVAL;
  if (loop == NULL || key == NULL || loader == NULL || loader->load == NULL ||
      loader->struct_size < MS__LOADER_V1 || cb == NULL)
    return ms__errmsg_set(reg, MS_EINVAL,
                          "NULL argument, or no load function, or loader "
                          "struct_size too small");

  ms__acquire_req *req = calloc(1, sizeof(*req));
  if (req == NULL || ms__key_dup(key, &req->key) != 0) {
    free(req);
    return ms__errmsg_set(reg, MS_ENOMEM, "out of memory");
  }
  req->work.data = req;
  req->reg = reg;
  req->loader = (ms_loader_t)MS_LOADER_INIT;
  (void)ms__struct_in(&req->loader, sizeof(req->loader), loader,
                      MS__LOADER_V1);
  req->timeout_ms = timeout_ms;
  req->cb = cb;
  req->user_data = user_data;

  atomic_fetch_add(&reg->pending_async, 1);
  int rc = uv_queue_work(loop, &req->work, acquire_work, acquire_done);
  if (rc != 0) {
    atomic_fetch_sub(&reg->pending_async, 1);
    ms_key_destroy(req->key);
    free(req);
    return ms__errmsg_set(reg, MS_EINVAL, "uv_queue_work: %s", uv_strerror(rc));
  }
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
  free(h);
  atomic_store(&reg->timer, NULL);
}

int ms_registry_timer_start(ms_registry_t *reg, uv_loop_t *loop,
                            uint64_t period_ms) {
  if (reg == NULL)
    return MS_EINVAL;
  if (loop == NULL || period_ms == 0)
    return ms__errmsg_set(reg, MS_EINVAL, "NULL loop or zero period");
  uv_timer_t *t = malloc(sizeof(*t));
  if (t == NULL)
    return ms__errmsg_set(reg, MS_ENOMEM, "out of memory");
  void *expected = NULL;
  if (!atomic_compare_exchange_strong(&reg->timer, &expected, t)) {
    free(t);
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
