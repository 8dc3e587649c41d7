/* Shared by the fuzz targets. */
#ifndef MS_FUZZ_UTIL_H
#define MS_FUZZ_UTIL_H

#include <stdint.h>
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

#endif
