/* The worker scenario: one model worker process (the installed
 * modelshare-worker program with a plugin) serving client processes.
 *
 *   - Round trip of a 1 KiB tensor through client -> worker -> client on an
 *     echo model, against a raw Unix-socket round trip of the same 1 KiB
 *     between two processes in the same run (the floor: a blocking
 *     write/read pair on a connected SOCK_STREAM socket, nothing else).  The
 *     two are measured in alternating chunks so both see the same machine.
 *     Beside them, for the reader who wants to know where the time goes:
 *     the same echo with tensors inline (MS_CLIENT_INLINE) and a ping (the
 *     transport and both loops, no inference thread).
 *   - Throughput of 8 concurrent clients on a model whose every call costs a
 *     fixed time (plus a little per item), with batching (max batch 8) and
 *     without (max batch 1); the worker's stats give the mean batch.
 *   - Memory: PSS summed over the worker and 3 client processes that each
 *     had one utterance transcribed, against 3 processes that each load
 *     pocketsphinx and transcribe it themselves.
 *
 * The peers are this binary started with --worker-peer. */
#include "bench.h"
#include "rss.h"

#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(MSB_HAVE_POCKETSPHINX) && defined(MSB_SPEECH_PLUGIN)
#define MSB_WORKER_SPEECH 1
#include "speech_model.h"
#endif

/* Targets (issue 11). */
#define RTT_RATIO_TARGET 2.0
#define MEMORY_TARGET 0.6

#define PAYLOAD 1024  /* bytes each way */
#define CLIENTS 8     /* concurrent clients of the throughput runs */
#define PSS_CLIENTS 3 /* client processes of the memory run */
#define FIXED_US 300  /* the batch model's cost per call */
#define TIMEOUT_MS 60000

/* ------------------------------------------------------------------------ */
/* Small process and socket helpers                                          */
/* ------------------------------------------------------------------------ */

typedef struct proc {
  pid_t pid;
  FILE *out; /* its stdout, when captured */
  int in;    /* its stdin (write end), when piped; closing it = "exit" */
} proc;

/* Starts argv[0] with argv; stdout captured and stdin piped when asked,
 * stderr to err_log when given.  The pipes are close-on-exec, so that no
 * other child holds a peer's stdin open (it would never see EOF). */
static proc spawn(char *const *argv, int capture, const char *err_log) {
  proc p = {-1, NULL, -1};
  int out[2] = {-1, -1}, in[2] = {-1, -1};
  if (capture && (pipe(out) != 0 || pipe(in) != 0))
    return p;
  for (int i = 0; capture && i < 2; i++) {
    (void)fcntl(out[i], F_SETFD, FD_CLOEXEC);
    (void)fcntl(in[i], F_SETFD, FD_CLOEXEC);
  }
  fflush(NULL);
  p.pid = fork();
  if (p.pid == 0) {
    if (capture && (dup2(out[1], 1) < 0 || dup2(in[0], 0) < 0))
      _exit(126);
    int e =
        err_log != NULL ? open(err_log, O_WRONLY | O_CREAT | O_TRUNC, 0600) : 2;
    if (e < 0 || dup2(e, 2) < 0)
      _exit(126);
    execv(argv[0], argv);
    _exit(127);
  }
  if (capture) {
    close(out[1]), close(in[0]);
    p.out = fdopen(out[0], "r");
    p.in = in[1];
  }
  return p;
}

static int read_line(proc *p, char *buf, size_t len) {
  if (p->out == NULL || fgets(buf, (int)len, p->out) == NULL)
    return -1;
  buf[strcspn(buf, "\n")] = '\0';
  return 0;
}

/* Waits for p; with sig, signals it first.  0 if it exited 0. */
static int reap(proc *p, int sig) {
  int st = 0;
  if (p->pid <= 0)
    return -1;
  if (sig)
    kill(p->pid, sig);
  if (p->in >= 0)
    close(p->in);
  if (p->out != NULL)
    fclose(p->out);
  waitpid(p->pid, &st, 0);
  p->pid = -1;
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static int write_full(int fd, const void *b, size_t n) {
  const char *p = b;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    p += w, n -= (size_t)w;
  }
  return 0;
}

static int read_full(int fd, void *b, size_t n) {
  char *p = b;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    p += r, n -= (size_t)r;
  }
  return 0;
}

