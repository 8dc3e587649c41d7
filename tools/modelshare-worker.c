/*
 * modelshare-worker: serves one model to client processes.
 *
 *   modelshare-worker --endpoint PATH --plugin LIB.so --model PATH
 *       [--config JSON] [--name NAME] [--max-batch N] [--max-delay-us N]
 *       [--threads N]
 *
 * Loads the plugin (a shared object exporting ms_worker_plugin_v1), asks it
 * for its model description, loads the model once through a registry and
 * serves it on the endpoint with ms_worker_* on this program's libuv loop.
 * SIGTERM or SIGINT stops it: requests in flight are drained, then it exits
 * 0.  Every error is one line on stderr, prefixed "modelshare-worker: ".
 *
 * On a clean stop it says how many requests it served and how many times
 * the model was loaded (once, unless something is wrong).
 *
 * Exit status: 0 after a clean stop (or --help), 1 when it cannot start or
 * serve (plugin, model, endpoint), 2 for a bad command line (unknown
 * option, bad number, malformed --config JSON, no usable model name).
 */
#include <modelshare.h>

#include <cjson/cJSON.h>
#include <uv.h>

#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROG "modelshare-worker"

enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

static const char usage[] =
    "usage: " PROG " --endpoint PATH --plugin LIB.so --model PATH\n"
    "           [--config JSON] [--name NAME] [--max-batch N]\n"
    "           [--max-delay-us N] [--threads N]\n"
    "\n"
    "Serves one model to client processes (ms_client_connect) on a local\n"
    "endpoint.  The model is loaded once, by the plugin's loader; clients'\n"
    "tensors travel through shared memory.  Runs until SIGTERM or SIGINT,\n"
    "then finishes the requests in flight and exits 0.\n"
    "\n"
    "  --endpoint PATH    socket path to listen on (its directory is created\n"
    "                     0700 if missing); a live worker's endpoint is\n"
    "                     refused, a dead one's is replaced\n"
    "  --plugin LIB.so    shared object exporting ms_worker_plugin_v1\n"
    "  --model PATH       model path handed to the plugin's loader\n"
    "  --config JSON      model config handed to the loader (default {})\n"
    "  --name NAME        model name clients ask for (default: the last\n"
    "                     component of --model)\n"
    "  --max-batch N      most requests per inference call (default: the\n"
    "                     library's; 1 disables batching)\n"
    "  --max-delay-us N   longest a request waits for a batch to fill\n"
    "  --threads N        inference threads\n"
    "  --help             this text\n"
    "\n"
    "Exit status: 0 stopped cleanly, 1 could not start or serve, 2 bad\n"
    "command line.\n";

/* One line on stderr, prefixed with the program's name. */
__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs(PROG ": ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

typedef struct args {
  const char *endpoint, *plugin, *model, *config, *name;
  long long max_batch, max_delay_us, threads; /* -1: the library's default */
} args;

/* A whole decimal number in [lo, hi]; anything else is refused. */
static int parse_num(const char *opt, const char *s, long long lo, long long hi,
                     long long *out) {
  char *end = NULL;
  errno = 0;
  long long v = s[0] >= '0' && s[0] <= '9' ? strtoll(s, &end, 10) : 0;
  if (end == NULL || *end != '\0' || errno != 0 || v < lo || v > hi) {
    say("%s wants a whole number from %lld to %lld, not '%s'", opt, lo, hi, s);
    return -1;
  }
  *out = v;
  return 0;
}

/* 0, or the exit status for a bad command line (after saying why). */
static int parse_args(int argc, char **argv, args *a, int *help) {
  static const struct {
    const char *opt;
    int numeric;
    long long lo, hi;
  } opts[] = {{"--endpoint", 0, 0, 0},
              {"--plugin", 0, 0, 0},
              {"--model", 0, 0, 0},
              {"--config", 0, 0, 0},
              {"--name", 0, 0, 0},
              {"--max-batch", 1, 1, 65536},
              {"--max-delay-us", 1, 0, 60000000},
              {"--threads", 1, 1, 1024}};
  const char **str[] = {&a->endpoint, &a->plugin, &a->model, &a->config,
                        &a->name};
  long long *num[] = {&a->max_batch, &a->max_delay_us, &a->threads};
  *a = (args){.max_batch = -1, .max_delay_us = -1, .threads = -1};
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      *help = 1;
      return 0;
    }
    size_t k = 0, n = sizeof(opts) / sizeof(opts[0]);
    while (k < n && strcmp(argv[i], opts[k].opt) != 0)
      k++;
    if (k == n) {
      say("unknown argument '%s' (try --help)", argv[i]);
      return EXIT_USAGE;
    }
    if (i + 1 >= argc) {
      say("%s needs a value (try --help)", argv[i]);
      return EXIT_USAGE;
    }
    const char *v = argv[++i];
    if (!opts[k].numeric)
      *str[k] = v;
    else if (parse_num(opts[k].opt, v, opts[k].lo, opts[k].hi, num[k - 5]))
      return EXIT_USAGE;
  }
  const char *missing = a->endpoint == NULL ? "--endpoint"
                        : a->plugin == NULL ? "--plugin"
                        : a->model == NULL  ? "--model"
                                            : NULL;
  if (missing != NULL) {
    say("%s is required (try --help)", missing);
    return EXIT_USAGE;
  }
  return 0;
}

