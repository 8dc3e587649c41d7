/*
 * A client of the speech worker (examples/speech_worker_plugin.c): sends
 * utterances to a modelshare-worker and prints one transcript per line, in
 * the order given.
 *
 *   speech_client [--name MODEL] ENDPOINT [UTTERANCE...]
 *
 * An UTTERANCE is text, synthesised with espeak-ng and sox, or @FILE: raw
 * 16 kHz mono signed 16-bit PCM.  Without any, three test sentences are
 * sent.  MODEL defaults to "speech".  Exits non-zero (after a line on
 * stderr) when any request fails.
 */
#define _DEFAULT_SOURCE
#include "speech_model.h"

#include <modelshare.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const defaults[] = {
    "the quick brown fox jumps over the lazy dog",
    "open the pod bay doors please", "one two three four five"};

/* The utterance's PCM (malloc'd), from a file or synthesised. */
static int16_t *utterance(const char *arg, size_t *samples) {
  int16_t *pcm = NULL;
  if (arg[0] != '@')
    return speech_synthesize(arg, &pcm, samples) == 0 ? pcm : NULL;
  FILE *f = fopen(arg + 1, "rb");
  struct stat st;
  if (f != NULL && fstat(fileno(f), &st) == 0 && st.st_size >= 2 &&
      (pcm = malloc((size_t)st.st_size)) != NULL)
    *samples = fread(pcm, sizeof(int16_t), (size_t)st.st_size / 2, f);
  if (f != NULL)
    fclose(f);
  return pcm;
}

/* Sends one utterance; prints its transcript.  0 or -1. */
static int transcribe(ms_client_t *c, ms_shm_t *shm, const char *model,
                      const char *arg) {
  size_t samples = 0;
  int16_t *pcm = utterance(arg, &samples);
  if (pcm == NULL || samples == 0) {
    fprintf(stderr, "speech_client: no audio for '%s'\n", arg);
    free(pcm);
    return -1;
  }
  /* The request's tensor lives in shared memory: the worker reads it in
   * place, and its transcript comes back the same way. */
  const int64_t shape[1] = {(int64_t)samples};
  ms_tensor_t *in = NULL, *out[1] = {NULL};
  size_t n_out = 1;
  int rc = ms_tensor_alloc(shm, MS_DTYPE_INT16, 1, shape, NULL, &in);
  if (rc == 0) {
    memcpy(ms_tensor_data(in), pcm, samples * sizeof(int16_t));
    rc = ms_client_infer(c, model, &in, 1, 60000, out, &n_out);
  }
  free(pcm);
  ms_tensor_release(in);
  if (rc == 0 && (n_out != 1 || ms_tensor_dtype(out[0]) != MS_DTYPE_UINT8))
    rc = MS_EIO;
  if (rc != 0) {
    fprintf(stderr, "speech_client: '%s': %s (%s)\n", arg, ms_err_name(rc),
            ms_client_errmsg(c));
    for (size_t i = 0; i < n_out; i++)
      ms_tensor_release(out[i]);
    return -1;
  }
  printf("%.*s\n", (int)ms_tensor_nbytes(out[0]),
         (const char *)ms_tensor_data(out[0]));
  ms_tensor_release(out[0]);
  return 0;
}

int main(int argc, char **argv) {
  const char *model = "speech";
  int i = 1;
  if (i + 1 < argc && strcmp(argv[i], "--name") == 0)
    model = argv[i + 1], i += 2;
  if (i >= argc || argv[i][0] == '-') {
    fprintf(stderr, "usage: speech_client [--name MODEL] ENDPOINT "
                    "[TEXT | @PCMFILE]...\n");
    return 2;
  }
  const char *endpoint = argv[i++];
  ms_shm_t *shm = NULL;
  ms_client_t *c = NULL;
  int rc = ms_shm_create(NULL, &shm);
  if (rc != 0) {
    fprintf(stderr, "speech_client: no shared memory: %s\n",
            ms_shm_errmsg(NULL));
    return 1;
  }
  ms_client_options_t o = MS_CLIENT_OPTIONS_INIT;
  o.shm = shm;
  if ((rc = ms_client_connect(endpoint, &o, &c)) != 0) {
    fprintf(stderr, "speech_client: cannot reach %s: %s (%s)\n", endpoint,
            ms_err_name(rc), ms_client_errmsg(NULL));
    (void)ms_shm_destroy(shm);
    return 1;
  }
  int failed = 0;
  if (i == argc)
    for (size_t k = 0; k < sizeof(defaults) / sizeof(defaults[0]); k++)
      failed |= transcribe(c, shm, model, defaults[k]) != 0;
  for (; i < argc; i++)
    failed |= transcribe(c, shm, model, argv[i]) != 0;
  ms_client_close(c);
  failed |= ms_shm_destroy(shm) != 0;
  return failed ? 1 : 0;
}
