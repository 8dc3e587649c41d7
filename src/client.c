/* The model worker's client: one connection run by a thread of its own on
 * a private libuv loop, shared by every calling thread (requests matched by
 * id), with reconnection by the retry policy.
 *
 * A call is a request record (creq).  Callers put it on the submit queue
 * (under c->lock) and wake the loop; from then on only the loop touches it
 * until it completes it, under c->lock: done = 1 and a signal (blocking
 * calls, whose record is on the caller's stack) or a uv_async_send to the
 * caller's loop (async calls).  Completion is the loop's last access.
 *
 * Every request is in exactly one place on the loop: `waiting` (not yet
 * written: no connection, or connecting) or `sent` (written, answer
 * pending).  A deadline timer completes expired ones with MS_ETIMEDOUT; a
 * lost connection completes every `sent` one with MS_EDISCONNECTED; a
 * failed reconnect (after retry_attempts) completes every `waiting` one.
 * A late answer to a completed request finds no record: its descriptor
 * outputs are acknowledged anyway, so the worker releases them.
 *
 * DIRECT REQUESTS (POSIX).  A calling thread writes its own request frame
 * to the socket (non-blocking, under c->wlock) when the connection is
 * ready and libuv has no bytes of the loop's queued on it (lib_busy == 0,
 * no rest): the request does not wait for the loop thread to wake.  It then
 * queues the record as usual, marked written with the connection's
 * generation, still under wlock; the loop moves it to `sent` (or fails it
 * with MS_EDISCONNECTED if that connection is gone).  An answer that
 * overtakes this finds no record in `sent`: the loop takes wlock once and
 * absorbs the submit queue, then looks again.  A partial write leaves its
 * rest to the loop (c->out.rest), written before any other frame; a write that
 * would block or fails leaves the whole request to the loop.  Every loop
 * write is made under wlock; if libuv could not write all of it at once,
 * lib_busy stays set until a write callback finds libuv's queue empty, so
 * libuv never has bytes queued while a caller writes.
 */
#include "internal/abi.h"
#include "internal/wire.h"
#include "internal/wout.h"

#include <uv.h>

#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

_Static_assert(MS__CLIENT_OPTIONS_V1 <= sizeof(ms_client_options_t), "abi");

#define TICK_MS 5 /* deadline timer period */

static const char none; /* errmsg owner of ms_client_connect() failures */

enum { K_CONNECT, K_INFER, K_PING, K_STATUS };
enum { S_IDLE, S_CONNECTING, S_HANDSHAKE, S_READY };

typedef struct creq creq;
struct creq {
  creq *next, *prev;
  int kind;
  uint64_t id;
  uint64_t deadline; /* uv_hrtime() ns; UINT64_MAX: none */
  char model[MS_WORKER_NAME_MAX + 1];
  ms_tensor_t *inputs[MS_WORKER_MAX_TENSORS];
  size_t n_in;
  size_t cap;  /* room for outputs */
  int written; /* a direct request: its frame went out on connection gen */
  uint64_t gen;
  /* results */
  int done;
  int status;
  char why[256];
  ms_tensor_t *outputs[MS_WORKER_MAX_TENSORS];
  size_t n_out;
  char *json;
  /* blocking callers */
  uv_cond_t cv;
  /* async callers */
  uv_async_t async;
  ms_client_cb cb;
  void *user;
  int is_async;
  atomic_int ready; /* async: the results above are written */
};

typedef struct cconn {
  uv_pipe_t pipe;
  uv_connect_t creq;
  struct ms_client *c;
  ms__framer rx;
  int closed;
} cconn;

struct ms_client {
  ms_client_options_t o;
  char *endpoint;
  ms_shm_t *shm;
  int own_shm;

  uv_loop_t loop;
  uv_thread_t thread;
  uv_async_t wake;
  uv_timer_t tick, retry, conn_timer;

  uv_mutex_t lock; /* submitq, closing, completion */
  creq *submit_head, *submit_tail;
  int closing;
  int tick_on; /* the deadline tick runs (see tick_update) */

  /* direct requests (see above); written by the loop under wlock */
  uv_mutex_t wlock;
  ms__wout out; /* fd (-1: callers hand requests to the loop), rest */
  uint64_t gen; /* the connection's generation */
  int d_desc_in, d_desc_out; /* copies of desc_in, desc_out, peer_max_body */
  size_t d_max_body;
  atomic_uint_fast64_t next_id; /* request ids, taken by loop and callers */

  /* loop thread only */
  int state;
  cconn *conn;
  creq *waiting, *sent;
  unsigned attempts;
  unsigned idle_ticks;
  int desc_in;  /* the worker opens our descriptors */
  int desc_out; /* we open the worker's */
  size_t peer_max_body;
  ms_tensor_t *probe;
};

/* ------------------------------------------------------------------------ */
/* request lists and completion (loop thread)                                */
/* ------------------------------------------------------------------------ */

