/* One ms_shm_sweep() reclaims everything of the library's that dead
 * processes left in a namespace (DESIGN.md: "after every process exits
 * and one sweep runs, nothing of the library's is left"): tensor regions
 * and tokens, descriptor-channel rings and staging objects, host images
 * (built and held, or half built) with their index entries and locks.
 * Real child processes (fork) hold each of these and are killed with
 * SIGKILL; the allocator that sweeps was created before the kills (so its
 * creation's sweep found nothing), and no specialised sweep is called.
 * Children run on both backends and on two prefixes; a live process's
 * objects of every kind survive the same sweep. */
#include "internal/channel.h"
#include "internal/shm.h"
#include "modelshare.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "shm_test_util.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static char ns_dir[128], src_dir[128], src_path[192];

static ms_shm_t *shm_of(const char *prefix, uint32_t backend) {
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.dir = ns_dir;
  o.prefix = prefix;
  o.backend = backend;
  ms_shm_t *shm = NULL;
  return ms_shm_create(&o, &shm) == 0 ? shm : NULL;
}

static int count_entries(int print) {
  DIR *d = opendir(ns_dir);
  int n = 0;
  struct dirent *e;
  while (d != NULL && (e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') {
      if (print)
        print_message("left in %s: %s\n", ns_dir, e->d_name);
      n++;
    }
  if (d != NULL)
    closedir(d);
  return n;
}

/* ---- children: each does its part, says so on its pipe, then waits to
 * be killed (or, for the live one, for the parent to close the pipe). ---- */

typedef struct child {
  pid_t pid;
  int rd; /* its lines */
  int go; /* parent -> child: one byte per step, EOF to finish */
} child;

static void say(int fd, const char *s) {
  (void)!write(fd, s, strlen(s));
  (void)!write(fd, "\n", 1);
}

static void wait_go(int fd) {
  char c;
  if (read(fd, &c, 1) != 1)
    _exit(0); /* the parent closed: finish (a live child's clean exit) */
}

static int build_one(ms_image_builder_t *b, const char *path, const char *cfg,
                     void *user) {
  (void)path, (void)cfg;
  int64_t shape[1] = {4096};
  void *data = NULL;
  int rc = ms_image_builder_add(b, "w", MS_DTYPE_FLOAT32, shape, 1, &data);
  if (rc != 0)
    return rc;
  memset(data, 0x3c, 4096 * 4);
  int *out = user;
  if (*out >= 0) { /* the half-built image: stop here until killed */
    say(*out, "building");
    for (;;)
      pause();
  }
  return 0;
}

static int image_of(ms_shm_t *shm, const char *version, int report_fd,
                    ms_image_t **img) {
  ms_key_t *key = NULL;
  int rc = ms_key_create(src_path, "{}", &key);
  if (rc != 0)
    return rc;
  ms_image_options_t o = MS_IMAGE_OPTIONS_INIT;
  o.transform_id = "sweep-all";
  o.transform_version = version;
  o.build = build_one;
  o.user = &report_fd;
  o.timeout_ms = 20000;
  rc = ms_image_acquire(shm, key, &o, img);
  ms_key_destroy(key);
  return rc;
}

enum role { PRODUCER, SUBSCRIBER, IMAGE, HALF_IMAGE, STAGER };

static void child_main(enum role role, const char *prefix, uint32_t backend,
                       const char *tag, int wr, int go) {
  ms_shm_t *shm = shm_of(prefix, backend);
  if (shm == NULL) {
    say(wr, "no allocator");
    _exit(1);
  }
  char ring[32];
  (void)snprintf(ring, sizeof(ring), "ring%s", tag);
  if (role == PRODUCER) {
    ms_channel_t *ch = NULL;
    if (ms_channel_create(shm, ring, NULL, &ch) != 0)
      _exit(2);
    say(wr, "ready");
    wait_go(go); /* the subscriber is attached */
    int64_t shape[1] = {1 << 16};
    ms_tensor_t *t = NULL;
    if (ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &t) != 0 ||
        ms_channel_send_tensor(ch, t, "x", 1, 10000) != 0)
      _exit(3);
    say(wr, "sent"); /* t and the ring's reference held until killed */
  } else if (role == SUBSCRIBER) {
    ms_channel_t *ch = NULL;
    if (ms_channel_open(shm, ring, NULL, &ch) != 0)
      _exit(2);
    say(wr, "ready");
    ms_tensor_t *t = NULL;
    char user[64];
    size_t n = 0;
    if (ms_channel_recv_tensor(ch, 0, 10000, &t, user, sizeof(user), &n) != 0)
      _exit(3);
    say(wr, "held");
  } else if (role == STAGER) {
    /* What a producer killed inside ms_channel_create() leaves between
     * building the ring and linking it (C0): its staging object, created
     * exactly as channel.c creates it. */
    char stage[MS__CH_STAGE_MAX + 1];
    (void)snprintf(stage, sizeof(stage),
                   MS__CH_PREFIX "stage%s.%016llx-0badf00d" MS__CH_STAGE_SUFFIX,
                   tag, (unsigned long long)shm->token);
    ms__region r = {0};
    if (ms__region_create(shm->ns, stage, 1u << 16, &r) != 0)
      _exit(2);
    say(wr, "staged");
  } else {
    ms_image_t *img = NULL;
    int rc = image_of(shm, tag, role == HALF_IMAGE ? wr : -1, &img);
    if (rc != 0)
      _exit(3);
    say(wr, "held");
  }
  wait_go(go);
  _exit(0);
}

