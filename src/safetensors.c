/* The serialization fallback: single-tensor safetensors streams.
 *
 *   [8 bytes: header length N, little-endian][N bytes: JSON header][data]
 *
 * The JSON header is {"<name>": {"dtype": "F32", "shape": [..],
 * "data_offsets": [begin, end]}, "__metadata__": {"k": "v"}} and the data
 * is the raw little-endian element bytes.  The decoder treats its input as
 * hostile. */
#include "internal/shm.h"

#include <cjson/cJSON.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEADER_MAX (100u << 20) /* the format's own limit on the header */
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

/* Metadata must be a JSON object whose values are all strings. */
static cJSON *metadata_parse(const char *json) {
  cJSON *m = cJSON_Parse(json);
  if (!cJSON_IsObject(m)) {
    cJSON_Delete(m);
    return NULL;
  }
  for (cJSON *c = m->child; c != NULL; c = c->next)
    if (!cJSON_IsString(c)) {
      cJSON_Delete(m);
      return NULL;
    }
  return m;
}

int ms_tensor_serialize(const ms_tensor_t *t, const char *name,
                        const char *metadata_json, void **buf, size_t *len) {
  if (t == NULL || buf == NULL || len == NULL)
    return MS_EINVAL;
  if (name == NULL)
    name = "tensor";
  size_t nlen = strlen(name);
  const char *dname = dtype_name(t->dtype);
  if (nlen == 0 || nlen > NAME_MAX_LEN || strcmp(name, META) == 0 ||
      dname == NULL)
    return MS_EINVAL;

  cJSON *meta = NULL;
  if (metadata_json != NULL && (meta = metadata_parse(metadata_json)) == NULL)
    return MS_EINVAL;
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
  char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  if (text == NULL)
    return MS_ENOMEM;

  /* Pad the header with spaces so that the data starts 8-byte aligned. */
  size_t hlen = strlen(text);
  size_t padded = (hlen + 7) / 8 * 8;
  if (t->nbytes > SIZE_MAX - 8 - padded) {
    cJSON_free(text);
    return MS_ERANGE;
  }
  size_t total = 8 + padded + t->nbytes;
  unsigned char *out = malloc(total > 0 ? total : 1);
  if (out == NULL) {
    cJSON_free(text);
    return MS_ENOMEM;
  }
  for (int i = 0; i < 8; i++)
    out[i] = (unsigned char)((uint64_t)padded >> (8 * i));
  // NOLINTNEXTLINE(bugprone-not-null-terminated-result): binary stream
  memcpy(out + 8, text, hlen);
  memset(out + 8 + hlen, ' ', padded - hlen);
  if (t->nbytes > 0)
    memcpy(out + 8 + padded, t->data, t->nbytes);
  cJSON_free(text);
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

static int has_duplicate_keys(const cJSON *obj) {
  for (const cJSON *a = obj->child; a != NULL; a = a->next)
    for (const cJSON *b = a->next; b != NULL; b = b->next)
      if (strcmp(a->string, b->string) == 0)
        return 1;
  return 0;
}

static int decode_entry(ms_shm_t *shm, const cJSON *e, size_t data_len,
                        ms_dtype_t *dtype, int *ndim, int64_t *shape) {
  if (!cJSON_IsObject(e) || has_duplicate_keys(e))
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
  /* One tensor: it must cover the whole data area, no more, no less. */
  if (begin != 0 || end != data_len || end - begin != bytes)
    return bad(shm,
               "data_offsets [%llu, %llu] do not match the shape (%zu bytes) "
               "and the %zu bytes of data",
               (unsigned long long)begin, (unsigned long long)end, bytes,
               data_len);
  return 0;
}

int ms_tensor_deserialize(ms_shm_t *shm, const void *buf, size_t len,
                          ms_tensor_t **out) {
  if (buf == NULL || out == NULL)
    return shm != NULL ? ms__errmsg_set(shm, MS_EINVAL, "NULL argument")
                       : ms__shm_errmsg_none(MS_EINVAL, "NULL argument");
  const unsigned char *p = buf;
  if (len < 8)
    return bad(shm, "%zu bytes, shorter than the length prefix", len);
  uint64_t hlen = 0;
  for (int i = 0; i < 8; i++)
    hlen |= (uint64_t)p[i] << (8 * i);
  if (hlen == 0 || hlen > len - 8 || hlen > HEADER_MAX)
    return bad(shm, "header length %llu does not fit %zu bytes of input",
               (unsigned long long)hlen, len);
  const char *json = (const char *)p + 8;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)hlen, &end, 0);
  if (root == NULL)
    return bad(shm, "header is not JSON");
  int rc = 0;
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

  ms_dtype_t dtype = MS_DTYPE_UINT8;
  int ndim = 0;
  int64_t shape[MS_MAX_NDIM];
  const size_t data_len = len - 8 - (size_t)hlen;
  if (rc == 0)
    rc = decode_entry(shm, entry, data_len, &dtype, &ndim, shape);
  cJSON_Delete(root);
  if (rc != 0)
    return rc;

  ms_tensor_t *t = NULL;
  rc = shm != NULL ? ms_tensor_alloc(shm, dtype, ndim, shape, NULL, &t)
                   : ms__tensor_new_heap(dtype, ndim, shape, &t);
  if (rc != 0)
    return shm != NULL ? rc
                       : ms__shm_errmsg_none(rc, "cannot allocate the tensor");
  if (data_len > 0)
    memcpy(t->data, p + 8 + hlen, data_len);
  *out = t;
  return 0;
}
