/* The reader-biased lock of src/internal/brlock.h. */
#include "internal/brlock.h"

static atomic_uint next_slot;
static _Thread_local unsigned slot_plus1; /* 0: not assigned yet */

unsigned ms__br_slot_self(void) {
  unsigned s = slot_plus1;
  if (MS__UNLIKELY(s == 0)) {
    s = atomic_fetch_add_explicit(&next_slot, 1, memory_order_relaxed) %
            MS__BR_SLOTS +
        1;
    slot_plus1 = s;
  }
  return s - 1;
}

int ms__br_init(ms__brlock *lk) {
  for (unsigned i = 0; i < MS__BR_SLOTS; i++) {
    atomic_init(&lk->slots[i].readers, 0);
    atomic_init(&lk->slots[i].calls, 0);
  }
  atomic_init(&lk->writer, 0);
  return uv_mutex_init(&lk->wmutex);
}

void ms__br_destroy(ms__brlock *lk) { uv_mutex_destroy(&lk->wmutex); }

void ms__br_rdlock_slow(ms__brlock *lk, unsigned slot) {
  ms__br_slot *sl = &lk->slots[slot];
  /* Still a call in progress while not counted as a reader. */
  atomic_fetch_add_explicit(&sl->calls, 1, memory_order_seq_cst);
  atomic_fetch_sub_explicit(&sl->readers, 1, memory_order_seq_cst);
  uv_mutex_lock(&lk->wmutex); /* no writer inside while we hold it */
  atomic_fetch_add_explicit(&sl->readers, 1, memory_order_seq_cst);
  uv_mutex_unlock(&lk->wmutex);
  atomic_fetch_sub_explicit(&sl->calls, 1, memory_order_release);
}

void ms__br_wrlock(ms__brlock *lk) {
  uv_mutex_lock(&lk->wmutex);
  atomic_store_explicit(&lk->writer, 1, memory_order_seq_cst);
  for (unsigned i = 0; i < MS__BR_SLOTS; i++) {
    unsigned spins = 0;
    /* Readers hold the lock for a table lookup: spin, then yield. */
    while (atomic_load_explicit(&lk->slots[i].readers, memory_order_seq_cst) !=
           0)
      if (++spins > 256)
        uv_sleep(0);
  }
}

void ms__br_wrunlock(ms__brlock *lk) {
  atomic_store_explicit(&lk->writer, 0, memory_order_release);
  uv_mutex_unlock(&lk->wmutex);
}

uint64_t ms__br_calls(ms__brlock *lk) {
  uint64_t n = 0;
  for (unsigned i = 0; i < MS__BR_SLOTS; i++)
    n += atomic_load_explicit(&lk->slots[i].calls, memory_order_seq_cst);
  return n;
}
