/* Registry scenarios: N pipeline nodes on the real speech model with and
 * without the registry, and 64 threads on a cold key against one load.
 * Every measurement runs in a fresh child process, and the two runs of a
 * pair alternate which goes first (ABBA...), so that neither side gains
 * from running second (warm page cache, allocator, CPU frequency). */
#include "bench.h"
#include "gbench_shim.h"
#include "rss.h"

#include <uv.h>

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef MSB_HAVE_POCKETSPHINX
#include "speech_model.h"
#endif

#define SYNTH_BYTES (90u << 20) /* about the real model's resident size */

/* ------------------------------------------------------------------------ */
/* The model: pocketsphinx when installed, else random weights, said loudly. */
/* ------------------------------------------------------------------------ */

static int synth_load(void *user, const char *path, const char *config,
                      void **model, size_t *bytes) {
  (void)user, (void)path, (void)config;
  uint64_t *w = malloc(SYNTH_BYTES), x = 0x9e3779b97f4a7c15ULL;
  if (w == NULL)
    return MS_ENOMEM;
  for (size_t i = 0; i < SYNTH_BYTES / 8; i++) { /* "parse" every weight */
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    w[i] = x;
  }
  *model = w;
  *bytes = SYNTH_BYTES;
  return 0;
}

static void synth_unload(void *user, void *model) {
  (void)user;
  free(model);
}

typedef struct model_src {
  const char *name;
  const char *path;
  const char *config;
  ms_loader_t loader;
  int real;
} model_src;

static model_src pick_model(void) {
  model_src m;
  memset(&m, 0, sizeof(m));
#ifdef MSB_HAVE_POCKETSPHINX
  if (access(SPEECH_MODEL_DIR "/en-us.lm.bin", R_OK) == 0) {
    m.name = "pocketsphinx en-us (acoustic model + en-us.lm.bin + "
             "cmudict-en-us.dict)";
    m.path = SPEECH_MODEL_DIR;
    m.config = SPEECH_MODEL_CONFIG;
    m.loader = speech_loader();
    m.real = 1;
    return m;
  }
#endif
  ms_loader_t l = MS_LOADER_INIT;
  l.load = synth_load;
  l.unload = synth_unload;
  m.name = "SYNTHETIC (pocketsphinx not installed): 90 MiB of random weights";
  m.path = "/synthetic/model.bin";
  m.config = "{}";
  m.loader = l;
  return m;
}

/* ------------------------------------------------------------------------ */
/* One measurement in a fresh child process, results through a pipe.       */
/* ------------------------------------------------------------------------ */

typedef struct run_result {
  int ok;
  double rss, pss, secs;
  uint64_t hits, misses, loads;
} run_result;

static run_result in_child(void (*fn)(const model_src *, int, run_result *),
                           const model_src *m, int n) {
  int fds[2];
  run_result r;
  memset(&r, 0, sizeof(r));
  if (pipe(fds) != 0)
    return r;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    fn(m, n, &r);
    _exit(write(fds[1], &r, sizeof(r)) == (ssize_t)sizeof(r) ? 0 : 1);
  }
  close(fds[1]);
  if (read(fds[0], &r, sizeof(r)) != (ssize_t)sizeof(r))
    r.ok = 0;
  close(fds[0]);
  int status;
  waitpid(pid, &status, 0);
  return r;
}

/* WITHOUT: every node loads its own instance. */
static void run_without(const model_src *m, int n, run_result *r) {
  void **models = calloc((size_t)n, sizeof(void *));
  size_t bytes;
  size_t rss0 = msb_rss(), pss0 = ms_example_pss_bytes();
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < n; i++)
    if (m->loader.load(m->loader.user, m->path, m->config, &models[i],
                       &bytes) != 0)
      return;
  r->secs = (double)(uv_hrtime() - t0) / 1e9;
  r->rss = (double)(msb_rss() - rss0);
  r->pss = (double)ms_example_pss_bytes() - (double)pss0;
  r->misses = r->loads = (uint64_t)n;
  for (int i = 0; i < n; i++)
    m->loader.unload(m->loader.user, models[i]);
  free(models);
  r->ok = 1;
}

