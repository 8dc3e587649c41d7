/* libFuzzer: the channel ring header validator and the receive path, fed
 * as a ring file (and the ring and staging name parsers, fed its first
 * bytes).  Each input becomes the bytes of msch-fz.ring in a
 * private tmpfs directory; the header validator runs on the input itself,
 * then a subscriber opens the file and receives with timeout 0 (raw and
 * tensor), so that validated geometry and every slot field are exercised.
 * A non-zero producer token in the input is replaced by our own, which is
 * alive, so that inputs get past the liveness check. */
#include "fuzz_util.h"
#include "internal/channel.h"
#include "internal/shm.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
  (void)snprintf(path, sizeof(path), "%s/msch-fz.ring", dir);
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.dir = dir;
  o.prefix = "fzch-";
  o.open_cache = 0;
  if (ms_shm_create(&o, &shm) != 0)
    abort();
  atexit(cleanup);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ms__ch_geom g;
  (void)ms__ch_hdr_validate(data, size, &g); /* the bare validator */
  /* The names a reclaim reads from the namespace listing. */
  char name[96];
  size_t nl = size < sizeof(name) - 1 ? size : sizeof(name) - 1;
  memcpy(name, data, nl);
  name[nl] = '\0';
  uint64_t stage_token = 0;
  (void)ms__ch_obj_parse(name);
  (void)ms__ch_stage_parse(name, &stage_token);
  if (size == 0)
    return 0;

  uint8_t *copy = malloc(size > 0 ? size : 1);
  if (copy == NULL)
    abort();
  memcpy(copy, data, size);
  uint64_t token = 0;
  if (size >= 64) {
    memcpy(&token, copy + 56, sizeof(token));
    if (token != 0)
      memcpy(copy + 56, &shm->token, sizeof(shm->token));
  }
  int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
  if (fd < 0)
    abort();
  if (size > 0 && write(fd, copy, size) != (ssize_t)size)
    abort();
  close(fd);
  free(copy);

  ms_channel_t *ch = NULL;
  if (ms_channel_open(shm, "fz", NULL, &ch) != 0)
    return 0;
  /* Publish 1..4 of the input's own slots to this subscriber, as a
   * producer would (or a scribbler), by moving head. */
  int mfd = open(path, O_RDWR);
  void *m = mfd >= 0
                ? mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0)
                : MAP_FAILED;
  if (mfd >= 0)
    close(mfd);
  if (m != MAP_FAILED) {
    ms__ch_hdr *h = m;
    atomic_fetch_add(&h->head, 1u + (data[size - 1] & 3u));
    munmap(m, size);
  }
  unsigned char buf[256];
  size_t n = 0;
  for (int i = 0; i < 4; i++) {
    ms_tensor_t *t = NULL;
    if (ms_channel_recv_tensor(ch, 0, 0, &t, buf, sizeof(buf), &n) == 0)
      ms_tensor_release(t);
    (void)ms_channel_recv(ch, buf, sizeof(buf), &n, 0);
  }
  ms_channel_close(ch);
  return 0;
}
