/* Liveness of holders and the sweep: dead processes' slots are cleared,
 * regions nobody alive holds are unlinked, dead tokens are removed.  Only
 * names that shm_names.c parses exactly are ever touched (I7); the
 * protocol is in internal/shm.h. */
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
  if (ms__token_name_parse(name, c->shm->prefix, &token) != 0)
    return 0;
  if (token != c->shm->token)
    (void)ms__token_alive(c->shm->ns, name);
  return 1;
}

static int sweep_region(const char *name, void *user);

/* Everything with our prefix: a region, or a token of the 1.0 form. */
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
      prefix_len != strlen(shm->prefix))
    return 0; /* not a name we make with our prefix */

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

int ms__sweep_locked(ms_shm_t *shm, size_t *reclaimed) {
  sweep_ctx *c = ms__calloc(1, sizeof(*c));
  if (c == NULL)
    return MS_ENOMEM;
  c->shm = shm;
  int rc = ms__ns_list(shm->ns, MS__TOKEN_PREFIX, sweep_tokens, c);
  if (rc == 0)
    rc = ms__ns_list(shm->ns, shm->prefix, sweep_prefixed, c);
  if (rc == MS_ENOTSUP) {
    /* The namespace cannot be listed (Win32, where a region dies with its
     * last handle anyway): release dead holders of the regions we know.
     * Copies of the names: sweep_region may drop mappings. */
    size_t n = 0, k = 0;
    for (size_t b = 0; b < MS__NBUCKETS; b++)
      for (ms__map *m = shm->buckets[b]; m != NULL; m = m->next)
        n++;
    char(*names)[MS__NAME_MAX + 1] =
        ms__malloc((n > 0 ? n : 1) * sizeof(*names));
    for (size_t b = 0; names != NULL && b < MS__NBUCKETS; b++)
      for (ms__map *m = shm->buckets[b]; m != NULL; m = m->next)
        memcpy(names[k++], m->name, sizeof(m->name));
    for (size_t i = 0; i < k; i++)
      (void)sweep_region(names[i], c);
    rc = names != NULL ? 0 : MS_ENOMEM;
    ms__free(names);
  }
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
