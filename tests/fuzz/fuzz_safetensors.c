/* libFuzzer: the safetensors decoder on hostile bytes.  Whatever decodes
 * must also survive a round trip: decode(encode(decode(x))) == decode(x). */
#include "modelshare.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ms_tensor_t *t = NULL, *u = NULL;
  if (ms_tensor_deserialize(NULL, data, size, &t) != 0)
    return 0;
  void *buf = NULL;
  size_t len = 0;
  if (ms_tensor_serialize(t, "t", NULL, &buf, &len) != 0 ||
      ms_tensor_deserialize(NULL, buf, len, &u) != 0)
    abort(); /* what decoded once must encode and decode again */
  if (ms_tensor_dtype(u) != ms_tensor_dtype(t) ||
      ms_tensor_ndim(u) != ms_tensor_ndim(t) ||
      ms_tensor_nbytes(u) != ms_tensor_nbytes(t) ||
      memcmp(ms_tensor_shape(u), ms_tensor_shape(t),
             (size_t)ms_tensor_ndim(t) * sizeof(int64_t)) != 0 ||
      memcmp(ms_tensor_data(u), ms_tensor_data(t), ms_tensor_nbytes(t)) != 0)
    abort();
  ms_free(buf);
  ms_tensor_release(u);
  ms_tensor_release(t);
  return 0;
}