static int unix_socket(const char *path, struct sockaddr_un *a) {
  memset(a, 0, sizeof(*a));
  a->sun_family = AF_UNIX;
  if (strlen(path) >= sizeof(a->sun_path))
    return -1;
  memcpy(a->sun_path, path, strlen(path) + 1);
  return socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
}

static double percentile(double *v, int n, double q) {
  (void)msb_median(v, n); /* sorts */
  int i = (int)(q * (n - 1) + 0.5);
  return n > 0 ? v[i] : 0;
}

/* ------------------------------------------------------------------------ */
/* The worker program and the client side                                    */
/* ------------------------------------------------------------------------ */

typedef struct bench_dir {
  char path[64];
  char endpoint[96];
  char raw[96];
  char log[96]; /* the worker's stderr */
} bench_dir;

static proc start_worker(const bench_dir *d, const char *plugin,
                         const char *model, const char *config,
                         const char *max_batch, const char *delay_us) {
  char *argv[] = {(char *)MSB_WORKER_BIN,
                  "--endpoint",
                  (char *)d->endpoint,
                  "--plugin",
                  (char *)plugin,
                  "--model",
                  (char *)model,
                  "--config",
                  (char *)config,
                  "--name",
                  "m",
                  "--max-batch",
                  (char *)max_batch,
                  "--max-delay-us",
                  (char *)delay_us,
                  "--threads",
                  "1",
                  NULL};
  return spawn(argv, 0, d->log);
}

/* Stops the worker (SIGTERM: it drains and exits 0); shows its log when it
 * did not. */
static int stop_worker(const bench_dir *d, proc *w) {
  if (reap(w, SIGTERM) == 0)
    return 0;
  char line[512];
  FILE *f = fopen(d->log, "r");
  msb_progress("worker: modelshare-worker failed; its log:");
  while (f != NULL && fgets(line, sizeof(line), f) != NULL)
    fputs(line, stderr);
  if (f != NULL)
    fclose(f);
  return -1;
}

/* A client connected to the worker once it listens (it may still be
 * loading its model). */
static ms_client_t *connect_client_flags(const char *endpoint, ms_shm_t *shm,
                                         uint32_t flags) {
  ms_client_options_t o = MS_CLIENT_OPTIONS_INIT;
  o.shm = shm;
  o.flags = flags;
  o.retry_attempts = 1;
  for (int i = 0; i < 3000; i++) {
    ms_client_t *c = NULL;
    if (ms_client_connect(endpoint, &o, &c) == 0)
      return c;
    usleep(10000);
  }
  return NULL;
}

static ms_client_t *connect_client(const char *endpoint, ms_shm_t *shm) {
  return connect_client_flags(endpoint, shm, 0);
}

/* One request on model "m": one input, one output; 0 or an error. */
static int infer1(ms_client_t *c, ms_tensor_t *in, ms_tensor_t **out) {
  ms_tensor_t *outs[1] = {NULL};
  size_t n = 1;
  int rc = ms_client_infer(c, "m", &in, 1, TIMEOUT_MS, outs, &n);
  if (rc == 0 && n != 1) {
    for (size_t i = 0; i < n; i++)
      ms_tensor_release(outs[i]);
    return MS_EIO;
  }
  *out = outs[0];
  return rc;
}

/* requests and batches from the worker's stats JSON. */
static int worker_counts(ms_client_t *c, double *requests, double *batches) {
  char *json = NULL;
  if (ms_client_status_json(c, TIMEOUT_MS, &json) != 0)
    return -1;
  cJSON *j = cJSON_Parse(json);
  ms_free(json);
  const cJSON *r = cJSON_GetObjectItem(j, "requests");
  const cJSON *b = cJSON_GetObjectItem(j, "batches");
  int ok = cJSON_IsNumber(r) && cJSON_IsNumber(b);
  if (ok)
    *requests = r->valuedouble, *batches = b->valuedouble;
  cJSON_Delete(j);
  return ok ? 0 : -1;
}

/* ------------------------------------------------------------------------ */
/* Round trip: worker vs raw socket                                          */
/* ------------------------------------------------------------------------ */

/* The raw floor's server (--worker-peer sock PATH): echoes PAYLOAD-byte
 * messages on one connection until it closes. */
