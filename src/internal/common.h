/* Private helpers shared by every translation unit.  Never installed. */
#ifndef MS_INTERNAL_COMMON_H
#define MS_INTERNAL_COMMON_H

#include "modelshare.h"

#include <stddef.h>
#include <stdint.h>

#if defined(__MINGW32__) /* with __USE_MINGW_ANSI_STDIO: C99 printf */
#define MS__PRINTF(fmt, args) __attribute__((format(gnu_printf, fmt, args)))
#define MS__LIKELY(x) __builtin_expect(!!(x), 1)
#define MS__UNLIKELY(x) __builtin_expect(!!(x), 0)
#elif defined(__GNUC__)
#define MS__PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define MS__LIKELY(x) __builtin_expect(!!(x), 1)
#define MS__UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define MS__PRINTF(fmt, args)
#define MS__LIKELY(x) (x)
#define MS__UNLIKELY(x) (x)
#endif

/*
 * Per-thread, per-object error messages.  `obj` identifies the object the
 * message belongs to (a registry, an allocator, or a module's sentinel).
 * Messages live in thread-local storage, so there is no shared error state.
 * ms__errmsg_set returns `code` so that error paths can `return` it.
 */
int ms__errmsg_set(const void *obj, int code, const char *fmt, ...)
    MS__PRINTF(3, 4);
const char *ms__errmsg_get(const void *obj);
void ms__errmsg_clear(const void *obj);

/* The library's allocator (alloc.c): ms_replace_allocator()'s functions.
 * ms__realloc(NULL, n) is ms__malloc(n); a size of 0 allocates 1 byte. */
void *ms__malloc(size_t n);
void *ms__calloc(size_t count, size_t n);
void *ms__realloc(void *ptr, size_t n);
void ms__free(void *ptr);
char *ms__strdup(const char *s);

/* 1 if s[0..n) is one JSON value (RFC 8259, nesting at most cJSON's 1000)
 * with optional surrounding whitespace; else 0 and *err_at (may be NULL)
 * is about where it goes wrong.  Allocates nothing. */
int ms__json_valid(const char *s, size_t n, size_t *err_at);

/* Prints root as compact JSON into memory the caller frees with ms_free().
 * Returns 0 or MS_ENOMEM (also when root is NULL). */
struct cJSON;
int ms__json_print(const struct cJSON *root, char **out);

/* FNV-1a of a string: the one hash for buckets and keys. */
static inline uint64_t ms__str_hash(const char *s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
  return h;
}

#endif
