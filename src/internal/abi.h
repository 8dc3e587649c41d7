/* The struct_size contract of the public option, loader, stats and
 * capabilities structs (include/modelshare.h, "Stable ABI").
 *
 * A caller compiled against release N passes a struct whose first field is
 * its own sizeof.  Fields are only ever appended, so the library accepts any
 * struct_size from the first released (v1) size up and copies
 * min(struct_size, sizeof) bytes: an older caller leaves the newer fields at
 * their defaults, a newer caller's unknown tail is ignored. */
#ifndef MS_INTERNAL_ABI_H
#define MS_INTERNAL_ABI_H

#include <stddef.h>
#include <string.h>

/* Frozen 1.0 sizes (x86_64 / LP64 and LLP64 alike): sizeof each struct at
 * release 1.0 (commit 0233848).  Never change them.  Each is checked with a
 * _Static_assert (<= today's sizeof) in the file that uses it.  None of the
 * 1.0 registry and capabilities structs has tail padding (their last field
 * ends at their sizeof), so none needs a reserved field. */
#define MS__SHM_OPTIONS_V1 56
#define MS__REGISTRY_OPTIONS_V1 24
#define MS__LOADER_V1 32
#define MS__REGISTRY_STATS_V1 96
#define MS__MODEL_INFO_V1 72
#define MS__CAPABILITIES_V1 48
/* 1.1 structs: frozen with release 1.1. */
#define MS__CHANNEL_OPTIONS_V1 32
/* Host-scope images (first released with them). */
#define MS__IMAGE_OPTIONS_V1 56
#define MS__IMAGE_SOURCE_V1 24
/* Model worker structs: frozen with the release that adds them. */
#define MS__WORKER_OPTIONS_V1 64
#define MS__WORKER_MODEL_V1 64
#define MS__CLIENT_OPTIONS_V1 48

/* Input struct: *dst holds the defaults (its own struct_size set); src is the
 * caller's struct.  0, or -1 if src->struct_size is below v1_size (the caller
 * then returns MS_EINVAL).  dst->struct_size stays the library's. */
static inline int ms__struct_in(void *dst, size_t dst_size, const void *src,
                                size_t v1_size) {
  size_t n;
  memcpy(&n, src, sizeof(n));
  if (n < v1_size)
    return -1;
  memcpy((char *)dst + sizeof(size_t), (const char *)src + sizeof(size_t),
         (n < dst_size ? n : dst_size) - sizeof(size_t));
  return 0;
}

/* Output struct: copies the library's *src (src_size bytes) into the
 * caller's dst up to min(dst->struct_size, src_size); dst->struct_size is
 * left as the caller set it.  -1 if dst->struct_size is below v1_size. */
static inline int ms__struct_out(void *dst, const void *src, size_t src_size,
                                 size_t v1_size) {
  size_t n;
  memcpy(&n, dst, sizeof(n));
  if (n < v1_size)
    return -1;
  memcpy((char *)dst + sizeof(size_t), (const char *)src + sizeof(size_t),
         (n < src_size ? n : src_size) - sizeof(size_t));
  return 0;
}

#endif
