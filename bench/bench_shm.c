/* Shared-memory scenarios, each against baselines measured in the same
 * run: heap memcpy+read (the floor), reading the consumer's own heap,
 * safetensors through a real pipe between two processes, and Python's
 * multiprocessing.shared_memory.  The consumer is a separate process (this
 * binary, started with --consumer). */
#include "bench.h"

#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define GIB (1024.0 * 1024.0 * 1024.0)
#define MAX_WINDOW 8

/* ------------------------------------------------------------------------ */
/* The consumer process.  One request per line on stdin, one reply line:    */
/*   open DESC  -> "<open ns> <read ns> <sum>"   open, read all, release    */
/*   heap N     -> "<read ns> <sum>"             read a pre-faulted buffer  */
/*   ser LEN\n<LEN bytes> -> "<ns> <sum>"        decode safetensors, read   */
/* ------------------------------------------------------------------------ */

/* Grows the consumer's buffer to n bytes, pre-faulted (so that neither the
 * heap read nor the pipe transfer pays first-touch faults in its timing). */
static unsigned char *grow(unsigned char *buf, size_t *cap, size_t n) {
  if (n <= *cap)
    return buf;
  free(buf);
  buf = malloc(n);
  if (buf == NULL) {
    fprintf(stderr, "modelshare-bench consumer: out of memory\n");
    exit(1);
  }
  memset(buf, 1, n);
  *cap = n;
  return buf;
}

/* The vision scenario's commands (defined above msb_vision): 0 or an exit
 * status; line NULL frees what they keep between frames. */
static int vision_peer(ms_shm_t *shm, const char *line);

int msb_consumer_main(void) {
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.open_cache = 256;
  ms_shm_t *shm = NULL;
  if (ms_shm_create(&o, &shm) != 0)
    return 1;
  char line[256];
  unsigned char *buf = NULL;
  size_t cap = 0;
  while (fgets(line, sizeof(line), stdin) != NULL) {
    line[strcspn(line, "\n")] = '\0';
    uint64_t t0 = uv_hrtime(), t1 = t0, sum = 0;
    if (strncmp(line, "open ", 5) == 0) {
      ms_tensor_t *t = NULL;
      if (ms_tensor_open(shm, line + 5, 0, &t) != 0)
        return 2;
      t1 = uv_hrtime();
      sum = msb_read_all(ms_tensor_data(t), ms_tensor_nbytes(t));
      uint64_t t2 = uv_hrtime();
      ms_tensor_release(t);
      printf("%llu %llu %llu\n", (unsigned long long)(t1 - t0),
             (unsigned long long)(t2 - t1), (unsigned long long)sum);
    } else if (strncmp(line, "heap ", 5) == 0) {
      size_t n = strtoull(line + 5, NULL, 10);
      /* Alternating with the cached shm read, each read sees data read
       * one request earlier: the same cache state for both. */
      buf = grow(buf, &cap, n);
      t0 = uv_hrtime();
      sum = msb_read_all(buf, n);
      printf("%llu %llu\n", (unsigned long long)(uv_hrtime() - t0),
             (unsigned long long)sum);
    } else if (strncmp(line, "ser ", 4) == 0) {
      size_t n = strtoull(line + 4, NULL, 10);
      buf = grow(buf, &cap, n);
      t0 = uv_hrtime(); /* the transfer is part of the cost */
      if (fread(buf, 1, n, stdin) != n)
        return 3;
      ms_tensor_t *t = NULL;
      if (ms_tensor_deserialize(NULL, buf, n, &t) != 0)
        return 4;
      sum = msb_read_all(ms_tensor_data(t), ms_tensor_nbytes(t));
      ms_tensor_release(t);
      printf("%llu %llu\n", (unsigned long long)(uv_hrtime() - t0),
             (unsigned long long)sum);
    } else if (strncmp(line, "chan ", 5) == 0) {
      int rc = msb_channel_cycle_peer(shm, line + 5);
      if (rc != 0)
        return rc;
    } else {
      int rc = vision_peer(shm, line);
      if (rc != 0)
        return rc;
    }
    fflush(stdout);
  }
  free(buf);
  (void)vision_peer(shm, NULL);
  return ms_shm_destroy(shm) == 0 ? 0 : 1;
}

/* ------------------------------------------------------------------------ */
/* Producer side                                                             */
/* ------------------------------------------------------------------------ */

typedef msb_peer peer;

int msb_peer_start(const char *self, int big_pipe, msb_peer *p) {
  int to[2], from[2];
  p->pid = -1;
  p->in = p->out = NULL;
  if (pipe(to) != 0)
    return -1;
  if (pipe(from) != 0) {
    close(to[0]), close(to[1]);
    return -1;
  }
#ifdef F_SETPIPE_SZ
  if (big_pipe)
    (void)fcntl(to[1], F_SETPIPE_SZ, 1 << 20);
#else
  (void)big_pipe;
#endif
  fflush(NULL);
  p->pid = fork();
  if (p->pid == 0) {
    dup2(to[0], 0);
    dup2(from[1], 1);
    close(to[0]), close(to[1]), close(from[0]), close(from[1]);
    execl(self, self, "--consumer", (char *)NULL);
    _exit(127);
  }
  close(to[0]);
  close(from[1]);
  p->in = fdopen(to[1], "w");
  p->out = fdopen(from[0], "r");
  return p->pid > 0 && p->in != NULL && p->out != NULL ? 0 : -1;
}

void msb_peer_stop(msb_peer *p) {
  fclose(p->in);
  fclose(p->out);
  int status;
  waitpid(p->pid, &status, 0);
}

/* The serialization baseline gets the largest pipe buffer allowed. */
static peer peer_start(const char *self) {
  peer p;
  if (msb_peer_start(self, 1, &p) != 0)
    exit(1);
  return p;
}

