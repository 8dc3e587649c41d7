/* The serialization fallback: single-tensor safetensors streams.
 *
 *   [8 bytes: header length N, little-endian][N bytes: JSON header][data]
 *
 * The JSON header is {"<name>": {"dtype": "F32", "shape": [..],
 * "data_offsets": [begin, end]}, "__metadata__": {"k": "v"}} and the data
 * is the raw little-endian element bytes.  The decoder treats its input as
 * hostile and its cost is linear in the input: the header is capped, and a
 * pre-scan of its text refuses too many members or elements before cJSON
 * builds anything. */
#include "internal/shm.h"

#include <cjson/cJSON.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The header of one tensor is under 2 KiB; MS_SAFETENSORS_HEADER_MAX
 * (modelshare.h) leaves room for metadata and bounds all decoding work. */
#define HEADER_MAX MS_SAFETENSORS_HEADER_MAX
#define NAME_MAX_LEN 255
#define META "__metadata__"

static const struct {
  const char *name;
  ms_dtype_t dtype;
} dtypes[] = {
    {"BOOL", MS_DTYPE_BOOL},     {"U8", MS_DTYPE_UINT8},
    {"I8", MS_DTYPE_INT8},       {"U16", MS_DTYPE_UINT16},
    {"I16", MS_DTYPE_INT16},     {"F16", MS_DTYPE_FLOAT16},
    {"BF16", MS_DTYPE_BFLOAT16}, {"U32", MS_DTYPE_UINT32},
    {"I32", MS_DTYPE_INT32},     {"F32", MS_DTYPE_FLOAT32},
    {"U64", MS_DTYPE_UINT64},    {"I64", MS_DTYPE_INT64},
    {"F64", MS_DTYPE_FLOAT64},
};

static const char *dtype_name(ms_dtype_t d) {
  for (size_t i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++)
    if (dtypes[i].dtype == d)
      return dtypes[i].name;
  return NULL;
}

static int dtype_parse(const char *s, ms_dtype_t *d) {
  for (size_t i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++)
    if (strcmp(dtypes[i].name, s) == 0) {
      *d = dtypes[i].dtype;
      return 0;
    }
  return MS_EBADREGION;
}

/* An integer as raw JSON text, so that large values never turn into
 * floating-point notation. */
static cJSON *json_u64(uint64_t v) {
  char buf[24];
  (void)snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
  return cJSON_CreateRaw(buf);
}

static int add_u64_array(cJSON *obj, const char *key, const uint64_t *v,
                         int n) {
  cJSON *a = cJSON_AddArrayToObject(obj, key);
  for (int i = 0; a != NULL && i < n; i++) {
    cJSON *x = json_u64(v[i]);
    if (x == NULL || !cJSON_AddItemToArray(a, x)) {
      cJSON_Delete(x);
      return 0;
    }
  }
  return a != NULL;
}

/* Metadata must be a JSON object whose values are all strings: MS_EINVAL
 * if not, MS_ENOMEM if cJSON could not allocate. */
static int metadata_parse(const char *json, cJSON **out) {
  cJSON *m = cJSON_Parse(json);
  if (m == NULL)
    return ms__json_valid(json, strlen(json), NULL) ? MS_ENOMEM : MS_EINVAL;
  int ok = cJSON_IsObject(m);
  for (cJSON *c = ok ? m->child : NULL; c != NULL; c = c->next)
    ok = ok && cJSON_IsString(c);
  if (!ok) {
    cJSON_Delete(m);
    return MS_EINVAL;
  }
  *out = m;
  return 0;
}

/* The JSON header of t (cJSON-allocated, unpadded) in *text, its length and
 * its length padded to 8 bytes; MS_EINVAL also when metadata makes it
 * longer than the decoder accepts. */
