/* pocketsphinx wrapped as a libmodelshare loader.  See speech_model.h. */
#define _DEFAULT_SOURCE
#include "speech_model.h"
#include "rss.h"

#include <cjson/cJSON.h>
#include <pocketsphinx.h>
#include <uv.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct speech {
  ps_decoder_t *ps;
  uv_mutex_t lock;
} speech;

static size_t file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}

static size_t dir_size(const char *path) {
  size_t total = 0;
  DIR *d = opendir(path);
  struct dirent *e;
  char buf[4096];
  while (d != NULL && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    (void)snprintf(buf, sizeof(buf), "%s/%s", path, e->d_name);
    total += file_size(buf);
  }
  if (d != NULL)
    closedir(d);
  return total;
}

static const char *json_str(const cJSON *o, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int speech_load(void *user, const char *path, const char *config,
                       void **model, size_t *bytes) {
  (void)user;
  cJSON *cfg = cJSON_Parse(config);
  const char *hmm = json_str(cfg, "hmm"), *lm = json_str(cfg, "lm"),
             *dict = json_str(cfg, "dict");
  if (hmm == NULL || lm == NULL || dict == NULL) {
    cJSON_Delete(cfg);
    return MS_EINVAL;
  }
  char hmm_path[4096], lm_path[4096], dict_path[4096];
  (void)snprintf(hmm_path, sizeof(hmm_path), "%s/%s", path, hmm);
  (void)snprintf(lm_path, sizeof(lm_path), "%s/%s", path, lm);
  (void)snprintf(dict_path, sizeof(dict_path), "%s/%s", path, dict);
  cJSON_Delete(cfg);

  cmd_ln_t *args = cmd_ln_init(NULL, ps_args(), TRUE, "-hmm", hmm_path, "-lm",
                               lm_path, "-dict", dict_path,
                               /* per-utterance normalisation: a shared
                                * decoder's output depends only on its
                                * input, not on what it decoded before */
                               "-cmn", "batch", "-logfn", "/dev/null", NULL);
  if (args == NULL)
    return MS_EIO;
  speech *s = calloc(1, sizeof(*s));
  if (s == NULL || uv_mutex_init(&s->lock) != 0) {
    free(s);
    cmd_ln_free_r(args);
    return MS_ENOMEM;
  }
  s->ps = ps_init(args);
  cmd_ln_free_r(args);
  if (s->ps == NULL) {
    uv_mutex_destroy(&s->lock);
    free(s);
    return MS_EIO;
  }
  *model = s;
  *bytes = dir_size(hmm_path) + file_size(lm_path) + file_size(dict_path);
  return 0;
}

static void speech_unload(void *user, void *model) {
  speech *s = model;
  (void)user;
  ps_free(s->ps);
  uv_mutex_destroy(&s->lock);
  free(s);
}

ms_loader_t speech_loader(void) {
  ms_loader_t l = MS_LOADER_INIT;
  l.load = speech_load;
  l.unload = speech_unload;
  return l;
}

int speech_transcribe(void *model, const int16_t *pcm, size_t samples,
                      char *out, size_t outlen) {
  speech *s = model;
  int rc = -1;
  int32 score = 0;
  uv_mutex_lock(&s->lock);
  if (ps_start_utt(s->ps) == 0 &&
      ps_process_raw(s->ps, pcm, samples, FALSE, TRUE) >= 0 &&
      ps_end_utt(s->ps) == 0) {
    const char *hyp = ps_get_hyp(s->ps, &score);
    (void)snprintf(out, outlen, "%s", hyp != NULL ? hyp : "");
    rc = 0;
  }
  uv_mutex_unlock(&s->lock);
  return rc;
}

int speech_synthesize(const char *text, int16_t **pcm, size_t *samples) {
  char tmpl[] = "/tmp/ms-speech-XXXXXX";
  int fd = mkstemp(tmpl);
  if (fd < 0)
    return -1;
  close(fd);
  char cmd[1024];
  (void)snprintf(cmd, sizeof(cmd),
                 "espeak-ng -s 140 --stdout '%s' 2>/dev/null | sox -D -t wav - "
                 "-t raw -r 16000 -c 1 -b 16 -e signed-integer '%s' "
                 "2>/dev/null",
                 text, tmpl);
  int rc = system(cmd);
  size_t size = file_size(tmpl);
  FILE *f = rc == 0 && size > 0 ? fopen(tmpl, "rb") : NULL;
  int16_t *buf = f != NULL ? malloc(size) : NULL;
  size_t got = buf != NULL ? fread(buf, 2, size / 2, f) : 0;
  if (f != NULL)
    fclose(f);
  unlink(tmpl);
  if (got == 0) {
    free(buf);
    return -1;
  }
  *pcm = buf;
  *samples = got;
  return 0;
}

size_t speech_rss_bytes(void) { return ms_example_rss_bytes(); }