static void peer_stop(peer *p) { msb_peer_stop(p); }

/* Reads one reply line; returns its first number (and the second). */
static uint64_t peer_reply(peer *p, uint64_t *second) {
  char line[128];
  unsigned long long a = 0, b = 0;
  if (fgets(line, sizeof(line), p->out) == NULL ||
      sscanf(line, "%llu %llu", &a, &b) < 1) {
    fprintf(stderr, "modelshare-bench: the consumer process died\n");
    exit(1);
  }
  if (second != NULL)
    *second = b;
  return a;
}

static ms_tensor_t *alloc_bytes(ms_shm_t *shm, size_t n) {
  int64_t shape[1] = {(int64_t)n};
  ms_tensor_t *t = NULL;
  int rc = ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, "bench", &t);
  if (rc != 0) {
    fprintf(stderr, "modelshare-bench: ms_tensor_alloc: %s\n",
            ms_shm_errmsg(shm));
    exit(1);
  }
  return t;
}

/* Frames through shared memory: allocate, write, hand the descriptor over;
 * the consumer opens, reads every byte, releases and answers; then the
 * producer releases.  Up to `window` frames in flight.  Returns seconds per
 * frame; *open_ns gets the median consumer-side open time. */
static double stream_shm(peer *p, ms_shm_t *shm, const void *src, size_t n,
                         int window, int frames, double *open_ns) {
  ms_tensor_t *inflight[MAX_WINDOW] = {0};
  double *opens = calloc((size_t)frames, sizeof(double));
  char desc[MS_DESCRIPTOR_MAX];
  int sent = 0, done = 0;
  uint64_t t0 = uv_hrtime();
  while (done < frames) {
    if (sent < frames && sent - done < window) {
      ms_tensor_t *t = alloc_bytes(shm, n);
      memcpy(ms_tensor_data(t), src, n);
      (void)ms_tensor_descriptor(t, desc, sizeof(desc));
      fprintf(p->in, "open %s\n", desc);
      fflush(p->in);
      inflight[sent++ % MAX_WINDOW] = t;
      continue;
    }
    opens[done] = (double)peer_reply(p, NULL);
    ms_tensor_release(inflight[done++ % MAX_WINDOW]);
  }
  double per = (double)(uv_hrtime() - t0) / 1e9 / frames;
  if (open_ns != NULL)
    *open_ns = msb_median(opens, frames);
  free(opens);
  return per;
}

/* The same frames as safetensors through the pipe: write into a tensor,
 * encode, send; the consumer receives, decodes and reads every byte. */
static double stream_pipe(peer *p, ms_tensor_t *staging, const void *src,
                          size_t n, int window, int frames) {
  int sent = 0, done = 0;
  uint64_t t0 = uv_hrtime();
  while (done < frames) {
    if (sent < frames && sent - done < window) {
      memcpy(ms_tensor_data(staging), src, n);
      void *buf = NULL;
      size_t len = 0;
      if (ms_tensor_serialize(staging, "frame", NULL, &buf, &len) != 0)
        exit(1);
      fprintf(p->in, "ser %zu\n", len);
      if (fwrite(buf, 1, len, p->in) != len)
        exit(1);
      fflush(p->in);
      ms_free(buf);
      sent++;
      continue;
    }
    (void)peer_reply(p, NULL);
    done++;
  }
  return (double)(uv_hrtime() - t0) / 1e9 / frames;
}

/* Where the time of one-frame-in-flight channel cycles goes, frame by
 * frame (microseconds): allocating and writing the frame; from the send
 * call until the consumer has the tensor; the consumer's read of every
 * byte; from the end of that read until the producer has the
 * acknowledgement; and whether both ends ran on one CPU. */
typedef struct chan_phases {
  double *write, *handoff, *read, *ack;
  int n, same_cpu;
} chan_phases;

/* The pooled cycle with the descriptors moving through the channel
 * instead of the pipe: write a frame, send it (the channel keeps the
 * tensor; the producer releases its handle at once), the consumer reads
 * every byte and acknowledges on a second channel, the producer flushes
 * (the channel lets the region go); up to `window` frames in flight.
 * With window 1, ph (may be NULL) gets each frame's phases.
 * The channels are set up before the clock starts.  Seconds per frame. */
