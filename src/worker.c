/* The model worker, loop side: create/add_model/start/stop/destroy, the
 * listening pipe, connections, the handshake, frames in and responses out.
 * Inference runs in worker_batch.c (see internal/worker.h for who owns
 * what). */
#include "internal/worker.h"
#include "internal/abi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(MS__WORKER_OPTIONS_V1 <= sizeof(ms_worker_options_t), "abi");
_Static_assert(MS__WORKER_MODEL_V1 <= sizeof(ms_worker_model_t), "abi");

#define HS_MAX_BODY 512 /* largest frame before the handshake is done */
#define DRAIN_ACK_MS 2000

static const char none; /* errmsg owner of ms_worker_create() failures */

/* ------------------------------------------------------------------------ */
/* create, add_model, destroy                                                */
/* ------------------------------------------------------------------------ */

int ms_worker_create(const ms_worker_options_t *options, ms_registry_t *reg,
                     ms_shm_t *shm, ms_worker_t **out) {
  ms_worker_options_t o = MS_WORKER_OPTIONS_INIT;
  if (options == NULL || out == NULL)
    return ms__errmsg_set(&none, MS_EINVAL, "NULL options or out");
  if (ms__struct_in(&o, sizeof(o), options, MS__WORKER_OPTIONS_V1) != 0)
    return ms__errmsg_set(&none, MS_EINVAL, "options struct_size too small");
  if (o.endpoint == NULL || o.endpoint[0] == '\0')
    return ms__errmsg_set(&none, MS_EINVAL, "no endpoint");
  if (strlen(o.endpoint) > ms__ep_max())
    return ms__errmsg_set(&none, MS_ERANGE, "endpoint longer than %zu bytes",
                          ms__ep_max());
  if (o.max_batch == 0 || o.threads == 0 || o.max_clients == 0 ||
      o.max_inflight_per_client == 0 || o.max_frame_bytes < MS__WIRE_MIN_FRAME)
    return ms__errmsg_set(&none, MS_EINVAL,
                          "max_batch, threads, max_clients and "
                          "max_inflight_per_client must be > 0, "
                          "max_frame_bytes >= %u",
                          MS__WIRE_MIN_FRAME);
  if (o.max_batch > 64 || o.threads > 256)
    return ms__errmsg_set(&none, MS_EINVAL, "max_batch > 64 or threads > 256");
  ms_worker_t *w = ms__calloc(1, sizeof(*w));
  if (w == NULL)
    return ms__errmsg_set(&none, MS_ENOMEM, "out of memory");
  w->o = o;
  w->endpoint = ms__strdup(o.endpoint);
  w->o.endpoint = w->endpoint;
  uint64_t mb = o.max_frame_bytes < UINT32_MAX ? o.max_frame_bytes : UINT32_MAX;
  w->max_body = (size_t)mb - MS__WIRE_HDR;
  int rc = w->endpoint == NULL ? MS_ENOMEM : 0;
  if (rc == 0 && reg == NULL) {
    rc = ms_registry_create(NULL, &w->reg);
    w->own_reg = rc == 0;
  } else {
    w->reg = reg;
  }
  if (rc == 0 && shm == NULL) {
    /* No shared memory here: the worker serves inline tensors only. */
    if (ms_shm_create(NULL, &w->shm) == 0)
      w->own_shm = 1;
  } else {
    w->shm = shm;
  }
  if (rc == 0 && uv_mutex_init(&w->lock) != 0)
    rc = MS_ENOMEM;
  else if (rc == 0 && uv_cond_init(&w->work) != 0) {
    uv_mutex_destroy(&w->lock);
    rc = MS_ENOMEM;
  } else if (rc == 0 && uv_cond_init(&w->state_cv) != 0) {
    uv_cond_destroy(&w->work);
    uv_mutex_destroy(&w->lock);
    rc = MS_ENOMEM;
  }
  if (rc != 0) {
    if (w->own_shm)
      (void)ms_shm_destroy(w->shm);
    if (w->own_reg)
      (void)ms_registry_destroy(w->reg);
    ms__free(w->endpoint);
    ms__free(w);
    return ms__errmsg_set(&none, rc, "cannot create the worker: %s",
                          ms_strerror(rc));
  }
  w->state = MS__W_NEW;
  *out = w;
  return 0;
}

