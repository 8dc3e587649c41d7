/* libFuzzer: the host image index validator (ms__img_index_parse), fed the
 * bytes of an index entry as a reader copies them.  Whatever it accepts
 * must be self-consistent: every tensor's name, shape and descriptor lie
 * within the input and the sizes add up to image_bytes. */
#include "internal/image.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* A private, exactly sized copy, as readers make (ASan sees overreads). */
  uint8_t *copy = malloc(size > 0 ? size : 1);
  if (copy == NULL)
    return 0;
  memcpy(copy, data, size);
  ms__img_view v;
  const char *why = NULL;
  int rc = ms__img_index_parse(copy, size, &v, &why);
  if (rc == 0) {
    uint64_t total = 0;
    for (size_t i = 0; i < v.n; i++) {
      const ms__img_entry *e = &v.tv[i];
      if ((const uint8_t *)e->name < copy ||
          (const uint8_t *)e->name + e->name_len > copy + size ||
          strlen(e->desc) == 0 || strlen(e->desc) >= MS_DESCRIPTOR_MAX ||
          e->ndim < 0 || e->ndim > MS_MAX_NDIM)
        abort();
      total += e->nbytes;
    }
    if (v.n > 0 && total != v.hdr.image_bytes)
      abort();
    if (strlen(v.key.path) != v.hdr.path_len)
      abort();
    ms__free(v.tv);
  } else if (rc != MS_EBADREGION && rc != MS_ENOMEM) {
    abort();
  } else if (rc == MS_EBADREGION && why == NULL) {
    abort();
  }
  free(copy);
  return 0;
}
