/*
 * A modelshare-worker plugin serving the pocketsphinx speech recognizer
 * (the examples' speech loader, speech_model.c) to client processes:
 *
 *   modelshare-worker --endpoint /tmp/speech/worker.sock \
 *       --plugin speech_worker_plugin.so \
 *       --model /usr/share/pocketsphinx/model/en-us \
 *       --config
 * '{"hmm":"en-us","lm":"en-us.lm.bin","dict":"cmudict-en-us.dict"}' \
 *       --name speech
 *
 * Request: one int16 tensor of 16 kHz mono PCM (any shape; its samples in
 * order).  Response: one uint8 tensor holding the transcript in UTF-8,
 * without a terminating NUL (an empty tensor when nothing was heard).
 * examples/speech_client.c is a client.
 */
#include "speech_model.h"

#include <modelshare.h>

#include <string.h>

#define TRANSCRIPT_MAX 4096

static int speech_infer(void *user, void *model, ms_tensor_t *const *inputs,
                        size_t n_in, ms_worker_out_t *out,
                        ms_tensor_t **outputs, size_t *n_out) {
  (void)user;
  if (n_in != 1 || ms_tensor_dtype(inputs[0]) != MS_DTYPE_INT16)
    return MS_EINVAL;
  char text[TRANSCRIPT_MAX];
  /* The decoder is shared by every request; speech_transcribe serialises
   * decodes on the model's own lock. */
  if (speech_transcribe(model, ms_tensor_data(inputs[0]),
                        ms_tensor_nbytes(inputs[0]) / sizeof(int16_t), text,
                        sizeof(text)) != 0)
    return MS_EIO;
  const int64_t len = (int64_t)strlen(text);
  ms_tensor_t *t = NULL;
  int rc = ms_worker_out_alloc(out, MS_DTYPE_UINT8, 1, &len, &t);
  if (rc != 0)
    return rc;
  memcpy(ms_tensor_data(t), text, (size_t)len);
  outputs[0] = t;
  *n_out = 1;
  return 0;
}

MS_PLUGIN_EXPORT int ms_worker_plugin_v1(ms_worker_model_t *out) {
  static ms_loader_t loader;
  if (out == NULL || out->struct_size < sizeof(ms_worker_model_t))
    return MS_EINVAL;
  loader = speech_loader();
  out->loader = &loader;
  out->infer = speech_infer;
  return 0;
}
