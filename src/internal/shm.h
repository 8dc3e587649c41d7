/* Shared-memory tensors: the region header layout, the cross-process
 * holder protocol with its invariants, names, and the allocator's private
 * structures shared by shm_pool.c, shm_open_cache.c and shm_sweep.c.
 *
 * Two backends (issue 13), one protocol.  The decisions:
 *   - A memfd region has no name.  Its locator <pid>:<fd>:<creator>-<ident>
 *     plays the name's part everywhere in the portable code (the table, the
 *     open cache, stats, the creator token of after_last_clear); only
 *     region_make() and map_get() pick the platform call by its form, and
 *     ms__region_kill() unlinks nothing for a locator (ms__is_locator).
 *   - The creator keeps the memfd open for the region's life, in its own
 *     mapping's region.handle: that is what /proc/<pid>/fd/<fd> reaches.
 *     The descriptor dies with the creator's map (DEAD region dropped by
 *     pool_refresh, ms_shm_destroy, the creator's death).
 *   - Identity: 16 random bytes in hdr->ident (both backends write them;
 *     only locators are checked: 1.1 named regions have zeros there).  A
 *     mismatch after mapping is MS_ENOENT: the number was reused.
 *   - Liveness: a token is alive iff its flock()ed file in the observer's
 *     namespace is locked or its abstract socket "\0<token name>" is bound
 *     (region.h).  Named allocators hold both, memfd ones the socket only,
 *     so both kinds judge both kinds alike (and a 1.1 holder by its file).
 *   - Sweeps list no memfds: they clear dead holders in the memfd regions
 *     mapped here (own and opened); the kernel frees the rest.
 *   - Frozen (I9): F_SEAL_FUTURE_WRITE on memfds; consumers map such a
 *     region read-only and hold it without a slot.  F_SEAL_SEAL is added
 *     only when freezing, since a freeze must be able to add a seal.
 *   - Backend choice: named by default (1.0/1.1 consumers cannot parse ms2;
 *     no crossing of pid namespaces); AUTO = memfd when dir is NULL and a
 *     forked child reopened a memfd of ours (ms__anon_probe, once).
 *   - Win32 needs no memfd backend (see modelshare.h); fd passing over
 *     SCM_RIGHTS would fit region_open_anon's checks unchanged. */
#ifndef MS_INTERNAL_SHM_H
#define MS_INTERNAL_SHM_H

#include "internal/region.h"

#include <uv.h>

#include <stdatomic.h>
#include <string.h>

/* Cross-process atomics must be real instructions on the shared words: an
 * implementation that fell back to libatomic's process-local lock table
 * would silently break the protocol below. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");

/* ------------------------------------------------------------------------ */
/* Region header: the first bytes of every region, native byte order (the   */
/* processes share one machine).  Layout version 1; fields are fixed.       */
/* ------------------------------------------------------------------------ */

#define MS__MAGIC 0x3152534e45544d53ULL /* "SMTENSR1" little-endian */
#define MS__LAYOUT_VERSION 1u
#define MS__SLOTS 64  /* processes that may hold one region at once */
#define MS__ALIGN 64u /* minimum data alignment */
#define MS__POOLED 1u /* flags: the creator pools this region */
#define MS__FROZEN 2u /* flags: frozen by its creator (ms_tensor_freeze) */

/* life = generation << 8 | state */
#define MS__CREATING 0u /* being initialised by its creator */
#define MS__LIVE 1u     /* allocated: generation `gen` may be opened */
#define MS__DEAD 2u     /* unlinked, or about to be: never reopened */
#define MS__FREE 3u     /* released, in its creator's pool: not openable */
#define MS__LIFE(gen, state) (((gen) << 8) | (state))
#define MS__LIFE_GEN(l) ((l) >> 8)
#define MS__LIFE_STATE(l) ((l)&0xffu)

typedef struct ms__hdr {
  uint64_t magic;               /* 0 */
  uint32_t version;             /* 8 */
  uint32_t header_size;         /* 12: bytes reserved for the header */
  _Atomic uint64_t life;        /* 16 */
  uint64_t reserved1;           /* 24: unused (was region_size) */
  uint64_t creator_token;       /* 32: informational, never trusted */
  uint32_t flags;               /* 40 */
  uint8_t dtype_code;           /* 44: DLPack DLDataType */
  uint8_t dtype_bits;           /* 45 */
  uint16_t dtype_lanes;         /* 46 */
  uint32_t ndim;                /* 48 */
  uint32_t reserved2;           /* 52: unused (was holders_hint) */
  uint64_t data_offset;         /* 56 */
  uint64_t data_bytes;          /* 64 */
  int64_t shape[MS_MAX_NDIM];   /* 72 */
  int64_t strides[MS_MAX_NDIM]; /* 200 */
  uint8_t ident[16];            /* 328: the region's random identity */
  uint8_t reserved[168];        /* 344 */
  /* 512: holder slots.  Each is 0 or the liveness token of a process that
   * holds the region.  One atomic word per holder: a process that dies
   * leaves at worst its own token behind, which a sweep clears. */
  _Atomic uint64_t slots[MS__SLOTS];
} ms__hdr;

