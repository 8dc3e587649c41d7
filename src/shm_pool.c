/* The shared-memory allocator: pool of pre-faulted regions, cache of other
 * processes' mappings, quotas, liveness token, sweep, stats. */
#include "internal/abi.h"
#include "internal/shm.h"

#include <cjson/cJSON.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 256 /* mappings per allocator are few; chains stay short */

typedef struct session {
  struct session *next;
  uint64_t bytes;
  char label[64];
} session;

struct ms_shm {
  uv_mutex_t lock;
  ms__ns *ns;
  char prefix[MS__PREFIX_MAX + 1];
  uint64_t token;
  ms__token tok;
  char token_name[MS__NAME_MAX + 8];
  uint64_t max_bytes, max_session_bytes, pool_bytes;
  uint32_t open_cache;
  size_t page, header_size;

  ms__map *buckets[NBUCKETS];
  ms__map *lru_head, *lru_tail; /* others' mappings nobody here holds */
  uint32_t lru_len;
  session *sessions;
  unsigned live_tensors;
  uint64_t bytes_allocated;
  uint64_t take_pass;
  ms_shm_stats_t st; /* counters; the gauges are computed on demand */
};

/* Identifies object-less failures in the per-thread error slots. */
static const char shm_errobj = 0;

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

/* ------------------------------------------------------------------------ */
/* The table of mappings                                                     */
/* ------------------------------------------------------------------------ */

static ms__map **bucket(ms_shm_t *shm, const char *name) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const char *p = name; *p; p++)
    h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
  return &shm->buckets[h % NBUCKETS];
}

static ms__map *map_find(ms_shm_t *shm, const char *name) {
  for (ms__map *m = *bucket(shm, name); m != NULL; m = m->next)
    if (strcmp(m->name, name) == 0)
      return m;
  return NULL;
}

static void lru_unlink(ms_shm_t *shm, ms__map *m) {
  if (m->lru_prev == NULL && shm->lru_head != m)
    return; /* not in the list */
  if (m->lru_prev != NULL)
    m->lru_prev->lru_next = m->lru_next;
  else
    shm->lru_head = m->lru_next;
  if (m->lru_next != NULL)
    m->lru_next->lru_prev = m->lru_prev;
  else
    shm->lru_tail = m->lru_prev;
  m->lru_prev = m->lru_next = NULL;
  shm->lru_len--;
}

/* Forgets a mapping: out of the table and the cache, unmapped, freed. */
static void map_drop(ms_shm_t *shm, ms__map *m) {
  for (ms__map **p = bucket(shm, m->name); *p != NULL; p = &(*p)->next)
    if (*p == m) {
      *p = m->next;
      break;
    }
  lru_unlink(shm, m);
  ms__region_unmap(&m->region);
  free(m);
}

/* Cached mappings of regions that died since (their creator unlinked them)
 * would pin the memory: drop them.  Lock held. */
static void cache_prune(ms_shm_t *shm) {
  ms__map *m = shm->lru_head;
  while (m != NULL) {
    ms__map *next = m->lru_next;
    if (MS__LIFE_STATE(atomic_load(&m->hdr->life)) != MS__LIVE)
      map_drop(shm, m);
    m = next;
  }
}

static void map_kill(ms_shm_t *shm, ms__map *m) {
  if (ms__life_kill(m->hdr))
    (void)ms__region_unlink(shm->ns, m->name);
}

/* ------------------------------------------------------------------------ */
/* Sessions and quotas                                                       */
/* ------------------------------------------------------------------------ */

static session *session_get(ms_shm_t *shm, const char *label, int create) {
  for (session *s = shm->sessions; s != NULL; s = s->next)
    if (strcmp(s->label, label) == 0)
      return s;
  if (!create)
    return NULL;
  session *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return NULL;
  memcpy(s->label, label, strlen(label) + 1);
  s->next = shm->sessions;
  shm->sessions = s;
  return s;
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
  session *s = session_get(shm, m->session, 0);
  if (s != NULL)
    s->bytes -= m->charged;
  m->charged = 0;
  shm->st.frees++;
}

