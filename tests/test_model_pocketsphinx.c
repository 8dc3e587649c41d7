/* The real model: three pipeline nodes share the pocketsphinx US-English
 * recognizer through the registry.  Each measurement runs in a fresh child
 * process so that RSS growth is not blurred by the other run's heap. */
#include "test_util.h"

#include "speech_model.h"

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { NODES = 3 };

typedef struct run_result {
  int ok;
  int loads;
  double rss_growth;
  double load_s;
  char transcript[NODES][256];
} run_result;

static int16_t *pcm;
static size_t samples;

/* Three separate instances, as three nodes would do without a registry. */
static void run_without(run_result *r) {
  ms_loader_t l = speech_loader();
  void *models[NODES];
  size_t bytes;
  size_t rss0 = speech_rss_bytes();
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < NODES; i++)
    if (l.load(NULL, SPEECH_MODEL_DIR, SPEECH_MODEL_CONFIG, &models[i],
               &bytes) != 0)
      return;
  r->load_s = (double)(uv_hrtime() - t0) / 1e9;
  r->rss_growth = (double)(speech_rss_bytes() - rss0);
  r->loads = NODES;
  for (int i = 0; i < NODES; i++)
    if (speech_transcribe(models[i], pcm, samples, r->transcript[i],
                          sizeof(r->transcript[i])) != 0)
      return;
  for (int i = 0; i < NODES; i++)
    l.unload(NULL, models[i]);
  r->ok = 1;
}

typedef struct node {
  ms_registry_t *reg;
  ms_key_t *key;
  ms_model_t *model;
  int rc;
  uv_thread_t thread;
} node;

static void node_acquire(void *arg) {
  node *n = arg;
  ms_loader_t l = speech_loader();
  n->rc =
      ms_registry_acquire_key(n->reg, n->key, &l, MS_WAIT_FOREVER, &n->model);
}

/* Three nodes (threads) acquiring the model through one registry. */
static void run_with(run_result *r) {
  ms_registry_t *reg = NULL;
  ms_key_t *key = NULL;
  if (ms_registry_create(NULL, &reg) != 0 ||
      ms_key_create(SPEECH_MODEL_DIR, SPEECH_MODEL_CONFIG, &key) != 0)
    return;
  node nodes[NODES];
  size_t rss0 = speech_rss_bytes();
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < NODES; i++) {
    nodes[i] = (node){.reg = reg, .key = key};
    if (uv_thread_create(&nodes[i].thread, node_acquire, &nodes[i]) != 0)
      return;
  }
  for (int i = 0; i < NODES; i++)
    uv_thread_join(&nodes[i].thread);
  r->load_s = (double)(uv_hrtime() - t0) / 1e9;
  r->rss_growth = (double)(speech_rss_bytes() - rss0);
  ms_registry_stats_t s = MS_REGISTRY_STATS_INIT;
  (void)ms_registry_stats(reg, &s);
  r->loads = (int)s.loads;
  for (int i = 0; i < NODES; i++) {
    if (nodes[i].rc != 0 || nodes[i].model != nodes[0].model)
      return;
    if (speech_transcribe(ms_model_get(nodes[i].model), pcm, samples,
                          r->transcript[i], sizeof(r->transcript[i])) != 0)
      return;
    ms_model_release(nodes[i].model);
  }
  if (ms_registry_destroy(reg) != 0)
    return;
  ms_key_destroy(key);
  r->ok = 1;
}

static run_result in_child(void (*fn)(run_result *)) {
  int fds[2];
  run_result r;
  memset(&r, 0, sizeof(r));
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    fn(&r);
    ssize_t w = write(fds[1], &r, sizeof(r));
    _exit(w == (ssize_t)sizeof(r) ? 0 : 1);
  }
  close(fds[1]);
  ssize_t got = read(fds[0], &r, sizeof(r));
  close(fds[0]);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  assert_int_equal(got, (ssize_t)sizeof(r));
  return r;
}

static void test_three_nodes_share_one_model(void **state) {
  (void)state;
  if (access(SPEECH_MODEL_DIR "/en-us.lm.bin", R_OK) != 0)
    fail_msg(
        "pocketsphinx-en-us is not installed: run scripts/install-deps.sh");
  assert_int_equal(
      speech_synthesize("the quick brown fox jumps over the lazy dog", &pcm,
                        &samples),
      0);
  assert_true(samples > 16000); /* over a second of speech */

  run_result without = in_child(run_without);
  run_result with = in_child(run_with);
  assert_true(without.ok);
  assert_true(with.ok);
  assert_int_equal(with.loads, 1);
  for (int i = 0; i < NODES; i++) {
    assert_true(strlen(with.transcript[i]) > 0);
    assert_string_equal(with.transcript[i], with.transcript[0]);
    assert_string_equal(without.transcript[i], with.transcript[0]);
  }
  double ratio = with.rss_growth / without.rss_growth;
  print_message("transcript: \"%s\"\n", with.transcript[0]);
  print_message("RSS growth: without %.1f MB, with %.1f MB (%.1f%% of it, "
                "reduction %.1f%%, limit %.1f%%)\n",
                without.rss_growth / 1e6, with.rss_growth / 1e6, 100 * ratio,
                100 * (1 - ratio), 100.0 * (NODES - 1) / NODES);
  print_message("load time: without %.3f s, with %.3f s\n", without.load_s,
                with.load_s);
  assert_true(ratio <= 0.40);
  free(pcm);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_three_nodes_share_one_model),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
