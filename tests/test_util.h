/* Test fixtures shared by the cmocka suites: an instrumented loader whose
 * behaviour (delay, failure, gate) each test sets, and small helpers. */
#ifndef MS_TEST_UTIL_H
#define MS_TEST_UTIL_H

#include "modelshare.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
/* cmocka needs the three above first. */
#include <cmocka.h>

#include <stdatomic.h>
#include <stdlib.h>
#include <uv.h>

typedef struct tl {
  atomic_int loads;   /* load calls (successful or not) */
  atomic_int unloads; /* unload calls */
  atomic_int live;    /* models loaded and not yet unloaded */
  int fail_code;      /* when non-zero, load returns it */
  unsigned delay_ms;  /* load sleeps this long */
  size_t bytes;       /* reported size */
  uv_sem_t *started;  /* posted when a load starts (optional) */
  uv_sem_t *gate;     /* load waits on it before returning (optional) */
} tl;

typedef struct tl_model {
  int serial;
  char payload[64];
} tl_model;

static inline int tl_load(void *user, const char *path, const char *config,
                          void **model, size_t *bytes) {
  tl *t = user;
  (void)path, (void)config;
  int serial = atomic_fetch_add(&t->loads, 1) + 1;
  if (t->started != NULL)
    uv_sem_post(t->started);
  if (t->delay_ms > 0)
    uv_sleep(t->delay_ms);
  if (t->gate != NULL)
    uv_sem_wait(t->gate);
  if (t->fail_code != 0)
    return t->fail_code;
  tl_model *m = calloc(1, sizeof(*m));
  if (m == NULL)
    return MS_ENOMEM;
  m->serial = serial;
  atomic_fetch_add(&t->live, 1);
  *model = m;
  *bytes = t->bytes;
  return 0;
}

static inline void tl_unload(void *user, void *model) {
  tl *t = user;
  atomic_fetch_add(&t->unloads, 1);
  atomic_fetch_sub(&t->live, 1);
  free(model);
}

static inline ms_loader_t tl_loader(tl *t) {
  ms_loader_t l = MS_LOADER_INIT;
  l.load = tl_load;
  l.unload = tl_unload;
  l.user = t;
  return l;
}

static inline ms_key_t *make_key(const char *path, const char *config) {
  ms_key_t *k = NULL;
  assert_int_equal(ms_key_create(path, config, &k), 0);
  assert_non_null(k);
  return k;
}

static inline ms_registry_stats_t get_stats(ms_registry_t *reg) {
  ms_registry_stats_t s = MS_REGISTRY_STATS_INIT;
  assert_int_equal(ms_registry_stats(reg, &s), 0);
  return s;
}

#endif
