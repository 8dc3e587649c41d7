/* The byte pattern of the shared-memory tests: a function of (seed, byte
 * index), so any process can check a tensor's bytes from the seed alone. */
#ifndef MS_TEST_SHM_PATTERN_H
#define MS_TEST_SHM_PATTERN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t pat_mix(uint64_t x) { /* splitmix64 */
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static inline uint64_t pat_word(uint64_t seed, size_t word) {
  return pat_mix(seed * 0x2545f4914f6cdd1dULL + word);
}

static inline void pat_fill(void *data, size_t n, uint64_t seed) {
  unsigned char *p = data;
  size_t w = 0;
  for (; (w + 1) * 8 <= n; w++) {
    uint64_t v = pat_word(seed, w);
    memcpy(p + w * 8, &v, 8);
  }
  uint64_t v = pat_word(seed, w);
  memcpy(p + w * 8, &v, n - w * 8);
}

/* -1 if data holds the pattern of seed, else the first differing offset. */
static inline long long pat_check(const void *data, size_t n, uint64_t seed) {
  const unsigned char *p = data;
  size_t w = 0;
  for (; (w + 1) * 8 <= n; w++) {
    uint64_t v = pat_word(seed, w), got;
    memcpy(&got, p + w * 8, 8);
    if (got != v)
      for (size_t i = 0; i < 8; i++)
        if (p[w * 8 + i] != ((const unsigned char *)&v)[i])
          return (long long)(w * 8 + i);
  }
  uint64_t v = pat_word(seed, w);
  for (size_t i = 0; i < n - w * 8; i++)
    if (p[w * 8 + i] != ((const unsigned char *)&v)[i])
      return (long long)(w * 8 + i);
  return -1;
}

/* How many of n bytes differ from the pattern of seed. */
static inline size_t pat_diff(const void *data, size_t n, uint64_t seed) {
  const unsigned char *p = data;
  size_t diff = 0;
  for (size_t i = 0; i < n; i++) {
    uint64_t v = pat_word(seed, i / 8);
    diff += p[i] != ((const unsigned char *)&v)[i % 8];
  }
  return diff;
}

#endif
