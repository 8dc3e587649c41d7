/* The Win32 backend, with real processes (CreateProcess, TerminateProcess):
 * hand-off to another process, read-only enforcement, the sweep after a
 * holder is killed, hostile headers, bad descriptors, quotas, the owner-only
 * DACL, the commit limit. */
#include "test_util.h"

#include "internal/shm.h"
#include "win32_child.h"

#include <windows.h>

#include <aclapi.h>
#include <stdio.h>
#include <string.h>

static const char *helper;

static child spawn(const char *args) {
  char cmd[512];
  (void)snprintf(cmd, sizeof(cmd), "\"%s\" %s", helper, args);
  return child_start(cmd);
}

static DWORD finish(child *c) { return finish_within(c, 60000); }

static ms_shm_t *new_shm(uint64_t pool_bytes) {
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.prefix = "mswt-";
  o.pool_bytes = pool_bytes;
  ms_shm_t *shm = NULL;
  assert_int_equal(ms_shm_create(&o, &shm), 0);
  return shm;
}

static ms_tensor_t *alloc_pattern(ms_shm_t *shm, size_t n, unsigned seed) {
  int64_t shape[1] = {(int64_t)n};
  ms_tensor_t *t = NULL;
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &t), 0);
  unsigned char *p = ms_tensor_data(t);
  for (size_t i = 0; i < n; i++) /* the helper's pattern() */
    p[i] = (unsigned char)((i * 2654435761u) >> 13 ^ seed);
  return t;
}

/* Does a named mapping still exist? */
static int region_exists(const char *desc) {
  wchar_t w[160];
  char name[128];
  (void)snprintf(name, sizeof(name), "Local\\%.*s",
                 (int)(strrchr(desc, ':') - desc - 4), desc + 4);
  for (size_t i = 0; i <= strlen(name); i++)
    w[i] = (wchar_t)(unsigned char)name[i];
  HANDLE h = OpenFileMappingW(FILE_MAP_READ, FALSE, w);
  if (h != NULL)
    CloseHandle(h);
  return h != NULL;
}

/* ------------------------------------------------------------------------ */

