/* The descriptor channel with real processes (channel_peer, fork/exec):
 * order and delivery to 1, 2 and 4 subscribers, both full-ring policies
 * with their counts, kill -9 of either side at a seeded random point with
 * a sweep after, tensor lifetime, hostile rings, idle CPU, and a libuv
 * loop in a second process.  Each test works in its own directory on
 * /dev/shm and checks that nothing is left in it.
 *
 * MS_CHANNEL_MESSAGES (default 1000000) is the message count of the order
 * tests (each subscriber receives all of them); MS_SEED replays the kill
 * points. */
#define _GNU_SOURCE /* sched_setaffinity */
#include "internal/channel.h"
#include "modelshare.h"

#include <uv.h>

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static const char *peer_exe;
static unsigned seed;

typedef struct proc {
  pid_t pid;
  FILE *out;
} proc;

static proc spawn(const char *role, const char *dir, const char *name,
                  unsigned long long count, unsigned slow) {
  proc p = {-1, NULL};
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  char c[32], s[32];
  (void)snprintf(c, sizeof(c), "%llu", count);
  (void)snprintf(s, sizeof(s), "%u", slow);
  fflush(NULL);
  p.pid = fork();
  assert_true(p.pid >= 0);
  if (p.pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execl(peer_exe, peer_exe, role, dir, name, c, s, (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  p.out = fdopen(fds[0], "r");
  return p;
}

/* The peer's next line; fails the test on EOF. */
static void line_of(proc *p, char *buf, size_t len) {
  if (fgets(buf, (int)len, p->out) == NULL)
    fail_msg("peer %d closed its output", (int)p->pid);
  buf[strcspn(buf, "\n")] = '\0';
}

static void expect_ready(proc *p) {
  char buf[256];
  line_of(p, buf, sizeof(buf));
  if (strcmp(buf, "ready") != 0)
    fail_msg("peer: %s", buf);
}

/* Waits for the peer; returns its exit status (or 128 + signal). */
static int reap(proc *p) {
  int st = 0;
  fclose(p->out);
  assert_int_equal(waitpid(p->pid, &st, 0), p->pid);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char *mkdir_ns(void) {
  char *d = strdup("/dev/shm/mschan-XXXXXX");
  assert_non_null(mkdtemp(d));
  return d;
}

static ms_shm_t *shm_in(const char *dir) {
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.dir = dir;
  o.prefix = "cht-";
  ms_shm_t *shm = NULL;
  assert_int_equal(ms_shm_create(&o, &shm), 0);
  return shm;
}

static int count_entries(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (d != NULL && (e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') {
      print_message("left in %s: %s\n", dir, e->d_name);
      n++;
    }
  if (d != NULL)
    closedir(d);
  return n;
}

/* After everything is closed: one sweep by a fresh allocator (and a
 * reclaim of dead producers' rings), then the directory must be empty. */
static void expect_clean(char *dir) {
  /* Sweeps look at their own prefix: one for ours, one for the peers'. */
  static const char *prefixes[] = {"cht-", "chp-"};
  for (int i = 0; i < 2; i++) {
    ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
    o.dir = dir;
    o.prefix = prefixes[i];
    ms_shm_t *s = NULL;
    assert_int_equal(ms_shm_create(&o, &s), 0); /* its creation sweeps */
    assert_int_equal(ms_channel_reclaim(s, NULL), 0);
    assert_int_equal(ms_shm_sweep(s, NULL), 0);
    assert_int_equal(ms_shm_destroy(s), 0);
  }
  assert_int_equal(count_entries(dir), 0);
  rmdir(dir);
  free(dir);
}

static unsigned long long messages(void) {
  const char *e = getenv("MS_CHANNEL_MESSAGES");
  return e != NULL && strtoull(e, NULL, 10) > 0 ? strtoull(e, NULL, 10)
                                                : 1000000ull;
}

static ms_channel_t *producer(ms_shm_t *shm, const char *name, uint32_t cap,
                              uint32_t policy) {
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  o.capacity = cap;
  o.policy = policy;
  ms_channel_t *ch = NULL;
  int rc = ms_channel_create(shm, name, &o, &ch);
  if (rc != 0)
    fail_msg("create: %s", ms_channel_errmsg(NULL));
  return ch;
}

/* ------------------------------------------------------------------------ */

static void order_with(int nsubs) {
  char *dir = mkdir_ns();
  ms_shm_t *shm = shm_in(dir);
  ms_channel_t *ch = producer(shm, "order", 256, MS_CHANNEL_BLOCK);
  const unsigned long long n = messages();
  proc p[4];
  for (int i = 0; i < nsubs; i++) {
    p[i] = spawn("sub", dir, "order", n, 0);
    expect_ready(&p[i]);
  }
  for (uint64_t i = 0; i < n; i++) {
    int rc = ms_channel_send(ch, &i, sizeof(i), 60000); /* hang detector */
    if (rc != 0)
      fail_msg("send %llu: %s", (unsigned long long)i, ms_channel_errmsg(ch));
  }
  for (int i = 0; i < nsubs; i++) {
    char buf[256];
    unsigned long long got = 0, dropped = 1, last = 0;
    line_of(&p[i], buf, sizeof(buf));
    if (sscanf(buf, "ok %llu %llu %llu", &got, &dropped, &last) != 3)
      fail_msg("subscriber %d: %s", i, buf);
    assert_int_equal(got, n); /* no loss; order checked by the peer */
    assert_int_equal(dropped, 0);
    assert_int_equal(last, n - 1);
    assert_int_equal(reap(&p[i]), 0);
  }
  char *json = NULL;
  assert_int_equal(ms_channel_stats_json(ch, &json), 0);
  print_message("%d subscriber(s), %llu messages: %s\n", nsubs, n, json);
  ms_free(json);
  ms_channel_close(ch);
  assert_int_equal(ms_shm_destroy(shm), 0);
  expect_clean(dir);
}

static void test_order_1(void **state) {
  (void)state;
  order_with(1);
}
static void test_order_2(void **state) {
  (void)state;
  order_with(2);
}
static void test_order_4(void **state) {
  (void)state;
  order_with(4);
}

/* Block policy: a slow subscriber fills the ring; a send with timeout 0
 * then fails (counted as a full wait), waiting sends succeed, and every
 * message arrives. */
static void test_policy_block(void **state) {
  (void)state;
  char *dir = mkdir_ns();
  ms_shm_t *shm = shm_in(dir);
  ms_channel_t *ch = producer(shm, "block", 8, MS_CHANNEL_BLOCK);
  const uint64_t n = 200;
  proc p = spawn("sub", dir, "block", n, 2000);
  expect_ready(&p);
  uint64_t i = 0, timeouts = 0;
  while (i < n) {
    int rc = ms_channel_send(ch, &i, sizeof(i), 0);
    if (rc == MS_ETIMEDOUT) {
      timeouts++;
      rc = ms_channel_send(ch, &i, sizeof(i), 60000);
    }
    assert_int_equal(rc, 0);
    i++;
  }
  assert_true(timeouts > 0); /* the ring did fill */
  char buf[256];
  unsigned long long got = 0, dropped = 1, last = 0;
  line_of(&p, buf, sizeof(buf));
  assert_int_equal(sscanf(buf, "ok %llu %llu %llu", &got, &dropped, &last), 3);
  assert_int_equal(got, n);
  assert_int_equal(dropped, 0);
  assert_int_equal(reap(&p), 0);
  char *json = NULL;
  assert_int_equal(ms_channel_stats_json(ch, &json), 0);
  unsigned long long fw = 0;
  const char *f = strstr(json, "\"full_waits\":");
  assert_non_null(f);
  fw = strtoull(f + 13, NULL, 10);
  assert_true(fw >= timeouts); /* each timed-out and each waiting send */
  ms_free(json);
  ms_channel_close(ch);
  assert_int_equal(ms_shm_destroy(shm), 0);
  expect_clean(dir);
}

/* Drop-oldest: the producer never waits; the slow subscriber gets an
 * increasing subsequence, and received + dropped == sent. */
static void test_policy_drop_oldest(void **state) {
  (void)state;
  char *dir = mkdir_ns();
  ms_shm_t *shm = shm_in(dir);
  ms_channel_t *ch = producer(shm, "drop", 16, MS_CHANNEL_DROP_OLDEST);
  const uint64_t n = 5000;
  proc p = spawn("sub", dir, "drop", 0, 200); /* until MS_EPIPE */
  expect_ready(&p);
  for (uint64_t i = 0; i < n; i++) {
    assert_int_equal(ms_channel_send(ch, &i, sizeof(i), 0), 0);
    if (i % 64 == 0)
      usleep(100);
  }
  ms_channel_close(ch); /* the subscriber drains, then MS_EPIPE */
  char buf[256];
  unsigned long long got = 0, dropped = 0, last = 0;
  line_of(&p, buf, sizeof(buf));
  assert_int_equal(sscanf(buf, "ok %llu %llu %llu", &got, &dropped, &last), 3);
  print_message("drop-oldest: received %llu, dropped %llu of %llu\n", got,
                dropped, (unsigned long long)n);
  assert_true(dropped > 0);
  assert_true(got > 0);
  assert_int_equal(got + dropped, n);
  assert_int_equal(last, n - 1); /* the newest always survives */
  assert_int_equal(reap(&p), 0);
  assert_int_equal(ms_shm_destroy(shm), 0);
  expect_clean(dir);
}

/* Tensor lifetime: the producer releases every tensor right after sending
 * it; the subscriber process still opens each one and finds its bytes. */
static void test_tensor_lifetime(void **state) {
  (void)state;
  char *dir = mkdir_ns();
  ms_shm_t *shm = shm_in(dir);
  ms_channel_t *ch = producer(shm, "tensors", 16, MS_CHANNEL_BLOCK);
  const uint64_t n = 2000;
  proc p = spawn("subt", dir, "tensors", n, 0);
  expect_ready(&p);
  for (uint64_t i = 0; i < n; i++) {
    int64_t shape[1] = {64 + (int64_t)(i % 7) * 100};
    ms_tensor_t *t = NULL;
    assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT64, 1, shape, NULL, &t),
                     0);
    uint64_t *d = ms_tensor_data(t);
    for (int64_t k = 0; k < shape[0]; k++)
      d[k] = i;
    assert_int_equal(ms_channel_send_tensor(ch, t, &i, sizeof(i), 60000), 0);
    ms_tensor_release(t);
  }
  char buf[256];
  unsigned long long got = 0, dropped = 1, last = 0;
  line_of(&p, buf, sizeof(buf));
  if (sscanf(buf, "ok %llu %llu %llu", &got, &dropped, &last) != 3)
    fail_msg("subscriber: %s", buf);
  assert_int_equal(got, n);
  assert_int_equal(reap(&p), 0);
  ms_channel_close(ch); /* releases what it kept */
  assert_int_equal(ms_shm_destroy(shm), 0);
  expect_clean(dir);
}

/* In one process: a raw recv leaves a tensor message in place; ERANGE
 * leaves a message in place; heap tensors and oversize messages are
 * refused; a second producer of the same name is MS_EBUSY. */
static void test_api_edges(void **state) {
  (void)state;
  char *dir = mkdir_ns();
  ms_shm_t *a = shm_in(dir), *b = shm_in(dir);
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  o.capacity = 3;
  ms_channel_t *ch = NULL, *sub = NULL, *dup = NULL;
  assert_int_equal(ms_channel_create(a, "edges", &o, &ch), MS_EINVAL);
  assert_int_equal(ms_channel_create(a, "bad/name", NULL, &ch), MS_EINVAL);
  assert_int_equal(ms_channel_open(b, "edges", NULL, &sub), MS_ENOENT);
  assert_int_equal(ms_channel_create(a, "edges", NULL, &ch), 0);
  assert_int_equal(ms_channel_create(b, "edges", NULL, &dup), MS_EBUSY);
  assert_int_equal(ms_channel_open(b, "edges", NULL, &sub), 0);
  char big[MS_DESCRIPTOR_MAX + 65];
  memset(big, 1, sizeof(big));
  assert_int_equal(ms_channel_send(ch, big, sizeof(big), 0), MS_ERANGE);
  int64_t shape[1] = {4};
  ms_tensor_t *heap = NULL, *t = NULL, *got = NULL;
  assert_int_equal(ms_tensor_alloc(NULL, MS_DTYPE_UINT8, 1, shape, NULL, &heap),
                   MS_EINVAL);
  assert_int_equal(ms_tensor_alloc(a, MS_DTYPE_UINT8, 1, shape, NULL, &t), 0);
  memcpy(ms_tensor_data(t), "abcd", 4);
  assert_int_equal(ms_channel_send_tensor(ch, t, "u", 1, 0), 0);
  ms_tensor_release(t);
  char buf[8];
  size_t n = 0;
  assert_int_equal(ms_channel_recv(sub, buf, sizeof(buf), &n, 0), MS_EINVAL);
  assert_int_equal(
      ms_channel_recv_tensor(sub, 0, 0, &got, buf, sizeof(buf), &n), 0);
  assert_int_equal(n, 1);
  assert_memory_equal(ms_tensor_data(got), "abcd", 4);
  assert_false(ms_tensor_is_writable(got));
  ms_tensor_release(got);
  /* Received and released everywhere but the channel, which holds it
   * until the next send or a flush (C7). */
  ms_shm_stats_t st = MS_SHM_STATS_INIT;
  assert_int_equal(ms_shm_stats(a, &st), 0);
  assert_int_equal(st.regions_active, 1);
  assert_int_equal(ms_channel_flush(ch, 0), 0);
  assert_int_equal(ms_shm_stats(a, &st), 0);
  assert_int_equal(st.regions_active, 0);
  assert_int_equal(ms_channel_send(ch, "hello", 5, 0), 0);
  assert_int_equal(ms_channel_recv(sub, buf, 2, &n, 0), MS_ERANGE);
  assert_int_equal(n, 5);
  assert_int_equal(ms_channel_recv(sub, buf, sizeof(buf), &n, 0), 0);
  assert_memory_equal(buf, "hello", 5);
  assert_int_equal(ms_channel_recv(sub, buf, sizeof(buf), &n, 0), MS_ETIMEDOUT);
  assert_int_equal(ms_channel_flush(ch, 1000), 0);
  ms_channel_close(ch);
  assert_int_equal(ms_channel_recv(sub, buf, sizeof(buf), &n, 1000), MS_EPIPE);
  ms_channel_close(sub);
  assert_int_equal(ms_shm_destroy(a), 0);
  assert_int_equal(ms_shm_destroy(b), 0);
  expect_clean(dir);
}

/* One frame in flight, as a pipeline stage does it: the channel releases
 * frame f at send f + 1, so the producer's pool alternates two regions;
 * the subscriber's open cache keeps both mapped (a pooled FREE region is
 * kept), so opens after the first two are cache hits, not re-mappings. */
static void test_pooled_frames_stay_cached(void **state) {
  (void)state;
  char *dir = mkdir_ns();
  ms_shm_t *a = shm_in(dir), *b = shm_in(dir);
  ms_channel_t *ch = producer(a, "frames", 8, MS_CHANNEL_BLOCK), *sub = NULL;
  assert_int_equal(ms_channel_open(b, "frames", NULL, &sub), 0);
  for (uint64_t f = 0; f < 20; f++) {
    int64_t shape[1] = {1 << 16};
    ms_tensor_t *t = NULL, *got = NULL;
    assert_int_equal(ms_tensor_alloc(a, MS_DTYPE_UINT8, 1, shape, NULL, &t), 0);
    memset(ms_tensor_data(t), (int)f, (size_t)shape[0]);
    assert_int_equal(ms_channel_send_tensor(ch, t, NULL, 0, 1000), 0);
    ms_tensor_release(t);
    size_t n = 0;
    assert_int_equal(ms_channel_recv_tensor(sub, 0, 1000, &got, NULL, 0, &n),
                     0);
    assert_int_equal(((unsigned char *)ms_tensor_data(got))[100], (int)f);
    ms_tensor_release(got);
  }
  ms_shm_stats_t pa = MS_SHM_STATS_INIT, pb = MS_SHM_STATS_INIT;
  assert_int_equal(ms_shm_stats(a, &pa), 0);
  assert_int_equal(ms_shm_stats(b, &pb), 0);
  print_message("pool hits %llu of 20, open cache hits %llu of 20\n",
                (unsigned long long)pa.pool_hits,
                (unsigned long long)pb.open_cache_hits);
  assert_true(pa.pool_hits >= 17);
  assert_true(pb.open_cache_hits >= 17);
  ms_channel_close(sub);
  ms_channel_close(ch);
  assert_int_equal(ms_shm_destroy(a), 0);
  assert_int_equal(ms_shm_destroy(b), 0);
  expect_clean(dir);
}

/* fork(): the child's copies of both ends refuse every call and close
 * without touching the parent's ring; the parent goes on. */
static void test_fork_child(void **state) {
  (void)state;
  char *dir = mkdir_ns();
  ms_shm_t *a = shm_in(dir), *b = shm_in(dir);
  ms_channel_t *ch = producer(a, "forked", 8, MS_CHANNEL_BLOCK), *sub = NULL;
  assert_int_equal(ms_channel_open(b, "forked", NULL, &sub), 0);
  int64_t shape[1] = {16};
  ms_tensor_t *t = NULL;
  assert_int_equal(ms_tensor_alloc(a, MS_DTYPE_UINT8, 1, shape, NULL, &t), 0);
  assert_int_equal(ms_channel_send_tensor(ch, t, NULL, 0, 0), 0);
  ms_tensor_release(t);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    char b8[8];
    size_t n = 0;
    int bad = ms_channel_send(ch, "x", 1, 0) != MS_EINVAL ||
              ms_channel_recv(sub, b8, sizeof(b8), &n, 0) != MS_EINVAL;
    ms_channel_close(sub);
    ms_channel_close(ch);
    _exit(bad);
  }
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  ms_tensor_t *got = NULL;
  size_t n = 0;
  assert_int_equal(ms_channel_recv_tensor(sub, 0, 1000, &got, NULL, 0, &n), 0);
  ms_tensor_release(got);
  assert_int_equal(ms_channel_send(ch, "y", 1, 0), 0);
  char b8[8];
  assert_int_equal(ms_channel_recv(sub, b8, sizeof(b8), &n, 1000), 0);
  ms_channel_close(sub);
  ms_channel_close(ch);
  assert_int_equal(ms_shm_destroy(a), 0);
  assert_int_equal(ms_shm_destroy(b), 0);
  expect_clean(dir);
}

/* kill -9 of a subscriber at a random point: the blocked producer drops
 * it and goes on; the tensors it pinned are released. */
static void test_kill_subscriber(void **state) {
  (void)state;
  for (int round = 0; round < 3; round++) {
    char *dir = mkdir_ns();
    ms_shm_t *shm = shm_in(dir);
    ms_channel_t *ch = producer(shm, "killsub", 16, MS_CHANNEL_BLOCK);
    proc p = spawn("subt", dir, "killsub", 0, 300);
    expect_ready(&p);
    const unsigned at = (unsigned)rand_r(&seed) % 100;
    for (uint64_t i = 0; i < 200; i++) {
      if (i == at) {
        kill(p.pid, SIGKILL);
        assert_int_equal(reap(&p), 128 + SIGKILL);
      }
      int64_t shape[1] = {64};
      ms_tensor_t *t = NULL;
      assert_int_equal(
          ms_tensor_alloc(shm, MS_DTYPE_UINT64, 1, shape, NULL, &t), 0);
      uint64_t *d = ms_tensor_data(t);
      for (int k = 0; k < 64; k++)
        d[k] = i;
      int rc = ms_channel_send_tensor(ch, t, &i, sizeof(i), 30000);
      ms_tensor_release(t);
      if (rc != 0)
        fail_msg("seed %u: send %llu after a kill at %u: %s", seed,
                 (unsigned long long)i, at, ms_err_name(rc));
    }
    size_t dropped = 0;
    assert_int_equal(ms_channel_sweep(ch, &dropped), 0);
    ms_channel_close(ch);
    assert_int_equal(ms_shm_destroy(shm), 0);
    expect_clean(dir);
  }
}

/* kill -9 of the producer at a random point: the subscriber receives what
 * was published, then MS_EPIPE (never a hang); a reclaim and a sweep leave
 * nothing behind. */
static void test_kill_producer(void **state) {
  (void)state;
  for (int round = 0; round < 3; round++) {
    char *dir = mkdir_ns();
    ms_shm_t *shm = shm_in(dir);
    proc p = spawn("prod", dir, "killprod", 0, 0);
    expect_ready(&p);
    ms_channel_t *sub = NULL;
    assert_int_equal(ms_channel_open(shm, "killprod", NULL, &sub), 0);
    const unsigned at = 1 + (unsigned)rand_r(&seed) % 500;
    uint64_t got = 0, last = 0;
    int rc = 0, killed = 0;
    for (;;) {
      ms_tensor_t *t = NULL;
      uint64_t v = 0;
      size_t n = 0;
      rc = ms_channel_recv_tensor(sub, 0, 30000, &t, &v, sizeof(v), &n);
      if (rc == MS_EPIPE)
        break;
      /* A tensor whose producer died may be gone already (C7 needs a
       * live producer): MS_ENOENT is consumed and the stream goes on. */
      if (killed && (rc == MS_ENOENT || rc == MS_ESTALE))
        continue;
      if (rc != 0)
        fail_msg("seed %u round %d: recv: %s", seed, round, ms_err_name(rc));
      assert_true(got == 0 || v > last);
      last = v;
      ms_tensor_release(t);
      if (++got == at) {
        kill(p.pid, SIGKILL);
        killed = 1;
      }
    }
    assert_int_equal(reap(&p), 128 + SIGKILL);
    ms_channel_close(sub);
    size_t rings = 0;
    if (round == 0) { /* a new producer takes over the dead one's name */
      ms_channel_t *again = NULL;
      assert_int_equal(ms_channel_create(shm, "killprod", NULL, &again), 0);
      ms_channel_close(again);
    } else { /* or a reclaim unlinks its ring */
      assert_int_equal(ms_channel_reclaim(shm, &rings), 0);
      assert_int_equal(rings, 1);
    }
    assert_int_equal(ms_shm_destroy(shm), 0);
    expect_clean(dir);
  }
}

/* The names a reclaim may unlink are parsed strictly (C0). */
static void test_stage_names(void **state) {
  (void)state;
  uint64_t tok = 0;
  assert_int_equal(
      ms__ch_stage_parse("msch-a_b-9.0123456789abcdef-0badf00d.new", &tok), 0);
  assert_true(tok == 0x0123456789abcdefull);
  static const char *bad[] = {
      "msch-.0123456789abcdef-0badf00d.new",   /* empty name */
      "msch-a.0123456789ABCDEF-0badf00d.new",  /* upper-case hex */
      "msch-a.0123456789abcde-0badf00d.new",   /* 15 digits */
      "msch-a.0123456789abcdef-0badf00.new",   /* 7 digits */
      "msch-a.0123456789abcdef_0badf00d.new",  /* separator */
      "msch-a.0123456789abcdef-0badf00d.ring", /* suffix */
      "msch-a.0123456789abcdef-0badf00d.newx",
      "msch-a.b.0123456789abcdef-0badf00d.new", /* '.' in the name */
      "msch-a/b.0123456789abcdef-0badf00d.new",
      "mschx-a.0123456789abcdef-0badf00d.new",
      "msch-a.ring",
      "msch-0123456789abcdef0123456789abcdefX.0123456789abcdef-0badf00d.new",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    if (ms__ch_stage_parse(bad[i], &tok) == 0)
      fail_msg("accepted %s", bad[i]);
  assert_int_equal(ms__ch_obj_parse("msch-a.0123456789abcdef-0badf00d.new"),
                   MS_EINVAL);
}

/* Objects of channel `name` in dir that are not a complete ring: what a
 * producer killed inside ms_channel_create() may leave. */
static int half_made(const char *dir, const char *name) {
  char ring[64], pfx[64];
  (void)snprintf(ring, sizeof(ring), "msch-%s.ring", name);
  (void)snprintf(pfx, sizeof(pfx), "msch-%s.", name);
  DIR *d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, pfx, strlen(pfx)) != 0)
      continue;
    if (strcmp(e->d_name, ring) != 0) {
      n++; /* anything else of that name is not a ring */
      continue;
    }
    char path[512];
    (void)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    int fd = open(path, O_RDONLY);
    ms__ch_hdr h;
    memset(&h, 0, sizeof(h));
    ssize_t got = fd >= 0 ? pread(fd, &h, sizeof(h), 0) : -1;
    if (fd >= 0)
      close(fd);
    ms__ch_geom g;
    if (got != (ssize_t)sizeof(h) || atomic_load(&h.ready) != 1 ||
        ms__ch_hdr_validate(&h, sizeof(h) + (1u << 30), &g) != 0)
      n++;
  }
  closedir(d);
  return n;
}

