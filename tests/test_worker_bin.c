/* The modelshare-worker program: its command line, its one-line errors and
 * exit statuses (bad plugin, bad model, busy endpoint, bad config), and
 * its life cycle (serve, drain on SIGTERM/SIGINT, exit 0, replace a dead
 * worker's endpoint).  Every case runs the real program in its own process
 * and checks its exit status and what it wrote.
 *
 * usage: test_worker_bin WORKER ECHO_PLUGIN REFUSING_PLUGIN NOENTRY_PLUGIN */
#include "test_worker_bin_proc.h"

#include <sys/stat.h>

static const char *worker_bin, *echo_plugin, *refusing_plugin, *noentry_plugin;

typedef struct fixture {
  char dir[64];
  char endpoint[128];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  wp_mkdtemp(f->dir, sizeof(f->dir));
  /* A directory the worker creates (0700) under the scratch one. */
  (void)snprintf(f->endpoint, sizeof(f->endpoint), "%s/ep/worker.sock", f->dir);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  wp_rmtree(f->dir);
  free(f);
  return 0;
}

/* Runs the program with args (after argv[0]) to completion: its status. */
static int run(fixture *f, wp *p, const char *const *args) {
  char *argv[32] = {(char *)worker_bin};
  for (int i = 0; args[i] != NULL && i < 30; i++)
    argv[i + 1] = (char *)args[i];
  *p = wp_start(f->dir, "run", argv);
  return wp_wait(p, 0);
}

/* Starts a worker on f->endpoint with the echo plugin and config. */
static wp start_echo(fixture *f, const char *tag, const char *config) {
  char *argv[] = {(char *)worker_bin,
                  "--endpoint",
                  f->endpoint,
                  "--plugin",
                  (char *)echo_plugin,
                  "--model",
                  f->dir,
                  "--name",
                  "echo",
                  "--config",
                  (char *)config,
                  NULL};
  return wp_start(f->dir, tag, argv);
}

/* One echo request of n bytes through c: asserts the reply is the input. */
static void echo_once(ms_client_t *c, ms_shm_t *shm, unsigned char seed) {
  const int64_t shape[1] = {1024};
  ms_tensor_t *in = NULL, *out[2] = {NULL, NULL};
  size_t n_out = 2;
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &in),
                   0);
  unsigned char *b = ms_tensor_data(in);
  for (int i = 0; i < 1024; i++)
    b[i] = (unsigned char)(seed + i * 31);
  int rc = ms_client_infer(c, "echo", &in, 1, 60000, out, &n_out);
  if (rc != 0)
    fail_msg("echo: %s (%s)", ms_err_name(rc), ms_client_errmsg(c));
  assert_int_equal(n_out, 1);
  assert_int_equal(ms_tensor_nbytes(out[0]), 1024);
  assert_memory_equal(ms_tensor_data(out[0]), b, 1024);
  ms_tensor_release(out[0]);
  ms_tensor_release(in);
}

static ms_shm_t *new_shm(void) {
  ms_shm_t *shm = NULL;
  assert_int_equal(ms_shm_create(NULL, &shm), 0);
  return shm;
}

/* ------------------------------------------------------------------------ */

static void test_help(void **state) {
  fixture *f = *state;
  wp p;
  const char *args[] = {"--help", NULL};
  assert_int_equal(run(f, &p, args), 0);
  assert_contains(wp_stdout(&p), "usage: modelshare-worker --endpoint PATH");
  assert_contains(wp_stdout(&p), "--max-delay-us");
  assert_string_equal(wp_stderr(&p), "");
}

static void test_bad_command_lines(void **state) {
  fixture *f = *state;
  static const struct {
    const char *args[12];
    const char *says;
  } cases[] = {
      {{NULL}, "--endpoint is required"},
      {{"--endpoint", "/tmp/x", "--plugin", "p.so", NULL},
       "--model is required"},
      {{"--frobnicate", NULL}, "unknown argument '--frobnicate'"},
      {{"--endpoint", NULL}, "--endpoint needs a value"},
      {{"--endpoint", "e", "--plugin", "p", "--model", "m", "--max-batch", "0",
        NULL},
       "--max-batch wants a whole number from 1 to"},
      {{"--endpoint", "e", "--plugin", "p", "--model", "m", "--threads", "2x",
        NULL},
       "--threads wants a whole number"},
      {{"--endpoint", "e", "--plugin", "p", "--model", "m", "--max-delay-us",
        "-5", NULL},
       "--max-delay-us wants a whole number"},
      {{"--endpoint", "e", "--plugin", "p", "--model", "/", NULL},
       "give one with --name"},
      {{"--endpoint", "e", "--plugin", "p", "--model", "m", "--name", "a/b",
        NULL},
       "bad --name 'a/b'"},
      {{"--endpoint", "e", "--plugin", "p", "--model", "", NULL},
       "bad --model: "},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    wp p;
    int st = run(f, &p, cases[i].args);
    if (st != 2)
      fail_msg("case %zu: status %d, stderr:\n%s", i, st, wp_stderr(&p));
    assert_contains(wp_stderr(&p), "modelshare-worker: ");
    assert_contains(wp_stderr(&p), cases[i].says);
  }
}