static void test_handoff_to_another_process(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm(0);
  static const size_t sizes[] = {1024, 1u << 20, 16u << 20};
  for (int i = 0; i < 3; i++) {
    ms_tensor_t *t = alloc_pattern(shm, sizes[i], 5);
    char desc[MS_DESCRIPTOR_MAX], args[256];
    assert_int_equal(ms_tensor_descriptor(t, desc, sizeof(desc)), 0);
    (void)snprintf(args, sizeof(args), "consume - %s %zu 5", desc, sizes[i]);
    child c = spawn(args);
    assert_int_equal(finish(&c), 0); /* every byte verified over there */
    (void)snprintf(args, sizeof(args), "consume - %s %zu 6", desc, sizes[i]);
    c = spawn(args);
    assert_int_equal(finish(&c), 2); /* and a wrong pattern is noticed */
    ms_tensor_release(t);
    assert_false(region_exists(desc)); /* last handle gone */
  }
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_read_only_consumer_faults(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm(0);
  ms_tensor_t *t = alloc_pattern(shm, 4096, 1);
  unsigned char before = ((unsigned char *)ms_tensor_data(t))[0];
  char desc[MS_DESCRIPTOR_MAX], args[160];
  assert_int_equal(ms_tensor_descriptor(t, desc, sizeof(desc)), 0);
  (void)snprintf(args, sizeof(args), "write-ro - %s", desc);
  child c = spawn(args);
  assert_int_equal(finish(&c), (DWORD)EXCEPTION_ACCESS_VIOLATION);
  assert_int_equal(((unsigned char *)ms_tensor_data(t))[0], before);
  ms_tensor_release(t);
  /* The crashed writer's slot: released by the sweep. */
  assert_int_equal(ms_shm_sweep(shm, NULL), 0);
  assert_false(region_exists(desc));
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_sweep_after_terminate(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm(0);
  ms_tensor_t *t = alloc_pattern(shm, 1u << 20, 2);
  char desc[MS_DESCRIPTOR_MAX], args[160], line[32];
  assert_int_equal(ms_tensor_descriptor(t, desc, sizeof(desc)), 0);
  (void)snprintf(args, sizeof(args), "hold - %s", desc);
  child c = spawn(args);
  read_line(&c, line, sizeof(line));
  assert_string_equal(line, "held");
  ms__hdr *h = (ms__hdr *)((char *)ms_tensor_data(t) - ms__page_size());
  assert_int_equal(ms__slots_count(h), 2);
  assert_true(TerminateProcess(c.pi.hProcess, 9));
  assert_int_equal(finish(&c), 9);
  ms_tensor_release(t);
  /* The dead holder's token vanished with it, but its slot remains until a
   * sweep; the region stays while it is "held". */
  assert_int_equal(ms__slots_count(h), 1);
  assert_true(region_exists(desc));
  size_t n = 0;
  assert_int_equal(ms_shm_sweep(shm, &n), 0);
  assert_false(region_exists(desc));
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_stale_and_bad_descriptors(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm(1u << 20), *other = new_shm(0);
  ms_tensor_t *t = alloc_pattern(shm, 5000, 3), *u = NULL;
  char old[MS_DESCRIPTOR_MAX];
  assert_int_equal(ms_tensor_descriptor(t, old, sizeof(old)), 0);
  ms_tensor_release(t);
  t = alloc_pattern(shm, 5000, 3); /* recycled from the pool */
  assert_int_equal(ms_tensor_open(other, old, 0, &u), MS_ESTALE);
  const char *bad[] = {
      "", "..\\x", "ms1:a\\b-0123456789abcdef:1",
      "ms1:ms-0123456789abcdef-0123456789abcdef0123456789abcdef",
      "ms1:ms-0123456789ABCDEF-0123456789abcdef0123456789abcdef:1"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    assert_int_equal(ms_tensor_open(other, bad[i], 0, &u), MS_EINVAL);
  assert_int_equal(
      ms_tensor_open(
          other, "ms1:ms-0123456789abcdef-0123456789abcdef0123456789abcdef:1",
          0, &u),
      MS_ENOENT);
  ms_tensor_release(t);
  assert_int_equal(ms_shm_destroy(other), 0);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

/* A forged region: a valid header copied into a new named mapping, then
 * damaged; a consumer must refuse it. */
static void expect_hostile(void (*forge)(ms__hdr *h)) {
  ms_shm_t *shm = new_shm(0), *other = new_shm(0);
  int64_t shape[2] = {64, 64};
  ms_tensor_t *t = NULL, *u = NULL;
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_FLOAT32, 2, shape, NULL, &t),
                   0);
  char desc[MS_DESCRIPTOR_MAX], name[128], forged[MS_DESCRIPTOR_MAX];
  assert_int_equal(ms_tensor_descriptor(t, desc, sizeof(desc)), 0);
  const char *gen = strrchr(desc, ':') + 1;
  (void)snprintf(name, sizeof(name), "%.*s", (int)(gen - 1 - desc - 4),
                 desc + 4);
  name[strlen(name) - 1] = name[strlen(name) - 1] == '0' ? '1' : '0';
  (void)snprintf(forged, sizeof(forged), "ms1:%s:%s", name, gen);
  size_t page = ms__page_size(), size = page + 64 * 64 * 4;
  ms__ns *ns = NULL;
  ms__region r;
  assert_int_equal(ms__ns_open(NULL, &ns), 0);
  assert_int_equal(ms__region_create(ns, name, size, &r), 0);
  memcpy(r.base, (char *)ms_tensor_data(t) - page, size);
  ms__hdr *h = r.base;
  for (int i = 0; i < MS__SLOTS; i++)
    atomic_store(&h->slots[i], 0);
  forge(h);
  assert_int_equal(ms_tensor_open(other, forged, 0, &u), MS_EBADREGION);
  ms__region_unmap(&r);
  ms__ns_close(ns);
  ms_tensor_release(t);
  assert_int_equal(ms_shm_destroy(other), 0);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void bad_magic(ms__hdr *h) { h->magic ^= 1; }
static void huge_ndim(ms__hdr *h) { h->ndim = 1000; }
static void shape_overflow(ms__hdr *h) {
  h->ndim = 4;
  for (int i = 0; i < 4; i++)
    h->shape[i] = INT64_C(1) << 40;
}
static void offset_past_end(ms__hdr *h) { h->data_offset = UINT64_C(1) << 40; }
static void bytes_past_end(ms__hdr *h) {
  h->shape[0] = 1 << 20;
  h->data_bytes = (uint64_t)(1 << 20) * 64 * 4;
}
static void bad_strides(ms__hdr *h) { h->strides[0] = 1 << 20; }

static void test_hostile_headers(void **state) {
  (void)state;
  void (*forges[])(ms__hdr *) = {bad_magic,      huge_ndim,
                                 shape_overflow, offset_past_end,
                                 bytes_past_end, bad_strides};
  for (size_t i = 0; i < sizeof(forges) / sizeof(forges[0]); i++)
    expect_hostile(forges[i]);
}

static void test_quota_and_commit_limit(void **state) {
  (void)state;
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.prefix = "mswt-";
  o.max_bytes = 1000000;
  ms_shm_t *shm = NULL;
  assert_int_equal(ms_shm_create(&o, &shm), 0);
  int64_t n6[1] = {600000}, huge[1] = {INT64_C(1) << 46}; /* 64 TiB */
  ms_tensor_t *a = NULL, *b = NULL;
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, n6, NULL, &a), 0);
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, n6, NULL, &b),
                   MS_EQUOTA);
  ms_tensor_release(a);
  ms_shm_destroy(shm);
  /* Beyond the commit limit: refused at allocation, never a fault later. */
  o.max_bytes = 0;
  assert_int_equal(ms_shm_create(&o, &shm), 0);
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, huge, NULL, &b),
                   MS_ENOSPC);
  assert_null(b);
  ms_capabilities_t caps = MS_CAPABILITIES_INIT;
  assert_int_equal(ms_capabilities(NULL, &caps), 0);
  assert_int_equal(caps.shm_available, 1);
  assert_true(caps.shm_free_bytes > 0);
  assert_int_equal(ms_capabilities("C:\\tmp", &caps), 0);
  assert_int_equal(caps.shm_available, 0); /* no directory namespace here */
  assert_int_equal(ms_shm_destroy(shm), 0);
  o.dir = "C:\\tmp";
  assert_int_equal(ms_shm_create(&o, &shm), MS_ENOTSUP);
}

