/* The model worker and its client with real processes (worker_peer):
 * requests by descriptor and inline, the handshake's choice, batching with
 * 8 client threads (every response matches its own request), the async
 * client, kill -9 of a client and of the worker mid-request, stale and
 * live endpoints, peer-uid refusal (as root), hostile frames and limits,
 * and the drain at stop.  Every test works in a private shared-memory
 * directory and endpoint directory, and checks that a sweep leaves nothing
 * there.  MS_SEED replays the randomized inputs. */
#include "internal/wire.h"
#include "worker_models.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static const char *peer_exe;
static unsigned seed;

/* ------------------------------------------------------------------------ */
/* fixtures                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct fx {
  char shmdir[64];
  char epdir[64];
  char ep[128];
  ms_shm_t *wshm; /* the in-process worker's */
  ms_shm_t *cshm; /* the in-process clients' */
  ms_worker_t *w;
} fx;

static fx F;

static int setup(void **state) {
  (void)state;
  memset(&F, 0, sizeof(F));
  strcpy(F.shmdir, "/dev/shm/ms-wt-XXXXXX");
  strcpy(F.epdir, "/tmp/ms-wep-XXXXXX");
  if (mkdtemp(F.shmdir) == NULL || mkdtemp(F.epdir) == NULL)
    return -1;
  (void)snprintf(F.ep, sizeof(F.ep), "%s/w.sock", F.epdir);
  ms_shm_options_t so = MS_SHM_OPTIONS_INIT;
  so.dir = F.shmdir;
  so.prefix = "tw-";
  if (ms_shm_create(&so, &F.wshm) != 0)
    return -1;
  so.prefix = "tc-";
  return ms_shm_create(&so, &F.cshm) != 0 ? -1 : 0;
}

static size_t dir_entries(const char *path) {
  DIR *d = opendir(path);
  size_t n = 0;
  if (d == NULL)
    return 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, ".."))
      n++;
  closedir(d);
  return n;
}

/* Every object gone: destroy our allocators, sweep with a fresh one, and
 * the directory must be empty. */
static int teardown(void **state) {
  (void)state;
  int bad = 0;
  if (F.w != NULL) {
    bad |= ms_worker_stop(F.w) != 0;
    bad |= ms_worker_destroy(F.w) != 0;
  }
  bad |= ms_shm_destroy(F.wshm) != 0;
  bad |= ms_shm_destroy(F.cshm) != 0;
  ms_shm_options_t so = MS_SHM_OPTIONS_INIT;
  so.dir = F.shmdir;
  so.prefix = "tw-";
  ms_shm_t *s = NULL;
  if (ms_shm_create(&so, &s) == 0) {
    (void)ms_shm_sweep(s, NULL);
    so.prefix = "tc-";
    ms_shm_t *s2 = NULL;
    if (ms_shm_create(&so, &s2) == 0)
      ms_shm_destroy(s2);
    so.prefix = "wp-";
    if (ms_shm_create(&so, &s2) == 0)
      ms_shm_destroy(s2);
    so.prefix = "wc-";
    if (ms_shm_create(&so, &s2) == 0)
      ms_shm_destroy(s2);
    ms_shm_destroy(s);
  }
  size_t left = dir_entries(F.shmdir);
  if (left != 0) {
    fprintf(stderr, "%zu objects left in %s\n", left, F.shmdir);
    bad = 1;
  }
  (void)unlink(F.ep);
  (void)rmdir(F.epdir);
  (void)rmdir(F.shmdir);
  return bad ? -1 : 0;
}

static ms_worker_options_t wopts(void) {
  ms_worker_options_t o = MS_WORKER_OPTIONS_INIT;
  o.endpoint = F.ep;
  return o;
}

static void worker_up(const ms_worker_options_t *o) {
  assert_int_equal(ms_worker_create(o, NULL, F.wshm, &F.w), 0);
  assert_int_equal(wm_add_all(F.w), 0);
  int rc = ms_worker_run(F.w);
  if (rc != 0)
    fprintf(stderr, "run: %s\n", ms_worker_errmsg(F.w));
  assert_int_equal(rc, 0);
}

static ms_client_t *client_up(unsigned flags) {
  ms_client_options_t co = MS_CLIENT_OPTIONS_INIT;
  co.shm = F.cshm;
  co.flags = flags;
  ms_client_t *c = NULL;
  int rc = ms_client_connect(F.ep, &co, &c);
  if (rc != 0)
    fprintf(stderr, "connect: %s\n", ms_client_errmsg(NULL));
  assert_int_equal(rc, 0);
  return c;
}

static double stat_num(ms_worker_t *w, const char *key) {
  char *json = NULL;
  assert_int_equal(ms_worker_stats_json(w, &json), 0);
  cJSON *root = cJSON_Parse(json);
  ms_free(json);
  assert_non_null(root);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
  assert_non_null(v);
  double d = v->valuedouble;
  cJSON_Delete(root);
  return d;
}

static void wait_stat_at_least(ms_worker_t *w, const char *key, double v) {
  while (stat_num(w, key) < v)
    uv_sleep(5);
}

/* An input of n bytes from the seeded generator (r: its state). */
static ms_tensor_t *input(ms_shm_t *shm, size_t n, unsigned *r) {
  ms_tensor_t *t = NULL;
  int64_t shape = (int64_t)n;
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, &shape, NULL, &t),
                   0);
  uint8_t *p = ms_tensor_data(t);
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)(rand_r(r) >> 7);
  return t;
}