static int peer_sock(const char *path) {
  struct sockaddr_un a;
  int ls = unix_socket(path, &a);
  if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 ||
      listen(ls, 1) != 0)
    return 1;
  printf("ready\n");
  fflush(stdout);
  int s = accept(ls, NULL, NULL);
  close(ls);
  unlink(path);
  char buf[PAYLOAD];
  while (s >= 0 && read_full(s, buf, sizeof(buf)) == 0)
    if (write_full(s, buf, sizeof(buf)) != 0)
      return 1;
  if (s >= 0)
    close(s);
  return s >= 0 ? 0 : 1;
}

#define CHUNKS 10

typedef struct rtt_result {
  double worker_med, worker_p99, socket_med;
  double ping_med;   /* ms_client_ping: the path without inference */
  double inline_med; /* echo with MS_CLIENT_INLINE: no descriptors */
} rtt_result;

static int measure_rtt(const msb_opts *o, const bench_dir *d, int count,
                       rtt_result *r) {
  char *sargv[] = {(char *)o->self, "--worker-peer", "sock", (char *)d->raw,
                   NULL};
  proc sock = spawn(sargv, 1, NULL);
  proc w =
      start_worker(d, MSB_TEST_PLUGIN, d->path, "{\"fixed_us\":0}", "1", "0");
  char line[64];
  struct sockaddr_un a;
  int s = -1, ok = 0;
  ms_client_t *c = NULL;
  ms_shm_t *shm = NULL;
  ms_tensor_t *in = NULL;
  double *wv = calloc((size_t)count, sizeof(double));
  double *sv = calloc((size_t)count, sizeof(double));
  double *pv = calloc((size_t)count, sizeof(double));
  double *iv = calloc((size_t)count, sizeof(double));
  ms_client_t *ci = NULL;
  char msg[PAYLOAD], back[PAYLOAD];
  const int64_t shape[1] = {PAYLOAD};
  if (wv == NULL || sv == NULL || pv == NULL || iv == NULL ||
      read_line(&sock, line, sizeof(line)) != 0 ||
      (s = unix_socket(d->raw, &a)) < 0 ||
      connect(s, (struct sockaddr *)&a, sizeof(a)) != 0 ||
      ms_shm_create(NULL, &shm) != 0 ||
      (c = connect_client(d->endpoint, shm)) == NULL ||
      (ci = connect_client_flags(d->endpoint, shm, MS_CLIENT_INLINE)) == NULL ||
      ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &in) != 0)
    goto out;
  for (int i = 0; i < PAYLOAD; i++)
    msg[i] = (char)(i * 7);
  uint64_t sum = 0;
  const int chunk = count / CHUNKS;
  ok = 1;
  /* Warm-up: 100 of each, then alternating chunks. */
  for (int k = -1; ok && k < CHUNKS; k++) {
    int n = k < 0 ? 100 : chunk;
    for (int i = 0; ok && i < n; i++) {
      uint64_t t0 = uv_hrtime();
      ok = write_full(s, msg, PAYLOAD) == 0 && read_full(s, back, PAYLOAD) == 0;
      sum += msb_read_all(back, PAYLOAD);
      if (k >= 0)
        sv[k * chunk + i] = (double)(uv_hrtime() - t0) / 1e3;
    }
    for (int i = 0; ok && i < n; i++) {
      ms_tensor_t *out = NULL;
      uint64_t t0 = uv_hrtime();
      memcpy(ms_tensor_data(in), msg, PAYLOAD);
      ok = infer1(c, in, &out) == 0 && ms_tensor_nbytes(out) == PAYLOAD;
      if (ok)
        sum += msb_read_all(ms_tensor_data(out), PAYLOAD);
      ms_tensor_release(out);
      if (k >= 0)
        wv[k * chunk + i] = (double)(uv_hrtime() - t0) / 1e3;
    }
    for (int i = 0; ok && i < n; i++) {
      ms_tensor_t *out = NULL;
      uint64_t t0 = uv_hrtime();
      memcpy(ms_tensor_data(in), msg, PAYLOAD);
      ok = infer1(ci, in, &out) == 0 && ms_tensor_nbytes(out) == PAYLOAD;
      if (ok)
        sum += msb_read_all(ms_tensor_data(out), PAYLOAD);
      ms_tensor_release(out);
      if (k >= 0)
        iv[k * chunk + i] = (double)(uv_hrtime() - t0) / 1e3;
    }
    for (int i = 0; ok && i < n; i++) {
      uint64_t t0 = uv_hrtime();
      ok = ms_client_ping(c, TIMEOUT_MS) == 0;
      if (k >= 0)
        pv[k * chunk + i] = (double)(uv_hrtime() - t0) / 1e3;
    }
  }
  if (ok && sum == 0)
    ok = 0; /* never: the payload is not all zeros */
  if (ok) {
    int n = chunk * CHUNKS;
    r->socket_med = msb_median(sv, n);
    r->worker_med = msb_median(wv, n);
    r->worker_p99 = percentile(wv, n, 0.99);
    r->ping_med = msb_median(pv, n);
    r->inline_med = msb_median(iv, n);
  }