static void test_owner_only_dacl(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm(0);
  ms_tensor_t *t = alloc_pattern(shm, 100, 0);
  char desc[MS_DESCRIPTOR_MAX], name[128];
  assert_int_equal(ms_tensor_descriptor(t, desc, sizeof(desc)), 0);
  (void)snprintf(name, sizeof(name), "Local\\%.*s",
                 (int)(strrchr(desc, ':') - desc - 4), desc + 4);
  wchar_t w[160];
  for (size_t i = 0; i <= strlen(name); i++)
    w[i] = (wchar_t)(unsigned char)name[i];
  HANDLE hm = OpenFileMappingW(READ_CONTROL, FALSE, w);
  assert_non_null(hm);
  PACL dacl = NULL;
  PSECURITY_DESCRIPTOR sd = NULL;
  assert_int_equal(GetSecurityInfo(hm, SE_KERNEL_OBJECT,
                                   DACL_SECURITY_INFORMATION, NULL, NULL, &dacl,
                                   NULL, &sd),
                   ERROR_SUCCESS);
  assert_non_null(dacl);
  assert_int_equal(dacl->AceCount, 1); /* one entry: the current user */
  ACCESS_ALLOWED_ACE *ace = NULL;
  assert_true(GetAce(dacl, 0, (void **)&ace));
  HANDLE tok = NULL;
  char info[256];
  DWORD len = 0;
  assert_true(OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &tok));
  assert_true(GetTokenInformation(tok, TokenUser, info, sizeof(info), &len));
  assert_true(EqualSid((PSID)&ace->SidStart, ((TOKEN_USER *)info)->User.Sid));
  CloseHandle(tok);
  LocalFree(sd);
  CloseHandle(hm);
  ms_tensor_release(t);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: test_shm_win32 PATH-TO-shm_helper.exe\n");
    return 2;
  }
  helper = argv[1];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_handoff_to_another_process),
      cmocka_unit_test(test_read_only_consumer_faults),
      cmocka_unit_test(test_sweep_after_terminate),
      cmocka_unit_test(test_stale_and_bad_descriptors),
      cmocka_unit_test(test_hostile_headers),
      cmocka_unit_test(test_quota_and_commit_limit),
      cmocka_unit_test(test_owner_only_dacl),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