/* 1 if out is the model's answer to in. */
static int matches(ms_tensor_t *in, ms_tensor_t **out, size_t n_out) {
  if (n_out != 2 || ms_tensor_nbytes(out[0]) != ms_tensor_nbytes(in) ||
      ms_tensor_dtype(out[1]) != MS_DTYPE_INT64)
    return 0;
  const uint8_t *a = ms_tensor_data(in), *b = ms_tensor_data(out[0]);
  int64_t sum = 0, got;
  for (size_t i = 0; i < ms_tensor_nbytes(in); i++) {
    if (b[i] != wm_f(a[i]))
      return 0;
    sum += a[i];
  }
  memcpy(&got, ms_tensor_data(out[1]), sizeof(got));
  return got == sum;
}

static void release_all(ms_tensor_t **t, size_t n) {
  for (size_t i = 0; i < n; i++)
    ms_tensor_release(t[i]);
}

/* Asks model for its answer to in (outputs released): the call's status,
 * or 999 if the answer is not in's. */
static int infer_checked(ms_client_t *c, const char *model, ms_tensor_t *in,
                         uint64_t timeout_ms) {
  ms_tensor_t *out[2];
  size_t n = 2;
  int rc = ms_client_infer(c, model, &in, 1, timeout_ms, out, &n);
  if (rc == 0) {
    if (!matches(in, out, n))
      rc = 999;
    release_all(out, n);
  }
  return rc;
}

/* ------------------------------------------------------------------------ */
/* processes                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct proc {
  pid_t pid;
  FILE *out;
} proc;

static proc spawn(const char *a1, const char *a2, const char *a3,
                  const char *a4, const char *a5, const char *a6) {
  proc p = {-1, NULL};
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  fflush(NULL);
  p.pid = fork();
  assert_true(p.pid >= 0);
  if (p.pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execl(peer_exe, peer_exe, a1, a2, a3, a4, a5, a6, (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  p.out = fdopen(fds[0], "r");
  return p;
}

static void expect_line(proc *p, const char *want) {
  char line[128] = "";
  assert_non_null(fgets(line, sizeof(line), p->out));
  line[strcspn(line, "\n")] = '\0';
  if (strcmp(line, want) != 0)
    fprintf(stderr, "peer said '%s', expected '%s'\n", line, want);
  assert_string_equal(line, want);
}

static int reap(proc *p) {
  int st = 0;
  assert_int_equal(waitpid(p->pid, &st, 0), p->pid);
  fclose(p->out);
  return st;
}

static proc worker_proc(void) {
  proc p = spawn("worker", F.ep, F.shmdir, NULL, NULL, NULL);
  expect_line(&p, "ready");
  return p;
}

/* ------------------------------------------------------------------------ */
/* requests                                                                  */
/* ------------------------------------------------------------------------ */

/* By descriptor both ways, the error paths of one request, ping, status. */
static void test_basic(void **state) {
  (void)state;
  ms_worker_options_t o = wopts();
  int loads = atomic_load(&wm_loads);
  worker_up(&o);
  assert_int_equal(atomic_load(&wm_loads), loads + 3); /* once per model */
  ms_client_t *c = client_up(0);
  unsigned r = seed;
  ms_tensor_t *in = input(F.cshm, 1000, &r), *out[4];
  size_t n = 4;
  assert_int_equal(ms_client_infer(c, "echo", &in, 1, 10000, out, &n), 0);
  assert_true(matches(in, out, n));
  char d[MS_DESCRIPTOR_MAX];
  assert_int_equal(ms_tensor_descriptor(out[0], d, sizeof(d)), 0); /* shm */
  assert_int_equal(ms_tensor_is_writable(out[0]), 0);
  release_all(out, n);

  /* A heap input travels inline, on the same connection. */
  void *buf = NULL;
  size_t len = 0;
  ms_tensor_t *heap = NULL;
  assert_int_equal(ms_tensor_serialize(in, NULL, NULL, &buf, &len), 0);
  assert_int_equal(ms_tensor_deserialize(NULL, buf, len, &heap), 0);
  ms_free(buf);
  n = 4;
  assert_int_equal(ms_client_infer(c, "echo", &heap, 1, 10000, out, &n), 0);
  assert_true(matches(heap, out, n));
  release_all(out, n);
  ms_tensor_release(heap);

  n = 4;
  assert_int_equal(ms_client_infer(c, "nosuch", &in, 1, 10000, out, &n),
                   MS_ENOENT);
  assert_non_null(strstr(ms_client_errmsg(c), "no such model"));
  assert_int_equal(ms_client_infer(c, "a/b", &in, 1, 10000, out, &n),
                   MS_EINVAL);
  n = 1; /* room for one output, two come */
  assert_int_equal(ms_client_infer(c, "echo", &in, 1, 10000, out, &n),
                   MS_ERANGE);
  n = 4; /* the model's own error: two inputs */
  ms_tensor_t *two[2] = {in, in};
  assert_int_equal(ms_client_infer(c, "echo", two, 2, 10000, out, &n),
                   MS_EINVAL);
  assert_int_equal(ms_client_ping(c, 10000), 0);
  char *json = NULL;
  assert_int_equal(ms_client_status_json(c, 10000, &json), 0);
  cJSON *root = cJSON_Parse(json);
  ms_free(json);
  assert_non_null(root);
  assert_int_equal(
      cJSON_GetObjectItemCaseSensitive(root, "requests")->valuedouble, 5);
  assert_int_equal(
      cJSON_GetObjectItemCaseSensitive(root, "inline")->valuedouble, 0);
  const cJSON *errs = cJSON_GetObjectItemCaseSensitive(root, "errors");
  assert_int_equal(
      cJSON_GetObjectItemCaseSensitive(errs, "MS_ENOENT")->valuedouble, 1);
  cJSON_Delete(root);
  assert_int_equal(atomic_load(&wm_loads), loads + 3);
  ms_tensor_release(in);
  ms_client_close(c);
}

