/* The model worker on Win32 (named pipes), with real processes: this
 * program started again as "--peer worker PIPE" (CreateProcess) serves
 * tests/worker_models.h's models; the test process is the client.  One
 * request each way the handshake can choose (descriptors, inline), the
 * stats seen through the pipe, a live pipe name refused, and a
 * TerminateProcess'ed worker whose client gets MS_EDISCONNECTED. */
#include "test_util.h"
#include "win32_child.h"
#include "worker_models.h"

#include <windows.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char self[MAX_PATH];
static char pipe_name[128];

/* worker PIPE: serves until terminated. */
static int peer_worker(const char *name) {
  ms_worker_options_t o = MS_WORKER_OPTIONS_INIT;
  o.endpoint = name;
  ms_worker_t *w = NULL;
  int rc = ms_worker_create(&o, NULL, NULL, &w);
  if (rc == 0)
    rc = wm_add_all(w);
  if (rc == 0)
    rc = ms_worker_run(w);
  if (rc != 0) {
    printf("fail %s %s\n", ms_err_name(rc), ms_worker_errmsg(w));
    return 1;
  }
  printf("ready\n");
  for (;;)
    Sleep(1000);
}

/* The worker process of the running test, terminated by teardown if the
 * test failed before it did (its stderr is ctest's: left alive, it would
 * hold ctest until the timeout). */
static HANDLE live;

static int teardown(void **state) {
  (void)state;
  if (live != NULL && WaitForSingleObject(live, 0) != WAIT_OBJECT_0)
    TerminateProcess(live, 1);
  live = NULL;
  return 0;
}

static child spawn_worker(void) {
  char cmd[800];
  (void)snprintf(cmd, sizeof(cmd), "\"%s\" --peer worker %s", self, pipe_name);
  child c = child_start(cmd);
  live = c.pi.hProcess;
  char buf[256];
  read_line(&c, buf, sizeof(buf));
  if (strcmp(buf, "ready") != 0)
    fail_msg("worker said \"%s\"", buf);
  return c;
}

static ms_tensor_t *input(ms_shm_t *shm, size_t n, unsigned seed) {
  ms_tensor_t *t = NULL;
  int64_t shape = (int64_t)n;
  if (shm != NULL)
    assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, &shape, NULL, &t),
                     0);
  else { /* a heap tensor, through the fallback decoder */
    ms_tensor_t *tmp = NULL;
    ms_shm_t *s = NULL;
    assert_int_equal(ms_shm_create(NULL, &s), 0);
    assert_int_equal(ms_tensor_alloc(s, MS_DTYPE_UINT8, 1, &shape, NULL, &tmp),
                     0);
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(ms_tensor_serialize(tmp, NULL, NULL, &buf, &len), 0);
    assert_int_equal(ms_tensor_deserialize(NULL, buf, len, &t), 0);
    ms_free(buf);
    ms_tensor_release(tmp);
    assert_int_equal(ms_shm_destroy(s), 0);
  }
  uint8_t *p = ms_tensor_data(t);
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)(seed * 2654435761u >> (i % 24));
  return t;
}

static void check(ms_tensor_t *in, ms_tensor_t **out, size_t n) {
  assert_int_equal(n, 2);
  assert_int_equal(ms_tensor_nbytes(out[0]), ms_tensor_nbytes(in));
  const uint8_t *a = ms_tensor_data(in), *b = ms_tensor_data(out[0]);
  int64_t sum = 0, got;
  for (size_t i = 0; i < ms_tensor_nbytes(in); i++) {
    assert_int_equal(b[i], wm_f(a[i]));
    sum += a[i];
  }
  memcpy(&got, ms_tensor_data(out[1]), sizeof(got));
  assert_true(got == sum);
}

static double stat_inline(ms_client_t *c) {
  char *json = NULL;
  assert_int_equal(ms_client_status_json(c, 30000, &json), 0);
  const char *p = strstr(json, "\"inline\":");
  assert_non_null(p);
  double v = atof(p + 9);
  ms_free(json);
  return v;
}

static void test_request(void **state) {
  (void)state;
  child w = spawn_worker();
  ms_shm_t *shm = NULL;
  assert_int_equal(ms_shm_create(NULL, &shm), 0);
  for (int mode = 0; mode < 2; mode++) {
    ms_client_options_t co = MS_CLIENT_OPTIONS_INIT;
    co.shm = shm;
    co.flags = mode == 1 ? MS_CLIENT_INLINE : 0;
    co.retry_attempts = 1;
    ms_client_t *c = NULL;
    int rc = ms_client_connect(pipe_name, &co, &c);
    if (rc != 0)
      fail_msg("connect: %s: %s", ms_err_name(rc), ms_client_errmsg(NULL));
    ms_tensor_t *in = input(mode == 0 ? shm : NULL, 5000, 7u + (unsigned)mode);
    ms_tensor_t *out[2];
    size_t n = 2;
    rc = ms_client_infer(c, "echo", &in, 1, 30000, out, &n);
    if (rc != 0)
      fail_msg("infer: %s: %s", ms_err_name(rc), ms_client_errmsg(c));
    check(in, out, n);
    char d[MS_DESCRIPTOR_MAX];
    /* Descriptors when both sides share the session's namespace. */
    assert_int_equal(ms_tensor_descriptor(out[0], d, sizeof(d)) == 0,
                     mode == 0);
    assert_true(stat_inline(c) == (mode == 1 ? 1.0 : 0.0));
    ms_tensor_release(out[0]);
    ms_tensor_release(out[1]);
    ms_tensor_release(in);
    if (mode == 0) {
      ms_client_close(c);
      continue;
    }
    /* The worker dies: the next call is a disconnection, not a hang. */
    assert_true(TerminateProcess(w.pi.hProcess, 9));
    assert_int_equal(finish_within(&w, 30000), 9);
    live = NULL;
    assert_int_equal(ms_client_ping(c, 30000), MS_EDISCONNECTED);
    ms_client_close(c);
  }
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_busy(void **state) {
  (void)state;
  child w = spawn_worker();
  ms_worker_options_t o = MS_WORKER_OPTIONS_INIT;
  o.endpoint = pipe_name;
  ms_worker_t *w2 = NULL;
  assert_int_equal(ms_worker_create(&o, NULL, NULL, &w2), 0);
  assert_int_equal(ms_worker_run(w2), MS_EBUSY);
  assert_int_equal(ms_worker_destroy(w2), 0);
  ms_client_t *c = NULL;
  assert_int_equal(ms_client_connect(pipe_name, NULL, &c), 0);
  assert_int_equal(ms_client_ping(c, 30000), 0);
  ms_client_close(c);
  assert_true(TerminateProcess(w.pi.hProcess, 9));
  assert_int_equal(finish_within(&w, 30000), 9);
  live = NULL;
}

int main(int argc, char **argv) {
  if (argc >= 4 && strcmp(argv[1], "--peer") == 0) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (strcmp(argv[2], "worker") == 0)
      return peer_worker(argv[3]);
    return 2;
  }
  GetModuleFileNameA(NULL, self, sizeof(self));
  (void)snprintf(pipe_name, sizeof(pipe_name), "\\\\.\\pipe\\ms-test-%lu",
                 (unsigned long)GetCurrentProcessId());
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_request, teardown),
      cmocka_unit_test_teardown(test_busy, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
