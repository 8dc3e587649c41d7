/* The peer process of test_channel (POSIX): one role per run, chosen by
 * argv, talking to the test over stdout (one "ready" line once attached,
 * one result line at the end).
 *
 *   channel_peer sub   DIR NAME COUNT SLOW_US   raw u64 sequence 0..COUNT-1
 *                      (or fewer under drop-oldest): checks order, prints
 *                      "ok <received> <dropped> <last>"
 *   channel_peer subt  DIR NAME COUNT           tensor messages: each
 *                      tensor's bytes and user bytes carry its number
 *   channel_peer uv    DIR NAME COUNT           like sub, driven by a libuv
 *                      loop through ms_channel_recv_start()
 *   channel_peer prod  DIR NAME                 producer of tensors, sends
 *                      until killed (prints "ready" after creating)
 *   channel_peer idle  DIR NAME                 waits 1 s for a message that
 *                      never comes; prints "ok <cpu percent> <rc>"
 *   channel_peer churn DIR NAME                 creates and closes a large
 *                      ring in a loop until killed (prints "ready" first):
 *                      most of its time is spent inside ms_channel_create
 */
#include "modelshare.h"

#include <uv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static ms_shm_t *shm;

static void die(const char *what, int rc) {
  printf("fail %s %s %s\n", what, ms_err_name(rc), ms_channel_errmsg(NULL));
  fflush(stdout);
  exit(1);
}

static ms_channel_t *open_sub(const char *name) {
  ms_channel_t *ch = NULL;
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  o.spin_us = 20;
  int rc = ms_channel_open(shm, name, &o, &ch);
  if (rc != 0)
    die("open", rc);
  printf("ready\n");
  fflush(stdout);
  return ch;
}

/* The tensor pattern: COUNT-th tensor holds u64 i everywhere. */
static int check_tensor(ms_tensor_t *t, uint64_t i) {
  const uint64_t *p = ms_tensor_data(t);
  size_t n = ms_tensor_nbytes(t) / 8;
  for (size_t k = 0; k < n; k++)
    if (p[k] != i)
      return 0;
  return 1;
}

static int run_sub(const char *name, uint64_t count, unsigned slow_us,
                   int tensors) {
  ms_channel_t *ch = open_sub(name);
  uint64_t received = 0, expect = 0, last = UINT64_MAX;
  for (;;) {
    uint64_t v = 0;
    size_t n = 0;
    ms_tensor_t *t = NULL;
    int rc = tensors
                 ? ms_channel_recv_tensor(ch, 0, 30000, &t, &v, sizeof(v), &n)
                 : ms_channel_recv(ch, &v, sizeof(v), &n, 30000);
    if (rc == MS_EPIPE)
      break;
    if (rc != 0) {
      printf("fail recv %s %s\n", ms_err_name(rc), ms_channel_errmsg(ch));
      return 1;
    }
    if (n != sizeof(v) || (last != UINT64_MAX && v <= last) || v < expect ||
        (tensors && (t == NULL || !check_tensor(t, v)))) {
      printf("fail order got %llu expected >= %llu\n", (unsigned long long)v,
             (unsigned long long)expect);
      return 1;
    }
    ms_tensor_release(t);
    last = v;
    expect = v + 1;
    received++;
    if (slow_us > 0)
      usleep(slow_us);
    if (received == count)
      break;
  }
  char *json = NULL;
  unsigned long long dropped = 0;
  if (ms_channel_stats_json(ch, &json) == 0) {
    const char *d = strstr(json, "\"dropped\":");
    if (d != NULL)
      dropped = strtoull(d + 10, NULL, 10);
    ms_free(json);
  }
  printf("ok %llu %llu %llu\n", (unsigned long long)received, dropped,
         (unsigned long long)last);
  fflush(stdout);
  ms_channel_close(ch);
  return 0;
}

typedef struct uv_state {
  uint64_t count, received, expect;
  int failed;
} uv_state;

static void on_ready(ms_channel_t *ch, void *user) {
  uv_state *s = user;
  for (;;) {
    uint64_t v = 0;
    size_t n = 0;
    int rc = ms_channel_recv(ch, &v, sizeof(v), &n, 0);
    if (rc == MS_ETIMEDOUT)
      return;
    if (rc != 0 || v != s->expect) {
      s->failed = rc != 0 ? rc : -1000;
      (void)ms_channel_recv_stop(ch);
      return;
    }
    s->expect++;
    if (++s->received == s->count) {
      (void)ms_channel_recv_stop(ch);
      return;
    }
  }
}

