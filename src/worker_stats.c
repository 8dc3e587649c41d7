/* The worker's counters as JSON (ms_worker_stats_json). */
#include "internal/worker.h"

#include <cjson/cJSON.h>

#include <stdlib.h>
#include <string.h>

void ms__stats_error(ms_worker_t *w, int code) {
  unsigned i = code < 0 && code > -64 ? (unsigned)-code : 0;
  w->st_errors[i]++;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

static int add_num(cJSON *o, const char *k, double v) {
  return cJSON_AddNumberToObject(o, k, v) != NULL;
}

/* p50 and p99 of the model's latency ring.  Lock held. */
static int add_model(cJSON *models, const ms__wmodel *m) {
  cJSON *o = cJSON_AddObjectToObject(models, m->name);
  if (o == NULL)
    return 0;
  size_t n = m->nlat < MS__LAT_RING ? (size_t)m->nlat : MS__LAT_RING;
  uint32_t lat[MS__LAT_RING];
  memcpy(lat, m->lat_us, n * sizeof(lat[0]));
  qsort(lat, n, sizeof(lat[0]), cmp_u32);
  double p50 = n > 0 ? lat[(n - 1) / 2] : 0;
  double p99 = n > 0 ? lat[(n - 1) * 99 / 100] : 0;
  return add_num(o, "requests", (double)m->requests) &&
         add_num(o, "errors", (double)m->errors) &&
         add_num(o, "latency_us_p50", p50) && add_num(o, "latency_us_p99", p99);
}

int ms_worker_stats_json(ms_worker_t *w, char **json) {
  if (w == NULL || json == NULL)
    return MS_EINVAL;
  cJSON *root = cJSON_CreateObject();
  int ok = root != NULL;
  uv_mutex_lock(&w->lock);
  uint64_t inflight = w->st_requests - w->st_responses;
  ok = ok && add_num(root, "clients", w->st_clients) &&
       add_num(root, "connections", (double)w->st_connections) &&
       add_num(root, "refused", (double)w->st_refused) &&
       add_num(root, "refused_uid", (double)w->st_refused_uid) &&
       add_num(root, "requests", (double)w->st_requests) &&
       add_num(root, "responses", (double)w->st_responses) &&
       add_num(root, "inflight", (double)inflight) &&
       add_num(root, "protocol_errors", (double)w->st_protocol_errors) &&
       add_num(root, "batches", (double)w->st_batches) &&
       add_num(root, "mean_batch",
               w->st_batches > 0
                   ? (double)w->st_batched_requests / (double)w->st_batches
                   : 0.0) &&
       add_num(root, "inline", w->st_inline);
  cJSON *errors = ok ? cJSON_AddObjectToObject(root, "errors") : NULL;
  ok = errors != NULL;
  for (int i = 1; ok && i < 64; i++)
    if (w->st_errors[i] != 0)
      ok = add_num(errors, ms_err_name(-i), (double)w->st_errors[i]);
  if (ok && w->st_errors[0] != 0)
    ok = add_num(errors, "other", (double)w->st_errors[0]);
  int top = 0;
  for (int i = 0; i < 64; i++)
    if (w->st_hist[i] != 0)
      top = i + 1;
  cJSON *hist = ok ? cJSON_AddArrayToObject(root, "batch_hist") : NULL;
  ok = hist != NULL;
  for (int i = 0; ok && i < top; i++) {
    cJSON *v = cJSON_CreateNumber((double)w->st_hist[i]);
    ok = v != NULL && cJSON_AddItemToArray(hist, v);
  }
  cJSON *models = ok ? cJSON_AddObjectToObject(root, "models") : NULL;
  ok = models != NULL;
  for (const ms__wmodel *m = w->models; ok && m != NULL; m = m->next)
    ok = add_model(models, m);
  uv_mutex_unlock(&w->lock);
  int rc = ok ? ms__json_print(root, json) : MS_ENOMEM;
  cJSON_Delete(root);
  return rc;
}
