/* Host-scope images: the builder.  Each tensor is a region of its own,
 * named with the key's prefix and created by the calling allocator as one
 * of its own (ms__region_new; never pooled: its header has no MS__POOLED, and
 * ms_tensor_freeze() marks it frozen), filled by the build callback,
 * checked for writes outside it, then frozen.  The protocol is in
 * internal/image.h. */
#include "internal/image.h"

#include <stdlib.h>
#include <string.h>

/* The checked header bytes: the plain fields around `life`. */
static void hdr_snapshot(const ms__hdr *h, unsigned char *out) {
  const size_t life_end = offsetof(ms__hdr, life) + sizeof(h->life);
  memset(out, 0, MS__HDR_SNAPSHOT);
  memcpy(out, (const void *)h, offsetof(ms__hdr, life));
  memcpy(out + life_end, (const char *)h + life_end,
         MS__HDR_SNAPSHOT - life_end);
}

/* A new region of the image for `bytes` of data and the canary after
 * them, held by us (and by the keeper token, with keep_ms).  Lock held. */
static int part_region(ms_image_builder_t *b, size_t bytes, ms__map **out,
                       int *keeper_slot) {
  if (bytes > SIZE_MAX - MS__IMG_CANARY_MIN)
    return MS_ERANGE;
  /* Charged nothing, never pooled (flags 0, then frozen). */
  int rc =
      ms__region_new(b->shm, b->prefix, bytes + MS__IMG_CANARY_MIN, 0, out);
  if (rc == 0)
    *keeper_slot = b->keeper != 0 ? ms__slot_claim((*out)->hdr, b->keeper) : -1;
  return rc;
}

/* Undoes part_region: nobody else knows the region yet.  Lock held. */
static void part_region_undo(ms_image_builder_t *b, ms__map *m,
                             int keeper_slot) {
  ms_shm_t *shm = b->shm;
  ms__slot_clear(m->hdr, keeper_slot, b->keeper);
  ms__slot_clear(m->hdr, m->slot, shm->token);
  m->slot = -1;
  (void)ms__life_free(m->hdr);
  if (ms__region_kill(shm, m->hdr, m->name))
    ms__map_drop(shm, m);
}

int ms_image_builder_add(ms_image_builder_t *b, const char *name,
                         ms_dtype_t dtype, const int64_t *shape, int ndim,
                         void **data) {
  if (b == NULL || name == NULL || data == NULL)
    return MS_EINVAL;
  ms_shm_t *shm = b->shm;
  size_t nl = strlen(name), bytes = 0;
  if (nl == 0 || nl > MS_IMAGE_NAME_MAX)
    return ms__errmsg_set(shm, MS_EINVAL, "tensor name of 1..%d bytes",
                          MS_IMAGE_NAME_MAX);
  if (b->n >= MS_IMAGE_MAX_TENSORS)
    return ms__errmsg_set(shm, MS_EINVAL, "more than %d tensors",
                          MS_IMAGE_MAX_TENSORS);
  int rc = ms__shape_bytes(dtype, ndim, shape, &bytes);
  if (rc != 0)
    return ms__errmsg_set(shm, rc, "tensor %s: bad dtype, ndim or shape", name);
  if (b->n == b->cap) {
    size_t cap = b->cap != 0 ? 2 * b->cap : 16;
    ms__img_part *p = ms__realloc(b->parts, cap * sizeof(*p));
    if (p == NULL)
      return ms__errmsg_set(shm, MS_ENOMEM, "out of memory");
    b->parts = p;
    b->cap = cap;
  }
  ms__img_part *part = &b->parts[b->n];
  memset(part, 0, sizeof(*part));
  part->name = ms__strdup(name);
  if (part->name == NULL)
    return ms__errmsg_set(shm, MS_ENOMEM, "out of memory");

  uv_mutex_lock(&shm->lock);
  ms__map *m = NULL;
  ms_tensor_t *t = NULL;
  rc = part_region(b, bytes, &m, &part->keeper_slot);
  if (rc == 0 && (t = ms__tensor_new(shm, m)) == NULL) {
    part_region_undo(b, m, part->keeper_slot);
    rc = MS_ENOMEM;
  }
  if (rc == 0) {
    ms__hdr_set_tensor(m->hdr, dtype, ndim, shape, bytes);
    ms__tensor_fill(t, dtype, ndim, shape, bytes,
                    (char *)m->hdr + shm->header_size);
    t->writable = 1;
    m->handles = 1;
    shm->live_tensors++;
  }
  uv_mutex_unlock(&shm->lock);
  if (rc != 0) {
    ms__free(part->name);
    return ms__errmsg_set(shm, rc, "cannot allocate image tensor %s: %s", name,
                          ms_strerror(rc));
  }
  memset((char *)t->data + bytes, MS__IMG_CANARY, m->capacity - bytes);
  hdr_snapshot(m->hdr, part->hdr_copy);
  part->t = t;
  b->bytes += bytes;
  b->n++;
  *data = t->data;
  return 0;
}

static int name_cmp(const void *x, const void *y) {
  return strcmp(((const ms__img_part *)x)->name,
                ((const ms__img_part *)y)->name);
}

/* 1 if the part's header and the bytes past its data are as allocated. */
static int part_intact(const ms_shm_t *shm, const ms__img_part *p) {
  const ms__map *m = p->t->map;
  unsigned char now[MS__HDR_SNAPSHOT];
  hdr_snapshot(m->hdr, now);
  if (memcmp(now, p->hdr_copy, sizeof(now)) != 0)
    return 0;
  const unsigned char *pad = (const unsigned char *)m->hdr + sizeof(ms__hdr);
  for (size_t i = 0; i < shm->header_size - sizeof(ms__hdr); i++)
    if (pad[i] != 0)
      return 0;
  const unsigned char *c = (const unsigned char *)p->t->data + p->t->nbytes;
  for (size_t i = 0; i < m->capacity - p->t->nbytes; i++)
    if (c[i] != MS__IMG_CANARY)
      return 0;
  return 1;
}

int ms__img_builder_seal(ms_image_builder_t *b) {
  ms_shm_t *shm = b->shm;
  for (size_t i = 0; i < b->n; i++)
    if (!part_intact(shm, &b->parts[i]))
      return ms__errmsg_set(shm, MS_EBADREGION,
                            "the build callback wrote outside image tensor "
                            "%s (its header or the bytes after its data)",
                            b->parts[i].name);
  qsort(b->parts, b->n, sizeof(*b->parts), name_cmp);
  for (size_t i = 1; i < b->n; i++)
    if (strcmp(b->parts[i - 1].name, b->parts[i].name) == 0)
      return ms__errmsg_set(shm, MS_EINVAL, "two image tensors named %s",
                            b->parts[i].name);
  /* Freeze: read-only for good (ms_tensor_freeze: the builder's mapping
   * becomes read-only, the region never pooled, MS_OPEN_WRITE refused). */
  for (size_t i = 0; i < b->n; i++) {
    int rc = ms_tensor_freeze(b->parts[i].t);
    if (rc != 0)
      return rc; /* the message is set */
  }
  return 0;
}

void ms__img_builder_discard(ms_image_builder_t *b) {
  for (size_t i = 0; i < b->n; i++) {
    ms__img_part *p = &b->parts[i];
    if (p->t == NULL)
      continue;
    if (p->keeper_slot >= 0)
      ms__slot_clear(p->t->map->hdr, p->keeper_slot, b->keeper);
    ms_tensor_release(p->t);
    p->t = NULL;
  }
}