int ms_worker_add_model(ms_worker_t *w, const char *name,
                        const ms_worker_model_t *model) {
  ms_worker_model_t m = MS_WORKER_MODEL_INIT;
  if (w == NULL || name == NULL || model == NULL)
    return MS_EINVAL;
  if (ms__struct_in(&m, sizeof(m), model, MS__WORKER_MODEL_V1) != 0)
    return ms__errmsg_set(w, MS_EINVAL, "model struct_size too small");
  int rc = 0;
  if (m.path == NULL || m.loader == NULL || m.infer == NULL)
    rc = ms__errmsg_set(w, MS_EINVAL, "NULL path, loader or infer");
  else if (!ms__wire_name_ok(name, strlen(name)))
    rc = ms__errmsg_set(w, MS_EINVAL,
                        "model name must be 1..%d of [A-Za-z0-9_.-]",
                        MS_WORKER_NAME_MAX);
  else if (w->state != MS__W_NEW)
    rc = ms__errmsg_set(w, MS_EBUSY, "the worker is started");
  for (ms__wmodel *x = w->models; rc == 0 && x != NULL; x = x->next)
    if (strcmp(x->name, name) == 0)
      rc = ms__errmsg_set(w, MS_EBUSY, "model name %s is taken", name);
  ms__wmodel *wm = rc == 0 ? ms__calloc(1, sizeof(*wm)) : NULL;
  if (rc == 0 && wm == NULL) {
    (void)ms__errmsg_set(w, MS_ENOMEM, "out of memory");
    rc = MS_ENOMEM;
  }
  if (wm != NULL) {
    rc = ms_registry_acquire(w->reg, m.path, m.config_json, m.loader,
                             MS_WAIT_FOREVER, &wm->handle);
    if (rc != 0)
      (void)ms__errmsg_set(w, rc, "cannot load %s: %s", m.path,
                           ms_registry_errmsg(w->reg)[0]
                               ? ms_registry_errmsg(w->reg)
                               : ms_strerror(rc));
  }
  if (rc != 0 || wm == NULL) {
    ms__free(wm);
    if (m.release != NULL)
      m.release(m.user);
    return rc;
  }
  memcpy(wm->name, name, strlen(name) + 1);
  wm->m = m;
  wm->m.path = wm->m.config_json = NULL; /* not kept: the model has them */
  wm->m.loader = NULL;
  wm->next = w->models;
  w->models = wm;
  return 0;
}

int ms_worker_destroy(ms_worker_t *w) {
  if (w == NULL)
    return 0;
  uv_mutex_lock(&w->lock);
  int st = w->state;
  uv_mutex_unlock(&w->lock);
  if (st != MS__W_NEW && st != MS__W_STOPPED)
    return ms__errmsg_set(w, MS_EBUSY, "the worker is still running");
  if (w->own_loop_used)
    (void)uv_thread_join(&w->run_thread);
  while (w->models != NULL) {
    ms__wmodel *m = w->models;
    w->models = m->next;
    ms_model_release(m->handle);
    if (m->m.release != NULL)
      m->m.release(m->m.user);
    ms__free(m);
  }
  ms_tensor_release(w->probe);
  if (w->own_shm)
    (void)ms_shm_destroy(w->shm);
  if (w->own_reg)
    (void)ms_registry_destroy(w->reg);
  uv_cond_destroy(&w->state_cv);
  uv_cond_destroy(&w->work);
  uv_mutex_destroy(&w->lock);
  ms__errmsg_clear(w);
  ms__free(w->endpoint);
  ms__free(w);
  return 0;
}

const char *ms_worker_errmsg(const ms_worker_t *w) {
  return ms__errmsg_get(w != NULL ? (const void *)w : (const void *)&none);
}

/* ------------------------------------------------------------------------ */
/* writing frames                                                            */
/* ------------------------------------------------------------------------ */

static void on_rest_written(uv_write_t *req, int status) {
  (void)status;
  ms__wconn *c = req->data;
  uv_mutex_lock(&c->wlock);
  ms__wout_rest_done(&c->out, (uv_stream_t *)&c->pipe);
  uv_mutex_unlock(&c->wlock);
}

/* The rest of a partial direct write goes out before anything else.
 * wlock held. */
static void rest_flush(ms__wconn *c) {
  ms__wout_flush(&c->out, (uv_stream_t *)&c->pipe, c, on_rest_written);
}

/* Every loop write goes through here: the rest of a partial direct write
 * goes first; if libuv could not write it all at once, no inference
 * thread writes until it did (lib_busy).  0, or uv_write's error (then cb
 * is not called). */
