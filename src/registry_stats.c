/* Registry statistics: counters, per-model listing, and their JSON form. */
#include "internal/abi.h"
#include "internal/registry.h"

#include <cjson/cJSON.h>

#include <stdlib.h>
#include <string.h>

_Static_assert(MS__REGISTRY_STATS_V1 <= sizeof(ms_registry_stats_t),
               "1.0 registry stats size");
_Static_assert(MS__MODEL_INFO_V1 <= sizeof(ms_model_info_t),
               "1.0 model info size");

#define LOAD(x) ((uint64_t)atomic_load_explicit(&(x), memory_order_relaxed))

int ms_registry_stats(ms_registry_t *reg, ms_registry_stats_t *stats) {
  if (reg == NULL)
    return MS_EINVAL;
  if (stats == NULL || stats->struct_size < MS__REGISTRY_STATS_V1)
    return ms__errmsg_set(reg, MS_EINVAL,
                          "stats is NULL or its struct_size is below the "
                          "1.0 size");

  ms_registry_stats_t s;
  memset(&s, 0, sizeof(s));
  unsigned slot = ms__br_rdlock(&reg->lock);
  s.hits = reg->retired_hits;
  for (size_t i = 0; i < reg->nbuckets; i++)
    for (ms_model_t *e = reg->buckets[i]; e != NULL; e = e->next) {
      s.hits += LOAD(e->hits);
      if (atomic_load(&e->state) == MS__READY && LOAD(e->refs) > 0)
        s.models_held++;
    }
  s.bytes_resident = reg->bytes_resident;
  s.models_resident = reg->models_resident;
  s.misses = LOAD(reg->misses);
  s.waits = LOAD(reg->waits);
  s.timeouts = LOAD(reg->timeouts);
  s.loads = LOAD(reg->loads);
  s.load_failures = LOAD(reg->load_failures);
  s.evictions = LOAD(reg->evictions);
  s.load_ns_total = LOAD(reg->load_ns_total);
  ms__br_rdunlock(&reg->lock, slot);

  /* Copy only what the caller's (possibly older, smaller) struct holds. */
  s.struct_size = sizeof(s);
  (void)ms__struct_out(stats, &s, sizeof(s), MS__REGISTRY_STATS_V1);
  return 0;
}

/* A snapshot of one entry: strings are copied so that the callback can run
 * without the lock and while the entry is evicted. */
typedef struct snap {
  ms_model_info_t info;
  char *strings;
} snap;

static int snapshot(ms_registry_t *reg, snap **out, size_t *count) {
  unsigned slot = ms__br_rdlock(&reg->lock);
  size_t n = 0;
  for (size_t i = 0; i < reg->nbuckets; i++)
    for (ms_model_t *e = reg->buckets[i]; e != NULL; e = e->next)
      if (atomic_load(&e->state) == MS__READY)
        n++;
  snap *v = ms__calloc(n > 0 ? n : 1, sizeof(*v));
  size_t k = 0;
  for (size_t i = 0; v != NULL && i < reg->nbuckets; i++)
    for (ms_model_t *e = reg->buckets[i]; e != NULL; e = e->next) {
      if (atomic_load(&e->state) != MS__READY)
        continue;
      snap *s = &v[k++];
      s->strings = ms__malloc(e->path_len + e->config_len + 2);
      if (s->strings == NULL)
        continue; /* reported below */
      memcpy(s->strings, e->path, e->path_len + 1);
      memcpy(s->strings + e->path_len + 1, e->config, e->config_len + 1);
      s->info.struct_size = sizeof(s->info);
      s->info.path = s->strings;
      s->info.config = s->strings + e->path_len + 1;
      s->info.bytes = e->bytes;
      s->info.refcount = LOAD(e->refs);
      s->info.hits = LOAD(e->hits);
      s->info.loaded_at_ns = e->loaded_at_ns;
      s->info.idle_since_ns = LOAD(e->refs) == 0 ? LOAD(e->idle_since_ns) : 0;
      s->info.load_ns = e->load_ns;
    }
  ms__br_rdunlock(&reg->lock, slot);

  int rc = v != NULL ? 0 : MS_ENOMEM;
  for (size_t i = 0; i < k; i++)
    if (v[i].strings == NULL)
      rc = MS_ENOMEM;
  if (rc != 0) {
    for (size_t i = 0; i < k; i++)
      ms__free(v[i].strings);
    ms__free(v);
    return ms__errmsg_set(reg, rc, "out of memory");
  }
  *out = v;
  *count = k;
  return 0;
}

