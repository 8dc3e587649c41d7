/* Randomized stress: threads acquire, retain, release, evict, trim and
 * expire over a few keys, with loaders that sometimes fail and a small
 * budget.  Run under TSan by the test command.  Afterwards every counter
 * must add up and every loaded model must have been unloaded exactly once. */
#include "test_util.h"

#include <stdio.h>
#include <string.h>

enum { THREADS = 8, KEYS = 6, HOLD = 4 };

typedef struct world {
  ms_registry_t *reg;
  ms_key_t *keys[KEYS];
  tl loaders[KEYS];
  uint64_t deadline;
  atomic_int errors; /* results no documented path can produce */
  atomic_long ops;
  atomic_int eio; /* loads that flaky_load failed on purpose */
} world;

static world w;

typedef struct worker {
  world *w;
  unsigned seed;
  uv_thread_t thread;
} worker;

static unsigned rnd(unsigned *s) {
  *s = *s * 1103515245u + 12345u;
  return (*s >> 16) & 0x7fff;
}

/* Loader wrapper that fails one load in eight, deterministically per
 * serial, and checks that it is never asked for a key it did not expect. */
static int flaky_load(void *user, const char *path, const char *config,
                      void **model, size_t *bytes) {
  tl *t = user;
  if ((atomic_load(&t->loads) % 8) == 7) {
    atomic_fetch_add(&t->loads, 1);
    atomic_fetch_add(&w.eio, 1);
    return MS_EIO;
  }
  return tl_load(user, path, config, model, bytes);
}

static void work(void *arg) {
  worker *me = arg;
  world *wp = me->w;
  ms_model_t *held[HOLD] = {0};
  while (uv_hrtime() < wp->deadline) {
    unsigned r = rnd(&me->seed);
    int k = (int)(r % KEYS);
    int slot = (int)((r / KEYS) % HOLD);
    unsigned op = (r / (KEYS * HOLD)) % 16;
    ms_loader_t l = tl_loader(&wp->loaders[k]);
    l.load = flaky_load;
    if (op < 9) {
      if (held[slot] != NULL) {
        ms_model_release(held[slot]);
        held[slot] = NULL;
      }
      int rc =
          ms_registry_acquire_key(wp->reg, wp->keys[k], &l, 50, &held[slot]);
      if (rc == 0 &&
          strcmp(ms_model_path(held[slot]), ms_key_path(wp->keys[k])) != 0)
        atomic_fetch_add(&wp->errors, 1); /* wrong model */
      if (rc != 0 && rc != MS_EIO && rc != MS_ENOMEM && rc != MS_ETIMEDOUT)
        atomic_fetch_add(&wp->errors, 1);
    } else if (op < 11) {
      if (held[slot] != NULL)
        ms_model_release(ms_model_retain(held[slot]));
    } else if (op < 13) {
      int rc = ms_registry_evict(wp->reg, wp->keys[k]);
      if (rc != 0 && rc != MS_EBUSY && rc != MS_ENOENT)
        atomic_fetch_add(&wp->errors, 1);
    } else if (op == 13) {
      (void)ms_registry_trim(wp->reg, NULL);
    } else if (op == 14) {
      (void)ms_registry_expire(wp->reg, NULL);
    } else {
      ms_registry_stats_t s = MS_REGISTRY_STATS_INIT;
      if (ms_registry_stats(wp->reg, &s) != 0 ||
          s.models_held > s.models_resident || s.bytes_resident > 4 * 100)
        atomic_fetch_add(&wp->errors, 1);
    }
    atomic_fetch_add(&wp->ops, 1);
  }
  for (int i = 0; i < HOLD; i++)
    ms_model_release(held[i]);
}

