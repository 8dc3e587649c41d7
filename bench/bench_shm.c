/* Shared-memory scenarios, each against baselines measured in the same
 * run: heap memcpy+read (the floor), reading the consumer's own heap,
 * safetensors through a real pipe between two processes, and Python's
 * multiprocessing.shared_memory.  The consumer is a separate process (this
 * binary, started with --consumer). */
#include "bench.h"

#include <uv.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
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
    }
    fflush(stdout);
  }
  free(buf);
  return ms_shm_destroy(shm) == 0 ? 0 : 1;
}

/* ------------------------------------------------------------------------ */
/* Producer side                                                             */
/* ------------------------------------------------------------------------ */

typedef struct peer {
  pid_t pid;
  FILE *in, *out;
} peer;

static peer peer_start(const char *self) {
  int to[2], from[2];
  peer p = {-1, NULL, NULL};
  if (pipe(to) != 0 || pipe(from) != 0)
    exit(1);
#ifdef F_SETPIPE_SZ
  /* The serialization baseline gets the largest pipe buffer allowed. */
  (void)fcntl(to[1], F_SETPIPE_SZ, 1 << 20);
#endif
  fflush(NULL);
  p.pid = fork();
  if (p.pid == 0) {
    dup2(to[0], 0);
    dup2(from[1], 1);
    close(to[0]), close(to[1]), close(from[0]), close(from[1]);
    execl(self, self, "--consumer", (char *)NULL);
    _exit(127);
  }
  close(to[0]);
  close(from[1]);
  p.in = fdopen(to[1], "w");
  p.out = fdopen(from[0], "r");
  return p;
}

static void peer_stop(peer *p) {
  fclose(p->in);
  fclose(p->out);
  int status;
  waitpid(p->pid, &status, 0);
}

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

/* Python's multiprocessing.shared_memory doing the same full cycle, one
 * frame at a time: create, write, hand the name over, the other process
 * attaches and reads every byte, close and unlink.  GiB/s, or -1. */
static const char python_cycle[] =
    "import sys, time\n"
    "import numpy as np\n"
    "from multiprocessing import Pipe, Process, resource_tracker, "
    "shared_memory\n"
    "def consumer(conn, n):\n"
    "    while True:\n"
    "        name = conn.recv()\n"
    "        if name is None:\n"
    "            return\n"
    "        s = shared_memory.SharedMemory(name=name)\n"
    "        resource_tracker.unregister(s._name, 'shared_memory')\n"
    "        a = np.ndarray((n // 8,), dtype=np.uint64, buffer=s.buf)\n"
    "        total = int(a.sum())\n"
    "        del a\n"
    "        s.close()\n"
    "        conn.send(total)\n"
    "n, reps, frames = int(sys.argv[1]), int(sys.argv[2]), 8\n"
    "src = np.full(n // 8, 7, dtype=np.uint64)\n"
    "a, b = Pipe()\n"
    "p = Process(target=consumer, args=(b, n))\n"
    "p.start()\n"
    "times = []\n"
    "for r in range(reps + 1):\n"
    "    t0 = time.perf_counter()\n"
    "    for f in range(frames):\n"
    "        s = shared_memory.SharedMemory(create=True, size=n)\n"
    "        v = np.ndarray((n // 8,), dtype=np.uint64, buffer=s.buf)\n"
    "        v[:] = src\n"
    "        del v\n"
    "        a.send(s.name)\n"
    "        a.recv()\n"
    "        s.close()\n"
    "        s.unlink()\n"
    "    if r:\n"
    "        times.append((time.perf_counter() - t0) / frames)\n"
    "a.send(None)\n"
    "p.join()\n"
    "times.sort()\n"
    "print(n / (1 << 30) / times[len(times) // 2])\n";

static double python_gibs(size_t n, int reps, const char **why) {
  char script[] = "/tmp/msb-python-XXXXXX";
  int fd = mkstemp(script);
  if (fd < 0 || write(fd, python_cycle, sizeof(python_cycle) - 1) !=
                    (ssize_t)(sizeof(python_cycle) - 1)) {
    *why = "cannot write the script";
    return -1;
  }
  close(fd);
  char cmd[256];
  /* Debian's numpy is installed for Debian's interpreter. */
  (void)snprintf(cmd, sizeof(cmd), "/usr/bin/python3 %s %zu %d 2>/dev/null",
                 script, n, reps);
  FILE *f = popen(cmd, "r");
  double g = -1;
  if (f == NULL || fscanf(f, "%lf", &g) != 1)
    g = -1;
  if (f != NULL)
    pclose(f);
  unlink(script);
  if (g <= 0)
    *why = "/usr/bin/python3 with numpy is not available";
  return g;
}