typedef struct node {
  ms_registry_t *reg;
  const ms_key_t *key;
  const ms_loader_t *loader;
  ms_model_t *model;
  int rc;
  uv_barrier_t *go;
  uv_thread_t th;
} node;

static void node_acquire(void *arg) {
  node *nd = arg;
  if (nd->go != NULL)
    uv_barrier_wait(nd->go);
  nd->rc = ms_registry_acquire_key(nd->reg, nd->key, nd->loader,
                                   MS_WAIT_FOREVER, &nd->model);
}

/* n threads acquire one key through a registry; time until all hold it. */
static void acquire_all(const model_src *m, int n, int barrier, run_result *r) {
  ms_registry_t *reg = NULL;
  ms_key_t *key = NULL;
  if (ms_registry_create(NULL, &reg) != 0 ||
      ms_key_create(m->path, m->config, &key) != 0)
    return;
  node *nodes = calloc((size_t)n, sizeof(node));
  uv_barrier_t go;
  if (barrier)
    uv_barrier_init(&go, (unsigned)n);
  size_t rss0 = msb_rss(), pss0 = ms_example_pss_bytes();
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < n; i++) {
    nodes[i] = (node){reg, key, &m->loader, NULL, -1, barrier ? &go : NULL, 0};
    uv_thread_create(&nodes[i].th, node_acquire, &nodes[i]);
  }
  for (int i = 0; i < n; i++)
    uv_thread_join(&nodes[i].th);
  r->secs = (double)(uv_hrtime() - t0) / 1e9;
  r->rss = (double)(msb_rss() - rss0);
  r->pss = (double)ms_example_pss_bytes() - (double)pss0;
  ms_registry_stats_t s = MS_REGISTRY_STATS_INIT;
  (void)ms_registry_stats(reg, &s);
  r->hits = s.hits;
  r->misses = s.misses;
  r->loads = s.loads;
  int ok = 1;
  for (int i = 0; i < n; i++) {
    ok &= nodes[i].rc == 0 && nodes[i].model == nodes[0].model;
    ms_model_release(nodes[i].model);
  }
  if (barrier)
    uv_barrier_destroy(&go);
  free(nodes);
  r->ok = ok && ms_registry_destroy(reg) == 0;
  ms_key_destroy(key);
}

static void run_with(const model_src *m, int n, run_result *r) {
  acquire_all(m, n, 0, r);
}

static void run_dedup(const model_src *m, int n, run_result *r) {
  acquire_all(m, n, 1, r);
}

/* One repetition of a pair: a and b in fresh processes, a first on even
 * repetitions and b first on odd ones. */
static void run_pair(int rep, void (*fa)(const model_src *, int, run_result *),
                     int na, void (*fb)(const model_src *, int, run_result *),
                     int nb, const model_src *m, run_result *a, run_result *b) {
  if (rep % 2 == 0) {
    *a = in_child(fa, m, na);
    *b = in_child(fb, m, nb);
  } else {
    *b = in_child(fb, m, nb);
    *a = in_child(fa, m, na);
  }
}

/* An even count, so that each order runs equally often. */
static int even_reps(int reps) { return reps < 2 ? 2 : reps + reps % 2; }

/* Median ns per hit and per thread for 1, 2 and nproc threads, from the
 * micro-benchmarks; printed, and returned as a JSON object. */
static cJSON *hit_scaling(void) {
  int counts[3] = {1, 2, msb_nproc()};
  int n = counts[2] > 2 ? 3 : 2;
  cJSON *o = cJSON_CreateObject();
  double one = -1;
  printf("%-26s", "cache hit, per thread");
  for (int i = 0; i < n; i++) {
    char name[48], key[16];
    if (counts[i] == 1)
      (void)snprintf(name, sizeof(name), "registry_hit");
    else
      (void)snprintf(name, sizeof(name), "registry_hit_%dthreads", counts[i]);
    double ns = msb_median_ns(name);
    (void)snprintf(key, sizeof(key), "%d", counts[i]);
    cJSON_AddNumberToObject(o, key, ns);
    if (counts[i] == 1)
      one = ns;
    printf("  %d thr %.1f ns", counts[i], ns);
    if (counts[i] == 2)
      printf(" (%.2fx)", one > 0 ? ns / one : 0);
  }
  double two = cJSON_GetObjectItem(o, "2")->valuedouble;
  printf("   2 threads <= 2x one  %s\n",
         msb_pass(one > 0 && two > 0 && two <= 2 * one));
  return o;
}

