/* The shared-memory allocator: create/destroy, allocation from a pool of
 * pre-faulted regions, quotas per allocator and per session, the release
 * side of a tensor, and stats.  Opening others' regions is in
 * shm_open_cache.c, liveness and sweeping in shm_sweep.c; the protocol all
 * three follow is written down in internal/shm.h. */
#include "internal/abi.h"
#include "internal/shm.h"

#include <cjson/cJSON.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Identifies object-less failures in the per-thread error slots. */
static const char shm_errobj = 0;

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

int ms__shm_inherited(const ms_shm_t *shm) {
  return shm->epoch != ms__fork_epoch();
}

/* ------------------------------------------------------------------------ */
/* Sessions and quotas                                                       */
/* ------------------------------------------------------------------------ */

static ms__session *session_get(ms_shm_t *shm, const char *label, int create) {
  for (ms__session *s = shm->sessions; s != NULL; s = s->next)
    if (strcmp(s->label, label) == 0)
      return s;
  if (!create)
    return NULL;
  ms__session *s = ms__calloc(1, sizeof(*s));
  if (s == NULL)
    return NULL;
  memcpy(s->label, label, strlen(label) + 1);
  s->next = shm->sessions;
  shm->sessions = s;
  return s;
}

/* A session with nothing charged is forgotten: per-request labels must not
 * accumulate. */
static void session_drop_if_empty(ms_shm_t *shm, ms__session *s) {
  if (s->bytes != 0)
    return;
  for (ms__session **p = &shm->sessions; *p != NULL; p = &(*p)->next)
    if (*p == s) {
      *p = s->next;
      ms__free(s);
      return;
    }
}

/* Would `bytes` more go over `cap` with `used` taken?  (cap 0: no limit;
 * written so that nothing overflows.) */
static int over_quota(uint64_t cap, uint64_t used, size_t bytes) {
  return cap != 0 && (bytes > cap || used > cap - bytes);
}

static void uncharge(ms_shm_t *shm, ms__map *m) {
  if (m->charged == 0)
    return;
  shm->bytes_allocated -= m->charged;
  ms__session *s = session_get(shm, m->session, 0);
  if (s != NULL) {
    s->bytes -= m->charged;
    session_drop_if_empty(shm, s);
  }
  m->charged = 0;
  shm->st.frees++;
}

/* ------------------------------------------------------------------------ */
/* The pool                                                                  */
/* ------------------------------------------------------------------------ */

void ms__pool_refresh(ms_shm_t *shm) {
  uint64_t pooled = 0;
  for (size_t b = 0; b < MS__NBUCKETS; b++) {
    ms__map *m = shm->buckets[b];
    while (m != NULL) {
      ms__map *next = m->next;
      if (m->own && m->handles == 0) {
        /* A holder that died between its last clear and LIVE -> FREE left
         * the region LIVE with no holder: finish its release (I4). */
        (void)ms__life_free(m->hdr);
        unsigned st = MS__LIFE_STATE(atomic_load(&m->hdr->life));
        if (st == MS__DEAD) { /* unlinked by a holder or a sweeper */
          uncharge(shm, m);
          ms__map_drop(shm, m);
        } else if (st == MS__FREE) {
          uncharge(shm, m);
          if (!m->frozen && pooled + m->region.size <= shm->pool_bytes)
            pooled += m->region.size;
          else if (ms__region_kill(shm, m->hdr, m->name))
            ms__map_drop(shm, m);
          /* else a late opener holds it (I4): look again next time */
        }
      }
      m = next;
    }
  }
}

/* Takes a free pooled region of a fitting size and recycles it (new
 * generation).  Lock held. */
static ms__map *pool_take(ms_shm_t *shm, size_t bytes) {
  const uint64_t pass = ++shm->take_pass;
  for (;;) {
    ms__map *best = NULL;
    for (size_t b = 0; b < MS__NBUCKETS; b++)
      for (ms__map *m = shm->buckets[b]; m != NULL; m = m->next)
        if (m->own && m->handles == 0 && m->charged == 0 && m->skip != pass &&
            m->capacity >= bytes && m->capacity <= 2 * bytes + shm->page &&
            (best == NULL || m->capacity < best->capacity))
          best = m;
    if (best == NULL)
      return NULL;
    int slot = ms__slot_claim(best->hdr, shm->token);
    uint64_t gen = 0;
    if (slot >= 0 && ms__life_recycle(best->hdr, slot, &gen) == 0) {
      best->slot = slot;
      best->gen = gen;
      return best;
    }
    /* A late holder still has it (I4), or it died: not free after all. */
    ms__slot_clear(best->hdr, slot, shm->token);
    best->skip = pass;
  }
}