int msb_shm(const msb_opts *o, cJSON *root) {
  ms_shm_options_t po = MS_SHM_OPTIONS_INIT, fo = MS_SHM_OPTIONS_INIT;
  po.pool_bytes = 2ull << 30;
  fo.pool_bytes = 0;
  ms_shm_t *pooled = NULL, *fresh = NULL;
  if (ms_shm_create(&po, &pooled) != 0 || ms_shm_create(&fo, &fresh) != 0)
    return -1;
  peer p = peer_start(o->self);
  const int reps = o->reps, frames = o->quick ? 4 : 8;
  double *v = calloc((size_t)reps, sizeof(double)),
         *w = calloc((size_t)reps, sizeof(double));
  cJSON *arr = cJSON_AddArrayToObject(root, "shm");
  int all_ok = 1;

  printf("\n== Shared memory vs copies (consumer in another process; medians "
         "of %d) ==\n",
         reps);
  printf("%8s %9s %9s %9s %9s %9s %9s %9s %9s %9s %9s %9s\n", "size", "floor",
         "heap rd", "shm rd", "shm rd c", "open us", "open1 us", "pool w1",
         "pool w4", "fresh w4", "pipe ser", "python");
  for (int s = 0; s < o->nsizes; s++) {
    size_t n = o->sizes_mib[s] << 20;
    msb_progress("shm: %zu MiB", o->sizes_mib[s]);
    unsigned char *src = malloc(n), *dst = malloc(n);
    memset(src, 7, n);
    memset(dst, 0, n);
    char arg[32], desc[MS_DESCRIPTOR_MAX];
    (void)snprintf(arg, sizeof(arg), "%zu", n);

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
    double floor_gibs = n / GIB / (msb_median(v, reps) / 1e9);

    /* The consumer reading its heap, a region the first time (page
     * faults included), and the same region again (cached mapping). */
    double first_read[64], first_open[64];
    int nf = reps < 64 ? reps : 64;
    for (int r = 0; r < nf; r++) {
      ms_tensor_t *t = alloc_bytes(fresh, n);
      memcpy(ms_tensor_data(t), src, n);
      (void)ms_tensor_descriptor(t, desc, sizeof(desc));
      uint64_t rd = 0;
      fprintf(p.in, "open %s\n", desc);
      fflush(p.in);
      first_open[r] = (double)peer_reply(&p, &rd);
      first_read[r] = (double)rd;
      ms_tensor_release(t);
    }
    ms_tensor_t *t = alloc_bytes(pooled, n);
    memcpy(ms_tensor_data(t), src, n);
    (void)ms_tensor_descriptor(t, desc, sizeof(desc));
    uint64_t rd;
    for (int r = -1; r < reps; r++) { /* r = -1 warms both up */
      fprintf(p.in, "heap %s\n", arg);
      fflush(p.in);
      double heap_ns = (double)peer_reply(&p, NULL);
      fprintf(p.in, "open %s\n", desc);
      fflush(p.in);
      (void)peer_reply(&p, &rd);
      if (r >= 0) {
        v[r] = heap_ns;
        w[r] = (double)rd;
      }
    }
    ms_tensor_release(t);
    double heap_read = n / GIB / (msb_median(v, reps) / 1e9);
    double shm_read = n / GIB / (msb_median(first_read, nf) / 1e9);
    double shm_read_cached = n / GIB / (msb_median(w, reps) / 1e9);
    double open1_us = msb_median(first_open, nf) / 1e3;

    /* Full cycles. */
    double open_ns = 0, per[3];
    ms_shm_t *from[3] = {pooled, pooled, fresh};
    const int window[3] = {1, 4, 4};
    for (int k = 0; k < 3; k++) {
      (void)stream_shm(&p, from[k], src, n, window[k], 2, NULL); /* warm */
      for (int r = 0; r < reps; r++)
        v[r] = stream_shm(&p, from[k], src, n, window[k], frames,
                          k == 0 ? &w[r] : NULL);
      per[k] = msb_median(v, reps);
      if (k == 0)
        open_ns = msb_median(w, reps);
    }
    ms_tensor_t *staging = alloc_bytes(pooled, n);
    for (int r = 0; r < reps; r++)
      v[r] = stream_pipe(&p, staging, src, n, 4, frames);
    ms_tensor_release(staging);
    double pipe_gibs = n / GIB / msb_median(v, reps);
    const char *why = NULL;
    double py = python_gibs(n, reps, &why);

    double pool1 = n / GIB / per[0], pool4 = n / GIB / per[1],
           fresh4 = n / GIB / per[2];
    int ok_read = shm_read_cached >= 0.9 * heap_read;
    int ok_open = open_ns <= 10000;
    int ok_cycle = pool1 >= 0.9 * floor_gibs;
    int ok_py = py <= 0 || pool1 >= 3 * py;
    all_ok &= ok_read && ok_open && ok_cycle && ok_py;
    printf("%5zu MiB %9.2f %9.2f %9.2f %9.2f %9.2f %9.1f %9.2f %9.2f %9.2f "
           "%9.2f %9.2f\n",
           o->sizes_mib[s], floor_gibs, heap_read, shm_read, shm_read_cached,
           open_ns / 1e3, open1_us, pool1, pool4, fresh4, pipe_gibs,
           py > 0 ? py : 0.0);
    printf("%9s cached read %.0f%% of heap %s | open %.2f us %s | pooled "
           "cycle %.0f%% of floor %s (streaming %.0f%%) | %.1fx python %s | "
           "%.1fx pipe\n",
           "", 100 * shm_read_cached / heap_read, msb_pass(ok_read),
           open_ns / 1e3, msb_pass(ok_open), 100 * pool1 / floor_gibs,
           msb_pass(ok_cycle), 100 * pool4 / floor_gibs,
           py > 0 ? pool1 / py : 0, py > 0 ? msb_pass(ok_py) : why,
           pool1 / pipe_gibs);

    cJSON *e = cJSON_CreateObject();
    cJSON_AddItemToArray(arr, e);
    cJSON_AddNumberToObject(e, "size_bytes", (double)n);
    cJSON_AddNumberToObject(e, "floor_gibs", floor_gibs);
    cJSON_AddNumberToObject(e, "heap_read_gibs", heap_read);
    cJSON_AddNumberToObject(e, "shm_read_gibs", shm_read);
    cJSON_AddNumberToObject(e, "shm_read_cached_gibs", shm_read_cached);
    cJSON_AddNumberToObject(e, "handoff_us_median", open_ns / 1e3);
    cJSON_AddNumberToObject(e, "handoff_first_open_us_median", open1_us);
    cJSON_AddNumberToObject(e, "cycle_fresh_gibs", fresh4);
    cJSON_AddNumberToObject(e, "cycle_pooled_gibs", pool1);
    cJSON_AddNumberToObject(e, "cycle_pooled_streaming_gibs", pool4);
    cJSON_AddNumberToObject(e, "pipe_serialization_gibs", pipe_gibs);
    if (py > 0)
      cJSON_AddNumberToObject(e, "python_mp_shm_gibs", py);
    else
      cJSON_AddNullToObject(e, "python_mp_shm_gibs");
    free(src);
    free(dst);
  }
  printf("(GiB/s; open us = descriptor open in the consumer for a pooled, "
         "recycled region; open1 = first open of a new region)\n");
  peer_stop(&p);
  free(v);
  free(w);
  (void)all_ok;
  return ms_shm_destroy(pooled) == 0 && ms_shm_destroy(fresh) == 0 ? 0 : -1;
}

