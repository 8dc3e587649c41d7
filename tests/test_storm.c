/* Fault storm: producer and consumer processes killed with SIGKILL at
 * random points, hundreds of times.  No consumer may crash or read a torn
 * frame it was handed as complete, and after a sweep not one region may be
 * left behind. */
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

static pid_t spawn(const char *const *args, int in_fd, int out_fd) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(in_fd, 0);
    dup2(out_fd, 1);
    for (int fd = 3; fd < 64; fd++)
      close(fd);
    setenv("ASAN_OPTIONS", "detect_leaks=0", 1); /* killed mid-flight */
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

static void test_kill9_storm(void **state) {
  (void)state;
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
      prod = spawn(prod_args, devnull, lines[1]);
    }
    if (cons < 0)
      cons = spawn(cons_args, lines[0], acks[1]);
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

  print_message("%d iterations, %ld kills, %ld frames verified by consumers, "
                "%d regions and %d tokens left by the dead\n",
                iterations, kills, verified, count(".lock", 0),
                count(".lock", 1));
  assert_int_equal(failures, 0);
  assert_true(verified > 0); /* the storm did exercise hand-offs */

  /* Everyone is dead: one allocator's creation sweeps, one more sweep for
   * good measure, and nothing of theirs is left. */
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.dir = dir;
  ms_shm_t *shm = NULL;
  assert_int_equal(ms_shm_create(&o, &shm), 0);
  assert_int_equal(ms_shm_sweep(shm, NULL), 0);
  assert_int_equal(count(".lock", 0), 0); /* regions */
  assert_int_equal(count(".lock", 1), 1); /* our own token */
  assert_int_equal(ms_shm_destroy(shm), 0);
  assert_int_equal(count("", 1), 0);
  assert_int_equal(rmdir(dir), 0);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: test_storm PATH-TO-shm_helper\n");
    return 2;
  }
  helper = argv[1];
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_kill9_storm)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
