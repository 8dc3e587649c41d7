/* The real model behind a model worker: one modelshare-worker process
 * serving pocketsphinx (examples/speech_worker_plugin.c) and 3 client
 * processes (examples/speech_client) transcribing the test utterances at
 * once.  Every transcript must equal what the in-process registry path
 * gives for the same audio, and the worker must have loaded the model
 * exactly once.
 *
 * usage: test_worker_speech WORKER SPEECH_PLUGIN SPEECH_CLIENT */
#include "test_worker_bin_proc.h"

#include "speech_model.h"

enum { CLIENTS = 3, UTTERANCES = 3 };

static const char *const sentences[UTTERANCES] = {
    "the quick brown fox jumps over the lazy dog",
    "open the pod bay doors please", "one two three four five"};

static const char *worker_bin, *speech_plugin, *speech_client;

/* What the registry path transcribes from the PCM in files[]. */
static void in_process(int16_t *const pcm[], const size_t samples[],
                       char expected[][256]) {
  ms_registry_t *reg = NULL;
  ms_model_t *m = NULL;
  ms_loader_t l = speech_loader();
  assert_int_equal(ms_registry_create(NULL, &reg), 0);
  assert_int_equal(ms_registry_acquire(reg, SPEECH_MODEL_DIR,
                                       SPEECH_MODEL_CONFIG, &l, MS_WAIT_FOREVER,
                                       &m),
                   0);
  for (int i = 0; i < UTTERANCES; i++) {
    assert_int_equal(speech_transcribe(ms_model_get(m), pcm[i], samples[i],
                                       expected[i], 256),
                     0);
    assert_true(strlen(expected[i]) > 0);
  }
  ms_model_release(m);
  assert_int_equal(ms_registry_destroy(reg), 0);
}

static void test_three_clients_one_worker(void **state) {
  (void)state;
  if (access(SPEECH_MODEL_DIR "/en-us.lm.bin", R_OK) != 0)
    fail_msg(
        "pocketsphinx-en-us is not installed: run scripts/install-deps.sh");
  char dir[64], endpoint[128], files[UTTERANCES][128];
  wp_mkdtemp(dir, sizeof(dir));
  (void)snprintf(endpoint, sizeof(endpoint), "%s/ep/speech.sock", dir);

  /* The audio, once, as files both paths read. */
  int16_t *pcm[UTTERANCES];
  size_t samples[UTTERANCES];
  for (int i = 0; i < UTTERANCES; i++) {
    assert_int_equal(speech_synthesize(sentences[i], &pcm[i], &samples[i]), 0);
    (void)snprintf(files[i], sizeof(files[i]), "@%s/u%d.raw", dir, i);
    FILE *f = fopen(files[i] + 1, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(pcm[i], 2, samples[i], f), samples[i]);
    assert_int_equal(fclose(f), 0);
  }
  char expected[UTTERANCES][256];
  in_process(pcm, samples, expected);
  for (int i = 0; i < UTTERANCES; i++)
    free(pcm[i]);

  char *wargv[] = {
      (char *)worker_bin,    "--endpoint", endpoint,         "--plugin",
      (char *)speech_plugin, "--model",    SPEECH_MODEL_DIR, "--config",
      SPEECH_MODEL_CONFIG,   "--name",     "speech",         NULL};
  wp w = wp_start(dir, "worker", wargv);
  ms_client_close(wp_connect(endpoint, &w)); /* listening: model loaded */

  /* Three clients at once, each sending the utterances in its own order. */
  wp c[CLIENTS];
  int order[CLIENTS][UTTERANCES];
  for (int k = 0; k < CLIENTS; k++) {
    char *argv[8] = {(char *)speech_client, endpoint};
    for (int i = 0; i < UTTERANCES; i++) {
      order[k][i] = (i + k) % UTTERANCES;
      argv[2 + i] = files[order[k][i]];
    }
    char tag[16];
    (void)snprintf(tag, sizeof(tag), "client%d", k);
    c[k] = wp_start(dir, tag, argv);
  }
  for (int k = 0; k < CLIENTS; k++) {
    int st = wp_wait(&c[k], 0);
    if (st != 0)
      fail_msg("client %d: status %d:\n%s", k, st, wp_stderr(&c[k]));
    char out[16384];
    memcpy(out, wp_stdout(&c[k]), sizeof(out));
    char *save = NULL, *line = strtok_r(out, "\n", &save);
    for (int i = 0; i < UTTERANCES; i++, line = strtok_r(NULL, "\n", &save)) {
      assert_non_null(line);
      assert_string_equal(line, expected[order[k][i]]);
    }
    assert_null(line);
  }

  /* The worker answered every request and loaded the model once. */
  ms_client_t *probe = wp_connect(endpoint, &w);
  assert_int_equal((int)wp_stat(probe, "requests"), CLIENTS * UTTERANCES);
  assert_int_equal((int)wp_stat(probe, "responses"), CLIENTS * UTTERANCES);

  /* The plugin refuses what is not int16 PCM, and keeps serving. */
  ms_shm_t *shm = NULL;
  ms_tensor_t *bad = NULL, *out[1] = {NULL};
  size_t n_out = 1;
  const int64_t shape[1] = {1600};
  assert_int_equal(ms_shm_create(NULL, &shm), 0);
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_FLOAT32, 1, shape, NULL, &bad),
                   0);
  memset(ms_tensor_data(bad), 0, ms_tensor_nbytes(bad));
  assert_int_equal(
      ms_client_infer(probe, "speech", &bad, 1, 60000, out, &n_out), MS_EINVAL);
  ms_tensor_release(bad);
  ms_client_close(probe);
  assert_int_equal(ms_shm_destroy(shm), 0);
  wp c4 = wp_start(dir, "client4",
                   (char *[]){(char *)speech_client, endpoint, files[0], NULL});
  wp_expect(&c4, 0, 0);
  assert_contains(wp_stdout(&c4), expected[0]);

  wp_expect(&w, SIGTERM, 0);
  assert_contains(wp_stderr(&w),
                  "stopped: 11 requests served, model loaded 1 time(s)");
  for (int i = 0; i < UTTERANCES; i++)
    print_message("\"%s\" -> \"%s\"\n", sentences[i], expected[i]);
  wp_rmtree(dir);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s WORKER SPEECH_PLUGIN SPEECH_CLIENT\n", argv[0]);
    return 2;
  }
  worker_bin = argv[1];
  speech_plugin = argv[2];
  speech_client = argv[3];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_three_clients_one_worker),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
