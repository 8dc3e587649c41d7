/* The safetensors fallback: exact bytes against a hand-computed vector,
 * round trips (heap and shared memory), and hostile streams. */
#include "test_util.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static ms_tensor_t *heap_tensor(ms_dtype_t dtype, int ndim,
                                const int64_t *shape, const void *data) {
  /* The public API makes heap tensors only by decoding, so write a stream
   * by hand (independently of the encoder under test) and decode it. */
  ms_tensor_t *t = NULL;
  size_t item = ms_dtype_size(dtype), n = item;
  for (int i = 0; i < ndim; i++)
    n *= (size_t)shape[i];
  char header[512];
  int hl =
      snprintf(header, sizeof(header), "{\"t\":{\"dtype\":\"%s\",\"shape\":[",
               dtype == MS_DTYPE_FLOAT32    ? "F32"
               : dtype == MS_DTYPE_INT64    ? "I64"
               : dtype == MS_DTYPE_BFLOAT16 ? "BF16"
               : dtype == MS_DTYPE_BOOL     ? "BOOL"
                                            : "U8");
  for (int i = 0; i < ndim; i++)
    hl += snprintf(header + hl, sizeof(header) - (size_t)hl, "%s%lld",
                   i ? "," : "", (long long)shape[i]);
  hl += snprintf(header + hl, sizeof(header) - (size_t)hl,
                 "],\"data_offsets\":[0,%zu]}}", n);
  unsigned char *buf = malloc(8 + (size_t)hl + n);
  for (int i = 0; i < 8; i++)
    buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
  memcpy(buf + 8, header, (size_t)hl);
  memcpy(buf + 8 + hl, data, n);
  assert_int_equal(ms_tensor_deserialize(NULL, buf, 8 + (size_t)hl + n, &t), 0);
  free(buf);
  return t;
}

static void test_exact_bytes(void **state) {
  (void)state;
  const float v[2] = {1.0f, -2.0f};
  int64_t shape[1] = {2};
  ms_tensor_t *t = heap_tensor(MS_DTYPE_FLOAT32, 1, shape, v);
  void *buf = NULL;
  size_t len = 0;
  assert_int_equal(ms_tensor_serialize(t, "x", NULL, &buf, &len), 0);
  /* 8-byte LE header length (56), the JSON header padded with spaces to a
   * multiple of 8, then 1.0f and -2.0f little-endian. */
  static const char json[] =
      "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}  ";
  unsigned char want[72];
  const unsigned char prefix[8] = {0x38, 0, 0, 0, 0, 0, 0, 0};
  const unsigned char data[8] = {0x00, 0x00, 0x80, 0x3f,
                                 0x00, 0x00, 0x00, 0xc0};
  memcpy(want, prefix, 8);
  memcpy(want + 8, json, 56);
  memcpy(want + 64, data, 8);
  assert_int_equal(len, sizeof(want));
  assert_memory_equal(buf, want, sizeof(want));
  ms_free(buf);
  ms_tensor_release(t);
}

static void roundtrip(ms_shm_t *shm, ms_dtype_t dtype, int ndim,
                      const int64_t *shape) {
  size_t n = ms_dtype_size(dtype);
  for (int i = 0; i < ndim; i++)
    n *= (size_t)shape[i];
  unsigned char *data = malloc(n + 1);
  for (size_t i = 0; i < n; i++)
    data[i] = (unsigned char)(i * 31 + 7);
  ms_tensor_t *t = heap_tensor(dtype, ndim, shape, data);
  void *buf = NULL;
  size_t len = 0;
  assert_int_equal(ms_tensor_serialize(t, "frame",
                                       "{\"source\":\"cam0\",\"fmt\":\"rgb\"}",
                                       &buf, &len),
                   0);
  ms_tensor_t *u = NULL;
  assert_int_equal(ms_tensor_deserialize(shm, buf, len, &u), 0);
  assert_int_equal(ms_tensor_dtype(u), dtype);
  assert_int_equal(ms_tensor_ndim(u), ndim);
  for (int i = 0; i < ndim; i++)
    assert_int_equal(ms_tensor_shape(u)[i], shape[i]);
  assert_int_equal(ms_tensor_nbytes(u), n);
  if (n > 0)
    assert_memory_equal(ms_tensor_data(u), data, n);
  assert_int_equal((uintptr_t)ms_tensor_data(u) % 64, 0);
  char desc[MS_DESCRIPTOR_MAX];
  assert_int_equal(ms_tensor_descriptor(u, desc, sizeof(desc)),
                   shm != NULL ? 0 : MS_EINVAL);
  ms_tensor_release(u);
  ms_tensor_release(t);
  ms_free(buf);
  free(data);
}

