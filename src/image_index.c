/* Host-scope images: the key's hash and object names, and the index entry's
 * layout, encoder and validator.  The layout and why a reader may trust a
 * validated copy are in internal/image.h. */
#include "internal/image.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Hash and names                                                            */
/* ------------------------------------------------------------------------ */

static uint64_t mix64(uint64_t x) { /* a 64-bit finaliser (splitmix64) */
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

typedef struct lanes {
  uint64_t a, b;
} lanes;

static void feed(lanes *h, const void *p, size_t n) {
  const unsigned char *s = p;
  for (size_t i = 0; i < n; i++) {
    h->a = (h->a ^ s[i]) * 0x100000001b3ULL;
    h->b = (h->b ^ s[i]) * 0x00000100000001b3ULL + 0x9e3779b97f4a7c15ULL;
  }
}

static void feed_str(lanes *h, const char *s) { feed(h, s, strlen(s) + 1); }

static void feed_u64(lanes *h, uint64_t v) {
  unsigned char b[8];
  for (int i = 0; i < 8; i++)
    b[i] = (unsigned char)(v >> (8 * i));
  feed(h, b, sizeof(b));
}

void ms__img_hash(const ms__img_key *key, char hex[33]) {
  lanes h = {0xcbf29ce484222325ULL, 0x84222325cbf29ce4ULL};
  feed_str(&h, key->path);
  feed_str(&h, key->config);
  feed_str(&h, key->transform);
  feed_str(&h, key->version);
  feed_u64(&h, key->dev);
  feed_u64(&h, key->ino);
  feed_u64(&h, key->size);
  feed_u64(&h, key->mtime_ns);
  (void)snprintf(hex, 33, "%016llx%016llx", (unsigned long long)mix64(h.a),
                 (unsigned long long)mix64(h.b ^ mix64(h.a)));
}

void ms__img_names(const char hex[33], char idx[64], char lock[64],
                   char prefix[MS__PREFIX_MAX + 1]) {
  (void)snprintf(idx, 64, "msimg-%s.idx", hex);
  (void)snprintf(lock, 64, "msimg-%s.lock", hex);
  (void)snprintf(prefix, MS__PREFIX_MAX + 1, "mi%.13s-", hex);
}

/* ------------------------------------------------------------------------ */
/* Encoding                                                                  */
/* ------------------------------------------------------------------------ */

size_t ms__img_table_offset(const ms__img_key *key) {
  return sizeof(ms__img_idx) + strlen(key->path) + 1 + strlen(key->config) + 1 +
         strlen(key->transform) + 1 + strlen(key->version) + 1;
}

size_t ms__img_index_size(const ms__img_key *key, size_t table_bytes) {
  return ms__img_table_offset(key) + table_bytes;
}

static char *put_str(char *p, const char *s) {
  size_t n = strlen(s) + 1;
  memcpy(p, s, n);
  return p + n;
}

void ms__img_index_fill(void *base, const ms__img_key *key, uint64_t attempt,
                        uint64_t token, uint64_t keep_ms) {
  ms__img_idx *h = base;
  h->magic = MS__IMG_MAGIC;
  h->version = MS__IMG_VERSION;
  h->header_size = sizeof(ms__img_idx);
  h->attempt = attempt;
  h->builder_token = token;
  h->keep_ms = keep_ms;
  atomic_store(&h->last_used_ms, ms__img_now_ms());
  h->src_dev = key->dev;
  h->src_ino = key->ino;
  h->src_size = key->size;
  h->src_mtime_ns = key->mtime_ns;
  h->path_len = (uint32_t)strlen(key->path);
  h->config_len = (uint32_t)strlen(key->config);
  h->transform_len = (uint32_t)strlen(key->transform);
  h->version_len = (uint32_t)strlen(key->version);
  char *p = (char *)base + sizeof(ms__img_idx);
  p = put_str(p, key->path);
  p = put_str(p, key->config);
  p = put_str(p, key->transform);
  (void)put_str(p, key->version);
}

size_t ms__img_table_put(unsigned char *out, const char *name, ms_dtype_t dt,
                         int ndim, const int64_t *shape, const char *desc) {
  size_t nl = strlen(name), dl = strlen(desc);
  size_t total = 2 + nl + 4 + 1 + 8 * (size_t)ndim + 1 + dl;
  if (out == NULL)
    return total;
  uint16_t n16 = (uint16_t)nl;
  uint32_t d32 = (uint32_t)dt;
  memcpy(out, &n16, 2);
  out += 2;
  for (size_t i = 0; i < nl; i++) /* not a C string here: no NUL */
    *out++ = (unsigned char)name[i];
  memcpy(out, &d32, 4);
  out += 4;
  *out++ = (unsigned char)ndim;
  if (ndim > 0)
    memcpy(out, shape, 8 * (size_t)ndim);
  out += 8 * (size_t)ndim;
  *out++ = (unsigned char)dl;
  for (size_t i = 0; i < dl; i++)
    *out++ = (unsigned char)desc[i];
  return total;
}

/* ------------------------------------------------------------------------ */
/* Validation of a private copy                                              */
/* ------------------------------------------------------------------------ */

#define BAD(msg)                                                               \
  do {                                                                         \
    *why = (msg);                                                              \
    return MS_EBADREGION;                                                      \
  } while (0)

/* A string of exactly len bytes followed by its NUL at buf[*off]. */
static int take_str(const char *buf, size_t len, size_t *off, uint32_t slen,
                    const char **out) {
  if (slen >= len - *off || buf[*off + slen] != '\0' ||
      memchr(buf + *off, '\0', slen) != NULL)
    return -1;
  *out = buf + *off;
  *off += (size_t)slen + 1;
  return 0;
}

static int parse_table(const unsigned char *p, size_t len, ms__img_view *v,
                       const char **why) {
  size_t n = v->hdr.ntensors, off = 0;
  uint64_t total = 0;
  v->tv = ms__calloc(n, sizeof(*v->tv));
  if (v->tv == NULL)
    return MS_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    ms__img_entry *e = &v->tv[i];
    uint16_t nl;
    uint32_t dt;
    if (len - off < 2)
      BAD("table truncated");
    memcpy(&nl, p + off, 2);
    off += 2;
    if (nl == 0 || nl > MS_IMAGE_NAME_MAX || len - off < (size_t)nl + 5)
      BAD("bad tensor name length");
    e->name = (const char *)p + off;
    e->name_len = nl;
    if (memchr(e->name, '\0', nl) != NULL)
      BAD("NUL in a tensor name");
    off += nl;
    memcpy(&dt, p + off, 4);
    off += 4;
    e->dtype = (ms_dtype_t)dt;
    e->ndim = p[off++];
    if (e->ndim > MS_MAX_NDIM || len - off < 8 * (size_t)e->ndim + 1)
      BAD("bad ndim");
    if (e->ndim > 0)
      memcpy(e->shape, p + off, 8 * (size_t)e->ndim);
    off += 8 * (size_t)e->ndim;
    if (ms__shape_bytes(e->dtype, e->ndim, e->shape, &e->nbytes) != 0)
      BAD("bad dtype or shape");
    size_t dl = p[off++];
    if (dl == 0 || dl >= MS_DESCRIPTOR_MAX || len - off < dl)
      BAD("bad descriptor length");
    memcpy(e->desc, p + off, dl);
    e->desc[dl] = '\0';
    off += dl;
    if (strlen(e->desc) != dl)
      BAD("NUL in a descriptor");
    if (i > 0) { /* strictly increasing: sorted and unique */
      const ms__img_entry *q = &v->tv[i - 1];
      size_t m = q->name_len < nl ? q->name_len : nl;
      int c = memcmp(q->name, e->name, m);
      if (c > 0 || (c == 0 && q->name_len >= nl))
        BAD("tensor names not sorted or not unique");
    }
    total += e->nbytes;
    if (total < e->nbytes)
      BAD("image size overflows");
  }
  if (off != len)
    BAD("trailing bytes after the table");
  if (total != v->hdr.image_bytes)
    BAD("image_bytes is not the sum of the tensors' sizes");
  v->n = n;
  return 0;
}