/* Inline tensors: forced by the client, forced by the worker, and chosen
 * by the handshake when the client's shared memory is another namespace. */
static void test_inline(void **state) {
  (void)state;
  ms_worker_options_t o = wopts();
  worker_up(&o);
  char other[64] = "/dev/shm/ms-wt2-XXXXXX";
  assert_non_null(mkdtemp(other));
  ms_shm_options_t so = MS_SHM_OPTIONS_INIT;
  so.dir = other;
  ms_shm_t *oshm = NULL;
  assert_int_equal(ms_shm_create(&so, &oshm), 0);
  unsigned r = seed + 1;
  for (int mode = 0; mode < 2; mode++) {
    ms_client_options_t co = MS_CLIENT_OPTIONS_INIT;
    co.shm = mode == 0 ? F.cshm : oshm;
    co.flags = mode == 0 ? MS_CLIENT_INLINE : 0;
    ms_client_t *c = NULL;
    assert_int_equal(ms_client_connect(F.ep, &co, &c), 0);
    ms_tensor_t *in = input(co.shm, 70000, &r), *out[2];
    size_t n = 2;
    assert_int_equal(ms_client_infer(c, "echo", &in, 1, 10000, out, &n), 0);
    assert_true(matches(in, out, n));
    char d[MS_DESCRIPTOR_MAX];
    assert_int_equal(ms_tensor_descriptor(out[0], d, sizeof(d)), MS_EINVAL);
    assert_int_equal(stat_num(F.w, "inline"), 1);
    release_all(out, n);
    ms_tensor_release(in);
    ms_client_close(c);
    while (stat_num(F.w, "clients") != 0)
      uv_sleep(2);
  }
  assert_int_equal(ms_shm_destroy(oshm), 0);
  assert_int_equal(rmdir(other), 0);
  /* The worker insists on inline. */
  assert_int_equal(ms_worker_stop(F.w), 0);
  assert_int_equal(ms_worker_destroy(F.w), 0);
  o.flags = MS_WORKER_INLINE;
  worker_up(&o);
  ms_client_t *c = client_up(0);
  ms_tensor_t *in = input(F.cshm, 10, &r), *out[2];
  size_t n = 2;
  assert_int_equal(ms_client_infer(c, "echo", &in, 1, 10000, out, &n), 0);
  assert_true(matches(in, out, n));
  assert_int_equal(stat_num(F.w, "inline"), 1);
  release_all(out, n);
  ms_tensor_release(in);
  ms_client_close(c);
}

typedef struct bthread {
  ms_client_t *c;
  unsigned seed;
  int requests;
  int bad;
} bthread;

static void batch_thread(void *arg) {
  bthread *b = arg;
  unsigned r = b->seed;
  for (int i = 0; i < b->requests; i++) {
    ms_tensor_t *in = input(F.cshm, 1 + (size_t)rand_r(&r) % 3000, &r);
    ms_tensor_t *out[2];
    size_t n = 2;
    int rc = ms_client_infer(b->c, "batch", &in, 1, 60000, out, &n);
    if (rc != 0 || !matches(in, out, n))
      b->bad++;
    if (rc == 0)
      release_all(out, n);
    ms_tensor_release(in);
  }
}

/* 8 threads on one connection: every response is its own request's, and
 * requests were batched. */
static void test_batching(void **state) {
  (void)state;
  ms_worker_options_t o = wopts();
  o.max_batch = 8;
  o.max_batch_delay_us = 2000;
  worker_up(&o);
  ms_client_t *c = client_up(0);
  bthread b[8];
  uv_thread_t t[8];
  atomic_store(&wm_batch_calls, 0);
  for (int i = 0; i < 8; i++) {
    b[i] = (bthread){c, seed * 31u + (unsigned)i, 40, 0};
    assert_int_equal(uv_thread_create(&t[i], batch_thread, &b[i]), 0);
  }
  for (int i = 0; i < 8; i++) {
    uv_thread_join(&t[i]);
    if (b[i].bad != 0)
      fprintf(stderr, "thread %d: %d bad answers (seed %u)\n", i, b[i].bad,
              seed);
    assert_int_equal(b[i].bad, 0);
  }
  double mean = stat_num(F.w, "mean_batch");
  fprintf(stderr, "mean batch %.2f over %d infer_batch calls\n", mean,
          atomic_load(&wm_batch_calls));
  assert_true(mean > 1.0);
  assert_true(atomic_load(&wm_batch_calls) < 320);
  ms_client_close(c);
}

typedef struct actx {
  uv_loop_t *loop;
  ms_tensor_t *in[16];
  int done, bad;
} actx;