static int header_encode(const ms_tensor_t *t, const char *name,
                         const char *metadata_json, char **text, size_t *hlen,
                         size_t *padded) {
  if (name == NULL)
    name = "tensor";
  size_t nlen = strlen(name);
  const char *dname = dtype_name(t->dtype);
  if (nlen == 0 || nlen > NAME_MAX_LEN || strcmp(name, META) == 0 ||
      dname == NULL)
    return MS_EINVAL;

  cJSON *meta = NULL;
  int rc = metadata_json != NULL ? metadata_parse(metadata_json, &meta) : 0;
  if (rc != 0)
    return rc;
  cJSON *root = cJSON_CreateObject();
  if (root == NULL ||
      (meta != NULL && !cJSON_AddItemToObject(root, META, meta))) {
    cJSON_Delete(meta);
    cJSON_Delete(root);
    return MS_ENOMEM;
  }
  uint64_t shape[MS_MAX_NDIM], offsets[2] = {0, t->nbytes};
  for (int i = 0; i < t->ndim; i++)
    shape[i] = (uint64_t)t->shape[i];
  cJSON *entry = NULL;
  int ok = (entry = cJSON_AddObjectToObject(root, name)) != NULL &&
           cJSON_AddStringToObject(entry, "dtype", dname) != NULL &&
           add_u64_array(entry, "shape", shape, t->ndim) &&
           add_u64_array(entry, "data_offsets", offsets, 2);
  *text = ok ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  if (*text == NULL)
    return MS_ENOMEM;
  *hlen = strlen(*text);
  *padded = (*hlen + 7) / 8 * 8;
  if (*padded > HEADER_MAX) {
    cJSON_free(*text);
    return MS_EINVAL;
  }
  return 0;
}

/* Writes the length prefix and the header padded with spaces to `padded`
 * bytes, so that the data starts 8-byte aligned. */
static void header_write(unsigned char *out, const char *text, size_t hlen,
                         size_t padded) {
  for (int i = 0; i < 8; i++)
    out[i] = (unsigned char)((uint64_t)padded >> (8 * i));
  // NOLINTNEXTLINE(bugprone-not-null-terminated-result): binary stream
  memcpy(out + 8, text, hlen);
  memset(out + 8 + hlen, ' ', padded - hlen);
}

int ms_tensor_serialize_header(const ms_tensor_t *t, const char *name,
                               const char *metadata_json, void *buf, size_t cap,
                               size_t *len) {
  if (t == NULL || len == NULL || (buf == NULL && cap > 0))
    return MS_EINVAL;
  char *text = NULL;
  size_t hlen = 0, padded = 0;
  int rc = header_encode(t, name, metadata_json, &text, &hlen, &padded);
  if (rc != 0)
    return rc;
  *len = 8 + padded;
  if (cap < 8 + padded)
    rc = MS_ERANGE;
  else
    header_write(buf, text, hlen, padded);
  cJSON_free(text);
  return rc;
}