out:
  ms_tensor_release(in);
  ms_client_close(c);
  ms_client_close(ci);
  if (shm != NULL && ms_shm_destroy(shm) != 0)
    ok = 0;
  if (s >= 0)
    close(s);
  ok = reap(&sock, 0) == 0 && ok;
  ok = stop_worker(d, &w) == 0 && ok;
  free(wv);
  free(sv);
  free(pv);
  free(iv);
  return ok ? 0 : -1;
}

/* ------------------------------------------------------------------------ */
/* Throughput: batched vs unbatched                                          */
/* ------------------------------------------------------------------------ */

typedef struct loader_thread {
  const char *endpoint;
  int requests;
  int ok;
  uv_barrier_t *go;
  uv_thread_t th;
} loader_thread;

static void client_loop(void *arg) {
  loader_thread *t = arg;
  ms_shm_t *shm = NULL;
  ms_client_t *c = NULL;
  ms_tensor_t *in = NULL;
  const int64_t shape[1] = {PAYLOAD};
  t->ok = ms_shm_create(NULL, &shm) == 0 &&
          (c = connect_client(t->endpoint, shm)) != NULL &&
          ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &in) == 0;
  uv_barrier_wait(t->go);
  for (int i = 0; t->ok && i < t->requests; i++) {
    ms_tensor_t *out = NULL;
    memset(ms_tensor_data(in), i, PAYLOAD);
    t->ok =
        infer1(c, in, &out) == 0 &&
        ((unsigned char *)ms_tensor_data(out))[PAYLOAD - 1] == (unsigned char)i;
    ms_tensor_release(out);
  }
  ms_tensor_release(in);
  ms_client_close(c);
  if (shm != NULL && ms_shm_destroy(shm) != 0)
    t->ok = 0;
}

/* Requests per second of CLIENTS clients; *mean_batch from the stats. */
static double throughput(const bench_dir *d, const char *max_batch,
                         int per_client, double *mean_batch) {
  char config[64];
  (void)snprintf(config, sizeof(config), "{\"fixed_us\":%d}", FIXED_US);
  proc w = start_worker(d, MSB_TEST_PLUGIN, d->path, config, max_batch, "200");
  ms_client_t *probe = connect_client(d->endpoint, NULL);
  loader_thread t[CLIENTS];
  uv_barrier_t go;
  uv_barrier_init(&go, CLIENTS + 1);
  for (int i = 0; i < CLIENTS; i++) {
    t[i] = (loader_thread){d->endpoint, per_client, 0, &go, 0};
    uv_thread_create(&t[i].th, client_loop, &t[i]);
  }
  double r0 = 0, b0 = 0, r1 = 0, b1 = 0;
  int ok = probe != NULL && worker_counts(probe, &r0, &b0) == 0;
  uv_barrier_wait(&go);
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < CLIENTS; i++) {
    uv_thread_join(&t[i].th);
    ok &= t[i].ok;
  }
  double secs = (double)(uv_hrtime() - t0) / 1e9;
  uv_barrier_destroy(&go);
  ok = ok && worker_counts(probe, &r1, &b1) == 0 && b1 > b0;
  ms_client_close(probe);
  ok = stop_worker(d, &w) == 0 && ok;
  if (!ok)
    return -1;
  *mean_batch = (r1 - r0) / (b1 - b0);
  return CLIENTS * per_client / secs;
}

/* ------------------------------------------------------------------------ */
/* Memory: one worker + 3 clients vs 3 processes with their own model       */
/* ------------------------------------------------------------------------ */

