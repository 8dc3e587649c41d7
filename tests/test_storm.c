/* Fault storm: producer and consumer processes killed with SIGKILL at
 * random points, hundreds of times.  No consumer may crash or read a torn
 * frame it was handed as complete, and after a sweep not one region may be
 * left behind.  It runs once per configuration: producer and consumer with
 * the same or different prefixes, pooling on or off on either side (issue
 * 9: liveness must not depend on the observer's configuration). */
#include "shm_backend.h"
#include "test_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *helper;
static char dir[64];

/* One process's allocator configuration. */
typedef struct side {
  const char *prefix;
  const char *pool_bytes;
} side;

typedef struct storm_cfg {
  side prod, cons;
} storm_cfg;

static pid_t spawn(const char *const *args, int in_fd, int out_fd, side s) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(in_fd, 0);
    dup2(out_fd, 1);
    for (int fd = 3; fd < 64; fd++)
      close(fd);
    setenv("MS_HELPER_PREFIX", s.prefix, 1);
    setenv("MS_HELPER_POOL", s.pool_bytes, 1);
    setenv("ASAN_OPTIONS", "detect_leaks=0", 1); /* killed mid-flight */
    /* MS_TEST_BACKEND passes through: the helpers use the same backend */
    execv(helper, (char *const *)args);
    _exit(127);
  }
  return pid;
}

static int count(const char *suffix, int want_suffix) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    size_t l = strlen(e->d_name), s = strlen(suffix);
    int has = l >= s && strcmp(e->d_name + l - s, suffix) == 0;
    n += has == want_suffix;
  }
  closedir(d);
  return n;
}

static void storm(const storm_cfg *cfg) {
  const char *env = getenv("MS_STORM_ITERATIONS");
  const int iterations = env != NULL ? atoi(env) : 250;
  (void)snprintf(dir, sizeof(dir), "/dev/shm/ms-storm-XXXXXX");
  assert_non_null(mkdtemp(dir));

  int lines[2], acks[2], devnull = open("/dev/null", O_RDWR);
  assert_int_equal(pipe(lines), 0); /* producer -> consumer descriptors */
  assert_int_equal(pipe(acks), 0);  /* consumer -> us, one byte a frame */
  fcntl(acks[0], F_SETFL, O_NONBLOCK);

  const char *prod_args[] = {helper, "storm-produce", dir, "0", NULL};
  const char *cons_args[] = {helper, "storm-consume", dir, NULL};
  pid_t prod = -1, cons = -1;
  unsigned r = 12345;
  long verified = 0, kills = 0, failures = 0;
  char seed[16];
  for (int it = 0; it < iterations; it++) {
    if (prod < 0) {
      (void)snprintf(seed, sizeof(seed), "%d", it + 1);
      prod_args[3] = seed;
      prod = spawn(prod_args, devnull, lines[1], cfg->prod);
    }
    if (cons < 0)
      cons = spawn(cons_args, lines[0], acks[1], cfg->cons);
    r = r * 1103515245u + 12345u;
    uv_sleep((r >> 16) % 20); /* 0..19 ms: any phase of either process */
    char buf[4096];
    ssize_t got;
    while ((got = read(acks[0], buf, sizeof(buf))) > 0)
      verified += got;
    unsigned who = (r >> 8) % 10; /* 5: producer, 4: consumer, 1: both */
    pid_t victims[2] = {who < 5 || who == 9 ? prod : -1, who >= 5 ? cons : -1};
    for (int v = 0; v < 2; v++) {
      if (victims[v] < 0)
        continue;
      kill(victims[v], SIGKILL);
      int st = 0;
      assert_int_equal(waitpid(victims[v], &st, 0), victims[v]);
      /* Anything but our SIGKILL is a failure: a crash, torn data. */
      if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)) {
        print_error("process %d ended with status %#x\n", victims[v], st);
        failures++;
      }
      kills++;
      if (victims[v] == prod)
        prod = -1;
      else
        cons = -1;
    }
  }
  pid_t left[2] = {prod, cons};
  for (int v = 0; v < 2; v++)
    if (left[v] > 0) {
      kill(left[v], SIGKILL);
      int st = 0;
      waitpid(left[v], &st, 0);
      failures += !(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    }
  char buf[4096];
  ssize_t got;
  while ((got = read(acks[0], buf, sizeof(buf))) > 0)
    verified += got;
  close(lines[0]), close(lines[1]), close(acks[0]), close(acks[1]);
  close(devnull);

  print_message("producer %s pool %s, consumer %s pool %s: %d iterations, "
                "%ld kills, %ld frames verified by consumers, %d regions and "
                "%d tokens left by the dead\n",
                cfg->prod.prefix, cfg->prod.pool_bytes, cfg->cons.prefix,
                cfg->cons.pool_bytes, iterations, kills, verified,
                count(".lock", 0), count(".lock", 1));
  assert_int_equal(failures, 0);
  assert_true(verified > 0); /* the storm did exercise hand-offs */

  /* Everyone is dead: an allocator per prefix (its creation sweeps), one
   * more sweep each for good measure, and nothing of theirs is left. */
  const char *prefixes[2] = {cfg->prod.prefix, cfg->cons.prefix};
  int n = strcmp(prefixes[0], prefixes[1]) == 0 ? 1 : 2;
  ms_shm_t *shm[2] = {NULL, NULL};
  for (int i = 0; i < n; i++) {
    ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
    o.backend = test_backend();
    o.dir = dir;
    o.prefix = prefixes[i];
    assert_int_equal(ms_shm_create(&o, &shm[i]), 0);
  }
  for (int i = 0; i < n; i++)
    assert_int_equal(ms_shm_sweep(shm[i], NULL), 0);
  assert_int_equal(count(".lock", 0), 0); /* regions */
  /* our own tokens (memfd: abstract sockets, no files) */
  assert_int_equal(count(".lock", 1), test_memfd() ? 0 : n);
  for (int i = 0; i < n; i++)
    assert_int_equal(ms_shm_destroy(shm[i]), 0);
  assert_int_equal(count("", 1), 0);
  assert_int_equal(rmdir(dir), 0);
}

static const storm_cfg configs[] = {
    {{"ms-", "268435456"}, {"ms-", "268435456"}}, /* the original storm */
    {{"ms-", "268435456"}, {"c-", "0"}},          /* mixed prefixes */
    {{"a-", "0"}, {"bb_", "268435456"}},          /* pool off, mixed */
    {{"bb_", "0"}, {"bb_", "0"}},                 /* pool off everywhere */
};

static void test_kill9_storm_same_prefix_pooled(void **state) {
  (void)state;
  storm(&configs[0]);
}
static void test_kill9_storm_mixed_prefix(void **state) {
  (void)state;
  storm(&configs[1]);
}
static void test_kill9_storm_mixed_prefix_producer_unpooled(void **state) {
  (void)state;
  storm(&configs[2]);
}
static void test_kill9_storm_unpooled(void **state) {
  (void)state;
  storm(&configs[3]);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: test_storm PATH-TO-shm_helper\n");
    return 2;
  }
  helper = argv[1];
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_kill9_storm_same_prefix_pooled),
      cmocka_unit_test(test_kill9_storm_mixed_prefix),
      cmocka_unit_test(test_kill9_storm_mixed_prefix_producer_unpooled),
      cmocka_unit_test(test_kill9_storm_unpooled),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