_Static_assert(sizeof(ms__hdr) == 1024, "region header layout changed");

/* The plain (non-atomic) fields before `reserved`: what a consumer copies
 * once into a private snapshot and validates. */
#define MS__HDR_SNAPSHOT 328

/*
 * THE HOLDER PROTOCOL
 *
 * Actors: the creator (the allocator whose token is in the region name),
 * holders (any process with a token in a slot), openers, and sweepers.
 * Every access to `life` and `slots` is a sequentially consistent atomic
 * operation, so all of them fall into one total order.
 *
 * Liveness.  A slot value is a 64-bit liveness token.  Its holder is alive
 * iff a process holds the kernel object named ms__token_name(token) in the
 * region's namespace (a flock()ed file; a named event on Win32).  The name
 * is a function of the token alone, not of the observer's prefix or
 * options, so every observer reaches the same verdict.  A token is never
 * reported dead while its holder lives: an object that cannot be examined
 * (EACCES, EMFILE...) counts as alive.
 *
 * Transitions of `life` (g = generation):
 *   CREATING(1) -> LIVE(1)   creator, after claiming its own slot
 *   LIVE(g)     -> FREE(g)   whoever clears the last slot (or a sweeper that
 *                            cleared dead holders' slots and saw none left)
 *   FREE(g)     -> LIVE(g+1) the creator recycling it (pool), holding a slot
 *   FREE(g)     -> DEAD(g)   whoever then unlinks it (the creator trimming
 *                            its pool, the last holder of an unpooled
 *                            region, a sweeper when the creator is dead)
 *   CREATING/LIVE -> DEAD    a sweeper, when the creator is dead and no live
 *                            holder remains
 *
 * I1. An opener holds generation g only if it stored its token in a slot
 *     and then read LIVE(g).  (It claims first, then reads.)
 * I2. A tensor's bytes change only through a holder's writable mapping or
 *     after LIVE(g) -> FREE(g) (a recycle writes only after FREE->LIVE(g+1)).
 * I3. FREE->LIVE(g+1) and FREE->DEAD happen only after the actor read FREE
 *     and then read every slot but its own empty.
 *     Proof sketch that no holder loses its region: a holder H of g stored
 *     its slot (Ws) before reading LIVE(g) (Rl, I1).  The LIVE->FREE
 *     exchange (Cf) follows Rl in the total order, or H would have read
 *     FREE.  The recycler/killer reads FREE (Rf) after Cf and the slots (Rs)
 *     after Rf.  So Ws < Rl < Cf <= Rf < Rs: Rs sees H's slot unless H has
 *     cleared it, i.e. no longer holds.  An opener that claims after Rs
 *     reads FREE(g), DEAD or LIVE(g+1) and refuses (MS_ENOENT/MS_ESTALE).
 * I4. LIVE->FREE needs no such re-check: an opener that slipped in between
 *     the last clear and the exchange holds a FREE region, which I3 keeps
 *     intact until it clears its slot.  So no state ever goes backwards and
 *     nobody has to "back off" and leave a region stranded.
 * I5. A descriptor of g opens only while life is LIVE(g): after the last
 *     release it reads FREE(g) or DEAD (MS_ENOENT), after a recycle
 *     LIVE(g+1) (MS_ESTALE).
 * I6. Only the creator writes the header's plain fields, and only while it
 *     holds the region in CREATING or right after FREE->LIVE(g+1), before
 *     it hands out the new descriptor.  Consumers copy the plain fields once
 *     (MS__HDR_SNAPSHOT bytes) and validate and use only that copy.
 * I7. A region is unlinked only by the actor that made it DEAD, and only
 *     under a name that ms__name_parse() accepts.  A sweep unlinks a region
 *     it cannot read as a header only if it could open and map it and its
 *     creator is dead; an open that fails for any other reason than
 *     "no such object" leaves it alone.
 * I8. A process forked from the creator of an allocator does nothing to
 *     cross-process state through the inherited allocator or its tensors
 *     (ms__shm_inherited()): the slots, tokens and regions are the parent's.
 * I9. Frozen regions (ms_tensor_freeze, shm_freeze.c) are never recycled:
 *     the creator sets MS__FROZEN and clears MS__POOLED (the one plain
 *     field written after hand-off; readers treat flags as advisory), its
 *     pool_refresh never pools a map with `frozen` set, and so a frozen
 *     generation ends in DEAD.  A frozen memfd is sealed against writable
 *     mappings: its consumers map it read-only (region.readonly), take no
 *     slot and never write its header; they rely on I9 instead of I3 (no
 *     recycle can change the bytes under them, and the kernel keeps the
 *     pages while they map them).  Such a descriptor still opens only while
 *     life is LIVE(g) (I5), i.e. while the creator holds the tensor.
 */

