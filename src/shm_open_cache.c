/* Opening other processes' regions: the allocator's table of mappings, the
 * open path (validate a private snapshot, then take a holder slot), and the
 * cache that keeps idle mappings for an O(1) reopen, bounded by entries
 * and by bytes.  The protocol is in internal/shm.h. */
#include "internal/shm.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* The table of mappings: keyed by (name, own, writable)                     */
/* ------------------------------------------------------------------------ */

static ms__map **bucket(ms_shm_t *shm, const char *name) {
  return &shm->buckets[ms__str_hash(name) % MS__NBUCKETS];
}

ms__map *ms__map_find(ms_shm_t *shm, const char *name, int own, int writable) {
  for (ms__map *m = *bucket(shm, name); m != NULL; m = m->next)
    if (m->own == own && m->writable == writable && strcmp(m->name, name) == 0)
      return m;
  return NULL;
}

void ms__map_insert(ms_shm_t *shm, ms__map *m) {
  ms__map **b = bucket(shm, m->name);
  m->next = *b;
  *b = m;
}

static void lru_unlink(ms_shm_t *shm, ms__map *m) {
  if (!m->in_lru)
    return;
  if (m->lru_prev != NULL)
    m->lru_prev->lru_next = m->lru_next;
  else
    shm->lru_head = m->lru_next;
  if (m->lru_next != NULL)
    m->lru_next->lru_prev = m->lru_prev;
  else
    shm->lru_tail = m->lru_prev;
  m->lru_prev = m->lru_next = NULL;
  m->in_lru = 0;
  shm->lru_len--;
  shm->lru_bytes -= m->region.size;
}

void ms__map_drop(ms_shm_t *shm, ms__map *m) {
  for (ms__map **p = bucket(shm, m->name); *p != NULL; p = &(*p)->next)
    if (*p == m) {
      *p = m->next;
      break;
    }
  lru_unlink(shm, m);
  ms__region_unmap(&m->region);
  ms__free(m);
}

/* ------------------------------------------------------------------------ */
/* The cache of idle opened mappings                                         */
/* ------------------------------------------------------------------------ */

static int live(const ms__map *m) {
  return MS__LIFE_STATE(atomic_load(&m->hdr->life)) == MS__LIVE;
}

/* Worth keeping cached: LIVE, or FREE in a pool (its creator makes it LIVE
 * again at a later allocation: a producer that releases a frame one
 * hand-off late, as the channel does, recycles regions the consumer
 * would otherwise re-map and fault in every time).  `flags` is untrusted:
 * a wrong value costs at most one cached mapping. */
static int reusable(const ms__map *m) {
  unsigned st = MS__LIFE_STATE(atomic_load(&m->hdr->life));
  uint32_t flags;
  memcpy(&flags, &m->hdr->flags, sizeof(flags));
  return st == MS__LIVE || (st == MS__FREE && (flags & MS__POOLED));
}

void ms__cache_prune(ms_shm_t *shm) {
  ms__map *m = shm->lru_head;
  while (m != NULL) {
    ms__map *next = m->lru_next;
    if (!reusable(m))
      ms__map_drop(shm, m);
    m = next;
  }
}

void ms__cache_put(ms_shm_t *shm, ms__map *m) {
  if (shm->open_cache == 0 || !reusable(m) ||
      (shm->open_cache_bytes != 0 && m->region.size > shm->open_cache_bytes)) {
    ms__map_drop(shm, m);
    return;
  }
  m->lru_prev = NULL;
  m->lru_next = shm->lru_head;
  if (shm->lru_head != NULL)
    shm->lru_head->lru_prev = m;
  else
    shm->lru_tail = m;
  shm->lru_head = m;
  m->in_lru = 1;
  shm->lru_len++;
  shm->lru_bytes += m->region.size;
  while (shm->lru_len > shm->open_cache ||
         (shm->open_cache_bytes != 0 && shm->lru_bytes > shm->open_cache_bytes))
    ms__map_drop(shm, shm->lru_tail);
}

