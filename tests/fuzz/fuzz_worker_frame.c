/* libFuzzer: the model worker's frame decoder and stream framer.  Each
 * input is a byte stream as a peer would send it: it is decoded whole as
 * one frame (ms__wire_decode), then fed to the framer in chunks whose
 * sizes come from the input's first byte, and every frame the framer
 * yields is decoded and, like the worker and client do, its inline tensors
 * are deserialized and its descriptors opened in a private namespace. */
#include "fuzz_util.h"
#include "internal/wire.h"

#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_BODY (1u << 20)

static ms_shm_t *shm;
static char dir[256];

static void cleanup(void) {
  ms_shm_destroy(shm);
  rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_ns_dir(dir, sizeof(dir));
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.dir = dir;
  o.prefix = "fzwf-";
  if (ms_shm_create(&o, &shm) != 0)
    abort();
  atexit(cleanup);
  return 0;
}

/* What the worker or client does with a decoded frame's tensors. */
static void use(const ms__wire_msg *m) {
  if (m->n > MS_WORKER_MAX_TENSORS)
    abort(); /* the decoder must have refused it */
  for (uint16_t i = 0; i < m->n; i++) {
    const ms__wire_tensor *t = &m->t[i];
    ms_tensor_t *x = NULL;
    if (t->kind == MS__T_DESC) {
      char d[MS_DESCRIPTOR_MAX];
      if (t->len == 0 || t->len >= sizeof(d))
        abort();
      memcpy(d, t->bytes, t->len);
      d[t->len] = '\0';
      (void)ms_tensor_open(shm, d, 0, &x);
    } else if (t->kind == MS__T_INLINE) {
      (void)ms_tensor_deserialize(NULL, t->bytes, t->len, &x);
    } else {
      abort();
    }
    ms_tensor_release(x);
  }
  if (m->str_len > 0 && m->str == NULL)
    abort();
}

static int on_frame(void *ctx, uint8_t *buf, size_t len, int owned) {
  ms__wire_msg m;
  (void)ctx;
  if (ms__wire_decode(buf, len, MAX_BODY, &m, NULL) == 0)
    use(&m);
  if (owned)
    ms__free(buf);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ms__wire_msg m;
  const char *why = NULL;
  if (ms__wire_decode(data, size, MAX_BODY, &m, &why) == 0)
    use(&m);
  else if (why == NULL)
    abort(); /* every refusal says why */
  if (size == 0)
    return 0;
  size_t chunk = 1 + data[0] % 97u * 31u; /* 1 .. 2977 bytes per read */
  ms__framer f = {NULL, 0, NULL, 0, 0, MAX_BODY};
  size_t off = 0;
  while (off < size) {
    char *base;
    size_t room;
    ms__framer_buf(&f, &base, &room);
    if (room == 0)
      break;
    size_t n = size - off < chunk ? size - off : chunk;
    n = n < room ? n : room;
    memcpy(base, data + off, n);
    off += n;
    if (ms__framer_feed(&f, n, on_frame, NULL) < 0)
      break; /* a bad header: the connection would close */
  }
  ms__framer_free(&f);
  return 0;
}