int ms__img_index_parse(const void *buf, size_t len, ms__img_view *v,
                        const char **why) {
  memset(v, 0, sizeof(*v));
  *why = NULL;
  if (len < sizeof(ms__img_idx))
    BAD("shorter than an index header");
  memcpy(&v->hdr, buf, sizeof(v->hdr));
  const ms__img_idx *h = &v->hdr;
  uint32_t state;
  memcpy(&state, (const char *)buf + offsetof(ms__img_idx, state),
         sizeof(state));
  if (h->magic != MS__IMG_MAGIC || h->version != MS__IMG_VERSION ||
      h->header_size != sizeof(ms__img_idx))
    BAD("bad magic, version or header size");
  if (state < MS__IMG_CREATING || state > MS__IMG_FAILED)
    BAD("bad state");
  if (h->attempt == 0)
    BAD("attempt 0");
  if (state == MS__IMG_FAILED && h->error >= 0)
    BAD("failed entry without an error code");
  if (h->path_len == 0 || h->path_len > MS_PATH_MAX ||
      h->config_len > MS_CONFIG_MAX || h->transform_len == 0 ||
      h->transform_len > MS__IMG_TRANSFORM_MAX ||
      h->version_len > MS__IMG_TRANSFORM_MAX)
    BAD("bad key string length");
  size_t off = sizeof(ms__img_idx);
  const char *s = buf;
  if (take_str(s, len, &off, h->path_len, &v->key.path) != 0 ||
      take_str(s, len, &off, h->config_len, &v->key.config) != 0 ||
      take_str(s, len, &off, h->transform_len, &v->key.transform) != 0 ||
      take_str(s, len, &off, h->version_len, &v->key.version) != 0)
    BAD("key strings do not fit or are not terminated");
  v->key.dev = h->src_dev;
  v->key.ino = h->src_ino;
  v->key.size = h->src_size;
  v->key.mtime_ns = h->src_mtime_ns;
  if ((uint64_t)len - off != h->table_bytes)
    BAD("object size is not header + key + table");
  if (state != MS__IMG_READY) {
    if (h->table_bytes != 0 || h->ntensors != 0)
      BAD("a table in an entry that is not READY");
    return 0;
  }
  if (h->ntensors == 0 || h->ntensors > MS_IMAGE_MAX_TENSORS)
    BAD("bad tensor count");
  int rc =
      parse_table((const unsigned char *)buf + off, h->table_bytes, v, why);
  if (rc != 0) {
    ms__free(v->tv);
    v->tv = NULL;
  }
  return rc;
}

int ms__img_key_equal(const ms__img_view *v, const ms__img_key *key) {
  return strcmp(v->key.path, key->path) == 0 &&
         strcmp(v->key.config, key->config) == 0 &&
         strcmp(v->key.transform, key->transform) == 0 &&
         strcmp(v->key.version, key->version) == 0 && v->key.dev == key->dev &&
         v->key.ino == key->ino && v->key.size == key->size &&
         v->key.mtime_ns == key->mtime_ns;
}