void ms__after_last_clear(ms_shm_t *shm, ms__map *m) {
  if (m->region.readonly) /* a frozen memfd: we held no slot (I9) */
    return;
  if (!ms__life_free(m->hdr) || m->own)
    return; /* others hold it, or its creator decides (pool_refresh) */
  /* We freed another process's region.  Its creator reuses it only if it
   * pools and lives; otherwise it is ours to unlink (I3, I7).  `flags` is
   * untrusted: a wrong value costs at most a pooled region. */
  uint64_t creator = 0;
  (void)ms__name_parse(m->name, NULL, &creator);
  uint32_t flags;
  memcpy(&flags, &m->hdr->flags, sizeof(flags));
  if (!(flags & MS__POOLED) || !ms__holder_alive(shm, creator))
    (void)ms__region_kill(shm, m->hdr, m->name);
}

/* ------------------------------------------------------------------------ */
/* Open                                                                      */
/* ------------------------------------------------------------------------ */

/* Why a claimed, just-read `life` does not give us generation gen. */
static int life_refusal(ms_shm_t *shm, const char *name, uint64_t life,
                        uint64_t gen) {
  if (MS__LIFE_STATE(life) != MS__LIVE)
    return ms__errmsg_set(shm, MS_ENOENT,
                          "region %s is not allocated (released, or never "
                          "published)",
                          name);
  return ms__errmsg_set(shm, MS_ESTALE,
                        "region %s was recycled (generation %llx, "
                        "descriptor %llx)",
                        name, (unsigned long long)MS__LIFE_GEN(life),
                        (unsigned long long)gen);
}

/* A mapping of name with the given access: cached, or mapped now. */
static int map_get(ms_shm_t *shm, const char *name, int writable, ms__map **out,
                   int *cached) {
  ms__map *m = ms__map_find(shm, name, 0, writable);
  *cached = m != NULL;
  if (m != NULL) {
    *out = m;
    return 0;
  }
  m = ms__calloc(1, sizeof(*m));
  if (m == NULL) {
    (void)ms__errmsg_set(shm, MS_ENOMEM, "out of memory");
    return MS_ENOMEM;
  }
  memcpy(m->name, name, strlen(name) + 1);
  m->slot = -1;
  const char *why = NULL;
  int64_t pid = 0, fd = -1;
  uint8_t ident[16];
  const int anon = ms__locator_parse(name, &pid, &fd, NULL, ident) == 0;
  int rc = anon ? ms__region_open_anon(pid, fd, sizeof(ms__hdr),
                                       shm->allowed_uid, &m->region, &why)
                : ms__region_open(shm->ns, name, sizeof(ms__hdr),
                                  shm->allowed_uid, &m->region, &why);
  if (rc == 0 && !writable) {
    /* Everything past the header's page is read-only in this mapping,
     * whatever data_offset a later generation claims (it is at least one
     * page: see the page check in open_locked).  Done before the first
     * touch: the first fault then maps the header's page alone, where it
     * would otherwise fault around (16 pages) and mprotect would have to
     * rewrite those entries; the two cost ~10 us instead of ~4 (issue 13). */
    rc = ms__region_protect(&m->region, shm->header_size, 0);
    why = rc != 0 ? "cannot make the data read-only" : NULL;
    if (rc != 0)
      ms__region_unmap(&m->region);
  }
  if (rc == 0 && anon &&
      memcmp(((ms__hdr *)m->region.base)->ident, ident, sizeof(ident)) != 0) {
    /* The pid or the descriptor number was reused for another object: the
     * region this locator named is gone. */
    rc = MS_ENOENT;
    why = "another object now (identity differs): the region is gone";
    ms__region_unmap(&m->region);
  }
  if (rc != 0) {
    ms__free(m);
    (void)ms__errmsg_set(shm, rc, "cannot open region %s: %s", name,
                         why != NULL ? why : ms_strerror(rc));
    return rc;
  }
  m->hdr = m->region.base;
  m->writable = writable;
  ms__map_insert(shm, m);
  *out = m;
  return 0;
}

