/* libFuzzer: the config-JSON canonicaliser.
 *
 * Property: canonicalise(x) names the same model as x.  It is checked
 * against a small JSON reader written here, independent of cJSON and of the
 * library: it parses both texts into values (strings as their decoded
 * bytes, numbers as their exact token text, objects as unordered sets of
 * members) and compares them.
 *   - accepted x: x and its canonical form are the same value, the
 *     canonical form is a fixed point, and x had nothing the key promises to
 *     refuse (a NUL character, a number out of a double's range, duplicate
 *     keys);
 *   - x valid by that reader, without those, not too deep and with number
 *     tokens within the documented length: ms_key_create accepts it;
 *   - an input "A\0B" also checks the pair: keys equal <=> same value. */
#include "modelshare.h"

#include "fuzz_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* cJSON refuses nesting deeper than 1000: beyond DEPTH_MAX the reader does
 * not insist on acceptance, and it gives up past DEPTH_HARD. */
#define DEPTH_MAX 900
#define DEPTH_HARD 1100

typedef struct jv {
  char type;   /* o a s n t f z */
  char *text;  /* s: decoded bytes, n: token; key of a member */
  size_t len;  /* of text */
  char *key;   /* as a member: decoded key bytes */
  size_t klen; /* of key */
  struct jv **kids;
  size_t nkids;
} jv;

typedef struct rd {
  const char *s;
  size_t n, i;
  int depth, nul, range, dup, deep, longnum;
} rd;

static void jv_free(jv *v) {
  if (v == NULL)
    return;
  for (size_t i = 0; i < v->nkids; i++)
    jv_free(v->kids[i]);
  free(v->kids);
  free(v->text);
  free(v->key);
  free(v);
}

static void ws(rd *r) {
  while (r->i < r->n && strchr(" \t\r\n", r->s[r->i]) != NULL && r->s[r->i])
    r->i++;
}

static int hex4(rd *r, unsigned *out) {
  if (r->n - r->i < 4)
    return 0;
  unsigned v = 0;
  for (int k = 0; k < 4; k++) {
    char c = r->s[r->i++];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f')
      v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      v |= (unsigned)(c - 'A' + 10);
    else
      return 0;
  }
  *out = v;
  return 1;
}

