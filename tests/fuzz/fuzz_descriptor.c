/* libFuzzer: the descriptor parser, through ms_tensor_open on a named and a
 * memfd allocator whose namespace is an empty private directory: every ms1
 * input must be refused as malformed or absent (nothing exists to open),
 * and never touch a path outside it.  An ms2 input names another process's
 * descriptor (/proc/<pid>/fd/<n>), the only path it may touch: whatever is
 * there, it is refused (the 128-bit identity cannot match). */
#include "modelshare.h"

#include "fuzz_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ms_shm_t *shm, *shm_memfd;
static char dir[256];

static void cleanup(void) {
  ms_shm_destroy(shm);
  ms_shm_destroy(shm_memfd);
  rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  /* scripts/fuzz.sh points MS_FUZZ_DIR at a tmpfs directory it removes
   * afterwards, even when a target dies. */
  const char *base = getenv("MS_FUZZ_DIR");
  (void)snprintf(dir, sizeof(dir), "%s/ns-XXXXXX", base ? base : "/dev/shm");
  if (mkdtemp(dir) == NULL)
    abort();
  o.dir = dir;
  if (ms_shm_create(&o, &shm) != 0)
    abort();
  o.backend = MS_SHM_BACKEND_MEMFD;
  if (ms_shm_create(&o, &shm_memfd) != 0)
    abort();
  atexit(cleanup);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = fuzz_cstr(data, size);
  if (text == NULL)
    return 0;
  const int v2 = strncmp(text, "ms2:", 4) == 0;
  ms_shm_t *both[2] = {shm, shm_memfd};
  for (int i = 0; i < 2; i++) {
    ms_tensor_t *t = NULL;
    int rc = ms_tensor_open(both[i], text, 0, &t);
    if (rc == 0 || (!v2 && rc != MS_EINVAL && rc != MS_ENOENT))
      abort(); /* nothing exists: only "malformed" or "absent" are possible */
  }
  free(text);
  return 0;
}