static void test_roundtrips(void **state) {
  (void)state;
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.prefix = "mssafet_";
  ms_shm_t *shm = NULL;
  assert_int_equal(ms_shm_create(&o, &shm), 0);
  int64_t s0[1] = {0}, s1[1] = {5}, s3[3] = {2, 3, 7}, big[2] = {1024, 1024};
  for (int pass = 0; pass < 2; pass++) {
    ms_shm_t *target = pass ? shm : NULL;
    roundtrip(target, MS_DTYPE_UINT8, 0, NULL); /* a scalar */
    roundtrip(target, MS_DTYPE_FLOAT32, 1, s0); /* empty */
    roundtrip(target, MS_DTYPE_INT64, 1, s1);
    roundtrip(target, MS_DTYPE_BFLOAT16, 3, s3);
    roundtrip(target, MS_DTYPE_BOOL, 3, s3);
    roundtrip(target, MS_DTYPE_FLOAT32, 2, big);
  }
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_serialize_bad_input(void **state) {
  (void)state;
  const float v[1] = {0};
  int64_t shape[1] = {1};
  ms_tensor_t *t = heap_tensor(MS_DTYPE_FLOAT32, 1, shape, v);
  void *buf = NULL;
  size_t len = 0;
  char longname[300];
  memset(longname, 'n', 299);
  longname[299] = '\0';
  assert_int_equal(ms_tensor_serialize(NULL, "x", NULL, &buf, &len), MS_EINVAL);
  assert_int_equal(ms_tensor_serialize(t, "", NULL, &buf, &len), MS_EINVAL);
  assert_int_equal(ms_tensor_serialize(t, longname, NULL, &buf, &len),
                   MS_EINVAL);
  assert_int_equal(ms_tensor_serialize(t, "__metadata__", NULL, &buf, &len),
                   MS_EINVAL);
  assert_int_equal(ms_tensor_serialize(t, "x", "[1]", &buf, &len), MS_EINVAL);
  assert_int_equal(ms_tensor_serialize(t, "x", "{\"k\":1}", &buf, &len),
                   MS_EINVAL);
  assert_int_equal(ms_tensor_serialize(t, "x", "{", &buf, &len), MS_EINVAL);
  assert_int_equal(ms_tensor_serialize(t, "x", NULL, NULL, &len), MS_EINVAL);
  assert_null(buf);
  ms_tensor_release(t);
}

/* Builds a stream from a header and a data length, then expects it to be
 * refused.  The buffer is allocated to its exact size, so that ASan catches
 * any read past it. */
static unsigned char *make_stream(const char *header, size_t hl,
                                  size_t data_len) {
  unsigned char *buf = malloc(8 + hl + data_len);
  for (int i = 0; i < 8; i++)
    buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
  memcpy(buf + 8, header, hl);
  memset(buf + 8 + hl, 0, data_len);
  return buf;
}

/* The same stream through ms_tensor_deserialize_into(): refused the same
 * way, and the destination is left untouched. */
static void expect_bad_into(const unsigned char *buf, size_t len,
                            const char *why) {
  const float keep[2] = {7, 8};
  int64_t shape[1] = {2};
  ms_tensor_t *dst = heap_tensor(MS_DTYPE_FLOAT32, 1, shape, keep);
  assert_int_equal(ms_tensor_deserialize_into(buf, len, dst), MS_EBADREGION);
  if (strstr(ms_shm_errmsg(NULL), why) == NULL)
    fail_msg("into: message \"%s\" lacks \"%s\"", ms_shm_errmsg(NULL), why);
  assert_memory_equal(ms_tensor_data(dst), keep, sizeof(keep));
  ms_tensor_release(dst);
}

static void expect_bad(const char *header, size_t data_len, const char *why) {
  size_t hl = strlen(header);
  unsigned char *buf = make_stream(header, hl, data_len);
  ms_tensor_t *t = NULL;
  int rc = ms_tensor_deserialize(NULL, buf, 8 + hl + data_len, &t);
  if (rc != MS_EBADREGION)
    fail_msg("accepted (%d): %s", rc, header);
  assert_null(t);
  if (strstr(ms_shm_errmsg(NULL), why) == NULL)
    fail_msg("message \"%s\" lacks \"%s\"", ms_shm_errmsg(NULL), why);
  expect_bad_into(buf, 8 + hl + data_len, why);
  free(buf);
}

static void expect_bad_raw(const unsigned char *buf, size_t len,
                           const char *why) {
  unsigned char *copy = malloc(len > 0 ? len : 1);
  memcpy(copy, buf, len);
  ms_tensor_t *t = NULL;
  assert_int_equal(ms_tensor_deserialize(NULL, copy, len, &t), MS_EBADREGION);
  assert_null(t);
  assert_non_null(strstr(ms_shm_errmsg(NULL), why));
  expect_bad_into(copy, len, why);
  free(copy);
}

#define ENTRY(body) "{\"t\":" body "}"
#define OK_FIELDS "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]"

static void test_hostile_streams(void **state) {
  (void)state;
  const unsigned char short_in[4] = {1, 0, 0, 0};
  expect_bad_raw(short_in, 4, "shorter than the length prefix");
  const unsigned char huge_len[12] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                      0xff, 0x7f, '{',  '}',  ' ',  ' '};
  expect_bad_raw(huge_len, 12, "does not fit");
  const unsigned char zero_len[8] = {0};
  expect_bad_raw(zero_len, 8, "does not fit");
  const unsigned char past[10] = {5, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
  expect_bad_raw(past, 10, "does not fit");

  expect_bad("not json", 0, "not JSON");
  expect_bad("[1,2]", 0, "not an object");
  expect_bad("\"str\"", 0, "not an object");
  expect_bad("{}", 0, "no tensor");
  expect_bad("{\"t\":{" OK_FIELDS "}} x", 8, "trailing");
  expect_bad("{\"t\":{" OK_FIELDS "},\"t\":{" OK_FIELDS "}}", 8, "unique keys");
  expect_bad("{\"a\":{" OK_FIELDS "},\"b\":{" OK_FIELDS "}}", 8,
             "more than one tensor");
  expect_bad(ENTRY("[1]"), 8, "not an object");
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2]}"), 8,
             "unique keys");
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],"
                   "\"data_offsets\":[0,8]}"),
             8, "more than 3 fields");
  expect_bad(
      ENTRY("{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}"), 2,
      "unsupported dtype");
  expect_bad(ENTRY("{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}"), 8,
             "dtype");
  expect_bad(ENTRY("{\"shape\":[2],\"data_offsets\":[0,8]}"), 8, "dtype");
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}"),
             8, "not a size");
  expect_bad(
      ENTRY("{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}"), 8,
      "not a size");
  expect_bad(
      ENTRY("{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,8]}"), 8,
      "not a size");
  expect_bad(
      ENTRY("{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}"), 8,
      "not a size");
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}"), 8,
             "shape is not an array");
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,"
                   "1,1,1],\"data_offsets\":[0,4]}"),
             4, "at most 16");
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,"
                   "4294967296],\"data_offsets\":[0,8]}"),
             8, "overflows");
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"shape\":[0,4294967296,4294967296],"
                   "\"data_offsets\":[0,0]}"),
             0, "overflows"); /* empty, yet its strides would overflow */
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}"),
             8, "do not match");
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"),
             4, "do not match"); /* data shorter than the offsets */
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"),
             12, "do not match"); /* stray bytes after the tensor */
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}"),
             8, "do not match");
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}"), 8,
             "data_offsets");
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"shape\":[2],\"extra\":1}"), 8,
             "unknown tensor field");
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],"
                   "\"extra\":1}"),
             8, "more than 3 fields");
  expect_bad("{\"a\":1,\"b\":2,\"c\":3}", 0, "more than 2 root members");
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"shape\":[[[2]]],"
                   "\"data_offsets\":[0,8]}"),
             8, "deeper than 3");
  expect_bad(ENTRY("{\"dtype\":\"F32\",\"shape\":[2],"
                   "\"data_offsets\":[0,8,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}"),
             8, "more than 16 elements");
  expect_bad("{\"__metadata__\":[1],\"t\":{" OK_FIELDS "}}", 8,
             "__metadata__ is not an object");
  expect_bad("{\"__metadata__\":{\"k\":1},\"t\":{" OK_FIELDS "}}", 8,
             "must be strings");
  expect_bad("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]",
             8, "not JSON");

  /* A valid stream still decodes after all that. */
  const float v[2] = {3, 4};
  int64_t shape[1] = {2};
  ms_tensor_t *t = heap_tensor(MS_DTYPE_FLOAT32, 1, shape, v);
  assert_int_equal(((float *)ms_tensor_data(t))[1], 4.0f);
  ms_tensor_release(t);
  assert_int_equal(ms_tensor_deserialize(NULL, NULL, 8, &t), MS_EINVAL);
}

