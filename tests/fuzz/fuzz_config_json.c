/* libFuzzer: the config-JSON canonicaliser.  A canonical config must be a
 * fixed point: canonicalising it again gives the same bytes and hash. */
#include "modelshare.h"

#include "fuzz_util.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = fuzz_cstr(data, size);
  if (text == NULL)
    return 0;
  ms_key_t *k = NULL, *again = NULL;
  if (ms_key_create("/models/fuzz.bin", text, &k) == 0) {
    if (ms_key_create("/models/fuzz.bin", ms_key_config(k), &again) != 0 ||
        strcmp(ms_key_config(k), ms_key_config(again)) != 0 ||
        ms_key_hash(k) != ms_key_hash(again))
      abort();
  }
  ms_key_destroy(again);
  ms_key_destroy(k);
  free(text);
  return 0;
}