int ms_tensor_serialize(const ms_tensor_t *t, const char *name,
                        const char *metadata_json, void **buf, size_t *len) {
  if (t == NULL || buf == NULL || len == NULL)
    return MS_EINVAL;
  char *text = NULL;
  size_t hlen = 0, padded = 0;
  int rc = header_encode(t, name, metadata_json, &text, &hlen, &padded);
  if (rc != 0)
    return rc;
  if (t->nbytes > SIZE_MAX - 8 - padded) {
    cJSON_free(text);
    return MS_ERANGE;
  }
  size_t total = 8 + padded + t->nbytes;
  unsigned char *out = ms__malloc(total);
  if (out == NULL) {
    cJSON_free(text);
    return MS_ENOMEM;
  }
  header_write(out, text, hlen, padded);
  cJSON_free(text);
  if (t->nbytes > 0)
    memcpy(out + 8 + padded, t->data, t->nbytes);
  *buf = out;
  *len = total;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Decoder                                                                   */
/* ------------------------------------------------------------------------ */

static int bad(ms_shm_t *shm, const char *fmt, ...) MS__PRINTF(2, 3);

static int bad(ms_shm_t *shm, const char *fmt, ...) {
  char msg[256] = "malformed safetensors stream: ";
  size_t n = strlen(msg);
  va_list ap;
  va_start(ap, fmt);
  /* va_start above: the analyzer misreads fortified vsnprintf. */
  // NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized)
  (void)vsnprintf(msg + n, sizeof(msg) - n, fmt, ap);
  va_end(ap);
  return shm != NULL ? ms__errmsg_set(shm, MS_EBADREGION, "%s", msg)
                     : ms__shm_errmsg_none(MS_EBADREGION, msg);
}

/* A JSON number that is a non-negative integer below 2^53. */
static int json_uint(const cJSON *v, uint64_t *out) {
  if (!cJSON_IsNumber(v))
    return 0;
  double d = v->valuedouble;
  if (!isfinite(d) || d < 0 || d > 9007199254740992.0 || floor(d) != d)
    return 0;
  *out = (uint64_t)d;
  return 1;
}

/* Few members each (the pre-scan bounds them), so pairwise is cheap. */
static int has_duplicate_keys(const cJSON *obj) {
  for (const cJSON *a = obj != NULL ? obj->child : NULL; a != NULL; a = a->next)
    for (const cJSON *b = a->next; b != NULL; b = b->next)
      if (strcmp(a->string, b->string) == 0)
        return 1;
  return 0;
}

/* The pre-scan: one pass over the header text, before cJSON allocates a
 * node.  A valid header nests three deep at most (root, entry, shape); the
 * root holds the tensor and optional "__metadata__", a tensor entry three
 * fields, an array MS_MAX_NDIM elements.  Only "__metadata__" may hold many
 * members (bounded by the header cap).  Grammar is left to cJSON. */
#define ENTRY_FIELDS 3

static int prescan(ms_shm_t *shm, const char *s, size_t n) {
  int depth = 0;
  size_t members[4] = {0};        /* commas seen at each depth */
  size_t limit[4] = {0};          /* most members allowed at each depth */
  size_t key_at = 0, key_len = 0; /* the last string at depth 1 */
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '"') {
      size_t b = ++i;
      while (i < n && s[i] != '"')
        i += s[i] == '\\' ? 2 : 1;
      if (depth == 1)
        key_at = b, key_len = i - b;
    } else if (c == '{' || c == '[') {
      if (depth == 3)
        return bad(shm, "header nests deeper than 3 levels");
      depth++;
      members[depth] = 0;
      if (depth == 1)
        limit[1] = 2;
      else if (c == '[')
        limit[depth] = MS_MAX_NDIM;
      else if (depth == 2 && key_len == strlen(META) &&
               memcmp(s + key_at, META, key_len) == 0)
        limit[2] = SIZE_MAX;
      else
        limit[depth] = ENTRY_FIELDS;
    } else if (c == '}' || c == ']') {
      if (depth > 0)
        depth--;
    } else if (c == ',' && depth > 0 && ++members[depth] >= limit[depth]) {
      if (depth == 1)
        return bad(shm, "more than 2 root members (one tensor and an "
                        "optional __metadata__)");
      if (limit[depth] == MS_MAX_NDIM)
        return bad(shm,
                   "an array has more than %d elements (a shape is at "
                   "most %d sizes)",
                   MS_MAX_NDIM, MS_MAX_NDIM);
      return bad(shm, "tensor entry has more than %d fields", ENTRY_FIELDS);
    }
  }
  return 0;
}