static double stream_channel(peer *p, ms_shm_t *shm, const void *src, size_t n,
                             int window, int frames, chan_phases *ph) {
  static int seq;
  char name[48], ack_name[64];
  (void)snprintf(name, sizeof(name), "msb-cyc-%d-%d", (int)getpid(), seq++);
  (void)snprintf(ack_name, sizeof(ack_name), "%s-ack", name);
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  o.capacity = 8;
  /* The default spin window: two long spinners and any other load on a
   * small machine wait for scheduler ticks (measured: ~11 ms a frame with
   * 100 ms windows on 2 loaded cores, against ~0.5 ms with 20 us). */
  ms_channel_t *out = NULL, *ack = NULL;
  if (ms_channel_create(shm, name, &o, &out) != 0) {
    fprintf(stderr, "modelshare-bench: %s\n", ms_channel_errmsg(NULL));
    exit(1);
  }
  fprintf(p->in, "chan %s %d\n", name, frames);
  fflush(p->in);
  char line[64];
  if (fgets(line, sizeof(line), p->out) == NULL ||
      strcmp(line, "ready\n") != 0 ||
      ms_channel_open(shm, ack_name, &o, &ack) != 0) {
    fprintf(stderr, "modelshare-bench: channel cycle: %s\n",
            ms_channel_errmsg(NULL));
    exit(1);
  }
  int sent = 0, done = 0, cpu = -1;
  uint64_t t0 = uv_hrtime(), t_alloc = 0, t_send = 0;
  while (done < frames) {
    int rc;
    if (sent < frames && sent - done < window) {
      t_alloc = uv_hrtime();
      ms_tensor_t *t = alloc_bytes(shm, n);
      memcpy(ms_tensor_data(t), src, n);
      t_send = uv_hrtime();
      cpu = msb_cpu();
      rc = ms_channel_send_tensor(out, t, NULL, 0, 60000);
      ms_tensor_release(t);
      sent++;
    } else {
      msb_chan_ack a;
      size_t len = 0;
      rc = ms_channel_recv(ack, &a, sizeof(a), &len, 60000);
      if (rc == 0 && ph != NULL && window == 1 && len == sizeof(a)) {
        const uint64_t t_ack = uv_hrtime();
        ph->write[ph->n] = (double)(t_send - t_alloc) / 1e3;
        ph->handoff[ph->n] = ((double)a.got_ns - (double)t_send) / 1e3;
        ph->read[ph->n] = (double)(a.read_ns - a.got_ns) / 1e3;
        ph->ack[ph->n++] = (double)(t_ack - a.read_ns) / 1e3;
        ph->same_cpu += cpu >= 0 && cpu == a.cpu;
      }
      /* The acknowledgement says a frame was consumed: give its region
       * back to the pool now, as the pipe cycle releases it after the
       * reply (otherwise the channel keeps it until the next send).
       * (MS_ETIMEDOUT only says later frames are still on their way.) */
      if (rc == 0)
        (void)ms_channel_flush(out, 0);
      done++;
    }
    if (rc != 0) {
      fprintf(stderr, "modelshare-bench: channel cycle: %s\n", ms_err_name(rc));
      exit(1);
    }
  }
  double per = (double)(uv_hrtime() - t0) / 1e9 / frames;
  (void)peer_reply(p, NULL); /* "<frames> <sum>" */
  ms_channel_close(ack);
  ms_channel_close(out);
  return per;
}

/* Python's multiprocessing.shared_memory doing the work of our cycles, the
 * way ours do it: the producer writes every byte into a block, hands its
 * name over a pipe (one text line, as our descriptors go) to a consumer
 * process started with fork+exec, which attaches, reads every byte
 * (numpy's sum) and answers; one frame in flight.  Two cycles:
 *   fresh   a new block per frame: create, write, hand over, the consumer
 *           attaches, reads and closes; the producer closes and unlinks.
 *           Like for like with our fresh cycle (no pool).
 *   reused  one block created once (the best Python practice), the
 *           consumer keeps its attachment: like for like with our pooled
 *           cycle.
 * Prints "<fresh GiB/s> <reused GiB/s>", medians of reps after a warm-up
 * repetition.  Exits non-zero if the consumer read wrong bytes. */
static const char python_cycle[] =
    "import subprocess, sys, time\n"
    "import numpy as np\n"
    "from multiprocessing import resource_tracker, shared_memory\n"
    "def attach(name):\n"
    "    s = shared_memory.SharedMemory(name=name)\n"
    "    # Before 3.13 attaching registers the block with this process's\n"
    "    # resource tracker as if it owned it; the producer owns it.\n"
    "    resource_tracker.unregister(s._name, \"shared_memory\")\n"
    "    return s\n"
    "def consumer():\n"
    "    cache = {}\n"
    "    while True:\n"
    "        line = sys.stdin.readline()\n"
    "        if not line:\n"
    "            break\n"
    "        mode, name, n = line.split()\n"
    "        if mode == \"fresh\":\n"
    "            s = attach(name)\n"
    "        elif name in cache:\n"
    "            s = cache[name]\n"
    "        else:\n"
    "            s = cache[name] = attach(name)\n"
    "        a = np.ndarray((int(n) // 8,), dtype=np.uint64, buffer=s.buf)\n"
    "        total = int(a.sum())\n"
    "        del a\n"
    "        if mode == \"fresh\":\n"
    "            s.close()\n"
    "        sys.stdout.write(f\"{total}\\n\")\n"
    "        sys.stdout.flush()\n"
    "    for s in cache.values():\n"
    "        s.close()\n"
    "def main():\n"
    "    n, reps, frames = int(sys.argv[1]), int(sys.argv[2]), "
    "int(sys.argv[3])\n"
    "    src = np.full(n // 8, 7, dtype=np.uint64)\n"
    "    p = subprocess.Popen([sys.executable, sys.argv[0], \"consumer\"],\n"
    "                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,\n"
    "                         text=True)\n"
    "    def hand_over(mode, name):\n"
    "        p.stdin.write(f\"{mode} {name} {n}\\n\")\n"
    "        p.stdin.flush()\n"
    "        if int(p.stdout.readline()) != 7 * (n // 8):\n"
    "            sys.exit(\"python cycle: the consumer read wrong bytes\")\n"
    "    def fresh():\n"
    "        s = shared_memory.SharedMemory(create=True, size=n)\n"
    "        v = np.ndarray((n // 8,), dtype=np.uint64, buffer=s.buf)\n"
    "        v[:] = src\n"
    "        del v\n"
    "        hand_over(\"fresh\", s.name)\n"
    "        s.close()\n"
    "        s.unlink()\n"
    "    block = shared_memory.SharedMemory(create=True, size=n)\n"
    "    view = np.ndarray((n // 8,), dtype=np.uint64, buffer=block.buf)\n"
    "    def reused():\n"
    "        view[:] = src\n"
    "        hand_over(\"reused\", block.name)\n"
    "    out = []\n"
    "    for cycle in (fresh, reused):\n"
    "        times = []\n"
    "        for r in range(reps + 1):\n"
    "            t0 = time.perf_counter()\n"
    "            for f in range(frames):\n"
    "                cycle()\n"
    "            if r:\n"
    "                times.append((time.perf_counter() - t0) / frames)\n"
    "        times.sort()\n"
    "        out.append(n / (1 << 30) / times[len(times) // 2])\n"
    "    p.stdin.close()\n"
    "    if p.wait() != 0:\n"
    "        sys.exit(\"python cycle: the consumer failed\")\n"
    "    del view\n"
    "    block.close()\n"
    "    block.unlink()\n"
    "    print(out[0], out[1])\n"
    "if sys.argv[1] == \"consumer\":\n"
    "    consumer()\n"
    "else:\n"
    "    main()\n";

