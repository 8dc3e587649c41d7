/* Shared-memory tensors: the region header (layout, validation of a private
 * snapshot of untrusted fields), the cross-process holder protocol (its
 * invariants are in internal/shm.h), and the tensor accessors. */
#include "internal/shm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Shapes and headers                                                        */
/* ------------------------------------------------------------------------ */

size_t ms_dtype_size(ms_dtype_t dtype) {
  switch (dtype) {
  case MS_DTYPE_INT8:
  case MS_DTYPE_UINT8:
  case MS_DTYPE_BOOL:
    return 1;
  case MS_DTYPE_INT16:
  case MS_DTYPE_UINT16:
  case MS_DTYPE_FLOAT16:
  case MS_DTYPE_BFLOAT16:
    return 2;
  case MS_DTYPE_INT32:
  case MS_DTYPE_UINT32:
  case MS_DTYPE_FLOAT32:
    return 4;
  case MS_DTYPE_INT64:
  case MS_DTYPE_UINT64:
  case MS_DTYPE_FLOAT64:
    return 8;
  }
  return 0;
}

int ms__shape_bytes(ms_dtype_t dtype, int ndim, const int64_t *shape,
                    size_t *bytes) {
  size_t item = ms_dtype_size(dtype);
  if (item == 0 || ndim < 0 || ndim > MS_MAX_NDIM ||
      (ndim > 0 && shape == NULL))
    return MS_EINVAL;
  /* The product of the non-zero dimensions is bounded even when another
   * dimension is 0: it sizes the strides, which must fit in int64_t. */
  uint64_t total = item;
  int empty = 0;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0)
      return MS_EINVAL;
    uint64_t d = (uint64_t)shape[i];
    if (d == 0) {
      empty = 1;
      continue;
    }
    if (total > (uint64_t)INT64_MAX / d)
      return MS_ERANGE;
    total *= d;
  }
  if (total > SIZE_MAX / 2)
    return MS_ERANGE;
  *bytes = empty ? 0 : (size_t)total;
  return 0;
}

static void contiguous_strides(int ndim, const int64_t *shape,
                               int64_t *strides) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i] > 0 ? shape[i] : 1;
  }
}

void ms__hdr_init(ms__hdr *h, size_t header_size, uint64_t creator,
                  uint32_t flags, uint64_t gen) {
  memset(h, 0, sizeof(*h));
  h->magic = MS__MAGIC;
  h->version = MS__LAYOUT_VERSION;
  h->header_size = (uint32_t)header_size;
  h->creator_token = creator;
  h->flags = flags;
  h->data_offset = header_size;
  atomic_store(&h->life, MS__LIFE(gen, MS__CREATING));
}

void ms__hdr_set_tensor(ms__hdr *h, ms_dtype_t dtype, int ndim,
                        const int64_t *shape, size_t bytes) {
  h->dtype_code = (uint8_t)(dtype & 0xff);
  h->dtype_bits = (uint8_t)((dtype >> 8) & 0xff);
  h->dtype_lanes = (uint16_t)((dtype >> 16) & 0xffff);
  h->ndim = (uint32_t)ndim;
  memset(h->shape, 0, sizeof(h->shape));
  memset(h->strides, 0, sizeof(h->strides));
  for (int i = 0; i < ndim; i++)
    h->shape[i] = shape[i];
  contiguous_strides(ndim, h->shape, h->strides);
  h->data_bytes = bytes;
}

int ms__hdr_plausible(const ms__hdr *h, size_t map_size) {
  if (map_size < sizeof(ms__hdr))
    return 0;
  uint64_t magic;
  uint32_t version;
  memcpy(&magic, &h->magic, sizeof(magic));
  memcpy(&version, &h->version, sizeof(version));
  return magic == MS__MAGIC && version == MS__LAYOUT_VERSION;
}

void ms__tensor_fill(ms_tensor_t *t, ms_dtype_t dtype, int ndim,
                     const int64_t *shape, size_t bytes, void *data) {
  t->dtype = dtype;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++)
    t->shape[i] = shape[i];
  contiguous_strides(ndim, t->shape, t->strides);
  t->nbytes = bytes;
  t->data = data;
}

/*
 * The plain fields are copied once into a private snapshot (another process
 * may rewrite the header while we look, I6); only the snapshot is checked
 * against the real mapping size and used afterwards.
 */