static int decode_entry(ms_shm_t *shm, const cJSON *e, ms_dtype_t *dtype,
                        int *ndim, int64_t *shape, size_t *nbytes) {
  if (e == NULL || !cJSON_IsObject(e) || has_duplicate_keys(e))
    return bad(shm, "tensor entry is not an object with unique keys");
  const cJSON *dt = NULL, *sh = NULL, *off = NULL;
  for (const cJSON *c = e->child; c != NULL; c = c->next) {
    if (strcmp(c->string, "dtype") == 0)
      dt = c;
    else if (strcmp(c->string, "shape") == 0)
      sh = c;
    else if (strcmp(c->string, "data_offsets") == 0)
      off = c;
    else
      return bad(shm, "unknown tensor field \"%.32s\"", c->string);
  }
  if (dt == NULL || !cJSON_IsString(dt) ||
      dtype_parse(dt->valuestring, dtype) != 0)
    return bad(shm, "missing or unsupported dtype");
  if (sh == NULL || !cJSON_IsArray(sh) || cJSON_GetArraySize(sh) > MS_MAX_NDIM)
    return bad(shm, "shape is not an array of at most %d sizes", MS_MAX_NDIM);
  *ndim = 0;
  for (const cJSON *c = sh->child; c != NULL; c = c->next) {
    uint64_t v;
    if (!json_uint(c, &v))
      return bad(shm, "shape holds a value that is not a size");
    shape[(*ndim)++] = (int64_t)v;
  }
  uint64_t begin, end;
  if (off == NULL || !cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
      !json_uint(off->child, &begin) || !json_uint(off->child->next, &end))
    return bad(shm, "data_offsets is not [begin, end]");
  size_t bytes = 0;
  if (ms__shape_bytes(*dtype, *ndim, shape, &bytes) != 0)
    return bad(shm, "shape overflows");
  /* One tensor: its data starts right after the header and is exactly the
   * size of its shape. */
  if (begin != 0 || end != bytes)
    return bad(shm,
               "data_offsets [%llu, %llu] do not match the shape (%zu bytes)",
               (unsigned long long)begin, (unsigned long long)end, bytes);
  *nbytes = bytes;
  return 0;
}

/* What a stream's header says. */
typedef struct st_header {
  ms_dtype_t dtype;
  int ndim;
  int64_t shape[MS_MAX_NDIM];
  size_t header_len; /* the prefix and the JSON header */
  size_t data_len;
} st_header;

/* Reads the length prefix: 0 and *need = 8 + header length, or
 * MS_EBADREGION.  p holds at least 8 bytes. */
static int prefix_read(ms_shm_t *shm, const unsigned char *p, size_t *need) {
  uint64_t hlen = 0;
  for (int i = 0; i < 8; i++)
    hlen |= (uint64_t)p[i] << (8 * i);
  if (hlen == 0 || hlen > HEADER_MAX)
    return bad(shm, "header length %llu does not fit the %d-byte limit",
               (unsigned long long)hlen, HEADER_MAX);
  *need = 8 + (size_t)hlen;
  return 0;
}

/* Decodes the header in p[0, len), len >= h->header_len (prefix_read). */
static int header_decode(ms_shm_t *shm, const unsigned char *p, st_header *h) {
  const char *json = (const char *)p + 8;
  const size_t hlen = h->header_len - 8;
  int rc = prescan(shm, json, hlen);
  if (rc != 0)
    return rc;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(json, hlen, &end, 0);
  if (root == NULL && ms__json_valid(json, hlen, NULL))
    return shm != NULL /* valid text: only an allocation can fail */
               ? ms__errmsg_set(shm, MS_ENOMEM, "out of memory")
               : ms__shm_errmsg_none(MS_ENOMEM, "out of memory");
  if (root == NULL)
    return bad(shm, "header is not JSON");
  for (const char *q = end; rc == 0 && q < json + hlen; q++)
    if (*q != ' ')
      rc = bad(shm, "header has trailing bytes");
  if (rc == 0 && (!cJSON_IsObject(root) || has_duplicate_keys(root)))
    rc = bad(shm, "header is not an object with unique keys");

  const cJSON *entry = NULL;
  for (const cJSON *c = rc == 0 ? root->child : NULL; rc == 0 && c != NULL;
       c = c->next) {
    if (strcmp(c->string, META) == 0) {
      if (!cJSON_IsObject(c))
        rc = bad(shm, "__metadata__ is not an object");
      for (const cJSON *m = c->child; rc == 0 && m != NULL; m = m->next)
        if (!cJSON_IsString(m))
          rc = bad(shm, "__metadata__ values must be strings");
    } else if (entry != NULL) {
      rc = bad(shm, "more than one tensor");
    } else {
      entry = c;
    }
  }
  if (rc == 0 && entry == NULL)
    rc = bad(shm, "no tensor");
  if (rc == 0)
    rc = decode_entry(shm, entry, &h->dtype, &h->ndim, h->shape, &h->data_len);
  cJSON_Delete(root);
  return rc;
}