#ifdef MSB_WORKER_SPEECH
static int16_t *read_pcm(const char *path, size_t *samples) {
  FILE *f = fopen(path, "rb");
  struct stat st;
  int16_t *pcm = NULL;
  if (f != NULL && fstat(fileno(f), &st) == 0 && st.st_size > 0 &&
      (pcm = malloc((size_t)st.st_size)) != NULL)
    *samples = fread(pcm, 2, (size_t)st.st_size / 2, f);
  if (f != NULL)
    fclose(f);
  return pcm;
}

/* --worker-peer separate PCM: loads its own model and transcribes. */
static int peer_separate(const char *pcm_path) {
  size_t samples = 0, bytes = 0;
  int16_t *pcm = read_pcm(pcm_path, &samples);
  ms_loader_t l = speech_loader();
  void *model = NULL;
  char text[256];
  if (pcm == NULL ||
      l.load(NULL, SPEECH_MODEL_DIR, SPEECH_MODEL_CONFIG, &model, &bytes) ||
      speech_transcribe(model, pcm, samples, text, sizeof(text)) != 0)
    return 1;
  printf("%s\n", text);
  fflush(stdout);
  char b;
  while (read(0, &b, 1) > 0) /* until the parent measured */
    ;
  l.unload(NULL, model);
  free(pcm);
  return 0;
}

/* --worker-peer client ENDPOINT PCM: has the worker transcribe. */
static int peer_client(const char *endpoint, const char *pcm_path) {
  size_t samples = 0;
  int16_t *pcm = read_pcm(pcm_path, &samples);
  ms_shm_t *shm = NULL;
  ms_client_t *c = NULL;
  ms_tensor_t *in = NULL, *out = NULL;
  const int64_t shape[1] = {(int64_t)samples};
  if (pcm == NULL || ms_shm_create(NULL, &shm) != 0 ||
      (c = connect_client(endpoint, shm)) == NULL ||
      ms_tensor_alloc(shm, MS_DTYPE_INT16, 1, shape, NULL, &in) != 0)
    return 1;
  memcpy(ms_tensor_data(in), pcm, samples * 2);
  if (infer1(c, in, &out) != 0)
    return 1;
  printf("%.*s\n", (int)ms_tensor_nbytes(out), (char *)ms_tensor_data(out));
  fflush(stdout);
  char b;
  while (read(0, &b, 1) > 0)
    ;
  ms_tensor_release(out);
  ms_tensor_release(in);
  ms_client_close(c);
  free(pcm);
  return ms_shm_destroy(shm) == 0 ? 0 : 1;
}

/* PSS sum of n peers (after each printed its transcript into text[i]) plus
 * extra; -1 on failure. */
static double peers_pss(proc *p, int n, pid_t extra, char text[][256]) {
  double sum = 0;
  int ok = 1;
  for (int i = 0; i < n; i++)
    ok &= read_line(&p[i], text[i], 256) == 0;
  if (extra > 0)
    sum += (double)ms_example_pss_bytes_of((long)extra);
  for (int i = 0; i < n; i++)
    sum += (double)ms_example_pss_bytes_of((long)p[i].pid);
  for (int i = 0; i < n; i++)
    ok &= reap(&p[i], 0) == 0;
  return ok ? sum : -1;
}

static int measure_pss(const msb_opts *o, const bench_dir *d, const char *pcm,
                       double *with, double *separate) {
  proc p[PSS_CLIENTS];
  char text[2][PSS_CLIENTS][256];
  char *sep_argv[] = {(char *)o->self, "--worker-peer", "separate", (char *)pcm,
                      NULL};
  for (int i = 0; i < PSS_CLIENTS; i++)
    p[i] = spawn(sep_argv, 1, NULL);
  *separate = peers_pss(p, PSS_CLIENTS, 0, text[0]);

  proc w = start_worker(d, MSB_SPEECH_PLUGIN, SPEECH_MODEL_DIR,
                        SPEECH_MODEL_CONFIG, "1", "0");
  char *cl_argv[] = {(char *)o->self,     "--worker-peer", "client",
                     (char *)d->endpoint, (char *)pcm,     NULL};
  for (int i = 0; i < PSS_CLIENTS; i++)
    p[i] = spawn(cl_argv, 1, NULL);
  *with = peers_pss(p, PSS_CLIENTS, w.pid, text[1]);
  int ok = stop_worker(d, &w) == 0 && *with > 0 && *separate > 0;
  for (int i = 0; ok && i < PSS_CLIENTS; i++)
    ok = text[0][i][0] != '\0' && strcmp(text[0][i], text[1][i]) == 0;
  if (!ok)
    msb_progress("worker: the memory run failed (transcripts '%s' / '%s')",
                 text[0][0], text[1][0]);
  return ok ? 0 : -1;
}
#endif

