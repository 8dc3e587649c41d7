/* Running the modelshare-worker program (and other programs) from the
 * worker suites: stdout and stderr go to files in a scratch directory, so
 * that a test reads them after the process exited without any pipe
 * deadlock, and every wait has a generous limit after which the process is
 * killed and the test fails (a hang is a failure, not a timing target). */
#ifndef MS_TEST_WORKER_BIN_PROC_H
#define MS_TEST_WORKER_BIN_PROC_H

#include "test_util.h"

#include <cjson/cJSON.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define WP_WAIT_S 120 /* any process of these suites: well above need */

typedef struct wp {
  pid_t pid;
  char out[256], err[256]; /* where its stdout and stderr go */
} wp;

/* Starts argv (NULL-terminated) with stdout/stderr to DIR/TAG.out/.err. */
static inline wp wp_start(const char *dir, const char *tag,
                          char *const argv[]) {
  wp p;
  (void)snprintf(p.out, sizeof(p.out), "%s/%s.out", dir, tag);
  (void)snprintf(p.err, sizeof(p.err), "%s/%s.err", dir, tag);
  fflush(NULL);
  p.pid = fork();
  assert_true(p.pid >= 0);
  if (p.pid == 0) {
    int o = open(p.out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int e = open(p.err, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
      _exit(126);
    execv(argv[0], argv);
    _exit(127);
  }
  return p;
}

/* Waits for p (signalling it first when sig != 0); returns its exit
 * status, or 128 + the signal that killed it.  Fails the test after
 * WP_WAIT_S seconds (and kills it). */
static inline int wp_wait(wp *p, int sig) {
  int st = 0;
  if (sig != 0)
    assert_int_equal(kill(p->pid, sig), 0);
  for (int i = 0; i < WP_WAIT_S * 100; i++) {
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    assert_true(r >= 0);
    if (r == p->pid)
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    usleep(10000);
  }
  kill(p->pid, SIGKILL);
  waitpid(p->pid, &st, 0);
  fail_msg("process %d did not exit within %d s", (int)p->pid, WP_WAIT_S);
  return -1;
}

static inline const char *wp_stderr(const wp *p);

/* wp_wait(), failing the test with p's stderr unless it exits with want. */
static inline void wp_expect(wp *p, int sig, int want) {
  int st = wp_wait(p, sig);
  if (st != want)
    fail_msg("process %d: status %d, not %d; its stderr:\n%s", (int)p->pid, st,
             want, wp_stderr(p));
}

/* The whole file as a NUL-terminated string (static buffer per slot). */
static inline const char *wp_slurp(const char *path, int slot) {
  static char buf[4][16384];
  FILE *f = fopen(path, "r");
  size_t n = f != NULL ? fread(buf[slot], 1, sizeof(buf[slot]) - 1, f) : 0;
  if (f != NULL)
    fclose(f);
  buf[slot][n] = '\0';
  return buf[slot];
}

static inline const char *wp_stdout(const wp *p) { return wp_slurp(p->out, 0); }
static inline const char *wp_stderr(const wp *p) { return wp_slurp(p->err, 1); }

/* Asserts that text contains needle, printing both when it does not. */
#define assert_contains(text, needle)                                          \
  do {                                                                         \
    const char *t_ = (text), *n_ = (needle);                                   \
    if (strstr(t_, n_) == NULL)                                                \
      fail_msg("expected \"%s\" in:\n%s", n_, t_);                             \
  } while (0)

/* A client of the worker at endpoint once it listens (it may still be
 * loading its model); fails the test after WP_WAIT_S seconds or if worker
 * exited first. */
static inline ms_client_t *wp_connect(const char *endpoint, wp *worker) {
  ms_client_options_t o = MS_CLIENT_OPTIONS_INIT;
  o.retry_attempts = 1;
  for (int i = 0; i < WP_WAIT_S * 20; i++) {
    ms_client_t *c = NULL;
    if (ms_client_connect(endpoint, &o, &c) == 0)
      return c;
    int st = 0;
    if (worker != NULL && waitpid(worker->pid, &st, WNOHANG) == worker->pid)
      fail_msg("the worker exited (status %d) before it listened:\n%s", st,
               wp_stderr(worker));
    usleep(50000);
  }
  fail_msg("no worker listens on %s after %d s", endpoint, WP_WAIT_S);
  return NULL;
}

/* A number of the worker's stats JSON (ms_worker_stats_json()'s keys),
 * fetched through client c. */
static inline double wp_stat(ms_client_t *c, const char *key) {
  char *json = NULL;
  int rc = ms_client_status_json(c, 60000, &json);
  if (rc != 0)
    fail_msg("status: %s (%s)", ms_err_name(rc), ms_client_errmsg(c));
  cJSON *j = cJSON_Parse(json);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
  if (!cJSON_IsNumber(v))
    fail_msg("no number \"%s\" in the worker's stats: %s", key, json);
  double d = v->valuedouble;
  cJSON_Delete(j);
  ms_free(json);
  return d;
}

/* mkdtemp under /tmp; rm -r of it (only files and one level of dirs). */
static inline void wp_mkdtemp(char *buf, size_t len) {
  (void)snprintf(buf, len, "/tmp/ms-wbin-XXXXXX");
  assert_non_null(mkdtemp(buf));
}

static inline void wp_rmtree(const char *dir) {
  char cmd[512];
  (void)snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

#endif