/* A whole stream in buf[0, len): its header, checked against the data. */
static int stream_decode(ms_shm_t *shm, const unsigned char *p, size_t len,
                         st_header *h) {
  if (len < 8)
    return bad(shm, "%zu bytes, shorter than the length prefix", len);
  int rc = prefix_read(shm, p, &h->header_len);
  if (rc != 0)
    return rc;
  if (h->header_len > len)
    return bad(shm, "header length %zu does not fit %zu bytes of input",
               h->header_len - 8, len);
  rc = header_decode(shm, p, h);
  if (rc == 0 && h->data_len != len - h->header_len)
    rc = bad(shm, "data_offsets [0, %zu] do not match the %zu bytes of data",
             h->data_len, len - h->header_len);
  return rc;
}

static int none_err(ms_shm_t *shm, int rc, const char *msg) {
  return shm != NULL ? ms__errmsg_set(shm, rc, "%s", msg)
                     : ms__shm_errmsg_none(rc, msg);
}

int ms_tensor_deserialize(ms_shm_t *shm, const void *buf, size_t len,
                          ms_tensor_t **out) {
  if (buf == NULL || out == NULL)
    return none_err(shm, MS_EINVAL, "NULL argument");
  st_header h = {0};
  int rc = stream_decode(shm, buf, len, &h);
  if (rc != 0)
    return rc;
  ms_tensor_t *t = NULL;
  rc = shm != NULL ? ms_tensor_alloc(shm, h.dtype, h.ndim, h.shape, NULL, &t)
                   : ms__tensor_new_heap(h.dtype, h.ndim, h.shape, &t);
  if (rc != 0)
    return shm != NULL ? rc
                       : ms__shm_errmsg_none(rc, "cannot allocate the tensor");
  if (h.data_len > 0)
    memcpy(t->data, (const unsigned char *)buf + h.header_len, h.data_len);
  *out = t;
  return 0;
}

int ms_tensor_parse_header(const void *buf, size_t len, ms_dtype_t *dtype,
                           int *ndim, int64_t *shape, size_t *header_len,
                           size_t *data_len) {
  if (buf == NULL || dtype == NULL || ndim == NULL || shape == NULL ||
      header_len == NULL || data_len == NULL)
    return none_err(NULL, MS_EINVAL, "NULL argument");
  size_t need = 8;
  int rc = len < 8 ? 0 : prefix_read(NULL, buf, &need);
  if (rc != 0)
    return rc;
  if (len < need) {
    *header_len = need;
    return none_err(NULL, MS_ERANGE, "the header needs more bytes");
  }
  st_header h = {.header_len = need};
  rc = header_decode(NULL, buf, &h);
  if (rc != 0)
    return rc;
  *dtype = h.dtype;
  *ndim = h.ndim;
  memcpy(shape, h.shape, (size_t)h.ndim * sizeof(*shape));
  *header_len = h.header_len;
  *data_len = h.data_len;
  return 0;
}

int ms_tensor_deserialize_into(const void *buf, size_t len, ms_tensor_t *dst) {
  if (buf == NULL || dst == NULL)
    return none_err(NULL, MS_EINVAL, "NULL argument");
  if (!dst->writable)
    return none_err(NULL, MS_EACCES, "the destination tensor is read-only");
  st_header h = {0};
  int rc = stream_decode(NULL, buf, len, &h);
  if (rc != 0)
    return rc;
  if (h.dtype != dst->dtype || h.ndim != dst->ndim ||
      memcmp(h.shape, dst->shape, (size_t)h.ndim * sizeof(h.shape[0])) != 0)
    return none_err(NULL, MS_EINVAL,
                    "the stream's dtype or shape differs from the "
                    "destination tensor's");
  if (h.data_len > 0)
    memcpy(dst->data, (const unsigned char *)buf + h.header_len, h.data_len);
  return 0;
}