static void run_stress(uint64_t ttl_ms) {
  memset(&w, 0, sizeof(w));
  ms_registry_options_t o = MS_REGISTRY_OPTIONS_INIT;
  o.idle_ttl_ms = ttl_ms;
  o.max_bytes = 4 * 100; /* room for 4 of the 6 models */
  assert_int_equal(ms_registry_create(&o, &w.reg), 0);
  char path[32];
  for (int i = 0; i < KEYS; i++) {
    (void)snprintf(path, sizeof(path), "/stress/%d", i);
    w.keys[i] = make_key(path, NULL);
    w.loaders[i].bytes = 100;
  }
  const char *env = getenv("MS_STRESS_MS");
  uint64_t ms = env != NULL ? strtoull(env, NULL, 10) : 1500;
  w.deadline = uv_hrtime() + ms * 1000000u;

  worker workers[THREADS];
  for (int i = 0; i < THREADS; i++) {
    workers[i].w = &w;
    workers[i].seed = 0x9e3779b9u * (unsigned)(i + 1) + (unsigned)ttl_ms;
    assert_int_equal(uv_thread_create(&workers[i].thread, work, &workers[i]),
                     0);
  }
  for (int i = 0; i < THREADS; i++)
    uv_thread_join(&workers[i].thread);

  assert_int_equal(atomic_load(&w.errors), 0);
  assert_true(atomic_load(&w.ops) > 1000);
  ms_registry_stats_t s = MS_REGISTRY_STATS_INIT;
  assert_int_equal(ms_registry_stats(w.reg, &s), 0);
  assert_int_equal(s.models_held, 0);
  assert_int_equal(s.loads - s.evictions, s.models_resident);
  assert_int_equal(s.bytes_resident, 100 * s.models_resident);
  uint64_t attempts = 0, unloads = 0;
  for (int i = 0; i < KEYS; i++)
    attempts += (uint64_t)atomic_load(&w.loaders[i].loads);
  /* Every miss ran the loader once, and every run is either cached or
   * counted as a failure (loader error or refused by the budget). */
  assert_int_equal(s.misses, attempts);
  assert_int_equal(attempts, s.loads + s.load_failures);
  uint64_t budget_refusals = s.load_failures - (uint64_t)atomic_load(&w.eio);
  assert_int_equal(ms_registry_destroy(w.reg), 0);
  for (int i = 0; i < KEYS; i++) {
    /* every successful load unloaded exactly once */
    assert_int_equal(atomic_load(&w.loaders[i].live), 0);
    unloads += (uint64_t)atomic_load(&w.loaders[i].unloads);
    ms_key_destroy(w.keys[i]);
  }
  /* Cached models are unloaded by eviction or destroy; models refused by
   * the budget right after their load. */
  assert_int_equal(unloads, s.loads + budget_refusals);
  print_message(
      "ttl=%llu: %ld ops, %llu loads, %llu failures (%llu over "
      "budget), %llu hits, %llu evictions, %llu timeouts\n",
      (unsigned long long)ttl_ms, (long)atomic_load(&w.ops),
      (unsigned long long)s.loads, (unsigned long long)s.load_failures,
      (unsigned long long)budget_refusals, (unsigned long long)s.hits,
      (unsigned long long)s.evictions, (unsigned long long)s.timeouts);
}

static void test_stress_cached(void **state) {
  (void)state;
  run_stress(MS_TTL_NEVER);
}

static void test_stress_ttl0(void **state) {
  (void)state;
  run_stress(0);
}

static void test_stress_short_ttl(void **state) {
  (void)state;
  run_stress(1);
}

/* ------------------------------------------------------------------------ */
/* Faulty loaders: each key's loader misbehaves in its own way.             */
/* ------------------------------------------------------------------------ */

enum { FAULT_KEYS = 5, FAULT_THREADS = 6 };

typedef struct faulty {
  tl t;     /* counts calls and live models */
  int mode; /* 0 ok, 1 fails, 2 hangs past timeouts, 3 absurd size,
               4 over the budget on its own */
  atomic_int calls;
} faulty;

static faulty faults[FAULT_KEYS];
static ms_key_t *fault_keys[FAULT_KEYS];

static int faulty_load(void *user, const char *path, const char *config,
                       void **model, size_t *bytes) {
  faulty *f = user;
  atomic_fetch_add(&f->calls, 1);
  switch (f->mode) {
  case 1:
    return MS_EIO;
  case 2:
    uv_sleep(30); /* every waiter below gives up after 5 ms */
    break;
  default:
    break;
  }
  int rc = tl_load(&f->t, path, config, model, bytes);
  if (rc == 0 && f->mode == 3)
    *bytes = SIZE_MAX;
  if (rc == 0 && f->mode == 4)
    *bytes = 1u << 30; /* more than the whole budget */
  return rc;
}

static void faulty_unload(void *user, void *model) {
  faulty *f = user;
  tl_unload(&f->t, model);
}

typedef struct fault_worker {
  ms_registry_t *reg;
  unsigned seed;
  atomic_int *unexpected;
  uv_thread_t th;
} fault_worker;