/* A malformed config is refused before anything is loaded or created. */
static void test_bad_config(void **state) {
  fixture *f = *state;
  wp p;
  const char *args[] = {"--endpoint", f->endpoint,  "--plugin",
                        echo_plugin,  "--model",    f->dir,
                        "--config",   "{\"a\":1,}", NULL};
  assert_int_equal(run(f, &p, args), 2);
  assert_contains(wp_stderr(&p), "modelshare-worker: bad --config: ");
  assert_contains(wp_stderr(&p), "at byte 7"); /* where it went wrong */
  struct stat st;
  assert_int_not_equal(stat(f->endpoint, &st), 0); /* nothing half-done */
}

static void test_bad_plugins(void **state) {
  fixture *f = *state;
  char missing[128];
  (void)snprintf(missing, sizeof(missing), "%s/no-such-plugin.so", f->dir);
  const struct {
    const char *plugin, *config, *says, *also;
  } cases[] = {
      {missing, "{}", "cannot load plugin ", "no-such-plugin.so"},
      {noentry_plugin, "{}", "does not export ms_worker_plugin_v1", "plugin"},
      {refusing_plugin, "{}", "ms_worker_plugin_v1 returned MS_ENOTSUP",
       "failed"},
      /* The plugin is fine, its loader fails: said before listening. */
      {echo_plugin, "{\"fail\":true}", "cannot load model ", "MS_ELOAD"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    wp p;
    const char *args[] = {"--endpoint",    f->endpoint,     "--plugin",
                          cases[i].plugin, "--model",       f->dir,
                          "--config",      cases[i].config, NULL};
    int st = run(f, &p, args);
    if (st != 1)
      fail_msg("case %zu: status %d, stderr:\n%s", i, st, wp_stderr(&p));
    assert_contains(wp_stderr(&p), cases[i].says);
    assert_contains(wp_stderr(&p), cases[i].also);
    struct stat sb;
    assert_int_not_equal(stat(f->endpoint, &sb), 0); /* never listened */
  }
  /* A model path the loader cannot find. */
  wp p;
  char nomodel[128];
  (void)snprintf(nomodel, sizeof(nomodel), "%s/no-such-model", f->dir);
  const char *args[] = {"--endpoint", f->endpoint, "--plugin", echo_plugin,
                        "--model",    nomodel,     NULL};
  assert_int_equal(run(f, &p, args), 1);
  assert_contains(wp_stderr(&p), "cannot load model ");
  assert_contains(wp_stderr(&p), "MS_ENOENT");
}

/* Serves; a second worker on the same endpoint is refused and the first
 * keeps serving; SIGTERM drains and exits 0, removing the socket. */
static void test_busy_endpoint_and_sigterm(void **state) {
  fixture *f = *state;
  ms_shm_t *shm = new_shm();
  wp a = start_echo(f, "a", "{}");
  ms_client_t *c = wp_connect(f->endpoint, &a);
  echo_once(c, shm, 1);

  wp b = start_echo(f, "b", "{}");
  int st = wp_wait(&b, 0);
  if (st != 1)
    fail_msg("second worker: status %d, stderr:\n%s", st, wp_stderr(&b));
  assert_contains(wp_stderr(&b), "endpoint ");
  assert_contains(wp_stderr(&b), "is in use by a live worker");

  echo_once(c, shm, 2); /* not stolen: the first one still answers */
  ms_client_close(c);
  wp_expect(&a, SIGTERM, 0);
  assert_contains(wp_stderr(&a), "serving model 'echo'");
  assert_contains(wp_stderr(&a), "SIGTERM");
  assert_contains(wp_stderr(&a), "stopped: 2 requests served, model loaded "
                                 "1 time(s)");
  struct stat sb;
  assert_int_not_equal(stat(f->endpoint, &sb), 0);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

typedef struct slow_call {
  ms_client_t *c;
  ms_tensor_t *in, *out[1]; /* released by the test, once c is closed */
  size_t n_out;
  int rc;
} slow_call;

static void slow_request(void *arg) {
  slow_call *s = arg;
  s->n_out = 1;
  s->rc = ms_client_infer(s->c, "echo", &s->in, 1, 60000, s->out, &s->n_out);
}

/* SIGINT while a request is being served: it completes, then exit 0. */
static void test_sigint_drains(void **state) {
  fixture *f = *state;
  ms_shm_t *shm = new_shm();
  /* Each call costs 1 s: long enough to be caught in flight. */
  wp w = start_echo(f, "w", "{\"fixed_us\":1000000}");
  ms_client_t *c = wp_connect(f->endpoint, &w);
  ms_client_t *probe = wp_connect(f->endpoint, &w);
  const int64_t shape[1] = {64};
  slow_call s = {c, NULL, {NULL}, 0, -1};
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &s.in),
                   0);
  memset(ms_tensor_data(s.in), 0x5a, 64);
  uv_thread_t th;
  assert_int_equal(uv_thread_create(&th, slow_request, &s), 0);
  for (int i = 0; i < WP_WAIT_S * 100 && (int)wp_stat(probe, "inflight") == 0;
       i++)
    usleep(10000);
  assert_int_equal((int)wp_stat(probe, "inflight"), 1);
  assert_int_equal(kill(w.pid, SIGINT), 0);
  uv_thread_join(&th);
  if (s.rc != 0)
    fail_msg("the request in flight failed: %s", ms_err_name(s.rc));
  wp_expect(&w, 0, 0);
  assert_contains(wp_stderr(&w), "SIGINT");
  assert_contains(wp_stderr(&w), "stopped: 1 requests served");
  /* The clients' threads are joined before this thread closes descriptors
   * (releasing a tensor may open and close a liveness token): libuv's
   * uninstrumented close of the connection would otherwise look to TSan
   * like a race on the reused descriptor number. */
  ms_client_close(probe);
  ms_client_close(c);
  assert_int_equal(s.n_out, 1);
  assert_int_equal(ms_tensor_nbytes(s.out[0]), 64);
  assert_memory_equal(ms_tensor_data(s.out[0]), ms_tensor_data(s.in), 64);
  ms_tensor_release(s.out[0]);
  ms_tensor_release(s.in);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

/* Without --name the model is served under --model's last component. */
static void test_default_name(void **state) {
  fixture *f = *state;
  ms_shm_t *shm = new_shm();
  char *argv[] = {(char *)worker_bin,  "--endpoint", f->endpoint, "--plugin",
                  (char *)echo_plugin, "--model",    f->dir,      NULL};
  wp w = wp_start(f->dir, "w", argv);
  ms_client_t *c = wp_connect(f->endpoint, &w);
  const int64_t shape[1] = {8};
  ms_tensor_t *in = NULL, *out[1] = {NULL};
  size_t n_out = 1;
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &in),
                   0);
  memset(ms_tensor_data(in), 7, 8);
  const char *name = strrchr(f->dir, '/') + 1; /* ms-wbin-XXXXXX */
  assert_int_equal(ms_client_infer(c, name, &in, 1, 60000, out, &n_out), 0);
  assert_int_equal(n_out, 1);
  ms_tensor_release(out[0]);
  n_out = 1;
  assert_int_equal(ms_client_infer(c, "echo", &in, 1, 60000, out, &n_out),
                   MS_ENOENT);
  ms_tensor_release(in);
  ms_client_close(c);
  wp_expect(&w, SIGTERM, 0);
  char says[128];
  (void)snprintf(says, sizeof(says), "serving model '%s'", name);
  assert_contains(wp_stderr(&w), says);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