static void list_push(creq **head, creq *r) {
  r->prev = NULL;
  r->next = *head;
  if (*head != NULL)
    (*head)->prev = r;
  *head = r;
}

static void list_del(creq **head, creq *r) {
  if (r->prev != NULL)
    r->prev->next = r->next;
  else
    *head = r->next;
  if (r->next != NULL)
    r->next->prev = r->prev;
  r->next = r->prev = NULL;
}

static void complete(ms_client_t *c, creq *r, int status, const char *why) {
  for (size_t i = 0; i < r->n_in; i++)
    ms_tensor_release(r->inputs[i]);
  r->n_in = 0;
  if (status != 0) {
    for (size_t i = 0; i < r->n_out; i++)
      ms_tensor_release(r->outputs[i]);
    r->n_out = 0;
    ms__free(r->json);
    r->json = NULL;
  }
  uv_mutex_lock(&c->lock);
  r->status = status;
  (void)snprintf(r->why, sizeof(r->why), "%s",
                 why != NULL ? why : ms_strerror(status));
  r->done = 1;
  if (r->is_async) {
    atomic_store_explicit(&r->ready, 1, memory_order_release);
    (void)uv_async_send(&r->async);
  } else
    uv_cond_signal(&r->cv);
  uv_mutex_unlock(&c->lock);
}

static void complete_all(ms_client_t *c, creq **head, int status,
                         const char *why) {
  while (*head != NULL) {
    creq *r = *head;
    list_del(head, r);
    /* A failed connect reports why; other calls see the disconnection. */
    complete(c, r,
             r->kind == K_CONNECT || status == MS_ECANCELED ? status
                                                            : MS_EDISCONNECTED,
             why);
  }
}

static void on_tick(uv_timer_t *t);

/* The tick runs while requests are outstanding and IDLE_TICKS more: a
 * caller that wrote its request itself does not wake the loop while it
 * runs (the tick or the answer absorbs the request).  It stops only when
 * the submit queue is empty too, under c->lock, where callers read
 * tick_on. */
#define IDLE_TICKS 3

static void tick_update(ms_client_t *c) {
  int any = c->waiting != NULL || c->sent != NULL;
  if (any) {
    c->idle_ticks = 0;
    if (!uv_is_active((uv_handle_t *)&c->tick)) {
      (void)uv_timer_start(&c->tick, on_tick, TICK_MS, TICK_MS);
      uv_mutex_lock(&c->lock);
      c->tick_on = 1;
      uv_mutex_unlock(&c->lock);
    }
    return;
  }
  if (!uv_is_active((uv_handle_t *)&c->tick) || c->idle_ticks < IDLE_TICKS)
    return;
  uv_mutex_lock(&c->lock);
  int stop = c->submit_head == NULL;
  if (stop)
    c->tick_on = 0;
  uv_mutex_unlock(&c->lock);
  if (stop)
    (void)uv_timer_stop(&c->tick);
}

/* ------------------------------------------------------------------------ */
/* connection                                                                */
/* ------------------------------------------------------------------------ */

static void start_connect(ms_client_t *c);
static void pump(ms_client_t *c);

static void conn_closed(uv_handle_t *h) {
  cconn *k = h->data;
  ms__framer_free(&k->rx);
  ms__free(k);
}

static void conn_drop(ms_client_t *c) {
  cconn *k = c->conn;
  if (k == NULL)
    return;
  uv_mutex_lock(&c->wlock); /* callers stop writing to it */
  c->out.fd = -1;
  c->gen++;
  c->out.lib_busy = 0;
  if (c->out.rest_state == 1) { /* never to be written */
    ms__wbuf_free(&c->out.rest);
    c->out.rest_state = 0;
  }
  uv_mutex_unlock(&c->wlock);
  c->conn = NULL;
  k->closed = 1;
  uv_close((uv_handle_t *)&k->pipe, conn_closed);
  ms_tensor_release(c->probe);
  c->probe = NULL;
  (void)uv_timer_stop(&c->conn_timer);
}

static void on_retry(uv_timer_t *t) { start_connect(t->data); }

/* A connection attempt failed with code (why says how). */
static void attempt_failed(ms_client_t *c, int code, const char *why) {
  conn_drop(c);
  c->state = S_IDLE;
  if (code != MS_ENOTSUP && code != MS_EINVAL &&
      c->attempts < c->o.retry_attempts) {
    uint64_t ms = c->o.retry_backoff_ms;
    for (unsigned i = 1; i < c->attempts && ms < c->o.retry_backoff_max_ms; i++)
      ms *= 2;
    if (ms > c->o.retry_backoff_max_ms)
      ms = c->o.retry_backoff_max_ms;
    (void)uv_timer_start(&c->retry, on_retry, ms, 0);
    return;
  }
  c->attempts = 0;
  complete_all(c, &c->waiting, code, why);
  tick_update(c);
}

/* The connection was lost while ready. */
static int absorb(ms_client_t *c);