int msb_vision(const msb_opts *o, cJSON *root) {
  const size_t n = o->vision_mib << 20;
  const int frames = o->vision_frames;
  msb_progress("vision: %d frames of %zu MiB", frames, o->vision_mib);
  ms_shm_options_t po = MS_SHM_OPTIONS_INIT;
  po.pool_bytes = 2ull << 30;
  ms_shm_t *shm = NULL;
  if (ms_shm_create(&po, &shm) != 0)
    return -1;
  peer p = peer_start(o->self);
  unsigned char *src = malloc(n);
  memset(src, 9, n);
  (void)stream_shm(&p, shm, src, n, 4, 2, NULL); /* warm the pool */
  double shm_per = stream_shm(&p, shm, src, n, 4, frames, NULL);
  ms_tensor_t *staging = alloc_bytes(shm, n);
  double ser_per = stream_pipe(&p, staging, src, n, 4, frames);
  ms_tensor_release(staging);
  peer_stop(&p);
  free(src);
  double fps_shm = 1 / shm_per, fps_ser = 1 / ser_per;
  printf("\n== Vision pipeline: %zu MiB frames, producer -> consumer reading "
         "every byte ==\n",
         o->vision_mib);
  printf("shared memory %.1f fps, serialization (safetensors over a pipe) "
         "%.1f fps: %.1fx  %s (>= 12x)\n",
         fps_shm, fps_ser, fps_shm / fps_ser,
         msb_pass(fps_shm / fps_ser >= 12));
  cJSON *j = cJSON_AddObjectToObject(root, "vision");
  cJSON_AddNumberToObject(j, "frame_bytes", (double)n);
  cJSON_AddNumberToObject(j, "frames", frames);
  cJSON_AddNumberToObject(j, "fps_shm", fps_shm);
  cJSON_AddNumberToObject(j, "fps_serialization", fps_ser);
  cJSON_AddNumberToObject(j, "speedup", fps_shm / fps_ser);
  return ms_shm_destroy(shm) == 0 ? 0 : -1;
}