/* ------------------------------------------------------------------------ */
/* Names (shm_names.c).                                                      */
/*   region      <prefix><creator token, 16 hex>-<random, 32 hex>          */
/*   locator     <pid>:<fd>:<creator token, 16 hex>-<identity, 32 hex>     */
/*               (memfd; pid 1..4194304 and fd 0..2^31-1 in decimal, no    */
/*               leading zeros: one region has exactly one locator)         */
/*   token       mstok-<token, 16 hex>.lock   (prefix-independent)         */
/*   old token   <prefix><token, 16 hex>.lock (1.0; swept, never made)     */
/*   descriptor  ms1:<region>:<generation hex>                              */
/*               ms2:<locator>:<generation hex>   (at most 89 bytes)       */
/* hex is lowercase; nothing else is ever parsed as ours.  A region name    */
/* never contains ':', a locator always does: the portable code keeps the   */
/* locator as the region's "name" (table, open cache, stats, sweeps), and   */
/* only map_get() and ms__region_unlink() tell the two apart.               */
/* ------------------------------------------------------------------------ */

#define MS__PREFIX_MAX 16
#define MS__REGION_NAME_MAX (MS__PREFIX_MAX + 16 + 1 + 32)
#define MS__LOCATOR_MAX (7 + 1 + 10 + 1 + 16 + 1 + 32)
#define MS__NAME_MAX MS__LOCATOR_MAX /* the longer of the two */
_Static_assert(4 + MS__LOCATOR_MAX + 1 + 16 < MS_DESCRIPTOR_MAX,
               "an ms2 descriptor must fit MS_DESCRIPTOR_MAX");
#define MS__TOKEN_PREFIX "mstok-"
#define MS__TOKEN_NAME_MAX (MS__PREFIX_MAX + 16 + 5)

/* 1 if name (a parsed region name or locator) is a locator. */
static inline int ms__is_locator(const char *name) {
  return strchr(name, ':') != NULL;
}
/* 1 if p is a valid allocator prefix: 1..MS__PREFIX_MAX of [A-Za-z0-9_-]. */
int ms__prefix_valid(const char *p);
/* 0 if name is a region name or a locator; its prefix length (0 for a
 * locator) and creator token. */
int ms__name_parse(const char *name, size_t *prefix_len, uint64_t *creator);
/* 0 if name is exactly a locator: where its object is and its identity. */
int ms__locator_parse(const char *name, int64_t *pid, int64_t *fd,
                      uint64_t *creator, uint8_t ident[16]);
/* Writes the locator (buf >= MS__LOCATOR_MAX + 1). */
void ms__locator_format(char *buf, size_t len, int64_t pid, int64_t fd,
                        uint64_t creator, const uint8_t ident[16]);
/* The token object name of `token` (buf >= MS__TOKEN_NAME_MAX + 1). */
void ms__token_name(char *buf, size_t len, uint64_t token);
/* 0 and *token if name is exactly a token name, new form or (when prefix is
 * not NULL) the 1.0 form with that prefix. */
int ms__token_name_parse(const char *name, const char *prefix, uint64_t *token);
int ms__descriptor_parse(const char *desc, char *name, uint64_t *gen);

/* ------------------------------------------------------------------------ */
/* Process-local records                                                     */
/* ------------------------------------------------------------------------ */

/* One mapping of one region by one allocator.  Guarded by the allocator's
 * lock.  A region can have up to three here: the creator's own (pool)
 * mapping, a read-only and a writable opened one: read-only is a property
 * of the mapping, so handles of different access never share one. */
