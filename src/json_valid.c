/* A JSON syntax check (RFC 8259) that allocates nothing.  cJSON returns
 * NULL both for malformed text and when an allocation fails; checking the
 * syntax first tells the two apart, so a failed allocation is MS_ENOMEM and
 * never "malformed input". */
#include "internal/common.h"

#include <string.h>

/* cJSON's own nesting limit (CJSON_NESTING_LIMIT): deeper text is refused
 * here as well, so that cJSON never fails on a text this accepts. */
#define DEPTH_MAX 1000

typedef struct reader {
  const char *s;
  size_t n, i;
} reader;

static void skip_ws(reader *r) {
  while (r->i < r->n && (r->s[r->i] == ' ' || r->s[r->i] == '\t' ||
                         r->s[r->i] == '\n' || r->s[r->i] == '\r'))
    r->i++;
}

static int hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
         (c >= 'A' && c <= 'F');
}

/* Four hex digits at r->i, as a code unit. */
static int hex4(reader *r, unsigned *out) {
  unsigned v = 0;
  for (int k = 0; k < 4; k++, r->i++) {
    if (r->i >= r->n || !hex(r->s[r->i]))
      return 0;
    char c = r->s[r->i];
    v = v << 4 | (unsigned)(c <= '9'   ? c - '0'
                            : c <= 'F' ? c - 'A' + 10
                                       : c - 'a' + 10);
  }
  *out = v;
  return 1;
}

static int digits(reader *r) {
  size_t from = r->i;
  while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9')
    r->i++;
  return r->i > from;
}

static int string(reader *r) {
  r->i++; /* the opening quote */
  while (r->i < r->n) {
    unsigned char c = (unsigned char)r->s[r->i];
    if (c < 0x20)
      return 0; /* must be escaped; the error is at it */
    r->i++;
    if (c == '"')
      return 1;
    if (c != '\\')
      continue;
    if (r->i >= r->n)
      return 0;
    c = (unsigned char)r->s[r->i++];
    if (c == 'u') {
      /* UTF-16 as cJSON decodes it: a high surrogate must be followed by
       * an escaped low one, and a low one never comes alone. */
      unsigned cp = 0;
      if (!hex4(r, &cp) || (cp >= 0xdc00 && cp <= 0xdfff))
        return 0;
      if (cp >= 0xd800 && cp <= 0xdbff) {
        unsigned lo = 0;
        if (r->n - r->i < 2 || r->s[r->i] != '\\' || r->s[r->i + 1] != 'u')
          return 0;
        r->i += 2;
        if (!hex4(r, &lo) || lo < 0xdc00 || lo > 0xdfff)
          return 0;
      }
    } else if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' &&
               c != 'n' && c != 'r' && c != 't') {
      return 0;
    }
  }
  return 0;
}

static int number(reader *r) {
  if (r->s[r->i] == '-')
    r->i++;
  if (r->i < r->n && r->s[r->i] == '0')
    r->i++;
  else if (!digits(r))
    return 0;
  if (r->i < r->n && r->s[r->i] == '.') {
    r->i++;
    if (!digits(r))
      return 0;
  }
  if (r->i < r->n && (r->s[r->i] == 'e' || r->s[r->i] == 'E')) {
    r->i++;
    if (r->i < r->n && (r->s[r->i] == '+' || r->s[r->i] == '-'))
      r->i++;
    if (!digits(r))
      return 0;
  }
  return 1;
}

static int literal(reader *r, const char *word, size_t len) {
  if (r->n - r->i < len || memcmp(r->s + r->i, word, len) != 0)
    return 0;
  r->i += len;
  return 1;
}

static int value(reader *r, int depth) {
  skip_ws(r);
  if (r->i >= r->n)
    return 0;
  char c = r->s[r->i];
  if (c == '{' || c == '[') {
    if (depth >= DEPTH_MAX)
      return 0;
    const char close = c == '{' ? '}' : ']';
    r->i++;
    skip_ws(r);
    if (r->i < r->n && r->s[r->i] == close) {
      r->i++;
      return 1;
    }
    for (;;) {
      if (c == '{') {
        skip_ws(r);
        if (r->i >= r->n || r->s[r->i] != '"' || !string(r))
          return 0;
        skip_ws(r);
        if (r->i >= r->n || r->s[r->i++] != ':')
          return 0;
      }
      if (!value(r, depth + 1))
        return 0;
      skip_ws(r);
      if (r->i >= r->n)
        return 0;
      if (r->s[r->i] == close) {
        r->i++;
        return 1;
      }
      if (r->s[r->i++] != ',')
        return 0;
    }
  }
  if (c == '"')
    return string(r);
  if (c == '-' || (c >= '0' && c <= '9'))
    return number(r);
  return literal(r, "true", 4) || literal(r, "false", 5) ||
         literal(r, "null", 4);
}

int ms__json_valid(const char *s, size_t n, size_t *err_at) {
  reader r = {s, n, 0};
  int ok = value(&r, 0);
  if (ok) {
    skip_ws(&r);
    ok = r.i == n;
  }
  if (!ok && err_at != NULL)
    *err_at = r.i;
  return ok;
}