static void lost(ms_client_t *c, const char *why) {
  (void)absorb(c); /* callers' requests on this connection fail too */
  conn_drop(c);
  c->state = S_IDLE;
  complete_all(c, &c->sent, MS_EDISCONNECTED, why);
  if (c->waiting != NULL)
    start_connect(c);
  tick_update(c);
}

static void on_conn_timeout(uv_timer_t *t) {
  attempt_failed(t->data, MS_ETIMEDOUT, "connection attempt timed out");
}

/* The connection's stream, or NULL between connections.  Loop. */
static uv_stream_t *conn_stream(ms_client_t *c) {
  return c->conn != NULL ? (uv_stream_t *)&c->conn->pipe : NULL;
}

static void on_rest_written(uv_write_t *req, int status) {
  (void)status;
  ms_client_t *c = req->data;
  uv_mutex_lock(&c->wlock);
  ms__wout_rest_done(&c->out, conn_stream(c));
  uv_mutex_unlock(&c->wlock);
}

/* The rest of a caller's partial write goes out before anything else.
 * wlock held. */
static void rest_flush(ms_client_t *c) {
  ms__wout_flush(&c->out, conn_stream(c), c, on_rest_written);
}

static void cframe_done(uv_write_t *req, int status) {
  (void)status;
  ms__wframe *f = req->data;
  ms_client_t *c = f->owner;
  uv_mutex_lock(&c->wlock);
  ms__wout_check(&c->out, conn_stream(c));
  uv_mutex_unlock(&c->wlock);
  ms__wframe_free(f);
}

/* Every loop write: after a caller's rest, under wlock. */
static void send_frame(ms_client_t *c, ms__wbuf *b) {
  if (c->conn == NULL) {
    ms__wbuf_free(b);
    return;
  }
  ms__wframe *f = ms__wframe_take(c, b);
  if (f == NULL)
    return;
  uv_mutex_lock(&c->wlock);
  int rc = ms__wout_write(&c->out, conn_stream(c), c, on_rest_written, &f->req,
                          f->b.p, f->b.len, cframe_done);
  uv_mutex_unlock(&c->wlock);
  if (rc != 0)
    ms__wframe_free(f);
}

static void send_ack(ms_client_t *c, uint64_t id) {
  ms__wbuf b;
  ms__wbuf_begin(&b, MS__MSG_ACK, id);
  if (ms__wbuf_end(&b, SIZE_MAX) == 0)
    send_frame(c, &b);
}

static void on_welcome(ms_client_t *c, const ms__wire_msg *m) {
  if (m->proto != MS__WIRE_PROTO ||
      (m->lib_version >> 16) != (ms_version() >> 16)) {
    attempt_failed(c, MS_ENOTSUP, "the worker speaks another protocol");
    return;
  }
  c->desc_in = (m->flags & MS__WELCOME_DESC) != 0;
  c->desc_out = 0;
  if (m->str_len > 0 && (c->o.flags & MS_CLIENT_INLINE) == 0)
    c->desc_out = ms__wire_probe_opens(c->shm, m->str, m->str_len);
  ms_tensor_release(c->probe);
  c->probe = NULL;
  uint64_t mf = m->max_frame < UINT32_MAX ? m->max_frame : UINT32_MAX;
  c->peer_max_body = mf > MS__WIRE_HDR ? (size_t)mf - MS__WIRE_HDR : 0;
  c->state = S_READY;
  c->attempts = 0;
  (void)uv_timer_stop(&c->conn_timer);
  uint64_t mine =
      c->o.max_frame_bytes < UINT32_MAX ? c->o.max_frame_bytes : UINT32_MAX;
  c->conn->rx.max_body = (size_t)mine - MS__WIRE_HDR;
  uv_mutex_lock(&c->wlock); /* callers may write their requests */
  c->d_desc_in = c->desc_in;
  c->d_desc_out = c->desc_out;
  c->d_max_body = c->peer_max_body;
  c->out.fd = ms__conn_fd(&c->conn->pipe);
  uv_mutex_unlock(&c->wlock);
  /* The connect call (if any) is waiting with the others: pump sends or
   * completes everything. */
  pump(c);
}

static creq *find_sent(ms_client_t *c, uint64_t id) {
  for (int pass = 0; pass < 2; pass++) {
    for (creq *r = c->sent; r != NULL; r = r->next)
      if (r->id == id)
        return r;
    if (pass == 0) { /* a direct request not yet absorbed? */
      uv_mutex_lock(&c->wlock);
      uv_mutex_unlock(&c->wlock);
      (void)absorb(c);
    }
  }
  return NULL;
}

