/* DLPack export: a DLManagedTensor that holds a reference to the tensor. */
#include "internal/shm.h"

#include <dlpack/dlpack.h>

#include <stdlib.h>
#include <string.h>

typedef struct export_ctx {
  DLManagedTensor managed;
  ms_tensor_t *tensor;
  int64_t shape[MS_MAX_NDIM];
  int64_t strides[MS_MAX_NDIM];
} export_ctx;

static void export_delete(DLManagedTensor *self) {
  export_ctx *c = self->manager_ctx;
  ms_tensor_release(c->tensor);
  ms__free(c);
}

int ms_tensor_to_dlpack(ms_tensor_t *t, struct DLManagedTensor **out) {
  if (t == NULL || out == NULL)
    return MS_EINVAL;
  export_ctx *c = ms__calloc(1, sizeof(*c));
  if (c == NULL)
    return MS_ENOMEM;
  memcpy(c->shape, t->shape, sizeof(c->shape));
  memcpy(c->strides, t->strides, sizeof(c->strides));
  c->tensor = ms_tensor_retain(t);
  DLTensor *d = &c->managed.dl_tensor;
  d->data = t->data;
  d->device.device_type = kDLCPU;
  d->device.device_id = 0;
  d->ndim = t->ndim;
  d->dtype.code = (uint8_t)(t->dtype & 0xff);
  d->dtype.bits = (uint8_t)((t->dtype >> 8) & 0xff);
  d->dtype.lanes = (uint16_t)((t->dtype >> 16) & 0xffff);
  d->shape = c->shape;
  d->strides = c->strides;
  d->byte_offset = 0;
  c->managed.manager_ctx = c;
  c->managed.deleter = export_delete;
  *out = &c->managed;
  return 0;
}
