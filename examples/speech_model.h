/* A real model for libmodelshare's examples, tests and bench: the CMU
 * pocketsphinx US-English recognizer (acoustic model + language model +
 * dictionary), wrapped as a registry loader. */
#ifndef MS_SPEECH_MODEL_H
#define MS_SPEECH_MODEL_H

#include <modelshare.h>

#include <stddef.h>
#include <stdint.h>

/* Where Debian's pocketsphinx-en-us installs the model. */
#define SPEECH_MODEL_DIR "/usr/share/pocketsphinx/model/en-us"
#define SPEECH_MODEL_CONFIG                                                    \
  "{\"hmm\":\"en-us\",\"lm\":\"en-us.lm.bin\",\"dict\":\"cmudict-en-us."       \
  "dict\"}"

/* The loader: path is the model directory, config names the three parts
 * relative to it.  The reported size is the sum of the model files. */
ms_loader_t speech_loader(void);

/* Transcribes 16 kHz mono signed 16-bit PCM with a loaded model (what
 * ms_model_get() returns).  Thread-safe: decodes are serialised on the
 * model's own lock.  Returns 0 and a NUL-terminated transcript in out. */
int speech_transcribe(void *model, const int16_t *pcm, size_t samples,
                      char *out, size_t outlen);

/* Synthesises text with espeak-ng and resamples it to 16 kHz mono PCM with
 * sox.  *pcm is malloc'd.  Returns 0, or -1 if the tools are missing. */
int speech_synthesize(const char *text, int16_t **pcm, size_t *samples);

/* Resident set size of this process in bytes (/proc/self/statm). */
size_t speech_rss_bytes(void);

#endif
