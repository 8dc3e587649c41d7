/* Model keys: canonical config JSON, canonical paths, bad input. */
#include "test_util.h"

#include <stdio.h>
#include <string.h>
#ifndef _WIN32
#include <sys/stat.h>
#include <unistd.h>
#endif

static void expect_canonical(const char *in, const char *want) {
  ms_key_t *k = make_key("/m/k", in);
  assert_string_equal(ms_key_config(k), want);
  ms_key_destroy(k);
}

static void expect_invalid(const char *in, const char *msg_part) {
  ms_key_t *k = NULL;
  assert_int_equal(ms_key_create("/m/k", in, &k), MS_EINVAL);
  assert_null(k);
  if (strstr(ms_key_errmsg(), msg_part) == NULL)
    fail_msg("message \"%s\" lacks \"%s\"", ms_key_errmsg(), msg_part);
}

static void test_config_canonical(void **state) {
  (void)state;
  expect_canonical(NULL, "{}");
  expect_canonical("", "{}");
  expect_canonical("  \n", "{}");
  expect_canonical("{\"b\":1,\"a\":2}", "{\"a\":2,\"b\":1}");
  expect_canonical("{ \"z\" : { \"y\":1, \"x\":[ {\"d\":1,\"c\":2} ] } }",
                   "{\"z\":{\"x\":[{\"c\":2,\"d\":1}],\"y\":1}}");
  expect_canonical("[3, 1, 2]", "[3,1,2]"); /* arrays keep their order */
  expect_canonical("{\"s\":\"a b\\n\",\"n\":1.5e3,\"t\":true,\"z\":null}",
                   "{\"n\":1.5e3,\"s\":\"a b\\n\",\"t\":true,\"z\":null}");
  expect_canonical("{\"B\":1,\"a\":1,\"A\":1}", "{\"A\":1,\"B\":1,\"a\":1}");
}

static const char *canon(ms_key_t **k, const char *config) {
  *k = make_key("/m/k", config);
  return ms_key_config(*k);
}

/* Two configs name the same model exactly when their keys are equal. */
static void expect_same(const char *a, const char *b, int same) {
  ms_key_t *x = NULL, *y = NULL;
  const char *ca = canon(&x, a), *cb = canon(&y, b);
  if ((strcmp(ca, cb) == 0) != same)
    fail_msg("%s and %s: keys %s and %s should %s", a, b, ca, cb,
             same ? "be equal" : "differ");
  ms_key_destroy(x);
  ms_key_destroy(y);
}

/* Issue 10: number tokens reach the loader exactly as written, and only
 * the same JSON value gives the same key. */
static void test_config_exact_numbers(void **state) {
  (void)state;
  expect_canonical("{\"lr\":0.30000000000000004}",
                   "{\"lr\":0.30000000000000004}");
  expect_canonical("{\"seed\":9007199254740992}",
                   "{\"seed\":9007199254740992}");
  expect_canonical("{\"seed\":9007199254740993}",
                   "{\"seed\":9007199254740993}");
  expect_canonical("{\"n\":8999999999999999}", "{\"n\":8999999999999999}");
  expect_canonical(
      "[-0,0.0,1E+2,1e-2,-1.25e-300,123456789012345678901234567890]",
      "[-0,0.0,1E+2,1e-2,-1.25e-300,123456789012345678901234567890]");
  expect_canonical("[1e-310,1.7976931348623157e308]", /* denormal, DBL_MAX */
                   "[1e-310,1.7976931348623157e308]");
  expect_same("{\"lr\":0.3}", "{\"lr\":0.30000000000000004}", 0);
  expect_same("{\"seed\":9007199254740992}", "{\"seed\":9007199254740990}", 0);
  expect_same("{\"x\":1.0}", "{\"x\":1}", 0); /* tokens, not values */
  expect_same("{\"x\":1e2}", "{\"x\":100}", 0);
  expect_same("{\"x\":-0}", "{\"x\":0}", 0);
  expect_same("{\"s\":\"a\"}", "{\"s\":\"a \"}", 0);
  /* What is ignored: key order, whitespace, escapes of the same text. */
  expect_same("{\"a\":1,\"b\":[1,2]}", " { \"b\" : [ 1 , 2 ] ,\n\"a\":1 } ", 1);
  expect_same("{\"s\":\"\\u0041\\/\\u00e9\"}", "{\"s\":\"A/\xc3\xa9\"}", 1);
  expect_same("{\"\\u0061\":1}", "{\"a\":1}", 1);
  expect_same("{\"e\":\"\\ud83d\\ude00\"}", "{\"e\":\"\xf0\x9f\x98\x80\"}", 1);
  expect_canonical(
      "[-1.000000000000000000000000000000000000000000000000000000000e-5]",
      "[-1.000000000000000000000000000000000000000000000000000000000e-5]");
  expect_same("\xef\xbb\xbf{\"a\":0}", "{\"a\":0}", 1); /* a BOM is ignored */
  expect_canonical("\xef\xbb\xbf  ", "{}");
  expect_canonical("\xef\xbb\xbf-5", "-5");
  /* A number inside a string is text, not a number. */
  expect_canonical("{\"s\":\"01 -x 1e400\"}", "{\"s\":\"01 -x 1e400\"}");
}