static int loop_write(ms__wconn *c, uv_write_t *req, const void *p, size_t len,
                      uv_write_cb cb) {
  uv_mutex_lock(&c->wlock);
  int rc = ms__wout_write(&c->out, (uv_stream_t *)&c->pipe, c, on_rest_written,
                          req, p, len, cb);
  uv_mutex_unlock(&c->wlock);
  return rc;
}

static void loop_write_done(ms__wconn *c) {
  uv_mutex_lock(&c->wlock);
  ms__wout_check(&c->out, (uv_stream_t *)&c->pipe);
  uv_mutex_unlock(&c->wlock);
}

static void wframe_done(uv_write_t *req, int status) {
  (void)status;
  ms__wframe *f = req->data;
  loop_write_done(f->owner);
  ms__wframe_free(f);
}

static void send_buf(ms__wconn *c, ms__wbuf *b) {
  ms__wframe *f = ms__wframe_take(c, b);
  if (f != NULL && loop_write(c, &f->req, f->b.p, f->b.len, wframe_done) != 0)
    ms__wframe_free(f);
}

static void send_error(ms__wconn *c, uint8_t type, uint64_t id, int code,
                       const char *why) {
  ms__wbuf b;
  ms__wbuf_begin(&b, type, id);
  ms__wbuf_u32(&b, (uint32_t)code);
  if (type == MS__MSG_RESPONSE)
    ms__wbuf_u32(&b, 0); /* no outputs, reserved */
  ms__wbuf_str(&b, why, strlen(why));
  if (ms__wbuf_end(&b, c->w->max_body) == 0)
    send_buf(c, &b);
}

/* ------------------------------------------------------------------------ */
/* connections                                                               */
/* ------------------------------------------------------------------------ */

static void check_stopped(ms_worker_t *w);

static void conn_unref(ms__wconn *c) {
  if (--c->refs > 0)
    return;
  ms_worker_t *w = c->w;
  if (c->prev != NULL)
    c->prev->next = c->next;
  else if (w->conns == c)
    w->conns = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  ms__framer_free(&c->rx);
  ms__wbuf_free(&c->out.rest);
  /* An inference thread that handed its job over may not have let go of
   * wlock yet: wait for it, then nothing else touches c. */
  uv_mutex_lock(&c->wlock);
  uv_mutex_unlock(&c->wlock);
  uv_mutex_destroy(&c->wlock);
  ms__free(c);
  check_stopped(w);
}

static void conn_handle_closed(uv_handle_t *h) {
  conn_unref((ms__wconn *)h->data);
}

static void maybe_drained(ms_worker_t *w);

/* A job is finished on the loop: its response went out (and, if it held
 * outputs, they were acknowledged) or its connection is gone. */
static void job_finish(ms__job *j) {
  ms__wconn *c = j->conn;
  ms_worker_t *w = c->w;
  if (j->linked) {
    if (j->prev != NULL)
      j->prev->next = j->next;
    else
      c->jobs = j->next;
    if (j->next != NULL)
      j->next->prev = j->prev;
  }
  c->inflight--;
  w->pending--;
  ms__job_free(j);
  conn_unref(c);
  maybe_drained(w);
}

static void conn_close(ms__wconn *c, int protocol_error) {
  if (c->state == MS__C_CLOSED)
    return;
  ms_worker_t *w = c->w;
  uv_mutex_lock(&w->lock);
  if (protocol_error)
    w->st_protocol_errors++;
  w->st_clients--;
  if (c->is_inline)
    w->st_inline--;
  uv_mutex_unlock(&w->lock);
  c->state = MS__C_CLOSED;
  atomic_store(&c->closed, 1);
  uv_mutex_lock(&c->wlock); /* no thread writes to the socket from now on */
  c->out.fd = -1;
  uv_mutex_unlock(&c->wlock);
  /* Written responses waiting for an ACK will never get one. */
  for (ms__job *j = c->jobs, *next; j != NULL; j = next) {
    next = j->next;
    if (j->written)
      job_finish(j);
  }
  uv_close((uv_handle_t *)&c->pipe, conn_handle_closed);
  uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
}

static void on_hs_timeout(uv_timer_t *t) {
  ms__wconn *c = t->data;
  uv_mutex_lock(&c->w->lock);
  c->w->st_refused++;
  uv_mutex_unlock(&c->w->lock);
  conn_close(c, 0);
}