/* ------------------------------------------------------------------------ */
/* The fast fallback: header-only encoding, streaming parse, decode-into     */
/* ------------------------------------------------------------------------ */

static void test_serialize_header(void **state) {
  (void)state;
  int64_t shape[2] = {3, 5};
  unsigned char data[60];
  for (size_t i = 0; i < sizeof(data); i++)
    data[i] = (unsigned char)(i * 7 + 1);
  ms_tensor_t *t = heap_tensor(MS_DTYPE_FLOAT32, 2, shape, data);
  void *whole = NULL;
  size_t wlen = 0, need = 0, hl = 0;
  assert_int_equal(
      ms_tensor_serialize(t, "frame", "{\"k\":\"v\"}", &whole, &wlen), 0);
  /* Size query, then a buffer one byte short, then the right size. */
  assert_int_equal(
      ms_tensor_serialize_header(t, "frame", "{\"k\":\"v\"}", NULL, 0, &need),
      MS_ERANGE);
  assert_int_equal(need, wlen - sizeof(data));
  assert_int_equal(need % 8, 0);
  unsigned char *hdr = malloc(need);
  memset(hdr, 0xee, need);
  assert_int_equal(ms_tensor_serialize_header(t, "frame", "{\"k\":\"v\"}", hdr,
                                              need - 1, &hl),
                   MS_ERANGE);
  assert_int_equal(hl, need);
  assert_int_equal(hdr[0], 0xee); /* untouched */
  assert_int_equal(
      ms_tensor_serialize_header(t, "frame", "{\"k\":\"v\"}", hdr, need, &hl),
      0);
  /* Header + data is byte for byte the one-call stream. */
  assert_int_equal(hl, need);
  assert_memory_equal(hdr, whole, hl);
  assert_memory_equal((unsigned char *)whole + hl, ms_tensor_data(t),
                      sizeof(data));
  /* Bad input, as for ms_tensor_serialize. */
  assert_int_equal(ms_tensor_serialize_header(NULL, "x", NULL, hdr, need, &hl),
                   MS_EINVAL);
  assert_int_equal(ms_tensor_serialize_header(t, "x", NULL, hdr, need, NULL),
                   MS_EINVAL);
  assert_int_equal(ms_tensor_serialize_header(t, "x", NULL, NULL, 8, &hl),
                   MS_EINVAL);
  assert_int_equal(
      ms_tensor_serialize_header(t, "__metadata__", NULL, hdr, need, &hl),
      MS_EINVAL);
  /* Metadata that would make the header longer than the decoder accepts. */
  size_t big = MS_SAFETENSORS_HEADER_MAX;
  char *meta = malloc(big + 16);
  memcpy(meta, "{\"k\":\"", 6);
  memset(meta + 6, 'm', big - 100);
  memcpy(meta + 6 + big - 100, "\"}", 3);
  assert_int_equal(ms_tensor_serialize_header(t, "x", meta, NULL, 0, &hl),
                   MS_ERANGE);
  assert_true(hl <= 8 + MS_SAFETENSORS_HEADER_MAX);
  memset(meta + 6, 'm', big);
  memcpy(meta + 6 + big, "\"}", 3);
  assert_int_equal(ms_tensor_serialize_header(t, "x", meta, NULL, 0, &hl),
                   MS_EINVAL);
  void *b2 = NULL;
  size_t l2 = 0;
  assert_int_equal(ms_tensor_serialize(t, "x", meta, &b2, &l2), MS_EINVAL);
  assert_null(b2);
  free(meta);
  free(hdr);
  ms_free(whole);
  ms_tensor_release(t);
}