/* kill -9 of a producer inside ms_channel_create(), at a seeded random
 * moment (the peer creates and closes a large ring in a loop, so most
 * kills land in the creation): the next create of that name succeeds, a
 * reclaim unlinks what the dead one left, and nothing stays behind. */
static void test_kill_creating_producer(void **state) {
  (void)state;
  char *dir = mkdir_ns();
  ms_shm_t *shm = shm_in(dir);
  int caught = 0, kills = 0;
  for (; kills < 40 && caught < 4; kills++) {
    proc p = spawn("churn", dir, "churn", 0, 0);
    expect_ready(&p);
    usleep(1000 + (useconds_t)(rand_r(&seed) % 30000));
    kill(p.pid, SIGKILL);
    assert_int_equal(reap(&p), 128 + SIGKILL);
    caught += half_made(dir, "churn") > 0;
    if (kills % 2 == 0) { /* a new producer takes the name over */
      ms_channel_t *ch = NULL;
      int rc = ms_channel_create(shm, "churn", NULL, &ch);
      if (rc != 0)
        fail_msg("seed %u kill %d: create after the kill: %s (%s)", seed, kills,
                 ms_err_name(rc), ms_channel_errmsg(NULL));
      ms_channel_close(ch);
    }
    /* A reclaim unlinks whatever the dead one left. */
    assert_int_equal(ms_channel_reclaim(shm, NULL), 0);
    if (half_made(dir, "churn") != 0)
      fail_msg("seed %u kill %d: a half-made ring survived", seed, kills);
  }
  print_message("%d of %d kills hit a creation\n", caught, kills);
  assert_true(caught > 0); /* the case under test did happen */
  assert_int_equal(ms_shm_destroy(shm), 0);
  expect_clean(dir);
}