static void on_job_written(uv_write_t *req, int status) {
  ms__job *j = req->data;
  loop_write_done(j->conn);
  ms__wbuf_free(&j->resp);
  j->written = 1;
  if (status != 0 || !j->held || j->acked || j->conn->state == MS__C_CLOSED)
    job_finish(j);
}

static int handshake(ms__wconn *c, const ms__wire_msg *m) {
  ms_worker_t *w = c->w;
  if (m->type != MS__MSG_HELLO)
    return MS_EBADREGION;
  if (m->proto != MS__WIRE_PROTO ||
      (m->lib_version >> 16) != (ms_version() >> 16)) {
    char why[128];
    (void)snprintf(
        why, sizeof(why), "protocol %u / library %u.%u here, %u / %u.%u there",
        MS__WIRE_PROTO, ms_version() >> 16, (ms_version() >> 8) & 255, m->proto,
        m->lib_version >> 16, (m->lib_version >> 8) & 255);
    send_error(c, MS__MSG_BYE, 0, MS_ENOTSUP, why);
    return MS_ENOTSUP;
  }
  int inline_only = (w->o.flags & MS_WORKER_INLINE) != 0 || w->shm == NULL ||
                    (m->flags & MS__HELLO_INLINE) != 0;
  c->desc_in = 0;
  if (!inline_only && m->str_len > 0)
    c->desc_in = ms__wire_probe_opens(w->shm, m->str, m->str_len);
  ms__wbuf b;
  ms__wbuf_begin(&b, MS__MSG_WELCOME, 0);
  ms__wbuf_u32(&b, MS__WIRE_MAGIC);
  ms__wbuf_u16(&b, MS__WIRE_PROTO);
  ms__wbuf_u16(&b, c->desc_in ? MS__WELCOME_DESC : 0);
  ms__wbuf_u32(&b, ms_version());
  ms__wbuf_u32(&b, w->o.max_inflight_per_client);
  ms__wbuf_u64(&b, (uint64_t)w->max_body + MS__WIRE_HDR);
  const char *probe = inline_only || w->probe == NULL ? "" : w->probe_desc;
  ms__wbuf_str(&b, probe, strlen(probe));
  if (ms__wbuf_end(&b, HS_MAX_BODY) != 0)
    return MS_ENOMEM;
  send_buf(c, &b);
  c->is_inline = !c->desc_in;
  uv_mutex_lock(&w->lock);
  w->st_inline += (uint32_t)c->is_inline;
  uv_mutex_unlock(&w->lock);
  c->state = MS__C_READY;
  c->rx.max_body = w->max_body;
  uv_mutex_lock(&c->wlock); /* inference threads may answer directly */
  c->out.fd = ms__conn_fd(&c->pipe);
  uv_mutex_unlock(&c->wlock);
  uv_timer_stop(&c->timer);
  return 0;
}

static ms__wmodel *model_find(ms_worker_t *w, const char *s, size_t n) {
  for (ms__wmodel *m = w->models; m != NULL; m = m->next)
    if (strlen(m->name) == n && memcmp(m->name, s, n) == 0)
      return m;
  return NULL;
}

static void request_fail(ms__wconn *c, uint64_t id, int code, const char *why) {
  uv_mutex_lock(&c->w->lock);
  c->w->st_requests++;
  c->w->st_responses++;
  ms__stats_error(c->w, code);
  uv_mutex_unlock(&c->w->lock);
  send_error(c, MS__MSG_RESPONSE, id, code, why);
}

/* A REQUEST: owns frame (freed here unless a job takes it). */
static void on_request(ms__wconn *c, uint8_t *frame, const ms__wire_msg *m) {
  ms_worker_t *w = c->w;
  ms__wmodel *model = model_find(w, m->str, m->str_len);
  int rc = 0;
  const char *why = NULL;
  if (w->state != MS__W_RUNNING)
    rc = MS_EDISCONNECTED, why = "the worker is stopping";
  else if (model == NULL)
    rc = MS_ENOENT, why = "no such model";
  else if (c->inflight >= w->o.max_inflight_per_client)
    rc = MS_EBUSY, why = "too many requests in flight on this connection";
  for (uint16_t i = 0; rc == 0 && i < m->n; i++)
    if (m->t[i].kind == MS__T_DESC && !c->desc_in)
      rc = MS_EINVAL, why = "descriptors were not agreed at the handshake";
  ms__job *j = NULL;
  if (rc == 0 && (j = ms__calloc(1, sizeof(*j))) == NULL)
    rc = MS_ENOMEM, why = "out of memory";
  if (rc != 0) {
    ms__free(frame);
    request_fail(c, m->id, rc, why);
    return;
  }
  j->conn = c;
  j->model = model;
  j->id = m->id;
  j->t_recv = uv_hrtime();
  j->frame = frame;
  j->msg = *m;
  j->out.shm = w->shm;
  (void)snprintf(j->out.session, sizeof(j->out.session), "wc%llu",
                 (unsigned long long)c->serial);
  c->refs++;
  c->inflight++;
  w->pending++;
  ms__batch_submit(w, j);
}