static void on_response(ms_client_t *c, const ms__wire_msg *m) {
  creq *r = find_sent(c, m->id);
  int any_desc = 0;
  for (uint16_t i = 0; i < m->n; i++)
    any_desc |= m->t[i].kind == MS__T_DESC;
  if (r == NULL || r->kind != K_INFER) {
    if (any_desc)
      send_ack(c, m->id); /* a late answer: let the worker release it */
    return;
  }
  list_del(&c->sent, r);
  tick_update(c);
  int rc = m->status;
  char why[256];
  if (rc != 0)
    (void)snprintf(why, sizeof(why), "the worker: %.*s", (int)m->str_len,
                   m->str);
  else if (m->n > r->cap)
    rc = MS_ERANGE,
    (void)snprintf(why, sizeof(why), "%u outputs, room for %zu", m->n, r->cap);
  for (uint16_t i = 0; rc == 0 && i < m->n; i++) {
    const ms__wire_tensor *t = &m->t[i];
    if (t->kind == MS__T_DESC) {
      char d[MS_DESCRIPTOR_MAX];
      memcpy(d, t->bytes, t->len);
      d[t->len] = '\0';
      rc = c->shm != NULL ? ms_tensor_open(c->shm, d, 0, &r->outputs[i])
                          : MS_EINVAL;
    } else {
      rc = ms_tensor_deserialize(NULL, t->bytes, t->len, &r->outputs[i]);
    }
    if (rc != 0)
      (void)snprintf(why, sizeof(why), "output %u: %s", i,
                     ms_shm_errmsg(t->kind == MS__T_DESC ? c->shm : NULL));
    else
      r->n_out = i + 1u;
  }
  if (any_desc)
    send_ack(c, m->id);
  complete(c, r, rc, rc != 0 ? why : NULL);
}

static int on_frame(void *ctx, uint8_t *buf, size_t len, int owned) {
  ms_client_t *c = ctx;
  ms__wire_msg m;
  const char *why = NULL;
  int rc = ms__wire_decode(buf, len, c->conn->rx.max_body, &m, &why);
  int stop = 0;
  if (rc != 0) {
    char msg[200];
    (void)snprintf(msg, sizeof(msg), "malformed frame from the worker: %s",
                   why);
    if (c->state == S_READY)
      lost(c, msg);
    else
      attempt_failed(c, MS_EBADREGION, msg);
    stop = 1;
  } else if (m.type == MS__MSG_BYE) {
    char msg[200];
    (void)snprintf(msg, sizeof(msg), "the worker refused: %.*s", (int)m.str_len,
                   m.str);
    if (c->state == S_READY)
      lost(c, msg);
    else
      attempt_failed(c, m.status < 0 ? m.status : MS_EDISCONNECTED, msg);
    stop = 1;
  } else if (c->state == S_HANDSHAKE) {
    if (m.type == MS__MSG_WELCOME)
      on_welcome(c, &m);
    else
      attempt_failed(c, MS_EBADREGION, "no handshake from the worker");
    stop = c->state != S_READY;
  } else if (m.type == MS__MSG_RESPONSE) {
    on_response(c, &m);
  } else if (m.type == MS__MSG_PONG || m.type == MS__MSG_STATUS_REPLY) {
    creq *r = find_sent(c, m.id);
    int want = m.type == MS__MSG_PONG ? K_PING : K_STATUS;
    if (r != NULL && r->kind == want) {
      list_del(&c->sent, r);
      tick_update(c);
      int st = 0;
      if (want == K_STATUS) {
        r->json = ms__malloc(m.blob_len + 1);
        if (r->json == NULL)
          st = MS_ENOMEM;
        else {
          memcpy(r->json, m.blob, m.blob_len);
          r->json[m.blob_len] = '\0';
        }
      }
      complete(c, r, st, NULL);
    }
  } else {
    lost(c, "unexpected message from the worker");
    stop = 1;
  }
  if (owned)
    ms__free(buf);
  return stop;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  cconn *k = h->data;
  char *base;
  size_t len;
  ms__framer_buf(&k->rx, &base, &len);
  *buf = uv_buf_init(base, (unsigned)len);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  cconn *k = s->data;
  ms_client_t *c = k->c;
  if (k->closed || c->conn != k)
    return;
  if (n < 0) {
    if (c->state == S_READY)
      lost(c, "the worker closed the connection");
    else
      attempt_failed(c, MS_EDISCONNECTED,
                     "the worker closed the connection during the handshake");
    return;
  }
  int rc = ms__framer_feed(&k->rx, (size_t)n, on_frame, c);
  if (rc < 0) {
    if (c->state == S_READY)
      lost(c, "bad frame from the worker");
    else
      attempt_failed(c, MS_EBADREGION, "bad frame from the worker");
  }
}

