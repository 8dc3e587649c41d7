/* Liveness of holders and the sweep: dead processes' slots are cleared,
 * regions nobody alive holds are unlinked, dead tokens are removed.  Only
 * names that shm_names.c parses exactly are ever touched (I7); the
 * protocol is in internal/shm.h.  ms_shm_sweep() also reclaims what the
 * other kinds of objects in the namespace left (channel rings, host
 * images), each by the rules of its own protocol, through one internal
 * entry point of each. */
#include "internal/channel.h"
#include "internal/image.h"
#include "internal/shm.h"

#include <stdlib.h>
#include <string.h>

int ms__holder_alive(ms_shm_t *shm, uint64_t token) {
  if (token == shm->token)
    return 1;
  char tname[MS__TOKEN_NAME_MAX + 1];
  ms__token_name(tname, sizeof(tname), token);
  return ms__token_alive(shm->ns, tname);
}

int ms__region_kill(ms_shm_t *shm, ms__hdr *h, const char *name) {
  if (!ms__life_kill(h, 0))
    return 0;
  if (!ms__is_locator(name)) /* a memfd goes with its last descriptor */
    (void)ms__region_unlink(shm->ns, name);
  return 1;
}

typedef struct sweep_ctx {
  ms_shm_t *shm;
  const char *prefix; /* of the regions swept */
  size_t reclaimed;
  struct {
    uint64_t token;
    int alive;
  } seen[64];
  int nseen;
} sweep_ctx;

static int alive_cached(sweep_ctx *c, uint64_t token) {
  for (int i = 0; i < c->nseen; i++)
    if (c->seen[i].token == token)
      return c->seen[i].alive;
  int alive = ms__holder_alive(c->shm, token);
  if (c->nseen < 64) {
    c->seen[c->nseen].token = token;
    c->seen[c->nseen++].alive = alive;
  }
  return alive;
}

/* A token object: removed when its holder is gone.  ms__token_alive()
 * unlinks exactly this name, and only once it holds the object's lock.
 * 1 if name was a token name. */
static int sweep_token(const char *name, void *user) {
  sweep_ctx *c = user;
  uint64_t token = 0;
  if (ms__token_name_parse(name, c->prefix, &token) != 0)
    return 0;
  if (token != c->shm->token)
    (void)ms__token_alive(c->shm->ns, name);
  return 1;
}

static int sweep_region(const char *name, void *user);

/* Everything with the prefix: a region, or a token of the 1.0 form. */
static int sweep_prefixed(const char *name, void *user) {
  if (!sweep_token(name, user))
    (void)sweep_region(name, user);
  return 0;
}

static int sweep_tokens(const char *name, void *user) {
  (void)sweep_token(name, user);
  return 0;
}

static void reclaim(sweep_ctx *c, const char *name) {
  if (ms__region_unlink(c->shm->ns, name) == 0)
    c->reclaimed++;
}

static int sweep_region(const char *name, void *user) {
  sweep_ctx *c = user;
  ms_shm_t *shm = c->shm;
  size_t prefix_len = 0;
  uint64_t creator = 0;
  if (ms__name_parse(name, &prefix_len, &creator) != 0 ||
      prefix_len != strlen(c->prefix) ||
      memcmp(name, c->prefix, prefix_len) != 0)
    return 0; /* not a name we make with that prefix */

  ms__map *mine = ms__map_find(shm, name, 1, 1);
  ms__region tmp = {0};
  ms__hdr *h = mine != NULL ? mine->hdr : NULL;
  if (h == NULL) {
    const char *why = NULL;
    int rc = ms__region_open(shm->ns, name, 0, shm->allowed_uid, &tmp, &why);
    if (rc == MS_EBADREGION) { /* fstat proved it empty or unbacked */
      if (!alive_cached(c, creator))
        reclaim(c, name);
      return 0;
    }
    if (rc != 0)
      return 0; /* gone, not ours to judge, or out of resources: leave it */
    if (!ms__hdr_plausible(tmp.base, tmp.size)) {
      /* Proven malformed: a creation cut short by a crash, if its creator
       * is gone (a live creator may still be writing the header). */
      if (!alive_cached(c, creator))
        reclaim(c, name);
      ms__region_unmap(&tmp);
      return 0;
    }
    h = tmp.base;
  }
  for (int i = 0; i < MS__SLOTS; i++) {
    uint64_t t = atomic_load(&h->slots[i]);
    if (t != 0 && !alive_cached(c, t))
      ms__slot_clear(h, i, t);
  }
  /* Holders all died: finish their release (I4). */
  (void)ms__life_free(h);
  if (mine == NULL) {
    uint32_t flags;
    memcpy(&flags, &h->flags, sizeof(flags));
    unsigned st = MS__LIFE_STATE(atomic_load(&h->life));
    int creator_dead = !alive_cached(c, creator);
    if (st == MS__DEAD) {
      /* Its killer died before unlinking: DEAD never reopens. */
      if (ms__slots_empty(h, -1))
        reclaim(c, name);
    } else if (creator_dead || (st == MS__FREE && !(flags & MS__POOLED))) {
      /* Nobody will reuse it; CREATING/LIVE ones too once the creator is
       * dead and no live holder remains. */
      if (ms__life_kill(h, creator_dead))
        reclaim(c, name);
    }
  }
  ms__region_unmap(&tmp);
  return 0;
}

/* Anonymous (memfd) regions are in no listing, and need no unlinking: the
 * kernel frees one with its last descriptor and mapping.  What a sweep
 * still owes them is the holder protocol: the slots of dead holders in the
 * ones mapped here (ours and opened ones), so that they become FREE and
 * their mappings can go (pool_refresh, cache_prune).  May drop m. */
