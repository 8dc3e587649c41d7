/* ms_tensor_freeze: a tensor's bytes made read-only for good.  The
 * platform layer seals what it can (ms__region_freeze); the header gets
 * MS__FROZEN and loses MS__POOLED, so that consumers refuse writable opens
 * and nobody keeps or recycles the region after its last release. */
#include "internal/shm.h"

int ms_tensor_freeze(ms_tensor_t *t) {
  if (t == NULL || t->shm == NULL)
    return MS_EINVAL;
  ms_shm_t *shm = t->shm;
  MS__REFUSE_IF_INHERITED(shm);
  uv_mutex_lock(&shm->lock);
  ms__map *m = t->map;
  int rc = 0;
  if (!m->own) {
    rc = ms__errmsg_set(shm, MS_EINVAL,
                        "only the tensor ms_tensor_alloc() returned can be "
                        "frozen, not an opened one");
  } else if (!m->frozen) {
    rc = ms__region_freeze(&m->region, shm->header_size);
    if (rc != 0) {
      rc = ms__errmsg_set(shm, rc == MS_ENOMEM ? MS_ENOMEM : MS_EIO,
                          "cannot freeze region %s: %s", m->name,
                          ms_strerror(rc));
    } else {
      m->frozen = 1;
      t->writable = 0;
      /* The one write to a plain header field after the descriptor was
       * handed out (I6): a single aligned 32-bit store that readers treat
       * as untrusted and advisory anyway. */
      uint32_t flags = (m->hdr->flags & ~MS__POOLED) | MS__FROZEN;
      *(volatile uint32_t *)&m->hdr->flags = flags;
    }
  }
  uv_mutex_unlock(&shm->lock);
  return rc;
}
