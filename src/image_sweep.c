/* Host-scope images: reclaiming.  Index entries and locks of builds that
 * died or failed, images nobody alive holds (kept ones once keep_ms has
 * passed), and the regions of builders killed at any point.  Only names of
 * the exact forms the library makes are touched (I7); the protocol is in
 * internal/image.h. */
#include "internal/image.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A sweeper that tombstoned a lock and then stalled this long is taken for
 * dead: the next sweep finishes its removal. */
#define TOMB_STALE_MS 10000u

static int is_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return 0;
  return 1;
}

/* The 32-hex hash of "msimg-H.idx" / "msimg-H.lock", or -1. */
static int entry_hash(const char *name, char hex[33]) {
  if (strncmp(name, "msimg-", 6) != 0 || strlen(name) < 6 + 32 ||
      !is_hex(name + 6, 32))
    return -1;
  const char *ext = name + 6 + 32;
  if (strcmp(ext, ".idx") != 0 && strcmp(ext, ".lock") != 0)
    return -1;
  memcpy(hex, name + 6, 32);
  hex[32] = '\0';
  return 0;
}

/* The 13-hex key part of an image region's prefix "mi<13 hex>-", or -1. */
static int region_key(const char *name, char k[14]) {
  size_t plen = 0;
  if (ms__name_parse(name, &plen, NULL) != 0 || plen != 16 ||
      strncmp(name, "mi", 2) != 0 || name[15] != '-' || !is_hex(name + 2, 13))
    return -1;
  memcpy(k, name + 2, 13);
  k[13] = '\0';
  return 0;
}

typedef struct list {
  char (*s)[40];
  size_t n, cap;
  int oom;
} list;

static int list_has(const list *l, const char *s) {
  for (size_t i = 0; i < l->n; i++)
    if (strcmp(l->s[i], s) == 0)
      return 1;
  return 0;
}

static void list_add(list *l, const char *s) {
  if (list_has(l, s))
    return;
  if (l->n == l->cap) {
    size_t cap = l->cap != 0 ? 2 * l->cap : 16;
    char(*p)[40] = ms__realloc(l->s, cap * sizeof(*p));
    if (p == NULL) {
      l->oom = 1;
      return;
    }
    l->s = p;
    l->cap = cap;
  }
  (void)snprintf(l->s[l->n++], 40, "%s", s);
}

static int collect_entries(const char *name, void *user) {
  char hex[33];
  if (entry_hash(name, hex) == 0)
    list_add(user, hex);
  return 0;
}

static int collect_regions(const char *name, void *user) {
  char k[14];
  if (region_key(name, k) == 0)
    list_add(user, k);
  return 0;
}

/* Live holders of the region a descriptor names (0 if it is gone). */
static unsigned live_holders(ms_shm_t *shm, const char *desc) {
  char name[MS__NAME_MAX + 1];
  uint64_t gen;
  if (ms__descriptor_parse(desc, name, &gen) != 0)
    return 0;
  ms__region r = {0};
  const char *why = NULL;
  if (ms__region_open(shm->ns, name, sizeof(ms__hdr), shm->allowed_uid, &r,
                      &why) != 0)
    return 0;
  unsigned n = 0;
  if (ms__hdr_plausible(r.base, r.size)) {
    ms__hdr *h = r.base;
    for (int i = 0; i < MS__SLOTS; i++) {
      uint64_t t = atomic_load(&h->slots[i]);
      n += t != 0 && ms__holder_alive(shm, t);
    }
  }
  ms__region_unmap(&r);
  return n;
}

/* What to do with one key's entry and lock. */
typedef struct entry_ctx {
  ms_shm_t *shm;
  char idx[64], lock[64], prefix[MS__PREFIX_MAX + 1];
  ms__region lock_r;
  uint64_t lock_v;
} entry_ctx;

/* Removes the entry and its lock: tombstone, index, lock (ELECTION).
 * Returns how many objects were unlinked. */
static size_t entry_remove(entry_ctx *e) {
  size_t n = 0;
  if (e->lock_r.base != NULL) {
    _Atomic uint64_t *w = e->lock_r.base;
    uint64_t v = e->lock_v;
    atomic_store(&w[1], ms__img_now_ms());
    if (v != MS__IMG_TOMB &&
        !atomic_compare_exchange_strong(w, &v, MS__IMG_TOMB))
      return 0; /* taken meanwhile: a builder is at work */
  }
  n += ms__region_unlink(e->shm->ns, e->idx) == 0;
  if (e->lock_r.base != NULL)
    n += ms__region_unlink(e->shm->ns, e->lock) == 0;
  return n;
}

