/* Model keys: canonical path + canonical config JSON (cJSON), and a hash. */
#include "internal/key.h"

#include <cjson/cJSON.h>
#include <uv.h>

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Identifies ms_key_create() in the per-thread error slots. */
static const char key_errobj = 0;

uint64_t ms__key_hash(const char *path, size_t path_len, const char *config,
                      size_t config_len) {
  /* FNV-1a over path, a separator byte and config, then a final avalanche
   * (splitmix64) so that low bits are good for power-of-two buckets. */
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < path_len; i++)
    h = (h ^ (unsigned char)path[i]) * 0x100000001b3ULL;
  h = (h ^ 0xffu) * 0x100000001b3ULL;
  for (size_t i = 0; i < config_len; i++)
    h = (h ^ (unsigned char)config[i]) * 0x100000001b3ULL;
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

static int name_cmp(const void *a, const void *b) {
  const cJSON *x = *(const cJSON *const *)a;
  const cJSON *y = *(const cJSON *const *)b;
  return strcmp(x->string, y->string);
}

/* Sorts object keys recursively; rejects duplicate keys, whose meaning
 * differs between JSON readers and so cannot have one canonical form. */
static int sort_keys(cJSON *node, char *errbuf, size_t errlen) {
  if (cJSON_IsArray(node)) {
    int rc = 0;
    for (cJSON *c = node->child; c != NULL && rc == 0; c = c->next)
      rc = sort_keys(c, errbuf, errlen);
    return rc;
  }
  if (!cJSON_IsObject(node) || node->child == NULL)
    return 0;

  size_t n = 0;
  for (cJSON *c = node->child; c != NULL; c = c->next)
    n++;
  // NOLINTNEXTLINE(bugprone-sizeof-expression): a table of pointers
  cJSON **v = ms__malloc(n * sizeof(*v));
  if (v == NULL) {
    (void)snprintf(errbuf, errlen, "out of memory sorting config keys");
    return MS_ENOMEM;
  }
  size_t i = 0;
  for (cJSON *c = node->child; c != NULL; c = c->next)
    v[i++] = c;
  // NOLINTNEXTLINE(bugprone-sizeof-expression): a table of pointers
  qsort(v, n, sizeof(*v), name_cmp);

  int rc = 0;
  for (i = 0; i < n && rc == 0; i++) {
    if (i > 0 && strcmp(v[i - 1]->string, v[i]->string) == 0) {
      (void)snprintf(errbuf, errlen, "config JSON has duplicate key \"%.64s\"",
                     v[i]->string);
      rc = MS_EINVAL;
    }
  }
  if (rc == 0) {
    node->child = v[0];
    for (i = 0; i < n; i++) {
      v[i]->prev = i > 0 ? v[i - 1] : v[n - 1]; /* cJSON: head->prev = tail */
      v[i]->next = i + 1 < n ? v[i + 1] : NULL;
    }
    for (i = 0; i < n && rc == 0; i++)
      rc = sort_keys(v[i], errbuf, errlen);
  }
  ms__free(v);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Exact numbers                                                             */
/*                                                                           */
/* cJSON parses numbers into doubles and would print them back rounded, so   */
/* distinct values could share a key and the loader would get rewritten      */
/* values.  A linear pre-pass over the text checks every number token        */
/* against the JSON grammar and records its span; after cJSON has parsed     */
/* the text, each number node (met in document order, which is pre-order)    */
/* becomes a raw node holding its token text verbatim.  The pre-pass also    */
/* refuses what cJSON would silently change: "\u0000" and malformed \u      */
/* escapes (cJSON ends the string at a NUL) and control bytes used as       */
/* whitespace.                                                               */
/* ------------------------------------------------------------------------ */

/* cJSON reads a number token through a 64-byte buffer; longer tokens would
 * be misparsed, so they are refused with a clear message. */
#define NUMBER_TOKEN_MAX 63

typedef struct span {
  size_t at, len;
} span;

typedef struct spans {
  span *v;
  size_t n, cap;
} spans;

/* Length of the RFC 8259 number at s (n bytes available), or 0 if the
 * bytes there are not exactly one number token. */
static size_t number_len(const char *s, size_t n) {
  size_t i = 0;
  if (i < n && s[i] == '-')
    i++;
  if (i < n && s[i] == '0') {
    i++;
  } else if (i < n && s[i] >= '1' && s[i] <= '9') {
    while (i < n && s[i] >= '0' && s[i] <= '9')
      i++;
  } else {
    return 0;
  }
  if (i < n && s[i] == '.') {
    size_t d = ++i;
    while (i < n && s[i] >= '0' && s[i] <= '9')
      i++;
    if (i == d)
      return 0;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < n && (s[i] == '+' || s[i] == '-'))
      i++;
    size_t d = i;
    while (i < n && s[i] >= '0' && s[i] <= '9')
      i++;
    if (i == d)
      return 0;
  }
  return i;
}

