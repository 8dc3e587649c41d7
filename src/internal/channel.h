/* The descriptor channel: the ring's layout in shared memory, its header
 * validator, and the protocol between one producer and its subscribers,
 * with the invariants channel.c keeps.  The wait/wake primitives it uses
 * are at the end of internal/region.h (shm_wait_linux.c,
 * shm_wait_win32.c). */
#ifndef MS_INTERNAL_CHANNEL_H
#define MS_INTERNAL_CHANNEL_H

#include "internal/common.h"

#include <stdatomic.h>

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free");

/* ------------------------------------------------------------------------ */
/* Names.  A ring is the object  msch-<name>.ring  in the allocator's       */
/* namespace, <name> 1..MS__CH_NAME_MAX of [A-Za-z0-9_-].  It is            */
/* prefix-independent (producer and subscribers may use different          */
/* allocator prefixes) and contains a '.', which ms__name_parse() never     */
/* accepts, and does not end in ".lock": the allocator's sweep can never    */
/* take a ring for a region or a token (I7 of internal/shm.h).             */
/* ------------------------------------------------------------------------ */

#define MS__CH_PREFIX "msch-"
#define MS__CH_SUFFIX ".ring"
#define MS__CH_NAME_MAX 32
#define MS__CH_OBJ_MAX (5 + MS__CH_NAME_MAX + 5)

/* A ring is built under a staging name and then linked to its ring name
 * (C0):  msch-<name>.<creator token, 16 hex>-<random, 8 hex>.new  .  It
 * carries its creator's liveness token, so that a reclaim can tell an
 * abandoned creation from one under way; like the ring name it contains a
 * '.' and does not end in ".lock". */
#define MS__CH_STAGE_SUFFIX ".new"
#define MS__CH_STAGE_MAX (MS__CH_OBJ_MAX - 5 + 1 + 16 + 1 + 8 + 4)

/* Unlinks the rings whose producer died and the staging objects whose
 * creator died (C0); *reclaimed gets how many.  ms_channel_reclaim() and
 * ms_shm_sweep() run it.  0 (also where nothing can be listed), MS_EIO,
 * MS_ENOMEM; no message set. */
int ms__channel_reclaim_all(ms_shm_t *shm, size_t *reclaimed);

/* 1 if name is a valid user channel name. */
int ms__ch_name_valid(const char *name);
/* 0 if obj is exactly a ring object name (its user name not returned). */
int ms__ch_obj_parse(const char *obj);
/* 0 and *token if obj is exactly a staging name. */
int ms__ch_stage_parse(const char *obj, uint64_t *token);

/* ------------------------------------------------------------------------ */
/* Layout, native byte order, version 1.                                    */
/*   [0, 256)                     ring header                               */
/*   [sub_offset, + max_subs*64)  subscriber entries                        */
/*   [slot_offset, + cap*slot)    slots                                     */
/* ------------------------------------------------------------------------ */

#define MS__CH_MAGIC 0x314e414843534d53ULL /* "SMSCHAN1" little-endian */
#define MS__CH_VERSION 1u
#define MS__CH_CAP_MAX (1u << 20)
#define MS__CH_SUBS_MAX 64u
#define MS__CH_PAYLOAD_MAX (1u << 16)
#define MS__CH_SLOT_HDR 32u

/* Message kinds in a slot. */
#define MS__CH_RAW 1u
#define MS__CH_TENSOR 2u

typedef struct ms__ch_hdr {
  /* Written once by the producer before the ring is published (I1);
   * subscribers copy these into a snapshot and validate the copy. */
  uint64_t magic;          /* 0 */
  uint32_t version;        /* 8 */
  uint32_t capacity;       /* 12: slots, a power of two */
  uint32_t slot_size;      /* 16: bytes per slot, a multiple of 64 */
  uint32_t payload;        /* 20: payload bytes per slot */
  uint32_t max_subs;       /* 24 */
  uint32_t policy;         /* 28: MS_CHANNEL_BLOCK / MS_CHANNEL_DROP_OLDEST */
  uint64_t sub_offset;     /* 32 */
  uint64_t slot_offset;    /* 40 */
  uint64_t total_size;     /* 48 */
  uint64_t producer_token; /* 56 */
  uint8_t reserved[64];    /* 64 */
  /* Shared words (128: their own cache lines). */
  _Atomic uint64_t head;    /* 128: messages published */
  _Atomic uint32_t closed;  /* 136: 1 once the producer closed cleanly */
  _Atomic uint32_t ready;   /* 140: 1 once the header is complete */
  _Atomic uint32_t p_cpu;   /* 144: ms__cpu_now() at the last send (C10) */
  uint8_t pad1[44];         /* 148 */
  _Atomic uint32_t space;   /* 192: futex word the producer sleeps on */
  _Atomic uint32_t p_sleep; /* 196: 1 while the producer waits for space */
  uint8_t pad2[56];         /* 200 */
} ms__ch_hdr;
_Static_assert(sizeof(ms__ch_hdr) == 256, "ring header layout changed");