static void put(char *buf, size_t *len, unsigned cp) {
  if (cp < 0x80) {
    buf[(*len)++] = (char)cp;
  } else if (cp < 0x800) {
    buf[(*len)++] = (char)(0xc0 | (cp >> 6));
    buf[(*len)++] = (char)(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    buf[(*len)++] = (char)(0xe0 | (cp >> 12));
    buf[(*len)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
    buf[(*len)++] = (char)(0x80 | (cp & 0x3f));
  } else {
    buf[(*len)++] = (char)(0xf0 | (cp >> 18));
    buf[(*len)++] = (char)(0x80 | ((cp >> 12) & 0x3f));
    buf[(*len)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
    buf[(*len)++] = (char)(0x80 | (cp & 0x3f));
  }
}

/* A string at r->i (the opening quote); its decoded bytes in *out. */
static int str(rd *r, char **out, size_t *olen) {
  if (r->i >= r->n || r->s[r->i] != '"')
    return 0;
  r->i++;
  size_t e = r->i; /* the raw text's extent; decoding never grows it */
  while (e < r->n && r->s[e] != '"')
    e += r->s[e] == '\\' ? 2 : 1;
  char *buf = malloc(e - r->i + 1);
  size_t len = 0;
  while (r->i < r->n && r->s[r->i] != '"') {
    char c = r->s[r->i++];
    if ((unsigned char)c < 0x20)
      goto fail; /* RFC 8259: control characters must be escaped */
    if (c != '\\') {
      buf[len++] = c;
      continue;
    }
    if (r->i >= r->n)
      break;
    c = r->s[r->i++];
    const char *esc = strchr("\"\\/bfnrt", c);
    if (esc != NULL && c != '\0') {
      buf[len++] = "\"\\/\b\f\n\r\t"[esc - "\"\\/bfnrt"];
      continue;
    }
    unsigned cp, lo;
    if (c != 'u' || !hex4(r, &cp))
      goto fail;
    if (cp >= 0xdc00 && cp <= 0xdfff)
      goto fail; /* a lone low surrogate */
    if (cp >= 0xd800 && cp <= 0xdbff) {
      if (r->n - r->i < 2 || r->s[r->i] != '\\' || r->s[r->i + 1] != 'u')
        goto fail;
      r->i += 2;
      if (!hex4(r, &lo) || lo < 0xdc00 || lo > 0xdfff)
        goto fail;
      cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    if (cp == 0)
      r->nul = 1;
    put(buf, &len, cp);
  }
  if (r->i >= r->n)
    goto fail;
  r->i++;
  *out = buf;
  *olen = len;
  return 1;
fail:
  free(buf);
  return 0;
}

static int keycmp(const void *a, const void *b) {
  const jv *x = *(const jv *const *)a, *y = *(const jv *const *)b;
  size_t n = x->klen < y->klen ? x->klen : y->klen;
  int c = memcmp(x->key, y->key, n);
  return c != 0 ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

static jv *value(rd *r);

static int add(jv *v, jv *kid) {
  if ((v->nkids & (v->nkids - 1)) == 0) { /* 0, 1, 2, 4...: double */
    jv **k = realloc(v->kids, (v->nkids ? 2 * v->nkids : 1) * sizeof(*k));
    if (k == NULL)
      return 0;
    v->kids = k;
  }
  v->kids[v->nkids++] = kid;
  return 1;
}

static jv *container(rd *r, jv *v) {
  char close = v->type == 'o' ? '}' : ']';
  if (++r->depth > DEPTH_MAX)
    r->deep = 1;
  if (r->depth > DEPTH_HARD)
    goto fail;
  r->i++;
  ws(r);
  if (r->i < r->n && r->s[r->i] == close) {
    r->i++;
    r->depth--;
    return v;
  }
  for (;;) {
    char *key = NULL;
    size_t klen = 0;
    if (v->type == 'o') {
      ws(r);
      if (!str(r, &key, &klen))
        goto fail;
      ws(r);
      if (r->i >= r->n || r->s[r->i] != ':') {
        free(key);
        goto fail;
      }
      r->i++;
    }
    jv *kid = value(r);
    if (kid == NULL || !add(v, kid)) {
      free(key);
      jv_free(kid);
      goto fail;
    }
    kid->key = key;
    kid->klen = klen;
    ws(r);
    if (r->i < r->n && r->s[r->i] == ',') {
      r->i++;
      continue;
    }
    if (r->i < r->n && r->s[r->i] == close) {
      r->i++;
      break;
    }
    goto fail;
  }
  r->depth--;
  if (v->type == 'o') {
    qsort(v->kids, v->nkids, sizeof(*v->kids), keycmp);
    for (size_t i = 1; i < v->nkids; i++)
      if (keycmp(&v->kids[i - 1], &v->kids[i]) == 0)
        r->dup = 1;
  }
  return v;
fail:
  jv_free(v);
  return NULL;
}

static jv *value(rd *r) {
  ws(r);
  if (r->i >= r->n)
    return NULL;
  jv *v = calloc(1, sizeof(*v));
  if (v == NULL)
    return NULL;
  char c = r->s[r->i];
  if (c == '{' || c == '[') {
    v->type = c == '{' ? 'o' : 'a';
    return container(r, v);
  }
  if (c == '"') {
    v->type = 's';
    if (str(r, &v->text, &v->len))
      return v;
    free(v);
    return NULL;
  }
  static const char *const lit[3] = {"true", "false", "null"};
  for (int k = 0; k < 3; k++) {
    size_t l = strlen(lit[k]);
    if (r->n - r->i >= l && memcmp(r->s + r->i, lit[k], l) == 0) {
      v->type = "tfz"[k];
      r->i += l;
      return v;
    }
  }
  /* A number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
  size_t b = r->i, i = r->i;
  const char *s = r->s;
  int nonzero = 0;
  if (i < r->n && s[i] == '-')
    i++;
  if (i < r->n && s[i] == '0') {
    i++;
  } else if (i < r->n && s[i] >= '1' && s[i] <= '9') {
    nonzero = 1;
    while (i < r->n && s[i] >= '0' && s[i] <= '9')
      i++;
  } else {
    free(v);
    return NULL;
  }
  if (i < r->n && s[i] == '.') {
    size_t d = ++i;
    for (; i < r->n && s[i] >= '0' && s[i] <= '9'; i++)
      nonzero |= s[i] != '0';
    if (i == d) {
      free(v);
      return NULL;
    }
  }
  if (i < r->n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < r->n && (s[i] == '+' || s[i] == '-'))
      i++;
    size_t d = i;
    while (i < r->n && s[i] >= '0' && s[i] <= '9')
      i++;
    if (i == d) {
      free(v);
      return NULL;
    }
  }
  v->type = 'n';
  v->len = i - b;
  v->text = malloc(v->len + 1);
  memcpy(v->text, s + b, v->len);
  v->text[v->len] = '\0';
  r->i = i;
  if (v->len > 63)
    r->longnum = 1;
  else {
    double d = strtod(v->text, NULL); /* libFuzzer runs in the C locale */
    if (isinf(d) || (d == 0 && nonzero))
      r->range = 1;
  }
  return v;
}

/* The whole text as one value; NULL if it is not JSON. */
static jv *parse(const char *s, rd *r) {
  memset(r, 0, sizeof(*r));
  r->s = s;
  r->n = strlen(s);
  jv *v = value(r);
  ws(r);
  if (v != NULL && r->i != r->n) {
    jv_free(v);
    return NULL;
  }
  return v;
}

static int same(const jv *a, const jv *b) {
  if (a->type != b->type || a->len != b->len || a->nkids != b->nkids ||
      (a->len > 0 && memcmp(a->text, b->text, a->len) != 0))
    return 0;
  for (size_t i = 0; i < a->nkids; i++) {
    const jv *x = a->kids[i], *y = b->kids[i];
    if (x->klen != y->klen || (x->klen && memcmp(x->key, y->key, x->klen)) ||
        !same(x, y))
      return 0;
  }
  return 1;
}

static int blank(const char *s) { return s[strspn(s, " \t\r\n")] == '\0'; }

/* Checks one config; returns its key (or NULL if refused) and its value. */
static ms_key_t *check(const char *text, jv **val) {
  ms_key_t *k = NULL;
  rd r;
  int rc = ms_key_create("/models/fuzz.bin", text, &k);
  const char *body = text; /* a UTF-8 byte order mark is ignored */
  if (strncmp(body, "\xef\xbb\xbf", 3) == 0)
    body += 3;
  *val = blank(body) ? parse("{}", &r) : parse(body, &r);
  int clean = *val != NULL && !r.nul && !r.range && !r.dup && !r.longnum &&
              !r.deep && strlen(text) <= MS_CONFIG_MAX;
  if (rc != 0) {
    if (clean && rc != MS_ENOMEM)
      abort(); /* valid JSON the key promises to take was refused */
    jv_free(*val);
    *val = NULL;
    return NULL;
  }
  if (*val == NULL || r.nul || r.range || r.dup)
    abort(); /* accepted what is not JSON, or what must be refused */
  rd rc2;
  jv *canon = parse(ms_key_config(k), &rc2);
  if (canon == NULL || !same(*val, canon))
    abort(); /* the canonical form names another value */
  jv_free(canon);
  ms_key_t *again = NULL;
  if (ms_key_create("/models/fuzz.bin", ms_key_config(k), &again) != 0 ||
      strcmp(ms_key_config(k), ms_key_config(again)) != 0 ||
      ms_key_hash(k) != ms_key_hash(again))
    abort(); /* not a fixed point */
  ms_key_destroy(again);
  return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = fuzz_cstr(data, size);
  if (text == NULL)
    return 0;
  jv *va = NULL, *vb = NULL;
  ms_key_t *a = check(text, &va);
  size_t first = strlen(text);
  if (first < size) { /* "A\0B": two configs */
    ms_key_t *b = check(text + first + 1, &vb);
    if (a != NULL && b != NULL &&
        (strcmp(ms_key_config(a), ms_key_config(b)) == 0) != same(va, vb))
      abort(); /* one key for two values, or two keys for one value */
    ms_key_destroy(b);
  }
  jv_free(va);
  jv_free(vb);
  ms_key_destroy(a);
  free(text);
  return 0;
}
