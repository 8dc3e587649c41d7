/*
 * Three pipeline nodes (think VAD, ASR and a keyword spotter) each need the
 * same speech model.  Through the registry it is loaded once and shared:
 * every node acquires it with the same key and gets the same handle.
 *
 * Prints each node's transcript of a synthesized sentence, the registry's
 * stats JSON, and the memory and load time saved against three separate
 * loads (measured in a child process, so neither run sees the other's heap).
 * Exits non-zero unless every node transcribed something and the model was
 * loaded exactly once.
 */
#define _DEFAULT_SOURCE
#include "speech_model.h"

#include <modelshare.h>
#include <uv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NODES 3

typedef struct node {
  const char *name;
  ms_registry_t *reg;
  const ms_key_t *key; /* built once, shared by every node */
  const int16_t *pcm;
  size_t samples;
  uv_barrier_t *acquired; /* main measures between acquire and decode */
  uv_barrier_t *measured;
  int rc;
  char transcript[256];
  uv_thread_t thread;
} node;

static void node_run(void *arg) {
  node *n = arg;
  ms_loader_t loader = speech_loader();
  ms_model_t *model = NULL;
  n->rc =
      ms_registry_acquire_key(n->reg, n->key, &loader, MS_WAIT_FOREVER, &model);
  uv_barrier_wait(n->acquired);
  uv_barrier_wait(n->measured);
  if (n->rc == 0)
    n->rc = speech_transcribe(ms_model_get(model), n->pcm, n->samples,
                              n->transcript, sizeof(n->transcript));
  ms_model_release(model);
}

/* The baseline, in a child: three separate loads.  Writes RSS growth and
 * seconds to fd. */
static void baseline_child(int fd) {
  ms_loader_t l = speech_loader();
  void *m[NODES];
  size_t bytes;
  double r[2] = {0, 0};
  size_t rss0 = speech_rss_bytes();
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < NODES; i++)
    if (l.load(NULL, SPEECH_MODEL_DIR, SPEECH_MODEL_CONFIG, &m[i], &bytes))
      _exit(1);
  r[1] = (double)(uv_hrtime() - t0) / 1e9;
  r[0] = (double)(speech_rss_bytes() - rss0);
  _exit(write(fd, r, sizeof(r)) == sizeof(r) ? 0 : 1);
}

static int baseline(double *rss, double *secs) {
  int fds[2];
  double r[2];
  if (pipe(fds) != 0)
    return -1;
  pid_t pid = fork();
  if (pid == 0)
    baseline_child(fds[1]);
  close(fds[1]);
  ssize_t got = read(fds[0], r, sizeof(r));
  close(fds[0]);
  int status;
  waitpid(pid, &status, 0);
  if (got != sizeof(r) || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return -1;
  *rss = r[0];
  *secs = r[1];
  return 0;
}

int main(void) {
  int16_t *pcm = NULL;
  size_t samples = 0;
  if (speech_synthesize("the quick brown fox jumps over the lazy dog", &pcm,
                        &samples) != 0) {
    fprintf(stderr, "espeak-ng or sox missing: run scripts/install-deps.sh\n");
    return 1;
  }
  double base_rss = 0, base_s = 0;
  if (baseline(&base_rss, &base_s) != 0) {
    fprintf(stderr, "baseline load failed: is pocketsphinx-en-us installed?\n");
    return 1;
  }

  ms_registry_t *reg = NULL;
  ms_key_t *key = NULL;
  int rc = ms_registry_create(NULL, &reg);
  if (rc == 0)
    rc = ms_key_create(SPEECH_MODEL_DIR, SPEECH_MODEL_CONFIG, &key);
  if (rc != 0) {
    fprintf(stderr, "setup: %s\n", ms_strerror(rc));
    return 1;
  }

  static const char *names[NODES] = {"vad", "asr", "kws"};
  node nodes[NODES];
  uv_barrier_t acquired, measured;
  uv_barrier_init(&acquired, NODES + 1);
  uv_barrier_init(&measured, NODES + 1);
  size_t rss0 = speech_rss_bytes();
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < NODES; i++) {
    nodes[i] = (node){names[i],  reg,       key, pcm, samples,
                      &acquired, &measured, -1,  "",  0};
    uv_thread_create(&nodes[i].thread, node_run, &nodes[i]);
  }
  /* Every node holds the model now; measure before they start decoding. */
  uv_barrier_wait(&acquired);
  double with_s = (double)(uv_hrtime() - t0) / 1e9;
  double with_rss = (double)(speech_rss_bytes() - rss0);
  uv_barrier_wait(&measured);
  for (int i = 0; i < NODES; i++)
    uv_thread_join(&nodes[i].thread);
  uv_barrier_destroy(&acquired);
  uv_barrier_destroy(&measured);

  int failed = 0;
  for (int i = 0; i < NODES; i++) {
    printf("node %-3s: %s \"%s\"\n", nodes[i].name,
           nodes[i].rc == 0 ? "ok" : ms_strerror(nodes[i].rc),
           nodes[i].transcript);
    failed |= nodes[i].rc != 0 || nodes[i].transcript[0] == '\0';
  }
  /* The point of the registry: one load, and every other node a hit. */
  ms_registry_stats_t st = MS_REGISTRY_STATS_INIT;
  if (ms_registry_stats(reg, &st) != 0 || st.loads != 1 ||
      st.hits != NODES - 1) {
    fprintf(stderr, "registry: %llu loads and %llu hits, want 1 and %d\n",
            (unsigned long long)st.loads, (unsigned long long)st.hits,
            NODES - 1);
    failed = 1;
  }
  char *json = NULL;
  if (ms_registry_stats_json(reg, &json) == 0)
    printf("stats: %s\n", json);
  ms_free(json);
  printf("memory: %.1f MB with the registry vs %.1f MB for %d separate "
         "loads: %.1f%% saved (limit %.1f%%)\n",
         with_rss / 1e6, base_rss / 1e6, NODES,
         100.0 * (1 - with_rss / base_rss), 100.0 * (NODES - 1) / NODES);
  printf("load time: %.2f s for %d nodes with the registry vs %.2f s for %d "
         "separate loads\n",
         with_s, NODES, base_s, NODES);

  rc = ms_registry_destroy(reg);
  ms_key_destroy(key);
  free(pcm);
  return failed || rc != 0;
}