static void on_connect(uv_connect_t *req, int status) {
  cconn *k = req->data;
  ms_client_t *c = k->c;
  if (k->closed || c->conn != k)
    return;
  if (status != 0) {
    char why[200];
    (void)snprintf(why, sizeof(why), "cannot connect to %s: %s", c->endpoint,
                   uv_strerror(status));
    attempt_failed(c,
                   status == UV_ENOENT || status == UV_ECONNREFUSED ? MS_ENOENT
                   : status == UV_EACCES                            ? MS_EACCES
                                                                    : MS_EIO,
                   why);
    return;
  }
  /* HELLO, with a probe the worker opens if it shares our namespace. */
  char probe[MS_DESCRIPTOR_MAX] = "";
  if (c->shm != NULL && (c->o.flags & MS_CLIENT_INLINE) == 0) {
    int64_t one = 1;
    if (ms_tensor_alloc(c->shm, MS_DTYPE_UINT8, 1, &one, NULL, &c->probe) ==
            0 &&
        ms_tensor_descriptor(c->probe, probe, sizeof(probe)) != 0)
      probe[0] = '\0';
  }
  ms__wbuf b;
  ms__wbuf_begin(&b, MS__MSG_HELLO, 0);
  ms__wbuf_u32(&b, MS__WIRE_MAGIC);
  ms__wbuf_u16(&b, MS__WIRE_PROTO);
  ms__wbuf_u16(&b, (c->o.flags & MS_CLIENT_INLINE) ? MS__HELLO_INLINE : 0);
  ms__wbuf_u32(&b, ms_version());
  ms__wbuf_u32(&b, 0);
  ms__wbuf_str(&b, probe, strlen(probe));
  if (ms__wbuf_end(&b, SIZE_MAX) != 0) {
    attempt_failed(c, MS_ENOMEM, "out of memory");
    return;
  }
  c->state = S_HANDSHAKE;
  send_frame(c, &b);
  if (uv_read_start((uv_stream_t *)&k->pipe, on_alloc, on_read) != 0)
    attempt_failed(c, MS_EIO, "cannot read from the worker");
}

static void start_connect(ms_client_t *c) {
  if (c->state != S_IDLE || c->closing)
    return;
  c->attempts++;
  cconn *k = ms__calloc(1, sizeof(*k));
  if (k == NULL || uv_pipe_init(&c->loop, &k->pipe, 0) != 0) {
    ms__free(k);
    c->attempts = c->o.retry_attempts; /* no point retrying */
    attempt_failed(c, MS_ENOMEM, "out of memory");
    return;
  }
  k->c = c;
  k->pipe.data = k;
  k->creq.data = k;
  k->rx.max_body = 512; /* a WELCOME is small */
  c->conn = k;
  c->state = S_CONNECTING;
  (void)uv_timer_start(&c->conn_timer, on_conn_timeout, c->o.connect_timeout_ms,
                       0);
  uv_pipe_connect(&k->creq, &k->pipe, c->endpoint, on_connect);
}

/* ------------------------------------------------------------------------ */
/* sending (loop thread)                                                     */
/* ------------------------------------------------------------------------ */

static int encode(int desc_in, int desc_out, size_t max_body, creq *r,
                  ms__wbuf *b) {
  static const uint8_t types[] = {0, MS__MSG_REQUEST, MS__MSG_PING,
                                  MS__MSG_STATUS};
  ms__wbuf_begin(b, types[r->kind], r->id);
  if (r->kind == K_INFER) {
    ms__wbuf_u16(b, desc_out ? 0 : MS__REQ_INLINE_OUT);
    ms__wbuf_u16(b, (uint16_t)r->n_in);
    ms__wbuf_str(b, r->model, strlen(r->model));
    for (size_t i = 0; i < r->n_in; i++)
      ms__wbuf_tensor(b, r->inputs[i], desc_in, NULL);
  }
  return ms__wbuf_end(b, max_body);
}

/* Sends or completes every waiting request, or starts connecting. */
static void pump(ms_client_t *c) {
  if (c->state != S_READY) {
    if (c->waiting != NULL)
      start_connect(c);
    tick_update(c);
    return;
  }
  while (c->waiting != NULL) {
    creq *r = c->waiting;
    list_del(&c->waiting, r);
    if (r->kind == K_CONNECT) {
      complete(c, r, 0, NULL);
      continue;
    }
    r->id = atomic_fetch_add(&c->next_id, 1) + 1;
    ms__wbuf b;
    int rc = encode(c->desc_in, c->desc_out, c->peer_max_body, r, &b);
    if (rc != 0) {
      complete(c, r, rc,
               rc == MS_ERANGE ? "request over the worker's max_frame_bytes"
                               : "cannot encode the inputs");
      continue;
    }
    list_push(&c->sent, r);
    send_frame(c, &b);
  }
  tick_update(c);
}

static void expire(ms_client_t *c, creq **head, uint64_t now) {
  for (creq *r = *head, *next; r != NULL; r = next) {
    next = r->next;
    if (now >= r->deadline) {
      list_del(head, r);
      complete(c, r, MS_ETIMEDOUT, "no answer from the worker in time");
    }
  }
}

static void on_tick(uv_timer_t *t) {
  ms_client_t *c = t->data;
  (void)absorb(c); /* closing: the wake that said so is pending */
  c->idle_ticks++;
  uint64_t now = uv_hrtime();
  expire(c, &c->waiting, now);
  expire(c, &c->sent, now);
  tick_update(c);
}

/* Takes the submit queue: direct requests to `sent` (or failed, if their
 * connection is gone), the others to `waiting`.  Returns c->closing. */
