/* A worker plugin for the tests and the bench: an echo model with an
 * optional fixed cost per call.
 *
 * config_json (all optional):
 *   "fixed_us": N   every infer / infer_batch call first spins N
 *                   microseconds, whatever the number of requests it
 *                   carries (a batch amortises it: think of a kernel launch
 *                   or a pass over the weights);
 *   "fail": true    the loader fails with MS_ELOAD.
 * Each output is a copy of the matching input (same dtype and shape), so a
 * response depends on its own request and on nothing else.  The model path
 * must exist (the loader checks it, as a real loader would).
 */
#define _POSIX_C_SOURCE 200809L
#include <modelshare.h>

#include <cjson/cJSON.h>

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

typedef struct echo_model {
  long fixed_us;
} echo_model;

static int echo_load(void *user, const char *path, const char *config,
                     void **model, size_t *bytes) {
  (void)user;
  struct stat st;
  if (stat(path, &st) != 0)
    return MS_ENOENT;
  cJSON *cfg = cJSON_Parse(config);
  if (cfg == NULL)
    return MS_ENOMEM; /* the registry hands over valid JSON */
  const cJSON *fail = cJSON_GetObjectItemCaseSensitive(cfg, "fail");
  const cJSON *us = cJSON_GetObjectItemCaseSensitive(cfg, "fixed_us");
  int rc = cJSON_IsTrue(fail) ? MS_ELOAD
           : us != NULL && (!cJSON_IsNumber(us) || us->valuedouble < 0 ||
                            us->valuedouble > 1e6)
               ? MS_EINVAL
               : 0;
  echo_model *m = rc == 0 ? calloc(1, sizeof(*m)) : NULL;
  if (rc == 0 && m == NULL)
    rc = MS_ENOMEM;
  if (m != NULL) {
    m->fixed_us = us != NULL ? (long)us->valuedouble : 0;
    *model = m;
    *bytes = sizeof(*m);
  }
  cJSON_Delete(cfg);
  return rc;
}

static void echo_unload(void *user, void *model) {
  (void)user;
  free(model);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fixed_cost(const echo_model *m) {
  uint64_t end = now_ns() + (uint64_t)m->fixed_us * 1000u;
  while (m->fixed_us > 0 && now_ns() < end)
    ;
}

static int copy_all(ms_tensor_t *const *in, size_t n_in, ms_worker_out_t *out,
                    ms_tensor_t **outputs, size_t *n_out) {
  for (size_t i = 0; i < n_in; i++) {
    ms_tensor_t *t = NULL;
    int rc =
        ms_worker_out_alloc(out, ms_tensor_dtype(in[i]), ms_tensor_ndim(in[i]),
                            ms_tensor_shape(in[i]), &t);
    if (rc != 0)
      return rc;
    if (ms_tensor_nbytes(t) > 0)
      memcpy(ms_tensor_data(t), ms_tensor_data(in[i]), ms_tensor_nbytes(t));
    outputs[(*n_out)++] = t;
  }
  return 0;
}

static int echo_infer(void *user, void *model, ms_tensor_t *const *inputs,
                      size_t n_in, ms_worker_out_t *out, ms_tensor_t **outputs,
                      size_t *n_out) {
  (void)user;
  fixed_cost(model);
  return copy_all(inputs, n_in, out, outputs, n_out);
}

static int echo_infer_batch(void *user, void *model,
                            ms_worker_request_t *const *reqs, size_t n) {
  (void)user;
  fixed_cost(model); /* once for the whole batch */
  for (size_t i = 0; i < n; i++)
    reqs[i]->status = copy_all(reqs[i]->inputs, reqs[i]->n_in, reqs[i]->out,
                               reqs[i]->outputs, &reqs[i]->n_out);
  return 0;
}

MS_PLUGIN_EXPORT int ms_worker_plugin_v1(ms_worker_model_t *out) {
  static const ms_loader_t loader = {sizeof(ms_loader_t), echo_load,
                                     echo_unload, NULL};
  if (out == NULL || out->struct_size < sizeof(ms_worker_model_t))
    return MS_EINVAL;
  out->loader = &loader;
  out->infer = echo_infer;
  out->infer_batch = echo_infer_batch;
  return 0;
}