/* A new region of `size` bytes: named `prefix` + creator + identity, or
 * anonymous (the locator from where the platform put it). */
static int region_make(ms_shm_t *shm, const char *prefix, size_t size,
                       const uint8_t ident[16], ms__map *m) {
  if (prefix == NULL && shm->backend == MS_SHM_BACKEND_MEMFD) {
    int64_t pid = 0, fd = -1;
    int rc = ms__region_create_anon(size, &m->region, &pid, &fd);
    if (rc == 0)
      ms__locator_format(m->name, sizeof(m->name), pid, fd, shm->token, ident);
    return rc;
  }
  int n = snprintf(m->name, sizeof(m->name), "%s%016llx-",
                   prefix != NULL ? prefix : shm->prefix,
                   (unsigned long long)shm->token);
  for (int i = 0; i < 16; i++)
    n += snprintf(m->name + n, sizeof(m->name) - (size_t)n, "%02x", ident[i]);
  return ms__region_create(shm->ns, m->name, size, &m->region);
}

int ms__region_new(ms_shm_t *shm, const char *prefix, size_t bytes,
                   uint32_t flags, ms__map **out) {
  if (bytes > SIZE_MAX - shm->header_size - shm->page)
    return MS_ERANGE;
  ms__map *m = ms__calloc(1, sizeof(*m));
  if (m == NULL)
    return MS_ENOMEM;
  uint8_t ident[16];
  size_t data = round_up(bytes > 0 ? bytes : 1, shm->page);
  int rc = ms__random(ident, sizeof(ident));
  if (rc == 0)
    rc = region_make(shm, prefix, shm->header_size + data, ident, m);
  if (rc != 0) {
    ms__free(m);
    return rc;
  }
  m->hdr = m->region.base;
  m->own = 1;
  m->writable = 1;
  m->capacity = data;
  m->gen = 1;
  /* CREATING until our slot is in (I1, I3): a concurrent sweep sees a
   * holder, or a creating region of a live creator, never a free one. */
  ms__hdr_init(m->hdr, shm->header_size, shm->token, flags, m->gen);
  memcpy(m->hdr->ident, ident, sizeof(ident));  /* a locator's check */
  m->slot = ms__slot_claim(m->hdr, shm->token); /* the slots are all 0 */
  atomic_store(&m->hdr->life, MS__LIFE(m->gen, MS__LIVE));
  ms__map_insert(shm, m);
  *out = m;
  return 0;
}

ms_tensor_t *ms__tensor_new(ms_shm_t *shm, ms__map *m) {
  ms_tensor_t *t = ms__calloc(1, sizeof(*t));
  if (t == NULL)
    return NULL;
  atomic_init(&t->refs, 1);
  t->shm = shm;
  t->map = m;
  t->gen = m->gen;
  return t;
}

/* Quota checks; 0 or MS_EQUOTA with the message set.  Lock held. */
static int quota_check(ms_shm_t *shm, ms__session *s, const char *label,
                       size_t bytes) {
  if (over_quota(shm->max_bytes, shm->bytes_allocated, bytes))
    return ms__errmsg_set(shm, MS_EQUOTA,
                          "%zu bytes over the allocator quota (%llu of %llu "
                          "in use)",
                          bytes, (unsigned long long)shm->bytes_allocated,
                          (unsigned long long)shm->max_bytes);
  if (over_quota(shm->max_session_bytes, s != NULL ? s->bytes : 0, bytes))
    return ms__errmsg_set(shm, MS_EQUOTA,
                          "%zu bytes over the quota of session \"%s\" (%llu "
                          "of %llu in use)",
                          bytes, label,
                          (unsigned long long)(s != NULL ? s->bytes : 0),
                          (unsigned long long)shm->max_session_bytes);
  return 0;
}

/* A pooled or new region for `bytes`, held by us.  Lock held. */
static int region_get(ms_shm_t *shm, size_t bytes, ms__map **out) {
  ms__map *m = pool_take(shm, bytes);
  if (m != NULL) {
    shm->st.pool_hits++;
    *out = m;
    return 0;
  }
  const uint32_t flags = shm->pool_bytes > 0 ? MS__POOLED : 0;
  int rc = ms__region_new(shm, NULL, bytes, flags, out);
  if (rc == MS_ENOSPC) {
    /* Dead processes' regions may fill the store, and our pool may: give
     * both back and try once more. */
    (void)ms__sweep_locked(shm, NULL);
    size_t keep = shm->pool_bytes;
    shm->pool_bytes = 0;
    ms__pool_refresh(shm);
    shm->pool_bytes = keep;
    rc = ms__region_new(shm, NULL, bytes, flags, out);
  }
  return rc;
}

