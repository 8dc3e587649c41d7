/* Model registry: table, entry states, single-flight loads, refcounts,
 * TTL / LRU-budget / explicit eviction. */
#include "internal/registry.h"
#include "internal/abi.h"
#include "internal/key.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INITIAL_BUCKETS 16

_Static_assert(MS__REGISTRY_OPTIONS_V1 <= sizeof(ms_registry_options_t),
               "1.0 registry options size");
_Static_assert(MS__LOADER_V1 <= sizeof(ms_loader_t), "1.0 loader size");

/* ------------------------------------------------------------------------ */
/* Table                                                                     */
/* ------------------------------------------------------------------------ */

static ms_model_t **bucket_of(ms_registry_t *reg, uint64_t hash) {
  return &reg->buckets[hash & (reg->nbuckets - 1)];
}

/* Caller holds the lock (read or write).  Full key comparison: the hash
 * only chooses the bucket. */
static ms_model_t *table_find(ms_registry_t *reg, const ms_key_t *key) {
  for (ms_model_t *e = *bucket_of(reg, key->hash); e != NULL; e = e->next)
    if (e->hash == key->hash && e->path_len == key->path_len &&
        e->config_len == key->config_len &&
        memcmp(e->path, key->path, key->path_len) == 0 &&
        memcmp(e->config, key->config, key->config_len) == 0)
      return e;
  return NULL;
}

/* Write lock held.  Doubling is best effort: a failed grow keeps the
 * table correct, only with longer chains. */
static void table_grow(ms_registry_t *reg) {
  size_t n = reg->nbuckets * 2;
  // NOLINTNEXTLINE(bugprone-sizeof-expression): a table of pointers
  ms_model_t **nb = ms__calloc(n, sizeof(*nb));
  if (nb == NULL)
    return;
  for (size_t i = 0; i < reg->nbuckets; i++) {
    ms_model_t *e = reg->buckets[i];
    while (e != NULL) {
      ms_model_t *next = e->next;
      ms_model_t **b = &nb[e->hash & (n - 1)];
      e->next = *b;
      *b = e;
      e = next;
    }
  }
  ms__free(reg->buckets);
  reg->buckets = nb;
  reg->nbuckets = n;
}

/* Write lock held.  Returns 1 if e was in the table. */
static int table_unlink(ms_registry_t *reg, ms_model_t *e) {
  for (ms_model_t **p = bucket_of(reg, e->hash); *p != NULL; p = &(*p)->next) {
    if (*p == e) {
      *p = e->next;
      e->next = NULL;
      reg->nentries--;
      return 1;
    }
  }
  return 0;
}

static int is_idle(ms_model_t *e) {
  return atomic_load_explicit(&e->state, memory_order_acquire) == MS__READY &&
         atomic_load_explicit(&e->refs, memory_order_acquire) == 0;
}

/* ------------------------------------------------------------------------ */
/* Eviction.  Entries are unlinked under the write lock and pushed on a      */
/* list; their unload callbacks run after the lock is released.              */
/* ------------------------------------------------------------------------ */

static void evict_locked(ms_registry_t *reg, ms_model_t *e, ms_model_t **list) {
  (void)table_unlink(reg, e);
  reg->bytes_resident -= e->bytes;
  reg->models_resident--;
  reg->retired_hits += atomic_load_explicit(&e->hits, memory_order_relaxed);
  atomic_fetch_add_explicit(&reg->evictions, 1, memory_order_relaxed);
  e->next = *list;
  *list = e;
}

static size_t unload_list(ms_model_t *list) {
  size_t n = 0;
  while (list != NULL) {
    ms_model_t *next = list->next;
    if (list->unload != NULL)
      list->unload(list->user, list->model);
    ms__free(list);
    list = next;
    n++;
  }
  return n;
}