/* A kill -9 storm: subscriber processes receive tensors while the
 * producer streams them under the block policy, and are killed at seeded
 * random moments, some while they start and attach; replacements keep
 * coming.  Every send succeeds within its timeout (a dead subscriber does
 * not hold the producer back for long), every survivor receives in order
 * up to the last message (a few are sent once all are attached) and then
 * MS_EPIPE, and after a sweep nothing is left. */
static void test_kill_storm(void **state) {
  (void)state;
  enum { SUBS = 4, MESSAGES = 4000, TAIL = 8 };
  char *dir = mkdir_ns();
  ms_shm_t *shm = shm_in(dir);
  ms_channel_t *ch = producer(shm, "storm", 16, MS_CHANNEL_BLOCK);
  proc subs[SUBS];
  int kills = 0;
  for (int k = 0; k < SUBS; k++) /* their "ready" is read after the storm */
    subs[k] = spawn("subt", dir, "storm", 0, 0);
  for (uint64_t i = 0; i < MESSAGES + TAIL; i++) {
    if (i == MESSAGES) /* the storm is over: everyone attached */
      for (int k = 0; k < SUBS; k++)
        expect_ready(&subs[k]);
    if (i < MESSAGES && rand_r(&seed) % 150 == 0) {
      int k = (int)((unsigned)rand_r(&seed) % SUBS);
      /* Half the time the victim has only just been started. */
      for (int twice = 0; twice < 1 + (rand_r(&seed) & 1); twice++) {
        if (twice)
          usleep((useconds_t)(rand_r(&seed) % 3000));
        kill(subs[k].pid, SIGKILL);
        assert_int_equal(reap(&subs[k]), 128 + SIGKILL);
        kills++;
        subs[k] = spawn("subt", dir, "storm", 0, 0);
      }
    }
    int64_t shape[1] = {64};
    ms_tensor_t *t = NULL;
    assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT64, 1, shape, NULL, &t),
                     0);
    uint64_t *d = ms_tensor_data(t);
    for (int k = 0; k < 64; k++)
      d[k] = i;
    int rc = ms_channel_send_tensor(ch, t, &i, sizeof(i), 30000);
    ms_tensor_release(t);
    if (rc != 0)
      fail_msg("seed %u: send %llu after %d kills: %s", seed,
               (unsigned long long)i, kills, ms_err_name(rc));
  }
  /* Delivered to every live subscriber (close releases the tensors it
   * keeps), dead ones dropped on the way; then the survivors get
   * MS_EPIPE. */
  assert_int_equal(ms_channel_flush(ch, 30000), 0);
  ms_channel_close(ch);
  for (int k = 0; k < SUBS; k++) {
    char buf[256];
    line_of(&subs[k], buf, sizeof(buf));
    unsigned long long got = 0, dropped = 1, last = 0;
    if (sscanf(buf, "ok %llu %llu %llu", &got, &dropped, &last) != 3 ||
        dropped != 0 || last != MESSAGES + TAIL - 1 || got < TAIL)
      fail_msg("seed %u: subscriber %d: %s", seed, k, buf);
    assert_int_equal(reap(&subs[k]), 0);
  }
  print_message("%d kills over %d messages\n", kills, MESSAGES);
  assert_int_equal(ms_shm_destroy(shm), 0);
  expect_clean(dir);
}