typedef struct aone {
  actx *a;
  int i;
} aone;

static void async_cb(int status, ms_tensor_t **outputs, size_t n_out,
                     void *user) {
  aone *o = user;
  if (status != 0 || !matches(o->a->in[o->i], outputs, n_out))
    o->a->bad++;
  release_all(outputs, n_out);
  o->a->done++;
}

/* The async client on a libuv loop of the caller's. */
static void test_async(void **state) {
  (void)state;
  ms_worker_options_t o = wopts();
  worker_up(&o);
  ms_client_t *c = client_up(0);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  actx a = {&loop, {0}, 0, 0};
  aone ones[16];
  unsigned r = seed + 7;
  for (int i = 0; i < 16; i++) {
    a.in[i] = input(F.cshm, 100 + (size_t)i * 37, &r);
    ones[i] = (aone){&a, i};
    assert_int_equal(ms_client_infer_async(c, &loop, i % 2 ? "echo" : "batch",
                                           &a.in[i], 1, 30000, async_cb,
                                           &ones[i]),
                     0);
  }
  assert_int_equal(a.done, 0); /* never from inside the call */
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(a.done, 16);
  assert_int_equal(a.bad, 0);
  for (int i = 0; i < 16; i++)
    ms_tensor_release(a.in[i]);
  assert_int_equal(uv_loop_close(&loop), 0);
  ms_client_close(c);
}

typedef struct hctx {
  ms_worker_t *w;
  ms_client_t *c;
  ms_tensor_t *in;
  uv_async_t kick;
  int done, bad, destroy_rc;
} hctx;

static void host_cb(int status, ms_tensor_t **outputs, size_t n_out,
                    void *user) {
  hctx *h = user;
  if (status != 0 || !matches(h->in, outputs, n_out))
    h->bad++;
  release_all(outputs, n_out);
  if (++h->done == 4) {
    /* On the loop thread: stop only begins the drain. */
    assert_int_equal(ms_worker_stop(h->w), 0);
    h->destroy_rc = ms_worker_destroy(h->w);
  }
}

/* The client connects on a thread of its own (the loop must run for the
 * worker to answer), then kicks the loop, which sends the requests. */
static void host_connect(void *arg) {
  hctx *h = arg;
  h->c = client_up(0);
  uv_async_send(&h->kick);
}

static void host_kick(uv_async_t *a) {
  hctx *h = a->data;
  for (int i = 0; i < 4; i++)
    assert_int_equal(ms_client_infer_async(h->c, a->loop, "echo", &h->in, 1,
                                           30000, host_cb, h),
                     0);
  uv_close((uv_handle_t *)a, NULL);
}

/* A worker on the host's loop (ms_worker_start), with an async client on
 * the same loop; stopped from a callback, it is destroyed once the loop
 * has run the drain. */
static void test_host_loop(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ms_worker_options_t o = wopts();
  assert_int_equal(ms_worker_create(&o, NULL, F.wshm, &F.w), 0);
  assert_int_equal(wm_add_all(F.w), 0);
  assert_int_equal(ms_worker_start(F.w, &loop), 0);
  assert_int_equal(ms_worker_start(F.w, &loop), MS_EBUSY);
  unsigned r = seed + 17;
  hctx h = {F.w, NULL, input(F.cshm, 300, &r), {0}, 0, 0, 1};
  h.kick.data = &h;
  assert_int_equal(uv_async_init(&loop, &h.kick, host_kick), 0);
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, host_connect, &h), 0);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  uv_thread_join(&t);
  assert_int_equal(h.done, 4);
  assert_int_equal(h.bad, 0);
  assert_int_equal(h.destroy_rc, MS_EBUSY); /* still draining then */
  assert_int_equal(ms_worker_destroy(F.w), 0);
  F.w = NULL;
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(ms_client_ping(h.c, 10000), MS_EDISCONNECTED);
  ms_tensor_release(h.in);
  ms_client_close(h.c);
}

/* ------------------------------------------------------------------------ */
/* crashes                                                                   */
/* ------------------------------------------------------------------------ */

/* A client killed mid-request: the worker drops or finishes it, releases
 * its outputs, and serves the others; a sweep reclaims the dead client's
 * regions. */
static void test_client_killed(void **state) {
  (void)state;
  ms_worker_options_t o = wopts();
  worker_up(&o);
  proc p = spawn("client", F.ep, F.shmdir, "slow", "30", NULL); /* 300 ms */
  expect_line(&p, "sent");
  wait_stat_at_least(F.w, "requests", 1);
  kill(p.pid, SIGKILL);
  int st = reap(&p);
  assert_true(WIFSIGNALED(st));
  ms_client_t *c = client_up(0);
  unsigned r = seed + 3;
  ms_tensor_t *in = input(F.cshm, 64, &r), *out[2];
  size_t n = 2;
  assert_int_equal(ms_client_infer(c, "echo", &in, 1, 10000, out, &n), 0);
  assert_true(matches(in, out, n));
  release_all(out, n);
  ms_tensor_release(in);
  ms_client_close(c);
  /* The slow request ended and nothing of it is held: only the worker's
   * probe region is active. */
  while (stat_num(F.w, "inflight") != 0)
    uv_sleep(5);
  ms_shm_stats_t ss = MS_SHM_STATS_INIT;
  for (;;) {
    assert_int_equal(ms_shm_stats(F.wshm, &ss), 0);
    if (ss.regions_active <= 1)
      break;
    uv_sleep(5);
  }
  assert_int_equal(ss.regions_active, 1);
  /* The answer may reach the client before the worker's loop handled it
   * (an inference thread writes it): the close is seen a little later. */
  while (stat_num(F.w, "clients") != 0)
    uv_sleep(5);
}