/* The plain fields a subscriber snapshots. */
#define MS__CH_SNAPSHOT 64

typedef struct ms__ch_sub {
  _Atomic uint64_t token;    /* 0: subscriber's liveness token, 0 = free */
  _Atomic uint64_t cursor;   /* 8: next sequence number it will read */
  _Atomic uint64_t dropped;  /* 16: messages it lost (drop-oldest) */
  _Atomic uint64_t received; /* 24 */
  _Atomic uint32_t wake;     /* 32: futex word it sleeps on */
  _Atomic uint32_t asleep;   /* 36: 1: one of its threads may sleep */
  uint8_t pad[24];           /* 40 */
} ms__ch_sub;
_Static_assert(sizeof(ms__ch_sub) == 64, "subscriber entry layout changed");

typedef struct ms__ch_slot {
  _Atomic uint64_t seq; /* 0: seq + 1 when complete, 0 while written */
  uint32_t kind;        /* 8 */
  uint32_t len;         /* 12: payload bytes used */
  uint32_t desc_len;    /* 16: tensor: descriptor bytes at the start */
  uint32_t reserved[3]; /* 20 */
  /* 32: payload (desc_len descriptor bytes, then user bytes) */
} ms__ch_slot;
_Static_assert(sizeof(ms__ch_slot) == MS__CH_SLOT_HDR, "slot header changed");

/* The geometry a subscriber trusts: copied once and validated. */
typedef struct ms__ch_geom {
  uint32_t capacity, slot_size, payload, max_subs, policy;
  uint64_t sub_offset, slot_offset, total_size, producer_token;
} ms__ch_geom;

/* Copies the header at h (map_size bytes mapped) once and validates the
 * copy: magic, version, power-of-two capacity <= MS__CH_CAP_MAX, slot and
 * payload sizes, 1..MS__CH_SUBS_MAX subscribers, the three areas in order,
 * aligned, not overlapping and inside both total_size and the mapping,
 * with no overflow.  0 and *g, or MS_EBADREGION. */
int ms__ch_hdr_validate(const void *h, size_t map_size, ms__ch_geom *g);