typedef struct ms__map {
  struct ms__map *next;                /* hash chain */
  struct ms__map *lru_prev, *lru_next; /* opened, idle mappings (cache) */
  ms__region region;
  ms__hdr *hdr;
  int own;          /* created by this allocator (a pool entry) */
  int writable;     /* data mapped read-write */
  int in_lru;       /* in the open cache */
  int slot;         /* our holder slot, -1 when we hold none */
  int frozen;       /* own region frozen: never pooled */
  unsigned handles; /* ms_tensor_t objects using it */
  uint64_t gen;     /* generation held while handles > 0 */
  /* own regions only */
  size_t capacity;  /* data bytes the region can take */
  uint64_t charged; /* bytes counted against the quotas; 0 once free */
  uint64_t skip;    /* pool_take pass that found it busy */
  char session[64];
  char name[MS__NAME_MAX + 1];
} ms__map;

typedef struct ms__session {
  struct ms__session *next;
  uint64_t bytes;
  char label[64];
} ms__session;

#define MS__NBUCKETS 256 /* mappings per allocator are few; chains short */

struct ms_shm {
  uv_mutex_t lock;
  ms__ns *ns;
  char prefix[MS__PREFIX_MAX + 1];
  uint64_t token;
  ms__token tok;
  char token_name[MS__TOKEN_NAME_MAX + 1];
  unsigned epoch; /* ms__fork_epoch() when created: see I8 */
  uint64_t max_bytes, max_session_bytes, pool_bytes, open_cache_bytes;
  uint32_t open_cache;
  int64_t allowed_uid;
  uint32_t backend; /* MS_SHM_BACKEND_NAMED or _MEMFD (auto resolved) */
  size_t page, header_size;

  ms__map *buckets[MS__NBUCKETS];
  ms__map *lru_head, *lru_tail; /* opened mappings nobody here holds */
  uint32_t lru_len;
  uint64_t lru_bytes;
  ms__session *sessions;
  unsigned live_tensors;
  uint64_t bytes_allocated;
  uint64_t take_pass;
  ms_shm_stats_t st; /* counters; the gauges are computed on demand */
};

struct ms_tensor {
  atomic_uint refs;
  ms_shm_t *shm; /* NULL: heap tensor */
  ms__map *map;
  void *data;
  size_t nbytes;
  ms_dtype_t dtype;
  int ndim;
  int64_t shape[MS_MAX_NDIM];
  int64_t strides[MS_MAX_NDIM];
  uint64_t gen;
  int writable; /* this handle may write the data */
  void *heap;   /* heap tensors: the allocation data points into */
};

/* ---- shm_pool.c ---- */
/* 1 if shm was inherited across fork() by this process (I8). */
int ms__shm_inherited(const ms_shm_t *shm);
/* Calls that would touch cross-process state refuse in a forked child. */
#define MS__REFUSE_IF_INHERITED(shm)                                           \
  do {                                                                         \
    if (MS__UNLIKELY(ms__shm_inherited(shm)))                                  \
      return ms__errmsg_set(shm, MS_EINVAL,                                    \
                            "allocator inherited across fork(): create a new " \
                            "one in this process");                            \
  } while (0)
/* Own regions nobody holds any more: credit, pool or unlink.  Lock held. */
void ms__pool_refresh(ms_shm_t *shm);
/* Allocator side of a tensor's last release. */
void ms__shm_put(ms_shm_t *shm, ms__map *map);
/* Records an object-less error (ms_shm_errmsg(NULL)); returns code. */
int ms__shm_errmsg_none(int code, const char *msg);
ms_tensor_t *ms__tensor_new(ms_shm_t *shm, ms__map *m);
/* The one way a region is made.  A new region for `bytes` of data (rounded
 * up to pages: m->capacity), header flags `flags` (MS__POOLED or 0), its
 * random identity in hdr->ident, LIVE(1) with our slot claimed, in the
 * table as one of our own (own, writable), no handle, charged nothing.
 * prefix NULL: the allocator's own kind (its backend: a name with its
 * prefix, or a memfd); else a named region "<prefix><token>-<identity>"
 * whatever the backend (host images: found by name, they outlive their
 * creator).  MS_ERANGE, MS_ENOMEM, MS_ENOSPC, ...  Lock held. */
int ms__region_new(ms_shm_t *shm, const char *prefix, size_t bytes,
                   uint32_t flags, ms__map **out);

/* ---- shm_open_cache.c: the table of mappings and the open cache ---- */
ms__map *ms__map_find(ms_shm_t *shm, const char *name, int own, int writable);
void ms__map_insert(ms_shm_t *shm, ms__map *m);
/* Out of the table and the cache, unmapped, freed.  Lock held. */
void ms__map_drop(ms_shm_t *shm, ms__map *m);
/* An opened mapping nobody here holds any more: cache it or drop it. */
void ms__cache_put(ms_shm_t *shm, ms__map *m);
/* Drops cached mappings of regions that are no longer LIVE. */
void ms__cache_prune(ms_shm_t *shm);
/* Our slot on a region was cleared: if it was the last, take the region
 * out of LIVE and, when nobody will reuse it, unlink it.  Lock held. */