static void snapshot_free(snap *v, size_t n) {
  for (size_t i = 0; i < n; i++)
    ms__free(v[i].strings);
  ms__free(v);
}

int ms_registry_foreach(ms_registry_t *reg,
                        int (*fn)(const ms_model_info_t *info, void *user),
                        void *user) {
  if (reg == NULL)
    return MS_EINVAL;
  if (fn == NULL)
    return ms__errmsg_set(reg, MS_EINVAL, "fn is NULL");
  snap *v = NULL;
  size_t n = 0;
  int rc = snapshot(reg, &v, &n);
  if (rc != 0)
    return rc;
  for (size_t i = 0; i < n; i++)
    if (fn(&v[i].info, user) != 0)
      break;
  snapshot_free(v, n);
  return 0;
}

static int add_u64(cJSON *obj, const char *name, uint64_t v) {
  /* JSON numbers are doubles: exact up to 2^53, which counters never
   * reach in practice. */
  return cJSON_AddNumberToObject(obj, name, (double)v) != NULL;
}

static int model_json(cJSON *models, const ms_model_info_t *m, uint64_t now) {
  cJSON *o = cJSON_CreateObject();
  if (o == NULL || !cJSON_AddItemToArray(models, o))
    return cJSON_Delete(o), 0;
  return cJSON_AddStringToObject(o, "path", m->path) != NULL &&
         cJSON_AddStringToObject(o, "config", m->config) != NULL &&
         add_u64(o, "bytes", m->bytes) && add_u64(o, "refcount", m->refcount) &&
         add_u64(o, "hits", m->hits) &&
         add_u64(o, "loaded_at_ns", m->loaded_at_ns) &&
         add_u64(o, "idle_ms",
                 m->idle_since_ns != 0 ? (now - m->idle_since_ns) / 1000000u
                                       : 0) &&
         add_u64(o, "load_ns", m->load_ns) &&
         add_u64(o, "load_ms", m->load_ns / 1000000u) &&
         add_u64(o, "age_ms", (now - m->loaded_at_ns) / 1000000u);
}

int ms_registry_stats_json(ms_registry_t *reg, char **json) {
  if (reg == NULL)
    return MS_EINVAL;
  if (json == NULL)
    return ms__errmsg_set(reg, MS_EINVAL, "json is NULL");

  ms_registry_stats_t s = MS_REGISTRY_STATS_INIT;
  snap *v = NULL;
  size_t n = 0;
  (void)ms_registry_stats(reg, &s);
  int rc = snapshot(reg, &v, &n);
  if (rc != 0)
    return rc;

  uint64_t now = uv_hrtime();
  cJSON *root = cJSON_CreateObject();
  cJSON *models = NULL;
  int ok = root != NULL && add_u64(root, "hits", s.hits) &&
           add_u64(root, "misses", s.misses) &&
           add_u64(root, "waits", s.waits) &&
           add_u64(root, "timeouts", s.timeouts) &&
           add_u64(root, "loads", s.loads) &&
           add_u64(root, "load_failures", s.load_failures) &&
           add_u64(root, "evictions", s.evictions) &&
           add_u64(root, "bytes_resident", s.bytes_resident) &&
           add_u64(root, "models_resident", s.models_resident) &&
           add_u64(root, "models_held", s.models_held) &&
           add_u64(root, "load_ns_total", s.load_ns_total) &&
           add_u64(root, "load_ms_total", s.load_ns_total / 1000000u) &&
           (models = cJSON_AddArrayToObject(root, "models")) != NULL;
  for (size_t i = 0; ok && i < n; i++)
    ok = model_json(models, &v[i].info, now);
  snapshot_free(v, n);

  rc = ok ? ms__json_print(root, json) : MS_ENOMEM;
  cJSON_Delete(root);
  return rc == 0 ? 0 : ms__errmsg_set(reg, rc, "out of memory building JSON");
}