/* Write lock held.  Pushes every idle entry matching `pred` on *list. */
static void evict_matching(ms_registry_t *reg,
                           int (*pred)(ms_registry_t *, ms_model_t *, uint64_t),
                           uint64_t now, ms_model_t **list) {
  for (size_t i = 0; i < reg->nbuckets; i++) {
    ms_model_t *e = reg->buckets[i];
    while (e != NULL) {
      ms_model_t *next = e->next;
      if (is_idle(e) && pred(reg, e, now))
        evict_locked(reg, e, list);
      e = next;
    }
  }
}

static int pred_any(ms_registry_t *reg, ms_model_t *e, uint64_t now) {
  (void)reg, (void)e, (void)now;
  return 1;
}

/* An expiry pass: the first pass that sees a model idle starts its TTL
 * clock; a later pass unloads it once the TTL has run out. */
static int pred_expired(ms_registry_t *reg, ms_model_t *e, uint64_t now) {
  if (reg->idle_ttl_ms == MS_TTL_NEVER)
    return 0;
  uint64_t since =
      atomic_load_explicit(&e->idle_since_ns, memory_order_relaxed);
  if (since == 0) {
    atomic_store_explicit(&e->idle_since_ns, now, memory_order_relaxed);
    return 0;
  }
  return now >= since && (now - since) / 1000000u >= reg->idle_ttl_ms;
}

/* Write lock held.  Least recently idle first. */
static ms_model_t *lru_idle(ms_registry_t *reg) {
  ms_model_t *best = NULL;
  uint64_t best_t = 0;
  for (size_t i = 0; i < reg->nbuckets; i++)
    for (ms_model_t *e = reg->buckets[i]; e != NULL; e = e->next) {
      uint64_t t = atomic_load_explicit(&e->idle_seq, memory_order_relaxed);
      if (is_idle(e) && (best == NULL || t < best_t)) {
        best = e;
        best_t = t;
      }
    }
  return best;
}

/*
 * Write lock held.  Makes room for `bytes` under the budget by evicting idle
 * entries, least recently used first.  All or nothing: when the model could
 * not fit even with every idle entry gone, nothing is evicted and MS_ENOMEM
 * is returned.
 */