/* The plugin's model description, or an exit status after saying why. */
static int load_plugin(const args *a, void **dl, ms_worker_model_t *m) {
  *dl = dlopen(a->plugin, RTLD_NOW | RTLD_LOCAL);
  if (*dl == NULL) {
    say("cannot load plugin %s: %s", a->plugin, dlerror());
    return EXIT_RUNTIME;
  }
  /* POSIX allows this conversion; the union keeps ISO C's rule on
   * function/object pointers out of the way without a warning. */
  union {
    void *obj;
    ms_worker_plugin_fn fn;
  } entry;
  (void)dlerror();
  entry.obj = dlsym(*dl, MS_WORKER_PLUGIN_SYMBOL);
  if (entry.obj == NULL) {
    const char *why = dlerror();
    say("plugin %s does not export " MS_WORKER_PLUGIN_SYMBOL ": %s", a->plugin,
        why != NULL ? why : "the symbol is NULL");
    return EXIT_RUNTIME;
  }
  *m = (ms_worker_model_t)MS_WORKER_MODEL_INIT;
  m->path = a->model;
  m->config_json = a->config;
  int rc = entry.fn(m);
  if (rc != 0) {
    say("plugin %s failed: " MS_WORKER_PLUGIN_SYMBOL " returned %s (%s)",
        a->plugin, ms_err_name(rc), ms_strerror(rc));
    return EXIT_RUNTIME;
  }
  /* The model is the command line's, whatever the plugin wrote. */
  m->path = a->model;
  m->config_json = a->config;
  return 0;
}

/* 1 if s is a model name: 1..MS_WORKER_NAME_MAX of [A-Za-z0-9_.-]. */
static int valid_name(const char *s, size_t n) {
  if (n == 0 || n > MS_WORKER_NAME_MAX)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
          (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '.' ||
          s[i] == '-'))
      return 0;
  return 1;
}

/* The name clients ask for: --name, else the model path's last component;
 * NULL when that is not a valid name.  buf has MS_WORKER_NAME_MAX + 1
 * bytes. */
static const char *model_name(const args *a, char *buf) {
  if (a->name != NULL)
    return valid_name(a->name, strlen(a->name)) ? a->name : NULL;
  size_t n = strlen(a->model);
  while (n > 1 && a->model[n - 1] == '/')
    n--;
  size_t b = n;
  while (b > 0 && a->model[b - 1] != '/')
    b--;
  if (!valid_name(a->model + b, n - b))
    return NULL;
  memcpy(buf, a->model + b, n - b);
  buf[n - b] = '\0';
  return buf;
}

/* ------------------------------------------------------------------------ */
/* Serving                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct server {
  uv_loop_t loop;
  uv_signal_t sigterm, sigint;
  int signals; /* the signal handles were initialised */
  ms_worker_t *worker;
  int stopping;
} server;

static void on_signal(uv_signal_t *sig, int signum) {
  server *s = sig->data;
  if (s->stopping)
    return;
  s->stopping = 1;
  say("%s: finishing the requests in flight, then exiting",
      signum == SIGTERM ? "SIGTERM" : "SIGINT");
  /* On the loop thread this begins the drain: the worker stops accepting,
   * answers what it received and closes its handles, so the loop ends. */
  (void)ms_worker_stop(s->worker);
  uv_close((uv_handle_t *)&s->sigterm, NULL);
  uv_close((uv_handle_t *)&s->sigint, NULL);
}

static int watch_signals(server *s) {
  s->sigterm.data = s->sigint.data = s;
  if (uv_signal_init(&s->loop, &s->sigterm) != 0)
    return -1;
  if (uv_signal_init(&s->loop, &s->sigint) != 0) {
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    return -1;
  }
  s->signals = 1;
  if (uv_signal_start(&s->sigterm, on_signal, SIGTERM) != 0 ||
      uv_signal_start(&s->sigint, on_signal, SIGINT) != 0)
    return -1;
  return 0;
}

/* The worker's "requests" counter, or -1. */
static double requests_served(ms_worker_t *w) {
  char *json = NULL;
  if (ms_worker_stats_json(w, &json) != 0)
    return -1;
  cJSON *j = cJSON_Parse(json);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "requests");
  double n = cJSON_IsNumber(v) ? v->valuedouble : -1;
  cJSON_Delete(j);
  ms_free(json);
  return n;
}

/* Destroys w once its drain is over, running the loop meanwhile. */
static int finish_worker(server *s) {
  int rc;
  while ((rc = ms_worker_destroy(s->worker)) == MS_EBUSY)
    if (uv_run(&s->loop, UV_RUN_NOWAIT) == 0)
      uv_sleep(1); /* inference threads still finishing */
  s->worker = NULL;
  return rc;
}

