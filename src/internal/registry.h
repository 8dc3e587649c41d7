/* Model registry internals, shared by registry.c, registry_async.c and
 * registry_stats.c. */
#ifndef MS_INTERNAL_REGISTRY_H
#define MS_INTERNAL_REGISTRY_H

#include "internal/brlock.h"
#include "internal/common.h"

#include <uv.h>

#include <stdatomic.h>

enum { MS__LOADING = 0, MS__READY = 1, MS__FAILED = 2 };

#define MS__REQ_ERRLEN 256

/*
 * One cached model.  `refs` counts handles plus callers waiting on a load
 * (synchronous waiters, queued async requests, and the loader itself); an
 * entry with refs > 0 is never freed.  A READY entry with refs == 0 is idle
 * and may be evicted, which needs the table's write lock, so a reader
 * holding the read lock may safely increment refs of any entry it finds.
 * FAILED entries are out of the table; the last drop frees them.
 */
struct ms_model {
  ms_model_t *next; /* bucket chain, or eviction list once unlinked */
  ms_registry_t *reg;
  uint64_t hash;
  atomic_uint_fast64_t refs;
  atomic_uint_fast64_t hits;
  /* Idle bookkeeping, kept off the clock so that a release stays cheap:
   * idle_seq orders idle models for LRU (from reg->idle_clock), and
   * idle_since_ns is stamped by the first expiry pass that sees the model
   * idle (0 = not yet seen idle since its last release). */
  atomic_uint_fast64_t idle_seq;
  atomic_uint_fast64_t idle_since_ns;
  atomic_int state;
  int status;                     /* load result; read once state != LOADING */
  char *errmsg;                   /* failure text (FAILED only; may be NULL) */
  int loader_known;               /* loader_thread is set (write lock) */
  uv_thread_t loader_thread;      /* valid while LOADING and loader_known */
  struct ms_acquire_req *waiters; /* async waiters, under wait_mutex */
  void *model;
  size_t bytes;
  void (*unload)(void *user, void *model);
  void *user;
  uint64_t loaded_at_ns;
  uint64_t load_ns;
  size_t path_len;
  size_t config_len;
  char *path;
  char *config;
  char buf[];
};

/*
 * An async acquire (registry_async.c).  It waits on an entry as one of its
 * `waiters` (holding one reference) until the load completes, its timer
 * fires or it is cancelled; whichever comes first sets `done` under
 * reg->wait_mutex and takes it off the list, so exactly one of them
 * completes it.  The result reaches the loop through `async`.
 */
struct ms_acquire_req {
  /* Under reg->wait_mutex. */
  struct ms_acquire_req *next; /* in entry->waiters */
  ms_model_t *entry;           /* waited on, or NULL */
  int done;
  int status;
  ms_model_t *model; /* on success: one reference, owned by the callback */
  char errmsg[MS__REQ_ERRLEN];
  /* Loop thread only. */
  uv_async_t async;
  uv_timer_t timer;
  int has_timer;
  int open_handles;
  int delivering; /* the callback has started: too late to cancel */
  int origin;     /* this request's miss started the load (not a hit) */
  ms_registry_t *reg;
  ms_acquire_cb cb;
  void *user_data;
};

struct ms_registry {
  ms__brlock lock;       /* the table and every entry's membership; also
                            counts calls in progress (destroy) */
  uv_mutex_t wait_mutex; /* guards LOADING -> READY/FAILED transitions */
  uv_cond_t wait_cond;   /* broadcast when any load completes */
  ms_model_t **buckets;
  size_t nbuckets; /* power of two */
  size_t nentries;
  uint64_t idle_ttl_ms;
  uint64_t max_bytes;
  char pad0[64];
  /* Counters.  Atomics so that paths outside the write lock can count. */
  atomic_uint_fast64_t misses, waits, timeouts, loads, load_failures, evictions,
      load_ns_total;
  char pad1[64];
  atomic_uint_fast64_t idle_clock; /* LRU sequence, bumped by releases */
  char pad2[64];
  /* Under the write lock. */
  uint64_t retired_hits; /* hits of evicted entries */
  uint64_t bytes_resident;
  uint64_t models_resident;
  /* libuv glue (registry_async.c). */
  atomic_uint_fast64_t pending_async;
  _Atomic(void *) timer;
};

/* For registry_async.c (defined in registry.c). */

/* A LOADING entry for key, not yet in the table (NULL: out of memory). */
ms_model_t *ms__registry_entry_new(ms_registry_t *reg, const ms_key_t *key,
                                   const ms_loader_t *loader);
/* Frees an entry from ms__registry_entry_new() never published (NULL ok). */
void ms__registry_entry_drop(ms_model_t *e);
/* Starts an async acquire: a hit completes req at once; a load in flight
 * queues req on its entry; a miss publishes `spare` (from
 * ms__registry_entry_new) and returns it in *load (holding the loader's
 * reference): the caller must then run ms__registry_load() for it.  An
 * unused spare is freed.  Cannot fail: everything it needs is allocated
 * before the request's handle exists. */
void ms__registry_begin_async(ms_registry_t *reg, const ms_key_t *key,
                              struct ms_acquire_req *req, ms_model_t *spare,
                              ms_model_t **load);
/* Runs the loader for an entry from ms__registry_begin_async() and
 * publishes the result; drops the loader's reference. */
void ms__registry_load(ms_registry_t *reg, ms_model_t *e,
                       const ms_loader_t *loader);
/* Takes req off its entry's waiters if still there and completes it with
 * status (MS_ETIMEDOUT, MS_ECANCELED).  Returns 1 if it did, 0 if the load
 * had already completed req. */
int ms__registry_unwait(ms_registry_t *reg, struct ms_acquire_req *req,
                        int status, const char *msg);

#endif