static int absorb(ms_client_t *c) {
  uv_mutex_lock(&c->lock);
  creq *list = c->submit_head;
  c->submit_head = c->submit_tail = NULL;
  int closing = c->closing;
  uv_mutex_unlock(&c->lock);
  /* Reversed onto the front of `waiting`: pump sends from the front, so a
   * batch of submissions goes out in order. */
  creq *rev = NULL;
  while (list != NULL) {
    creq *r = list;
    list = r->next;
    r->next = rev;
    rev = r;
  }
  while (rev != NULL) {
    creq *r = rev;
    rev = r->next;
    if (!r->written)
      list_push(&c->waiting, r);
    else if (c->state == S_READY && r->gen == c->gen)
      list_push(&c->sent, r);
    else
      complete(c, r, MS_EDISCONNECTED, "the connection to the worker was lost");
  }
  return closing;
}

static void on_wake(uv_async_t *a) {
  ms_client_t *c = a->data;
  int closing = absorb(c);
  if (!closing) {
    uv_mutex_lock(&c->wlock);
    rest_flush(c);
    uv_mutex_unlock(&c->wlock);
    pump(c);
    return;
  }
  complete_all(c, &c->waiting, MS_ECANCELED, "the client was closed");
  complete_all(c, &c->sent, MS_ECANCELED, "the client was closed");
  conn_drop(c);
  uv_close((uv_handle_t *)&c->wake, NULL);
  uv_close((uv_handle_t *)&c->tick, NULL);
  uv_close((uv_handle_t *)&c->retry, NULL);
  uv_close((uv_handle_t *)&c->conn_timer, NULL);
}

static void thread_main(void *arg) {
  ms_client_t *c = arg;
  (void)uv_run(&c->loop, UV_RUN_DEFAULT);
}

/* ------------------------------------------------------------------------ */
/* public API                                                                */
/* ------------------------------------------------------------------------ */

/* Encodes r for the current connection, outside any lock (inline tensors
 * may be large).  0 and b filled, or non-zero: the loop takes r. */
static int encode_direct(ms_client_t *c, creq *r, ms__wbuf *b) {
  uv_mutex_lock(&c->wlock);
  int ok = c->out.fd >= 0;
  int din = c->d_desc_in, dout = c->d_desc_out;
  size_t max = c->d_max_body;
  r->gen = c->gen;
  uv_mutex_unlock(&c->wlock);
  if (!ok || r->kind == K_CONNECT)
    return -1;
  r->id = atomic_fetch_add(&c->next_id, 1) + 1;
  if (encode(din, dout, max, r, b) != 0) {
    ms__wbuf_free(b); /* the loop encodes it again and reports why */
    return -1;
  }
  return 0;
}

/* Writes b (r's frame) to the socket from the calling thread if the
 * connection is still the one it was encoded for and the loop has nothing
 * pending there.  wlock held; takes b. */
static void write_direct(ms_client_t *c, creq *r, ms__wbuf *b) {
  /* <= 0: not tried, would block, or an error the loop will meet */
  if (c->gen == r->gen && ms__wout_direct(&c->out, b) > 0)
    r->written = 1; /* a rest, if any, is the loop's (woken by submit) */
  ms__wbuf_free(b);
}

/* Queues r for the loop (written first, if it can).  MS_ECANCELED once the
 * client is closing. */
static int submit(ms_client_t *c, creq *r) {
  ms__wbuf b;
  int direct = encode_direct(c, r, &b) == 0;
  uv_mutex_lock(&c->wlock);
  uv_mutex_lock(&c->lock);
  if (c->closing) {
    uv_mutex_unlock(&c->lock);
    uv_mutex_unlock(&c->wlock);
    if (direct)
      ms__wbuf_free(&b);
    return MS_ECANCELED;
  }
  if (direct)
    write_direct(c, r, &b); /* under c->lock too: ms_client_close waits */
  /* A written request needs no wake while the tick runs. */
  int wake = !r->written || !c->tick_on || c->out.rest_state == 1;
  r->next = NULL;
  if (c->submit_tail != NULL)
    c->submit_tail->next = r;
  else
    c->submit_head = r;
  c->submit_tail = r;
  uv_mutex_unlock(&c->lock);
  uv_mutex_unlock(&c->wlock);
  if (wake)
    (void)uv_async_send(&c->wake);
  return 0;
}

static uint64_t deadline_of(uint64_t timeout_ms) {
  if (timeout_ms == MS_WAIT_FOREVER || timeout_ms > UINT64_MAX / 2000000)
    return UINT64_MAX;
  return uv_hrtime() + timeout_ms * 1000000ull;
}

