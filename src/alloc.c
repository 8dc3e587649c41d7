/* The library's allocator: every allocation it makes goes through the
 * functions installed by ms_replace_allocator() (the C library's by
 * default), and memory it hands to callers is freed by ms_free() with the
 * same allocator (this matters on Windows, where each CRT has its own
 * heap).  cJSON's own allocations follow cJSON's global hooks, which belong
 * to the host program: the library never changes them. */
#include "internal/common.h"

#include <cjson/cJSON.h>

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef struct ms__allocator {
  ms_malloc_func malloc_fn;
  ms_realloc_func realloc_fn;
  ms_calloc_func calloc_fn;
  ms_free_func free_fn;
} ms__allocator;

static ms__allocator allocator = {malloc, realloc, calloc, free};
/* Allocations made and not yet freed: replacing the allocator under live
 * memory would free it with the wrong function. */
static atomic_size_t live_allocations;

int ms_replace_allocator(ms_malloc_func malloc_fn, ms_realloc_func realloc_fn,
                         ms_calloc_func calloc_fn, ms_free_func free_fn) {
  if (malloc_fn == NULL || realloc_fn == NULL || calloc_fn == NULL ||
      free_fn == NULL)
    return MS_EINVAL;
  if (atomic_load(&live_allocations) != 0)
    return MS_EBUSY;
  allocator = (ms__allocator){malloc_fn, realloc_fn, calloc_fn, free_fn};
  return 0;
}

void *ms__malloc(size_t n) {
  void *p = allocator.malloc_fn(n > 0 ? n : 1);
  if (p != NULL)
    atomic_fetch_add_explicit(&live_allocations, 1, memory_order_relaxed);
  return p;
}

void *ms__calloc(size_t count, size_t n) {
  void *p = allocator.calloc_fn(count > 0 ? count : 1, n > 0 ? n : 1);
  if (p != NULL)
    atomic_fetch_add_explicit(&live_allocations, 1, memory_order_relaxed);
  return p;
}

void *ms__realloc(void *ptr, size_t n) {
  if (ptr == NULL)
    return ms__malloc(n);
  return allocator.realloc_fn(ptr, n > 0 ? n : 1); /* NULL: ptr still valid */
}

void ms__free(void *ptr) {
  if (ptr == NULL)
    return;
  atomic_fetch_sub_explicit(&live_allocations, 1, memory_order_relaxed);
  allocator.free_fn(ptr);
}

char *ms__strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = ms__malloc(n);
  if (p != NULL)
    memcpy(p, s, n);
  return p;
}

void ms_free(void *ptr) { ms__free(ptr); }

int ms__json_print(const cJSON *root, char **out) {
  /* cJSON allocates through the host's cJSON hooks: copy its text into
   * memory that ms_free() releases. */
  char *text = root != NULL ? cJSON_PrintUnformatted(root) : NULL;
  size_t len = text != NULL ? strlen(text) + 1 : 0;
  *out = text != NULL ? ms__malloc(len) : NULL;
  if (*out != NULL)
    memcpy(*out, text, len);
  cJSON_free(text);
  return *out != NULL ? 0 : MS_ENOMEM;
}