static child spawn(enum role role, const char *prefix, uint32_t backend,
                   const char *tag) {
  int out[2], in[2];
  assert_int_equal(pipe(out), 0);
  assert_int_equal(pipe(in), 0);
  fflush(NULL);
  child c = {fork(), out[0], in[1]};
  assert_true(c.pid >= 0);
  if (c.pid == 0) {
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed test strands none */
    /* Only its own pipes: the others' ends would keep them from EOF. */
    for (int fd = 3; fd < 1024; fd++)
      if (fd != out[1] && fd != in[0])
        (void)close(fd);
    child_main(role, prefix, backend, tag, out[1], in[0]);
  }
  close(out[1]);
  close(in[0]);
  return c;
}

static void expect_line(child *c, const char *want) {
  char buf[64];
  size_t n = 0;
  while (n + 1 < sizeof(buf) && read(c->rd, buf + n, 1) == 1 && buf[n] != '\n')
    n++;
  buf[n] = '\0';
  if (strcmp(buf, want) != 0)
    fail_msg("child %d said \"%s\", expected \"%s\"", (int)c->pid, buf, want);
}

static void go(child *c) { assert_int_equal(write(c->go, "g", 1), 1); }

static int reap(child *c, int sig) {
  if (sig != 0)
    kill(c->pid, sig);
  close(c->go);
  close(c->rd);
  int st = 0;
  assert_int_equal(waitpid(c->pid, &st, 0), c->pid);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Starts a full set of holders (ring + subscriber with a tensor, a staging
 * object, a held image, a half-built image) tagged `tag`; c[5]. */
static void start_set(child *c, uint32_t backend, const char *tag) {
  c[0] = spawn(PRODUCER, "sw-", backend, tag);
  expect_line(&c[0], "ready");
  c[1] = spawn(SUBSCRIBER, "sw-", backend, tag);
  expect_line(&c[1], "ready");
  go(&c[0]);
  expect_line(&c[0], "sent");
  expect_line(&c[1], "held");
  c[2] = spawn(STAGER, "sw-", backend, tag);
  expect_line(&c[2], "staged");
  c[3] = spawn(IMAGE, "sx_", backend, tag);
  expect_line(&c[3], "held");
  char half[16];
  (void)snprintf(half, sizeof(half), "%sh", tag);
  c[4] = spawn(HALF_IMAGE, "sx_", backend, half);
  expect_line(&c[4], "building");
}

static void leftovers(uint32_t backend) {
  ms_shm_t *shm = shm_of("sw-", MS_SHM_BACKEND_NAMED); /* before the kills */
  assert_non_null(shm);
  child dead[5], live[5];
  start_set(dead, backend, "d");
  start_set(live, backend, "l");
  int before = count_entries(0);
  for (int i = 0; i < 5; i++)
    assert_int_equal(reap(&dead[i], SIGKILL), 128 + SIGKILL);
  assert_true(count_entries(0) > 0);

  /* ONE sweep: the dead set goes, the live set stays whole. */
  size_t n = 0;
  assert_int_equal(ms_shm_sweep(shm, &n), 0);
  print_message("backend %u: %d objects with both sets, %d after the "
                "sweep, which reports %zu reclaimed\n",
                backend, before, count_entries(0), n);
  assert_true(n > 0);
  /* The live producer still serves its subscriber; its image opens. */
  ms_channel_t *sub = NULL;
  assert_int_equal(ms_channel_open(shm, "ringl", NULL, &sub), 0);
  ms_channel_close(sub);
  ms_image_t *img = NULL;
  assert_int_equal(image_of(shm, "l", -1, &img), 0);
  assert_false(ms_image_built_here(img)); /* the live holder's, not rebuilt */
  ms_image_release(img);

  /* Then the live set exits (the half build is killed: it never ends) and
   * one more sweep leaves nothing either. */
  for (int i = 0; i < 5; i++)
    if (i == 4)
      assert_int_equal(reap(&live[i], SIGKILL), 128 + SIGKILL);
    else
      assert_int_equal(reap(&live[i], 0), 0);
  assert_int_equal(ms_shm_sweep(shm, NULL), 0);
  assert_int_equal(ms_shm_destroy(shm), 0);
  assert_int_equal(count_entries(1), 0);
}

static void test_named(void **state) {
  (void)state;
  leftovers(MS_SHM_BACKEND_NAMED);
}

static void test_memfd(void **state) {
  (void)state;
  leftovers(MS_SHM_BACKEND_MEMFD);
}

static int setup(void **state) {
  (void)state;
  (void)snprintf(ns_dir, sizeof(ns_dir), "/dev/shm/mssweep-XXXXXX");
  (void)snprintf(src_dir, sizeof(src_dir), "/tmp/mssweep-src-XXXXXX");
  if (mkdtemp(ns_dir) == NULL || mkdtemp(src_dir) == NULL)
    return -1;
  (void)snprintf(src_path, sizeof(src_path), "%s/weights.bin", src_dir);
  return write_text(src_path, "weights\n");
}

static int teardown(void **state) {
  (void)state;
  /* Whatever a failed test left: removed, so /dev/shm stays clean. */
  (void)remove_prefix(ns_dir, NULL);
  (void)rmdir(ns_dir);
  (void)unlink(src_path);
  (void)rmdir(src_dir);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_memfd, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
