/* The descriptor channel on Win32 (named events), with real processes:
 * this program started again as "--peer ROLE NAME COUNT" (CreateProcess).
 * Order and delivery to a subscriber process, receivers that sleep on the
 * events, a TerminateProcess'ed subscriber that no longer holds back a
 * blocked producer, and a TerminateProcess'ed producer whose subscriber
 * gets MS_EPIPE instead of a hang. */
#include "test_util.h"
#include "win32_child.h"

#include <windows.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char self[MAX_PATH];

static ms_shm_t *new_shm(void) {
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.prefix = "mscw-";
  ms_shm_t *shm = NULL;
  if (ms_shm_create(&o, &shm) != 0)
    return NULL;
  return shm;
}

/* ---- peer roles ---- */

/* sub NAME COUNT SPIN: receives COUNT u64s 0..COUNT-1 ("ok N" / "fail"),
 * or until MS_EPIPE when COUNT is 0 ("pipe N"). */
static int peer_sub(const char *name, unsigned long long count, unsigned spin) {
  ms_shm_t *shm = new_shm();
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  o.spin_us = spin;
  ms_channel_t *ch = NULL;
  if (shm == NULL || ms_channel_open(shm, name, &o, &ch) != 0) {
    printf("fail open %s\n", ms_channel_errmsg(NULL));
    return 1;
  }
  printf("ready\n");
  fflush(stdout);
  unsigned long long got = 0;
  for (;;) {
    uint64_t v = 0;
    size_t n = 0;
    int rc = ms_channel_recv(ch, &v, sizeof(v), &n, 30000);
    if (rc == MS_EPIPE && count == 0) {
      printf("pipe %llu\n", got);
      break;
    }
    if (rc != 0 || v != got) {
      printf("fail %s at %llu (got %llu)\n", ms_err_name(rc), got,
             (unsigned long long)v);
      return 1;
    }
    if (++got == count) {
      printf("ok %llu\n", got);
      break;
    }
  }
  fflush(stdout);
  ms_channel_close(ch);
  return ms_shm_destroy(shm) == 0 ? 0 : 1;
}

/* prod NAME: sends 0, 1, 2, ... until terminated. */
static int peer_prod(const char *name) {
  ms_shm_t *shm = new_shm();
  ms_channel_t *ch = NULL;
  if (shm == NULL || ms_channel_create(shm, name, NULL, &ch) != 0)
    return 1;
  printf("ready\n");
  fflush(stdout);
  for (uint64_t i = 0;; i++)
    if (ms_channel_send(ch, &i, sizeof(i), MS_CHANNEL_FOREVER) != 0)
      return 1;
}

/* ---- the test side ---- */

static child spawn(const char *args) {
  char cmd[800];
  (void)snprintf(cmd, sizeof(cmd), "\"%s\" --peer %s", self, args);
  return child_start(cmd);
}

static DWORD finish(child *c) { return finish_within(c, 120000); }

static void expect_line(child *c, const char *want) {
  char buf[256];
  read_line(c, buf, sizeof(buf));
  if (strcmp(buf, want) != 0)
    fail_msg("peer said \"%s\", expected \"%s\"", buf, want);
}

static void order(unsigned spin, unsigned long long n, int slow) {
  ms_shm_t *shm = new_shm();
  assert_non_null(shm);
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  o.capacity = 64;
  o.spin_us = spin;
  ms_channel_t *ch = NULL;
  assert_int_equal(ms_channel_create(shm, "w32order", &o, &ch), 0);
  char args[128];
  (void)snprintf(args, sizeof(args), "sub w32order %llu %u", n, spin);
  child c = spawn(args);
  expect_line(&c, "ready");
  for (uint64_t i = 0; i < n; i++) {
    assert_int_equal(ms_channel_send(ch, &i, sizeof(i), 30000), 0);
    if (slow && i % 16 == 0)
      Sleep(1); /* the receiver goes to sleep on its event */
  }
  char want[64];
  (void)snprintf(want, sizeof(want), "ok %llu", n);
  expect_line(&c, want);
  assert_int_equal(finish(&c), 0);
  ms_channel_close(ch);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_order_spinning(void **state) {
  (void)state;
  order(20, 100000, 0);
}

static void test_order_sleeping(void **state) {
  (void)state;
  order(0, 2000, 1);
}

static void test_terminated_subscriber(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm();
  assert_non_null(shm);
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  o.capacity = 8;
  ms_channel_t *ch = NULL;
  assert_int_equal(ms_channel_create(shm, "w32killsub", &o, &ch), 0);
  child c = spawn("sub w32killsub 1000000 20");
  expect_line(&c, "ready");
  TerminateProcess(c.pi.hProcess, 9);
  (void)finish(&c);
  for (uint64_t i = 0; i < 100; i++) /* the dead entry is dropped */
    assert_int_equal(ms_channel_send(ch, &i, sizeof(i), 30000), 0);
  ms_channel_close(ch);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_terminated_producer(void **state) {
  (void)state;
  child p = spawn("prod w32killprod 0 0");
  expect_line(&p, "ready");
  ms_shm_t *shm = new_shm();
  assert_non_null(shm);
  ms_channel_t *ch = NULL;
  assert_int_equal(ms_channel_open(shm, "w32killprod", NULL, &ch), 0);
  uint64_t last = 0, v = 0;
  size_t n = 0;
  for (int i = 0; i < 1000; i++) {
    assert_int_equal(ms_channel_recv(ch, &v, sizeof(v), &n, 30000), 0);
    assert_true(i == 0 || v == last + 1);
    last = v;
  }
  TerminateProcess(p.pi.hProcess, 9);
  (void)finish(&p);
  int rc = 0;
  while ((rc = ms_channel_recv(ch, &v, sizeof(v), &n, 30000)) == 0)
    assert_true(v == ++last);
  assert_int_equal(rc, MS_EPIPE); /* never MS_ETIMEDOUT: no hang */
  ms_channel_close(ch);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

int main(int argc, char **argv) {
  if (argc >= 4 && strcmp(argv[1], "--peer") == 0) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (strcmp(argv[2], "sub") == 0 && argc >= 6)
      return peer_sub(argv[3], strtoull(argv[4], NULL, 10),
                      (unsigned)strtoul(argv[5], NULL, 10));
    if (strcmp(argv[2], "prod") == 0)
      return peer_prod(argv[3]);
    return 2;
  }
  GetModuleFileNameA(NULL, self, sizeof(self));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_order_spinning),
      cmocka_unit_test(test_order_sleeping),
      cmocka_unit_test(test_terminated_subscriber),
      cmocka_unit_test(test_terminated_producer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
