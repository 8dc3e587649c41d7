/*
 * A separate process for the shared-memory tests: producer, consumer,
 * holder, or a process that misbehaves.  Each mode uses its own allocator,
 * as a real peer process would.
 *
 *   shm_helper produce  DIR BYTES SEED     allocate, fill, print descriptor,
 *                                          release when stdin closes
 *   shm_helper publish  DIR BYTES SEED     same, then hang (to be killed)
 *   shm_helper consume  DIR DESC BYTES SEED  open read-only, verify; DESC
 *                                          "-": print "ready", then read
 *                                          the descriptor from stdin
 *   shm_helper hold     DIR DESC           open, print "held", hang
 *   shm_helper write-ro DIR DESC           open read-only, write (faults)
 *   shm_helper dlpack   DIR                float32 [4,256] = i/2; on each
 *                                          stdin line "bump", data[0] += 1000
 *   shm_helper storm-produce DIR SEED      forever: allocate 64 KiB..2 MiB,
 *                                          fill, print "seq bytes desc",
 *                                          hold a few, release the oldest
 *   shm_helper storm-consume DIR           for each line: open, verify every
 *                                          byte, hold a while; one byte on
 *                                          stdout per verified frame; exit 2
 *                                          on torn data
 *
 * DIR "-" means the default namespace.  The environment variables
 * MS_HELPER_PREFIX and MS_HELPER_POOL set the allocator's prefix and
 * pool_bytes.  Exit status: 0 ok, 2 wrong data, 10 + (-error code) when a
 * library call fails.
 */
#include "modelshare.h"
#include "shm_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef _WIN32
#include <windows.h>
static void hang(void) {
  for (;;)
    Sleep(INFINITE);
}
/* An access violation ends the process with its status code, without
 * starting a debugger (Wine's winedbg, Windows Error Reporting). */
static LONG WINAPI exit_on_fault(EXCEPTION_POINTERS *e) {
  ExitProcess((UINT)e->ExceptionRecord->ExceptionCode);
}
static void plain_crashes(void) { SetUnhandledExceptionFilter(exit_on_fault); }
#else
static void hang(void) {
  for (;;)
    pause();
}
static void plain_crashes(void) {}
#endif

static ms_shm_t *shm_open_dir(const char *dir) {
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.backend = test_backend();
  o.dir = strcmp(dir, "-") == 0 ? NULL : dir;
  /* The storm varies the configuration per process. */
  if (getenv("MS_HELPER_PREFIX") != NULL)
    o.prefix = getenv("MS_HELPER_PREFIX");
  if (getenv("MS_HELPER_POOL") != NULL)
    o.pool_bytes = strtoull(getenv("MS_HELPER_POOL"), NULL, 0);
  ms_shm_t *shm = NULL;
  int rc = ms_shm_create(&o, &shm);
  if (rc != 0) {
    fprintf(stderr, "helper: ms_shm_create: %s\n", ms_shm_errmsg(NULL));
    exit(10 - rc);
  }
  return shm;
}

static unsigned char pattern(size_t i, unsigned seed) {
  return (unsigned char)((i * 2654435761u) >> 13 ^ seed);
}

/* Fails cleanly: the allocator is destroyed, so only deliberate crashes
 * leave anything for a sweep. */
static void check(int rc, ms_shm_t *shm, const char *what) {
  if (rc != 0) {
    fprintf(stderr, "helper: %s: %s (%s)\n", what, ms_err_name(rc),
            ms_shm_errmsg(shm));
    ms_shm_destroy(shm);
    exit(10 - rc);
  }
}

static ms_tensor_t *produce(ms_shm_t *shm, size_t bytes, unsigned seed) {
  int64_t shape[1] = {(int64_t)bytes};
  ms_tensor_t *t = NULL;
  check(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, "helper", &t), shm,
        "alloc");
  unsigned char *p = ms_tensor_data(t);
  for (size_t i = 0; i < bytes; i++)
    p[i] = pattern(i, seed);
  char desc[MS_DESCRIPTOR_MAX];
  check(ms_tensor_descriptor(t, desc, sizeof(desc)), shm, "descriptor");
  printf("%s\n", desc);
  fflush(stdout);
  return t;
}

static void wait_stdin_eof(void) {
  char line[64];
  while (fgets(line, sizeof(line), stdin) != NULL)
    ;
}