static int budget_make_room(ms_registry_t *reg, size_t bytes,
                            ms_model_t **list) {
  if (reg->max_bytes == 0)
    return 0;
  uint64_t idle = 0;
  for (size_t i = 0; i < reg->nbuckets; i++)
    for (ms_model_t *e = reg->buckets[i]; e != NULL; e = e->next)
      if (is_idle(e))
        idle += e->bytes;
  uint64_t held = reg->bytes_resident - idle;
  if (bytes > reg->max_bytes || held > reg->max_bytes - bytes)
    return MS_ENOMEM;
  while (reg->bytes_resident > reg->max_bytes - bytes) {
    ms_model_t *victim = lru_idle(reg);
    /* Cannot be NULL: nothing turns idle into held under the write lock
     * (acquire needs the lock, retain needs a held reference). */
    if (victim == NULL)
      return MS_ENOMEM;
    evict_locked(reg, victim, list);
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Create / destroy                                                          */
/* ------------------------------------------------------------------------ */

int ms_registry_create(const ms_registry_options_t *options,
                       ms_registry_t **out) {
  ms_registry_options_t opt = MS_REGISTRY_OPTIONS_INIT;
  if (out == NULL)
    return MS_EINVAL;
  if (options != NULL &&
      ms__struct_in(&opt, sizeof(opt), options, MS__REGISTRY_OPTIONS_V1) != 0)
    return MS_EINVAL;

  ms_registry_t *reg = ms__calloc(1, sizeof(*reg));
  if (reg == NULL)
    return MS_ENOMEM;
  // NOLINTNEXTLINE(bugprone-sizeof-expression): a table of pointers
  reg->buckets = ms__calloc(INITIAL_BUCKETS, sizeof(*reg->buckets));
  if (reg->buckets == NULL) {
    ms__free(reg);
    return MS_ENOMEM;
  }
  reg->nbuckets = INITIAL_BUCKETS;
  reg->idle_ttl_ms = opt.idle_ttl_ms;
  reg->max_bytes = opt.max_bytes;

  if (ms__br_init(&reg->lock) != 0)
    goto fail_lock;
  if (uv_mutex_init(&reg->wait_mutex) != 0)
    goto fail_mutex;
  if (uv_cond_init(&reg->wait_cond) != 0)
    goto fail_cond;
  *out = reg;
  return 0;

fail_cond:
  uv_mutex_destroy(&reg->wait_mutex);
fail_mutex:
  ms__br_destroy(&reg->lock);
fail_lock:
  ms__free(reg->buckets);
  ms__free(reg);
  return MS_ENOMEM;
}

int ms_registry_destroy(ms_registry_t *reg) {
  if (reg == NULL)
    return 0;
  ms_model_t *list = NULL;
  ms__br_wrlock(&reg->lock);
  if (atomic_load(&reg->pending_async) != 0 || atomic_load(&reg->timer)) {
    ms__br_wrunlock(&reg->lock);
    return ms__errmsg_set(reg, MS_EBUSY,
                          "async acquires pending or eviction timer attached");
  }
  for (size_t i = 0; i < reg->nbuckets; i++)
    for (ms_model_t *e = reg->buckets[i]; e != NULL; e = e->next)
      if (!is_idle(e)) {
        /* The message before the unlock: e may be evicted and freed as
         * soon as the lock goes. */
        ms__errmsg_set(reg, MS_EBUSY, "model \"%s\" is %s", e->path,
                       atomic_load(&e->state) == MS__LOADING ? "loading"
                                                             : "still held");
        ms__br_wrunlock(&reg->lock);
        return MS_EBUSY;
      }
  /* Calls in progress count themselves in before they change anything
   * that would make the registry look unused (a TTL-0 release before its
   * last reference goes, a loader before its entry leaves the table, a
   * waiter before it waits) and out after their last access.  Read after
   * the entries: a release seen above as gone was counted in before it
   * went.  If none is counted now, none can touch reg again (a call that
   * starts after this one is the caller's bug). */
  uint64_t calls = ms__br_calls(&reg->lock);
  if (calls != 0) {
    ms__br_wrunlock(&reg->lock);
    return ms__errmsg_set(reg, MS_EBUSY, "%llu call(s) still in progress",
                          (unsigned long long)calls);
  }
  evict_matching(reg, pred_any, 0, &list);
  ms__br_wrunlock(&reg->lock);

  (void)unload_list(list);
  ms__errmsg_clear(reg);
  uv_cond_destroy(&reg->wait_cond);
  uv_mutex_destroy(&reg->wait_mutex);
  ms__br_destroy(&reg->lock);
  ms__free(reg->buckets);
  ms__free(reg);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Acquire                                                                   */
/* ------------------------------------------------------------------------ */

static ms_model_t *entry_new(ms_registry_t *reg, const ms_key_t *key,
                             const ms_loader_t *loader, int loader_here) {
  ms_model_t *e = ms__malloc(sizeof(*e) + key->path_len + key->config_len + 2);
  if (e == NULL)
    return NULL;
  memset(e, 0, sizeof(*e));
  e->reg = reg;
  e->hash = key->hash;
  e->path = e->buf;
  e->config = e->buf + key->path_len + 1;
  e->path_len = key->path_len;
  e->config_len = key->config_len;
  memcpy(e->path, key->path, key->path_len + 1);
  memcpy(e->config, key->config, key->config_len + 1);
  atomic_init(&e->refs, 1); /* the caller that will run the loader */
  atomic_init(&e->hits, 0);
  atomic_init(&e->idle_seq, 0);
  atomic_init(&e->idle_since_ns, 0);
  atomic_init(&e->state, MS__LOADING);
  e->loader_known = loader_here;
  if (loader_here)
    e->loader_thread = uv_thread_self();
  e->unload = loader->unload;
  e->user = loader->user;
  return e;
}

static void entry_free(ms_model_t *e) {
  ms__free(e->errmsg);
  ms__free(e);
}

/* Drops a reference to an entry that is not READY (a waiter or the loader
 * of a failed load).  The last one frees it: it is no longer reachable. */
static void entry_drop_failed(ms_model_t *e) {
  if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
    entry_free(e);
}

/* The failure text of a FAILED entry (wait_mutex held or state final). */
static const char *entry_errmsg(const ms_model_t *e) {
  return e->errmsg != NULL ? e->errmsg : ms_strerror(e->status);
}

/* Waits for another caller's load of e; the caller holds one ref on e. */
static int wait_for_load(ms_registry_t *reg, ms_model_t *e, uint64_t timeout_ms,
                         ms_model_t **out) {
  const int forever =
      timeout_ms == MS_WAIT_FOREVER || timeout_ms > UINT64_MAX / 2000000u;
  const uint64_t deadline = forever ? 0 : uv_hrtime() + timeout_ms * 1000000u;

  atomic_fetch_add_explicit(&reg->waits, 1, memory_order_relaxed);
  uv_mutex_lock(&reg->wait_mutex);
  while (atomic_load_explicit(&e->state, memory_order_relaxed) == MS__LOADING) {
    if (forever) {
      uv_cond_wait(&reg->wait_cond, &reg->wait_mutex);
      continue;
    }
    uint64_t now = uv_hrtime();
    if (now >= deadline)
      break;
    (void)uv_cond_timedwait(&reg->wait_cond, &reg->wait_mutex, deadline - now);
  }
  int state = atomic_load_explicit(&e->state, memory_order_relaxed);
  if (state == MS__LOADING) {
    /* The loader still holds its own reference, so this cannot be the
     * last one; doing it under wait_mutex keeps the state stable. */
    atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel);
    uv_mutex_unlock(&reg->wait_mutex);
    atomic_fetch_add_explicit(&reg->timeouts, 1, memory_order_relaxed);
    return ms__errmsg_set(reg, MS_ETIMEDOUT,
                          "timed out after %llu ms waiting for \"%s\" to load",
                          (unsigned long long)timeout_ms, e->path);
  }
  int status = e->status;
  uv_mutex_unlock(&reg->wait_mutex);

  if (state == MS__READY) {
    atomic_fetch_add_explicit(&e->hits, 1, memory_order_relaxed);
    *out = e;
    return 0;
  }
  /* FAILED is final: the text stays while we hold our reference. */
  ms__errmsg_set(reg, status, "%s", entry_errmsg(e));
  entry_drop_failed(e);
  return status;
}

/* wait_mutex held, state just became final.  Completes every async waiter
 * of e: each keeps its reference on success (it becomes the callback's
 * handle) and drops it on failure (the publisher still holds one, so this
 * never frees e). */
static void complete_waiters_locked(ms_model_t *e) {
  ms_acquire_req_t *w = e->waiters;
  e->waiters = NULL;
  while (w != NULL) {
    ms_acquire_req_t *next = w->next;
    w->next = NULL;
    w->entry = NULL;
    w->status = e->status;
    if (e->status == 0) {
      if (!w->origin)
        atomic_fetch_add_explicit(&e->hits, 1, memory_order_relaxed);
      w->model = e;
    } else {
      (void)snprintf(w->errmsg, sizeof(w->errmsg), "%s", entry_errmsg(e));
      atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel);
    }
    w->done = 1;
    uv_async_send(&w->async); /* w may be freed from here on */
    w = next;
  }
}

/* Runs the loader for e (the caller holds its first reference) and
 * publishes the result to every waiter. */
static int run_load(ms_registry_t *reg, ms_model_t *e,
                    const ms_loader_t *loader, ms_model_t **out) {
  void *model = NULL;
  size_t bytes = 0;
  uint64_t t0 = uv_hrtime();
  int rc = loader->load(loader->user, e->path, e->config, &model, &bytes);
  uint64_t t1 = uv_hrtime();
  if (rc > 0)
    rc = MS_ELOAD;

  ms_model_t *evicted = NULL;
  int refused = 0; /* loaded, but cannot be kept: unload it again */
  char msg[MS__REQ_ERRLEN];
  msg[0] = '\0';
  ms__br_wrlock(&reg->lock);
  if (rc == 0 && (uint64_t)bytes > UINT64_MAX - reg->bytes_resident) {
    rc = MS_ERANGE; /* an absurd size would wrap the accounting */
    refused = 1;
    (void)snprintf(msg, sizeof(msg),
                   "loader for \"%s\" reported an absurd size (%zu bytes)",
                   e->path, bytes);
  } else if (rc == 0 && budget_make_room(reg, bytes, &evicted) != 0) {
    rc = MS_ENOMEM;
    refused = 1;
    (void)snprintf(msg, sizeof(msg),
                   "\"%s\" needs %zu bytes: over the %llu-byte budget "
                   "even with every idle model evicted",
                   e->path, bytes, (unsigned long long)reg->max_bytes);
  } else if (rc != 0) {
    (void)snprintf(msg, sizeof(msg), "loader for \"%s\" failed: %s (%d)",
                   e->path, ms_strerror(rc), rc);
  }
  if (rc == 0) {
    e->model = model;
    e->bytes = bytes;
    e->loaded_at_ns = t1;
    e->load_ns = t1 - t0;
    atomic_store_explicit(&e->idle_seq,
                          atomic_fetch_add(&reg->idle_clock, 1) + 1,
                          memory_order_relaxed);
    reg->bytes_resident += bytes;
    reg->models_resident++;
    atomic_fetch_add_explicit(&reg->loads, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&reg->load_ns_total, t1 - t0,
                              memory_order_relaxed);
  } else {
    (void)table_unlink(reg, e);
    atomic_fetch_add_explicit(&reg->load_failures, 1, memory_order_relaxed);
    e->errmsg = ms__strdup(msg); /* NULL: waiters fall back to ms_strerror */
  }
  uv_mutex_lock(&reg->wait_mutex);
  e->status = rc;
  atomic_store_explicit(&e->state, rc == 0 ? MS__READY : MS__FAILED,
                        memory_order_release);
  complete_waiters_locked(e);
  uv_cond_broadcast(&reg->wait_cond);
  uv_mutex_unlock(&reg->wait_mutex);
  ms__br_wrunlock(&reg->lock);

  (void)unload_list(evicted);
  if (rc == 0) {
    *out = e;
    return 0;
  }
  if (refused && e->unload != NULL)
    e->unload(e->user, model);
  ms__errmsg_set(reg, rc, "%s", msg);
  entry_drop_failed(e);
  return rc;
}

/* Write lock held, key not in the table: a new LOADING entry for it, held
 * once for its loader.  NULL when out of memory. */
/* Write lock held: links a new entry (cannot fail). */
static void link_locked(ms_registry_t *reg, ms_model_t *e) {
  ms_model_t **b = bucket_of(reg, e->hash);
  e->next = *b;
  *b = e;
  if (++reg->nentries > reg->nbuckets)
    table_grow(reg);
  atomic_fetch_add_explicit(&reg->misses, 1, memory_order_relaxed);
}

static ms_model_t *insert_locked(ms_registry_t *reg, const ms_key_t *key,
                                 const ms_loader_t *loader, int loader_here) {
  ms_model_t *e = entry_new(reg, key, loader, loader_here);
  if (e == NULL)
    return NULL;
  link_locked(reg, e);
  return e;
}

/* Write lock held: e is LOADING and the calling thread is its loader. */
static int is_own_load(const ms_model_t *e) {
  uv_thread_t self = uv_thread_self();
  return e->loader_known && uv_thread_equal(&e->loader_thread, &self);
}

static int acquire_slow(ms_registry_t *reg, const ms_key_t *key,
                        const ms_loader_t *loader, uint64_t timeout_ms,
                        ms_model_t **out) {
  ms_model_t *expired = NULL;
  ms__br_wrlock(&reg->lock);
  ms_model_t *e = table_find(reg, key);
  if (e != NULL) {
    if (atomic_load_explicit(&e->state, memory_order_acquire) == MS__READY) {
      atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
      atomic_fetch_add_explicit(&e->hits, 1, memory_order_relaxed);
      ms__br_wrunlock(&reg->lock);
      *out = e;
      return 0;
    }
    if (is_own_load(e)) {
      ms__br_wrunlock(&reg->lock);
      return ms__errmsg_set(reg, MS_EDEADLK,
                            "\"%s\" requested from inside its own loader",
                            e->path);
    }
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    ms__br_wrunlock(&reg->lock);
    return wait_for_load(reg, e, timeout_ms, out);
  }

  /* A miss: the slow path is a good moment to drop expired idle models. */
  evict_matching(reg, pred_expired, uv_hrtime(), &expired);
  e = insert_locked(reg, key, loader, 1);
  ms__br_wrunlock(&reg->lock);
  (void)unload_list(expired);
  if (e == NULL)
    return ms__errmsg_set(reg, MS_ENOMEM, "out of memory");
  return run_load(reg, e, loader, out);
}

int ms_registry_acquire_key(ms_registry_t *reg, const ms_key_t *key,
                            const ms_loader_t *loader, uint64_t timeout_ms,
                            ms_model_t **out) {
  if (MS__UNLIKELY(reg == NULL || key == NULL || out == NULL ||
                   loader == NULL || loader->load == NULL ||
                   loader->struct_size < MS__LOADER_V1)) {
    return reg == NULL ? MS_EINVAL
                       : ms__errmsg_set(reg, MS_EINVAL,
                                        "NULL argument, or no load function, "
                                        "or loader struct_size too small");
  }

  /* Hit path: the read side of the lock (this thread's slot only), lookup,
   * two atomic increments on the entry.  No allocation, no system call. */
  unsigned slot = ms__br_rdlock(&reg->lock);
  ms_model_t *e = table_find(reg, key);
  if (MS__LIKELY(e != NULL &&
                 atomic_load_explicit(&e->state, memory_order_acquire) ==
                     MS__READY)) {
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&e->hits, 1, memory_order_relaxed);
    ms__br_rdunlock(&reg->lock, slot);
    *out = e;
    return 0;
  }
  ms__br_rdunlock(&reg->lock, slot);
  /* The caller's loader may be older (smaller) or newer than ours. */
  ms_loader_t l = MS_LOADER_INIT;
  if (ms__struct_in(&l, sizeof(l), loader, MS__LOADER_V1) != 0)
    return MS_EINVAL; /* checked above: cannot happen */
  slot = ms__br_enter(&reg->lock);
  int rc = acquire_slow(reg, key, &l, timeout_ms, out);
  ms__br_leave(&reg->lock, slot);
  return rc;
}

