/* The write side of a wire connection (internal/wout.h). */
#include "internal/wout.h"

#include "internal/common.h"

void ms__wout_check(ms__wout *o, uv_stream_t *s) {
  o->lib_busy = s != NULL && uv_stream_get_write_queue_size(s) != 0;
}

void ms__wout_flush(ms__wout *o, uv_stream_t *s, void *data, uv_write_cb cb) {
  if (o->rest_state != 1)
    return;
  o->rest_state = 2;
  o->rest_req.data = data;
  uv_buf_t ub = uv_buf_init((char *)o->rest.p + o->rest_off,
                            (unsigned)(o->rest.len - o->rest_off));
  if (s == NULL || uv_write(&o->rest_req, s, &ub, 1, cb) != 0) {
    ms__wbuf_free(&o->rest);
    o->rest_state = 0; /* the read side sees the broken connection */
  }
  ms__wout_check(o, s);
}

void ms__wout_rest_done(ms__wout *o, uv_stream_t *s) {
  ms__wbuf_free(&o->rest);
  o->rest_state = 0;
  ms__wout_check(o, s);
}

long ms__wout_direct(ms__wout *o, ms__wbuf *b) {
  if (o->fd < 0 || o->lib_busy || o->rest_state != 0)
    return 0;
  long n = ms__conn_send(o->fd, b->p, b->len);
  if (n > 0 && (size_t)n < b->len) { /* the loop writes the rest */
    o->rest = *b;
    o->rest_off = (size_t)n;
    o->rest_state = 1;
    b->p = NULL;
    b->len = b->cap = 0;
  }
  return n;
}

ms__wframe *ms__wframe_take(void *owner, ms__wbuf *b) {
  ms__wframe *f = ms__malloc(sizeof(*f));
  if (f == NULL) {
    ms__wbuf_free(b);
    return NULL;
  }
  f->owner = owner;
  f->b = *b;
  f->req.data = f;
  b->p = NULL;
  b->len = b->cap = 0;
  return f;
}

void ms__wframe_free(ms__wframe *f) {
  ms__wbuf_free(&f->b);
  ms__free(f);
}

int ms__wout_write(ms__wout *o, uv_stream_t *s, void *rest_data,
                   uv_write_cb rest_cb, uv_write_t *req, const void *p,
                   size_t len, uv_write_cb cb) {
  uv_buf_t ub = uv_buf_init((char *)p, (unsigned)len);
  ms__wout_flush(o, s, rest_data, rest_cb);
  int rc = uv_write(req, s, &ub, 1, cb);
  ms__wout_check(o, s);
  return rc;
}