/* Forged ring headers: every one is MS_EBADREGION at open. */
static void write_ring(const char *dir, const void *bytes, size_t n) {
  char path[256];
  (void)snprintf(path, sizeof(path), "%s/msch-forged.ring", dir);
  int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, bytes, n), (ssize_t)n);
  close(fd);
}

static void test_forged_headers(void **state) {
  (void)state;
  char *dir = mkdir_ns();
  ms_shm_t *shm = shm_in(dir);
  /* A real ring, copied as the template. */
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  o.capacity = 4;
  o.max_subscribers = 2;
  ms_channel_t *ch = NULL;
  assert_int_equal(ms_channel_create(shm, "tmpl", &o, &ch), 0);
  char path[256];
  (void)snprintf(path, sizeof(path), "%s/msch-tmpl.ring", dir);
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  static unsigned char good[65536];
  size_t size = fread(good, 1, sizeof(good), f);
  fclose(f);
  assert_true(size >= 4096);
  ms_channel_close(ch);

  const struct {
    size_t off;
    uint64_t val;
    int width;
  } bad[] = {
      {0, 0, 8},         {8, 2, 4},           {12, 3, 4},   {12, 0, 4},
      {12, 1u << 21, 4}, {16, 65, 4},         {20, 0, 4},   {20, 1000, 4},
      {24, 0, 4},        {24, 65, 4},         {28, 2, 4},   {32, 0, 8},
      {40, 1, 8},        {48, 1ull << 40, 8}, {48, 300, 8}, {56, 0, 8}};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    unsigned char b[65536];
    memcpy(b, good, size);
    memcpy(b + bad[i].off, &bad[i].val, (size_t)bad[i].width);
    write_ring(dir, b, size);
    ms_channel_t *s = NULL;
    int rc = ms_channel_open(shm, "forged", NULL, &s);
    if (rc != MS_EBADREGION)
      fail_msg("forgery %zu: %s", i, ms_err_name(rc));
  }
  write_ring(dir, good, 100); /* shorter than a header */
  ms_channel_t *s = NULL;
  assert_int_equal(ms_channel_open(shm, "forged", NULL, &s), MS_EBADREGION);

  /* Scribbles after a valid open: a malformed slot, a head that goes
   * back.  Errors, never a crash or a hang. */
  write_ring(dir, good, size);
  /* The template's producer token is ours: alive. */
  assert_int_equal(ms_channel_open(shm, "forged", NULL, &s), 0);
  (void)snprintf(path, sizeof(path), "%s/msch-forged.ring", dir);
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  unsigned char *m =
      mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  assert_true(m != MAP_FAILED);
  close(fd);
  ms__ch_hdr *h = (ms__ch_hdr *)m;
  ms__ch_slot *slot = (ms__ch_slot *)(m + h->slot_offset);
  uint64_t head0 = atomic_load(&h->head);
  slot[0].kind = MS__CH_RAW;
  slot[0].len = 1u << 30; /* past the payload */
  atomic_store(&slot[0].seq, head0 + 1);
  atomic_store(&h->head, head0 + 1);
  char buf[8];
  size_t n = 0;
  assert_int_equal(ms_channel_recv(s, buf, sizeof(buf), &n, 0), MS_EBADREGION);
  slot[0].len = 3; /* repaired: received */
  assert_int_equal(ms_channel_recv(s, buf, sizeof(buf), &n, 0), 0);
  assert_int_equal(n, 3);
  atomic_store(&h->head, head0); /* went back */
  assert_int_equal(ms_channel_recv(s, buf, sizeof(buf), &n, 0), MS_EBADREGION);
  atomic_store(&h->head, head0 + 1000000); /* far ahead: counted as drops */
  int rc = ms_channel_recv(s, buf, sizeof(buf), &n, 0);
  assert_true(rc == MS_EBADREGION || rc == MS_ETIMEDOUT); /* stale slots */
  munmap(m, size);
  ms_channel_close(s);
  unlink(path);
  assert_int_equal(ms_shm_destroy(shm), 0);
  expect_clean(dir);
}

