/* Host-scope images in the model registry: a loader whose model is the
 * host image of the key, so that the registry deduplicates within a
 * process and the image across processes. */
#include "internal/abi.h"
#include "internal/image.h"

#include <string.h>

_Static_assert(MS__IMAGE_SOURCE_V1 <= sizeof(ms_image_source_t),
               "frozen image source size");

static int image_load(void *user, const char *path, const char *config_json,
                      void **model, size_t *bytes) {
  const ms_image_source_t *src = user;
  ms_key_t *key = NULL;
  int rc = ms_key_create(path, config_json, &key);
  ms_image_t *img = NULL;
  if (rc == 0)
    rc = ms_image_acquire(src->shm, key, src->options, &img);
  ms_key_destroy(key);
  if (rc != 0)
    return rc;
  *model = img;
  *bytes = (size_t)ms_image_bytes(img);
  return 0;
}

static void image_unload(void *user, void *model) {
  (void)user;
  ms_image_release(model);
}

int ms_image_loader(const ms_image_source_t *src, ms_loader_t *loader) {
  if (src == NULL || loader == NULL)
    return MS_EINVAL;
  size_t size;
  memcpy(&size, src, sizeof(size));
  if (size < MS__IMAGE_SOURCE_V1 || src->shm == NULL || src->options == NULL)
    return MS_EINVAL;
  ms_loader_t l = MS_LOADER_INIT;
  l.load = image_load;
  l.unload = image_unload;
  l.user = (void *)src; /* only read */
  *loader = l;
  return 0;
}
