/* The channel scenario: one-way hand-off latency between two processes
 * through the descriptor channel, spinning and blocked, against two raw
 * baselines measured in the same run (two processes ping-ponging a shared
 * word by pure spinning, and by a bare futex); the CPU a waiting
 * subscriber uses; and the system calls the channel makes per message
 * while the receiver spins (its own `wakes` counters).  The peer is this
 * binary started with --channel-peer.  Also the consumer side of the shm
 * scenario's channel cycle (msb_channel_cycle_peer). */
#define _GNU_SOURCE /* sched_getcpu */
#include "bench.h"

#include <uv.h>

#include <sched.h>

#include <linux/futex.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Targets (issue 12). */
#define SPIN_TARGET_US 0.5
#define BLOCKED_VS_FUTEX 1.2
#define IDLE_TARGET_PERCENT 1.0

#define DEFAULT_SPIN_US 20 /* MS_CHANNEL_OPTIONS_INIT's */
/* "Spinning": a window no preemption of the peer outlasts in practice. */
#define SPIN_LONG_US 100000

static ms_shm_t *open_shm(void) {
  ms_shm_t *shm = NULL;
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.open_cache = 256;
  return ms_shm_create(&o, &shm) == 0 ? shm : NULL;
}

static uint64_t wakes_of(ms_channel_t *ch) {
  char *json = NULL;
  uint64_t w = 0;
  if (ms_channel_stats_json(ch, &json) == 0) {
    cJSON *j = cJSON_Parse(json);
    cJSON *v = cJSON_GetObjectItem(j, "wakes");
    w = cJSON_IsNumber(v) ? (uint64_t)v->valuedouble : 0;
    cJSON_Delete(j);
    ms_free(json);
  }
  return w;
}

static ms_channel_t *create_ch(ms_shm_t *shm, const char *name,
                               uint32_t spin_us) {
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  o.capacity = 64;
  o.spin_us = spin_us;
  ms_channel_t *ch = NULL;
  return ms_channel_create(shm, name, &o, &ch) == 0 ? ch : NULL;
}