/* Runs python_cycle; returns 0 and both GiB/s, or -1 and *why. */
static int python_gibs(size_t n, int reps, int frames, double *fresh,
                       double *reused, const char **why) {
  char script[] = "/tmp/msb-python-XXXXXX";
  int fd = mkstemp(script);
  if (fd < 0) {
    *why = "cannot write the Python script";
    return -1;
  }
  ssize_t len = (ssize_t)(sizeof(python_cycle) - 1);
  int written = write(fd, python_cycle, (size_t)len) == len;
  close(fd);
  char cmd[256];
  /* Debian's numpy is installed for Debian's interpreter.  Its errors go
   * to our stderr. */
  (void)snprintf(cmd, sizeof(cmd), "/usr/bin/python3 %s %zu %d %d", script, n,
                 reps, frames);
  FILE *f = written ? popen(cmd, "r") : NULL;
  int got = f != NULL && fscanf(f, "%lf %lf", fresh, reused) == 2;
  int status = f != NULL ? pclose(f) : -1;
  unlink(script);
  if (!written) {
    *why = "cannot write the Python script";
    return -1;
  }
  if (!got || status != 0 || *fresh <= 0 || *reused <= 0) {
    *why = "/usr/bin/python3 with numpy failed or is missing";
    return -1;
  }
  return 0;
}

/* Targets (DESIGN.md, "The seed's claims"). */
#define READ_TARGET 0.9        /* cached read >= 90% of the heap read */
#define OPEN_TARGET_NS 10000.0 /* descriptor open of a recycled region */
#define CYCLE_TARGET 0.9       /* pooled cycle >= 90% of the memcpy floor */
#define PY_FRESH_TARGET 3.0    /* fresh vs fresh: "3x on the full cycle" */
/* Pooled vs Python's reused block: both move the same bytes with no
 * per-frame setup, so memory bandwidth bounds both; the target is to be no
 * slower than the best Python practice. */
#define PY_REUSED_TARGET 1.0

typedef struct shm_row {
  size_t mib;
  double floor, heap_read, shm_read, shm_read_cached, open_us, open1_us;
  double pool1, pool4, fresh1, fresh4, pipe, py_fresh, py_reused, pool_chan;
  double two_spin, two_futex; /* the library-free two-process cycles */
  chan_phases phases;         /* of the channel cycle */
  const char *py_why;         /* NULL when Python ran */
} shm_row;

