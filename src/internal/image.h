/*
 * Host-scope images: one frozen copy of a model's transformed weights per
 * machine (include/modelshare.h, "Host-scope images").  image_index.c (the
 * index entry's layout and its validator), image_acquire.c (reading
 * entries, election, waiting, publishing), image.c (the handle),
 * image_build.c (the builder's tensors, the overrun check, freezing),
 * image_sweep.c (reclaiming), image_loader.c (registry).
 *
 * THE KEY.  Bytes hashed, in this order, each string with its NUL:
 *   canonical path, canonical config (model_key.c: ms_key_t), transform id,
 *   transform version, then the source file's identity as four
 *   little-endian uint64: st_dev, st_ino, st_size, st_mtim in ns
 *   (uv_fs_stat of the canonical path).
 * The hash is 128 bits (two independent 64-bit FNV-1a lanes, each finished
 * with a 64-bit mixer), written as 32 lowercase hex digits H.  The hash only
 * names objects: the index entry holds the full key, and an entry whose key
 * differs from the caller's (a collision or a forgery) is MS_EBADREGION,
 * never another model's image.
 *
 * OBJECTS, all in the allocator's namespace, owner-only, made exclusively:
 *   msimg-H.idx    the index entry: header, key strings, tensor table
 *   msimg-H.lock   the election lock: one 64-bit word (see ELECTION)
 *   P<tok>-<rnd>   the image's tensors: ordinary regions (internal/shm.h)
 *                  whose prefix P = "mi" + the first 13 hex digits of H +
 *                  "-" is the key's own.  An allocator's own sweep
 *                  (ms__sweep_locked) only looks at its own prefix: only
 *                  ms__image_sweep_all() (ms_image_sweep(), and
 *                  ms_shm_sweep() after the allocator's regions) decides
 *                  for images, by LIFETIME below.
 *
 * INDEX ENTRY (native byte order, the processes share one machine):
 *   ms__img_idx header (256 bytes), then path, config, transform id and
 *   version, each followed by a NUL, then table_bytes of tensor table.
 *   The object's size is exactly that sum.  `state` is CREATING (table
 *   empty), READY or FAILED (error holds the build's code).
 *   Table: per tensor, in name order (strictly increasing by memcmp):
 *     u16 name_len (1..MS_IMAGE_NAME_MAX), name bytes (no NUL),
 *     u32 dtype, u8 ndim (0..MS_MAX_NDIM), i64 shape[ndim],
 *     u8 desc_len (1..MS_DESCRIPTOR_MAX-1), descriptor bytes.
 * Every byte of it is hostile: readers load `state` (seq_cst), copy the
 * whole mapping once into private memory and validate only the copy
 * (ms__img_index_parse, fuzzed by tests/fuzz/fuzz_image_index.c); each
 * descriptor must name a region with the key's prefix P, and each tensor
 * opened must have the table's dtype and shape.  A malformed entry is
 * MS_EBADREGION, never a crash.
 *
 * Writers.  A builder writes an entry only while it holds the lock:
 *   W1. CREATING(a): a new object (the old one unlinked first), with
 *       attempt a = old attempt + 1, every field written before `state`.
 *   W2. READY: the CREATING object is unlinked and a new, complete object
 *       made; its fields and table are written before `state` is stored.
 *   W3. FAILED: `error` is written into the CREATING object, then `state`.
 * Once READY or FAILED, nothing of an entry changes but `last_used_ms`
 * (a plain clock value any holder may store).  So a reader that loaded
 * READY/FAILED before copying sees a complete entry (or a forgery).
 *   W4. An entry whose state word is 0, or an object too short or not yet
 *       backed, was never finished (state is stored last): once the lock
 *       is free it is rebuilt over.  Any other malformed entry is refused
 *       (MS_EBADREGION) and left for ms_image_sweep().
 *
 * ELECTION.  The lock object's word is 0 (free), the liveness token of the
 * allocator whose process builds (internal/shm.h, "Liveness": the kernel
 * drops it when the process dies), or TOMB (the object is being removed:
 * reopen it by name).  An acquirer takes it by CAS from 0 or from a dead
 * token to its own; a release CASes its token back to 0.  A CAS on one
 * shared word admits one winner, and a dead token can be replaced only by
 * one CAS, so at most one live process builds a key at a time.  The lock
 * object is never unlinked while it can be taken: a sweeper first CASes it
 * from 0/dead to TOMB (which fails if someone took it), then unlinks the
 * index, then the lock; a process that reads TOMB reopens by name.
 *   E1. A builder killed mid-build leaves CREATING and a dead token: the
 *       next waiter takes the lock over, sweeps the prefix P (the dead
 *       builder's half-made regions: creator and holder dead), and builds.
 *   E2. A failed build stores FAILED(a) with its code.  Every waiter that
 *       began waiting before attempt a ended reports that code; a later
 *       acquire (it reads FAILED(a) first) builds again.
 *   E3. Waiters never see a partial image: they open tensors only from a
 *       READY entry, which is written after every tensor was filled and
 *       frozen.
 * Waiting polls the entry and the lock with a backoff from 1 to 32 ms
 * (a sleep, never a spin) up to timeout_ms.
 *
 * LIFETIME.  Every acquirer holds every tensor of the image (the holder
 * protocol's slots), so an image lives while some process holds it.  The
 * builder's regions are unpooled: its last holder unlinks them (I3, I7).
 * keep_ms > 0: the builder also puts a keeper token in one slot of each
 * region, a random token no process holds.  It keeps the regions LIVE
 * (openable) after their last release (ms__life_free sees a slot taken),
 * and any sweep of P clears it as dead.  Only the builder (E1: a key whose
 * image is unusable) and ms__image_sweep_all() sweep P
 * (ms__sweep_prefix), and the latter spares
 * a READY image while a live process holds it or for keep_ms after
 * last_used_ms (stored at every acquire and release).
 * The builder's regions are its allocator's own, made by ms__region_new()
 * with prefix P (named whatever the backend; own = 1 in its table of
 * mappings, so ms_tensor_freeze() accepts them) but charged to no quota,
 * created with no MS__POOLED flag and frozen before the entry is
 * published (I9: never pooled, never recycled, MS_OPEN_WRITE refused, the
 * builder's mapping read-only).  Consumers open them read-only.
 */