typedef struct batch_client {
  const char *endpoint;
  uv_barrier_t *connected; /* all send their first request together */
  int rc;
} batch_client;

/* Three echo requests on a connection of its own; rc is the first
 * failure. */
static void batch_client_run(void *arg) {
  batch_client *b = arg;
  ms_shm_t *shm = NULL;
  ms_client_t *c = NULL;
  ms_client_options_t o = MS_CLIENT_OPTIONS_INIT;
  b->rc = ms_shm_create(NULL, &shm);
  o.shm = shm;
  if (b->rc == 0)
    b->rc = ms_client_connect(b->endpoint, &o, &c);
  uv_barrier_wait(b->connected);
  const int64_t shape[1] = {16};
  for (int i = 0; b->rc == 0 && i < 3; i++) {
    ms_tensor_t *in = NULL, *out[1] = {NULL};
    size_t n_out = 1;
    b->rc = ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &in);
    if (b->rc != 0)
      break;
    memset(ms_tensor_data(in), i, 16);
    b->rc = ms_client_infer(c, "echo", &in, 1, 60000, out, &n_out);
    if (b->rc == 0 &&
        (n_out != 1 || ((unsigned char *)ms_tensor_data(out[0]))[15] != i))
      b->rc = MS_EIO;
    if (b->rc == 0)
      ms_tensor_release(out[0]);
    ms_tensor_release(in);
  }
  ms_client_close(c);
  if (shm != NULL && ms_shm_destroy(shm) != 0 && b->rc == 0)
    b->rc = MS_EBUSY;
}