int ms_tensor_alloc(ms_shm_t *shm, ms_dtype_t dtype, int ndim,
                    const int64_t *shape, const char *session_label,
                    ms_tensor_t **out) {
  if (shm == NULL)
    return MS_EINVAL;
  MS__REFUSE_IF_INHERITED(shm);
  if (out == NULL)
    return ms__errmsg_set(shm, MS_EINVAL, "out is NULL");
  size_t bytes = 0;
  int rc = ms__shape_bytes(dtype, ndim, shape, &bytes);
  if (rc != 0)
    return ms__errmsg_set(shm, rc,
                          rc == MS_ERANGE ? "tensor size overflows"
                                          : "bad dtype, ndim (0..%d) or shape",
                          MS_MAX_NDIM);
  const char *label = session_label != NULL ? session_label : "";
  if (strlen(label) > 63)
    return ms__errmsg_set(shm, MS_EINVAL, "session label over 63 bytes");

  uv_mutex_lock(&shm->lock);
  ms__pool_refresh(shm);
  ms__session *s = session_get(shm, label, 0);
  rc = quota_check(shm, s, label, bytes);
  if (rc == MS_EQUOTA) {
    /* Regions that dead consumers still held count against us until a
     * sweep releases them: sweep once before refusing. */
    (void)ms__sweep_locked(shm, NULL);
    s = session_get(shm, label, 0);
    rc = quota_check(shm, s, label, bytes);
  }
  if (rc == 0 && s == NULL && (s = session_get(shm, label, 1)) == NULL) {
    (void)ms__errmsg_set(shm, MS_ENOMEM, "out of memory");
    rc = MS_ENOMEM;
  }
  ms__map *m = NULL;
  ms_tensor_t *t = NULL;
  if (rc == 0 && (rc = region_get(shm, bytes, &m)) != 0)
    (void)ms__errmsg_set(shm, rc, "cannot create a %zu-byte region: %s", bytes,
                         ms_strerror(rc));
  if (rc == 0 && (t = ms__tensor_new(shm, m)) == NULL) {
    /* Back to the pool: ours, free, nobody else holds it. */
    ms__slot_clear(m->hdr, m->slot, shm->token);
    m->slot = -1;
    (void)ms__life_free(m->hdr);
    rc = ms__errmsg_set(shm, MS_ENOMEM, "out of memory");
  }
  if (rc == 0 && s != NULL) {
    ms__hdr_set_tensor(m->hdr, dtype, ndim, shape, bytes);
    ms__tensor_fill(t, dtype, ndim, shape, bytes,
                    (char *)m->hdr + shm->header_size);
    t->writable = 1;
    m->handles = 1;
    m->charged = bytes;
    memcpy(m->session, label, strlen(label) + 1);
    s->bytes += bytes;
    shm->bytes_allocated += bytes;
    shm->live_tensors++;
    shm->st.allocations++;
    *out = t;
  } else if (s != NULL) {
    session_drop_if_empty(shm, s);
  }
  uv_mutex_unlock(&shm->lock);
  return rc;
}

/* The last tensor handle on a mapping went away. */
void ms__shm_put(ms_shm_t *shm, ms__map *m) {
  if (MS__UNLIKELY(ms__shm_inherited(shm))) {
    /* The child's copy only counts; the parent's slot, pool and regions
     * are not ours to change (I8).  Inherited objects are used from one
     * thread in the child, and the inherited lock is never taken. */
    shm->live_tensors--;
    m->handles--;
    return;
  }
  uv_mutex_lock(&shm->lock);
  shm->live_tensors--;
  if (--m->handles == 0) {
    ms__slot_clear(m->hdr, m->slot, shm->token);
    m->slot = -1;
    ms__after_last_clear(shm, m);
    if (m->own)
      ms__pool_refresh(shm); /* credits it, pools or unlinks it */
    else
      ms__cache_put(shm, m); /* may drop m */
  }
  uv_mutex_unlock(&shm->lock);
}

/* ------------------------------------------------------------------------ */
/* Create / destroy                                                          */
/* ------------------------------------------------------------------------ */