static void test_config_invalid(void **state) {
  (void)state;
  expect_invalid("{", "malformed config JSON at byte");
  expect_invalid("{\"a\":}", "malformed config JSON at byte 5");
  expect_invalid("{\"a\":1} x", "trailing data at byte 8");
  expect_invalid("{\"a\":1,\"a\":2}", "duplicate key \"a\"");
  expect_invalid("{\"o\":{\"k\":1,\"k\":1}}", "duplicate key \"k\"");
  expect_invalid("nul", "malformed");
  /* Values a loader could not tell apart from others are refused. */
  expect_invalid("{\"x\":1e400}", "number 1e400 at byte 5 is out of the range");
  expect_invalid("{\"x\":-1e400}", "out of the range of a double");
  expect_invalid("[1e-400]", "out of the range of a double");
  expect_invalid("[0.000e-99999]x", "trailing data"); /* zero is in range */
  expect_invalid("{\"s\":\"a\\u0000b\"}", "\\u0000 in a string at byte 7");
  expect_invalid("{\"a\\u0000\":1}", "\\u0000");
  expect_invalid("{\"s\":\"a\\uZZZZb\"}", "bad \\u escape at byte 7");
  expect_invalid("{\"s\":\"a\\u12\"}", "bad \\u escape");
  /* Numbers that are not JSON numbers. */
  expect_invalid("[01]", "malformed number at byte 1");
  expect_invalid("[1.]", "malformed number");
  expect_invalid("[-]", "malformed number");
  expect_invalid("[1e]", "malformed number");
  expect_invalid("[1.5e+]", "malformed number");
  expect_invalid("[1-2]", "malformed number");
  expect_invalid("[.5]", "malformed config JSON at byte 1");
  expect_invalid("[+1]", "malformed config JSON at byte 1");
  expect_invalid(
      "[1111111111111111111111111111111111111111111111111111111111111111]",
      "over the 63 limit");
  expect_invalid("{\x01\"a\":1}", "control byte 0x01 at byte 1");
  /* What cJSON would take but JSON does not: a raw control character in a
   * string, and lone UTF-16 surrogates (malformed input, never out of
   * memory). */
  expect_invalid("{\"s\":\"a\x03\"}", "malformed config JSON at byte 7");
  expect_invalid("[\"\\udc00\"]", "malformed config JSON");
  expect_invalid("[\"\\ud800x\"]", "malformed config JSON");
  expect_invalid("[\"\\ud800\\u0041\"]", "malformed config JSON");
  expect_invalid("\xef\xbb\xbf\xef\xbb\xbf{}", "second byte order mark");
  /* Nesting deeper than cJSON's limit is refused, not a stack overflow. */
  char deep[4200];
  for (int i = 0; i < 2000; i++)
    deep[i] = '[';
  for (int i = 0; i < 2000; i++)
    deep[2000 + i] = ']';
  deep[4000] = '\0';
  expect_invalid(deep, "malformed");
  /* Over the size limit. */
  char *big = malloc(MS_CONFIG_MAX + 16);
  big[0] = '"';
  memset(big + 1, 'x', MS_CONFIG_MAX + 10);
  big[MS_CONFIG_MAX + 11] = '"';
  big[MS_CONFIG_MAX + 12] = '\0';
  expect_invalid(big, "limit");
  free(big);
}

