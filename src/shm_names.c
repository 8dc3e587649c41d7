/* The names the library makes, and their one strict parser: allocator
 * prefixes, region names, liveness token names and descriptors.  Nothing
 * is unlinked or opened as ours unless it parses here exactly (I7). */
#include "internal/shm.h"

#include <stdio.h>
#include <string.h>

static int is_name_char(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static int is_hex(int c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* Exactly n lowercase hex digits (1..16). */
static int parse_hex(const char *s, size_t n, uint64_t *out) {
  uint64_t v = 0;
  if (n == 0 || n > 16)
    return MS_EINVAL;
  for (size_t i = 0; i < n; i++) {
    if (!is_hex((unsigned char)s[i]))
      return MS_EINVAL;
    v = v << 4 | (uint64_t)(s[i] <= '9' ? s[i] - '0' : s[i] - 'a' + 10);
  }
  *out = v;
  return 0;
}

int ms__prefix_valid(const char *p) {
  size_t n = 0;
  while (n <= MS__PREFIX_MAX && p[n] != '\0') {
    if (!is_name_char((unsigned char)p[n]))
      return 0;
    n++;
  }
  return n >= 1 && n <= MS__PREFIX_MAX;
}

int ms__name_parse(const char *name, size_t *prefix_len, uint64_t *creator) {
  const size_t tail = 16 + 1 + 32;
  size_t n = 0;
  while (n <= MS__NAME_MAX && name[n] != '\0') {
    if (!is_name_char((unsigned char)name[n]))
      return MS_EINVAL;
    n++;
  }
  if (n > MS__NAME_MAX || n < tail + 1 || n - tail > MS__PREFIX_MAX)
    return MS_EINVAL;
  const char *t = name + n - tail;
  for (size_t i = 0; i < tail; i++)
    if (i == 16 ? t[i] != '-' : !is_hex((unsigned char)t[i]))
      return MS_EINVAL;
  if (prefix_len != NULL)
    *prefix_len = n - tail;
  uint64_t c = 0;
  (void)parse_hex(t, 16, &c);
  if (creator != NULL)
    *creator = c;
  return 0;
}

void ms__token_name(char *buf, size_t len, uint64_t token) {
  (void)snprintf(buf, len, MS__TOKEN_PREFIX "%016llx.lock",
                 (unsigned long long)token);
}

int ms__token_name_parse(const char *name, const char *prefix,
                         uint64_t *token) {
  static const char pre[] = MS__TOKEN_PREFIX;
  const char *hex = NULL;
  if (strncmp(name, pre, sizeof(pre) - 1) == 0)
    hex = name + sizeof(pre) - 1;
  else if (prefix != NULL && strncmp(name, prefix, strlen(prefix)) == 0)
    hex = name + strlen(prefix);
  if (hex == NULL || strlen(hex) != 16 + 5 || strcmp(hex + 16, ".lock") != 0)
    return MS_EINVAL;
  return parse_hex(hex, 16, token);
}

int ms__descriptor_parse(const char *desc, char *name, uint64_t *gen) {
  if (desc == NULL || strncmp(desc, "ms1:", 4) != 0)
    return MS_EINVAL;
  const char *n = desc + 4;
  size_t nlen = 0; /* scan no further than the string or the longest name */
  while (nlen <= MS__NAME_MAX && n[nlen] != '\0' && n[nlen] != ':')
    nlen++;
  if (nlen == 0 || nlen > MS__NAME_MAX || n[nlen] != ':')
    return MS_EINVAL;
  memcpy(name, n, nlen);
  name[nlen] = '\0';
  if (ms__name_parse(name, NULL, NULL) != 0)
    return MS_EINVAL;
  const char *g = n + nlen + 1;
  size_t glen = 0;
  while (glen <= 16 && g[glen] != '\0')
    glen++;
  return parse_hex(g, glen, gen);
}

int ms_tensor_descriptor(const ms_tensor_t *t, char *buf, size_t len) {
  if (t == NULL || buf == NULL || t->map == NULL)
    return MS_EINVAL;
  char tmp[MS_DESCRIPTOR_MAX];
  int n = snprintf(tmp, sizeof(tmp), "ms1:%s:%llx", t->map->name,
                   (unsigned long long)t->gen);
  if (n <= 0 || (size_t)n >= len)
    return MS_ERANGE; /* buf untouched */
  memcpy(buf, tmp, (size_t)n + 1);
  return 0;
}