static ms_channel_t *open_ch(ms_shm_t *shm, const char *name,
                             uint32_t spin_us) {
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  o.spin_us = spin_us;
  ms_channel_t *ch = NULL;
  for (int i = 0; i < 5000; i++) { /* the other side may not be there yet */
    if (ms_channel_open(shm, name, &o, &ch) == 0)
      return ch;
    usleep(1000);
  }
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Peer side (--channel-peer ...)                                            */
/* ------------------------------------------------------------------------ */

/* pong PING PONG SPIN_US COUNT: echoes COUNT messages, prints its wakes. */
static int peer_pong(ms_shm_t *shm, char **argv) {
  uint32_t spin = (uint32_t)strtoul(argv[4], NULL, 10);
  uint64_t count = strtoull(argv[5], NULL, 10);
  ms_channel_t *out = create_ch(shm, argv[3], spin);
  ms_channel_t *in = out != NULL ? open_ch(shm, argv[2], spin) : NULL;
  if (in == NULL)
    return 1;
  printf("ready\n");
  fflush(stdout);
  for (uint64_t i = 0; i < count; i++) {
    uint64_t v = 0;
    size_t n = 0;
    if (ms_channel_recv(in, &v, sizeof(v), &n, 60000) != 0 ||
        ms_channel_send(out, &v, sizeof(v), 60000) != 0)
      return 1;
  }
  printf("%llu\n", (unsigned long long)(wakes_of(in) + wakes_of(out)));
  fflush(stdout);
  (void)ms_channel_flush(out, 10000);
  ms_channel_close(in);
  ms_channel_close(out);
  return 0;
}

/* idle NAME: waits for a message that never comes (the parent measures). */
static int peer_idle(ms_shm_t *shm, char **argv) {
  ms_channel_t *in = open_ch(shm, argv[2], DEFAULT_SPIN_US);
  if (in == NULL)
    return 1;
  printf("ready\n");
  fflush(stdout);
  char b[8];
  size_t n = 0;
  int rc = ms_channel_recv(in, b, sizeof(b), &n, 1500);
  ms_channel_close(in);
  return rc == MS_ETIMEDOUT || rc == MS_EPIPE ? 0 : 1;
}

int msb_channel_peer_main(int argc, char **argv) {
  ms_shm_t *shm = open_shm();
  if (shm == NULL || argc < 3)
    return 1;
  int rc = 1;
  if (strcmp(argv[1], "pong") == 0 && argc >= 6)
    rc = peer_pong(shm, argv);
  else if (strcmp(argv[1], "idle") == 0)
    rc = peer_idle(shm, argv);
  return ms_shm_destroy(shm) == 0 ? rc : 1;
}

int msb_cpu(void) { return sched_getcpu(); }

/* The shm scenario's consumer: "chan NAME FRAMES": receives FRAMES tensors
 * on channel NAME, reads every byte of each and acknowledges it on NAME-ack
 * (an msb_chan_ack), all without the pipe.  Prints "<frames> <sum>". */
int msb_channel_cycle_peer(ms_shm_t *shm, const char *args) {
  char name[64], ack_name[80];
  unsigned long long frames = 0;
  if (sscanf(args, "%63s %llu", name, &frames) != 2)
    return 6;
  (void)snprintf(ack_name, sizeof(ack_name), "%s-ack", name);
  /* NAME exists already: attached before "ready", we miss no frame; the
   * producer attaches to ack before it sends the first one. */
  ms_channel_t *in = open_ch(shm, name, DEFAULT_SPIN_US);
  ms_channel_t *ack =
      in != NULL ? create_ch(shm, ack_name, DEFAULT_SPIN_US) : NULL;
  if (ack == NULL)
    return 7;
  printf("ready\n");
  fflush(stdout);
  uint64_t sum = 0;
  for (unsigned long long f = 0; f < frames; f++) {
    ms_tensor_t *t = NULL;
    size_t n = 0;
    if (ms_channel_recv_tensor(in, 0, 60000, &t, NULL, 0, &n) != 0 || t == NULL)
      return 8;
    msb_chan_ack a = {f, uv_hrtime(), 0, 0, 0};
    sum += msb_read_all(ms_tensor_data(t), ms_tensor_nbytes(t));
    a.read_ns = uv_hrtime();
    a.cpu = msb_cpu();
    ms_tensor_release(t);
    if (ms_channel_send(ack, &a, sizeof(a), 60000) != 0)
      return 9;
  }
  (void)ms_channel_flush(ack, 10000);
  ms_channel_close(in);
  ms_channel_close(ack);
  printf("%llu %llu\n", frames, (unsigned long long)sum);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Producer side                                                             */
/* ------------------------------------------------------------------------ */

typedef struct child {
  pid_t pid;
  FILE *out;
} child;

static child start(const char *self, const char *const *args) {
  child c = {-1, NULL};
  int fds[2];
  if (pipe(fds) != 0)
    return c;
  fflush(NULL);
  c.pid = fork();
  if (c.pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    char *argv[8] = {0};
    argv[0] = (char *)self;
    argv[1] = (char *)"--channel-peer";
    for (int i = 0; args[i] != NULL && i < 5; i++)
      argv[2 + i] = (char *)args[i];
    execv(self, argv);
    _exit(127);
  }
  close(fds[1]);
  c.out = fdopen(fds[0], "r");
  return c;
}

static int finish(child *c) {
  int st = 0;
  fclose(c->out);
  waitpid(c->pid, &st, 0);
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static int read_line(child *c, char *buf, size_t len) {
  if (fgets(buf, (int)len, c->out) == NULL)
    return -1;
  buf[strcspn(buf, "\n")] = '\0';
  return 0;
}

/* Channel ping-pong: median one-way microseconds; *syscalls gets the wake
 * system calls of both sides per message.  -1 on failure. */
static int raw_samples(int use_futex, int count, double *v);

/* With fut non-NULL, the bare futex baseline is measured in between, in
 * FUT_CHUNKS chunks of count / FUT_CHUNKS trips, so that both see the
 * same machine (on a shared machine, minutes apart they do not). */
#define FUT_CHUNKS 6
static double channel_pingpong(const char *self, ms_shm_t *shm,
                               uint32_t spin_us, int count, double *syscalls,
                               double *fut) {
  char ping[32], pong[32], spin[16], cnt[16];
  (void)snprintf(ping, sizeof(ping), "msb-ping-%d", (int)getpid());
  (void)snprintf(pong, sizeof(pong), "msb-pong-%d", (int)getpid());
  (void)snprintf(spin, sizeof(spin), "%u", spin_us);
  (void)snprintf(cnt, sizeof(cnt), "%d", count + 100);
  ms_channel_t *out = create_ch(shm, ping, spin_us);
  if (out == NULL)
    return -1;
  const char *args[] = {"pong", ping, pong, spin, cnt, NULL};
  child c = start(self, args);
  char line[64];
  ms_channel_t *in = NULL;
  if (read_line(&c, line, sizeof(line)) != 0 || strcmp(line, "ready") != 0 ||
      (in = open_ch(shm, pong, spin_us)) == NULL) {
    ms_channel_close(out);
    finish(&c);
    return -1;
  }
  double *v = calloc((size_t)count, sizeof(double));
  int ok = v != NULL;
  const int chunk = count / FUT_CHUNKS;
  for (int i = 0; ok && i < count + 100; i++) { /* 100 warm-up trips */
    if (fut != NULL && i >= 100 && (i - 100) % chunk == 0 &&
        (i - 100) / chunk < FUT_CHUNKS)
      ok = raw_samples(1, chunk, fut + (i - 100) / chunk * chunk) == 0;
    uint64_t x = (uint64_t)i, y = 0;
    size_t n = 0;
    uint64_t t0 = uv_hrtime();
    ok = ms_channel_send(out, &x, sizeof(x), 60000) == 0 &&
         ms_channel_recv(in, &y, sizeof(y), &n, 60000) == 0 && y == x;
    if (i >= 100)
      v[i - 100] = (double)(uv_hrtime() - t0) / 2e3;
  }
  uint64_t theirs = 0;
  unsigned long long w = 0;
  if (ok && read_line(&c, line, sizeof(line)) == 0 &&
      sscanf(line, "%llu", &w) == 1)
    theirs = w;
  else
    ok = 0;
  *syscalls =
      (double)(theirs + wakes_of(in) + wakes_of(out)) / (2.0 * (count + 100));
  ms_channel_close(in);
  ms_channel_close(out);
  ok = finish(&c) == 0 && ok;
  double med = ok ? msb_median(v, count) : -1;
  free(v);
  return med;
}

/* Raw baselines: two processes (fork) ping-ponging words in a shared page,
 * by spinning (use_futex 0) or by a bare futex wait/wake (1). */
static long futex(_Atomic uint32_t *w, int op, uint32_t val) {
  return syscall(SYS_futex, (uint32_t *)w, op, val, NULL, NULL, 0);
}

static void await(_Atomic uint32_t *w, uint32_t want, int use_futex) {
  uint32_t cur;
  while ((cur = atomic_load(w)) != want) {
    if (use_futex)
      (void)futex(w, FUTEX_WAIT, cur);
#if defined(__x86_64__) || defined(__i386__)
    else
      __builtin_ia32_pause();
#endif
  }
}

static void post(_Atomic uint32_t *w, uint32_t v, int use_futex) {
  atomic_store(w, v);
  if (use_futex)
    (void)futex(w, FUTEX_WAKE, 1);
}

/* count one-way samples (us) into v; 0 or -1. */
static int raw_samples(int use_futex, int count, double *v) {
  _Atomic uint32_t *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED)
    return -1;
  _Atomic uint32_t *ping = page, *pong = page + 16; /* own cache lines */
  atomic_store(ping, 0);
  atomic_store(pong, 0);
  const int total = count + 100;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    for (uint32_t i = 1; i <= (uint32_t)total; i++) {
      await(ping, i, use_futex);
      post(pong, i, use_futex);
    }
    _exit(0);
  }
  for (uint32_t i = 1; i <= (uint32_t)total; i++) {
    uint64_t t0 = uv_hrtime();
    post(ping, i, use_futex);
    await(pong, i, use_futex);
    if (i > 100)
      v[i - 101] = (double)(uv_hrtime() - t0) / 2e3;
  }
  int st = 0;
  waitpid(pid, &st, 0);
  munmap(page, 4096);
  return pid > 0 ? 0 : -1;
}

static double raw_pingpong(int use_futex, int count) {
  double *v = calloc((size_t)count, sizeof(double));
  double med = v != NULL && raw_samples(use_futex, count, v) == 0
                   ? msb_median(v, count)
                   : -1;
  free(v);
  return med;
}

/* The shm scenario's library-free bound on a two-process cycle: the same
 * work as its pooled cycle (write n bytes into shared memory, hand over,
 * the other process reads every byte and answers; one frame in flight)
 * between this process and a forked child, through a pre-faulted shared
 * anonymous mapping and two shared words, by pure spinning (use_futex 0)
 * or by a bare futex (1).  No region, descriptor, channel or pool: what
 * two processes on this machine cost whatever library they use.  Seconds
 * per frame (after two warm-up frames), or -1. */
double msb_two_process_cycle(const void *src, size_t n, int frames,
                             int use_futex) {
  const size_t map = n + 4096;
  unsigned char *buf = mmap(NULL, map, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (buf == MAP_FAILED)
    return -1;
  _Atomic uint32_t *ping = (_Atomic uint32_t *)(void *)(buf + n),
                   *pong = ping + 16; /* own cache lines */
  atomic_store(ping, 0);
  atomic_store(pong, 0);
  const uint32_t total = (uint32_t)frames + 2;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    volatile uint64_t sum = 0;
    for (uint32_t i = 1; i <= total; i++) {
      await(ping, i, use_futex);
      sum += msb_read_all(buf, n);
      post(pong, i, use_futex);
    }
    _exit(0);
  }
  uint64_t t0 = 0;
  for (uint32_t i = 1; pid > 0 && i <= total; i++) {
    if (i == 3)
      t0 = uv_hrtime();
    memcpy(buf, src, n);
    post(ping, i, use_futex);
    await(pong, i, use_futex);
  }
  double per = pid > 0 ? (double)(uv_hrtime() - t0) / 1e9 / frames : -1;
  int st = 0;
  if (pid > 0 && (waitpid(pid, &st, 0) != pid || !WIFEXITED(st)))
    per = -1;
  munmap(buf, map);
  return per;
}

/* CPU% of process pid over `seconds`, from /proc/<pid>/stat. */
static double cpu_ticks(pid_t pid) {
  char path[64], buf[1024];
  (void)snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  size_t n = f != NULL ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
  if (f != NULL)
    fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')');
  unsigned long long ut = 0, st = 0;
  if (p == NULL || sscanf(p + 2,
                          "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu "
                          "%llu",
                          &ut, &st) != 2)
    return -1;
  return (double)(ut + st);
}

