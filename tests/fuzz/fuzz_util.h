/* Shared by the fuzz targets. */
#ifndef MS_FUZZ_UTIL_H
#define MS_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The input as a NUL-terminated string (free it); NULL when out of memory. */
static inline char *fuzz_cstr(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  if (text != NULL) {
    memcpy(text, data, size);
    text[size] = '\0';
  }
  return text;
}

/* A fresh namespace directory for a target's regions, under the tmpfs
 * directory scripts/fuzz.sh passes in MS_FUZZ_DIR (it removes it afterwards,
 * even when a target dies), else under /dev/shm.  Aborts on failure. */
static inline void fuzz_ns_dir(char *dir, size_t len) {
  const char *base = getenv("MS_FUZZ_DIR");
  (void)snprintf(dir, len, "%s/ns-XXXXXX", base ? base : "/dev/shm");
  if (mkdtemp(dir) == NULL)
    abort();
}

#endif
