/* The other process of the worker tests (POSIX):
 *   worker_peer worker ENDPOINT SHMDIR [INLINE:THREADS:MAXBATCH]
 *       serves tests/worker_models.h's models on ENDPOINT (shared memory in
 *       SHMDIR), prints "ready" once it listens, and on SIGTERM stops
 *       (draining) and exits 0;
 *   worker_peer loop ENDPOINT SHMDIR INLINE N SEED
 *       N random requests, each answer checked (see loop_client);
 *   worker_peer client ENDPOINT SHMDIR MODEL BYTE
 *       connects and runs MODEL on 4096 copies of BYTE; prints "sent"
 *       before the call and "ok" when the outputs check; exits 0 if so;
 *   worker_peer iclient ENDPOINT
 *       connects with inline tensors and pings: 0, or 4 if refused. */
#include "worker_models.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int serve(const char *ep, const char *dir, const char *cfg) {
  ms_shm_options_t so = MS_SHM_OPTIONS_INIT;
  so.dir = dir;
  so.prefix = "wp-";
  ms_shm_t *shm = NULL;
  ms_worker_t *w = NULL;
  if (ms_shm_create(&so, &shm) != 0)
    return 2;
  ms_worker_options_t o = MS_WORKER_OPTIONS_INIT;
  o.endpoint = ep;
  unsigned inl = 0, threads = 1, batch = 8;
  if (cfg != NULL && sscanf(cfg, "%u:%u:%u", &inl, &threads, &batch) != 3)
    return 64;
  o.flags = inl ? MS_WORKER_INLINE : 0;
  o.threads = threads;
  o.max_batch = batch;
  int rc = ms_worker_create(&o, NULL, shm, &w);
  if (rc == 0)
    rc = wm_add_all(w);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL); /* before any thread starts */
  if (rc == 0)
    rc = ms_worker_run(w);
  if (rc != 0) {
    fprintf(stderr, "worker_peer: %s: %s\n", ms_err_name(rc),
            ms_worker_errmsg(w));
    printf("error %s\n", ms_err_name(rc));
    fflush(stdout);
    ms_worker_destroy(w);
    ms_shm_destroy(shm);
    return 1;
  }
  printf("ready\n");
  fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  rc = ms_worker_stop(w);
  rc = rc != 0 ? rc : ms_worker_destroy(w);
  rc = rc != 0 ? rc : ms_shm_destroy(shm);
  return rc == 0 ? 0 : 3;
}

/* A client's shm: its regions ("wc-") in dir.  NULL if it failed. */
static ms_shm_t *client_shm(const char *dir) {
  ms_shm_options_t so = MS_SHM_OPTIONS_INIT;
  so.dir = dir;
  so.prefix = "wc-";
  ms_shm_t *shm = NULL;
  return ms_shm_create(&so, &shm) == 0 ? shm : NULL;
}

static int client(const char *ep, const char *dir, const char *model,
                  int byte) {
  ms_shm_t *shm = client_shm(dir);
  if (shm == NULL)
    return 2;
  ms_client_options_t co = MS_CLIENT_OPTIONS_INIT;
  co.shm = shm;
  ms_client_t *c = NULL;
  int rc = ms_client_connect(ep, &co, &c);
  if (rc != 0) {
    fprintf(stderr, "worker_peer: connect: %s\n", ms_client_errmsg(NULL));
    return 4;
  }
  int64_t n = 4096;
  ms_tensor_t *in = NULL, *out[4];
  size_t n_out = 4;
  if (ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, &n, NULL, &in) != 0)
    return 5;
  memset(ms_tensor_data(in), byte, (size_t)n);
  printf("sent\n");
  fflush(stdout);
  rc = ms_client_infer(c, model, &in, 1, MS_WAIT_FOREVER, out, &n_out);
  int ok =
      rc == 0 && n_out == 2 &&
      ((const uint8_t *)ms_tensor_data(out[0]))[4095] == wm_f((uint8_t)byte);
  if (rc == 0)
    for (size_t i = 0; i < n_out; i++)
      ms_tensor_release(out[i]);
  if (ok)
    printf("ok\n");
  fflush(stdout);
  ms_tensor_release(in);
  ms_client_close(c);
  return ms_shm_destroy(shm) == 0 && ok ? 0 : 6;
}

