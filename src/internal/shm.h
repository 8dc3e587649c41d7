/* Shared-memory tensors: the region header layout, the cross-process
 * holder protocol, and the allocator's private structures. */
#ifndef MS_INTERNAL_SHM_H
#define MS_INTERNAL_SHM_H

#include "internal/region.h"

#include <uv.h>

#include <stdatomic.h>

/* ------------------------------------------------------------------------ */
/* Region header: the first bytes of every region, native byte order (the   */
/* processes share one machine).  Layout version 1; fields are fixed.       */
/* ------------------------------------------------------------------------ */

#define MS__MAGIC 0x3152534e45544d53ULL /* "SMTENSR1" little-endian */
#define MS__LAYOUT_VERSION 1u
#define MS__SLOTS 64  /* processes that may hold one region at once */
#define MS__ALIGN 64u /* minimum data alignment */
#define MS__POOLED 1u /* flags: the creator pools this region */

/* life = generation << 8 | state */
#define MS__LIVE 1u
#define MS__DEAD 2u
#define MS__LIFE(gen, state) (((gen) << 8) | (state))
#define MS__LIFE_GEN(l) ((l) >> 8)
#define MS__LIFE_STATE(l) ((l)&0xffu)

typedef struct ms__hdr {
  uint64_t magic;               /* 0 */
  uint32_t version;             /* 8 */
  uint32_t header_size;         /* 12: bytes reserved for the header */
  _Atomic uint64_t life;        /* 16 */
  uint64_t region_size;         /* 24 */
  uint64_t creator_token;       /* 32 */
  uint32_t flags;               /* 40 */
  uint8_t dtype_code;           /* 44: DLPack DLDataType */
  uint8_t dtype_bits;           /* 45 */
  uint16_t dtype_lanes;         /* 46 */
  uint32_t ndim;                /* 48 */
  uint32_t holders_hint;        /* 52: informational, never trusted */
  uint64_t data_offset;         /* 56 */
  uint64_t data_bytes;          /* 64 */
  int64_t shape[MS_MAX_NDIM];   /* 72 */
  int64_t strides[MS_MAX_NDIM]; /* 200 */
  uint8_t reserved[184];        /* 328 */
  /* 512: holder slots.  Each is 0 or the liveness token of a process that
   * holds the region.  One atomic word per holder: a process that dies
   * leaves at worst its own token behind, which a sweep clears. */
  _Atomic uint64_t slots[MS__SLOTS];
} ms__hdr;

_Static_assert(sizeof(ms__hdr) == 1024, "region header layout changed");

/* ------------------------------------------------------------------------ */
/* Names.  Region: <prefix><creator token, 16 hex>-<random, 32 hex>.        */
/* Token: <prefix><token, 16 hex>.lock.  Descriptor: ms1:<region>:<gen hex> */
/* ------------------------------------------------------------------------ */

#define MS__PREFIX_MAX 16
#define MS__NAME_MAX (MS__PREFIX_MAX + 16 + 1 + 32)

int ms__name_valid(const char *name, size_t *prefix_len, uint64_t *creator);
void ms__token_name(char *buf, size_t len, const char *prefix, uint64_t token);
int ms__descriptor_parse(const char *desc, char *name, uint64_t *gen);

/* ------------------------------------------------------------------------ */
/* Process-local records                                                     */
/* ------------------------------------------------------------------------ */

/* One mapping of one region by one allocator.  Guarded by the allocator's
 * lock. */
typedef struct ms__map {
  struct ms__map *next;                /* hash chain */
  struct ms__map *lru_prev, *lru_next; /* others' idle mappings (cache) */
  ms__region region;
  ms__hdr *hdr;
  int own;          /* created by this allocator (a pool entry) */
  int writable;     /* data mapped read-write */
  int slot;         /* our holder slot, -1 when we hold none */
  unsigned handles; /* ms_tensor_t objects using it */
  uint64_t gen;     /* generation held while handles > 0 */
  /* own regions only */
  size_t capacity;  /* data bytes the region can take */
  uint64_t charged; /* bytes counted against the quotas; 0 once free */
  uint64_t skip;    /* pool_take pass that found it busy */
  char session[64];
  char name[MS__NAME_MAX + 1];
} ms__map;

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

/* Allocator side of a tensor's last release (shm_pool.c). */
void ms__shm_put(ms_shm_t *shm, ms__map *map);
/* Records an object-less error (ms_shm_errmsg(NULL)); returns code. */
int ms__shm_errmsg_none(int code, const char *msg);
/* A heap tensor with uninitialised data (shm_tensor.c). */
int ms__tensor_new_heap(ms_dtype_t dtype, int ndim, const int64_t *shape,
                        ms_tensor_t **out);

/* ------------------------------------------------------------------------ */
/* Header and holder protocol (shm_tensor.c)                                */
/* ------------------------------------------------------------------------ */

/* Element count and byte size of a shape; MS_ERANGE on overflow. */
int ms__shape_bytes(ms_dtype_t dtype, int ndim, const int64_t *shape,
                    size_t *bytes);
/* Writes a fresh header (life LIVE at gen) for a C-contiguous tensor. */
void ms__hdr_init(ms__hdr *h, size_t header_size, size_t region_size,
                  uint64_t creator, uint32_t flags, uint64_t gen);
void ms__hdr_set_tensor(ms__hdr *h, ms_dtype_t dtype, int ndim,
                        const int64_t *shape, size_t bytes);
/* Validates a header found in a mapping of map_size bytes and fills t's
 * dtype, shape, strides, data and nbytes from private copies. */
int ms__hdr_validate(const ms__hdr *h, size_t map_size, ms_tensor_t *t);
/* Minimal check for sweeps: magic, version and size fit. */
int ms__hdr_plausible(const ms__hdr *h, size_t map_size);

int ms__slot_claim(ms__hdr *h, uint64_t token);
void ms__slot_clear(ms__hdr *h, int slot, uint64_t token);
int ms__slots_empty(ms__hdr *h, int except);
unsigned ms__slots_count(ms__hdr *h);
/* LIVE -> DEAD if no slot is held; 1 if this caller must unlink. */
int ms__life_kill(ms__hdr *h);
/* LIVE gen -> LIVE gen+1 for a creator holding `slot` and nobody else;
 * 0 and *gen on success, MS_EBUSY if someone else holds or raced in. */
int ms__life_recycle(ms__hdr *h, int slot, uint64_t *gen);

#endif