int main(int argc, char **argv) {
  if (argc < 3)
    return 64;
  const char *mode = argv[1];
  ms_shm_t *shm = shm_open_dir(argv[2]);

  if ((strcmp(mode, "produce") == 0 || strcmp(mode, "publish") == 0) &&
      argc == 5) {
    ms_tensor_t *t =
        produce(shm, strtoull(argv[3], NULL, 10), (unsigned)atoi(argv[4]));
    if (strcmp(mode, "publish") == 0)
      hang();
    wait_stdin_eof();
    ms_tensor_release(t);
  } else if (strcmp(mode, "consume") == 0 && argc == 6) {
    char desc[MS_DESCRIPTOR_MAX + 2];
    if (strcmp(argv[3], "-") == 0) {
      printf("ready\n");
      fflush(stdout);
      if (fgets(desc, sizeof(desc), stdin) == NULL)
        return 64;
      desc[strcspn(desc, "\n")] = '\0';
    } else {
      snprintf(desc, sizeof(desc), "%s", argv[3]);
    }
    ms_tensor_t *t = NULL;
    check(ms_tensor_open(shm, desc, 0, &t), shm, "open");
    size_t bytes = strtoull(argv[4], NULL, 10);
    unsigned seed = (unsigned)atoi(argv[5]);
    const unsigned char *p = ms_tensor_data(t);
    int wrong =
        ms_tensor_nbytes(t) != bytes || ms_tensor_dtype(t) != MS_DTYPE_UINT8;
    for (size_t i = 0; !wrong && i < bytes; i++)
      wrong = p[i] != pattern(i, seed);
    ms_tensor_release(t);
    if (wrong) {
      ms_shm_destroy(shm);
      return 2;
    }
  } else if (strcmp(mode, "hold") == 0 && argc == 4) {
    ms_tensor_t *t = NULL;
    check(ms_tensor_open(shm, argv[3], 0, &t), shm, "open");
    printf("held\n");
    fflush(stdout);
    hang();
  } else if (strcmp(mode, "write-ro") == 0 && argc == 4) {
    ms_tensor_t *t = NULL;
    check(ms_tensor_open(shm, argv[3], 0, &t), shm, "open");
    volatile unsigned char *p = ms_tensor_data(t);
    plain_crashes();
    p[0] = (unsigned char)(p[0] + 1); /* must fault: mapped read-only */
    return 3;
  } else if (strcmp(mode, "dlpack") == 0 && argc == 3) {
    int64_t shape[2] = {4, 256};
    ms_tensor_t *t = NULL;
    check(ms_tensor_alloc(shm, MS_DTYPE_FLOAT32, 2, shape, NULL, &t), shm,
          "alloc");
    float *f = ms_tensor_data(t);
    for (int i = 0; i < 4 * 256; i++)
      f[i] = (float)i / 2;
    char desc[MS_DESCRIPTOR_MAX], line[64];
    check(ms_tensor_descriptor(t, desc, sizeof(desc)), shm, "descriptor");
    printf("%s\n", desc);
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin) != NULL) {
      f[0] += 1000.0f;
      printf("bumped\n");
      fflush(stdout);
    }
    ms_tensor_release(t);
  } else if (strcmp(mode, "storm-produce") == 0 && argc == 4) {
    unsigned seed = (unsigned)atoi(argv[3]), r = seed * 2654435761u + 1;
    ms_tensor_t *held[4] = {0};
    setvbuf(stdout, NULL, _IOLBF, 0); /* one write() per line: atomic */
    for (unsigned long long seq = (unsigned long long)seed << 32;; seq++) {
      r = r * 1103515245u + 12345u;
      size_t bytes = (size_t)(64u << 10) + (r >> 8) % (2u << 20);
      int64_t shape[1] = {(int64_t)bytes};
      ms_tensor_t *t = NULL;
      if (ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &t) != 0)
        continue;
      unsigned char *p = ms_tensor_data(t);
      for (size_t i = 0; i < bytes; i++)
        p[i] = pattern(i, (unsigned)seq);
      char desc[MS_DESCRIPTOR_MAX];
      (void)ms_tensor_descriptor(t, desc, sizeof(desc));
      printf("%llu %zu %s\n", seq, bytes, desc); /* only once complete */
      ms_tensor_release(held[seq % 4]);
      held[seq % 4] = t;
    }
  } else if (strcmp(mode, "storm-consume") == 0 && argc == 3) {
    char line[256];
    ms_tensor_t *held = NULL;
    unsigned n = 0;
    while (fgets(line, sizeof(line), stdin) != NULL) {
      unsigned long long seq = 0;
      size_t bytes = 0;
      char desc[MS_DESCRIPTOR_MAX];
      if (sscanf(line, "%llu %zu %95s", &seq, &bytes, desc) != 3)
        continue; /* a line cut by a killed producer */
      ms_tensor_t *t = NULL;
      if (ms_tensor_open(shm, desc, 0, &t) != 0)
        continue; /* released or swept meanwhile: not ours to read */
      const unsigned char *p = ms_tensor_data(t);
      if (ms_tensor_nbytes(t) != bytes)
        return 2;
      for (size_t i = 0; i < bytes; i++)
        if (p[i] != pattern(i, (unsigned)seq)) {
          fprintf(stderr, "storm-consume: torn frame %llu at byte %zu\n", seq,
                  i);
          return 2;
        }
      if (write(1, "+", 1) != 1)
        return 3;
      ms_tensor_release(held); /* hold one frame across the next */
      held = ++n % 3 ? t : NULL;
      if (held == NULL)
        ms_tensor_release(t);
    }
    ms_tensor_release(held);
  } else {
    return 64;
  }
  return ms_shm_destroy(shm) == 0 ? 0 : 9;
}