static int is_number_char(char c) {
  return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' ||
         c == 'e' || c == 'E';
}

/* The pre-pass: one scan of the text, O(len). */
static int scan_text(const char *json, size_t len, spans *out, char *errbuf,
                     size_t errlen) {
  int in_string = 0;
  for (size_t i = 0; i < len; i++) {
    char c = json[i];
    if (in_string) {
      if (c == '"') {
        in_string = 0;
      } else if (c == '\\' && i + 1 < len) {
        if (json[i + 1] == 'u') {
          /* cJSON reads a bad \u escape as U+0000 and ends the string
           * there, so both are refused here. */
          size_t h = 0;
          while (h < 4 && i + 2 + h < len &&
                 isxdigit((unsigned char)json[i + 2 + h]))
            h++;
          if (h < 4) {
            (void)snprintf(errbuf, errlen,
                           "malformed config JSON: bad \\u escape at byte %zu",
                           i);
            return MS_EINVAL;
          }
          if (memcmp(json + i + 2, "0000", 4) == 0) {
            (void)snprintf(errbuf, errlen,
                           "config JSON has \\u0000 in a string at byte %zu: "
                           "NUL characters are not supported",
                           i);
            return MS_EINVAL;
          }
        }
        i++; /* the escaped character */
      }
      continue;
    }
    if (c == '"') {
      in_string = 1;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      size_t run = 0;
      while (i + run < len && is_number_char(json[i + run]))
        run++;
      if (number_len(json + i, run) != run) {
        (void)snprintf(errbuf, errlen,
                       "malformed number at byte %zu near \"%.16s\"", i,
                       json + i);
        return MS_EINVAL;
      }
      if (run > NUMBER_TOKEN_MAX) {
        (void)snprintf(errbuf, errlen,
                       "number at byte %zu is %zu characters long, over the "
                       "%d limit",
                       i, run, NUMBER_TOKEN_MAX);
        return MS_EINVAL;
      }
      if (out->n == out->cap) {
        size_t cap = out->cap ? 2 * out->cap : 16;
        span *v = ms__realloc(out->v, cap * sizeof(*v));
        if (v == NULL) {
          (void)snprintf(errbuf, errlen, "out of memory reading config JSON");
          return MS_ENOMEM;
        }
        out->v = v;
        out->cap = cap;
      }
      out->v[out->n++] = (span){i, run};
      i += run - 1;
    } else if ((unsigned char)c < 0x20 && c != ' ' && c != '\t' && c != '\n' &&
               c != '\r') {
      (void)snprintf(errbuf, errlen,
                     "malformed config JSON: control byte 0x%02x at byte %zu",
                     (unsigned)(unsigned char)c, i);
      return MS_EINVAL;
    }
  }
  return 0;
}

/* A token whose digits before the exponent are not all zero. */
static int nonzero_mantissa(const char *s, size_t n) {
  for (size_t i = 0; i < n && s[i] != 'e' && s[i] != 'E'; i++)
    if (s[i] >= '1' && s[i] <= '9')
      return 1;
  return 0;
}

/* Turns every number node into a raw node holding its token (pre-order:
 * document order), refusing numbers a double cannot hold. */
