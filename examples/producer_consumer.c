/*
 * Two processes, a decoder and an inference stage, joined by descriptor
 * channels: the producer writes video frames (1080p RGB, uint8
 * [1080, 1920, 3]) into shared-memory tensors and sends each one on the
 * channel "frames-<pid>" (ms_channel_send_tensor), releasing its own handle
 * at once: the channel keeps the frame alive until the consumer has it.
 * The consumer receives each frame already opened (read-only, in place),
 * reads and checks every byte, and answers on "sums-<pid>" with the frame's
 * number and checksum, so that the producer can verify it.  Up to four
 * frames are in flight, as in a real pipeline.  Prints frames per second.
 * Exits non-zero if any frame arrives corrupted, the consumer fails, or the
 * pool never recycles a region.
 *
 *   producer_consumer [FRAMES]          (default 200)
 *
 * The consumer is this same program, started as "producer_consumer
 * --consumer PID".
 */
#include <modelshare.h>
#include <uv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define H 1080
#define W 1920
#define C 3
#define WINDOW 4
#define WAIT_MS 30000 /* a peer silent this long is stuck: give up */

static unsigned char frame_byte(long frame, size_t i) {
  return (unsigned char)(frame * 31 + (long)(i % 251));
}

static int consumer(const char *pid) {
  ms_shm_t *shm = NULL;
  int rc = ms_shm_create(NULL, &shm);
  if (rc != 0) {
    fprintf(stderr, "consumer: %s\n", ms_shm_errmsg(NULL));
    return 1;
  }
  char name[64];
  ms_channel_t *in = NULL, *sums = NULL;
  (void)snprintf(name, sizeof(name), "frames-%s", pid);
  rc = ms_channel_open(shm, name, NULL, &in); /* attached from now on */
  (void)snprintf(name, sizeof(name), "sums-%s", pid);
  if (rc == 0)
    rc = ms_channel_create(shm, name, NULL, &sums);
  if (rc != 0) {
    fprintf(stderr, "consumer: %s\n", ms_channel_errmsg(NULL));
    return 1;
  }
  long frames = 0, bad = 0;
  for (;;) {
    ms_tensor_t *t = NULL;
    long frame = 0;
    size_t n = 0;
    rc = ms_channel_recv_tensor(in, 0, WAIT_MS, &t, &frame, sizeof(frame), &n);
    if (rc == MS_EPIPE) /* the producer closed, and we have every frame */
      break;
    if (rc != 0 || t == NULL) {
      fprintf(stderr, "consumer: %s: %s\n", ms_err_name(rc),
              ms_channel_errmsg(in));
      return 1;
    }
    /* Read every byte in place, as an inference stage would. */
    const unsigned char *px = ms_tensor_data(t);
    size_t bytes = ms_tensor_nbytes(t);
    unsigned long sum = 0;
    for (size_t i = 0; i < bytes; i++)
      sum += px[i];
    if (ms_tensor_ndim(t) != 3 || ms_tensor_shape(t)[1] != W ||
        px[0] != frame_byte(frame, 0) ||
        px[bytes - 1] != frame_byte(frame, bytes - 1))
      bad++;
    ms_tensor_release(t);
    frames++;
    unsigned long reply[2] = {(unsigned long)frame, sum};
    if (ms_channel_send(sums, reply, sizeof(reply), WAIT_MS) != 0)
      return 1;
  }
  (void)ms_channel_flush(sums, WAIT_MS);
  ms_channel_close(sums);
  ms_channel_close(in);
  ms_shm_destroy(shm);
  fprintf(stderr, "consumer: %ld frames read in place, %ld bad\n", frames, bad);
  return bad == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--consumer") == 0)
    return consumer(argv[2]);
  long frames = argc > 1 ? atol(argv[1]) : 200;
  if (frames < 1)
    frames = 200;

  ms_shm_t *shm = NULL;
  if (ms_shm_create(NULL, &shm) != 0) {
    fprintf(stderr, "producer: %s\n", ms_shm_errmsg(NULL));
    return 1;
  }
  char pid_s[32], name[64];
  (void)snprintf(pid_s, sizeof(pid_s), "%d", (int)getpid());
  (void)snprintf(name, sizeof(name), "frames-%s", pid_s);
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  o.capacity = WINDOW;
  ms_channel_t *out = NULL, *sums = NULL;
  if (ms_channel_create(shm, name, &o, &out) != 0) {
    fprintf(stderr, "producer: %s\n", ms_channel_errmsg(NULL));
    return 1;
  }
  pid_t pid = fork();
  if (pid == 0) {
    execl(argv[0], argv[0], "--consumer", pid_s, (char *)NULL);
    _exit(127);
  }
  /* The consumer creates "sums" once it is attached to "frames". */
  (void)snprintf(name, sizeof(name), "sums-%s", pid_s);
  for (int i = 0; i < WAIT_MS && ms_channel_open(shm, name, NULL, &sums) != 0;
       i++)
    usleep(1000);
  if (sums == NULL) {
    fprintf(stderr, "producer: the consumer never attached\n");
    return 1;
  }

  const int64_t shape[3] = {H, W, C};
  unsigned long want[WINDOW] = {0}; /* the checksum of each frame in flight */
  long sent = 0, done = 0, bad = 0;
  uint64_t t0 = uv_hrtime();
  while (done < frames) {
    if (sent < frames && sent - done < WINDOW) {
      ms_tensor_t *t = NULL;
      int rc = ms_tensor_alloc(shm, MS_DTYPE_UINT8, 3, shape, "decoder", &t);
      if (rc != 0) {
        fprintf(stderr, "producer: %s\n", ms_shm_errmsg(shm));
        return 1;
      }
      /* "Decode" the frame straight into shared memory. */
      unsigned char *px = ms_tensor_data(t);
      size_t n = ms_tensor_nbytes(t);
      unsigned long sum = 0;
      for (size_t i = 0; i < n; i++) {
        px[i] = frame_byte(sent, i);
        sum += px[i];
      }
      want[sent % WINDOW] = sum;
      rc = ms_channel_send_tensor(out, t, &sent, sizeof(sent), WAIT_MS);
      ms_tensor_release(t); /* the channel holds it until it is received */
      if (rc != 0) {
        fprintf(stderr, "producer: %s\n", ms_channel_errmsg(out));
        return 1;
      }
      sent++;
      continue;
    }
    unsigned long reply[2] = {0, 0};
    size_t n = 0;
    int rc = ms_channel_recv(sums, reply, sizeof(reply), &n, WAIT_MS);
    if (rc != 0) {
      fprintf(stderr, "producer: no answer from the consumer: %s\n",
              ms_err_name(rc));
      return 1;
    }
    if (n != sizeof(reply) || reply[0] != (unsigned long)done ||
        reply[1] != want[done % WINDOW]) {
      fprintf(stderr, "producer: frame %ld came back as %lu %lu\n", done,
              reply[0], reply[1]);
      bad++;
    }
    done++;
  }
  double secs = (double)(uv_hrtime() - t0) / 1e9;
  ms_channel_close(out); /* the consumer drains it, then sees MS_EPIPE */
  int status = 0;
  waitpid(pid, &status, 0);
  ms_channel_close(sums);

  ms_shm_stats_t st = MS_SHM_STATS_INIT;
  (void)ms_shm_stats(shm, &st);
  double mb = (double)frames * H * W * C / 1e6;
  printf("%ld frames of %dx%dx%d in %.2f s: %.1f frames/s, %.0f MB/s through "
         "shared memory\n",
         frames, H, W, C, secs, frames / secs, mb / secs);
  printf("allocations %llu, served from the pool %llu\n",
         (unsigned long long)st.allocations, (unsigned long long)st.pool_hits);
  /* Past the first window every allocation can reuse a released region. */
  int pooled = frames <= WINDOW + 1 || st.pool_hits > 0;
  if (!pooled)
    fprintf(stderr, "producer: no allocation was served from the pool\n");
  if (bad != 0)
    fprintf(stderr, "producer: %ld of %ld frames failed the checksum\n", bad,
            frames);
  int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && bad == 0 &&
           pooled && ms_shm_destroy(shm) == 0;
  return ok ? 0 : 1;
}