/* Measures one size into *row. */
static void shm_measure(const msb_opts *o, peer *p, ms_shm_t *pooled,
                        ms_shm_t *fresh, size_t mib, shm_row *row) {
  const size_t n = mib << 20;
  const int reps = o->reps, frames = o->quick ? 4 : 8;
  double *v = calloc((size_t)reps, sizeof(double)),
         *w = calloc((size_t)reps, sizeof(double));
  unsigned char *src = malloc(n), *dst = malloc(n);
  if (v == NULL || w == NULL || src == NULL || dst == NULL) {
    fprintf(stderr, "modelshare-bench: out of memory\n");
    exit(1);
  }
  memset(src, 7, n);
  memset(dst, 0, n);
  char arg[32], desc[MS_DESCRIPTOR_MAX];
  (void)snprintf(arg, sizeof(arg), "%zu", n);
  row->mib = mib;

  /* Floor: memcpy into the heap, then read it, in one process (r = -1
   * warms up). */
  for (int r = -1; r < reps; r++) {
    uint64_t t0 = uv_hrtime();
    memcpy(dst, src, n);
    volatile uint64_t sum = msb_read_all(dst, n);
    (void)sum;
    if (r >= 0)
      v[r] = (double)(uv_hrtime() - t0);
  }
  row->floor = n / GIB / (msb_median(v, reps) / 1e9);

  /* The consumer reading its heap, a region the first time (page faults
   * included), and the same region again (cached mapping). */
  double first_read[64], first_open[64];
  int nf = reps < 64 ? reps : 64;
  for (int r = 0; r < nf; r++) {
    ms_tensor_t *t = alloc_bytes(fresh, n);
    memcpy(ms_tensor_data(t), src, n);
    (void)ms_tensor_descriptor(t, desc, sizeof(desc));
    uint64_t rd = 0;
    fprintf(p->in, "open %s\n", desc);
    fflush(p->in);
    first_open[r] = (double)peer_reply(p, &rd);
    first_read[r] = (double)rd;
    ms_tensor_release(t);
  }
  ms_tensor_t *t = alloc_bytes(pooled, n);
  memcpy(ms_tensor_data(t), src, n);
  (void)ms_tensor_descriptor(t, desc, sizeof(desc));
  uint64_t rd;
  for (int r = -1; r < reps; r++) { /* r = -1 warms both up */
    fprintf(p->in, "heap %s\n", arg);
    fflush(p->in);
    double heap_ns = (double)peer_reply(p, NULL);
    fprintf(p->in, "open %s\n", desc);
    fflush(p->in);
    (void)peer_reply(p, &rd);
    if (r >= 0) {
      v[r] = heap_ns;
      w[r] = (double)rd;
    }
  }
  ms_tensor_release(t);
  row->heap_read = n / GIB / (msb_median(v, reps) / 1e9);
  row->shm_read = n / GIB / (msb_median(first_read, nf) / 1e9);
  row->shm_read_cached = n / GIB / (msb_median(w, reps) / 1e9);
  row->open1_us = msb_median(first_open, nf) / 1e3;

  /* Full cycles: pooled and fresh regions, one frame in flight (as the
   * Python cycles) and four (streaming). */
  ms_shm_t *from[4] = {pooled, pooled, fresh, fresh};
  const int window[4] = {1, 4, 1, 4};
  double *gibs[4] = {&row->pool1, &row->pool4, &row->fresh1, &row->fresh4};
  for (int k = 0; k < 4; k++) {
    (void)stream_shm(p, from[k], src, n, window[k], 2, NULL); /* warm */
    for (int r = 0; r < reps; r++)
      v[r] = stream_shm(p, from[k], src, n, window[k], frames,
                        k == 0 ? &w[r] : NULL);
    *gibs[k] = n / GIB / msb_median(v, reps);
    if (k == 0)
      row->open_us = msb_median(w, reps) / 1e3;
  }
  chan_phases *ph = &row->phases;
  const size_t nph = (size_t)reps * (size_t)frames;
  ph->n = ph->same_cpu = 0;
  ph->write = calloc(nph, sizeof(double));
  ph->handoff = calloc(nph, sizeof(double));
  ph->read = calloc(nph, sizeof(double));
  ph->ack = calloc(nph, sizeof(double));
  if (ph->write == NULL || ph->handoff == NULL || ph->read == NULL ||
      ph->ack == NULL) {
    fprintf(stderr, "modelshare-bench: out of memory\n");
    exit(1);
  }
  (void)stream_channel(p, pooled, src, n, 1, 2, NULL); /* warm */
  for (int r = 0; r < reps; r++)
    v[r] = stream_channel(p, pooled, src, n, 1, frames, ph);
  row->pool_chan = n / GIB / msb_median(v, reps);
  /* What any two processes pay for the same cycle here (the floor is one
   * process): the bound behind the channel cycle's figure. */
  double *two[2] = {&row->two_spin, &row->two_futex};
  for (int k = 0; k < 2; k++) {
    for (int r = 0; r < reps; r++)
      v[r] = msb_two_process_cycle(src, n, frames, k);
    *two[k] = msb_median(v, reps) > 0 ? n / GIB / msb_median(v, reps) : 0;
  }
  ms_tensor_t *staging = alloc_bytes(pooled, n);
  for (int r = 0; r < reps; r++)
    v[r] = stream_pipe(p, staging, src, n, 4, frames);
  ms_tensor_release(staging);
  row->pipe = n / GIB / msb_median(v, reps);
  row->py_why = NULL;
  if (python_gibs(n, reps, frames, &row->py_fresh, &row->py_reused,
                  &row->py_why) != 0)
    row->py_fresh = row->py_reused = 0;
  free(src);
  free(dst);
  free(v);
  free(w);
}

/* Prints the PASS/MISS line of one size and adds its JSON; returns 1 when
 * every target passed.  A missing Python is a MISS. */