int ms_registry_acquire(ms_registry_t *reg, const char *path,
                        const char *config_json, const ms_loader_t *loader,
                        uint64_t timeout_ms, ms_model_t **out) {
  if (reg == NULL)
    return MS_EINVAL;
  ms_key_t *key = NULL;
  int rc = ms_key_create(path, config_json, &key);
  if (rc != 0)
    return ms__errmsg_set(reg, rc, "%s", ms_key_errmsg());
  rc = ms_registry_acquire_key(reg, key, loader, timeout_ms, out);
  ms_key_destroy(key);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Async glue (registry_async.c): the same table, waiters completed through  */
/* their uv_async_t instead of the condition variable.                       */
/* ------------------------------------------------------------------------ */

ms_model_t *ms__registry_entry_new(ms_registry_t *reg, const ms_key_t *key,
                                   const ms_loader_t *loader) {
  return entry_new(reg, key, loader, 0); /* loaded on the pool */
}

void ms__registry_entry_drop(ms_model_t *e) {
  if (e != NULL)
    entry_free(e);
}

void ms__registry_begin_async(ms_registry_t *reg, const ms_key_t *key,
                              ms_acquire_req_t *req, ms_model_t *spare,
                              ms_model_t **load) {
  ms_model_t *expired = NULL;
  *load = NULL;
  ms__br_wrlock(&reg->lock);
  ms_model_t *e = table_find(reg, key);
  if (e == NULL) {
    evict_matching(reg, pred_expired, uv_hrtime(), &expired);
    link_locked(reg, spare);
    e = spare;
    spare = NULL;
    *load = e;
    req->origin = 1;
  } else if (atomic_load_explicit(&e->state, memory_order_acquire) !=
             MS__READY) {
    atomic_fetch_add_explicit(&reg->waits, 1, memory_order_relaxed);
  }
  atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed); /* req's */
  uv_mutex_lock(&reg->wait_mutex);
  if (atomic_load_explicit(&e->state, memory_order_relaxed) == MS__READY) {
    atomic_fetch_add_explicit(&e->hits, 1, memory_order_relaxed);
    req->status = 0;
    req->model = e;
    req->done = 1;
    uv_async_send(&req->async);
  } else { /* LOADING: FAILED entries are never in the table */
    req->entry = e;
    req->next = e->waiters;
    e->waiters = req;
  }
  uv_mutex_unlock(&reg->wait_mutex);
  ms__br_wrunlock(&reg->lock);
  (void)unload_list(expired);
  if (spare != NULL)
    entry_free(spare); /* never published */
}