static void sweep_anon(sweep_ctx *c, ms__map *m) {
  ms__hdr *h = m->hdr;
  uint64_t creator = 0;
  if (m->region.readonly) {
    /* Frozen: no slots, and nothing here may write it.  A cached mapping
     * nobody here holds goes once its creator is dead: the descriptor
     * cannot open anywhere else any more, so the cache must not keep the
     * pages (or the descriptor) alive. */
    if (m->handles == 0 && m->in_lru &&
        ms__name_parse(m->name, NULL, &creator) == 0 &&
        !alive_cached(c, creator))
      ms__map_drop(c->shm, m);
    return;
  }
  for (int i = 0; i < MS__SLOTS; i++) {
    uint64_t t = atomic_load(&h->slots[i]);
    if (t != 0 && !alive_cached(c, t))
      ms__slot_clear(h, i, t);
  }
  (void)ms__life_free(h);
  if (!m->own && ms__name_parse(m->name, NULL, &creator) == 0 &&
      !alive_cached(c, creator))
    (void)ms__life_kill(h, 1); /* nobody will recycle it */
}

/* The regions named with c->prefix.  Where the namespace cannot be listed
 * (Win32, where a region dies with its last handle anyway): the dead
 * holders of the ones mapped here.  Lock held. */
static int sweep_named(sweep_ctx *c) {
  ms_shm_t *shm = c->shm;
  int rc = ms__ns_list(shm->ns, c->prefix, sweep_prefixed, c);
  if (rc != MS_ENOTSUP)
    return rc;
  /* Copies of the names: sweep_region may drop mappings. */
  size_t n = 0, k = 0;
  for (size_t b = 0; b < MS__NBUCKETS; b++)
    for (ms__map *m = shm->buckets[b]; m != NULL; m = m->next)
      n++;
  char(*names)[MS__NAME_MAX + 1] = ms__malloc((n > 0 ? n : 1) * sizeof(*names));
  if (names == NULL)
    return MS_ENOMEM;
  for (size_t b = 0; b < MS__NBUCKETS; b++)
    for (ms__map *m = shm->buckets[b]; m != NULL; m = m->next)
      memcpy(names[k++], m->name, sizeof(m->name));
  for (size_t i = 0; i < k; i++)
    (void)sweep_region(names[i], c);
  ms__free(names);
  return 0;
}

static sweep_ctx *ctx_new(ms_shm_t *shm, const char *prefix) {
  sweep_ctx *c = ms__calloc(1, sizeof(*c));
  if (c != NULL) {
    c->shm = shm;
    c->prefix = prefix;
  }
  return c;
}

int ms__sweep_locked(ms_shm_t *shm, size_t *reclaimed) {
  sweep_ctx *c = ctx_new(shm, shm->prefix);
  if (c == NULL)
    return MS_ENOMEM;
  int rc = ms__ns_list(shm->ns, MS__TOKEN_PREFIX, sweep_tokens, c);
  if (rc == 0 || rc == MS_ENOTSUP)
    rc = sweep_named(c);
  for (size_t b = 0; b < MS__NBUCKETS; b++)
    for (ms__map *m = shm->buckets[b], *next; m != NULL; m = next) {
      next = m->next; /* sweep_anon may drop m */
      if (ms__is_locator(m->name))
        sweep_anon(c, m);
    }
  ms__cache_prune(shm);
  if (reclaimed != NULL)
    *reclaimed = c->reclaimed;
  ms__free(c);
  return rc;
}

int ms__sweep_prefix(ms_shm_t *shm, const char *prefix, size_t *reclaimed) {
  sweep_ctx *c = ctx_new(shm, prefix);
  if (c == NULL)
    return MS_ENOMEM;
  uv_mutex_lock(&shm->lock);
  int rc = sweep_named(c);
  ms__pool_refresh(shm); /* our own regions freed by dead holders */
  uv_mutex_unlock(&shm->lock);
  if (reclaimed != NULL)
    *reclaimed = c->reclaimed;
  ms__free(c);
  return rc;
}

int ms__sweep_run(ms_shm_t *shm, const ms__sweep_part *parts, size_t n,
                  size_t *reclaimed) {
  if (shm == NULL)
    return MS_EINVAL;
  MS__REFUSE_IF_INHERITED(shm);
  size_t total = 0;
  int rc = 0;
  const char *what = NULL;
  for (size_t i = 0; i < n; i++) {
    size_t k = 0;
    int r = parts[i].fn(shm, &k);
    total += k;
    if (rc == 0 && r != 0) {
      rc = r;
      what = parts[i].what;
    }
  }
  if (rc != 0)
    return ms__errmsg_set(shm, rc, "cannot sweep the namespace's %s: %s", what,
                          ms_strerror(rc));
  if (reclaimed != NULL)
    *reclaimed = total;
  return 0;
}

static int sweep_regions(ms_shm_t *shm, size_t *reclaimed) {
  uv_mutex_lock(&shm->lock);
  int rc = ms__sweep_locked(shm, reclaimed);
  ms__pool_refresh(shm); /* our regions freed by dead holders */
  uv_mutex_unlock(&shm->lock);
  return rc;
}

/* Every kind of object in the namespace, each by its own protocol: the
 * allocator's regions and tokens (above), channel rings and staging
 * objects of dead producers (C0 of internal/channel.h), host images no
 * live process holds or builds (internal/image.h). */
int ms_shm_sweep(ms_shm_t *shm, size_t *reclaimed) {
  static const ms__sweep_part parts[] = {
      {sweep_regions, "regions"},
      {ms__channel_reclaim_all, "channel rings"},
      {ms__image_sweep_all, "host images"}};
  return ms__sweep_run(shm, parts, sizeof(parts) / sizeof(parts[0]), reclaimed);
}