static ms__job *held_job(ms__wconn *c, uint64_t id) {
  for (ms__job *j = c->jobs; j != NULL; j = j->next)
    if (j->id == id && j->held && !j->acked)
      return j;
  return NULL;
}

static void on_ack(ms__wconn *c, uint64_t id) {
  ms__job *j = held_job(c, id);
  if (j == NULL) {
    /* An inference thread may have written the response itself and not
     * yet handed the job over: it does both under wlock. */
    uv_mutex_lock(&c->wlock);
    uv_mutex_unlock(&c->wlock);
    ms__done_drain(c->w);
    if (c->state == MS__C_CLOSED || (j = held_job(c, id)) == NULL)
      return;
  }
  j->acked = 1;
  if (j->written)
    job_finish(j);
}

/* One complete frame (buf[0..len), owned when `owned`).  Returns non-zero
 * when the connection was closed. */
static int on_frame(ms__wconn *c, uint8_t *buf, size_t len, int owned) {
  ms_worker_t *w = c->w;
  ms__wire_msg m;
  const char *why = NULL;
  size_t max = c->state == MS__C_HANDSHAKE ? HS_MAX_BODY : w->max_body;
  int rc = ms__wire_decode(buf, len, max, &m, &why);
  if (rc == 0 && c->state == MS__C_HANDSHAKE) {
    rc = handshake(c, &m);
    if (owned)
      ms__free(buf);
    if (rc != 0) {
      uv_mutex_lock(&w->lock);
      w->st_refused++;
      uv_mutex_unlock(&w->lock);
      conn_close(c, rc == MS_EBADREGION);
      return 1;
    }
    return 0;
  }
  if (rc == 0 && (m.type == MS__MSG_REQUEST || m.type == MS__MSG_ACK ||
                  m.type == MS__MSG_PING || m.type == MS__MSG_STATUS)) {
    if (m.type == MS__MSG_REQUEST) {
      uint8_t *own = buf;
      if (!owned && (own = ms__malloc(len)) != NULL) {
        memcpy(own, buf, len);
        (void)ms__wire_decode(own, len, max, &m, NULL); /* repoint */
      }
      if (own == NULL)
        request_fail(c, m.id, MS_ENOMEM, "out of memory");
      else
        on_request(c, own, &m);
      return 0;
    }
    if (owned)
      ms__free(buf);
    if (m.type == MS__MSG_ACK) {
      on_ack(c, m.id);
    } else if (m.type == MS__MSG_PING) {
      ms__wbuf b;
      ms__wbuf_begin(&b, MS__MSG_PONG, m.id);
      if (ms__wbuf_end(&b, w->max_body) == 0)
        send_buf(c, &b);
    } else {
      char *json = NULL;
      ms__wbuf b;
      ms__wbuf_begin(&b, MS__MSG_STATUS_REPLY, m.id);
      if (ms_worker_stats_json(w, &json) == 0)
        ms__wbuf_bytes(&b, json, strlen(json));
      ms_free(json);
      if (ms__wbuf_end(&b, w->max_body) == 0)
        send_buf(c, &b);
    }
    return 0;
  }
  if (owned)
    ms__free(buf);
  conn_close(c, 1); /* malformed, or a message a client never sends */
  return 1;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  ms__wconn *c = h->data;
  char *base;
  size_t len;
  ms__framer_buf(&c->rx, &base, &len);
  *buf = uv_buf_init(base, (unsigned)len); /* 0: UV_ENOBUFS, closes */
}

static int frame_cb(void *ctx, uint8_t *buf, size_t len, int owned) {
  return on_frame(ctx, buf, len, owned);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  ms__wconn *c = s->data;
  if (n < 0) {
    conn_close(c, 0);
    return;
  }
  int rc = ms__framer_feed(&c->rx, (size_t)n, frame_cb, c);
  if (rc < 0)
    conn_close(c, rc != MS_ENOMEM);
}