/* ------------------------------------------------------------------------ */
/* The scenario                                                              */
/* ------------------------------------------------------------------------ */

int msb_worker_peer_main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "sock") == 0)
    return peer_sock(argv[2]);
#ifdef MSB_WORKER_SPEECH
  if (argc >= 3 && strcmp(argv[1], "separate") == 0)
    return peer_separate(argv[2]);
  if (argc >= 4 && strcmp(argv[1], "client") == 0)
    return peer_client(argv[2], argv[3]);
#endif
  return 2;
}

int msb_worker(const msb_opts *o, cJSON *root) {
  bench_dir d;
  (void)snprintf(d.path, sizeof(d.path), "/tmp/msb-worker-XXXXXX");
  if (mkdtemp(d.path) == NULL)
    return -1;
  (void)snprintf(d.endpoint, sizeof(d.endpoint), "%s/worker.sock", d.path);
  (void)snprintf(d.raw, sizeof(d.raw), "%s/raw.sock", d.path);
  (void)snprintf(d.log, sizeof(d.log), "%s/worker.log", d.path);
  const int reps = o->quick ? 1 : o->reps;
  const int count = o->quick ? 1000 : 10000;
  const int per_client = o->quick ? 50 : 400;
  int ok = 1;

  msb_progress("worker: %d x %d round trips of %d bytes (worker, raw socket)",
               reps, count, PAYLOAD);
  double *v = calloc((size_t)reps * 9, sizeof(double));
  double *wmed = v, *wp99 = v + reps, *smed = v + 2 * (size_t)reps,
         *brps = v + 3 * (size_t)reps, *urps = v + 4 * (size_t)reps,
         *mb = v + 5 * (size_t)reps, *ratio = v + 6 * (size_t)reps,
         *pmed = v + 7 * (size_t)reps, *imed = v + 8 * (size_t)reps;
  for (int r = 0; ok && r < reps; r++) {
    rtt_result rr = {0, 0, 0, 0, 0};
    ok = measure_rtt(o, &d, count, &rr) == 0;
    wmed[r] = rr.worker_med, wp99[r] = rr.worker_p99, smed[r] = rr.socket_med;
    ratio[r] = rr.worker_med / rr.socket_med;
    pmed[r] = rr.ping_med;
    imed[r] = rr.inline_med;
  }
  msb_progress("worker: %d clients x %d requests, batched and unbatched "
               "(%d us per call)",
               CLIENTS, per_client, FIXED_US);
  for (int r = 0; ok && r < reps; r++) { /* ABBA */
    double unused = 0;
    if (r % 2 == 0)
      ok = (brps[r] = throughput(&d, "8", per_client, &mb[r])) > 0 &&
           (urps[r] = throughput(&d, "1", per_client, &unused)) > 0;
    else
      ok = (urps[r] = throughput(&d, "1", per_client, &unused)) > 0 &&
           (brps[r] = throughput(&d, "8", per_client, &mb[r])) > 0;
  }
  double pss_with = -1, pss_sep = -1;
#ifdef MSB_WORKER_SPEECH
  char pcm[96];
  (void)snprintf(pcm, sizeof(pcm), "%s/utterance.pcm", d.path);
  int16_t *samples = NULL;
  size_t n = 0;
  if (ok && access(SPEECH_MODEL_DIR "/en-us.lm.bin", R_OK) == 0 &&
      speech_synthesize("the quick brown fox jumps over the lazy dog", &samples,
                        &n) == 0) {
    FILE *f = fopen(pcm, "wb");
    ok = f != NULL && fwrite(samples, 2, n, f) == n;
    if (f != NULL)
      ok = fclose(f) == 0 && ok;
    free(samples);
    /* Each repetition loads the model four times: at most 3 of them. */
    const int preps = reps < 3 ? reps : 3;
    double pw[3], ps[3];
    msb_progress("worker: %d x PSS of a worker + %d clients vs %d separate "
                 "pocketsphinx processes",
                 preps, PSS_CLIENTS, PSS_CLIENTS);
    for (int r = 0; ok && r < preps; r++)
      ok = measure_pss(o, &d, pcm, &pw[r], &ps[r]) == 0;
    if (ok) {
      pss_with = msb_median(pw, preps);
      pss_sep = msb_median(ps, preps);
    }
    unlink(pcm);
  } else {
    msb_progress("worker: pocketsphinx or espeak-ng missing: no PSS figures");
  }
#endif
  unlink(d.log);
  rmdir(d.path);
  if (!ok) {
    free(v);
    return -1;
  }

  double rtt = msb_median(wmed, reps), p99 = msb_median(wp99, reps);
  double ping = msb_median(pmed, reps), inl = msb_median(imed, reps);
  double sock = msb_median(smed, reps), rr = msb_median(ratio, reps);
  double b = msb_median(brps, reps), u = msb_median(urps, reps);
  double mean_batch = msb_median(mb, reps);
  double reduction = pss_sep > 0 ? 1 - pss_with / pss_sep : 0;
  free(v);
  int ok_rtt = rr <= RTT_RATIO_TARGET, ok_batch = mean_batch > 1,
      ok_tp = b >= u, ok_mem = pss_sep > 0 && reduction >= MEMORY_TARGET;

  printf("\n== Model worker: %d KiB round trip, %d clients, %d processes' "
         "PSS ==\n",
         PAYLOAD / 1024, CLIENTS, PSS_CLIENTS + 1);
  printf("raw Unix socket round trip (floor)  %9.1f us median\n", sock);
  printf("client -> worker -> client (echo)   %9.1f us median, %.1f us p99\n",
         rtt, p99);
  printf("the same, tensors inline            %9.1f us median\n", inl);
  printf("client -> worker ping (no model)    %9.1f us median\n", ping);
  printf("ratio vs raw socket                 %9.2fx    %s (<= %.0fx)\n", rr,
         msb_pass(ok_rtt), RTT_RATIO_TARGET);
  printf("%d clients, max batch 8             %9.0f requests/s\n", CLIENTS, b);
  printf("%d clients, max batch 1             %9.0f requests/s  %s "
         "(batched >= unbatched)\n",
         CLIENTS, u, msb_pass(ok_tp));
  printf("mean batch, %d clients               %9.2f      %s (> 1)\n", CLIENTS,
         mean_batch, msb_pass(ok_batch));
  if (pss_sep > 0) {
    printf("PSS, worker + %d clients            %9.1f MB\n", PSS_CLIENTS,
           pss_with / 1e6);
    printf("PSS, %d separate processes           %9.1f MB\n", PSS_CLIENTS,
           pss_sep / 1e6);
    printf("memory reduction                    %9.1f %%    %s (>= %.0f%%)\n",
           100 * reduction, msb_pass(ok_mem), 100 * MEMORY_TARGET);
  } else {
    printf("memory reduction: not measured (pocketsphinx missing)\n");
  }
  cJSON *j = cJSON_AddObjectToObject(root, "worker");
  cJSON_AddNumberToObject(j, "clients", CLIENTS);
  cJSON_AddNumberToObject(j, "requests", (double)count);
  cJSON_AddNumberToObject(j, "rtt_us_median", rtt);
  cJSON_AddNumberToObject(j, "rtt_us_p99", p99);
  cJSON_AddNumberToObject(j, "socket_rtt_us_median", sock);
  cJSON_AddNumberToObject(j, "ping_rtt_us_median", ping);
  cJSON_AddNumberToObject(j, "inline_rtt_us_median", inl);
  cJSON_AddNumberToObject(j, "rtt_ratio_vs_socket", rr);
  cJSON_AddNumberToObject(j, "batched_rps", b);
  cJSON_AddNumberToObject(j, "unbatched_rps", u);
  cJSON_AddNumberToObject(j, "mean_batch", mean_batch);
  cJSON_AddNumberToObject(j, "pss_bytes_with_worker", pss_with);
  cJSON_AddNumberToObject(j, "pss_bytes_separate", pss_sep);
  cJSON_AddNumberToObject(j, "memory_reduction", reduction);
  return ok_rtt && ok_batch && ok_tp && (ok_mem || pss_sep <= 0) ? MSB_ALL_PASS
                                                                 : MSB_MISSED;
}