/* A streaming reader: the prefix, then the header, then the data read
 * straight into a tensor it already holds. */
static void test_parse_header_streaming(void **state) {
  (void)state;
  int64_t shape[3] = {2, 3, 1};
  unsigned char data[48];
  for (size_t i = 0; i < sizeof(data); i++)
    data[i] = (unsigned char)(255 - i);
  ms_tensor_t *t = heap_tensor(MS_DTYPE_INT64, 3, shape, data);
  void *stream = NULL;
  size_t len = 0;
  assert_int_equal(ms_tensor_serialize(t, "x", "{\"a\":\"b\"}", &stream, &len),
                   0);
  const unsigned char *p = stream;

  ms_dtype_t dt = MS_DTYPE_UINT8;
  int nd = -1;
  int64_t sh[MS_MAX_NDIM] = {0};
  size_t hl = 0, dl = 0;
  /* Every prefix shorter than the header asks for more bytes, and says
   * exactly how many; nothing else is written. */
  for (size_t k = 0; k < len; k++) {
    int rc = ms_tensor_parse_header(p, k, &dt, &nd, sh, &hl, &dl);
    size_t want = k < 8 ? 8 : len - sizeof(data);
    if (k < want) {
      assert_int_equal(rc, MS_ERANGE);
      assert_int_equal(hl, want);
      assert_int_equal(nd, -1);
    } else {
      assert_int_equal(rc, 0); /* bytes after the header are ignored */
      assert_int_equal(hl, want);
    }
  }
  assert_int_equal(dt, MS_DTYPE_INT64);
  assert_int_equal(nd, 3);
  assert_memory_equal(sh, shape, sizeof(shape));
  assert_int_equal(dl, sizeof(data));
  assert_int_equal(hl + dl, len);

  /* Into an existing tensor, whole stream at once. */
  unsigned char zero[48] = {0};
  ms_tensor_t *dst = heap_tensor(MS_DTYPE_INT64, 3, shape, zero);
  assert_int_equal(ms_tensor_deserialize_into(stream, len, dst), 0);
  assert_memory_equal(ms_tensor_data(dst), data, sizeof(data));
  /* A tensor of another dtype or shape is refused and left alone. */
  int64_t other[3] = {3, 2, 1};
  ms_tensor_t *wrong = heap_tensor(MS_DTYPE_INT64, 3, other, zero);
  assert_int_equal(ms_tensor_deserialize_into(stream, len, wrong), MS_EINVAL);
  assert_non_null(strstr(ms_shm_errmsg(NULL), "differs"));
  assert_memory_equal(ms_tensor_data(wrong), zero, sizeof(zero));
  ms_tensor_release(wrong);
  ms_tensor_t *u16 = heap_tensor(MS_DTYPE_FLOAT32, 3, shape, zero);
  assert_int_equal(ms_tensor_deserialize_into(stream, len, u16), MS_EINVAL);
  ms_tensor_release(u16);
  /* NULL arguments. */
  assert_int_equal(ms_tensor_deserialize_into(NULL, len, dst), MS_EINVAL);
  assert_int_equal(ms_tensor_deserialize_into(stream, len, NULL), MS_EINVAL);
  assert_int_equal(ms_tensor_parse_header(NULL, len, &dt, &nd, sh, &hl, &dl),
                   MS_EINVAL);
  assert_int_equal(ms_tensor_parse_header(p, len, &dt, &nd, NULL, &hl, &dl),
                   MS_EINVAL);

  /* Hostile headers through the streaming parse. */
  static const char *const bad_headers[] = {
      "{\"a\":1,\"b\":2,\"c\":3}",
      "{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"
      "\"data_offsets\":[0,4]}}",
      "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,9]}}",
      "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x",
      "not json",
  };
  for (size_t i = 0; i < sizeof(bad_headers) / sizeof(bad_headers[0]); i++) {
    size_t n = strlen(bad_headers[i]);
    unsigned char *b = make_stream(bad_headers[i], n, 0);
    assert_int_equal(ms_tensor_parse_header(b, 8 + n, &dt, &nd, sh, &hl, &dl),
                     MS_EBADREGION);
    free(b);
  }
  /* A length prefix over the cap is refused from its 8 bytes alone. */
  const unsigned char pre[8] = {1, 0, 1, 0, 0, 0, 0, 0}; /* 65537 bytes */
  assert_int_equal(ms_tensor_parse_header(pre, 8, &dt, &nd, sh, &hl, &dl),
                   MS_EBADREGION);
  assert_non_null(strstr(ms_shm_errmsg(NULL), "65536-byte limit"));

  ms_tensor_release(dst);
  ms_tensor_release(t);
  ms_free(stream);
}