/* A subscriber waiting 1 s with no traffic uses next to no CPU (the
 * precise figure is the bench's; this bound only catches a spinning
 * wait). */
static void test_idle_cpu(void **state) {
  (void)state;
  char *dir = mkdir_ns();
  ms_shm_t *shm = shm_in(dir);
  ms_channel_t *ch = producer(shm, "idle", 16, MS_CHANNEL_BLOCK);
  proc p = spawn("idle", dir, "idle", 0, 0);
  expect_ready(&p);
  char buf[256];
  double cpu = 100;
  int rc = 0;
  line_of(&p, buf, sizeof(buf));
  assert_int_equal(sscanf(buf, "ok %lf %d", &cpu, &rc), 2);
  print_message("idle subscriber: %.2f%% CPU over 1 s\n", cpu);
  assert_int_equal(rc, MS_ETIMEDOUT);
  assert_true(cpu < 20.0);
  assert_int_equal(reap(&p), 0);
  char *json = NULL;
  assert_int_equal(ms_channel_stats_json(ch, &json), 0);
  assert_non_null(strstr(json, "\"wakes\":0"));
  ms_free(json);
  ms_channel_close(ch);
  assert_int_equal(ms_shm_destroy(shm), 0);
  expect_clean(dir);
}

/* A counter of ch's stats JSON. */
static unsigned long long stat_of(ms_channel_t *ch, const char *key) {
  char *json = NULL, k[64];
  assert_int_equal(ms_channel_stats_json(ch, &json), 0);
  (void)snprintf(k, sizeof(k), "\"%s\":", key);
  const char *f = strstr(json, k);
  assert_non_null(f);
  unsigned long long v = strtoull(f + strlen(k), NULL, 10);
  ms_free(json);
  return v;
}