static int run_uv(const char *name, uint64_t count) {
  ms_channel_t *ch = open_sub(name);
  uv_loop_t loop;
  uv_loop_init(&loop);
  uv_state s = {count, 0, 0, 0};
  int rc = ms_channel_recv_start(ch, &loop, on_ready, &s);
  if (rc != 0)
    die("recv_start", rc);
  uv_run(&loop, UV_RUN_DEFAULT); /* ends when the poll handle is closed */
  uv_loop_close(&loop);
  printf("%s %llu %d 0\n", s.failed == 0 ? "ok" : "fail",
         (unsigned long long)s.received, s.failed);
  fflush(stdout);
  ms_channel_close(ch);
  return s.failed != 0;
}

static int run_prod(const char *name) {
  ms_channel_t *ch = NULL;
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  o.capacity = 64;
  int rc = ms_channel_create(shm, name, &o, &ch);
  if (rc != 0)
    die("create", rc);
  printf("ready\n");
  fflush(stdout);
  for (uint64_t i = 0; i < UINT64_MAX; i++) {
    int64_t shape[1] = {512};
    ms_tensor_t *t = NULL;
    rc = ms_tensor_alloc(shm, MS_DTYPE_UINT64, 1, shape, NULL, &t);
    if (rc != 0)
      die("alloc", rc);
    uint64_t *p = ms_tensor_data(t);
    for (int k = 0; k < 512; k++)
      p[k] = i;
    rc = ms_channel_send_tensor(ch, t, &i, sizeof(i), MS_CHANNEL_FOREVER);
    ms_tensor_release(t); /* the channel keeps its own reference */
    if (rc != 0)
      die("send", rc);
  }
  return 0; /* not reached: it runs until killed */
}

static int run_churn(const char *name) {
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  o.capacity = 1u << 16; /* 64 Ki slots of 576 bytes: ~36 MiB to back */
  o.payload_bytes = 512;
  printf("ready\n");
  fflush(stdout);
  for (;;) {
    ms_channel_t *ch = NULL;
    int rc = ms_channel_create(shm, name, &o, &ch);
    if (rc != 0)
      die("create", rc);
    ms_channel_close(ch);
  }
  return 0; /* not reached: it runs until killed */
}

static double cpu_seconds(void) {
  FILE *f = fopen("/proc/self/stat", "r");
  char buf[1024];
  size_t n = f != NULL ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
  if (f != NULL)
    fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')'); /* fields after the command name */
  unsigned long long ut = 0, st = 0;
  if (p == NULL || sscanf(p + 2,
                          "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu "
                          "%llu",
                          &ut, &st) != 2)
    return -1;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static int run_idle(const char *name) {
  ms_channel_t *ch = open_sub(name);
  double c0 = cpu_seconds();
  uint64_t t0 = uv_hrtime();
  char b[8];
  size_t n = 0;
  int rc = ms_channel_recv(ch, b, sizeof(b), &n, 1000);
  double wall = (double)(uv_hrtime() - t0) / 1e9;
  double c1 = cpu_seconds();
  printf("ok %.3f %d 0\n", c0 < 0 || c1 < 0 ? 100.0 : 100 * (c1 - c0) / wall,
         rc);
  fflush(stdout);
  ms_channel_close(ch);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 4)
    return 2;
  setvbuf(stdout, NULL, _IOLBF, 0);
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.dir = argv[2];
  o.prefix = "chp-";
  int rc = ms_shm_create(&o, &shm);
  if (rc != 0)
    die("shm", rc);
  const char *role = argv[1], *name = argv[3];
  uint64_t count = argc > 4 ? strtoull(argv[4], NULL, 10) : 0;
  unsigned slow = argc > 5 ? (unsigned)strtoul(argv[5], NULL, 10) : 0;
  if (strcmp(role, "sub") == 0)
    rc = run_sub(name, count, slow, 0);
  else if (strcmp(role, "subt") == 0)
    rc = run_sub(name, count, slow, 1);
  else if (strcmp(role, "uv") == 0)
    rc = run_uv(name, count);
  else if (strcmp(role, "prod") == 0)
    rc = run_prod(name);
  else if (strcmp(role, "idle") == 0)
    rc = run_idle(name);
  else if (strcmp(role, "churn") == 0)
    rc = run_churn(name);
  else
    rc = 2;
  if (ms_shm_destroy(shm) != 0)
    rc = 1;
  return rc;
}