/* N requests of seeded random sizes and models; every answer must be its
 * own request's.  MS_EDISCONNECTED (the worker was killed) is counted and
 * the next call reconnects; any other error fails.  Prints "done OK
 * DISCONNECTED" and exits 0, or 1 on a wrong answer or error. */
static int loop_client(const char *ep, const char *dir, int inl, int n,
                       unsigned seed) {
  ms_shm_t *shm = client_shm(dir);
  if (shm == NULL)
    return 2;
  ms_client_options_t co = MS_CLIENT_OPTIONS_INIT;
  co.shm = shm;
  co.flags = inl ? MS_CLIENT_INLINE : 0;
  co.retry_attempts = 100;
  co.retry_backoff_ms = 10;
  co.retry_backoff_max_ms = 100;
  ms_client_t *c = NULL;
  int rc = ms_client_connect(ep, &co, &c);
  if (rc != 0) {
    fprintf(stderr, "worker_peer: connect: %s\n", ms_client_errmsg(NULL));
    return 4;
  }
  static const char *models[] = {"echo", "batch", "slow"};
  int ok = 0, disc = 0, bad = 0;
  for (int i = 0; i < n && !bad; i++) {
    int64_t len = 1 + (int64_t)(rand_r(&seed) % 20000);
    ms_tensor_t *in = NULL, *out[2];
    size_t n_out = 2;
    if (ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, &len, NULL, &in) != 0)
      return 5;
    uint8_t *p = ms_tensor_data(in);
    for (int64_t k = 0; k < len; k++)
      p[k] = (uint8_t)(rand_r(&seed) >> 5);
    const char *model = models[rand_r(&seed) % 3];
    if (model[0] == 's')
      p[0] = (uint8_t)(rand_r(&seed) % 5); /* up to 40 ms */
    rc = ms_client_infer(c, model, &in, 1, 60000, out, &n_out);
    if (rc == 0) {
      const uint8_t *q = ms_tensor_data(out[0]);
      int64_t sum = 0, got = 0;
      int same = n_out == 2 && (int64_t)ms_tensor_nbytes(out[0]) == len;
      for (int64_t k = 0; same && k < len; k++) {
        same = q[k] == wm_f(p[k]);
        sum += p[k];
      }
      if (same)
        memcpy(&got, ms_tensor_data(out[1]), sizeof(got));
      if (!same || got != sum) {
        fprintf(stderr, "worker_peer: request %d: wrong answer\n", i);
        bad = 1;
      }
      for (size_t k = 0; k < n_out; k++)
        ms_tensor_release(out[k]);
      ok++;
    } else if (rc == MS_EDISCONNECTED) {
      disc++;
    } else {
      fprintf(stderr, "worker_peer: request %d: %s: %s\n", i, ms_err_name(rc),
              ms_client_errmsg(c));
      bad = 1;
    }
    ms_tensor_release(in);
  }
  printf("done %d %d\n", ok, disc);
  fflush(stdout);
  ms_client_close(c);
  return ms_shm_destroy(shm) == 0 && !bad ? 0 : 1;
}

/* Connects with inline tensors only (no shared memory needed) and pings:
 * 0 if both work, 4 if the connection was refused. */
static int iclient(const char *ep) {
  ms_client_options_t co = MS_CLIENT_OPTIONS_INIT;
  co.flags = MS_CLIENT_INLINE;
  co.retry_attempts = 1;
  ms_client_t *c = NULL;
  int rc = ms_client_connect(ep, &co, &c);
  if (rc != 0) {
    fprintf(stderr, "worker_peer: connect: %s: %s\n", ms_err_name(rc),
            ms_client_errmsg(NULL));
    return 4;
  }
  rc = ms_client_ping(c, 10000);
  ms_client_close(c);
  return rc == 0 ? 0 : 5;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "iclient") == 0)
    return iclient(argv[2]);
  if ((argc == 4 || argc == 5) && strcmp(argv[1], "worker") == 0)
    return serve(argv[2], argv[3], argc == 5 ? argv[4] : NULL);
  if (argc == 7 && strcmp(argv[1], "loop") == 0)
    return loop_client(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]),
                       (unsigned)strtoul(argv[6], NULL, 10));
  if (argc == 6 && strcmp(argv[1], "client") == 0)
    return client(argv[2], argv[3], argv[4], atoi(argv[5]));
  fprintf(stderr, "usage: worker_peer worker EP DIR | client EP DIR MODEL B\n");
  return 64;
}