static void refuse(uv_handle_t *h) { ms__free(h); }

static void on_connection(uv_stream_t *server, int status) {
  ms_worker_t *w = server->data;
  if (status != 0)
    return;
  ms__wconn *c = ms__calloc(1, sizeof(*c));
  if (c == NULL) { /* accept and drop it, or libuv keeps calling back */
    uv_pipe_t *p = ms__malloc(sizeof(*p));
    if (p != NULL && uv_pipe_init(w->loop, p, 0) == 0) {
      (void)uv_accept(server, (uv_stream_t *)p);
      uv_close((uv_handle_t *)p, refuse);
    } else {
      ms__free(p);
    }
    return;
  }
  c->w = w;
  c->rx.max_body = HS_MAX_BODY;
  c->out.fd = -1;
  if (uv_mutex_init(&c->wlock) != 0) {
    ms__free(c);
    return;
  }
  if (uv_pipe_init(w->loop, &c->pipe, 0) != 0) {
    uv_mutex_destroy(&c->wlock);
    ms__free(c);
    return;
  }
  c->pipe.data = c;
  c->timer.data = c;
  (void)uv_timer_init(w->loop, &c->timer);
  c->refs = 2;
  c->serial = ++w->next_serial;
  c->next = w->conns;
  if (w->conns != NULL)
    w->conns->prev = c;
  w->conns = c;
  uv_mutex_lock(&w->lock);
  w->st_clients++;
  w->st_connections++;
  uint32_t clients = w->st_clients;
  uv_mutex_unlock(&w->lock);
  int refuse_it = 0;
  if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
    refuse_it = 1;
  } else {
    int pc = ms__peer_check(&c->pipe, w->o.allowed_uid);
    uv_mutex_lock(&w->lock);
    if (pc != 0 || clients > w->o.max_clients || w->state != MS__W_RUNNING) {
      refuse_it = 1;
      w->st_refused++;
      w->st_refused_uid += pc == MS_EACCES;
    }
    uv_mutex_unlock(&w->lock);
  }
  if (refuse_it) {
    conn_close(c, 0);
    return;
  }
  (void)uv_timer_start(&c->timer, on_hs_timeout, w->o.handshake_timeout_ms, 0);
  if (uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) != 0)
    conn_close(c, 0);
}

/* ------------------------------------------------------------------------ */
/* responses from the inference threads                                      */
/* ------------------------------------------------------------------------ */

static void on_done(uv_async_t *a) { ms__done_drain(a->data); }

void ms__done_drain(ms_worker_t *w) {
  uv_mutex_lock(&w->lock);
  ms__job *list = w->done_head;
  w->done_head = w->done_tail = NULL;
  uv_mutex_unlock(&w->lock);
  while (list != NULL) {
    ms__job *j = list;
    list = j->next;
    j->next = NULL;
    ms__wconn *c = j->conn;
    if (c->state == MS__C_CLOSED) {
      job_finish(j);
      continue;
    }
    j->linked = 1;
    j->prev = NULL;
    j->next = c->jobs;
    if (c->jobs != NULL)
      c->jobs->prev = j;
    c->jobs = j;
    if (j->sent) {
      /* Written by its inference thread (a rest, if any, goes before
       * the connection's next frame). */
      uv_mutex_lock(&c->wlock);
      rest_flush(c);
      uv_mutex_unlock(&c->wlock);
      ms__wbuf_free(&j->resp);
      j->written = 1;
      if (!j->held || j->acked)
        job_finish(j);
      continue;
    }
    j->wreq.data = j;
    if (loop_write(c, &j->wreq, j->resp.p, j->resp.len, on_job_written) != 0) {
      on_job_written(&j->wreq, -1);
    }
  }
}

/* ------------------------------------------------------------------------ */
/* start, run, stop                                                          */
/* ------------------------------------------------------------------------ */

/* STOPPED once the worker's handles and every connection are closed: the
 * loop no longer touches w. */
static void check_stopped(ms_worker_t *w) {
  if (w->state != MS__W_DRAINING || w->handles_open > 0 || w->conns != NULL)
    return;
  ms__free(w->h);
  w->h = NULL;
  uv_mutex_lock(&w->lock);
  w->state = MS__W_STOPPED;
  uv_cond_broadcast(&w->state_cv);
  uv_mutex_unlock(&w->lock);
}