int ms_shm_create(const ms_shm_options_t *options, ms_shm_t **out) {
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  if (out == NULL)
    return ms__errmsg_set(&shm_errobj, MS_EINVAL, "out is NULL");
  if (options != NULL &&
      ms__struct_in(&o, sizeof(o), options, MS__SHM_OPTIONS_V1) != 0)
    return ms__errmsg_set(&shm_errobj, MS_EINVAL,
                          "options struct_size below the 1.0 size");
  const char *prefix = o.prefix != NULL ? o.prefix : "ms-";
  if (!ms__prefix_valid(prefix))
    return ms__errmsg_set(&shm_errobj, MS_EINVAL,
                          "prefix must be 1 to %d of [A-Za-z0-9_-]",
                          MS__PREFIX_MAX);

  ms_shm_t *shm = ms__calloc(1, sizeof(*shm));
  if (shm == NULL)
    return ms__errmsg_set(&shm_errobj, MS_ENOMEM, "out of memory");
  memcpy(shm->prefix, prefix, strlen(prefix) + 1);
  shm->max_bytes = o.max_bytes;
  shm->max_session_bytes = o.max_session_bytes;
  shm->pool_bytes = o.pool_bytes;
  shm->open_cache = o.open_cache;
  shm->open_cache_bytes = o.open_cache_bytes;
  shm->allowed_uid = o.allowed_uid;
  shm->backend = o.backend;
  if (o.backend == MS_SHM_BACKEND_AUTO) {
    /* memfd only where a second process was seen reopening one, and
     * only for the default namespace: a `dir` asks for files there. */
    int made = 0;
    shm->backend = o.dir == NULL && ms__anon_probe(&made)
                       ? MS_SHM_BACKEND_MEMFD
                       : MS_SHM_BACKEND_NAMED;
  } else if (o.backend > MS_SHM_BACKEND_AUTO) {
    ms__free(shm);
    return ms__errmsg_set(&shm_errobj, MS_EINVAL, "unknown backend %u",
                          o.backend);
  }
  shm->page = ms__page_size();
  shm->header_size = round_up(sizeof(ms__hdr), shm->page);
  shm->st.struct_size = sizeof(shm->st);

  int rc = ms__ns_open(o.dir, &shm->ns);
  if (rc != 0) {
    ms__free(shm);
    return ms__errmsg_set(&shm_errobj, rc, "cannot open namespace %s: %s",
                          o.dir != NULL ? o.dir : "(shm_open)",
                          ms_strerror(rc));
  }
  shm->epoch = ms__fork_epoch();
  for (int tries = 0; tries < 8; tries++) {
    rc = ms__random(&shm->token, sizeof(shm->token));
    if (rc != 0 || shm->token == 0)
      continue;
    ms__token_name(shm->token_name, sizeof(shm->token_name), shm->token);
    rc = ms__token_acquire(
        shm->ns, shm->token_name,
        shm->backend == MS_SHM_BACKEND_MEMFD ? MS__TOKEN_NOFILE : 0, &shm->tok);
    if (rc == 0)
      break;
  }
  if (rc != 0 || uv_mutex_init(&shm->lock) != 0) {
    if (rc == 0) {
      ms__token_release(shm->ns, shm->token_name, &shm->tok);
      rc = MS_ENOMEM;
    }
    ms__ns_close(shm->ns);
    ms__free(shm);
    return ms__errmsg_set(&shm_errobj, rc == MS_ENOENT ? MS_ENOTSUP : rc,
                          "cannot create a liveness token: %s",
                          ms_strerror(rc));
  }
  /* Dead processes' regions of our prefix and their tokens, as ever; the
   * rings and images ms_shm_sweep() also reclaims are left to the caller's
   * choice of moment (a start-up must not cost or change more). */
  uv_mutex_lock(&shm->lock);
  (void)ms__sweep_locked(shm, NULL);
  uv_mutex_unlock(&shm->lock);
  *out = shm;
  return 0;
}

