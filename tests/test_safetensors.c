/* The safetensors fallback: exact bytes against a hand-computed vector,
 * round trips (heap and shared memory), and hostile streams. */
#include "test_util.h"

#include <stdio.h>
#include <string.h>

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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exact_bytes),
      cmocka_unit_test(test_roundtrips),
      cmocka_unit_test(test_serialize_bad_input),
      cmocka_unit_test(test_hostile_streams),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
