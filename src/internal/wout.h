/* The write side of a wire connection shared by the client and the worker
 * (client.c, worker.c and worker.h say why): other threads write whole
 * frames straight to the socket while the loop has nothing queued there;
 * a partial such write leaves a rest that the loop writes before anything
 * else.  Every function here runs under the owner's wlock. */
#ifndef MS_INTERNAL_WOUT_H
#define MS_INTERNAL_WOUT_H

#include "internal/wire.h"

#include <uv.h>

#include <stddef.h>

typedef struct ms__wout {
  int fd;          /* -1: no direct writes */
  int lib_busy;    /* libuv has bytes queued on the stream */
  int rest_state;  /* 1: a direct write left a rest, 2: the loop writes it */
  ms__wbuf rest;   /* that rest's frame */
  size_t rest_off; /* bytes of it already written */
  uv_write_t rest_req;
} ms__wout;

/* Whether libuv still holds bytes to write on s (NULL: no stream): until
 * a write callback finds none left, no other thread writes.  Loop. */
void ms__wout_check(ms__wout *o, uv_stream_t *s);

/* Starts writing the rest of a partial direct write, if there is one and
 * it is not being written yet (cb gets rest_req, whose data is `data`).
 * With no stream, or if uv_write fails, the rest is dropped (the read side
 * sees the broken connection).  Loop. */
void ms__wout_flush(ms__wout *o, uv_stream_t *s, void *data, uv_write_cb cb);

/* The rest was written (the flush's callback): lets it go.  Loop. */
void ms__wout_rest_done(ms__wout *o, uv_stream_t *s);

/* Writes b to o->fd from the calling thread if direct writes are allowed
 * and nothing is pending.  Returns the bytes written (then a partial write
 * moved b's buffer to the rest), or <= 0 when nothing went out (b is left
 * alone). */
long ms__wout_direct(ms__wout *o, ms__wbuf *b);

/* A frame written by the loop: the write request and the frame's buffer,
 * for owner. */
typedef struct ms__wframe {
  uv_write_t req;
  void *owner;
  ms__wbuf b;
} ms__wframe;

/* Takes b's buffer into a new frame for owner (req.data is the frame).
 * NULL (b freed) if out of memory. */
ms__wframe *ms__wframe_take(void *owner, ms__wbuf *b);
void ms__wframe_free(ms__wframe *f);

/* Writes p (len bytes) to s from the loop after any rest, with cb, and
 * updates lib_busy.  0, or uv_write's error (then cb is not called). */
int ms__wout_write(ms__wout *o, uv_stream_t *s, void *rest_data,
                   uv_write_cb rest_cb, uv_write_t *req, const void *p,
                   size_t len, uv_write_cb cb);

#endif