typedef struct kthread {
  ms_client_t *c;
  atomic_int *sent;
  int rc1, rc2;
  uv_sem_t *go;
  ms_tensor_t *in;
} kthread;

static void kill_thread(void *arg) {
  kthread *k = arg;
  ms_tensor_t *out[2];
  size_t n = 2;
  atomic_fetch_add(k->sent, 1);
  k->rc1 = ms_client_infer(k->c, "slow", &k->in, 1, 120000, out, &n);
  if (k->rc1 == 0)
    release_all(out, n);
  uv_sem_wait(k->go); /* the new worker is up */
  k->rc2 = infer_checked(k->c, "echo", k->in, 120000);
}

/* The worker killed mid-request: every in-flight call fails with
 * MS_EDISCONNECTED (not a timeout, not a hang); a new worker on the same
 * endpoint replaces the stale socket; the same client's next calls
 * succeed. */
static void test_worker_killed(void **state) {
  (void)state;
  proc p = worker_proc();
  ms_client_options_t co = MS_CLIENT_OPTIONS_INIT;
  co.shm = F.cshm;
  co.retry_attempts = 50;
  co.retry_backoff_ms = 10;
  co.retry_backoff_max_ms = 100;
  ms_client_t *c = NULL;
  assert_int_equal(ms_client_connect(F.ep, &co, &c), 0);
  atomic_int sent = 0;
  uv_sem_t go;
  assert_int_equal(uv_sem_init(&go, 0), 0);
  kthread k[4];
  uv_thread_t t[4];
  unsigned r = seed + 11;
  for (int i = 0; i < 4; i++) {
    k[i] = (kthread){c, &sent, 1, 1, &go, input(F.cshm, 512, &r)};
    ((uint8_t *)ms_tensor_data(k[i].in))[0] = 250; /* 2.5 s */
    assert_int_equal(uv_thread_create(&t[i], kill_thread, &k[i]), 0);
  }
  while (atomic_load(&sent) < 4)
    uv_sleep(1);
  uv_sleep(300); /* let the requests reach the worker */
  kill(p.pid, SIGKILL);
  assert_true(WIFSIGNALED(reap(&p)));
  p = worker_proc(); /* stale socket file replaced */
  for (int i = 0; i < 4; i++)
    uv_sem_post(&go);
  for (int i = 0; i < 4; i++) {
    uv_thread_join(&t[i]);
    if (k[i].rc1 != MS_EDISCONNECTED)
      fprintf(stderr, "thread %d: first call %s\n", i, ms_err_name(k[i].rc1));
    assert_int_equal(k[i].rc1, MS_EDISCONNECTED);
    assert_int_equal(k[i].rc2, 0);
    ms_tensor_release(k[i].in);
  }
  uv_sem_destroy(&go);
  ms_client_close(c);
  kill(p.pid, SIGTERM);
  int st = reap(&p);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
}

/* Seeded rounds of mixed configurations with real processes: a worker
 * (inline or not, 1-2 threads, max_batch 1-8) and 1-3 client processes
 * (inline or not) sending random requests to the three models, while the
 * round kills the worker (and starts a new one on the same endpoint), or
 * kills a client, or nothing, at a random moment.  Invariants: every answer
 * a client gets is its own request's, every call returns (0 or
 * MS_EDISCONNECTED), the worker serves on and stops cleanly, and after a
 * sweep nothing of any round is left.  MS_WORKER_SECONDS (default 20)
 * bounds the rounds; MS_SEED replays them. */
