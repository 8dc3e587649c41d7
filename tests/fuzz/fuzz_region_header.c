/* libFuzzer: the region header validator, fed as a region file.  Each
 * input becomes the bytes of a region in a private tmpfs directory, which
 * is then opened by descriptor (generation taken from the input's own
 * header, so valid-looking regions get far).  A region that opens must be
 * readable end to end without a fault. */
#include "fuzz_util.h"
#include "modelshare.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NAME "fz-00000000000000aa-0123456789abcdef0123456789abcdef"

static ms_shm_t *shm;
static char dir[256];
static char path[128];

static void cleanup(void) {
  ms_shm_destroy(shm);
  unlink(path);
  rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_ns_dir(dir, sizeof(dir));
  (void)snprintf(path, sizeof(path), "%s/%s", dir, NAME);
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.dir = dir;
  o.prefix = "fzc-"; /* sweeps leave the fuzzed region alone */
  o.open_cache = 0;  /* every input is mapped afresh */
  if (ms_shm_create(&o, &shm) != 0)
    abort();
  atexit(cleanup);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
  if (fd < 0)
    abort();
  if (size > 0 && write(fd, data, size) != (ssize_t)size)
    abort();
  close(fd);

  uint64_t life = 0;
  if (size >= 24)
    memcpy(&life, data + 16, sizeof(life));
  char desc[MS_DESCRIPTOR_MAX];
  (void)snprintf(desc, sizeof(desc), "ms1:%s:%llx", NAME,
                 (unsigned long long)(life >> 8));
  for (unsigned flags = 0; flags <= MS_OPEN_WRITE; flags += MS_OPEN_WRITE) {
    ms_tensor_t *t = NULL;
    if (ms_tensor_open(shm, desc, flags, &t) != 0)
      continue;
    /* Everything the validated header promises must be mapped. */
    const volatile uint8_t *p = ms_tensor_data(t);
    uint8_t x = 0;
    for (size_t i = 0; i < ms_tensor_nbytes(t); i++)
      x ^= p[i];
    (void)x;
    if ((uintptr_t)ms_tensor_data(t) % 64 != 0)
      abort();
    ms_tensor_release(t);
  }
  return 0;
}