static int shm_report(const shm_row *x, cJSON *arr) {
  const int py = x->py_why == NULL;
  const double fresh_ratio = py ? x->fresh1 / x->py_fresh : 0;
  const double reused_ratio = py ? x->pool1 / x->py_reused : 0;
  int ok_read = x->shm_read_cached >= READ_TARGET * x->heap_read;
  int ok_open = x->open_us * 1e3 <= OPEN_TARGET_NS;
  int ok_cycle = x->pool1 >= CYCLE_TARGET * x->floor;
  /* Issue 12: judged at 1 MiB, where the pipe's wake-up dominated. */
  int ok_chan = x->mib != 1 || x->pool_chan >= CYCLE_TARGET * x->floor;
  int ok_py_fresh = py && fresh_ratio >= PY_FRESH_TARGET;
  int ok_py_reused = py && reused_ratio >= PY_REUSED_TARGET;
  printf("%5zu MiB: cached read %.0f%% of heap %s | open %.2f us %s | "
         "pooled cycle %.0f%% of floor %s\n",
         x->mib, 100 * x->shm_read_cached / x->heap_read, msb_pass(ok_read),
         x->open_us, msb_pass(ok_open), 100 * x->pool1 / x->floor,
         msb_pass(ok_cycle));
  printf("%10s pooled cycle via the channel %.0f%% of floor %s | two "
         "processes without the library: spinning %.0f%%, futex %.0f%%\n",
         "", 100 * x->pool_chan / x->floor,
         x->mib == 1 ? msb_pass(ok_chan) : "(judged at 1 MiB)",
         100 * x->two_spin / x->floor, 100 * x->two_futex / x->floor);
  const chan_phases *ph = &x->phases;
  const double ph_med[4] = {
      msb_median(ph->write, ph->n), msb_median(ph->handoff, ph->n),
      msb_median(ph->read, ph->n), msb_median(ph->ack, ph->n)};
  const double same_cpu = ph->n > 0 ? (double)ph->same_cpu / ph->n : 0;
  printf("%10s channel cycle, median us: alloc+write %.1f | send to "
         "consumer %.1f | read %.1f | read to ack %.1f | one CPU for both "
         "in %.0f%% of frames\n",
         "", ph_med[0], ph_med[1], ph_med[2], ph_med[3], 100 * same_cpu);
  if (py)
    printf("%10s fresh vs Python fresh %.2fx %s (>= %.0fx) | pooled vs "
           "Python reused %.2fx %s (>= %.0fx) | pooled %.1fx pipe\n",
           "", fresh_ratio, msb_pass(ok_py_fresh), PY_FRESH_TARGET,
           reused_ratio, msb_pass(ok_py_reused), PY_REUSED_TARGET,
           x->pool1 / x->pipe);
  else
    printf("%10s fresh vs Python fresh %s, pooled vs Python reused %s: %s | "
           "pooled %.1fx pipe\n",
           "", msb_pass(ok_py_fresh), msb_pass(ok_py_reused), x->py_why,
           x->pool1 / x->pipe);

  cJSON *e = cJSON_CreateObject();
  cJSON_AddItemToArray(arr, e);
  cJSON_AddNumberToObject(e, "size_bytes", (double)(x->mib << 20));
  cJSON_AddNumberToObject(e, "floor_gibs", x->floor);
  cJSON_AddNumberToObject(e, "heap_read_gibs", x->heap_read);
  cJSON_AddNumberToObject(e, "shm_read_gibs", x->shm_read);
  cJSON_AddNumberToObject(e, "shm_read_cached_gibs", x->shm_read_cached);
  cJSON_AddNumberToObject(e, "handoff_us_median", x->open_us);
  cJSON_AddNumberToObject(e, "handoff_first_open_us_median", x->open1_us);
  cJSON_AddNumberToObject(e, "cycle_fresh_gibs", x->fresh1);
  cJSON_AddNumberToObject(e, "cycle_fresh_streaming_gibs", x->fresh4);
  cJSON_AddNumberToObject(e, "cycle_pooled_gibs", x->pool1);
  cJSON_AddNumberToObject(e, "cycle_pooled_streaming_gibs", x->pool4);
  cJSON_AddNumberToObject(e, "cycle_pooled_channel_gibs", x->pool_chan);
  cJSON_AddNumberToObject(e, "cycle_two_process_spin_gibs", x->two_spin);
  cJSON_AddNumberToObject(e, "cycle_two_process_futex_gibs", x->two_futex);
  cJSON *cp = cJSON_AddObjectToObject(e, "channel_cycle_us");
  const char *ph_keys[4] = {"write", "handoff", "read", "ack"};
  for (int k = 0; k < 4; k++)
    cJSON_AddNumberToObject(cp, ph_keys[k], ph_med[k]);
  cJSON_AddNumberToObject(cp, "same_cpu_fraction", same_cpu);
  cJSON_AddNumberToObject(e, "pipe_serialization_gibs", x->pipe);
  const char *py_keys[4] = {"python_mp_shm_gibs", "python_mp_shm_reused_gibs",
                            "python_fresh_ratio", "python_reused_ratio"};
  const double py_vals[4] = {x->py_fresh, x->py_reused, fresh_ratio,
                             reused_ratio};
  for (int k = 0; k < 4; k++)
    if (py)
      cJSON_AddNumberToObject(e, py_keys[k], py_vals[k]);
    else
      cJSON_AddNullToObject(e, py_keys[k]);
  return ok_read && ok_open && ok_cycle && ok_chan && ok_py_fresh &&
         ok_py_reused;
}

int msb_shm(const msb_opts *o, cJSON *root) {
  ms_shm_options_t po = MS_SHM_OPTIONS_INIT, fo = MS_SHM_OPTIONS_INIT;
  po.pool_bytes = 2ull << 30;
  fo.pool_bytes = 0;
  ms_shm_t *pooled = NULL, *fresh = NULL;
  if (ms_shm_create(&po, &pooled) != 0 || ms_shm_create(&fo, &fresh) != 0) {
    ms_shm_destroy(pooled);
    return -1;
  }
  shm_row rows[MSB_MAX_SIZES];
  peer p = peer_start(o->self);
  for (int s = 0; s < o->nsizes; s++) {
    msb_progress("shm: %zu MiB", o->sizes_mib[s]);
    shm_measure(o, &p, pooled, fresh, o->sizes_mib[s], &rows[s]);
  }
  peer_stop(&p);

  printf("\n== Shared memory vs copies (consumer in another process; GiB/s, "
         "medians of %d) ==\n",
         o->reps);
  printf("%9s %8s %8s %8s %8s %8s %8s\n", "size", "floor", "heap rd", "shm rd",
         "shm rd c", "open us", "open1 us");
  for (int s = 0; s < o->nsizes; s++) {
    const shm_row *x = &rows[s];
    printf("%5zu MiB %8.2f %8.2f %8.2f %8.2f %8.2f %8.1f\n", x->mib, x->floor,
           x->heap_read, x->shm_read, x->shm_read_cached, x->open_us,
           x->open1_us);
  }
  printf("\n== Full cycles: write every byte, hand over, the other process "
         "reads every byte (GiB/s) ==\n");
  printf("%9s %8s %8s %8s %8s %8s %8s %8s %8s\n", "size", "floor", "pool w1",
         "pool w4", "fresh w1", "fresh w4", "pipe ser", "py fresh", "py reuse");
  for (int s = 0; s < o->nsizes; s++) {
    const shm_row *x = &rows[s];
    printf("%5zu MiB %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f\n", x->mib,
           x->floor, x->pool1, x->pool4, x->fresh1, x->fresh4, x->pipe,
           x->py_fresh, x->py_reused);
  }
  cJSON *arr = cJSON_AddArrayToObject(root, "shm");
  int all_ok = 1;
  for (int s = 0; s < o->nsizes; s++) {
    all_ok &= shm_report(&rows[s], arr);
    chan_phases *ph = &rows[s].phases;
    free(ph->write), free(ph->handoff), free(ph->read), free(ph->ack);
  }
  printf("(open us = descriptor open in the consumer for a pooled, recycled "
         "region; open1 = first open of a new region.  w1/w4 = frames in "
         "flight.  pool = pooled regions; fresh = a new region per frame; py "
         "fresh = multiprocessing.shared_memory, a new block per frame; py "
         "reuse = one block reused.  Like for like: fresh w1 vs py fresh, "
         "pool w1 vs py reuse)\n");
  int destroyed = ms_shm_destroy(pooled) == 0 && ms_shm_destroy(fresh) == 0;
  return !destroyed ? -1 : all_ok ? MSB_ALL_PASS : MSB_MISSED;
}