#ifndef MS_INTERNAL_IMAGE_H
#define MS_INTERNAL_IMAGE_H

#include "internal/shm.h"

#define MS__IMG_MAGIC 0x3158444947534d53ULL /* "SMSGIDX1" little-endian */
#define MS__IMG_VERSION 1u
#define MS__IMG_CREATING 1u
#define MS__IMG_READY 2u
#define MS__IMG_FAILED 3u
#define MS__IMG_TRANSFORM_MAX 64 /* bytes of a transform id or version */
#define MS__IMG_TOMB UINT64_MAX  /* lock word: object being removed */
#define MS__IMG_CANARY 0xa5u     /* fill of the bytes after a tensor */
#define MS__IMG_CANARY_MIN 64u   /* at least this many canary bytes */

typedef struct ms__img_idx {
  uint64_t magic;                /* 0 */
  uint32_t version;              /* 8 */
  uint32_t header_size;          /* 12: sizeof(ms__img_idx) */
  _Atomic uint32_t state;        /* 16 */
  int32_t error;                 /* 20: FAILED: the build's code (< 0) */
  uint64_t attempt;              /* 24: 1, 2, ... per key */
  uint64_t builder_token;        /* 32: informational, never trusted */
  uint64_t keep_ms;              /* 40 */
  _Atomic uint64_t last_used_ms; /* 48: wall clock, ms */
  uint64_t src_dev;              /* 56 */
  uint64_t src_ino;              /* 64 */
  uint64_t src_size;             /* 72 */
  uint64_t src_mtime_ns;         /* 80 */
  uint32_t path_len;             /* 88 */
  uint32_t config_len;           /* 92 */
  uint32_t transform_len;        /* 96 */
  uint32_t version_len;          /* 100 */
  uint32_t ntensors;             /* 104 */
  uint32_t table_bytes;          /* 108 */
  uint64_t image_bytes;          /* 112: sum of the tensors' bytes */
  uint8_t reserved[136];         /* 120 */
} ms__img_idx;

_Static_assert(sizeof(ms__img_idx) == 256, "image index layout changed");

/* The identity an entry is for. */
typedef struct ms__img_key {
  const char *path, *config, *transform, *version;
  uint64_t dev, ino, size, mtime_ns;
} ms__img_key;

/* One tensor of a parsed table: pointers into the parsed buffer. */
typedef struct ms__img_entry {
  const char *name; /* name_len bytes, not NUL-terminated */
  size_t name_len;
  ms_dtype_t dtype;
  int ndim;
  int64_t shape[MS_MAX_NDIM];
  size_t nbytes;
  char desc[MS_DESCRIPTOR_MAX];
} ms__img_entry;