/* Own regions that no process holds any more become free: their bytes are
 * credited back, and they are kept for reuse up to pool_bytes or unlinked.
 * Lock held. */
static void pool_refresh(ms_shm_t *shm) {
  uint64_t pooled = 0;
  for (size_t b = 0; b < NBUCKETS; b++) {
    ms__map *m = shm->buckets[b];
    while (m != NULL) {
      ms__map *next = m->next;
      if (m->own && m->handles == 0) {
        uint64_t life = atomic_load(&m->hdr->life);
        if (MS__LIFE_STATE(life) == MS__DEAD) {
          uncharge(shm, m); /* unlinked by its last holder */
          map_drop(shm, m);
        } else if (ms__slots_empty(m->hdr, -1)) {
          uncharge(shm, m);
          if (pooled + m->region.size > shm->pool_bytes) {
            map_kill(shm, m);
            map_drop(shm, m);
          } else {
            pooled += m->region.size;
          }
        }
      }
      m = next;
    }
  }
}

/* ------------------------------------------------------------------------ */
/* Create / destroy                                                          */
/* ------------------------------------------------------------------------ */

static int prefix_valid(const char *p) {
  size_t n = strlen(p);
  if (n == 0 || n > MS__PREFIX_MAX)
    return 0;
  for (size_t i = 0; i < n; i++) {
    char c = p[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || c == '-'))
      return 0;
  }
  return 1;
}

int ms_shm_create(const ms_shm_options_t *options, ms_shm_t **out) {
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  if (out == NULL)
    return ms__errmsg_set(&shm_errobj, MS_EINVAL, "out is NULL");
  if (options != NULL) {
    if (ms__struct_in(&o, sizeof(o), options, MS__SHM_OPTIONS_V1) != 0)
      return ms__errmsg_set(&shm_errobj, MS_EINVAL,
                            "options struct_size below the 1.0 size");
  }
  const char *prefix = o.prefix != NULL ? o.prefix : "ms-";
  if (!prefix_valid(prefix))
    return ms__errmsg_set(&shm_errobj, MS_EINVAL,
                          "prefix must be 1 to %d of [A-Za-z0-9_-]",
                          MS__PREFIX_MAX);

  ms_shm_t *shm = calloc(1, sizeof(*shm));
  if (shm == NULL)
    return ms__errmsg_set(&shm_errobj, MS_ENOMEM, "out of memory");
  memcpy(shm->prefix, prefix, strlen(prefix) + 1);
  shm->max_bytes = o.max_bytes;
  shm->max_session_bytes = o.max_session_bytes;
  shm->pool_bytes = o.pool_bytes;
  shm->open_cache = o.open_cache;
  shm->page = ms__page_size();
  shm->header_size = round_up(sizeof(ms__hdr), shm->page);
  shm->st.struct_size = sizeof(shm->st);

  int rc = ms__ns_open(o.dir, &shm->ns);
  if (rc != 0) {
    free(shm);
    return ms__errmsg_set(&shm_errobj, rc, "cannot open namespace %s: %s",
                          o.dir != NULL ? o.dir : "(shm_open)",
                          ms_strerror(rc));
  }
  for (int tries = 0; tries < 8; tries++) {
    rc = ms__random(&shm->token, sizeof(shm->token));
    if (rc != 0 || shm->token == 0)
      continue;
    ms__token_name(shm->token_name, sizeof(shm->token_name), shm->prefix,
                   shm->token);
    rc = ms__token_acquire(shm->ns, shm->token_name, &shm->tok);
    if (rc == 0)
      break;
  }
  if (rc != 0 || uv_mutex_init(&shm->lock) != 0) {
    if (rc == 0) {
      ms__token_release(shm->ns, shm->token_name, &shm->tok);
      rc = MS_ENOMEM;
    }
    ms__ns_close(shm->ns);
    free(shm);
    return ms__errmsg_set(&shm_errobj, rc == MS_ENOENT ? MS_ENOTSUP : rc,
                          "cannot create a liveness token: %s",
                          ms_strerror(rc));
  }
  (void)ms_shm_sweep(shm, NULL);
  *out = shm;
  return 0;
}