int ms__hdr_validate(const ms__hdr *h, size_t map_size, ms_tensor_t *t) {
  if (map_size < sizeof(ms__hdr))
    return MS_EBADREGION;
  /* Only the first MS__HDR_SNAPSHOT bytes are meaningful; `life` (an
   * atomic another process may be changing) is not copied. */
  ms__hdr s;
  const size_t life_end = offsetof(ms__hdr, life) + sizeof(h->life);
  memcpy(&s, (const void *)h, offsetof(ms__hdr, life));
  memcpy((char *)&s + life_end, (const char *)h + life_end,
         MS__HDR_SNAPSHOT - life_end);
  const ms_dtype_t dtype =
      (ms_dtype_t)((uint32_t)s.dtype_code | (uint32_t)s.dtype_bits << 8 |
                   (uint32_t)s.dtype_lanes << 16);
  if (s.magic != MS__MAGIC || s.version != MS__LAYOUT_VERSION ||
      s.header_size < sizeof(ms__hdr) || s.header_size > map_size ||
      s.data_offset < s.header_size || s.data_offset % MS__ALIGN != 0 ||
      s.data_offset > map_size || s.data_bytes > map_size - s.data_offset ||
      s.ndim > MS_MAX_NDIM || ms_dtype_size(dtype) == 0)
    return MS_EBADREGION;

  const int ndim = (int)s.ndim;
  size_t bytes = 0;
  if (ms__shape_bytes(dtype, ndim, s.shape, &bytes) != 0 ||
      bytes != s.data_bytes)
    return MS_EBADREGION;
  /* Tensors are C-contiguous: any other stride could reach outside the
   * data, so only the exact contiguous strides are accepted. */
  int64_t want[MS_MAX_NDIM];
  contiguous_strides(ndim, s.shape, want);
  for (int i = 0; i < ndim; i++)
    if (s.strides[i] != want[i])
      return MS_EBADREGION;
  ms__tensor_fill(t, dtype, ndim, s.shape, bytes, (char *)h + s.data_offset);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Holder protocol: the invariants I1-I8 and their argument are in          */
/* internal/shm.h.  Every operation is sequentially consistent.             */
/* ------------------------------------------------------------------------ */

int ms__slot_claim(ms__hdr *h, uint64_t token) {
  for (unsigned i = 0; i < MS__SLOTS; i++) {
    unsigned idx = (unsigned)((token + i) % MS__SLOTS);
    uint64_t expected = 0;
    if (atomic_compare_exchange_strong(&h->slots[idx], &expected, token))
      return (int)idx;
  }
  return -1;
}

void ms__slot_clear(ms__hdr *h, int slot, uint64_t token) {
  if (slot < 0 || slot >= MS__SLOTS)
    return;
  uint64_t expected = token;
  (void)atomic_compare_exchange_strong(&h->slots[slot], &expected, 0);
}

int ms__slots_empty(ms__hdr *h, int except) {
  for (int i = 0; i < MS__SLOTS; i++)
    if (i != except && atomic_load(&h->slots[i]) != 0)
      return 0;
  return 1;
}

unsigned ms__slots_count(ms__hdr *h) {
  unsigned n = 0;
  for (int i = 0; i < MS__SLOTS; i++)
    n += atomic_load(&h->slots[i]) != 0;
  return n;
}

int ms__life_free(ms__hdr *h) {
  uint64_t life = atomic_load(&h->life);
  if (MS__LIFE_STATE(life) != MS__LIVE || !ms__slots_empty(h, -1))
    return 0;
  uint64_t freed = MS__LIFE(MS__LIFE_GEN(life), MS__FREE);
  return atomic_compare_exchange_strong(&h->life, &life, freed);
}

int ms__life_kill(ms__hdr *h, int any_state) {
  uint64_t life = atomic_load(&h->life);
  unsigned st = MS__LIFE_STATE(life);
  if (st == MS__DEAD || (st != MS__FREE && !any_state) ||
      !ms__slots_empty(h, -1))
    return 0;
  uint64_t dead = MS__LIFE(MS__LIFE_GEN(life), MS__DEAD);
  return atomic_compare_exchange_strong(&h->life, &life, dead);
}

int ms__life_recycle(ms__hdr *h, int slot, uint64_t *gen) {
  uint64_t life = atomic_load(&h->life);
  if (MS__LIFE_STATE(life) != MS__FREE || !ms__slots_empty(h, slot))
    return MS_EBUSY;
  uint64_t next = MS__LIFE(MS__LIFE_GEN(life) + 1, MS__LIVE);
  if (!atomic_compare_exchange_strong(&h->life, &life, next))
    return MS_EBUSY;
  *gen = MS__LIFE_GEN(next);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Tensor accessors (shared-memory and heap tensors alike)                  */
/* ------------------------------------------------------------------------ */

void *ms_tensor_data(const ms_tensor_t *t) {
  return t != NULL ? t->data : NULL;
}

ms_dtype_t ms_tensor_dtype(const ms_tensor_t *t) {
  return t != NULL ? t->dtype : (ms_dtype_t)0;
}

int ms_tensor_ndim(const ms_tensor_t *t) { return t != NULL ? t->ndim : 0; }

const int64_t *ms_tensor_shape(const ms_tensor_t *t) {
  return t != NULL ? t->shape : NULL;
}

const int64_t *ms_tensor_strides(const ms_tensor_t *t) {
  return t != NULL ? t->strides : NULL;
}

size_t ms_tensor_nbytes(const ms_tensor_t *t) {
  return t != NULL ? t->nbytes : 0;
}

int ms_tensor_is_writable(const ms_tensor_t *t) {
  return t != NULL && t->writable;
}

int ms__tensor_new_heap(ms_dtype_t dtype, int ndim, const int64_t *shape,
                        ms_tensor_t **out) {
  size_t bytes = 0;
  int rc = ms__shape_bytes(dtype, ndim, shape, &bytes);
  if (rc != 0)
    return rc;
  ms_tensor_t *t = ms__calloc(1, sizeof(*t));
  /* malloc has no portable aligned form (C11 aligned_alloc is missing on
   * Windows): over-allocate and align by hand. */
  void *raw = t != NULL ? ms__malloc(bytes + MS__ALIGN) : NULL;
  if (raw == NULL) {
    ms__free(t);
    return MS_ENOMEM;
  }
  atomic_init(&t->refs, 1);
  t->writable = 1;
  t->heap = raw;
  ms__tensor_fill(t, dtype, ndim, shape, bytes,
                  (char *)raw + (MS__ALIGN - (uintptr_t)raw % MS__ALIGN));
  *out = t;
  return 0;
}

ms_tensor_t *ms_tensor_retain(ms_tensor_t *t) {
  if (t != NULL)
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
  return t;
}

void ms_tensor_release(ms_tensor_t *t) {
  if (t == NULL ||
      atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
    return;
  if (t->shm != NULL)
    ms__shm_put(t->shm, t->map);
  ms__free(t->heap);
  ms__free(t);
}
