/* libFuzzer: the descriptor parser, through ms_tensor_open on an allocator
 * whose namespace is an empty private directory: every input must be
 * refused (nothing exists to open), and never touch a path outside it. */
#include "modelshare.h"

#include "fuzz_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ms_shm_t *shm;
static char dir[256];

static void cleanup(void) {
  ms_shm_destroy(shm);
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
  atexit(cleanup);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = fuzz_cstr(data, size);
  if (text == NULL)
    return 0;
  ms_tensor_t *t = NULL;
  int rc = ms_tensor_open(shm, text, 0, &t);
  if (rc == 0 || (rc != MS_EINVAL && rc != MS_ENOENT))
    abort(); /* nothing exists: only "malformed" or "absent" are possible */
  free(text);
  return 0;
}