static void test_random_kills(void **state) {
  (void)state;
  const char *env = getenv("MS_WORKER_SECONDS");
  double secs = env != NULL ? atof(env) : 20.0;
  uint64_t end = uv_hrtime() + (uint64_t)(secs * 1e9);
  size_t baseline = dir_entries(F.shmdir); /* our own allocators' tokens */
  unsigned r = seed;
  int rounds = 0, kills[3] = {0, 0, 0};
  do {
    unsigned rs = (unsigned)rand_r(&r), x = rs;
    char cfg[32], cseed[3][16], inl[3][4];
    (void)snprintf(cfg, sizeof(cfg), "%u:%u:%u", (unsigned)rand_r(&x) % 2,
                   1 + (unsigned)rand_r(&x) % 2, 1 + (unsigned)rand_r(&x) % 8);
    proc w = spawn("worker", F.ep, F.shmdir, cfg, NULL, NULL);
    expect_line(&w, "ready");
    int nc = 1 + rand_r(&x) % 3;
    proc c[3];
    for (int i = 0; i < nc; i++) {
      (void)snprintf(cseed[i], sizeof(cseed[i]), "%u", (unsigned)rand_r(&x));
      (void)snprintf(inl[i], sizeof(inl[i]), "%d", rand_r(&x) % 2);
      c[i] = spawn("loop", F.ep, F.shmdir, inl[i], "30", cseed[i]);
    }
    uv_sleep((unsigned)rand_r(&x) % 300);
    int action = rand_r(&x) % 3;
    kills[action]++;
    if (action == 0) { /* the worker dies; a new one takes over */
      kill(w.pid, SIGKILL);
      (void)reap(&w);
      w = spawn("worker", F.ep, F.shmdir, cfg, NULL, NULL);
      expect_line(&w, "ready");
    } else if (action == 1) {
      kill(c[0].pid, SIGKILL);
    }
    for (int i = 0; i < nc; i++) {
      char line[128] = "";
      int got = fgets(line, sizeof(line), c[i].out) != NULL;
      int st = reap(&c[i]);
      if (action == 1 && i == 0)
        continue; /* killed, or finished before the kill */
      if (!got || strncmp(line, "done ", 5) != 0 || !WIFEXITED(st) ||
          WEXITSTATUS(st) != 0)
        fail_msg("round %d (MS_SEED=%u, round seed %u, worker %s): client "
                 "%d said '%s', status %d",
                 rounds, seed, rs, cfg, i, line, st);
    }
    kill(w.pid, SIGTERM);
    int st = reap(&w);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
      fail_msg("round %d (MS_SEED=%u, round seed %u): worker status %d", rounds,
               seed, rs, st);
    ms_shm_options_t so = MS_SHM_OPTIONS_INIT;
    so.dir = F.shmdir;
    const char *prefixes[] = {"wp-", "wc-"};
    for (int i = 0; i < 2; i++) {
      ms_shm_t *sw = NULL;
      so.prefix = prefixes[i];
      assert_int_equal(ms_shm_create(&so, &sw), 0); /* sweeps */
      assert_int_equal(ms_shm_destroy(sw), 0);
    }
    size_t left = dir_entries(F.shmdir);
    if (left != baseline)
      fail_msg("round %d (MS_SEED=%u, round seed %u): %zu objects left", rounds,
               seed, rs, left - baseline);
    rounds++;
  } while (uv_hrtime() < end);
  fprintf(stderr, "%d rounds: %d worker kills, %d client kills, %d calm\n",
          rounds, kills[0], kills[1], kills[2]);
}

/* ------------------------------------------------------------------------ */
/* endpoints and peers                                                       */
/* ------------------------------------------------------------------------ */

static void make_stale_socket(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_un a;
  memset(&a, 0, sizeof(a));
  a.sun_family = AF_UNIX;
  strcpy(a.sun_path, path);
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  close(fd); /* the file stays, nobody listens */
}