void ms__registry_load(ms_registry_t *reg, ms_model_t *e,
                       const ms_loader_t *loader) {
  unsigned slot = ms__br_enter(&reg->lock);
  ms__br_wrlock(&reg->lock);
  e->loader_thread = uv_thread_self(); /* for MS_EDEADLK */
  e->loader_known = 1;
  ms__br_wrunlock(&reg->lock);
  ms_model_t *m = NULL;
  if (run_load(reg, e, loader, &m) == 0)
    ms_model_release(m); /* the loader's reference; waiters hold theirs */
  ms__br_leave(&reg->lock, slot);
}

int ms__registry_unwait(ms_registry_t *reg, ms_acquire_req_t *req, int status,
                        const char *msg) {
  int found = 0;
  uv_mutex_lock(&reg->wait_mutex);
  ms_model_t *e = req->entry;
  if (!req->done && e != NULL) { /* not done: still on e's list */
    for (ms_acquire_req_t **p = &e->waiters; *p != NULL; p = &(*p)->next)
      if (*p == req) {
        *p = req->next;
        break;
      }
    found = 1;
    /* The loader holds its own reference: this is never the last. */
    atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel);
    req->next = NULL;
    req->entry = NULL;
    req->status = status;
    (void)snprintf(req->errmsg, sizeof(req->errmsg), "%s", msg);
    req->done = 1;
  }
  uv_mutex_unlock(&reg->wait_mutex);
  return found;
}