static void fault_work(void *arg) {
  fault_worker *fw = arg;
  static const int allowed[FAULT_KEYS][3] = {
      {0, 0, 0},            /* ok */
      {MS_EIO, 0, 0},       /* fails */
      {0, MS_ETIMEDOUT, 0}, /* hangs */
      {MS_ERANGE, 0, 0},    /* absurd size */
      {MS_ENOMEM, 0, 0}};   /* over the budget */
  for (int i = 0; i < 300; i++) {
    int k = (int)(rnd(&fw->seed) % FAULT_KEYS);
    ms_loader_t l = MS_LOADER_INIT;
    l.load = faulty_load;
    l.unload = faulty_unload;
    l.user = &faults[k];
    ms_model_t *m = NULL;
    int rc = ms_registry_acquire_key(fw->reg, fault_keys[k], &l, 5, &m);
    if (rc != allowed[k][0] && rc != allowed[k][1] && rc != allowed[k][2])
      atomic_fetch_add(fw->unexpected, 1);
    ms_model_release(m);
  }
}

static void test_faulty_loaders(void **state) {
  (void)state;
  ms_registry_options_t o = MS_REGISTRY_OPTIONS_INIT;
  o.max_bytes = 1u << 20;
  ms_registry_t *reg = NULL;
  assert_int_equal(ms_registry_create(&o, &reg), 0);
  char path[32];
  memset(faults, 0, sizeof(faults));
  for (int k = 0; k < FAULT_KEYS; k++) {
    (void)snprintf(path, sizeof(path), "/faulty/%d", k);
    fault_keys[k] = make_key(path, NULL);
    faults[k].mode = k;
    faults[k].t.bytes = 1000;
  }
  atomic_int unexpected = 0;
  fault_worker fws[FAULT_THREADS];
  for (int i = 0; i < FAULT_THREADS; i++) {
    fws[i] = (fault_worker){reg, 77u * (unsigned)(i + 1), &unexpected, 0};
    assert_int_equal(uv_thread_create(&fws[i].th, fault_work, &fws[i]), 0);
  }
  for (int i = 0; i < FAULT_THREADS; i++)
    uv_thread_join(&fws[i].th);
  assert_int_equal(atomic_load(&unexpected), 0);

  /* Nothing is stuck in LOADING: with a sane loader and a patient caller,
   * every key loads (or is already cached) now. */
  for (int k = 0; k < FAULT_KEYS; k++) {
    faults[k].mode = 0;
    ms_loader_t l = MS_LOADER_INIT;
    l.load = faulty_load;
    l.unload = faulty_unload;
    l.user = &faults[k];
    ms_model_t *m = NULL;
    assert_int_equal(
        ms_registry_acquire_key(reg, fault_keys[k], &l, MS_WAIT_FOREVER, &m),
        0);
    ms_model_release(m);
  }
  /* The counters add up. */
  ms_registry_stats_t s = MS_REGISTRY_STATS_INIT;
  assert_int_equal(ms_registry_stats(reg, &s), 0);
  uint64_t calls = 0;
  for (int k = 0; k < FAULT_KEYS; k++)
    calls += (uint64_t)atomic_load(&faults[k].calls);
  assert_int_equal(s.misses, calls);
  assert_int_equal(s.loads + s.load_failures, calls);
  assert_int_equal(s.loads - s.evictions, s.models_resident);
  assert_int_equal(s.models_resident, FAULT_KEYS);
  assert_int_equal(s.bytes_resident, 1000 * FAULT_KEYS);
  assert_int_equal(s.models_held, 0);
  assert_true(s.timeouts >
              0); /* the hanging loader did make waiters time out */
  assert_true(s.load_failures > 0);
  assert_int_equal(ms_registry_destroy(reg), 0);
  for (int k = 0; k < FAULT_KEYS; k++) {
    assert_int_equal(atomic_load(&faults[k].t.live), 0); /* unloaded once */
    ms_key_destroy(fault_keys[k]);
  }
  print_message("faulty loaders: %llu loader calls, %llu failures, %llu "
                "timeouts, %llu hits\n",
                (unsigned long long)calls, (unsigned long long)s.load_failures,
                (unsigned long long)s.timeouts, (unsigned long long)s.hits);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stress_cached),
      cmocka_unit_test(test_stress_ttl0),
      cmocka_unit_test(test_stress_short_ttl),
      cmocka_unit_test(test_faulty_loaders),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