/* Decoding into a pooled shared-memory tensor, and a read-only one. */
static void test_deserialize_into_shm(void **state) {
  (void)state;
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.prefix = "mssafei_";
  ms_shm_t *shm = NULL, *other = NULL;
  assert_int_equal(ms_shm_create(&o, &shm), 0);
  assert_int_equal(ms_shm_create(&o, &other), 0);
  int64_t shape[2] = {64, 64};
  ms_tensor_t *dst = NULL, *src = NULL, *ro = NULL;
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_FLOAT32, 2, shape, NULL, &dst),
                   0);
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_FLOAT32, 2, shape, NULL, &src),
                   0);
  for (size_t i = 0; i < ms_tensor_nbytes(src); i++)
    ((unsigned char *)ms_tensor_data(src))[i] = (unsigned char)(i ^ 0x5a);
  void *stream = NULL;
  size_t len = 0;
  assert_int_equal(ms_tensor_serialize(src, NULL, NULL, &stream, &len), 0);
  for (int rep = 0; rep < 3; rep++) { /* the same tensor, frame after frame */
    memset(ms_tensor_data(dst), 0, ms_tensor_nbytes(dst));
    assert_int_equal(ms_tensor_deserialize_into(stream, len, dst), 0);
    assert_memory_equal(ms_tensor_data(dst), ms_tensor_data(src),
                        ms_tensor_nbytes(src));
  }
  char desc[MS_DESCRIPTOR_MAX];
  assert_int_equal(ms_tensor_descriptor(dst, desc, sizeof(desc)), 0);
  assert_int_equal(ms_tensor_open(other, desc, 0, &ro), 0);
  assert_int_equal(ms_tensor_is_writable(ro), 0);
  assert_int_equal(ms_tensor_deserialize_into(stream, len, ro), MS_EACCES);
  ms_tensor_release(ro);
  ms_tensor_release(src);
  ms_tensor_release(dst);
  ms_free(stream);
  assert_int_equal(ms_shm_destroy(other), 0);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