/* A validated snapshot of an entry (ms__img_index_parse). */
typedef struct ms__img_view {
  ms__img_idx hdr;   /* copy of the header */
  ms__img_key key;   /* strings point into the parsed buffer */
  ms__img_entry *tv; /* READY: ntensors entries (free with ms__free) */
  size_t n;
} ms__img_view;

/* ---- image_index.c ---- */
/* The 128-bit hash of key as 32 hex digits (+ NUL). */
void ms__img_hash(const ms__img_key *key, char hex[33]);
/* Object names of a hash: "msimg-H.idx", "msimg-H.lock", prefix P. */
void ms__img_names(const char hex[33], char idx[64], char lock[64],
                   char prefix[MS__PREFIX_MAX + 1]);
/* Validates buf[0..len), a private copy of an entry.  0 and *v (free
 * v->tv with ms__free), MS_EBADREGION (with *why), or MS_ENOMEM. */
int ms__img_index_parse(const void *buf, size_t len, ms__img_view *v,
                        const char **why);
/* 1 if the view's key is exactly key. */
int ms__img_key_equal(const ms__img_view *v, const ms__img_key *key);
/* Size of an entry for key with a table of table_bytes. */
size_t ms__img_index_size(const ms__img_key *key, size_t table_bytes);
/* Writes header fields (state not stored) and strings into the zeroed
 * mapping base; the caller copies the table after them and stores state. */
void ms__img_index_fill(void *base, const ms__img_key *key, uint64_t attempt,
                        uint64_t token, uint64_t keep_ms);
/* Offset of the table in an entry for key. */
size_t ms__img_table_offset(const ms__img_key *key);
/* Encodes one table entry at out (NULL: only measure); its byte count. */
size_t ms__img_table_put(unsigned char *out, const char *name, ms_dtype_t dt,
                         int ndim, const int64_t *shape, const char *desc);

/* ---- image_build.c ---- */
typedef struct ms__img_part {
  char *name;
  ms_tensor_t *t;
  int keeper_slot; /* -1: none */
  unsigned char hdr_copy[MS__HDR_SNAPSHOT];
} ms__img_part;

struct ms_image_builder {
  ms_shm_t *shm;
  char prefix[MS__PREFIX_MAX + 1];
  uint64_t keeper; /* 0: no keeper slots */
  ms__img_part *parts;
  size_t n, cap;
  uint64_t bytes;
};

/* After the build callback: the bytes past every tensor and its header
 * are as written at allocation (else MS_EBADREGION with a message on
 * shm), then every tensor is made read-only. */
int ms__img_builder_seal(ms_image_builder_t *b);
/* Releases every tensor of a failed build (keeper slots cleared first, so
 * the regions go at once). */
void ms__img_builder_discard(ms_image_builder_t *b);

/* ---- image_sweep.c ---- */
/* Reclaims what LIFETIME allows (ms_image_sweep(), ms_shm_sweep()): the
 * objects of keys whose image no live process holds or builds (kept ones
 * after keep_ms), and regions of keys without an entry.  *reclaimed gets
 * the number of objects unlinked.  0 (also where nothing can be listed),
 * MS_EIO, MS_ENOMEM; no message set. */
int ms__image_sweep_all(ms_shm_t *shm, size_t *reclaimed);

/* ---- image.c: the handle ---- */
typedef struct ms__img_tensor {
  const char *name; /* into ms_image.names */
  ms_tensor_t *t;
} ms__img_tensor;

struct ms_image {
  ms_shm_t *shm;
  ms__img_tensor *e; /* sorted by name (strcmp) */
  size_t n;
  char *names;
  uint64_t bytes;
  uint64_t keep_ms;
  int built;
  char idx[64];
};

/* An image of n tensors whose names take name_bytes in all (calloc'd e,
 * malloc'd names), or NULL. */
ms_image_t *ms__img_new(ms_shm_t *shm, size_t n, size_t name_bytes);
/* Stores the wall clock in the entry's last_used_ms (keep_ms). */
void ms__img_touch(ms_shm_t *shm, const char *idx);
uint64_t ms__img_now_ms(void);

/* ---- image_acquire.c ---- */
/* Maps the lock object `name`, creating it if missing. */
int ms__img_lock_map(ms_shm_t *shm, const char *name, ms__region *r);

#endif