static void handle_closed(uv_handle_t *h) {
  ms_worker_t *w = h->data;
  w->handles_open--;
  check_stopped(w);
}

/* Closes of a failed start: they must not touch the worker. */
static void failed_closed(uv_handle_t *h) {
  struct ms__whandles *hs = h->data;
  if (--hs->open == 0)
    ms__free(hs);
}

/* Once nothing is pending (or the ACK grace ran out): close everything. */
static void drain_step(ms_worker_t *w);
static void maybe_drained(ms_worker_t *w) {
  if (w->state != MS__W_DRAINING || w->handles_open == 0 || w->in_drain)
    return;
  w->in_drain = 1;
  drain_step(w);
  w->in_drain = 0;
}

static void drain_step(ms_worker_t *w) {
  for (ms__wconn *c = w->conns; c != NULL; c = c->next) {
    for (ms__job *j = c->jobs; j != NULL; j = j->next)
      if (!w->drain_expired || !j->written)
        return; /* a response still being written, or awaiting its ACK */
  }
  uv_mutex_lock(&w->lock);
  int busy = w->queued != 0 || w->done_head != NULL;
  uv_mutex_unlock(&w->lock);
  if (busy)
    return;
  if (!w->drain_expired && w->pending != 0)
    return;
  for (ms__wconn *c = w->conns, *next; c != NULL; c = next) {
    next = c->next;
    conn_close(c, 0);
  }
  if (w->pending != 0)
    return; /* jobs of closed connections still coming back */
  if (uv_is_closing((uv_handle_t *)&w->h->done_async))
    return;
  ms__batch_stop(w);
  uv_close((uv_handle_t *)&w->h->done_async, handle_closed);
  uv_close((uv_handle_t *)&w->h->stop_async, handle_closed);
  uv_close((uv_handle_t *)&w->h->drain_timer, handle_closed);
}

static void on_drain_timer(uv_timer_t *t) {
  ms_worker_t *w = t->data;
  w->drain_expired = 1;
  maybe_drained(w);
}

static void begin_stop(ms_worker_t *w) {
  uv_mutex_lock(&w->lock);
  if (w->state != MS__W_RUNNING) {
    uv_mutex_unlock(&w->lock);
    return;
  }
  w->state = MS__W_DRAINING;
  uv_mutex_unlock(&w->lock);
  ms__ep_remove(w->endpoint, w->ep_ino);
  uv_close((uv_handle_t *)&w->h->server, handle_closed);
  (void)uv_timer_start(&w->h->drain_timer, on_drain_timer, DRAIN_ACK_MS, 0);
  maybe_drained(w);
}

static void on_stop(uv_async_t *a) { begin_stop(a->data); }

