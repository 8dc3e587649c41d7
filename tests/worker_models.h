/* The models the worker tests serve, shared by test_worker.c (in-process
 * workers) and worker_peer.c (worker processes).  Each output is a function
 * of its request's input only, so a response that went to the wrong request
 * is caught:
 *   "echo"  out[i] = in[i] * 3 + 7 (uint8, same shape), plus an int64
 *           scalar-like [1] tensor holding the sum of the input bytes;
 *   "slow"  the same after sleeping the first input byte x 10 ms (so a
 *           request can be kept in flight on purpose);
 *   "batch" the same through infer_batch, which costs a fixed 2 ms per
 *           call whatever its size (a batch amortises it).
 * Loads are counted in wm_loads. */
#ifndef MS_TEST_WORKER_MODELS_H
#define MS_TEST_WORKER_MODELS_H

#include "modelshare.h"

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <uv.h>

static atomic_int wm_loads;
static atomic_int wm_batch_calls;
static int wm_dummy;

static int wm_load(void *user, const char *path, const char *config,
                   void **model, size_t *bytes) {
  (void)user, (void)path, (void)config;
  atomic_fetch_add(&wm_loads, 1);
  *model = &wm_dummy;
  *bytes = 1;
  return 0;
}

/* The expected outputs of an input, for the checks. */
static inline uint8_t wm_f(uint8_t x) { return (uint8_t)(x * 3u + 7u); }

static int wm_one(ms_tensor_t *in, ms_worker_out_t *out, ms_tensor_t **outputs,
                  size_t *n_out) {
  if (ms_tensor_dtype(in) != MS_DTYPE_UINT8)
    return MS_EINVAL;
  ms_tensor_t *a = NULL, *b = NULL;
  int rc = ms_worker_out_alloc(out, MS_DTYPE_UINT8, ms_tensor_ndim(in),
                               ms_tensor_shape(in), &a);
  if (rc != 0)
    return rc;
  outputs[(*n_out)++] = a;
  int64_t one = 1;
  rc = ms_worker_out_alloc(out, MS_DTYPE_INT64, 1, &one, &b);
  if (rc != 0)
    return rc;
  outputs[(*n_out)++] = b;
  const uint8_t *src = ms_tensor_data(in);
  uint8_t *dst = ms_tensor_data(a);
  int64_t sum = 0;
  for (size_t i = 0; i < ms_tensor_nbytes(in); i++) {
    dst[i] = wm_f(src[i]);
    sum += src[i];
  }
  memcpy(ms_tensor_data(b), &sum, sizeof(sum));
  return 0;
}

static int wm_infer(void *user, void *model, ms_tensor_t *const *inputs,
                    size_t n_in, ms_worker_out_t *out, ms_tensor_t **outputs,
                    size_t *n_out) {
  (void)model;
  if (n_in != 1)
    return MS_EINVAL;
  if (user != NULL && ms_tensor_nbytes(inputs[0]) > 0) /* "slow" */
    uv_sleep(10u * *(const uint8_t *)ms_tensor_data(inputs[0]));
  return wm_one(inputs[0], out, outputs, n_out);
}

static int wm_infer_batch(void *user, void *model,
                          ms_worker_request_t *const *reqs, size_t n) {
  (void)user, (void)model;
  atomic_fetch_add(&wm_batch_calls, 1);
  uv_sleep(2);
  for (size_t i = 0; i < n; i++)
    reqs[i]->status = reqs[i]->n_in != 1
                          ? MS_EINVAL
                          : wm_one(reqs[i]->inputs[0], reqs[i]->out,
                                   reqs[i]->outputs, &reqs[i]->n_out);
  return 0;
}

static ms_loader_t wm_loader = {sizeof(ms_loader_t), wm_load, NULL, NULL};
static int wm_slow_flag = 1;

/* Adds the three models to w. */
static inline int wm_add_all(ms_worker_t *w) {
  ms_worker_model_t m = MS_WORKER_MODEL_INIT;
  m.path = "/models/echo";
  m.loader = &wm_loader;
  m.infer = wm_infer;
  int rc = ms_worker_add_model(w, "echo", &m);
  m.path = "/models/slow";
  m.user = &wm_slow_flag;
  if (rc == 0)
    rc = ms_worker_add_model(w, "slow", &m);
  m.path = "/models/batch";
  m.user = NULL;
  m.infer_batch = wm_infer_batch;
  if (rc == 0)
    rc = ms_worker_add_model(w, "batch", &m);
  return rc;
}

#endif