/* ------------------------------------------------------------------------ */
/* Handles                                                                   */
/* ------------------------------------------------------------------------ */

ms_model_t *ms_model_retain(ms_model_t *model) {
  if (model != NULL)
    atomic_fetch_add_explicit(&model->refs, 1, memory_order_relaxed);
  return model;
}

/* TTL 0: the model that just became idle is unloaded now, if nobody took
 * it meanwhile.  `e` may already be gone, so it is only compared by
 * address against the table, never dereferenced before it is found. */
static void release_unload_now(ms_registry_t *reg, ms_model_t *e,
                               uint64_t hash) {
  ms_model_t *list = NULL;
  ms__br_wrlock(&reg->lock);
  for (ms_model_t *p = *bucket_of(reg, hash); p != NULL; p = p->next)
    if (p == e) {
      if (is_idle(p))
        evict_locked(reg, p, &list);
      break;
    }
  ms__br_wrunlock(&reg->lock);
  (void)unload_list(list);
}

void ms_model_release(ms_model_t *model) {
  if (model == NULL)
    return;
  /* Read everything needed before the reference goes: once it is gone,
   * another thread may evict and free the entry, or destroy reg. */
  ms_registry_t *reg = model->reg;
  const uint64_t hash = model->hash;
  const int unload_now = reg->idle_ttl_ms == 0;
  unsigned slot = 0;
  int entered = 0; /* counted as a call in progress (TTL 0) */
  uint_fast64_t old = atomic_load_explicit(&model->refs, memory_order_relaxed);
  for (;;) {
    /* The holder that makes the model idle records its place in the LRU
     * order and restarts its TTL clock (stamped by the next expiry pass),
     * before the reference goes.  No clock read: releases stay cheap.
     * With TTL 0 it also counts itself in as a call in progress, so that
     * destroy cannot free reg under release_unload_now(). */
    if (old == 1) {
      atomic_store_explicit(
          &model->idle_seq,
          atomic_fetch_add_explicit(&reg->idle_clock, 1, memory_order_relaxed) +
              1,
          memory_order_relaxed);
      atomic_store_explicit(&model->idle_since_ns, 0, memory_order_relaxed);
      if (unload_now && !entered) {
        slot = ms__br_enter(&reg->lock);
        entered = 1;
      }
    }
    if (atomic_compare_exchange_weak_explicit(&model->refs, &old, old - 1,
                                              memory_order_acq_rel,
                                              memory_order_relaxed))
      break;
  }
  if (old == 1 && unload_now)
    release_unload_now(reg, model, hash);
  if (entered)
    ms__br_leave(&reg->lock, slot);
}