/* ------------------------------------------------------------------------ */
/* Linear cost on hostile input (issue 10)                                   */
/*                                                                           */
/* Timing is a ratio against a baseline measured in the same run, as CPU     */
/* time of this process (CLOCK_PROCESS_CPUTIME_ID), median of several reps:  */
/* never a wall-clock bound.  The baseline decodes a valid stream of the     */
/* same total size (a small header and ~1 MB of data: one allocation and a   */
/* memcpy).  Refusing a hostile header must cost less than 50x that.  Before */
/* the fix the 1 MB header of distinct keys took seconds (a ratio in the     */
/* tens of thousands); after it, it is refused from its length prefix or     */
/* within its first members.  The ratio is generous because the baseline is  */
/* tiny (~0.1 ms) and sanitizers slow the JSON code more than memcpy.        */
/* ------------------------------------------------------------------------ */

#define HOSTILE_REPS 7
#define MB (1u << 20)

/* The process's CPU time.  Windows reports it only per scheduler tick
 * (15.6 ms), far coarser than these decodes: the monotonic clock stands in
 * there (the ratio is generous enough for a quiet Wine run). */
static double cpu_now(void) {
#ifdef _WIN32
  return (double)uv_hrtime() / 1e9;
#else
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
#endif
}

static int dbl_cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median CPU seconds of decoding buf; checks the outcome every time. */
static double decode_cpu(const unsigned char *buf, size_t len, int want) {
  double v[HOSTILE_REPS];
  for (int r = 0; r < HOSTILE_REPS; r++) {
    ms_tensor_t *t = NULL;
    double t0 = cpu_now();
    int rc = ms_tensor_deserialize(NULL, buf, len, &t);
    v[r] = cpu_now() - t0;
    assert_int_equal(rc, want);
    ms_tensor_release(t);
  }
  qsort(v, HOSTILE_REPS, sizeof(v[0]), dbl_cmp);
  return v[HOSTILE_REPS / 2];
}

