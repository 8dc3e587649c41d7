/*
 * A reader-biased ("big reader") lock with per-slot counters, for the
 * registry's hit path.
 *
 * Each thread is given one of MS__BR_SLOTS slots on first use (round robin),
 * each slot on a cache line of its own.  A reader only touches its slot:
 * two threads taking the read side at once share no cache line, where a
 * uv_rwlock_t bounces one line between them on every lock and unlock.
 * Writers are rare (misses, evictions, stats) and pay for it: they take a
 * mutex, raise `writer` and wait until every slot's reader count is zero.
 *
 * Protocol (the Dekker pair that makes it safe):
 *   reader: readers[slot]++ (seq_cst); if writer == 0 (seq_cst): inside.
 *   writer: writer = 1 (seq_cst); wait until every readers[i] == 0.
 * With sequentially consistent operations on both sides, either the reader
 * sees the flag or the writer sees the reader's count: never neither.  A
 * reader that sees the flag steps aside (undoes its count), queues on the
 * writers' mutex, and counts itself in while holding it (no writer can be
 * inside then).  While stepped aside it counts itself in calls[slot], so
 * that ms_registry_destroy() still sees it as a call in progress.
 *
 * `calls` per slot counts calls in progress in the owner object's slow paths
 * (ms__br_enter / ms__br_leave), again without a shared cache line.
 */
#ifndef MS_INTERNAL_BRLOCK_H
#define MS_INTERNAL_BRLOCK_H

#include "internal/common.h"

#include <uv.h>

#include <stdatomic.h>
#include <stdint.h>

#define MS__BR_SLOTS 32

/* 64 bytes apart: the counters of two slots never share a cache line,
 * whatever the alignment of the array (the counters sit at the start). */
typedef struct ms__br_slot {
  atomic_uint_fast64_t readers;
  atomic_uint_fast64_t calls;
  char pad[64 - 2 * sizeof(atomic_uint_fast64_t)];
} ms__br_slot;

typedef struct ms__brlock {
  ms__br_slot slots[MS__BR_SLOTS];
  atomic_int writer; /* 1 while a writer is inside or draining readers */
  uv_mutex_t wmutex; /* writers, and readers that stepped aside */
} ms__brlock;

/* This thread's slot (assigned on first use). */
unsigned ms__br_slot_self(void);

int ms__br_init(ms__brlock *lk);
void ms__br_destroy(ms__brlock *lk);
void ms__br_rdlock_slow(ms__brlock *lk, unsigned slot);
void ms__br_wrlock(ms__brlock *lk);
void ms__br_wrunlock(ms__brlock *lk);
/* Calls in progress over all slots (any lock or none held). */
uint64_t ms__br_calls(ms__brlock *lk);

/* Returns the slot to pass to ms__br_rdunlock.  No system call, no
 * allocation, no shared cache line unless a writer is active. */
static inline unsigned ms__br_rdlock(ms__brlock *lk) {
  unsigned s = ms__br_slot_self();
  atomic_fetch_add_explicit(&lk->slots[s].readers, 1, memory_order_seq_cst);
  if (MS__UNLIKELY(atomic_load_explicit(&lk->writer, memory_order_seq_cst) !=
                   0))
    ms__br_rdlock_slow(lk, s);
  return s;
}

static inline void ms__br_rdunlock(ms__brlock *lk, unsigned slot) {
  atomic_fetch_sub_explicit(&lk->slots[slot].readers, 1, memory_order_release);
}

/* A call enters / leaves the owner's slow paths.  Returns the slot. */
static inline unsigned ms__br_enter(ms__brlock *lk) {
  unsigned s = ms__br_slot_self();
  atomic_fetch_add_explicit(&lk->slots[s].calls, 1, memory_order_seq_cst);
  return s;
}

static inline void ms__br_leave(ms__brlock *lk, unsigned slot) {
  atomic_fetch_sub_explicit(&lk->slots[slot].calls, 1, memory_order_release);
}

#endif
