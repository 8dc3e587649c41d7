/* fork(): a child's inherited allocator and tensors have no cross-process
 * effect (internal/shm.h, I8), and the child never keeps its parent's
 * liveness token alive. */
#define _GNU_SOURCE
#include "test_util.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[64];

static ms_shm_t *new_shm(const char *prefix) {
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.dir = dir;
  o.prefix = prefix;
  ms_shm_t *s = NULL;
  assert_int_equal(ms_shm_create(&o, &s), 0);
  return s;
}

static int wait_child(pid_t pid) {
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static ms_shm_t *inherited;
static void tidy(void) { (void)ms_shm_destroy(inherited); }

/* The child tidies up what it inherited, in every way a program might. */
static int child_tidies(ms_shm_t *shm, ms_tensor_t *t) {
  ms_tensor_t *u = NULL;
  int64_t shape[1] = {16};
  if (ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &u) != MS_EINVAL ||
      ms_shm_sweep(shm, NULL) != MS_EINVAL)
    return 1;
  char desc[MS_DESCRIPTOR_MAX];
  if (ms_tensor_descriptor(t, desc, sizeof(desc)) != 0 ||
      ms_tensor_open(shm, desc, 0, &u) != MS_EINVAL)
    return 2;
  if (((unsigned char *)ms_tensor_data(t))[0] != 0x77)
    return 3;           /* the inherited mapping reads the parent's bytes */
  ms_tensor_release(t); /* only the child's handle */
  if (ms_shm_destroy(shm) != 0)
    return 4;
  /* Its own allocator works normally. */
  ms_shm_t *mine = new_shm("fkc-");
  if (ms_tensor_alloc(mine, MS_DTYPE_UINT8, 1, shape, NULL, &u) != 0)
    return 5;
  ms_tensor_release(u);
  return ms_shm_destroy(mine) == 0 ? 0 : 6;
}

static void test_child_tidies_inherited(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm("fkp-");
  int64_t shape[1] = {4096};
  ms_tensor_t *t = NULL, *u = NULL;
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &t), 0);
  memset(ms_tensor_data(t), 0x77, 4096);
  char desc[MS_DESCRIPTOR_MAX];
  assert_int_equal(ms_tensor_descriptor(t, desc, sizeof(desc)), 0);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0)
    _exit(child_tidies(shm, t));
  assert_int_equal(wait_child(pid), 0);
  /* A child that destroys in atexit, as a careless program does. */
  inherited = shm;
  pid = fork();
  if (pid == 0) {
    atexit(tidy);
    exit(0);
  }
  assert_int_equal(wait_child(pid), 0);
  /* The parent's state is intact: a sweep by another allocator reclaims
   * nothing, its tensor still opens and reads, its slot is still held. */
  ms_shm_t *other = new_shm("fkp-");
  size_t n = 99;
  assert_int_equal(ms_shm_sweep(other, &n), 0);
  assert_int_equal(n, 0);
  assert_int_equal(ms_tensor_open(other, desc, 0, &u), 0);
  assert_int_equal(((unsigned char *)ms_tensor_data(u))[4095], 0x77);
  ms_tensor_release(u);
  assert_int_equal(ms_tensor_open(other, desc, 0, &u), 0);
  ms_tensor_release(u);
  ms_tensor_release(t);
  /* Released by everyone: the descriptor no longer opens. */
  int rc = ms_tensor_open(other, desc, 0, &u);
  assert_true(rc == MS_ENOENT || rc == MS_ESTALE);
  assert_int_equal(ms_shm_destroy(other), 0);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static int entries(void) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;
  while (d != NULL && (e = readdir(d)) != NULL)
    n += e->d_name[0] != '.';
  if (d != NULL)
    closedir(d);
  return n;
}

/* The role of the dying parent: an allocator with one tensor, then a forked
 * child that lives on holding whatever it inherited.  Runs in a freshly
 * exec'd process: ThreadSanitizer skips pthread_atfork handlers in a
 * process that was itself forked, which is not what this tests. */
static int parent_role(int ready_fd) {
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.dir = dir;
  o.prefix = "fkd-";
  ms_shm_t *shm = NULL;
  int64_t shape[1] = {4096};
  ms_tensor_t *t = NULL;
  if (ms_shm_create(&o, &shm) != 0 ||
      ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &t) != 0)
    return 1;
  fflush(NULL);
  if (fork() == 0) {
    /* fork() has returned here, so its handlers have run: say so, then
     * live on holding whatever was inherited. */
    pid_t self = getpid();
    if (write(ready_fd, &self, sizeof(self)) != sizeof(self))
      _exit(1);
    pause();
    _exit(0);
  }
  pause();
  return 0;
}

/* The parent dies while its forked child lives on: its regions must be
 * reclaimable, so the child must not hold the parent's token. */
static const char *self_exe;

static void test_child_does_not_keep_parent_alive(void **state) {
  (void)state;
  int ready[2];
  assert_int_equal(pipe(ready), 0);
  fflush(NULL);
  pid_t parent = fork();
  assert_true(parent >= 0);
  if (parent == 0) {
    char fd[16];
    (void)snprintf(fd, sizeof(fd), "%d", ready[1]);
    execl(self_exe, self_exe, "--parent", fd, dir, (char *)NULL);
    _exit(127);
  }
  pid_t grandchild = 0;
  assert_int_equal(read(ready[0], &grandchild, sizeof(grandchild)),
                   sizeof(grandchild));
  assert_int_equal(entries(), 2); /* the region and the token */
  kill(parent, SIGKILL);
  assert_int_equal(wait_child(parent), 128 + SIGKILL);
  /* The grandchild still lives; creating an allocator sweeps: the dead
   * parent's region and token go, and only the new token remains. */
  ms_shm_t *sweeper = new_shm("fkd-");
  int left = entries();
  kill(grandchild, SIGKILL);
  assert_int_equal(ms_shm_destroy(sweeper), 0);
  assert_int_equal(left, 1);
  assert_int_equal(entries(), 0);
  close(ready[0]);
  close(ready[1]);
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "--parent") == 0) {
    (void)snprintf(dir, sizeof(dir), "%s", argv[3]);
    return parent_role(atoi(argv[2]));
  }
  self_exe = argv[0];
  (void)snprintf(dir, sizeof(dir), "/dev/shm/ms-fork-XXXXXX");
  if (mkdtemp(dir) == NULL)
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_child_tidies_inherited),
      cmocka_unit_test(test_child_does_not_keep_parent_alive),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  if (entries() != 0) {
    fprintf(stderr, "objects left in %s\n", dir);
    failed++;
  }
  (void)rmdir(dir);
  return failed;
}