void ms__after_last_clear(ms_shm_t *shm, ms__map *m);

/* ---- shm_sweep.c ---- */
/* 1 if the holder of token is alive (ours counts as alive). */
int ms__holder_alive(ms_shm_t *shm, uint64_t token);
/* FREE(g) -> DEAD and unlink, if nobody holds it (I3, I7).  1 if done. */
int ms__region_kill(ms_shm_t *shm, ms__hdr *h, const char *name);
/* The allocator's sweep: dead tokens (any prefix), its prefix's regions,
 * the memfd regions mapped here.  Lock held. */
int ms__sweep_locked(ms_shm_t *shm, size_t *reclaimed);
/* The same rules for the regions named with another prefix (a host
 * image's, internal/image.h), then our own regions freed by them
 * (ms__pool_refresh).  Takes the lock.  Where the namespace cannot be
 * listed, the regions of that prefix mapped here.  0, MS_EIO, MS_ENOMEM. */
int ms__sweep_prefix(ms_shm_t *shm, const char *prefix, size_t *reclaimed);
/* One kind of object a public sweep reclaims: fn gets *reclaimed (set
 * also on failure) and returns 0 or an MS_E* code; `what` names them in
 * the error message. */
typedef struct ms__sweep_part {
  int (*fn)(ms_shm_t *shm, size_t *reclaimed);
  const char *what;
} ms__sweep_part;
/* The public sweeps (ms_shm_sweep, ms_channel_reclaim, ms_image_sweep):
 * MS_EINVAL for NULL or an inherited shm, then every part, even after one
 * failed; the first failure is returned with its message set and
 * *reclaimed untouched, else *reclaimed (may be NULL) gets the sum. */
int ms__sweep_run(ms_shm_t *shm, const ms__sweep_part *parts, size_t n,
                  size_t *reclaimed);

/* A heap tensor with uninitialised data (shm_tensor.c). */
int ms__tensor_new_heap(ms_dtype_t dtype, int ndim, const int64_t *shape,
                        ms_tensor_t **out);

/* ------------------------------------------------------------------------ */
/* Header and holder protocol (shm_tensor.c)                                */
/* ------------------------------------------------------------------------ */

/* Element count and byte size of a shape; MS_ERANGE on overflow. */
int ms__shape_bytes(ms_dtype_t dtype, int ndim, const int64_t *shape,
                    size_t *bytes);
/* Writes a fresh header in state CREATING(gen). */
void ms__hdr_init(ms__hdr *h, size_t header_size, uint64_t creator,
                  uint32_t flags, uint64_t gen);
void ms__hdr_set_tensor(ms__hdr *h, ms_dtype_t dtype, int ndim,
                        const int64_t *shape, size_t bytes);
/* Fills t's dtype, shape, strides and nbytes from the arguments (already
 * checked by ms__shape_bytes) and data from base + data_offset. */
void ms__tensor_fill(ms_tensor_t *t, ms_dtype_t dtype, int ndim,
                     const int64_t *shape, size_t bytes, void *data);
/* Copies the header found in a mapping of map_size bytes once, validates
 * the copy and fills t from it. */
int ms__hdr_validate(const ms__hdr *h, size_t map_size, ms_tensor_t *t);
/* Minimal check for sweeps: magic, version and size fit. */
int ms__hdr_plausible(const ms__hdr *h, size_t map_size);

/* A free slot now holding token, or -1 (all MS__SLOTS taken). */
int ms__slot_claim(ms__hdr *h, uint64_t token);
/* Clears slot if it still holds token; out-of-range slots are ignored. */
void ms__slot_clear(ms__hdr *h, int slot, uint64_t token);
int ms__slots_empty(ms__hdr *h, int except);
unsigned ms__slots_count(ms__hdr *h);
/* LIVE(gen) -> FREE(gen) if no slot is held (I4).  1 if it moved. */
int ms__life_free(ms__hdr *h);
/* FREE(g) -> DEAD(g) if no slot is held (I3).  CREATING/LIVE -> DEAD too
 * when `any_state` (sweeps, once the creator is dead).  1 if it moved. */
int ms__life_kill(ms__hdr *h, int any_state);
/* FREE(g) -> LIVE(g+1) for a creator holding `slot` and nobody else (I3);
 * 0 and *gen on success, MS_EBUSY if someone else holds it. */
int ms__life_recycle(ms__hdr *h, int slot, uint64_t *gen);

#endif