static void pin_to(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  assert_int_equal(sched_setaffinity(0, sizeof(s), &s), 0); /* this thread */
}

typedef struct slow_sender {
  ms_channel_t *ch;
  int cpu, n, failed;
} slow_sender;

static void send_slowly(void *arg) {
  slow_sender *c = arg;
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(c->cpu, &s);
  c->failed = sched_setaffinity(0, sizeof(s), &s) != 0;
  for (uint64_t i = 0; i < (uint64_t)c->n && !c->failed; i++) {
    usleep(300); /* the receiver is waiting for each message */
    c->failed = ms_channel_send(c->ch, &i, sizeof(i), 10000) != 0;
  }
}

/* C10: a receiver with a short spin window on the CPU the producer last
 * sent from does not spin (it would only delay the producer); one on
 * another CPU spins as usual, and so does one with a window of 1 ms or
 * more.  Producer thread and receiver pinned to the same CPU, then to
 * two; then the same CPU with a 2 ms window. */
static void test_spin_only_across_cpus(void **state) {
  (void)state;
  cpu_set_t orig;
  assert_int_equal(sched_getaffinity(0, sizeof(orig), &orig), 0);
  if (!CPU_ISSET(0, &orig) || !CPU_ISSET(1, &orig))
    skip(); /* needs CPUs 0 and 1 */
  char *dir = mkdir_ns();
  ms_shm_t *a = shm_in(dir), *b = shm_in(dir);
  const int n = 60;
  for (int run = 0; run < 3; run++) {
    const int other = run == 1; /* the producer's CPU */
    ms_channel_t *ch = producer(a, "cpus", 16, MS_CHANNEL_BLOCK), *sub = NULL;
    ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
    o.spin_us = run == 2 ? 2000 : 20;
    assert_int_equal(ms_channel_open(b, "cpus", &o, &sub), 0);
    pin_to(0);
    slow_sender c = {ch, other, n, 0};
    uv_thread_t th;
    assert_int_equal(uv_thread_create(&th, send_slowly, &c), 0);
    for (uint64_t i = 0; i < (uint64_t)n; i++) {
      uint64_t v = 0;
      size_t len = 0;
      int rc = ms_channel_recv(sub, &v, sizeof(v), &len, 10000);
      if (rc != 0 || v != i)
        fail_msg("message %llu: %s, got %llu", (unsigned long long)i,
                 ms_err_name(rc), (unsigned long long)v);
    }
    assert_int_equal(uv_thread_join(&th), 0);
    assert_int_equal(sched_setaffinity(0, sizeof(orig), &orig), 0);
    assert_int_equal(c.failed, 0);
    unsigned long long skips = stat_of(sub, "spin_skips");
    print_message("producer on CPU %d, receiver on CPU 0, %u us window: %llu "
                  "of %d waits did not spin\n",
                  other, o.spin_us, skips, n);
    if (run == 0)
      assert_true(skips >= (unsigned long long)n / 2); /* all but a few */
    else
      assert_int_equal(skips, 0);
    ms_channel_close(sub);
    ms_channel_close(ch);
  }
  assert_int_equal(ms_shm_destroy(b), 0);
  assert_int_equal(ms_shm_destroy(a), 0);
  expect_clean(dir);
}