static int serve(const args *a, const char *name, const ms_worker_model_t *m) {
  server s;
  memset(&s, 0, sizeof(s));
  ms_registry_t *reg = NULL;
  ms_shm_t *shm = NULL;
  int status = EXIT_RUNTIME, rc;
  ms_worker_options_t o = MS_WORKER_OPTIONS_INIT;
  o.endpoint = a->endpoint;
  if (a->max_batch >= 0)
    o.max_batch = (uint32_t)a->max_batch;
  if (a->max_delay_us >= 0)
    o.max_batch_delay_us = (uint32_t)a->max_delay_us;
  if (a->threads >= 0)
    o.threads = (uint32_t)a->threads;

  if (uv_loop_init(&s.loop) != 0) {
    say("cannot create an event loop");
    return EXIT_RUNTIME;
  }
  if ((rc = ms_registry_create(NULL, &reg)) != 0) {
    say("cannot create the model registry: %s", ms_strerror(rc));
    goto out;
  }
  /* No shared memory here is not fatal: the worker then serves inline. */
  if (ms_shm_create(NULL, &shm) != 0)
    say("no shared memory (%s): tensors travel inline", ms_shm_errmsg(NULL));
  if ((rc = ms_worker_create(&o, reg, shm, &s.worker)) != 0) {
    say("cannot create the worker: %s (%s)", ms_err_name(rc),
        ms_worker_errmsg(NULL));
    goto out;
  }
  /* Watched from now on: a signal during the load is acted on once the
   * loop runs (the worker then stops at once, nothing being in flight). */
  if (watch_signals(&s) != 0) {
    say("cannot watch SIGTERM and SIGINT");
    goto out;
  }
  /* Loads the model now, so that a loader failure stops us before we
   * listen. */
  if ((rc = ms_worker_add_model(s.worker, name, m)) != 0) {
    say("cannot load model %s with plugin %s: %s (%s)", a->model, a->plugin,
        ms_err_name(rc), ms_worker_errmsg(s.worker));
    goto out;
  }
  if ((rc = ms_worker_start(s.worker, &s.loop)) != 0) {
    if (rc == MS_EBUSY)
      say("endpoint %s is in use by a live worker", a->endpoint);
    else
      say("cannot listen on %s: %s (%s)", a->endpoint, ms_err_name(rc),
          ms_worker_errmsg(s.worker));
    goto out;
  }
  say("serving model '%s' (%s) on %s", name, a->model, a->endpoint);
  (void)uv_run(&s.loop, UV_RUN_DEFAULT);
  double served = requests_served(s.worker);
  if (finish_worker(&s) == 0) {
    ms_registry_stats_t rs = MS_REGISTRY_STATS_INIT;
    (void)ms_registry_stats(reg, &rs);
    say("stopped: %.0f requests served, model loaded %llu time(s)", served,
        (unsigned long long)rs.loads);
    status = 0;
  }
out:
  if (s.signals && !uv_is_closing((uv_handle_t *)&s.sigterm)) {
    uv_close((uv_handle_t *)&s.sigterm, NULL);
    uv_close((uv_handle_t *)&s.sigint, NULL);
  }
  (void)uv_run(&s.loop, UV_RUN_DEFAULT); /* finish the closes */
  if (s.worker != NULL && finish_worker(&s) != 0)
    status = EXIT_RUNTIME;
  if (ms_registry_destroy(reg) != 0 || ms_shm_destroy(shm) != 0) {
    say("the registry or allocator was still in use at exit");
    status = EXIT_RUNTIME;
  }
  if (uv_loop_close(&s.loop) != 0)
    status = EXIT_RUNTIME;
  return status;
}

int main(int argc, char **argv) {
  args a;
  int help = 0;
  int rc = parse_args(argc, argv, &a, &help);
  if (help) {
    fputs(usage, stdout);
    return 0;
  }
  if (rc != 0)
    return rc;
  /* Refuse a bad model path or config before loading anything:
   * ms_key_create names the problem (and the config's byte offset). */
  ms_key_t *key = NULL;
  if (ms_key_create(a.model, NULL, &key) != 0) {
    say("bad --model: %s", ms_key_errmsg());
    return EXIT_USAGE;
  }
  ms_key_destroy(key);
  if (ms_key_create(a.model, a.config, &key) != 0) {
    say("bad --config: %s", ms_key_errmsg());
    return EXIT_USAGE;
  }
  ms_key_destroy(key);
  char buf[MS_WORKER_NAME_MAX + 1];
  const char *name = model_name(&a, buf);
  if (name == NULL && a.name != NULL) {
    say("bad --name '%s': 1 to %d of A-Z a-z 0-9 _ . -", a.name,
        MS_WORKER_NAME_MAX);
    return EXIT_USAGE;
  }
  if (name == NULL) {
    say("cannot make a model name of %s: give one with --name", a.model);
    return EXIT_USAGE;
  }

  void *dl = NULL;
  ms_worker_model_t m;
  rc = load_plugin(&a, &dl, &m);
  if (rc == 0)
    rc = serve(&a, name, &m);
  /* The plugin stays loaded until every model it loaded is unloaded (the
   * registry was destroyed in serve()). */
  if (dl != NULL)
    dlclose(dl);
  return rc;
}