/* Runs a blocking request to its end; r->status. */
static int run_blocking(ms_client_t *c, creq *r) {
  if (uv_cond_init(&r->cv) != 0) {
    for (size_t i = 0; i < r->n_in; i++)
      ms_tensor_release(r->inputs[i]);
    return ms__errmsg_set(c, MS_ENOMEM, "out of memory");
  }
  int rc = submit(c, r);
  if (rc == 0) {
    uv_mutex_lock(&c->lock);
    while (!r->done)
      uv_cond_wait(&r->cv, &c->lock);
    uv_mutex_unlock(&c->lock);
    rc = r->status;
  } else {
    for (size_t i = 0; i < r->n_in; i++)
      ms_tensor_release(r->inputs[i]);
    (void)snprintf(r->why, sizeof(r->why), "the client is closing");
  }
  uv_cond_destroy(&r->cv);
  if (rc != 0)
    (void)ms__errmsg_set(c, rc, "%s", r->why);
  return rc;
}

static void client_free(ms_client_t *c) {
  if (c->own_shm)
    (void)ms_shm_destroy(c->shm);
  uv_mutex_destroy(&c->lock);
  uv_mutex_destroy(&c->wlock);
  ms__wbuf_free(&c->out.rest);
  ms__free(c->endpoint);
  ms__free(c);
}

int ms_client_connect(const char *endpoint, const ms_client_options_t *options,
                      ms_client_t **out) {
  ms_client_options_t o = MS_CLIENT_OPTIONS_INIT;
  if (endpoint == NULL || out == NULL || endpoint[0] == '\0')
    return ms__errmsg_set(&none, MS_EINVAL, "NULL or empty endpoint, or out");
  if (options != NULL &&
      ms__struct_in(&o, sizeof(o), options, MS__CLIENT_OPTIONS_V1) != 0)
    return ms__errmsg_set(&none, MS_EINVAL, "options struct_size too small");
  if (strlen(endpoint) > 256)
    return ms__errmsg_set(&none, MS_ERANGE, "endpoint too long");
  if (o.retry_attempts == 0)
    o.retry_attempts = 1;
  if (o.max_frame_bytes < MS__WIRE_MIN_FRAME)
    o.max_frame_bytes = MS__WIRE_MIN_FRAME;
  ms_client_t *c = ms__calloc(1, sizeof(*c));
  if (c == NULL)
    return ms__errmsg_set(&none, MS_ENOMEM, "out of memory");
  c->o = o;
  c->endpoint = ms__strdup(endpoint);
  c->out.fd = -1;
  if (c->endpoint == NULL || uv_mutex_init(&c->lock) != 0) {
    ms__free(c->endpoint);
    ms__free(c);
    return ms__errmsg_set(&none, MS_ENOMEM, "out of memory");
  }
  if (uv_mutex_init(&c->wlock) != 0) {
    uv_mutex_destroy(&c->lock);
    ms__free(c->endpoint);
    ms__free(c);
    return ms__errmsg_set(&none, MS_ENOMEM, "out of memory");
  }
  c->shm = o.shm;
  if (c->shm == NULL && (o.flags & MS_CLIENT_INLINE) == 0 &&
      ms_shm_create(NULL, &c->shm) == 0)
    c->own_shm = 1; /* else inline tensors only */
  int e = uv_loop_init(&c->loop);
  if (e != 0) {
    client_free(c);
    return ms__errmsg_set(&none, MS_ENOMEM, "uv_loop_init: %s", uv_strerror(e));
  }
  c->wake.data = c->tick.data = c->retry.data = c->conn_timer.data = c;
  e = uv_async_init(&c->loop, &c->wake, on_wake);
  if (e == 0) {
    (void)uv_timer_init(&c->loop, &c->tick);
    (void)uv_timer_init(&c->loop, &c->retry);
    (void)uv_timer_init(&c->loop, &c->conn_timer);
    e = uv_thread_create(&c->thread, thread_main, c);
    if (e != 0) {
      uv_close((uv_handle_t *)&c->wake, NULL);
      uv_close((uv_handle_t *)&c->tick, NULL);
      uv_close((uv_handle_t *)&c->retry, NULL);
      uv_close((uv_handle_t *)&c->conn_timer, NULL);
      (void)uv_run(&c->loop, UV_RUN_DEFAULT);
    }
  }
  if (e != 0) {
    (void)uv_loop_close(&c->loop);
    client_free(c);
    return ms__errmsg_set(&none, MS_ENOMEM, "cannot start the client: %s",
                          uv_strerror(e));
  }
  /* Connect now, with the retry policy; the request completes when the
   * handshake is done or every attempt failed. */
  creq r;
  memset(&r, 0, sizeof(r));
  r.kind = K_CONNECT;
  r.deadline = UINT64_MAX;
  int rc = run_blocking(c, &r);
  if (rc != 0) {
    (void)ms__errmsg_set(&none, rc, "%s", r.why);
    ms__errmsg_clear(c);
    ms_client_close(c);
    return rc;
  }
  *out = c;
  return 0;
}