static int open_locked(ms_shm_t *shm, const char *name, uint64_t gen,
                       int writable, ms_tensor_t **out) {
  ms__cache_prune(shm); /* never pin memory of regions that died */
  ms__map *m = NULL;
  int cached = 0;
  int rc = map_get(shm, name, writable, &m, &cached);
  if (rc != 0)
    return rc;

  /* The header is hostile until proven otherwise: validate a private
   * snapshot before taking a holder slot, so that a bad region is never
   * written to by a consumer that refuses it. */
  ms_tensor_t *t = ms__tensor_new(shm, m);
  rc = t == NULL ? MS_ENOMEM : ms__hdr_validate(m->hdr, m->region.size, t);
  if (rc == 0 &&
      ((size_t)((char *)t->data - (char *)m->hdr) % shm->page != 0 ||
       (char *)t->data - (char *)m->hdr < (ptrdiff_t)shm->header_size))
    rc = MS_EBADREGION; /* data must start on a page past the header's */
  if (rc == MS_EBADREGION) {
    /* A creator recycling the region rewrites its header: report that as
     * what it is rather than as a hostile header. */
    uint64_t life = atomic_load(&m->hdr->life);
    if (MS__LIFE_STATE(life) != MS__LIVE || MS__LIFE_GEN(life) != gen) {
      ms__free(t);
      if (m->handles == 0 && !m->in_lru)
        ms__map_drop(shm, m);
      return life_refusal(shm, name, life, gen);
    }
  }
  uint32_t hflags;
  memcpy(&hflags, &m->hdr->flags, sizeof(hflags)); /* untrusted, advisory */
  if (rc == 0 && writable && (m->region.readonly || (hflags & MS__FROZEN))) {
    /* A released or reused region's descriptor is MS_ENOENT/MS_ESTALE
     * whatever the region became since: say so before "frozen". */
    uint64_t life = atomic_load(&m->hdr->life);
    if (life != MS__LIFE(gen, MS__LIVE)) {
      ms__free(t);
      if (m->handles == 0 && !m->in_lru)
        ms__map_drop(shm, m);
      return life_refusal(shm, name, life, gen);
    }
    rc = MS_EACCES;
  }
  if (rc != 0) {
    ms__free(t);
    if (m->handles == 0 && !m->in_lru)
      ms__map_drop(shm, m);
    return ms__errmsg_set(shm, rc, "region %s: %s", name,
                          rc == MS_EBADREGION ? "malformed or hostile header"
                          : rc == MS_EACCES
                              ? "frozen by its creator: read-only opens only"
                              : ms_strerror(rc));
  }

  if (m->handles == 0) {
    /* A region sealed against writes (frozen memfd) cannot take our slot:
     * we hold it through our mapping alone (I9). */
    const int ro = m->region.readonly;
    int slot = ro ? -1 : ms__slot_claim(m->hdr, shm->token);
    uint64_t life = atomic_load(&m->hdr->life); /* after the claim: I1 */
    if (slot < 0 && !ro)
      rc = ms__errmsg_set(shm, MS_EBUSY, "region %s has %d holders", name,
                          MS__SLOTS);
    else if (life != MS__LIFE(gen, MS__LIVE))
      rc = life_refusal(shm, name, life, gen);
    if (rc != 0) {
      ms__free(t);
      /* We never held it: clearing our claim has no duty attached (I4). */
      ms__slot_clear(m->hdr, slot, shm->token);
      if (!m->in_lru || !live(m))
        ms__map_drop(shm, m);
      return rc;
    }
    m->slot = slot;
    m->gen = gen;
  } else if (m->gen != gen) {
    ms__free(t);
    return ms__errmsg_set(shm, MS_ESTALE,
                          "region %s holds generation %llx, not %llx", name,
                          (unsigned long long)m->gen, (unsigned long long)gen);
  }
  t->gen = gen;
  t->writable = writable;
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
  MS__REFUSE_IF_INHERITED(shm);
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