#ifndef _WIN32 /* POSIX paths, symlinks */
static void test_path_canonical(void **state) {
  (void)state;
  char dir[] = "/tmp/ms-key-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char file[256], link[256], dotted[256], real[256];
  (void)snprintf(file, sizeof(file), "%s/model.bin", dir);
  (void)snprintf(link, sizeof(link), "%s/alias.bin", dir);
  (void)snprintf(dotted, sizeof(dotted), "%s/sub/../model.bin", dir);
  FILE *f = fopen(file, "w");
  assert_non_null(f);
  fclose(f);
  assert_int_equal(symlink(file, link), 0);
  (void)snprintf(real, sizeof(real), "%s/sub", dir);
  assert_int_equal(mkdir(real, 0700), 0);
  assert_non_null(realpath(file, real));

  ms_key_t *a = make_key(file, "{\"x\":1}");
  ms_key_t *b = make_key(link, " {\"x\" : 1} ");
  ms_key_t *c = make_key(dotted, "{\"x\":1}");
  assert_string_equal(ms_key_path(a), real);
  assert_string_equal(ms_key_path(b), real);
  assert_string_equal(ms_key_path(c), real);
  assert_int_equal(ms_key_hash(a), ms_key_hash(b));
  /* A path that does not exist is kept as given. */
  ms_key_t *d = make_key("/no/such/dir/../model.bin", NULL);
  assert_string_equal(ms_key_path(d), "/no/such/dir/../model.bin");
  assert_int_not_equal(ms_key_hash(a), ms_key_hash(d));

  ms_key_destroy(a), ms_key_destroy(b), ms_key_destroy(c), ms_key_destroy(d);
  unlink(link);
  unlink(file);
  (void)snprintf(real, sizeof(real), "%s/sub", dir);
  rmdir(real);
  rmdir(dir);
}
#endif

static void test_key_bad_input(void **state) {
  (void)state;
  ms_key_t *k = NULL;
  assert_int_equal(ms_key_create(NULL, NULL, &k), MS_EINVAL);
  assert_non_null(strstr(ms_key_errmsg(), "path is NULL"));
  assert_int_equal(ms_key_create("/m", NULL, NULL), MS_EINVAL);
  assert_int_equal(ms_key_create("", NULL, &k), MS_EINVAL);
  char *p = malloc(MS_PATH_MAX + 2);
  memset(p, 'p', MS_PATH_MAX + 1);
  p[MS_PATH_MAX + 1] = '\0';
  assert_int_equal(ms_key_create(p, NULL, &k), MS_EINVAL);
  assert_non_null(strstr(ms_key_errmsg(), "longer than"));
  p[MS_PATH_MAX] = '\0'; /* exactly the limit is fine */
  assert_int_equal(ms_key_create(p, NULL, &k), 0);
  assert_int_equal(strlen(ms_key_path(k)), MS_PATH_MAX);
  ms_key_destroy(k);
  free(p);
  assert_null(ms_key_path(NULL));
  assert_null(ms_key_config(NULL));
  assert_int_equal(ms_key_hash(NULL), 0);
  ms_key_destroy(NULL);
}

static void test_errors_and_version(void **state) {
  (void)state;
  assert_string_equal(ms_err_name(MS_EINVAL), "MS_EINVAL");
  assert_string_equal(ms_err_name(MS_ESTALE), "MS_ESTALE");
  assert_string_equal(ms_err_name(0), "MS_OK");
  assert_string_equal(ms_err_name(-9999), "MS_UNKNOWN");
  assert_string_equal(ms_strerror(MS_ETIMEDOUT), "timed out");
  assert_string_equal(ms_strerror(1), "unknown error");
  /* Codes are stable ABI: they must never move. */
  assert_int_equal(MS_EINVAL, -1);
  assert_int_equal(MS_ELOAD, -7);
  assert_int_equal(MS_ERANGE, -15);
  assert_int_equal(ms_version(), MS_VERSION_NUMBER);
  assert_string_equal(ms_version_string(), MS_VERSION_STRING);
  char buf[32];
  (void)snprintf(buf, sizeof(buf), "%u.%u.%u", ms_version() >> 16,
                 (ms_version() >> 8) & 0xff, ms_version() & 0xff);
  assert_string_equal(buf, ms_version_string());
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_config_canonical),
      cmocka_unit_test(test_config_exact_numbers),
      cmocka_unit_test(test_config_invalid),
#ifndef _WIN32
      cmocka_unit_test(test_path_canonical),
#endif
      cmocka_unit_test(test_key_bad_input),
      cmocka_unit_test(test_errors_and_version),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
