/* Model registry internals, shared by registry.c, registry_async.c and
 * registry_stats.c. */
#ifndef MS_INTERNAL_REGISTRY_H
#define MS_INTERNAL_REGISTRY_H

#include "internal/common.h"

#include <uv.h>

#include <stdatomic.h>

enum { MS__LOADING = 0, MS__READY = 1, MS__FAILED = 2 };

/*
 * One cached model.  `refs` counts handles plus callers waiting on a load;
 * an entry with refs > 0 is never freed.  A READY entry with refs == 0 is
 * idle and may be evicted, which needs the table's write lock, so a reader
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
  int status;                /* load result; read once state != LOADING */
  uv_thread_t loader_thread; /* valid while LOADING */
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

struct ms_registry {
  uv_rwlock_t lock;      /* the table and every entry's membership */
  uv_mutex_t wait_mutex; /* guards LOADING -> READY/FAILED transitions */
  uv_cond_t wait_cond;   /* broadcast when any load completes */
  ms_model_t **buckets;
  size_t nbuckets; /* power of two */
  size_t nentries;
  uint64_t idle_ttl_ms;
  uint64_t max_bytes;
  /* Counters.  Atomics so that paths outside the write lock can count. */
  atomic_uint_fast64_t misses, waits, timeouts, loads, load_failures, evictions,
      load_ns_total;
  /* Under the write lock. */
  atomic_uint_fast64_t idle_clock; /* LRU sequence */
  uint64_t retired_hits;           /* hits of evicted entries */
  uint64_t bytes_resident;
  uint64_t models_resident;
  /* libuv glue (registry_async.c). */
  atomic_uint_fast64_t pending_async;
  _Atomic(void *) timer;
};

#endif