int ms_shm_destroy(ms_shm_t *shm) {
  if (shm == NULL)
    return 0;
  uv_mutex_lock(&shm->lock);
  if (shm->live_tensors > 0) {
    uv_mutex_unlock(&shm->lock);
    return ms__errmsg_set(shm, MS_EBUSY, "%u tensors still held",
                          shm->live_tensors);
  }
  for (size_t b = 0; b < NBUCKETS; b++)
    while (shm->buckets[b] != NULL) {
      ms__map *m = shm->buckets[b];
      /* Our free regions go now; ones others still hold go at their last
       * release, which will find our token dead. */
      if (m->own)
        map_kill(shm, m);
      map_drop(shm, m);
    }
  while (shm->sessions != NULL) {
    session *s = shm->sessions;
    shm->sessions = s->next;
    free(s);
  }
  uv_mutex_unlock(&shm->lock);
  ms__token_release(shm->ns, shm->token_name, &shm->tok);
  ms__errmsg_clear(shm);
  uv_mutex_destroy(&shm->lock);
  ms__ns_close(shm->ns);
  free(shm);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Allocate                                                                  */
/* ------------------------------------------------------------------------ */

static ms_tensor_t *tensor_new(ms_shm_t *shm, ms__map *m) {
  ms_tensor_t *t = calloc(1, sizeof(*t));
  if (t == NULL)
    return NULL;
  atomic_init(&t->refs, 1);
  t->shm = shm;
  t->map = m;
  t->gen = m->gen;
  return t;
}

/* Takes a free pooled region of a fitting size and recycles it (new
 * generation).  Lock held. */
static ms__map *pool_take(ms_shm_t *shm, size_t bytes) {
  const uint64_t pass = ++shm->take_pass;
  for (;;) {
    ms__map *best = NULL;
    for (size_t b = 0; b < NBUCKETS; b++)
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
    /* Another process opened it meanwhile (its descriptor was still
     * current): not free after all.  Try the next one. */
    if (slot >= 0)
      ms__slot_clear(best->hdr, slot, shm->token);
    best->skip = pass;
  }
}

static int region_new(ms_shm_t *shm, size_t bytes, ms__map **out) {
  ms__map *m = calloc(1, sizeof(*m));
  if (m == NULL)
    return MS_ENOMEM;
  unsigned char rnd[16];
  int rc = ms__random(rnd, sizeof(rnd));
  if (rc != 0) {
    free(m);
    return rc;
  }
  int n = snprintf(m->name, sizeof(m->name), "%s%016llx-", shm->prefix,
                   (unsigned long long)shm->token);
  for (int i = 0; i < 16; i++)
    n += snprintf(m->name + n, sizeof(m->name) - (size_t)n, "%02x", rnd[i]);

  size_t data = round_up(bytes > 0 ? bytes : 1, shm->page);
  if (data > SIZE_MAX - shm->header_size) {
    free(m);
    return MS_ERANGE;
  }
  rc = ms__region_create(shm->ns, m->name, shm->header_size + data, &m->region);
  if (rc != 0) {
    free(m);
    return rc;
  }
  m->hdr = m->region.base;
  m->own = 1;
  m->writable = 1;
  m->capacity = data;
  m->gen = 1;
  ms__hdr_init(m->hdr, shm->header_size, m->region.size, shm->token,
               shm->pool_bytes > 0 ? MS__POOLED : 0, m->gen);
  m->slot = ms__slot_claim(m->hdr, shm->token);
  ms__map **b = bucket(shm, m->name);
  m->next = *b;
  *b = m;
  *out = m;
  return 0;
}

int ms_tensor_alloc(ms_shm_t *shm, ms_dtype_t dtype, int ndim,
                    const int64_t *shape, const char *session_label,
                    ms_tensor_t **out) {
  if (shm == NULL)
    return MS_EINVAL;
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
  pool_refresh(shm);
  session *s = session_get(shm, label, 1);
  if (s == NULL) {
    rc = MS_ENOMEM;
    (void)ms__errmsg_set(shm, rc, "out of memory");
  } else if (over_quota(shm->max_bytes, shm->bytes_allocated, bytes)) {
    rc = ms__errmsg_set(shm, MS_EQUOTA,
                        "%zu bytes over the allocator quota (%llu of %llu "
                        "in use)",
                        bytes, (unsigned long long)shm->bytes_allocated,
                        (unsigned long long)shm->max_bytes);
  } else if (over_quota(shm->max_session_bytes, s->bytes, bytes)) {
    rc = ms__errmsg_set(shm, MS_EQUOTA,
                        "%zu bytes over the quota of session \"%s\" (%llu of "
                        "%llu in use)",
                        bytes, label, (unsigned long long)s->bytes,
                        (unsigned long long)shm->max_session_bytes);
  }
  ms__map *m = NULL;
  ms_tensor_t *t = NULL;
  if (rc == 0) {
    m = pool_take(shm, bytes);
    if (m != NULL)
      shm->st.pool_hits++;
    else if ((rc = region_new(shm, bytes, &m)) != 0)
      ms__errmsg_set(shm, rc, "cannot create a %zu-byte region: %s", bytes,
                     ms_strerror(rc));
  }
  if (rc == 0 && (t = tensor_new(shm, m)) == NULL) {
    /* Back to the pool: free, nobody holds it. */
    ms__slot_clear(m->hdr, m->slot, shm->token);
    m->slot = -1;
    rc = ms__errmsg_set(shm, MS_ENOMEM, "out of memory");
  }
  if (rc == 0) {
    ms__hdr_set_tensor(m->hdr, dtype, ndim, shape, bytes);
    /* Fills t from the header just written; cannot fail for a shape that
     * ms__shape_bytes accepted and a region of at least that size. */
    (void)ms__hdr_validate(m->hdr, m->region.size, t);
    t->writable = 1;
    m->handles = 1;
    m->charged = bytes;
    memcpy(m->session, label, strlen(label) + 1);
    s->bytes += bytes;
    shm->bytes_allocated += bytes;
    shm->live_tensors++;
    shm->st.allocations++;
    *out = t;
  }
  uv_mutex_unlock(&shm->lock);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Open                                                                      */
/* ------------------------------------------------------------------------ */

/* Our slot is gone and nobody else holds the region: decide its fate.
 * Lock held. */
static void after_last_clear(ms_shm_t *shm, ms__map *m) {
  if (!ms__slots_empty(m->hdr, -1))
    return;
  if (m->own) {
    pool_refresh(shm); /* credits it, pools or unlinks it */
    return;
  }
  uint64_t creator = 0;
  (void)ms__name_valid(m->name, NULL, &creator);
  char tname[MS__NAME_MAX + 8];
  ms__token_name(tname, sizeof(tname), shm->prefix, creator);
  if (!(m->hdr->flags & MS__POOLED) || !ms__token_alive(shm->ns, tname))
    map_kill(shm, m);
}

static int open_locked(ms_shm_t *shm, const char *name, uint64_t gen,
                       int writable, ms_tensor_t **out) {
  ms__map *m = map_find(shm, name);
  int cached = m != NULL;
  if (m == NULL) {
    m = calloc(1, sizeof(*m));
    if (m == NULL)
      return ms__errmsg_set(shm, MS_ENOMEM, "out of memory");
    memcpy(m->name, name, strlen(name) + 1);
    m->slot = -1;
    int rc = ms__region_open(shm->ns, name, sizeof(ms__hdr), &m->region);
    if (rc != 0) {
      free(m);
      return ms__errmsg_set(shm, rc, "cannot open region %s: %s", name,
                            ms_strerror(rc));
    }
    m->hdr = m->region.base;
    m->writable = 1;
    ms__map **b = bucket(shm, name);
    m->next = *b;
    *b = m;
  }

  /* The header is hostile until proven otherwise: validate it before
   * taking a holder slot, so that a bad region is never touched. */
  ms_tensor_t *t = tensor_new(shm, m);
  int rc = t == NULL ? MS_ENOMEM : ms__hdr_validate(m->hdr, m->region.size, t);
  size_t data_from = rc == 0 ? (size_t)((char *)t->data - (char *)m->hdr) : 0;
  if (rc == 0 && data_from % shm->page != 0)
    rc = MS_EBADREGION; /* data must start on a page to be protected */
  if (rc != 0) {
    free(t);
    if (!cached)
      map_drop(shm, m);
    return ms__errmsg_set(shm, rc, "region %s: %s", name,
                          rc == MS_EBADREGION ? "malformed or hostile header"
                                              : ms_strerror(rc));
  }

  if (m->handles == 0) {
    int slot = ms__slot_claim(m->hdr, shm->token);
    uint64_t life = atomic_load(&m->hdr->life);
    if (slot < 0)
      rc = ms__errmsg_set(shm, MS_EBUSY, "region %s has %d holders", name,
                          MS__SLOTS);
    else if (MS__LIFE_STATE(life) != MS__LIVE)
      rc = ms__errmsg_set(shm, MS_ENOENT, "region %s was released", name);
    else if (MS__LIFE_GEN(life) != gen)
      rc = ms__errmsg_set(shm, MS_ESTALE,
                          "region %s was recycled (generation %llx, "
                          "descriptor %llx)",
                          name, (unsigned long long)MS__LIFE_GEN(life),
                          (unsigned long long)gen);
    if (rc != 0) {
      free(t);
      int own = m->own;
      if (slot >= 0) {
        ms__slot_clear(m->hdr, slot, shm->token);
        after_last_clear(shm, m); /* may free an own m */
      }
      if (!own &&
          (!cached || MS__LIFE_STATE(atomic_load(&m->hdr->life)) != MS__LIVE))
        map_drop(shm, m);
      return rc;
    }
    /* Holding it now, the creator cannot recycle it under us; the header
     * we validated belongs to this generation (a recycle in between would
     * have changed the generation checked above). */
    m->slot = slot;
    m->gen = gen;
  } else if (m->gen != gen) {
    free(t);
    return ms__errmsg_set(shm, MS_ESTALE,
                          "region %s holds generation %llx, not %llx", name,
                          (unsigned long long)m->gen, (unsigned long long)gen);
  }
  t->gen = gen;
  t->writable = writable || m->own;

  if (!m->own && m->writable != writable && m->handles == 0) {
    rc = ms__region_protect(&m->region, data_from, writable);
    m->writable = rc == 0 ? writable : m->writable;
  } else if (writable && !m->writable) {
    rc = ms__region_protect(&m->region, data_from, 1);
    m->writable = rc == 0;
  }
  if (rc != 0) {
    free(t);
    if (m->handles == 0) {
      int own = m->own;
      ms__slot_clear(m->hdr, m->slot, shm->token);
      m->slot = -1;
      after_last_clear(shm, m); /* may free an own m */
      if (!own)
        map_drop(shm, m);
    }
    return ms__errmsg_set(shm, rc, "region %s: %s", name, ms_strerror(rc));
  }
  lru_unlink(shm, m);
  m->handles++;
  shm->live_tensors++;
  shm->st.opens++;
  shm->st.open_cache_hits += cached;
  *out = t;
  return 0;
}

int ms_tensor_open(ms_shm_t *shm, const char *descriptor, unsigned flags,
                   ms_tensor_t **out) {
  if (shm == NULL)
    return MS_EINVAL;
  if (out == NULL || (flags & ~MS_OPEN_WRITE) != 0)
    return ms__errmsg_set(shm, MS_EINVAL, "out is NULL or unknown flags");
  char name[MS__NAME_MAX + 1];
  uint64_t gen = 0;
  if (ms__descriptor_parse(descriptor, name, &gen) != 0)
    return ms__errmsg_set(shm, MS_EINVAL, "malformed descriptor");
  uv_mutex_lock(&shm->lock);
  int rc = open_locked(shm, name, gen, (flags & MS_OPEN_WRITE) != 0, out);
  uv_mutex_unlock(&shm->lock);
  return rc;
}

/* The last tensor handle on a mapping went away. */
void ms__shm_put(ms_shm_t *shm, ms__map *m) {
  uv_mutex_lock(&shm->lock);
  shm->live_tensors--;
  if (--m->handles == 0) {
    int own = m->own;
    ms__slot_clear(m->hdr, m->slot, shm->token);
    m->slot = -1;
    after_last_clear(shm, m); /* may free an own m */
    if (!own) {
      if (MS__LIFE_STATE(atomic_load(&m->hdr->life)) != MS__LIVE ||
          shm->open_cache == 0) {
        map_drop(shm, m);
      } else {
        /* Keep the mapping for a fast reopen; evict the oldest. */
        m->lru_prev = NULL;
        m->lru_next = shm->lru_head;
        if (shm->lru_head != NULL)
          shm->lru_head->lru_prev = m;
        else
          shm->lru_tail = m;
        shm->lru_head = m;
        if (++shm->lru_len > shm->open_cache)
          map_drop(shm, shm->lru_tail);
        cache_prune(shm);
      }
    }
  }
  uv_mutex_unlock(&shm->lock);
}

/* ------------------------------------------------------------------------ */
/* Sweep                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct sweep_ctx {
  ms_shm_t *shm;
  size_t reclaimed;
  struct {
    uint64_t token;
    int alive;
  } seen[64];
  int nseen;
} sweep_ctx;

static int alive_cached(sweep_ctx *c, uint64_t token) {
  if (token == c->shm->token)
    return 1;
  for (int i = 0; i < c->nseen; i++)
    if (c->seen[i].token == token)
      return c->seen[i].alive;
  char tname[MS__NAME_MAX + 8];
  ms__token_name(tname, sizeof(tname), c->shm->prefix, token);
  int alive = ms__token_alive(c->shm->ns, tname);
  if (c->nseen < 64) {
    c->seen[c->nseen].token = token;
    c->seen[c->nseen++].alive = alive;
  }
  return alive;
}

static int sweep_one(const char *name, void *user) {
  sweep_ctx *c = user;
  ms_shm_t *shm = c->shm;
  size_t plen = strlen(shm->prefix);
  size_t nlen = strlen(name);
  uint64_t token = 0;

  /* A token whose holder is gone. */
  if (nlen == plen + 16 + 5 && strcmp(name + plen + 16, ".lock") == 0) {
    char hex[17];
    memcpy(hex, name + plen, 16);
    hex[16] = '\0';
    char *end = NULL;
    token = strtoull(hex, &end, 16);
    if (end == hex + 16 && !alive_cached(c, token))
      (void)ms__region_unlink(shm->ns, name);
    return 0;
  }
  size_t name_prefix = 0;
  if (ms__name_valid(name, &name_prefix, &token) != 0 || name_prefix != plen)
    return 0; /* not one of ours */

  ms__map *mine = map_find(shm, name);
  ms__region tmp = {0};
  ms__hdr *h = mine != NULL ? mine->hdr : NULL;
  if (h == NULL) {
    int rc = ms__region_open(shm->ns, name, 0, &tmp);
    if (rc == MS_ENOENT)
      return 0;
    if (rc == 0 && ms__hdr_plausible(tmp.base, tmp.size))
      h = tmp.base;
  }
  if (h == NULL) {
    /* Empty, truncated or garbage: a creation cut short by a crash, if its
     * creator is gone. */
    if (!alive_cached(c, token) && ms__region_unlink(shm->ns, name) == 0)
      c->reclaimed++;
    ms__region_unmap(&tmp);
    return 0;
  }
  for (int i = 0; i < MS__SLOTS; i++) {
    uint64_t t = atomic_load(&h->slots[i]);
    if (t != 0 && !alive_cached(c, t))
      ms__slot_clear(h, i, t);
  }
  if ((mine == NULL || !mine->own) && ms__slots_empty(h, -1) &&
      (!(h->flags & MS__POOLED) || !alive_cached(c, token)) &&
      ms__life_kill(h) && ms__region_unlink(shm->ns, name) == 0)
    c->reclaimed++;
  ms__region_unmap(&tmp);
  return 0;
}

int ms_shm_sweep(ms_shm_t *shm, size_t *reclaimed) {
  if (shm == NULL)
    return MS_EINVAL;
  sweep_ctx c;
  memset(&c, 0, sizeof(c));
  c.shm = shm;
  uv_mutex_lock(&shm->lock);
  int rc = ms__ns_list(shm->ns, shm->prefix, sweep_one, &c);
  if (rc == MS_ENOTSUP) {
    /* The namespace cannot be listed (Win32, where a region dies with its
     * last handle anyway): release dead holders of the regions we know. */
    size_t n = 0, k = 0;
    for (size_t b = 0; b < NBUCKETS; b++)
      for (ms__map *m = shm->buckets[b]; m != NULL; m = m->next)
        n++;
    /* Copies: sweep_one may drop mappings from the table. */
    char(*names)[MS__NAME_MAX + 1] = malloc((n > 0 ? n : 1) * sizeof(*names));
    for (size_t b = 0; names != NULL && b < NBUCKETS; b++)
      for (ms__map *m = shm->buckets[b]; m != NULL; m = m->next)
        memcpy(names[k++], m->name, sizeof(m->name));
    for (size_t i = 0; i < k; i++)
      (void)sweep_one(names[i], &c);
    rc = names != NULL ? 0 : MS_ENOMEM;
    free(names);
  }
  pool_refresh(shm); /* our regions freed by dead holders */
  uv_mutex_unlock(&shm->lock);
  if (reclaimed != NULL)
    *reclaimed = c.reclaimed;
  return rc != 0 ? ms__errmsg_set(shm, rc, "cannot list the namespace: %s",
                                  ms_strerror(rc))
                 : 0;
}

/* ------------------------------------------------------------------------ */
/* Stats                                                                     */
/* ------------------------------------------------------------------------ */

static ms_shm_stats_t stats_locked(ms_shm_t *shm) {
  ms_shm_stats_t s = shm->st;
  for (size_t b = 0; b < NBUCKETS; b++)
    for (ms__map *m = shm->buckets[b]; m != NULL; m = m->next) {
      s.bytes_mapped += m->region.size;
      if (!m->own)
        s.regions_opened++;
      else if (m->charged != 0)
        s.regions_active++;
      else
        s.regions_pooled++;
    }
  s.bytes_allocated = shm->bytes_allocated;
  return s;
}

int ms_shm_stats(ms_shm_t *shm, ms_shm_stats_t *stats) {
  if (shm == NULL)
    return MS_EINVAL;
  if (stats == NULL || stats->struct_size < sizeof(size_t))
    return ms__errmsg_set(shm, MS_EINVAL, "stats is NULL or too small");
  uv_mutex_lock(&shm->lock);
  pool_refresh(shm);
  ms_shm_stats_t s = stats_locked(shm);
  uv_mutex_unlock(&shm->lock);
  size_t n = stats->struct_size < sizeof(s) ? stats->struct_size : sizeof(s);
  s.struct_size = stats->struct_size;
  memcpy(stats, &s, n);
  return 0;
}

int ms_shm_stats_json(ms_shm_t *shm, char **json) {
  if (shm == NULL)
    return MS_EINVAL;
  if (json == NULL)
    return ms__errmsg_set(shm, MS_EINVAL, "json is NULL");
  ms_shm_stats_t s = MS_SHM_STATS_INIT;
  (void)ms_shm_stats(shm, &s);
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
  int rc = ok ? ms__json_print(o, json) : MS_ENOMEM;
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
