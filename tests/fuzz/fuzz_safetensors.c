/* libFuzzer: the safetensors decoder on hostile bytes, through all three
 * entry points.  They must agree:
 *   - ms_tensor_parse_header accepts exactly the headers of the streams
 *     ms_tensor_deserialize accepts, and a prefix shorter than the header
 *     only ever asks for more bytes (MS_ERANGE) with the same answer;
 *   - ms_tensor_deserialize_into reproduces ms_tensor_deserialize's tensor
 *     and refuses the same streams without touching its destination;
 *   - whatever decodes survives a round trip, and the header-only encoder
 *     writes the same bytes as the one-call encoder. */
#include "modelshare.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int same_tensor(const ms_tensor_t *a, const ms_tensor_t *b) {
  return ms_tensor_dtype(a) == ms_tensor_dtype(b) &&
         ms_tensor_ndim(a) == ms_tensor_ndim(b) &&
         ms_tensor_nbytes(a) == ms_tensor_nbytes(b) &&
         memcmp(ms_tensor_shape(a), ms_tensor_shape(b),
                (size_t)ms_tensor_ndim(a) * sizeof(int64_t)) == 0 &&
         memcmp(ms_tensor_data(a), ms_tensor_data(b), ms_tensor_nbytes(a)) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ms_tensor_t *t = NULL, *u = NULL;
  int rc = ms_tensor_deserialize(NULL, data, size, &t);

  ms_dtype_t dt;
  int nd;
  int64_t shape[MS_MAX_NDIM];
  size_t hl = 0, dl = 0;
  int prc = ms_tensor_parse_header(data, size, &dt, &nd, shape, &hl, &dl);
  if (rc == 0 &&
      (prc != 0 || hl + dl != size || dt != ms_tensor_dtype(t) ||
       nd != ms_tensor_ndim(t) ||
       memcmp(shape, ms_tensor_shape(t), (size_t)nd * sizeof(int64_t)) != 0))
    abort(); /* the streaming parse disagrees with the decoder */
  if (prc == 0 || prc == MS_ERANGE) {
    /* Shorter prefixes ask for more bytes, and for the same number. */
    size_t need = hl, k = size < 8 ? 0 : 8, h2 = 0;
    int r8 = ms_tensor_parse_header(data, k, &dt, &nd, shape, &h2, &dl);
    if (r8 != MS_ERANGE || h2 != (k < 8 ? 8 : need))
      abort();
    if (prc == 0 && need > 8 &&
        (ms_tensor_parse_header(data, need - 1, &dt, &nd, shape, &h2, &dl) !=
             MS_ERANGE ||
         h2 != need))
      abort();
  }

  if (rc != 0) {
    /* Refused into an existing tensor too, and the tensor is untouched. */
    int64_t one[1] = {8};
    unsigned char stream[80], keep[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    static const char h[] =
        "{\"t\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}";
    size_t n = sizeof(h) - 1;
    memset(stream, 0, 8);
    stream[0] = (unsigned char)n;
    memcpy(stream + 8, h, n);
    memcpy(stream + 8 + n, keep, 8);
    ms_tensor_t *dst = NULL;
    if (ms_tensor_deserialize(NULL, stream, 8 + n + 8, &dst) != 0 ||
        ms_tensor_ndim(dst) != 1 || ms_tensor_shape(dst)[0] != one[0])
      abort();
    if (ms_tensor_deserialize_into(data, size, dst) == 0 ||
        memcmp(ms_tensor_data(dst), keep, 8) != 0)
      abort();
    ms_tensor_release(dst);
    return 0;
  }

  /* Into a tensor of the same dtype and shape: the same bytes. */
  void *buf = NULL;
  size_t len = 0;
  if (ms_tensor_serialize(t, "t", NULL, &buf, &len) != 0 ||
      ms_tensor_deserialize(NULL, buf, len, &u) != 0)
    abort(); /* what decoded once must encode and decode again */
  memset(ms_tensor_data(u), 0xa5, ms_tensor_nbytes(u));
  if (ms_tensor_deserialize_into(data, size, u) != 0 || !same_tensor(t, u))
    abort();

  /* The header-only encoder writes the one-call stream's first bytes. */
  unsigned char hdr[8 + MS_SAFETENSORS_HEADER_MAX];
  size_t hlen = 0;
  if (ms_tensor_serialize_header(t, "t", NULL, hdr, sizeof(hdr), &hlen) != 0 ||
      hlen + ms_tensor_nbytes(t) != len || memcmp(hdr, buf, hlen) != 0)
    abort();
  ms_free(buf);
  ms_tensor_release(u);
  ms_tensor_release(t);
  return 0;
}
