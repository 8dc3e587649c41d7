/*
 * Two processes, a decoder and an inference stage: the producer writes
 * video frames (1080p RGB, uint8 [1080, 1920, 3]) into shared-memory
 * tensors and sends each frame's descriptor over a pipe; the consumer opens
 * the descriptor, reads the frame in place (no copy) and checks it, then
 * answers with the frame's checksum so that the producer can verify it and
 * recycle the frame.  Up to four frames are in flight, as in a real
 * pipeline.  Prints frames per second.  Exits non-zero if any frame arrives
 * corrupted, the consumer fails, or the pool never recycles a region.
 *
 *   producer_consumer [FRAMES]          (default 200)
 *
 * The consumer is this same program, started as "producer_consumer
 * --consumer" with its stdin and stdout connected to the producer.
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

static unsigned char frame_byte(long frame, size_t i) {
  return (unsigned char)(frame * 31 + (long)(i % 251));
}

static int consumer(void) {
  ms_shm_t *shm = NULL;
  int rc = ms_shm_create(NULL, &shm);
  if (rc != 0) {
    fprintf(stderr, "consumer: %s\n", ms_shm_errmsg(NULL));
    return 1;
  }
  char line[128];
  long frames = 0, bad = 0;
  while (fgets(line, sizeof(line), stdin) != NULL) {
    long frame = 0;
    char desc[MS_DESCRIPTOR_MAX];
    if (sscanf(line, "%ld %95s", &frame, desc) != 2)
      break;
    ms_tensor_t *t = NULL;
    rc = ms_tensor_open(shm, desc, 0, &t); /* read-only, in place */
    if (rc != 0) {
      fprintf(stderr, "consumer: %s: %s\n", ms_err_name(rc),
              ms_shm_errmsg(shm));
      return 1;
    }
    /* Read every byte, as an inference stage would. */
    const unsigned char *px = ms_tensor_data(t);
    size_t n = ms_tensor_nbytes(t);
    unsigned long sum = 0;
    for (size_t i = 0; i < n; i++)
      sum += px[i];
    if (ms_tensor_ndim(t) != 3 || ms_tensor_shape(t)[1] != W ||
        px[0] != frame_byte(frame, 0) || px[n - 1] != frame_byte(frame, n - 1))
      bad++;
    ms_tensor_release(t);
    frames++;
    printf("%ld %lu\n", frame, sum);
    fflush(stdout);
  }
  ms_shm_destroy(shm);
  fprintf(stderr, "consumer: %ld frames read in place, %ld bad\n", frames, bad);
  return bad == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--consumer") == 0)
    return consumer();
  long frames = argc > 1 ? atol(argv[1]) : 200;
  if (frames < 1)
    frames = 200;

  int to[2], from[2];
  if (pipe(to) != 0 || pipe(from) != 0)
    return 1;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(to[0], 0);
    dup2(from[1], 1);
    close(to[0]), close(to[1]), close(from[0]), close(from[1]);
    execl(argv[0], argv[0], "--consumer", (char *)NULL);
    _exit(127);
  }
  close(to[0]);
  close(from[1]);
  FILE *out = fdopen(to[1], "w"), *in = fdopen(from[0], "r");

  ms_shm_t *shm = NULL;
  if (ms_shm_create(NULL, &shm) != 0) {
    fprintf(stderr, "producer: %s\n", ms_shm_errmsg(NULL));
    return 1;
  }
  const int64_t shape[3] = {H, W, C};
  ms_tensor_t *inflight[WINDOW] = {0};
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
      char desc[MS_DESCRIPTOR_MAX];
      (void)ms_tensor_descriptor(t, desc, sizeof(desc));
      fprintf(out, "%ld %s\n", sent, desc);
      fflush(out);
      inflight[sent++ % WINDOW] = t;
      continue;
    }
    char line[64];
    long frame = -1;
    unsigned long sum = 0;
    if (fgets(line, sizeof(line), in) == NULL) {
      fprintf(stderr, "producer: the consumer died\n");
      return 1;
    }
    if (sscanf(line, "%ld %lu", &frame, &sum) != 2 || frame != done ||
        sum != want[done % WINDOW]) {
      fprintf(stderr, "producer: frame %ld came back as \"%.*s\"\n", done,
              (int)strcspn(line, "\n"), line);
      bad++;
    }
    ms_tensor_release(inflight[done++ % WINDOW]); /* back to the pool */
  }
  double secs = (double)(uv_hrtime() - t0) / 1e9;
  fclose(out);
  int status = 0;
  waitpid(pid, &status, 0);
  fclose(in);

  ms_shm_stats_t st = MS_SHM_STATS_INIT;
  (void)ms_shm_stats(shm, &st);
  double mb = (double)frames * H * W * C / 1e6;
  printf("%ld frames of %dx%dx%d in %.2f s: %.1f frames/s, %.0f MB/s through "
         "shared memory\n",
         frames, H, W, C, secs, frames / secs, mb / secs);
  printf("allocations %llu, served from the pool %llu\n",
         (unsigned long long)st.allocations, (unsigned long long)st.pool_hits);
  /* Past the first window every allocation can reuse a released region. */
  int pooled = frames <= WINDOW || st.pool_hits > 0;
  if (!pooled)
    fprintf(stderr, "producer: no allocation was served from the pool\n");
  if (bad != 0)
    fprintf(stderr, "producer: %ld of %ld frames failed the checksum\n", bad,
            frames);
  int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && bad == 0 &&
           pooled && ms_shm_destroy(shm) == 0;
  return ok ? 0 : 1;
}
