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

/* A decimal number of 1..max_digits digits without leading zeros (but
 * "0"), at most max; the digits consumed, 0 if none fit. */
static size_t parse_dec(const char *s, size_t max_digits, int64_t max,
                        int64_t *out) {
  size_t n = 0;
  int64_t v = 0;
  while (n < max_digits && s[n] >= '0' && s[n] <= '9') {
    v = v * 10 + (s[n] - '0');
    n++;
  }
  if (n == 0 || (s[n] >= '0' && s[n] <= '9') || (n > 1 && s[0] == '0') ||
      v > max)
    return 0;
  *out = v;
  return n;
}

/* <16 hex>-<32 hex>: the tail of a region name or a locator. */
static int parse_tail(const char *t, uint64_t *creator, uint8_t *ident) {
  for (size_t i = 0; i < 16 + 1 + 32; i++)
    if (i == 16 ? t[i] != '-' : !is_hex((unsigned char)t[i]))
      return MS_EINVAL;
  uint64_t c = 0;
  (void)parse_hex(t, 16, &c);
  if (creator != NULL)
    *creator = c;
  for (size_t i = 0; ident != NULL && i < 16; i++) {
    uint64_t b = 0;
    (void)parse_hex(t + 17 + 2 * i, 2, &b);
    ident[i] = (uint8_t)b;
  }
  return 0;
}

#define PID_LIMIT 4194304 /* PID_MAX_LIMIT on 64-bit Linux */

int ms__locator_parse(const char *name, int64_t *pid, int64_t *fd,
                      uint64_t *creator, uint8_t ident[16]) {
  int64_t p = 0, f = 0;
  size_t n = parse_dec(name, 7, PID_LIMIT, &p);
  if (n == 0 || p == 0 || name[n] != ':')
    return MS_EINVAL;
  const char *s = name + n + 1;
  n = parse_dec(s, 10, INT32_MAX, &f);
  if (n == 0 || s[n] != ':')
    return MS_EINVAL;
  s += n + 1;
  if (strnlen(s, 16 + 1 + 32 + 1) != 16 + 1 + 32 ||
      parse_tail(s, creator, ident) != 0)
    return MS_EINVAL;
  if (pid != NULL)
    *pid = p;
  if (fd != NULL)
    *fd = f;
  return 0;
}

void ms__locator_format(char *buf, size_t len, int64_t pid, int64_t fd,
                        uint64_t creator, const uint8_t ident[16]) {
  int n = snprintf(buf, len, "%lld:%lld:%016llx-", (long long)pid,
                   (long long)fd, (unsigned long long)creator);
  for (int i = 0; i < 16 && n > 0 && (size_t)n < len; i++)
    n += snprintf(buf + n, len - (size_t)n, "%02x", ident[i]);
}

int ms__name_parse(const char *name, size_t *prefix_len, uint64_t *creator) {
  if (ms__locator_parse(name, NULL, NULL, creator, NULL) == 0) {
    if (prefix_len != NULL)
      *prefix_len = 0;
    return 0;
  }
  const size_t tail = 16 + 1 + 32;
  size_t n = 0;
  while (n <= MS__REGION_NAME_MAX && name[n] != '\0') {
    if (!is_name_char((unsigned char)name[n]))
      return MS_EINVAL;
    n++;
  }
  if (n > MS__REGION_NAME_MAX || n < tail + 1 || n - tail > MS__PREFIX_MAX)
    return MS_EINVAL;
  if (parse_tail(name + n - tail, creator, NULL) != 0)
    return MS_EINVAL;
  if (prefix_len != NULL)
    *prefix_len = n - tail;
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
  if (desc == NULL)
    return MS_EINVAL;
  const int v2 = strncmp(desc, "ms2:", 4) == 0;
  if (!v2 && strncmp(desc, "ms1:", 4) != 0)
    return MS_EINVAL;
  /* ms1:<name>:<gen>, ms2:<pid>:<fd>:<tail>:<gen>: the generation follows
   * the last of 1 (ms1) or 3 (ms2) colons, within the longest name. */
  const char *n = desc + 4;
  const size_t max = v2 ? MS__LOCATOR_MAX : MS__REGION_NAME_MAX;
  size_t nlen = 0, colons = 0; /* scan no further than the longest name */
  while (nlen <= max && n[nlen] != '\0' &&
         (n[nlen] != ':' || ++colons < (v2 ? 3u : 1u)))
    nlen++;
  if (nlen == 0 || nlen > max || n[nlen] != ':')
    return MS_EINVAL;
  memcpy(name, n, nlen);
  name[nlen] = '\0';
  if (v2 ? ms__locator_parse(name, NULL, NULL, NULL, NULL) != 0
         : ms__name_parse(name, NULL, NULL) != 0)
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
  int n = snprintf(tmp, sizeof(tmp), "ms%c:%s:%llx",
                   ms__is_locator(t->map->name) ? '2' : '1', t->map->name,
                   (unsigned long long)t->gen);
  if (n <= 0 || (size_t)n >= len)
    return MS_ERANGE; /* buf untouched */
  memcpy(buf, tmp, (size_t)n + 1);
  return 0;
}
