/* Host-scope images: the image handle (lookup, iteration, release).
 * Acquiring is in image_acquire.c; the protocol in internal/image.h. */
#include "internal/image.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t ms__img_now_ms(void) {
  uv_timeval64_t tv;
  if (uv_gettimeofday(&tv) != 0)
    return 0;
  return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

/* ------------------------------------------------------------------------ */
/* The image handle                                                          */
/* ------------------------------------------------------------------------ */

void ms__img_touch(ms_shm_t *shm, const char *idx) {
  ms__region r = {0};
  const char *why = NULL;
  if (ms__region_open(shm->ns, idx, sizeof(ms__img_idx), shm->allowed_uid, &r,
                      &why) != 0)
    return;
  ms__img_idx *h = r.base;
  uint64_t magic;
  memcpy(&magic, &h->magic, sizeof(magic));
  if (magic == MS__IMG_MAGIC)
    atomic_store(&h->last_used_ms, ms__img_now_ms());
  ms__region_unmap(&r);
}

void ms_image_release(ms_image_t *img) {
  if (img == NULL)
    return;
  for (size_t i = 0; i < img->n; i++)
    ms_tensor_release(img->e[i].t);
  if (img->keep_ms > 0 && !ms__shm_inherited(img->shm))
    ms__img_touch(img->shm, img->idx); /* after the release: keep from now */
  ms__free(img->names);
  ms__free(img->e);
  ms__free(img);
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const ms__img_tensor *)a)->name,
                ((const ms__img_tensor *)b)->name);
}

int ms_image_tensor(const ms_image_t *img, const char *name,
                    ms_tensor_t **out) {
  if (img == NULL || name == NULL || out == NULL)
    return MS_EINVAL;
  ms__img_tensor k = {name, NULL};
  const ms__img_tensor *e = bsearch(&k, img->e, img->n, sizeof(k), by_name);
  if (e == NULL)
    return MS_ENOENT;
  *out = e->t;
  return 0;
}

int ms_image_foreach(const ms_image_t *img,
                     int (*fn)(const char *name, ms_tensor_t *t, void *user),
                     void *user) {
  if (img == NULL || fn == NULL)
    return MS_EINVAL;
  for (size_t i = 0; i < img->n; i++) {
    int rc = fn(img->e[i].name, img->e[i].t, user);
    if (rc != 0)
      return rc;
  }
  return 0;
}

size_t ms_image_count(const ms_image_t *img) {
  return img != NULL ? img->n : 0;
}
uint64_t ms_image_bytes(const ms_image_t *img) {
  return img != NULL ? img->bytes : 0;
}
int ms_image_built_here(const ms_image_t *img) {
  return img != NULL && img->built;
}

ms_image_t *ms__img_new(ms_shm_t *shm, size_t n, size_t name_bytes) {
  ms_image_t *img = ms__calloc(1, sizeof(*img));
  if (img == NULL)
    return NULL;
  img->shm = shm;
  img->e = ms__calloc(n, sizeof(*img->e));
  img->names = ms__malloc(name_bytes);
  if (img->e == NULL || img->names == NULL) {
    ms__free(img->e);
    ms__free(img->names);
    ms__free(img);
    return NULL;
  }
  return img;
}