/* ------------------------------------------------------------------------ */
/* Vision: the fast serialization fallback and a plain pipe copy            */
/* ------------------------------------------------------------------------ */

/* Consumer side.  One request line, then the frame; one reply line:
 *   sfast\n<safetensors stream> -> "<ns> <sum>"  the header through
 *       ms_tensor_parse_header, the data read straight into a tensor kept
 *       from frame to frame (allocated once from the consumer's pool)
 *   copy N\n<N bytes>           -> "<ns> <sum>"  raw bytes into a buffer
 *       kept from frame to frame
 * Either way the consumer then reads every byte, as for "open". */
static int vision_fail(int status, const char *why) {
  fprintf(stderr, "modelshare-bench consumer: %s\n", why);
  return status;
}

static int vision_peer(ms_shm_t *shm, const char *line) {
  static ms_tensor_t *dst;
  static unsigned char *buf, hdr[8 + MS_SAFETENSORS_HEADER_MAX];
  static size_t cap;
  if (line == NULL) {
    ms_tensor_release(dst);
    free(buf);
    dst = NULL, buf = NULL, cap = 0;
    return 0;
  }
  uint64_t t0 = uv_hrtime(), sum = 0;
  if (strcmp(line, "sfast") == 0) {
    ms_dtype_t dt;
    int nd;
    int64_t shape[MS_MAX_NDIM];
    size_t hl = 8, dl = 0;
    if (fread(hdr, 1, 8, stdin) != 8)
      return vision_fail(3, "short read");
    int rc = ms_tensor_parse_header(hdr, 8, &dt, &nd, shape, &hl, &dl);
    if (rc == MS_ERANGE && fread(hdr + 8, 1, hl - 8, stdin) == hl - 8)
      rc = ms_tensor_parse_header(hdr, hl, &dt, &nd, shape, &hl, &dl);
    if (rc != 0)
      return vision_fail(4, ms_shm_errmsg(NULL));
    if (dst == NULL || ms_tensor_dtype(dst) != dt ||
        ms_tensor_ndim(dst) != nd ||
        memcmp(ms_tensor_shape(dst), shape, (size_t)nd * sizeof(*shape))) {
      ms_tensor_release(dst);
      dst = NULL;
      if (ms_tensor_alloc(shm, dt, nd, shape, "vision", &dst) != 0)
        return vision_fail(5, ms_shm_errmsg(shm));
    }
    if (fread(ms_tensor_data(dst), 1, dl, stdin) != dl)
      return vision_fail(3, "short read");
    sum = msb_read_all(ms_tensor_data(dst), dl);
  } else if (strncmp(line, "copy ", 5) == 0) {
    size_t n = strtoull(line + 5, NULL, 10);
    buf = grow(buf, &cap, n);
    t0 = uv_hrtime();
    if (fread(buf, 1, n, stdin) != n)
      return vision_fail(3, "short read");
    sum = msb_read_all(buf, n);
  } else {
    return 0; /* not ours */
  }
  printf("%llu %llu\n", (unsigned long long)(uv_hrtime() - t0),
         (unsigned long long)sum);
  return 0;
}

/* Writes every byte of iov[0..n) to fd (pipes take large writes in parts). */
static void writev_all(int fd, struct iovec *iov, int n) {
  while (n > 0) {
    ssize_t w = writev(fd, iov, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0) {
      perror("modelshare-bench: writev");
      exit(1);
    }
    size_t left = (size_t)w;
    for (; n > 0 && left >= iov->iov_len; n--, iov++)
      left -= iov->iov_len;
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + left;
      iov->iov_len -= left;
    }
  }
}

typedef enum { VISION_FAST, VISION_COPY } vision_mode;

/* Frames over the pipe without a per-frame allocation or copy on either
 * side.  VISION_FAST: write the frame into a tensor, encode only its
 * header (ms_tensor_serialize_header, into a reused buffer) and writev
 * header + data.  VISION_COPY: write the frame into a reused buffer and
 * writev it raw.  Up to `window` frames in flight.  Seconds per frame. */
static double stream_vision(peer *p, vision_mode mode, ms_tensor_t *staging,
                            unsigned char *hdr, size_t hcap, unsigned char *raw,
                            const void *src, size_t n, int window, int frames) {
  int sent = 0, done = 0;
  char cmd[64];
  uint64_t t0 = uv_hrtime();
  fflush(p->in);
  while (done < frames) {
    if (sent < frames && sent - done < window) {
      struct iovec iov[3];
      int k = 0;
      if (mode == VISION_FAST) {
        size_t hl = 0;
        memcpy(ms_tensor_data(staging), src, n);
        if (ms_tensor_serialize_header(staging, "frame", NULL, hdr, hcap,
                                       &hl) != 0)
          exit(1);
        iov[k++] = (struct iovec){(void *)"sfast\n", 6};
        iov[k++] = (struct iovec){hdr, hl};
        iov[k++] = (struct iovec){ms_tensor_data(staging), n};
      } else {
        memcpy(raw, src, n);
        int c = snprintf(cmd, sizeof(cmd), "copy %zu\n", n);
        iov[k++] = (struct iovec){cmd, (size_t)c};
        iov[k++] = (struct iovec){raw, n};
      }
      writev_all(fileno(p->in), iov, k);
      sent++;
      continue;
    }
    (void)peer_reply(p, NULL);
    done++;
  }
  return (double)(uv_hrtime() - t0) / 1e9 / frames;
}