static int exact_numbers(cJSON *node, const char *json, const spans *sp,
                         size_t *next, char *errbuf, size_t errlen) {
  for (; node != NULL; node = node->next) {
    if (cJSON_IsNumber(node)) {
      if (*next >= sp->n) {
        (void)snprintf(errbuf, errlen, "malformed config JSON");
        return MS_EINVAL;
      }
      span s = sp->v[(*next)++];
      const char *tok = json + s.at;
      double d = node->valuedouble;
      if (isinf(d) || (d == 0 && nonzero_mantissa(tok, s.len))) {
        (void)snprintf(errbuf, errlen,
                       "number %.*s at byte %zu is out of the range of a "
                       "double",
                       (int)(s.len < 32 ? s.len : 32), tok, s.at);
        return MS_EINVAL;
      }
      char *raw = cJSON_malloc(s.len + 1);
      if (raw == NULL) {
        (void)snprintf(errbuf, errlen, "out of memory reading config JSON");
        return MS_ENOMEM;
      }
      memcpy(raw, tok, s.len);
      raw[s.len] = '\0';
      node->type = cJSON_Raw;
      node->valuestring = raw;
    } else if (node->child != NULL) {
      int rc = exact_numbers(node->child, json, sp, next, errbuf, errlen);
      if (rc != 0)
        return rc;
    }
  }
  return 0;
}

int ms__config_canonical(const char *json, char **out, char *errbuf,
                         size_t errlen) {
  size_t len = json != NULL ? strlen(json) : 0;
  if (len >= 3 && memcmp(json, "\xef\xbb\xbf", 3) == 0) {
    json += 3; /* a UTF-8 byte order mark is ignored, as RFC 8259 allows */
    len -= 3;
    if (len >= 3 && memcmp(json, "\xef\xbb\xbf", 3) == 0) {
      /* cJSON would skip a second one too: refuse it here. */
      (void)snprintf(errbuf, errlen,
                     "malformed config JSON: a second byte order mark");
      return MS_EINVAL;
    }
  }
  size_t ws = 0;
  while (ws < len && strchr(" \t\r\n", json[ws]) != NULL)
    ws++;
  if (ws == len) { /* NULL, "" or only whitespace: no config */
    *out = ms__malloc(3);
    if (*out == NULL)
      return MS_ENOMEM;
    memcpy(*out, "{}", 3);
    return 0;
  }
  if (len > MS_CONFIG_MAX) {
    (void)snprintf(errbuf, errlen,
                   "config JSON is %zu bytes, over the %d limit", len,
                   MS_CONFIG_MAX);
    return MS_EINVAL;
  }

  spans sp = {NULL, 0, 0};
  int rc = scan_text(json, len, &sp, errbuf, errlen);
  if (rc != 0) {
    ms__free(sp.v);
    return rc;
  }
  size_t at = 0;
  if (!ms__json_valid(json, len, &at)) {
    ms__free(sp.v);
    if (at > 0 && at < len && ms__json_valid(json, at, NULL))
      (void)snprintf(errbuf, errlen,
                     "malformed config JSON: trailing data at byte %zu", at);
    else
      (void)snprintf(errbuf, errlen,
                     "malformed config JSON at byte %zu near \"%.16s\"", at,
                     json + (at < len ? at : len));
    return MS_EINVAL;
  }
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
  if (root == NULL) { /* valid text: only an allocation can fail */
    ms__free(sp.v);
    (void)snprintf(errbuf, errlen, "out of memory parsing config JSON");
    return MS_ENOMEM;
  }
  /* cJSON stops after the first value: anything but whitespace after it is
   * an error, not something to ignore. */
  at = (size_t)(end - json);
  while (at < len && strchr(" \t\r\n", json[at]) != NULL)
    at++;
  if (at < len) {
    ms__free(sp.v);
    cJSON_Delete(root);
    (void)snprintf(errbuf, errlen,
                   "malformed config JSON: trailing data at byte %zu", at);
    return MS_EINVAL;
  }

  size_t next = 0;
  rc = exact_numbers(root, json, &sp, &next, errbuf, errlen);
  if (rc == 0 && next != sp.n) { /* cannot happen if both scans agree */
    (void)snprintf(errbuf, errlen, "malformed config JSON");
    rc = MS_EINVAL;
  }
  ms__free(sp.v);
  if (rc == 0)
    rc = sort_keys(root, errbuf, errlen);
  if (rc == 0 && (rc = ms__json_print(root, out)) != 0)
    (void)snprintf(errbuf, errlen, "out of memory printing config JSON");
  cJSON_Delete(root);
  return rc;
}