/* 1 if the key's image must stay (built, held, or kept), else 0 after
 * removing what is left of it. */
static int sweep_entry(ms_shm_t *shm, const char *hex, size_t *reclaimed) {
  entry_ctx e = {.shm = shm};
  ms__img_names(hex, e.idx, e.lock, e.prefix);
  const char *why = NULL;
  int rc = ms__region_open(shm->ns, e.lock, sizeof(uint64_t) * 2,
                           shm->allowed_uid, &e.lock_r, &why);
  if (rc != 0 && rc != MS_ENOENT)
    return 1; /* being made, or not ours to judge */
  if (rc == 0) {
    _Atomic uint64_t *w = e.lock_r.base;
    e.lock_v = atomic_load(&w[0]);
    int busy = e.lock_v == MS__IMG_TOMB
                   ? ms__img_now_ms() - atomic_load(&w[1]) < TOMB_STALE_MS
                   : e.lock_v != 0 && ms__holder_alive(shm, e.lock_v);
    if (busy) {
      ms__region_unmap(&e.lock_r);
      return 1;
    }
  }
  ms__region r = {0};
  int keep = 0;
  if (ms__region_open(shm->ns, e.idx, sizeof(ms__img_idx), shm->allowed_uid, &r,
                      &why) == 0) {
    void *copy = ms__malloc(r.size);
    ms__img_view v;
    if (copy == NULL) {
      keep = 1;
    } else {
      memcpy(copy, r.base, r.size);
      if (ms__img_index_parse(copy, r.size, &v, &why) == 0) {
        uint64_t now = ms__img_now_ms();
        keep = atomic_load(&v.hdr.state) == MS__IMG_READY &&
               (live_holders(shm, v.tv[0].desc) > 0 ||
                (v.hdr.keep_ms > 0 &&
                 now - atomic_load(&v.hdr.last_used_ms) < v.hdr.keep_ms));
        ms__free(v.tv);
      }
      ms__free(copy);
    }
    ms__region_unmap(&r);
  }
  if (!keep) {
    size_t n = 0;
    (void)ms__sweep_prefix(shm, e.prefix, &n);
    *reclaimed += n + entry_remove(&e);
  }
  ms__region_unmap(&e.lock_r);
  return keep;
}

int ms__image_sweep_all(ms_shm_t *shm, size_t *reclaimed) {
  list keys = {0}, regions = {0}, kept = {0};
  size_t n = 0;
  int rc = ms__ns_list(shm->ns, "msimg-", collect_entries, &keys);
  if (rc == 0)
    rc = ms__ns_list(shm->ns, "mi", collect_regions, &regions);
  if (rc == 0 && (keys.oom || regions.oom))
    rc = MS_ENOMEM;
  for (size_t i = 0; rc == 0 && i < keys.n; i++)
    if (sweep_entry(shm, keys.s[i], &n)) {
      char k[14];
      memcpy(k, keys.s[i], 13);
      k[13] = '\0';
      list_add(&kept, k);
    }
  /* Regions of keys without an entry (a builder killed before making
   * one, or after its entry was removed). */
  for (size_t i = 0; rc == 0 && i < regions.n; i++) {
    if (list_has(&kept, regions.s[i]) || kept.oom)
      continue;
    char prefix[MS__PREFIX_MAX + 1];
    (void)snprintf(prefix, sizeof(prefix), "mi%s-", regions.s[i]);
    size_t k = 0;
    (void)ms__sweep_prefix(shm, prefix, &k);
    n += k;
  }
  ms__free(keys.s);
  ms__free(regions.s);
  ms__free(kept.s);
  if (rc == MS_ENOTSUP)
    rc = 0; /* Windows: nothing can be listed, nothing is left behind */
  *reclaimed = n;
  return rc;
}

int ms_image_sweep(ms_shm_t *shm, size_t *reclaimed) {
  static const ms__sweep_part part = {ms__image_sweep_all, "host images"};
  return ms__sweep_run(shm, &part, 1, reclaimed);
}