/*
 * THE CHANNEL PROTOCOL
 *
 * Actors: one producer P (the process that created the ring and holds the
 * liveness token producer_token), subscribers S (each owns one entry,
 * claimed by storing its allocator's liveness token), and anyone who drops
 * a dead subscriber's entry (P, or ms_channel_sweep()).  Every access to
 * the shared words is a sequentially consistent atomic, so they fall into
 * one total order; slot payloads are plain bytes, ordered by the release
 * store of slot.seq / head and the acquire loads that read them.
 *
 * C0. Creation.  P builds the ring under its staging name (new, zeroed,
 *     fully backed), writes the whole header (C1), and only then links it
 *     to the ring name, which never replaces an existing object; the
 *     staging name goes right after.  So the ring name only ever names a
 *     complete ring, whose producer_token says who made it: a ring whose
 *     producer died (at any point) is found dead by its token and
 *     unlinked by the next create of that name or a reclaim
 *     (ms__channel_reclaim_all: ms_channel_reclaim(), ms_shm_sweep()).  A
 *     creation cut short leaves at most its staging object, whose name
 *     carries the creator's token: a reclaim unlinks it once that token
 *     is dead, and never while its creator lives.  (Where
 *     objects cannot be linked, Win32, the ring is built under its name:
 *     there an object dies with its last handle, so a dead creator's half
 *     ring vanishes with it, and openers refuse it until ready == 1.)
 * C1. P writes the plain header fields once, then stores ready = 1.  A
 *     subscriber reads ready == 1 before it snapshots the header, and uses
 *     only the validated snapshot (ms__ch_hdr_validate) for geometry.
 *     Every index it computes is cursor & (capacity - 1) of the snapshot,
 *     every length is checked against the snapshot's payload: a forged or
 *     scribbled ring gives MS_EBADREGION, never an access outside the
 *     mapping, and every wait is bounded (spins by count, sleeps by the
 *     caller's timeout), so it never hangs a subscriber.
 * C2. Publication: P writes slot k = head & (cap-1): seq = 0, the payload,
 *     then seq = head + 1 (release), then head = head + 1 (seq_cst).  A
 *     subscriber reads message c only after reading head > c; it copies
 *     the slot and then re-reads seq: the copy is message c iff seq was
 *     c + 1 before and after the copy (a seqlock).  Otherwise P overwrote
 *     the slot (drop-oldest only, see C4) and the message is counted as
 *     dropped, never delivered torn.
 * C3. Block policy: P writes sequence h only when every live, attached
 *     subscriber's cursor is > h - cap.  Cursors only grow, and only their
 *     owner stores them, so a slot a subscriber still has to read is never
 *     overwritten: no loss, no duplicate, in order.
 * C4. Drop-oldest: P never waits; a subscriber whose cursor fell below
 *     head - cap moves it to head - cap and adds the difference to its
 *     `dropped` counter; a message overwritten while being copied (C2)
 *     counts as one drop too.
 * C5. Attach: S claims a free entry (CAS 0 -> token), then reads head and
 *     stores cursor = head.  It receives exactly the messages published
 *     after that load.  P, scanning entries for C3, either misses the
 *     claim (then S's head load follows P's scan, so S never wants a slot
 *     P overwrites) or sees it with a cursor that is stale, i.e. too low
 *     (0 or an older value, never above head): P then waits or keeps a
 *     tensor longer, never less.
 * C6. Wake-ups (no lost wake-up, no system call while nobody sleeps, at
 *     most one per sleep): a subscriber thread about to sleep does
 *     asleep = 1 ; w = wake ; if head > cursor (or closed, or producer
 *     dead): no sleep ; else futex_wait(&wake, w).  P after publishing
 *     does: if asleep && exchange(asleep, 0): wake++ ; futex_wake(&wake)
 *     (all its threads: the receiver and the fd helper).  With seq_cst,
 *     either S's head load sees the new head, or P's asleep load sees S
 *     (Dekker); if P's wake++ lands between S's load of w and its wait,
 *     the wait returns at once (the word changed).  Only P clears asleep,
 *     so a second thread of S that set it too is never left asleep; a
 *     thread that found data and did not sleep costs at most one spare
 *     wake.  The producer sleeping for space (block policy) is the mirror
 *     image on p_sleep / space, woken by a subscriber that advanced its
 *     cursor.  A subscriber that finds data while spinning never sets
 *     asleep, so P makes no system call for it.
 * C7. Tensor lifetime.  P keeps one ms_tensor_t reference per slot that
 *     carries a tensor and releases it only when (a) every entry that was
 *     attached and live has a cursor past that sequence, or (b) the slot
 *     is overwritten under drop-oldest.  S opens the descriptor
 *     (ms_tensor_open: it holds its own holder slot on the region, I1 of
 *     internal/shm.h) before it stores cursor = c + 1.  Hence at every
 *     moment between send and receipt, P or S holds the region: a receiving
 *     subscriber can always open it, even if the sender released its own
 *     handle at once.  (Under drop-oldest, (b) may release it before a slow
 *     subscriber opened it: that subscriber then counts the message as
 *     dropped, per C2/C4, instead of delivering it.)
 * C8. Death.  An entry whose token ms__holder_alive() reports dead is
 *     dropped (CAS token -> 0): a token is never reported dead while its
 *     holder lives, so a live subscriber is never dropped.  P checks when
 *     the ring is full (block policy: at most every MS__CH_LIVENESS_MS
 *     while it waits) and in ms_channel_sweep(); a dead subscriber
 *     therefore pins at most `capacity` tensors until then.  Subscribers
 *     sleep in slices of at most MS__CH_LIVENESS_MS and check P's token
 *     after each: a dead (or closed) producer makes recv fail with
 *     MS_EPIPE once every published message was received.
 * C9. fork(): a channel handle inherited by a forked child belongs to the
 *     parent (like its allocator, I8 of internal/shm.h): every call but
 *     close refuses, and close frees only the child's memory.
 * C10. Spinning only where it can help.  P stores p_cpu = ms__cpu_now()
 *     with every publication (in head's cache line, which it writes
 *     anyway).  A subscriber about to spin (C6) for less than
 *     MS__CH_SPIN_SHARED_US skips the spin and goes straight to the sleep
 *     protocol when p_cpu is its own CPU: P last ran there, so P is
 *     waiting for this very CPU (or has moved), and so short a spin only
 *     delays the message it waits for (measured: a 20 us window cost ~24
 *     us a hop between two processes on one CPU, ~2.4 us without the
 *     spin).  A longer window is a request for latency at the price of a
 *     CPU: it spins anyway, which keeps both processes runnable, so the
 *     scheduler moves one of them to another CPU (skipping it there would
 *     keep the pair on one CPU, sleeping).  p_cpu is a hint read from
 *     shared memory: any value only chooses between a bounded spin and
 *     C6's sleep, which is correct either way.
 */
#define MS__CH_SPIN_SHARED_US 1000u
#define MS__CH_LIVENESS_MS 100u

#endif