/* ------------------------------------------------------------------------ */

int msb_registry(const msb_opts *o, cJSON *root) {
  model_src m = pick_model();
  const int n = o->instances, reps = even_reps(o->reps);
  msb_progress("registry: %d instances of %s, %d repetitions", n, m.name, reps);
  double *rss_wo = calloc((size_t)reps, sizeof(double)),
         *rss_w = calloc((size_t)reps, sizeof(double)),
         *pss_wo = calloc((size_t)reps, sizeof(double)),
         *pss_w = calloc((size_t)reps, sizeof(double)),
         *s_wo = calloc((size_t)reps, sizeof(double)),
         *s_w = calloc((size_t)reps, sizeof(double));
  run_result last = {0};
  int ok = 1;
  for (int i = 0; i < reps; i++) {
    run_result a, b;
    run_pair(i, run_without, n, run_with, n, &m, &a, &b);
    ok &= a.ok && b.ok;
    rss_wo[i] = a.rss, s_wo[i] = a.secs, pss_wo[i] = a.pss;
    rss_w[i] = b.rss, s_w[i] = b.secs, pss_w[i] = b.pss;
    last = b;
  }
  double without_rss = msb_median(rss_wo, reps),
         with_rss = msb_median(rss_w, reps), without_s = msb_median(s_wo, reps),
         with_s = msb_median(s_w, reps), without_pss = msb_median(pss_wo, reps),
         with_pss = msb_median(pss_w, reps);
  double reduction = 1 - with_rss / without_rss, limit = 1 - 1.0 / n;
  double one_load = without_s / n;
  double hit_ns = msb_median_ns("registry_hit"),
         mutex_ns = msb_median_ns("uv_mutex_lock_unlock");
  double hit_rate = (double)last.hits / (double)(last.hits + last.misses);

  printf("\n== Model registry: %d instances of one model ==\n", n);
  printf("model: %s%s\n", m.name, m.real ? "" : "   <-- NOT THE REAL MODEL");
  printf("%-26s %14s %14s\n", "", "without", "with registry");
  printf("%-26s %11.1f MB %11.1f MB   reduction %.1f%% (limit 1-1/%d = "
         "%.1f%%)  %s\n",
         "memory (RSS growth)", without_rss / 1e6, with_rss / 1e6,
         100 * reduction, n, 100 * limit, msb_pass(reduction >= limit - 0.02));
  printf("%-26s %11.1f MB %11.1f MB   reduction %.1f%% (PSS: each page "
         "divided by the processes mapping it)\n",
         "memory (PSS growth)", without_pss / 1e6, with_pss / 1e6,
         100 * (1 - with_pss / without_pss));
  printf("%-26s %12.2f s %12.2f s   one load %.2f s, with = %.2fx one load  "
         "%s\n",
         "load time", without_s, with_s, one_load, with_s / one_load,
         msb_pass(with_s <= 1.1 * one_load));
  printf("%-26s %14d %14llu\n", "loader calls", n,
         (unsigned long long)last.loads);
  printf("%-26s %14s %7llu/%llu (%.1f%%)\n", "hits/misses", "-",
         (unsigned long long)last.hits, (unsigned long long)last.misses,
         100 * hit_rate);
  printf("%-26s %14s %11.1f ns   mutex pair %.1f ns, ratio %.2f  %s\n",
         "cached access (median)", "-", hit_ns, mutex_ns, hit_ns / mutex_ns,
         msb_pass(hit_ns > 0 && hit_ns < 100 && hit_ns <= 3 * mutex_ns));
  cJSON *by_threads = hit_scaling();

  cJSON *j = cJSON_AddObjectToObject(root, "registry");
  cJSON_AddStringToObject(j, "model", m.name);
  cJSON_AddBoolToObject(j, "real_model", m.real);
  cJSON_AddNumberToObject(j, "instances", n);
  cJSON_AddNumberToObject(j, "repetitions", reps);
  cJSON *wo = cJSON_AddObjectToObject(j, "without");
  cJSON_AddNumberToObject(wo, "rss_bytes", without_rss);
  cJSON_AddNumberToObject(wo, "load_s", without_s);
  cJSON *w = cJSON_AddObjectToObject(j, "with");
  cJSON_AddNumberToObject(w, "rss_bytes", with_rss);
  cJSON_AddNumberToObject(w, "load_s", with_s);
  cJSON_AddNumberToObject(w, "hits", (double)last.hits);
  cJSON_AddNumberToObject(w, "misses", (double)last.misses);
  cJSON_AddNumberToObject(w, "hit_rate", hit_rate);
  cJSON_AddNumberToObject(j, "pss_without_bytes", without_pss);
  cJSON_AddNumberToObject(j, "pss_with_bytes", with_pss);
  cJSON_AddNumberToObject(j, "memory_reduction", reduction);
  cJSON_AddNumberToObject(j, "limit", limit);
  cJSON_AddNumberToObject(j, "one_load_s", one_load);
  cJSON_AddNumberToObject(j, "hit_ns_median", hit_ns);
  cJSON_AddNumberToObject(j, "hit_2threads_ns_median",
                          msb_median_ns("registry_hit_2threads"));
  cJSON_AddNumberToObject(j, "hit_string_key_ns_median",
                          msb_median_ns("registry_hit_string_key"));
  cJSON_AddNumberToObject(j, "mutex_pair_ns_median", mutex_ns);
  cJSON_AddItemToObject(j, "hit_ns_by_threads", by_threads);
  free(rss_wo), free(rss_w), free(pss_wo), free(pss_w), free(s_wo), free(s_w);
  return ok ? 0 : -1;
}

