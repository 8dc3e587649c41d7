/* Shared-memory tensors: region names and descriptors, the region header
 * (layout, validation of untrusted fields), the cross-process holder
 * protocol, and the tensor accessors. */
#include "internal/shm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Names and descriptors                                                     */
/* ------------------------------------------------------------------------ */

static int is_name_char(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static int is_hex(int c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int parse_hex(const char *s, size_t n, uint64_t *out) {
  uint64_t v = 0;
  if (n == 0 || n > 16)
    return MS_EINVAL;
  for (size_t i = 0; i < n; i++) {
    if (!is_hex(s[i]))
      return MS_EINVAL;
    v = v << 4 | (uint64_t)(s[i] <= '9' ? s[i] - '0' : s[i] - 'a' + 10);
  }
  *out = v;
  return 0;
}

/* <prefix><16 hex>-<32 hex>, prefix 1..MS__PREFIX_MAX name chars. */
int ms__name_valid(const char *name, size_t *prefix_len, uint64_t *creator) {
  const size_t tail = 16 + 1 + 32;
  size_t n = 0;
  while (n <= MS__NAME_MAX && name[n] != '\0') {
    if (!is_name_char((unsigned char)name[n]))
      return MS_EINVAL;
    n++;
  }
  if (n > MS__NAME_MAX || n < tail + 1 || n - tail > MS__PREFIX_MAX)
    return MS_EINVAL;
  const char *t = name + n - tail;
  for (size_t i = 0; i < tail; i++)
    if (i == 16 ? t[i] != '-' : !is_hex((unsigned char)t[i]))
      return MS_EINVAL;
  if (prefix_len != NULL)
    *prefix_len = n - tail;
  return creator != NULL ? parse_hex(t, 16, creator) : 0;
}

void ms__token_name(char *buf, size_t len, const char *prefix, uint64_t token) {
  (void)snprintf(buf, len, "%s%016llx.lock", prefix, (unsigned long long)token);
}

int ms__descriptor_parse(const char *desc, char *name, uint64_t *gen) {
  if (desc == NULL || strncmp(desc, "ms1:", 4) != 0)
    return MS_EINVAL;
  const char *n = desc + 4;
  size_t nlen = 0; /* scan no further than the string or the longest name */
  while (nlen <= MS__NAME_MAX && n[nlen] != '\0' && n[nlen] != ':')
    nlen++;
  if (nlen == 0 || nlen > MS__NAME_MAX || n[nlen] != ':')
    return MS_EINVAL;
  const char *colon = n + nlen;
  memcpy(name, n, nlen);
  name[nlen] = '\0';
  if (ms__name_valid(name, NULL, NULL) != 0)
    return MS_EINVAL;
  const char *g = colon + 1;
  size_t glen = 0;
  while (glen <= 16 && g[glen] != '\0')
    glen++;
  return parse_hex(g, glen, gen);
}

int ms_tensor_descriptor(const ms_tensor_t *t, char *buf, size_t len) {
  if (t == NULL || buf == NULL || t->map == NULL)
    return MS_EINVAL;
  int n = snprintf(buf, len, "ms1:%s:%llx", t->map->name,
                   (unsigned long long)t->gen);
  return n > 0 && (size_t)n < len ? 0 : MS_ERANGE;
}

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

void ms__hdr_init(ms__hdr *h, size_t header_size, size_t region_size,
                  uint64_t creator, uint32_t flags, uint64_t gen) {
  memset(h, 0, sizeof(*h));
  h->magic = MS__MAGIC;
  h->version = MS__LAYOUT_VERSION;
  h->header_size = (uint32_t)header_size;
  h->region_size = region_size;
  h->creator_token = creator;
  h->flags = flags;
  h->data_offset = header_size;
  atomic_store(&h->life, MS__LIFE(gen, MS__LIVE));
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
  return map_size >= sizeof(ms__hdr) && h->magic == MS__MAGIC &&
         h->version == MS__LAYOUT_VERSION;
}

/*
 * Every field is read once into a local (another process may rewrite the
 * header while we look), checked against the real mapping size, and only
 * the private copies are used afterwards.
 */
int ms__hdr_validate(const ms__hdr *h, size_t map_size, ms_tensor_t *t) {
  if (!ms__hdr_plausible(h, map_size))
    return MS_EBADREGION;
  const uint64_t header_size = h->header_size;
  const uint64_t data_offset = h->data_offset;
  const uint64_t data_bytes = h->data_bytes;
  const uint32_t ndim = h->ndim;
  const ms_dtype_t dtype =
      (ms_dtype_t)((uint32_t)h->dtype_code | (uint32_t)h->dtype_bits << 8 |
                   (uint32_t)h->dtype_lanes << 16);
  if (header_size < sizeof(ms__hdr) || header_size > map_size ||
      data_offset < header_size || data_offset % MS__ALIGN != 0 ||
      data_offset > map_size || data_bytes > map_size - data_offset ||
      ndim > MS_MAX_NDIM || ms_dtype_size(dtype) == 0)
    return MS_EBADREGION;

  int64_t shape[MS_MAX_NDIM], strides[MS_MAX_NDIM], want[MS_MAX_NDIM];
  for (uint32_t i = 0; i < ndim; i++) {
    shape[i] = h->shape[i];
    strides[i] = h->strides[i];
  }
  size_t bytes = 0;
  if (ms__shape_bytes(dtype, (int)ndim, shape, &bytes) != 0 ||
      bytes != data_bytes)
    return MS_EBADREGION;
  /* Tensors are C-contiguous: any other stride could reach outside the
   * data, so only the exact contiguous strides are accepted. */
  contiguous_strides((int)ndim, shape, want);
  for (uint32_t i = 0; i < ndim; i++)
    if (strides[i] != want[i])
      return MS_EBADREGION;

  t->dtype = dtype;
  t->ndim = (int)ndim;
  memcpy(t->shape, shape, ndim * sizeof(int64_t));
  memcpy(t->strides, strides, ndim * sizeof(int64_t));
  t->nbytes = bytes;
  t->data = (char *)h + data_offset;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Holder protocol.  All operations are sequentially consistent: an opener  */
/* publishes its slot and then reads `life`; a reclaimer changes `life` and */
/* then reads the slots again, so at least one of them sees the other.     */
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

int ms__life_kill(ms__hdr *h) {
  uint64_t life = atomic_load(&h->life);
  if (MS__LIFE_STATE(life) != MS__LIVE || !ms__slots_empty(h, -1))
    return 0;
  uint64_t dead = MS__LIFE(MS__LIFE_GEN(life), MS__DEAD);
  if (!atomic_compare_exchange_strong(&h->life, &life, dead))
    return 0;
  if (!ms__slots_empty(h, -1)) {
    /* An opener got in first and may have seen LIVE: back off. */
    atomic_store(&h->life, life);
    return 0;
  }
  return 1;
}

int ms__life_recycle(ms__hdr *h, int slot, uint64_t *gen) {
  uint64_t life = atomic_load(&h->life);
  if (MS__LIFE_STATE(life) != MS__LIVE || !ms__slots_empty(h, slot))
    return MS_EBUSY;
  uint64_t next = MS__LIFE(MS__LIFE_GEN(life) + 1, MS__LIVE);
  if (!atomic_compare_exchange_strong(&h->life, &life, next))
    return MS_EBUSY;
  if (!ms__slots_empty(h, slot)) {
    atomic_store(&h->life, life); /* an opener may hold the old one */
    return MS_EBUSY;
  }
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
  ms_tensor_t *t = calloc(1, sizeof(*t));
  /* malloc has no portable aligned form (C11 aligned_alloc is missing on
   * Windows): over-allocate and align by hand. */
  void *raw = t != NULL ? malloc(bytes + MS__ALIGN) : NULL;
  if (raw == NULL) {
    free(t);
    return MS_ENOMEM;
  }
  atomic_init(&t->refs, 1);
  t->writable = 1;
  t->heap = raw;
  t->data = (char *)raw + (MS__ALIGN - (uintptr_t)raw % MS__ALIGN);
  t->dtype = dtype;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++)
    t->shape[i] = shape[i];
  contiguous_strides(ndim, t->shape, t->strides);
  t->nbytes = bytes;
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
  free(t->heap);
  free(t);
}