/* --max-batch reaches the worker: 4 clients sending at once to a model
 * whose every call takes 20 ms (so requests queue up behind each call) are
 * served in batches of exactly 1 with --max-batch 1, and of at most 3 (more
 * than one on average) with --max-batch 3. */
static void test_max_batch(void **state) {
  fixture *f = *state;
  static const char *const limits[] = {"1", "3"};
  for (int k = 0; k < 2; k++) {
    char *argv[] = {(char *)worker_bin,
                    "--endpoint",
                    f->endpoint,
                    "--plugin",
                    (char *)echo_plugin,
                    "--model",
                    f->dir,
                    "--name",
                    "echo",
                    "--config",
                    "{\"fixed_us\":20000}",
                    "--max-batch",
                    (char *)limits[k],
                    "--max-delay-us",
                    "5000",
                    NULL};
    wp w = wp_start(f->dir, "w", argv);
    ms_client_t *probe = wp_connect(f->endpoint, &w);
    batch_client b[4];
    uv_thread_t th[4];
    uv_barrier_t connected;
    assert_int_equal(uv_barrier_init(&connected, 4), 0);
    for (int i = 0; i < 4; i++) {
      b[i] = (batch_client){f->endpoint, &connected, -1};
      assert_int_equal(uv_thread_create(&th[i], batch_client_run, &b[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
      uv_thread_join(&th[i]);
      if (b[i].rc != 0)
        fail_msg("client %d: %s", i, ms_err_name(b[i].rc));
    }
    uv_barrier_destroy(&connected);
    char *json = NULL;
    assert_int_equal(ms_client_status_json(probe, 60000, &json), 0);
    cJSON *j = cJSON_Parse(json);
    const cJSON *hist = cJSON_GetObjectItemCaseSensitive(j, "batch_hist");
    const cJSON *mean = cJSON_GetObjectItemCaseSensitive(j, "mean_batch");
    assert_true(cJSON_IsArray(hist) && cJSON_IsNumber(mean));
    print_message("--max-batch %s: mean batch %.2f, batch_hist %s\n", limits[k],
                  mean->valuedouble, strstr(json, "\"batch_hist\""));
    if (k == 0) {
      assert_int_equal(cJSON_GetArraySize(hist), 1);
      assert_true(mean->valuedouble == 1.0);
    } else {
      assert_true(cJSON_GetArraySize(hist) <= 3);
      assert_true(mean->valuedouble > 1.0);
    }
    cJSON_Delete(j);
    ms_free(json);
    ms_client_close(probe);
    wp_expect(&w, SIGTERM, 0);
    assert_contains(wp_stderr(&w), "stopped: 12 requests served");
  }
}

/* A worker killed with SIGKILL leaves its socket file; the next one
 * replaces it and serves, and the old client's next call reaches it. */
static void test_dead_worker_replaced(void **state) {
  fixture *f = *state;
  ms_shm_t *shm = new_shm();
  wp a = start_echo(f, "a", "{}");
  ms_client_t *c = wp_connect(f->endpoint, &a);
  echo_once(c, shm, 3);
  wp_expect(&a, SIGKILL, 128 + SIGKILL);
  struct stat sb;
  assert_int_equal(stat(f->endpoint, &sb), 0); /* left behind */

  wp b = start_echo(f, "b", "{}");
  ms_client_t *c2 = wp_connect(f->endpoint, &b);
  echo_once(c2, shm, 4);
  echo_once(c, shm, 5); /* reconnects by itself */
  ms_client_close(c2);
  ms_client_close(c);
  wp_expect(&b, SIGTERM, 0);
  assert_contains(wp_stderr(&b), "stopped: 2 requests served");
  assert_int_equal(ms_shm_destroy(shm), 0);
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr,
            "usage: %s WORKER ECHO_PLUGIN REFUSING_PLUGIN "
            "NOENTRY_PLUGIN\n",
            argv[0]);
    return 2;
  }
  worker_bin = argv[1];
  echo_plugin = argv[2];
  refusing_plugin = argv[3];
  noentry_plugin = argv[4];
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_help, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_command_lines, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_config, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_plugins, setup, teardown),
      cmocka_unit_test_setup_teardown(test_busy_endpoint_and_sigterm, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_sigint_drains, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dead_worker_replaced, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_default_name, setup, teardown),
      cmocka_unit_test_setup_teardown(test_max_batch, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