int ms_shm_destroy(ms_shm_t *shm) {
  if (shm == NULL)
    return 0;
  const int inherited = ms__shm_inherited(shm);
  if (!inherited)
    uv_mutex_lock(&shm->lock);
  if (shm->live_tensors > 0) {
    if (!inherited)
      uv_mutex_unlock(&shm->lock);
    return ms__errmsg_set(shm, MS_EBUSY, "%u tensors still held",
                          shm->live_tensors);
  }
  for (size_t b = 0; b < MS__NBUCKETS; b++)
    while (shm->buckets[b] != NULL) {
      ms__map *m = shm->buckets[b];
      /* Our free regions go now; ones others still hold go at their last
       * release, which will find our token dead.  An inherited copy only
       * unmaps the child's view (I8). */
      if (m->own && !inherited) {
        (void)ms__life_free(m->hdr);
        (void)ms__region_kill(shm, m->hdr, m->name);
      }
      ms__map_drop(shm, m);
    }
  while (shm->sessions != NULL) {
    ms__session *s = shm->sessions;
    shm->sessions = s->next;
    ms__free(s);
  }
  if (inherited) {
    /* The parent's lock may have been held by another thread at fork():
     * it is neither taken nor destroyed here, only freed with shm. */
    ms__token_forget(&shm->tok);
  } else {
    uv_mutex_unlock(&shm->lock);
    ms__token_release(shm->ns, shm->token_name, &shm->tok);
    uv_mutex_destroy(&shm->lock);
  }
  ms__errmsg_clear(shm);
  ms__ns_close(shm->ns);
  ms__free(shm);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Stats: read-only, they change nothing (not even the pool).               */
/* ------------------------------------------------------------------------ */

/* Regions freed by their last holder elsewhere are counted as free even
 * before the next allocation credits them (ms__pool_refresh). */
static ms_shm_stats_t stats_locked(ms_shm_t *shm) {
  ms_shm_stats_t s = shm->st;
  s.bytes_allocated = shm->bytes_allocated;
  for (size_t b = 0; b < MS__NBUCKETS; b++)
    for (ms__map *m = shm->buckets[b]; m != NULL; m = m->next) {
      s.bytes_mapped += m->region.size;
      if (!m->own) {
        s.regions_opened++;
        continue;
      }
      unsigned st = MS__LIFE_STATE(atomic_load(&m->hdr->life));
      int is_free = m->handles == 0 &&
                    (m->charged == 0 || st == MS__FREE || st == MS__DEAD);
      if (is_free && m->charged != 0) {
        s.bytes_allocated -= m->charged;
        s.frees++;
      }
      if (!is_free)
        s.regions_active++;
      else if (st != MS__DEAD)
        s.regions_pooled++;
    }
  return s;
}

int ms_shm_stats(ms_shm_t *shm, ms_shm_stats_t *stats) {
  if (shm == NULL)
    return MS_EINVAL;
  MS__REFUSE_IF_INHERITED(shm);
  if (stats == NULL)
    return ms__errmsg_set(shm, MS_EINVAL, "stats is NULL");
  uv_mutex_lock(&shm->lock);
  ms_shm_stats_t s = stats_locked(shm);
  uv_mutex_unlock(&shm->lock);
  if (ms__struct_out(stats, &s, sizeof(s), sizeof(size_t)) != 0)
    return ms__errmsg_set(shm, MS_EINVAL, "stats struct_size too small");
  return 0;
}

int ms_shm_stats_json(ms_shm_t *shm, char **json) {
  if (shm == NULL)
    return MS_EINVAL;
  if (json == NULL)
    return ms__errmsg_set(shm, MS_EINVAL, "json is NULL");
  ms_shm_stats_t s = MS_SHM_STATS_INIT;
  int rc = ms_shm_stats(shm, &s);
  if (rc != 0)
    return rc;
  cJSON *o = cJSON_CreateObject();
  const struct {
    const char *name;
    uint64_t v;
  } f[] = {{"regions_active", s.regions_active},
           {"regions_pooled", s.regions_pooled},
           {"regions_opened", s.regions_opened},
           {"bytes_mapped", s.bytes_mapped},
           {"bytes_allocated", s.bytes_allocated},
           {"allocations", s.allocations},
           {"pool_hits", s.pool_hits},
           {"frees", s.frees},
           {"opens", s.opens},
           {"open_cache_hits", s.open_cache_hits}};
  int ok = o != NULL;
  for (size_t i = 0; ok && i < sizeof(f) / sizeof(f[0]); i++)
    ok = cJSON_AddNumberToObject(o, f[i].name, (double)f[i].v) != NULL;
  rc = ok ? ms__json_print(o, json) : MS_ENOMEM;
  cJSON_Delete(o);
  return rc == 0 ? 0 : ms__errmsg_set(shm, rc, "out of memory");
}

const char *ms_shm_errmsg(const ms_shm_t *shm) {
  return ms__errmsg_get(shm != NULL ? (const void *)shm : &shm_errobj);
}

/* For ms_tensor_deserialize's object-less failures. */
int ms__shm_errmsg_none(int code, const char *msg) {
  return ms__errmsg_set(&shm_errobj, code, "%s", msg);
}
