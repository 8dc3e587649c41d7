/* Micro-benchmarks (bodies in C, run by Google Benchmark through the
 * shim): registry hits vs a mutex pair, pooled tensor allocation,
 * descriptor opens, safetensors encode/decode. */
#include "bench.h"
#include "gbench_shim.h"

#include <uv.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int load_small(void *user, const char *path, const char *config,
                      void **model, size_t *bytes) {
  (void)user, (void)path, (void)config;
  *model = malloc(64);
  *bytes = 64;
  return *model != NULL ? 0 : MS_ENOMEM;
}

static void unload_small(void *user, void *model) {
  (void)user;
  free(model);
}

static struct {
  ms_registry_t *reg;
  ms_key_t *key;
  ms_loader_t loader;
  uv_mutex_t mutex;
  ms_shm_t *shm;
  ms_shm_t *peer; /* a second allocator plays the other process */
} g;

int msb_nproc(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

static void bm_registry_hit(msb_state *st, void *arg) {
  (void)arg;
  ms_model_t *m = NULL;
  while (msb_keep_running(st)) {
    (void)ms_registry_acquire_key(g.reg, g.key, &g.loader, 0, &m);
    ms_model_release(m);
  }
}

static void bm_registry_hit_string(msb_state *st, void *arg) {
  (void)arg;
  ms_model_t *m = NULL;
  while (msb_keep_running(st)) {
    (void)ms_registry_acquire(g.reg, "/models/bench.bin", "{\"beam\":5}",
                              &g.loader, 0, &m);
    ms_model_release(m);
  }
}

static void bm_mutex_pair(msb_state *st, void *arg) {
  (void)arg;
  while (msb_keep_running(st)) {
    uv_mutex_lock(&g.mutex);
    uv_mutex_unlock(&g.mutex);
  }
}

static void bm_tensor_alloc_pooled(msb_state *st, void *arg) {
  int64_t shape[1] = {(int64_t)(size_t)arg};
  while (msb_keep_running(st)) {
    ms_tensor_t *t = NULL;
    (void)ms_tensor_alloc(g.shm, MS_DTYPE_UINT8, 1, shape, NULL, &t);
    ms_tensor_release(t);
  }
}

static void bm_open_cached(msb_state *st, void *arg) {
  (void)arg;
  int64_t shape[1] = {1 << 20};
  ms_tensor_t *t = NULL, *u = NULL;
  char desc[MS_DESCRIPTOR_MAX];
  (void)ms_tensor_alloc(g.shm, MS_DTYPE_UINT8, 1, shape, NULL, &t);
  (void)ms_tensor_descriptor(t, desc, sizeof(desc));
  while (msb_keep_running(st)) {
    (void)ms_tensor_open(g.peer, desc, 0, &u);
    ms_tensor_release(u);
  }
  ms_tensor_release(t);
}

static void bm_open_uncached(msb_state *st, void *arg) {
  (void)arg;
  int64_t shape[1] = {1 << 20};
  char desc[MS_DESCRIPTOR_MAX];
  while (msb_keep_running(st)) {
    msb_pause(st);
    ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
    o.open_cache = 0; /* every open maps anew */
    ms_shm_t *fresh = NULL;
    ms_tensor_t *t = NULL, *u = NULL;
    (void)ms_shm_create(&o, &fresh);
    (void)ms_tensor_alloc(g.shm, MS_DTYPE_UINT8, 1, shape, NULL, &t);
    (void)ms_tensor_descriptor(t, desc, sizeof(desc));
    msb_resume(st);
    (void)ms_tensor_open(fresh, desc, 0, &u);
    msb_pause(st);
    ms_tensor_release(u);
    ms_tensor_release(t);
    (void)ms_shm_destroy(fresh);
    msb_resume(st);
  }
}

static void bm_serialize(msb_state *st, void *arg) {
  int64_t shape[1] = {(int64_t)(size_t)arg};
  ms_tensor_t *t = NULL;
  (void)ms_tensor_alloc(g.shm, MS_DTYPE_UINT8, 1, shape, NULL, &t);
  memset(ms_tensor_data(t), 3, (size_t)shape[0]);
  while (msb_keep_running(st)) {
    void *buf = NULL;
    size_t len = 0;
    (void)ms_tensor_serialize(t, "x", NULL, &buf, &len);
    ms_free(buf);
  }
  ms_tensor_release(t);
}

static void bm_deserialize(msb_state *st, void *arg) {
  int64_t shape[1] = {(int64_t)(size_t)arg};
  ms_tensor_t *t = NULL, *u = NULL;
  void *buf = NULL;
  size_t len = 0;
  (void)ms_tensor_alloc(g.shm, MS_DTYPE_UINT8, 1, shape, NULL, &t);
  memset(ms_tensor_data(t), 3, (size_t)shape[0]);
  (void)ms_tensor_serialize(t, "x", NULL, &buf, &len);
  while (msb_keep_running(st)) {
    (void)ms_tensor_deserialize(NULL, buf, len, &u);
    ms_tensor_release(u);
  }
  ms_free(buf);
  ms_tensor_release(t);
}

void msb_micro_register(void) {
  ms_model_t *m = NULL;
  if (ms_registry_create(NULL, &g.reg) != 0 ||
      ms_key_create("/models/bench.bin", "{\"beam\":5}", &g.key) != 0 ||
      uv_mutex_init(&g.mutex) != 0 || ms_shm_create(NULL, &g.shm) != 0 ||
      ms_shm_create(NULL, &g.peer) != 0) {
    fprintf(stderr, "modelshare-bench: micro setup failed\n");
    exit(1);
  }
  ms_loader_t l = MS_LOADER_INIT;
  l.load = load_small;
  l.unload = unload_small;
  g.loader = l;
  /* Load once: every benchmark iteration below is a cache hit. */
  (void)ms_registry_acquire_key(g.reg, g.key, &g.loader, 0, &m);
  ms_model_release(m);

  msb_add("registry_hit", bm_registry_hit, NULL, 1, 0);
  msb_add("registry_hit_2threads", bm_registry_hit, NULL, 2, 0);
  /* Scaling to every core (registry.hit_ns_by_threads). */
  static char nproc_name[48];
  int nproc = msb_nproc();
  if (nproc > 2) {
    (void)snprintf(nproc_name, sizeof(nproc_name), "registry_hit_%dthreads",
                   nproc);
    msb_add(nproc_name, bm_registry_hit, NULL, nproc, 0);
  }
  msb_add("registry_hit_string_key", bm_registry_hit_string, NULL, 1, 0);
  msb_add("uv_mutex_lock_unlock", bm_mutex_pair, NULL, 1, 0);
  msb_add("tensor_alloc_release_pooled_1MiB", bm_tensor_alloc_pooled,
          (void *)(size_t)(1 << 20), 1, 0);
  msb_add("descriptor_open_cached", bm_open_cached, NULL, 1, 0);
  msb_add("descriptor_open_uncached", bm_open_uncached, NULL, 1, 0);
  static const size_t mib[3] = {1, 10, 100};
  static char names[6][48];
  for (int i = 0; i < 3; i++) {
    (void)snprintf(names[i], sizeof(names[i]), "safetensors_serialize_%zuMiB",
                   mib[i]);
    (void)snprintf(names[3 + i], sizeof(names[3 + i]),
                   "safetensors_deserialize_%zuMiB", mib[i]);
    msb_add(names[i], bm_serialize, (void *)(mib[i] << 20), 1,
            (int64_t)(mib[i] << 20));
    msb_add(names[3 + i], bm_deserialize, (void *)(mib[i] << 20), 1,
            (int64_t)(mib[i] << 20));
  }
}

void msb_micro_done(void) {
  (void)ms_registry_destroy(g.reg);
  ms_key_destroy(g.key);
  uv_mutex_destroy(&g.mutex);
  (void)ms_shm_destroy(g.peer);
  (void)ms_shm_destroy(g.shm);
}