static void test_endpoints(void **state) {
  (void)state;
  ms_worker_options_t o = wopts();
  /* A regular file is never replaced. */
  FILE *f = fopen(F.ep, "w");
  assert_non_null(f);
  fclose(f);
  ms_worker_t *w = NULL;
  assert_int_equal(ms_worker_create(&o, NULL, F.wshm, &w), 0);
  assert_int_equal(ms_worker_run(w), MS_EACCES);
  struct stat st;
  assert_int_equal(lstat(F.ep, &st), 0);
  assert_true(S_ISREG(st.st_mode));
  assert_int_equal(unlink(F.ep), 0);
  /* A stale socket is. */
  make_stale_socket(F.ep);
  assert_int_equal(
      ms_worker_add_model(w, "echo",
                          &(ms_worker_model_t){sizeof(ms_worker_model_t),
                                               "/models/echo", NULL, &wm_loader,
                                               wm_infer, NULL, NULL, NULL}),
      0);
  assert_int_equal(ms_worker_run(w), 0);
  assert_int_equal(lstat(F.ep, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  /* A live one is refused, and keeps serving. */
  ms_worker_t *w2 = NULL;
  assert_int_equal(ms_worker_create(&o, NULL, F.wshm, &w2), 0);
  assert_int_equal(ms_worker_run(w2), MS_EBUSY);
  assert_int_equal(ms_worker_destroy(w2), 0);
  ms_client_t *c = client_up(0);
  assert_int_equal(ms_client_ping(c, 10000), 0);
  ms_client_close(c);
  assert_int_equal(ms_worker_stop(w), 0);
  assert_int_equal(lstat(F.ep, &st), -1); /* removed at stop */
  assert_int_equal(ms_worker_destroy(w), 0);
  /* A directory others may write is refused; a missing one is made 0700. */
  assert_int_equal(chmod(F.epdir, 0777), 0);
  assert_int_equal(ms_worker_create(&o, NULL, F.wshm, &w), 0);
  assert_int_equal(ms_worker_run(w), MS_EACCES);
  assert_int_equal(ms_worker_destroy(w), 0);
  assert_int_equal(chmod(F.epdir, 0700), 0);
  char sub[160], ep2[200];
  (void)snprintf(sub, sizeof(sub), "%s/sub", F.epdir);
  (void)snprintf(ep2, sizeof(ep2), "%s/w.sock", sub);
  o.endpoint = ep2;
  assert_int_equal(ms_worker_create(&o, NULL, F.wshm, &w), 0);
  assert_int_equal(ms_worker_run(w), 0);
  assert_int_equal(lstat(sub, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0700);
  assert_int_equal(ms_worker_stop(w), 0);
  assert_int_equal(ms_worker_destroy(w), 0);
  assert_int_equal(rmdir(sub), 0);
  /* Bad options. */
  o.max_batch = 0;
  assert_int_equal(ms_worker_create(&o, NULL, NULL, &w), MS_EINVAL);
  o = wopts();
  o.struct_size = 8;
  assert_int_equal(ms_worker_create(&o, NULL, NULL, &w), MS_EINVAL);
  assert_int_equal(ms_client_connect(F.ep, NULL, &c), MS_ENOENT);
}

/* Another uid is refused and counted, unless allowed (root only: the
 * child becomes nobody; the socket is opened to it on purpose, so that
 * the uid check itself is what refuses). */
static void test_peer_uid(void **state) {
  (void)state;
  if (geteuid() != 0) {
    fprintf(stderr, "not root: peer-uid test skipped\n");
    skip();
  }
  const uid_t nobody = 65534;
  for (int allow = 0; allow < 2; allow++) {
    ms_worker_options_t o = wopts();
    o.allowed_uid = allow ? (int64_t)nobody : -1;
    worker_up(&o);
    assert_int_equal(chmod(F.epdir, 0711), 0);
    assert_int_equal(chmod(F.ep, 0666), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      if (setgid(nobody) != 0 || setuid(nobody) != 0)
        _exit(100);
      execl(peer_exe, peer_exe, "iclient", F.ep, (char *)NULL);
      _exit(127);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), allow ? 0 : 4);
    assert_int_equal(stat_num(F.w, "refused_uid"), allow ? 0 : 1);
    assert_int_equal(chmod(F.epdir, 0700), 0);
    assert_int_equal(ms_worker_stop(F.w), 0);
    assert_int_equal(ms_worker_destroy(F.w), 0);
    F.w = NULL;
  }
}

/* ------------------------------------------------------------------------ */
/* hostile frames and limits                                                 */
/* ------------------------------------------------------------------------ */

static int raw_connect(void) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_un a;
  memset(&a, 0, sizeof(a));
  a.sun_family = AF_UNIX;
  strcpy(a.sun_path, F.ep);
  assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  return fd;
}

/* Reads until the worker closes the connection (bytes read, or -1). */
static ssize_t read_to_eof(int fd) {
  char buf[4096];
  ssize_t total = 0, n;
  while ((n = read(fd, buf, sizeof(buf))) > 0)
    total += n;
  return n == 0 ? total : -1;
}

static void write_hello(int fd, uint16_t proto) {
  ms__wbuf b;
  ms__wbuf_begin(&b, MS__MSG_HELLO, 0);
  ms__wbuf_u32(&b, MS__WIRE_MAGIC);
  ms__wbuf_u16(&b, proto);
  ms__wbuf_u16(&b, MS__HELLO_INLINE);
  ms__wbuf_u32(&b, ms_version());
  ms__wbuf_u32(&b, 0);
  ms__wbuf_str(&b, "", 0);
  assert_int_equal(ms__wbuf_end(&b, 4096), 0);
  assert_int_equal(write(fd, b.p, b.len), (ssize_t)b.len);
  ms__wbuf_free(&b);
}

static void send_hello(int fd) {
  write_hello(fd, MS__WIRE_PROTO);
  uint8_t hdr[MS__WIRE_HDR];
  assert_int_equal(read(fd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
  assert_int_equal(hdr[4], MS__MSG_WELCOME);
  uint8_t body[512];
  uint32_t len = ms__le32(hdr);
  assert_true(len <= sizeof(body));
  assert_int_equal(read(fd, body, len), (ssize_t)len);
}

typedef struct lim {
  int done, busy, ok;
} lim;

static void lim_cb(int status, ms_tensor_t **outputs, size_t n_out,
                   void *user) {
  lim *l = user;
  l->done++;
  l->busy += status == MS_EBUSY;
  l->ok += status == 0;
  release_all(outputs, n_out);
}

static void test_hostile(void **state) {
  (void)state;
  ms_worker_options_t o = wopts();
  o.max_frame_bytes = 65536;
  o.max_inflight_per_client = 2;
  o.handshake_timeout_ms = 300;
  o.max_clients = 2;
  worker_up(&o);
  ms_client_t *good = client_up(0);
  assert_int_equal(ms_client_ping(good, 10000), 0);
  /* Garbage instead of a handshake. */
  int fd = raw_connect();
  uint8_t junk[16];
  unsigned r = seed + 5;
  for (size_t i = 0; i < sizeof(junk); i++)
    junk[i] = (uint8_t)rand_r(&r);
  junk[4] = 99;
  assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
  assert_int_equal(read_to_eof(fd), 0);
  close(fd);
  /* An oversized frame after a good handshake. */
  fd = raw_connect();
  send_hello(fd);
  uint8_t hdr[MS__WIRE_HDR] = {0};
  hdr[4] = MS__MSG_REQUEST;
  hdr[2] = 0x10; /* 1 MiB body */
  assert_int_equal(write(fd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
  assert_int_equal(read_to_eof(fd), 0);
  close(fd);
  /* A malformed request body. */
  fd = raw_connect();
  send_hello(fd);
  ms__wbuf b;
  ms__wbuf_begin(&b, MS__MSG_REQUEST, 1);
  ms__wbuf_u16(&b, 0);
  ms__wbuf_u16(&b, 1);
  ms__wbuf_str(&b, "echo", 4);
  ms__wbuf_u32(&b, MS__T_INLINE);
  ms__wbuf_u32(&b, 1000); /* more bytes than follow */
  assert_int_equal(ms__wbuf_end(&b, 65536), 0);
  assert_int_equal(write(fd, b.p, b.len), (ssize_t)b.len);
  ms__wbuf_free(&b);
  assert_int_equal(read_to_eof(fd), 0);
  close(fd);
  /* Another protocol version: a BYE that says so, then the close. */
  fd = raw_connect();
  write_hello(fd, MS__WIRE_PROTO + 1);
  uint8_t bye[512];
  ssize_t got = 0, k;
  while ((k = read(fd, bye + got, sizeof(bye) - (size_t)got)) > 0)
    got += k;
  ms__wire_msg m;
  assert_int_equal(ms__wire_decode(bye, (size_t)got, 4096, &m, NULL), 0);
  assert_int_equal(m.type, MS__MSG_BYE);
  assert_int_equal(m.status, MS_ENOTSUP);
  close(fd);
  /* Silence: closed at the handshake deadline. */
  fd = raw_connect();
  assert_int_equal(read_to_eof(fd), 0);
  close(fd);
  assert_true(stat_num(F.w, "protocol_errors") >= 3);
  /* Too many in flight on one connection: the third of three slow
   * requests is refused, the others are served. */
  ms_client_t *c = client_up(0);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ms_tensor_t *in = input(F.cshm, 16, &r);
  ((uint8_t *)ms_tensor_data(in))[0] = 40; /* 400 ms */
  lim l = {0, 0, 0};
  for (int i = 0; i < 3; i++)
    assert_int_equal(
        ms_client_infer_async(c, &loop, "slow", &in, 1, 60000, lim_cb, &l), 0);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(l.done, 3);
  assert_int_equal(l.busy, 1);
  assert_int_equal(l.ok, 2);
  assert_int_equal(uv_loop_close(&loop), 0);
  ms_tensor_release(in);
  /* A third connection is over max_clients: refused and counted. */
  ms_client_options_t co = MS_CLIENT_OPTIONS_INIT;
  co.shm = F.cshm;
  co.retry_attempts = 1;
  ms_client_t *third = NULL;
  double refused = stat_num(F.w, "refused");
  assert_int_equal(ms_client_connect(F.ep, &co, &third), MS_EDISCONNECTED);
  assert_true(stat_num(F.w, "refused") == refused + 1);
  ms_client_close(c);
  /* The good client never noticed. */
  in = input(F.cshm, 100, &r);
  ms_tensor_t *out[2];
  size_t n = 2;
  assert_int_equal(ms_client_infer(good, "echo", &in, 1, 10000, out, &n), 0);
  assert_true(matches(in, out, n));
  release_all(out, n);
  ms_tensor_release(in);
  ms_client_close(good);
}

typedef struct sthread {
  ms_client_t *c;
  ms_tensor_t *in;
  int rc;
  atomic_int started;
} sthread;

static void stop_thread(void *arg) {
  sthread *s = arg;
  atomic_store(&s->started, 1);
  s->rc = infer_checked(s->c, "slow", s->in, 60000);
}

/* ms_worker_stop() lets a request in flight finish; afterwards calls fail
 * with MS_EDISCONNECTED once the retries run out. */
static void test_stop_drains(void **state) {
  (void)state;
  ms_worker_options_t o = wopts();
  worker_up(&o);
  ms_client_options_t co = MS_CLIENT_OPTIONS_INIT;
  co.shm = F.cshm;
  co.retry_attempts = 2;
  co.retry_backoff_ms = 5;
  ms_client_t *c = NULL;
  assert_int_equal(ms_client_connect(F.ep, &co, &c), 0);
  unsigned r = seed + 13;
  sthread s = {c, input(F.cshm, 32, &r), 1, 0};
  ((uint8_t *)ms_tensor_data(s.in))[0] = 30;
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, stop_thread, &s), 0);
  wait_stat_at_least(F.w, "requests", 1);
  assert_int_equal(ms_worker_stop(F.w), 0);
  uv_thread_join(&t);
  assert_int_equal(s.rc, 0);
  assert_int_equal(ms_client_ping(c, 10000), MS_EDISCONNECTED);
  ms_tensor_release(s.in);
  ms_client_close(c);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_worker PATH-TO-worker_peer\n");
    return 2;
  }
  peer_exe = argv[1];
  const char *s = getenv("MS_SEED");
  seed = s != NULL ? (unsigned)strtoul(s, NULL, 10) : (unsigned)time(NULL);
  fprintf(stderr, "test_worker: MS_SEED=%u\n", seed);
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_basic, setup, teardown),
      cmocka_unit_test_setup_teardown(test_inline, setup, teardown),
      cmocka_unit_test_setup_teardown(test_batching, setup, teardown),
      cmocka_unit_test_setup_teardown(test_async, setup, teardown),
      cmocka_unit_test_setup_teardown(test_host_loop, setup, teardown),
      cmocka_unit_test_setup_teardown(test_client_killed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_worker_killed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_random_kills, setup, teardown),
      cmocka_unit_test_setup_teardown(test_endpoints, setup, teardown),
      cmocka_unit_test_setup_teardown(test_peer_uid, setup, teardown),
      cmocka_unit_test_setup_teardown(test_hostile, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stop_drains, setup, teardown),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  if (failed != 0)
    fprintf(stderr, "test_worker: failed with MS_SEED=%u\n", seed);
  return failed;
}