/* Resolves path when the file exists (NULL on ENOMEM, never a silently
 * unresolved path). */
static char *path_canonical(const char *path) {
  uv_fs_t req;
  char *res = NULL;
  /* Synchronous libuv call (no loop, no callback). */
  int rc = uv_fs_realpath(NULL, &req, path, NULL);
  if (rc == 0 && req.ptr != NULL)
    res = ms__strdup((const char *)req.ptr);
  else if (rc != UV_ENOMEM)
    res = ms__strdup(path); /* no such file (yet): the path as given */
  uv_fs_req_cleanup(&req);
  return res;
}

static int key_build(const char *path, size_t path_len, const char *config,
                     size_t config_len, ms_key_t **out) {
  ms_key_t *k = ms__malloc(sizeof(*k) + path_len + config_len + 2);
  if (k == NULL)
    return MS_ENOMEM;
  k->path = k->buf;
  k->config = k->buf + path_len + 1;
  k->path_len = path_len;
  k->config_len = config_len;
  memcpy(k->path, path, path_len + 1);
  memcpy(k->config, config, config_len + 1);
  k->hash = ms__key_hash(path, path_len, config, config_len);
  *out = k;
  return 0;
}

int ms_key_create(const char *path, const char *config_json, ms_key_t **out) {
  if (out == NULL)
    return ms__errmsg_set(&key_errobj, MS_EINVAL, "out is NULL");
  if (path == NULL)
    return ms__errmsg_set(&key_errobj, MS_EINVAL, "path is NULL");
  if (path[0] == '\0')
    return ms__errmsg_set(&key_errobj, MS_EINVAL, "path is empty");
  if (memchr(path, '\0', MS_PATH_MAX + 1) == NULL)
    return ms__errmsg_set(&key_errobj, MS_EINVAL,
                          "path is longer than %d bytes", MS_PATH_MAX);

  char err[256] = "";
  char *config = NULL;
  int rc = ms__config_canonical(config_json, &config, err, sizeof(err));
  if (rc != 0)
    return ms__errmsg_set(&key_errobj, rc, "%s",
                          err[0] ? err : ms_strerror(rc));

  char *cpath = path_canonical(path);
  if (cpath == NULL) {
    ms__free(config);
    return ms__errmsg_set(&key_errobj, MS_ENOMEM, "out of memory");
  }
  size_t plen = strlen(cpath);
  if (plen > MS_PATH_MAX)
    rc = ms__errmsg_set(&key_errobj, MS_EINVAL,
                        "resolved path is longer than %d bytes", MS_PATH_MAX);
  else
    rc = key_build(cpath, plen, config, strlen(config), out);
  if (rc == MS_ENOMEM)
    ms__errmsg_set(&key_errobj, rc, "out of memory");
  ms__free(cpath);
  ms__free(config);
  return rc;
}

int ms__key_dup(const ms_key_t *key, ms_key_t **out) {
  return key_build(key->path, key->path_len, key->config, key->config_len, out);
}

void ms_key_destroy(ms_key_t *key) { ms__free(key); }

const char *ms_key_path(const ms_key_t *key) {
  return key != NULL ? key->path : NULL;
}

const char *ms_key_config(const ms_key_t *key) {
  return key != NULL ? key->config : NULL;
}

uint64_t ms_key_hash(const ms_key_t *key) {
  return key != NULL ? key->hash : 0;
}

const char *ms_key_errmsg(void) { return ms__errmsg_get(&key_errobj); }

void ms__key_set_hash(ms_key_t *key, uint64_t hash) { key->hash = hash; }