/* A libuv loop in a second process receives through recv_start. */
static void test_uv_loop(void **state) {
  (void)state;
  char *dir = mkdir_ns();
  ms_shm_t *shm = shm_in(dir);
  ms_channel_t *ch = producer(shm, "loop", 64, MS_CHANNEL_BLOCK);
  const uint64_t n = 20000;
  proc p = spawn("uv", dir, "loop", n, 0);
  expect_ready(&p);
  for (uint64_t i = 0; i < n; i++) {
    assert_int_equal(ms_channel_send(ch, &i, sizeof(i), 60000), 0);
    if (i % 1000 == 0)
      usleep(2000); /* let the loop go idle, so the fd path is used */
  }
  char buf[256];
  unsigned long long got = 0;
  line_of(&p, buf, sizeof(buf));
  if (sscanf(buf, "ok %llu", &got) != 1)
    fail_msg("uv subscriber: %s", buf);
  assert_int_equal(got, n);
  assert_int_equal(reap(&p), 0);
  ms_channel_close(ch);
  assert_int_equal(ms_shm_destroy(shm), 0);
  expect_clean(dir);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_channel <channel_peer>\n");
    return 2;
  }
  peer_exe = argv[1];
  const char *s = getenv("MS_SEED");
  seed = s != NULL ? (unsigned)strtoul(s, NULL, 10) : (unsigned)time(NULL);
  printf("test_channel: MS_SEED=%u\n", seed);
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_api_edges),
      cmocka_unit_test(test_stage_names),
      cmocka_unit_test(test_forged_headers),
      cmocka_unit_test(test_order_1),
      cmocka_unit_test(test_order_2),
      cmocka_unit_test(test_order_4),
      cmocka_unit_test(test_policy_block),
      cmocka_unit_test(test_policy_drop_oldest),
      cmocka_unit_test(test_tensor_lifetime),
      cmocka_unit_test(test_pooled_frames_stay_cached),
      cmocka_unit_test(test_fork_child),
      cmocka_unit_test(test_kill_subscriber),
      cmocka_unit_test(test_kill_producer),
      cmocka_unit_test(test_kill_creating_producer),
      cmocka_unit_test(test_kill_storm),
      cmocka_unit_test(test_idle_cpu),
      cmocka_unit_test(test_spin_only_across_cpus),
      cmocka_unit_test(test_uv_loop),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