/* A stream of `total` bytes whose header is members "k<i>":<value> (each
 * `value` text) inside `open` ... "}" + `close`, padded with spaces. */
static unsigned char *hostile(size_t total, const char *open, const char *value,
                              const char *close) {
  unsigned char *b = malloc(total);
  size_t hl = total - 8, at = 0;
  char *h = (char *)b + 8;
  at += (size_t)sprintf(h, "%s", open);
  for (size_t i = 0; at + 64 < hl; i++)
    at += (size_t)sprintf(h + at, "%s\"k%zu\":%s", i ? "," : "", i, value);
  at += (size_t)sprintf(h + at, "%s", close);
  memset(h + at, ' ', hl - at);
  for (int i = 0; i < 8; i++)
    b[i] = (unsigned char)((uint64_t)hl >> (8 * i));
  return b;
}

static void test_hostile_headers_linear(void **state) {
  (void)state;
  /* Baseline: a valid 1 MB stream. */
  const size_t total = MB;
  const size_t n = total - 8 - 72;
  char header[128];
  int hl = snprintf(header, sizeof(header),
                    "{\"t\":{\"dtype\":\"U8\",\"shape\":[%zu],"
                    "\"data_offsets\":[0,%zu]}}",
                    n, n);
  assert_true(hl <= 72);
  memset(header + hl, ' ', 72 - (size_t)hl);
  unsigned char *valid = make_stream(header, 72, n);
  double base = decode_cpu(valid, total, 0);

  struct {
    const char *what, *open, *value, *close;
    size_t size;
  } cases[] = {
      /* The case: 1 MB of distinct root keys (over the cap). */
      {"1 MB of root keys", "{", "0", "}", MB},
      /* The same at the cap: refused at the third root member. */
      {"root keys at the cap", "{", "0", "}", 8 + MS_SAFETENSORS_HEADER_MAX},
      /* A tensor entry of distinct keys: refused at its fourth field. */
      {"entry keys at the cap", "{\"t\":{", "0", "}}",
       8 + MS_SAFETENSORS_HEADER_MAX},
  };
  for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    unsigned char *b =
        hostile(cases[c].size, cases[c].open, cases[c].value, cases[c].close);
    double cost = decode_cpu(b, cases[c].size, MS_EBADREGION);
    print_message("%-24s %.1f us, valid 1 MB stream %.1f us\n", cases[c].what,
                  cost * 1e6, base * 1e6);
    if (cost > 50 * base)
      fail_msg("%s: %.6f s of CPU, over 50x the %.6f s of a valid stream",
               cases[c].what, cost, base);
    free(b);
  }
  /* A shape of 32,000 elements at the cap: refused at its 17th. */
  size_t shl = MS_SAFETENSORS_HEADER_MAX;
  char *sh = malloc(shl + 1);
  size_t at = (size_t)sprintf(sh, "{\"t\":{\"dtype\":\"U8\",\"shape\":[1");
  while (at + 40 < shl)
    at += (size_t)sprintf(sh + at, ",1");
  at += (size_t)sprintf(sh + at, "],\"data_offsets\":[0,1]}}");
  memset(sh + at, ' ', shl - at);
  unsigned char *b = make_stream(sh, shl, 1);
  double cost = decode_cpu(b, 8 + shl + 1, MS_EBADREGION);
  assert_non_null(strstr(ms_shm_errmsg(NULL), "more than 16 elements"));
  if (cost > 50 * base)
    fail_msg("long shape: %.6f s of CPU, over 50x the %.6f s of a valid stream",
             cost, base);
  free(b);
  free(sh);
  free(valid);
}