void *ms_model_get(const ms_model_t *model) {
  return model != NULL ? model->model : NULL;
}

size_t ms_model_bytes(const ms_model_t *model) {
  return model != NULL ? model->bytes : 0;
}

const char *ms_model_path(const ms_model_t *model) {
  return model != NULL ? model->path : NULL;
}

const char *ms_model_config(const ms_model_t *model) {
  return model != NULL ? model->config : NULL;
}

/* ------------------------------------------------------------------------ */
/* Explicit eviction                                                         */
/* ------------------------------------------------------------------------ */

int ms_registry_evict(ms_registry_t *reg, const ms_key_t *key) {
  if (reg == NULL)
    return MS_EINVAL;
  if (key == NULL)
    return ms__errmsg_set(reg, MS_EINVAL, "key is NULL");
  ms_model_t *list = NULL;
  int rc = 0;
  unsigned slot = ms__br_enter(&reg->lock);
  ms__br_wrlock(&reg->lock);
  ms_model_t *e = table_find(reg, key);
  if (e == NULL || atomic_load(&e->state) != MS__READY)
    rc = ms__errmsg_set(reg, MS_ENOENT, "\"%s\" is not cached", key->path);
  else if (!is_idle(e))
    rc = ms__errmsg_set(reg, MS_EBUSY, "\"%s\" is held", key->path);
  else
    evict_locked(reg, e, &list);
  ms__br_wrunlock(&reg->lock);
  (void)unload_list(list);
  ms__br_leave(&reg->lock, slot);
  return rc;
}

static int evict_idle(ms_registry_t *reg,
                      int (*pred)(ms_registry_t *, ms_model_t *, uint64_t),
                      size_t *count) {
  if (reg == NULL)
    return MS_EINVAL;
  ms_model_t *list = NULL;
  unsigned slot = ms__br_enter(&reg->lock);
  ms__br_wrlock(&reg->lock);
  evict_matching(reg, pred, uv_hrtime(), &list);
  ms__br_wrunlock(&reg->lock);
  size_t n = unload_list(list);
  ms__br_leave(&reg->lock, slot);
  if (count != NULL)
    *count = n;
  return 0;
}

int ms_registry_trim(ms_registry_t *reg, size_t *count) {
  return evict_idle(reg, pred_any, count);
}

int ms_registry_expire(ms_registry_t *reg, size_t *count) {
  return evict_idle(reg, pred_expired, count);
}

const char *ms_registry_errmsg(const ms_registry_t *reg) {
  return reg != NULL ? ms__errmsg_get(reg) : "";
}