static double idle_cpu(const char *self, ms_shm_t *shm) {
  char name[32];
  (void)snprintf(name, sizeof(name), "msb-idle-%d", (int)getpid());
  ms_channel_t *ch = create_ch(shm, name, DEFAULT_SPIN_US);
  if (ch == NULL)
    return -1;
  const char *args[] = {"idle", name, NULL};
  child c = start(self, args);
  char line[64];
  double pct = -1;
  if (read_line(&c, line, sizeof(line)) == 0 && strcmp(line, "ready") == 0) {
    usleep(100000); /* in its wait by now */
    double a = cpu_ticks(c.pid);
    uint64_t t0 = uv_hrtime();
    usleep(1000000);
    double b = cpu_ticks(c.pid);
    double wall = (double)(uv_hrtime() - t0) / 1e9;
    if (a >= 0 && b >= 0)
      pct = 100.0 * (b - a) / (double)sysconf(_SC_CLK_TCK) / wall;
  }
  ms_channel_close(ch);
  if (finish(&c) != 0)
    pct = -1;
  return pct;
}

int msb_channel(const msb_opts *o, cJSON *root) {
  const int spins = o->quick ? 2000 : 20000, blocks = o->quick ? 300 : 3000;
  msb_progress("channel: one-way latency, %d spinning and %d blocked trips",
               spins, blocks);
  ms_shm_t *shm = open_shm();
  if (shm == NULL)
    return -1;
  double sys_spin = 0, sys_blocked = 0;
  double busy = raw_pingpong(0, spins);
  double *futv = calloc((size_t)blocks, sizeof(double));
  if (futv == NULL)
    return -1;
  double sys_default = 0;
  double spin =
      channel_pingpong(o->self, shm, SPIN_LONG_US, spins, &sys_spin, NULL);
  /* The default window: a round trip takes well under it, but a peer that
   * is preempted for longer sends the receiver to sleep (reported). */
  double spin_default = channel_pingpong(o->self, shm, DEFAULT_SPIN_US, spins,
                                         &sys_default, NULL);
  double blocked =
      channel_pingpong(o->self, shm, 0, blocks, &sys_blocked, futv);
  const int nfut = blocks / FUT_CHUNKS * FUT_CHUNKS;
  double fut = blocked >= 0 ? msb_median(futv, nfut) : -1;
  free(futv);
  msb_progress("channel: idle subscriber CPU over 1 s");
  double idle = idle_cpu(o->self, shm);
  (void)ms_shm_destroy(shm);
  if (busy < 0 || fut < 0 || spin < 0 || spin_default < 0 || blocked < 0 ||
      idle < 0)
    return -1;

  int ok_spin = spin <= SPIN_TARGET_US;
  int ok_blocked = blocked <= BLOCKED_VS_FUTEX * fut;
  int ok_idle = idle <= IDLE_TARGET_PERCENT;
  int ok_sys = sys_spin == 0;
  printf("\n== Descriptor channel: one-way hand-off between two processes "
         "(median us) ==\n");
  printf("busy-poll floor (shared word)     %8.3f us\n", busy);
  printf("channel, receiver spinning        %8.3f us  %s (<= %.1f us)\n", spin,
         msb_pass(ok_spin), SPIN_TARGET_US);
  printf("bare futex (shared word)          %8.3f us\n", fut);
  printf("channel, receiver asleep          %8.3f us  %s (<= %.1fx futex: "
         "%.2fx)\n",
         blocked, msb_pass(ok_blocked), BLOCKED_VS_FUTEX, blocked / fut);
  printf("idle subscriber CPU over 1 s      %8.2f %%   %s (<= %.0f%%)\n", idle,
         msb_pass(ok_idle), IDLE_TARGET_PERCENT);
  printf("system calls per message, spinning %7.4f     %s (0)\n", sys_spin,
         msb_pass(ok_sys));
  printf("(default %u us spin window: %.3f us, %.4f system calls per "
         "message; asleep: %.3f)\n",
         DEFAULT_SPIN_US, spin_default, sys_default, sys_blocked);
  cJSON *j = cJSON_AddObjectToObject(root, "channel");
  cJSON_AddNumberToObject(j, "spin_one_way_us_median", spin);
  cJSON_AddNumberToObject(j, "busy_poll_one_way_us_median", busy);
  cJSON_AddNumberToObject(j, "blocked_one_way_us_median", blocked);
  cJSON_AddNumberToObject(j, "futex_one_way_us_median", fut);
  cJSON_AddNumberToObject(j, "idle_cpu_percent", idle);
  cJSON_AddNumberToObject(j, "syscalls_per_message_spinning", sys_spin);
  cJSON_AddNumberToObject(j, "syscalls_per_message_blocked", sys_blocked);
  cJSON_AddNumberToObject(j, "default_spin_one_way_us_median", spin_default);
  cJSON_AddNumberToObject(j, "syscalls_per_message_default_spin", sys_default);
  return ok_spin && ok_blocked && ok_idle && ok_sys ? MSB_ALL_PASS : MSB_MISSED;
}