static int check_infer(ms_client_t *c, const char *model,
                       ms_tensor_t *const *inputs, size_t n_in) {
  if (model == NULL || (n_in > 0 && inputs == NULL))
    return ms__errmsg_set(c, MS_EINVAL, "NULL model name or inputs");
  if (!ms__wire_name_ok(model, strlen(model)))
    return ms__errmsg_set(c, MS_EINVAL, "bad model name");
  if (n_in > MS_WORKER_MAX_TENSORS)
    return ms__errmsg_set(c, MS_EINVAL, "more than %d inputs",
                          MS_WORKER_MAX_TENSORS);
  for (size_t i = 0; i < n_in; i++)
    if (inputs[i] == NULL)
      return ms__errmsg_set(c, MS_EINVAL, "input %zu is NULL", i);
  return 0;
}

static void fill_infer(creq *r, const char *model, ms_tensor_t *const *inputs,
                       size_t n_in, uint64_t timeout_ms) {
  r->kind = K_INFER;
  r->deadline = deadline_of(timeout_ms);
  memcpy(r->model, model, strlen(model) + 1);
  for (size_t i = 0; i < n_in; i++)
    r->inputs[i] = ms_tensor_retain(inputs[i]);
  r->n_in = n_in;
  r->cap = MS_WORKER_MAX_TENSORS;
}

int ms_client_infer(ms_client_t *c, const char *model_name,
                    ms_tensor_t *const *inputs, size_t n_in,
                    uint64_t timeout_ms, ms_tensor_t **outputs, size_t *n_out) {
  if (c == NULL || outputs == NULL || n_out == NULL)
    return MS_EINVAL;
  int rc = check_infer(c, model_name, inputs, n_in);
  if (rc != 0)
    return rc;
  creq r;
  memset(&r, 0, sizeof(r));
  fill_infer(&r, model_name, inputs, n_in, timeout_ms);
  r.cap = *n_out < MS_WORKER_MAX_TENSORS ? *n_out : MS_WORKER_MAX_TENSORS;
  rc = run_blocking(c, &r);
  if (rc != 0)
    return rc;
  for (size_t i = 0; i < r.n_out; i++)
    outputs[i] = r.outputs[i];
  *n_out = r.n_out;
  return 0;
}

static void async_closed(uv_handle_t *h) { ms__free(h->data); }

static void on_async_done(uv_async_t *a) {
  creq *r = a->data;
  if (!atomic_load_explicit(&r->ready, memory_order_acquire))
    return; /* a spurious wake-up cannot happen, but stay safe */
  r->cb(r->status, r->outputs, r->status == 0 ? r->n_out : 0, r->user);
  uv_close((uv_handle_t *)&r->async, async_closed);
}

int ms_client_infer_async(ms_client_t *c, uv_loop_t *loop,
                          const char *model_name, ms_tensor_t *const *inputs,
                          size_t n_in, uint64_t timeout_ms, ms_client_cb cb,
                          void *user) {
  if (c == NULL || loop == NULL || cb == NULL)
    return MS_EINVAL;
  int rc = check_infer(c, model_name, inputs, n_in);
  if (rc != 0)
    return rc;
  creq *r = ms__calloc(1, sizeof(*r));
  if (r == NULL)
    return ms__errmsg_set(c, MS_ENOMEM, "out of memory");
  r->is_async = 1;
  r->cb = cb;
  r->user = user;
  r->async.data = r;
  if (uv_async_init(loop, &r->async, on_async_done) != 0) {
    ms__free(r);
    return ms__errmsg_set(c, MS_EIO, "uv_async_init failed");
  }
  fill_infer(r, model_name, inputs, n_in, timeout_ms);
  rc = submit(c, r);
  if (rc != 0) {
    for (size_t i = 0; i < r->n_in; i++)
      ms_tensor_release(r->inputs[i]);
    uv_close((uv_handle_t *)&r->async, async_closed);
    return ms__errmsg_set(c, rc, "the client is closing");
  }
  return 0;
}

int ms_client_ping(ms_client_t *c, uint64_t timeout_ms) {
  if (c == NULL)
    return MS_EINVAL;
  creq r;
  memset(&r, 0, sizeof(r));
  r.kind = K_PING;
  r.deadline = deadline_of(timeout_ms);
  return run_blocking(c, &r);
}

int ms_client_status_json(ms_client_t *c, uint64_t timeout_ms, char **json) {
  if (c == NULL || json == NULL)
    return MS_EINVAL;
  creq r;
  memset(&r, 0, sizeof(r));
  r.kind = K_STATUS;
  r.deadline = deadline_of(timeout_ms);
  int rc = run_blocking(c, &r);
  if (rc == 0)
    *json = r.json;
  return rc;
}

void ms_client_close(ms_client_t *c) {
  if (c == NULL)
    return;
  uv_mutex_lock(&c->lock);
  c->closing = 1;
  uv_mutex_unlock(&c->lock);
  (void)uv_async_send(&c->wake);
  (void)uv_thread_join(&c->thread);
  (void)uv_loop_close(&c->loop);
  ms__errmsg_clear(c);
  client_free(c);
}

const char *ms_client_errmsg(const ms_client_t *c) {
  return ms__errmsg_get(c != NULL ? (const void *)c : (const void *)&none);
}