/* What the decoder must really parse, "__metadata__" with many members, it
 * parses in linear time: 8x the members costs about 8x (quadratic would be
 * 64x; the bound, 24x, is again generous). */
static void test_metadata_linear(void **state) {
  (void)state;
  double cost[2];
  size_t sizes[2] = {8 + MS_SAFETENSORS_HEADER_MAX / 8,
                     8 + MS_SAFETENSORS_HEADER_MAX};
  for (int k = 0; k < 2; k++) {
    unsigned char *b = hostile(sizes[k],
                               "{\"t\":{\"dtype\":\"U8\",\"shape\":[0],"
                               "\"data_offsets\":[0,0]},\"__metadata__\":{",
                               "\"v\"", "}}");
    cost[k] = decode_cpu(b, sizes[k], 0);
    free(b);
  }
  print_message("metadata: %.1f us for 8 KiB, %.1f us for 64 KiB\n",
                cost[0] * 1e6, cost[1] * 1e6);
  if (cost[1] > 24 * cost[0])
    fail_msg("8x the metadata cost %.1fx the time", cost[1] / cost[0]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exact_bytes),
      cmocka_unit_test(test_roundtrips),
      cmocka_unit_test(test_serialize_bad_input),
      cmocka_unit_test(test_hostile_streams),
      cmocka_unit_test(test_serialize_header),
      cmocka_unit_test(test_parse_header_streaming),
      cmocka_unit_test(test_deserialize_into_shm),
      cmocka_unit_test(test_hostile_headers_linear),
      cmocka_unit_test(test_metadata_linear),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