int ms_worker_start(ms_worker_t *w, uv_loop_t *loop) {
  if (w == NULL || loop == NULL)
    return MS_EINVAL;
  if (w->state != MS__W_NEW || w->h != NULL)
    return ms__errmsg_set(w, MS_EBUSY, "the worker was started already");
  char msg[256] = "";
  int rc = ms__ep_prepare(w->endpoint, msg, sizeof(msg));
  if (rc != 0)
    return ms__errmsg_set(w, rc, "%s", msg[0] ? msg : ms_strerror(rc));
  struct ms__whandles *h = ms__calloc(1, sizeof(*h));
  if (h == NULL)
    return ms__errmsg_set(w, MS_ENOMEM, "out of memory");
  if (w->shm != NULL && w->probe == NULL &&
      (w->o.flags & MS_WORKER_INLINE) == 0) {
    int64_t one = 1;
    if (ms_tensor_alloc(w->shm, MS_DTYPE_UINT8, 1, &one, NULL, &w->probe) ==
            0 &&
        ms_tensor_descriptor(w->probe, w->probe_desc, sizeof(w->probe_desc)) !=
            0) {
      ms_tensor_release(w->probe);
      w->probe = NULL;
    }
  }
  /* Every handle is initialised (none can fail but the pipe's bind and
   * listen), so that a failure closes all four the same way. */
  int e = uv_pipe_init(loop, &h->server, 0);
  if (e != 0) {
    ms__free(h);
    return ms__errmsg_set(w, MS_ENOMEM, "uv_pipe_init: %s", uv_strerror(e));
  }
  h->open = 1;
  if ((e = uv_async_init(loop, &h->done_async, on_done)) == 0) {
    h->open++;
    if ((e = uv_async_init(loop, &h->stop_async, on_stop)) == 0) {
      h->open++;
      (void)uv_timer_init(loop, &h->drain_timer);
      h->open++;
    }
  }
  w->h = h;
  w->loop = loop;
  if (e == 0)
    e = uv_pipe_bind(&h->server, w->endpoint);
  if (e == 0)
    e = uv_listen((uv_stream_t *)&h->server, 128, on_connection);
  if (e == 0 && ms__ep_secure(w->endpoint, &w->ep_ino) != 0)
    e = UV_EIO;
  if (e == 0 && ms__batch_start(w) != 0)
    e = UV_ENOMEM;
  if (e != 0) {
    if (e != UV_EADDRINUSE && w->ep_ino != 0)
      ms__ep_remove(w->endpoint, w->ep_ino);
    int n = h->open;
    uv_handle_t *hs[4] = {
        (uv_handle_t *)&h->server, (uv_handle_t *)&h->done_async,
        (uv_handle_t *)&h->stop_async, (uv_handle_t *)&h->drain_timer};
    for (int i = 0; i < n; i++) {
      hs[i]->data = h;
      uv_close(hs[i], failed_closed);
    }
    w->h = NULL;
    w->loop = NULL;
    rc = e == UV_EADDRINUSE ? MS_EBUSY
         : e == UV_EACCES   ? MS_EACCES
         : e == UV_ENOMEM   ? MS_ENOMEM
                            : MS_EIO;
    /* The closes complete on the loop's next turn without touching w: the
     * worker stays NEW, and may be destroyed at once. */
    return ms__errmsg_set(w, rc, "cannot listen on %s: %s", w->endpoint,
                          uv_strerror(e));
  }
  h->server.data = h->done_async.data = h->stop_async.data =
      h->drain_timer.data = w;
  w->handles_open = 4;
  w->loop_thread = uv_thread_self();
  uv_mutex_lock(&w->lock);
  w->state = MS__W_RUNNING;
  uv_mutex_unlock(&w->lock);
  return 0;
}

static void run_loop(void *arg) {
  ms_worker_t *w = arg;
  (void)uv_run(&w->own_loop, UV_RUN_DEFAULT);
  (void)uv_loop_close(&w->own_loop);
}

int ms_worker_run(ms_worker_t *w) {
  if (w == NULL)
    return MS_EINVAL;
  if (w->state != MS__W_NEW || w->own_loop_used)
    return ms__errmsg_set(w, MS_EBUSY, "the worker was started already");
  if (uv_loop_init(&w->own_loop) != 0)
    return ms__errmsg_set(w, MS_ENOMEM, "uv_loop_init failed");
  int rc = ms_worker_start(w, &w->own_loop);
  if (rc == 0 && uv_thread_create(&w->run_thread, run_loop, w) != 0) {
    /* Unwind on this thread: nothing ran on the loop yet. */
    begin_stop(w);
    rc = MS_ENOMEM;
  }
  if (rc != 0) {
    (void)uv_run(&w->own_loop, UV_RUN_DEFAULT); /* finish the closes */
    (void)uv_loop_close(&w->own_loop);
    uv_mutex_lock(&w->lock);
    if (w->state == MS__W_STOPPED)
      w->state = MS__W_NEW;
    uv_mutex_unlock(&w->lock);
    return rc;
  }
  w->own_loop_used = 1;
  w->loop_thread = w->run_thread;
  return 0;
}

int ms_worker_stop(ms_worker_t *w) {
  if (w == NULL)
    return MS_EINVAL;
  uv_mutex_lock(&w->lock);
  int st = w->state;
  uv_mutex_unlock(&w->lock);
  if (st == MS__W_NEW || st == MS__W_STOPPED)
    return 0;
  uv_thread_t self = uv_thread_self();
  if (uv_thread_equal(&self, &w->loop_thread)) {
    begin_stop(w);
    return 0;
  }
  uv_mutex_lock(&w->lock);
  /* The handles are closed only after the state left RUNNING, which takes
   * this lock: stop_async is open while we send. */
  if (w->state == MS__W_RUNNING)
    (void)uv_async_send(&w->h->stop_async);
  while (w->state != MS__W_STOPPED)
    uv_cond_wait(&w->state_cv, &w->lock);
  uv_mutex_unlock(&w->lock);
  if (w->own_loop_used) {
    (void)uv_thread_join(&w->run_thread);
    w->own_loop_used = 0;
  }
  return 0;
}