/* Shared memory, its descriptors moving through the descriptor channel
 * (judged) or through the pipe (the reported baseline of issue 12),
 * against three ways of sending the same frames through a pipe:
 * safetensors with a fresh allocation per call on both sides
 * (ms_tensor_serialize / ms_tensor_deserialize, the old baseline), the fast
 * fallback (header-only encoding, writev, decode into a reused tensor), and
 * a plain copy of the bytes with reused buffers.  Every method sends
 * `frames` frames per repetition, 4 in flight, in rotating order; figures
 * are medians over the repetitions.  The target is judged at 100 MiB
 * frames or more (--quick uses smaller frames and only reports the
 * figures). */
int msb_vision(const msb_opts *o, cJSON *root) {
  const size_t n = o->vision_mib << 20;
  const int frames = o->vision_frames, reps = o->reps;
  msb_progress("vision: %d x %d frames of %zu MiB", reps, frames,
               o->vision_mib);
  ms_shm_options_t po = MS_SHM_OPTIONS_INIT;
  po.pool_bytes = 2ull << 30;
  ms_shm_t *shm = NULL;
  if (ms_shm_create(&po, &shm) != 0)
    return -1;
  peer p = peer_start(o->self);
  unsigned char *src = malloc(n), *raw = malloc(n);
  const size_t hcap = 8 + MS_SAFETENSORS_HEADER_MAX;
  unsigned char *hdr = malloc(hcap);
  enum { METHODS = 5 };
  double *v[METHODS];
  for (int k = 0; k < METHODS; k++)
    v[k] = calloc((size_t)reps, sizeof(double));
  if (src == NULL || raw == NULL || hdr == NULL)
    exit(1);
  memset(src, 9, n);
  memset(raw, 0, n); /* pre-faulted, like the pooled staging tensor */
  ms_tensor_t *staging = alloc_bytes(shm, n);

  for (int r = -1; r < reps; r++) { /* r = -1 warms every path up */
    for (int j = 0; j < METHODS; j++) {
      int k = (r + METHODS + j) % METHODS, f = r < 0 ? 2 : frames;
      double per = k == 0   ? stream_shm(&p, shm, src, n, 4, f, NULL)
                   : k == 1 ? stream_pipe(&p, staging, src, n, 4, f)
                   : k == 2 ? stream_vision(&p, VISION_FAST, staging, hdr, hcap,
                                            raw, src, n, 4, f)
                   : k == 3 ? stream_vision(&p, VISION_COPY, staging, hdr, hcap,
                                            raw, src, n, 4, f)
                            : stream_channel(&p, shm, src, n, 4, f, NULL);
      if (r >= 0)
        v[k][r] = per;
    }
  }
  ms_tensor_release(staging);
  peer_stop(&p);
  double fps_chan = 1 / msb_median(v[4], reps),
         fps_shm = 1 / msb_median(v[0], reps),
         fps_ser = 1 / msb_median(v[1], reps),
         fps_fast = 1 / msb_median(v[2], reps),
         fps_copy = 1 / msb_median(v[3], reps);
  double best = fps_fast > fps_copy ? fps_fast : fps_copy;
  double speedup = fps_shm / fps_ser, vs_best = fps_shm / best;
  double speedup_chan = fps_chan / fps_ser, vs_best_chan = fps_chan / best;
  int judged = o->vision_mib >= 100, ok = vs_best_chan >= 5;
  printf("\n== Vision pipeline: %zu MiB frames, producer -> consumer reading "
         "every byte (medians of %d x %d frames) ==\n",
         o->vision_mib, reps, frames);
  printf("shared memory, descriptors through the channel       %8.1f fps\n",
         fps_chan);
  printf("shared memory, descriptors through the pipe          %8.1f fps  "
         "channel %.2fx\n",
         fps_shm, fps_chan / fps_shm);
  printf("pipe: safetensors, allocating per call               %8.1f fps  "
         "shm %.1fx  %s (>= 12x, reported)\n",
         fps_ser, speedup_chan, msb_pass(speedup_chan >= 12));
  printf("pipe: safetensors fast (writev, into a reused tensor)%8.1f fps  "
         "shm %.1fx\n",
         fps_fast, fps_chan / fps_fast);
  printf("pipe: plain copy, reused buffers                     %8.1f fps  "
         "shm %.1fx\n",
         fps_copy, fps_chan / fps_copy);
  printf("shared memory vs the best pipe baseline: %.1fx  %s (>= 5x at 100 "
         "MiB; descriptors through the pipe: %.1fx)\n",
         vs_best_chan, judged ? msb_pass(ok) : "not judged below 100 MiB",
         vs_best);
  cJSON *j = cJSON_AddObjectToObject(root, "vision");
  cJSON_AddNumberToObject(j, "frame_bytes", (double)n);
  cJSON_AddNumberToObject(j, "frames", frames);
  cJSON_AddNumberToObject(j, "fps_shm", fps_shm);
  cJSON_AddNumberToObject(j, "fps_shm_channel", fps_chan);
  cJSON_AddNumberToObject(j, "fps_serialization", fps_ser);
  cJSON_AddNumberToObject(j, "fps_serialization_fast", fps_fast);
  cJSON_AddNumberToObject(j, "fps_pipe_copy", fps_copy);
  cJSON_AddNumberToObject(j, "speedup", speedup);
  cJSON_AddNumberToObject(j, "speedup_vs_best", vs_best);
  cJSON_AddNumberToObject(j, "speedup_channel", speedup_chan);
  cJSON_AddNumberToObject(j, "speedup_vs_best_channel", vs_best_chan);
  free(src);
  free(raw);
  free(hdr);
  for (int k = 0; k < METHODS; k++)
    free(v[k]);
  if (ms_shm_destroy(shm) != 0)
    return -1;
  return judged && !ok ? 1 : 0; /* a MISS makes the bench's status non-zero */
}