int msb_dedup(const msb_opts *o, cJSON *root) {
  model_src m = pick_model();
  const int threads = 64, reps = even_reps(o->reps < 4 ? o->reps : 4);
  msb_progress("dedup: %d threads on a cold key, %d repetitions", threads,
               reps);
  double *one = calloc((size_t)reps, sizeof(double)),
         *all = calloc((size_t)reps, sizeof(double));
  uint64_t loads = 0;
  int ok = 1;
  for (int i = 0; i < reps; i++) {
    run_result a, b; /* one load alone, and 64 threads: order alternates */
    run_pair(i, run_dedup, 1, run_dedup, threads, &m, &a, &b);
    ok &= a.ok && b.ok;
    one[i] = a.secs, all[i] = b.secs;
    loads = b.loads > loads ? b.loads : loads;
  }
  double one_s = msb_median(one, reps), all_s = msb_median(all, reps);
  printf("\n== Concurrent loads of one key ==\n");
  printf("%d threads, one cold key: loader calls %llu  %s; wall %.2f s = "
         "%.2fx one load (%.2f s)  %s\n",
         threads, (unsigned long long)loads, msb_pass(loads == 1), all_s,
         all_s / one_s, one_s, msb_pass(all_s <= 1.1 * one_s));
  cJSON *j = cJSON_AddObjectToObject(root, "dedup");
  cJSON_AddNumberToObject(j, "threads", threads);
  cJSON_AddNumberToObject(j, "loads", (double)loads);
  cJSON_AddNumberToObject(j, "one_load_s", one_s);
  cJSON_AddNumberToObject(j, "wall_s", all_s);
  cJSON_AddNumberToObject(j, "wall_ratio_vs_one_load", all_s / one_s);
  cJSON_AddNumberToObject(j, "repetitions", reps);
  free(one), free(all);
  return ok ? 0 : -1;
}
