/* The model worker's wire format: encoder and hostile-input decoder
 * (layouts in docs/worker-protocol.md). */
#include "internal/wire.h"

#include <uv.h>

#include <string.h>

int ms__wire_name_ok(const char *s, size_t n) {
  if (n == 0 || n > MS_WORKER_NAME_MAX)
    return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
      return 0;
  }
  return 1;
}

int ms__wire_header(const uint8_t hdr[MS__WIRE_HDR], size_t max_body,
                    uint8_t *type, uint64_t *id, uint32_t *body_len) {
  uint32_t len = ms__le32(hdr);
  uint8_t t = hdr[4];
  if (t < MS__MSG_HELLO || t > MS__MSG_BYE || hdr[5] != 0 || hdr[6] != 0 ||
      hdr[7] != 0)
    return MS_EBADREGION;
  if (len > max_body)
    return MS_ERANGE;
  *type = t;
  *id = ms__le64(hdr + 8);
  *body_len = len;
  return 0;
}

/* ---- decoder: a cursor that fails once and stays failed ---- */

typedef struct rd {
  const uint8_t *p;
  size_t n, off;
  const char *why;
} rd;

static const uint8_t *take(rd *r, size_t k, const char *what) {
  if (r->why != NULL)
    return NULL;
  if (r->n - r->off < k) {
    r->why = what;
    return NULL;
  }
  const uint8_t *q = r->p + r->off;
  r->off += k;
  return q;
}
static uint16_t rd16(rd *r, const char *what) {
  const uint8_t *q = take(r, 2, what);
  return q != NULL ? ms__le16(q) : 0;
}
static uint32_t rd32(rd *r, const char *what) {
  const uint8_t *q = take(r, 4, what);
  return q != NULL ? ms__le32(q) : 0;
}
static uint64_t rd64(rd *r, const char *what) {
  const uint8_t *q = take(r, 8, what);
  return q != NULL ? ms__le64(q) : 0;
}
static void rdstr(rd *r, ms__wire_msg *m, const char *what) {
  m->str_len = rd16(r, what);
  m->str = (const char *)take(r, m->str_len, what);
}

static void rdtensors(rd *r, ms__wire_msg *m) {
  if (m->n > MS_WORKER_MAX_TENSORS) {
    r->why = r->why != NULL ? r->why : "too many tensors";
    return;
  }
  for (uint16_t i = 0; i < m->n && r->why == NULL; i++) {
    const uint8_t *h = take(r, 8, "truncated tensor header");
    if (h == NULL)
      return;
    ms__wire_tensor *t = &m->t[i];
    t->kind = h[0];
    t->len = ms__le32(h + 4);
    if (h[1] != 0 || h[2] != 0 || h[3] != 0 ||
        (t->kind != MS__T_DESC && t->kind != MS__T_INLINE)) {
      r->why = "bad tensor kind";
      return;
    }
    if (t->kind == MS__T_DESC && (t->len == 0 || t->len >= MS_DESCRIPTOR_MAX)) {
      r->why = "bad descriptor length";
      return;
    }
    t->bytes = take(r, t->len, "truncated tensor");
  }
}

int ms__wire_decode(const uint8_t *buf, size_t len, size_t max_body,
                    ms__wire_msg *m, const char **why) {
  uint32_t body_len;
  const char *w = "truncated frame header";
  memset(m, 0, sizeof(*m));
  if (len < MS__WIRE_HDR)
    goto bad;
  int rc = ms__wire_header(buf, max_body, &m->type, &m->id, &body_len);
  if (rc != 0) {
    if (why != NULL)
      *why = rc == MS_ERANGE ? "frame over the size limit" : "bad frame header";
    return rc;
  }
  w = "frame length does not match its header";
  if (len - MS__WIRE_HDR != body_len)
    goto bad;
  rd r = {buf + MS__WIRE_HDR, body_len, 0, NULL};
  switch (m->type) {
  case MS__MSG_HELLO:
  case MS__MSG_WELCOME:
    m->magic = rd32(&r, "truncated handshake");
    m->proto = rd16(&r, "truncated handshake");
    m->flags = rd16(&r, "truncated handshake");
    m->lib_version = rd32(&r, "truncated handshake");
    m->max_inflight = rd32(&r, "truncated handshake");
    if (m->type == MS__MSG_WELCOME)
      m->max_frame = rd64(&r, "truncated handshake");
    else if (r.why == NULL && m->max_inflight != 0)
      r.why = "reserved handshake field set";
    rdstr(&r, m, "truncated probe descriptor");
    if (r.why == NULL && m->magic != MS__WIRE_MAGIC)
      r.why = "bad handshake magic";
    if (r.why == NULL && m->str_len >= MS_DESCRIPTOR_MAX)
      r.why = "probe descriptor too long";
    break;
  case MS__MSG_REQUEST:
    m->flags = rd16(&r, "truncated request");
    m->n = rd16(&r, "truncated request");
    rdstr(&r, m, "truncated model name");
    if (r.why == NULL && !ms__wire_name_ok(m->str, m->str_len))
      r.why = "bad model name";
    rdtensors(&r, m);
    break;
  case MS__MSG_RESPONSE:
    m->status = (int32_t)rd32(&r, "truncated response");
    m->n = rd16(&r, "truncated response");
    (void)rd16(&r, "truncated response");
    rdstr(&r, m, "truncated message");
    if (r.why == NULL && m->status > 0)
      r.why = "positive status";
    if (r.why == NULL && m->status != 0 && m->n != 0)
      r.why = "outputs with a failed status";
    rdtensors(&r, m);
    break;
  case MS__MSG_BYE:
    m->status = (int32_t)rd32(&r, "truncated bye");
    rdstr(&r, m, "truncated message");
    break;
  case MS__MSG_STATUS_REPLY:
    m->blob = r.p;
    m->blob_len = r.n;
    r.off = r.n;
    break;
  default: /* ACK, PING, PONG, STATUS: no body */
    break;
  }
  if (r.why == NULL && r.off != r.n)
    r.why = "trailing bytes in frame";
  if (r.why == NULL)
    return 0;
  w = r.why;
bad:
  if (why != NULL)
    *why = w;
  return MS_EBADREGION;
}

/* ---- encoder ---- */

static uint8_t *grow(ms__wbuf *b, size_t k) {
  if (b->err != 0)
    return NULL;
  if (b->cap - b->len < k) {
    size_t cap = b->cap != 0 ? b->cap : 256;
    while (cap - b->len < k) {
      if (cap > SIZE_MAX / 2) {
        b->err = MS_ERANGE;
        return NULL;
      }
      cap *= 2;
    }
    uint8_t *p = ms__realloc(b->p, cap);
    if (p == NULL) {
      b->err = MS_ENOMEM;
      return NULL;
    }
    b->p = p;
    b->cap = cap;
  }
  uint8_t *q = b->p + b->len;
  b->len += k;
  return q;
}

static void put_le(uint8_t *q, uint64_t v, int n) {
  for (int i = 0; i < n; i++)
    q[i] = (uint8_t)(v >> (8 * i));
}

void ms__wbuf_u8(ms__wbuf *b, uint8_t v) {
  uint8_t *q = grow(b, 1);
  if (q != NULL)
    *q = v;
}
void ms__wbuf_u16(ms__wbuf *b, uint16_t v) {
  uint8_t *q = grow(b, 2);
  if (q != NULL)
    put_le(q, v, 2);
}
void ms__wbuf_u32(ms__wbuf *b, uint32_t v) {
  uint8_t *q = grow(b, 4);
  if (q != NULL)
    put_le(q, v, 4);
}
void ms__wbuf_u64(ms__wbuf *b, uint64_t v) {
  uint8_t *q = grow(b, 8);
  if (q != NULL)
    put_le(q, v, 8);
}
void ms__wbuf_bytes(ms__wbuf *b, const void *p, size_t n) {
  uint8_t *q = n > 0 ? grow(b, n) : NULL;
  if (q != NULL)
    memcpy(q, p, n);
}
void ms__wbuf_str(ms__wbuf *b, const char *s, size_t n) {
  if (n > UINT16_MAX) {
    b->err = b->err != 0 ? b->err : MS_ERANGE;
    return;
  }
  ms__wbuf_u16(b, (uint16_t)n);
  ms__wbuf_bytes(b, s, n);
}

void ms__wbuf_begin(ms__wbuf *b, uint8_t type, uint64_t id) {
  memset(b, 0, sizeof(*b));
  uint8_t *q = grow(b, MS__WIRE_HDR);
  if (q == NULL)
    return;
  memset(q, 0, MS__WIRE_HDR);
  q[4] = type;
  put_le(q + 8, id, 8);
}

void ms__wbuf_tensor(ms__wbuf *b, const ms_tensor_t *t, int desc,
                     int *used_desc) {
  char d[MS_DESCRIPTOR_MAX];
  if (used_desc != NULL)
    *used_desc = 0;
  if (desc && ms_tensor_descriptor(t, d, sizeof(d)) == 0) {
    size_t n = strlen(d);
    ms__wbuf_u32(b, MS__T_DESC);
    ms__wbuf_u32(b, (uint32_t)n);
    ms__wbuf_bytes(b, d, n);
    if (used_desc != NULL)
      *used_desc = 1;
    return;
  }
  size_t hl = 0;
  int rc = ms_tensor_serialize_header(t, NULL, NULL, NULL, 0, &hl);
  if (rc != 0 && rc != MS_ERANGE) {
    b->err = b->err != 0 ? b->err : rc;
    return;
  }
  size_t nb = ms_tensor_nbytes(t);
  if (hl + nb < hl || hl + nb > UINT32_MAX) {
    b->err = b->err != 0 ? b->err : MS_ERANGE;
    return;
  }
  ms__wbuf_u32(b, MS__T_INLINE);
  ms__wbuf_u32(b, (uint32_t)(hl + nb));
  uint8_t *q = grow(b, hl + nb);
  if (q == NULL)
    return;
  rc = ms_tensor_serialize_header(t, NULL, NULL, q, hl, &hl);
  if (rc != 0) {
    b->err = rc;
    return;
  }
  if (nb > 0)
    memcpy(q + hl, ms_tensor_data(t), nb);
}

int ms__wbuf_end(ms__wbuf *b, size_t max_body) {
  if (b->err == 0 && b->len - MS__WIRE_HDR > max_body)
    b->err = MS_ERANGE;
  if (b->err != 0) {
    int rc = b->err;
    ms__wbuf_free(b);
    b->err = rc;
    return rc;
  }
  put_le(b->p, b->len - MS__WIRE_HDR, 4);
  return 0;
}

void ms__wbuf_free(ms__wbuf *b) {
  ms__free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

int ms__wire_probe_opens(ms_shm_t *shm, const char *s, size_t n) {
  char d[MS_DESCRIPTOR_MAX];
  if (shm == NULL || n >= sizeof(d))
    return 0;
  memcpy(d, s, n);
  d[n] = '\0';
  ms_tensor_t *t = NULL;
  if (ms_tensor_open(shm, d, 0, &t) != 0)
    return 0;
  ms_tensor_release(t);
  return 1;
}

/* ---- framer ---- */

void ms__framer_buf(ms__framer *f, char **base, size_t *len) {
  if (f->big != NULL) {
    *base = (char *)f->big + f->big_len;
    *len = f->big_need - f->big_len;
    return;
  }
  if (f->rx == NULL)
    f->rx = ms__malloc(MS__FRAMER_RX);
  *base = (char *)f->rx + f->rx_len;
  *len = f->rx != NULL ? MS__FRAMER_RX - f->rx_len : 0;
}

int ms__framer_feed(ms__framer *f, size_t n,
                    int (*on_frame)(void *, uint8_t *, size_t, int),
                    void *ctx) {
  if (f->big != NULL) {
    f->big_len += n;
    if (f->big_len < f->big_need)
      return 0;
    uint8_t *frame = f->big;
    f->big = NULL;
    return on_frame(ctx, frame, f->big_need, 1) != 0 ? 1 : 0;
  }
  f->rx_len += n;
  size_t off = 0;
  while (f->rx_len - off >= MS__WIRE_HDR) {
    uint8_t type;
    uint64_t id;
    uint32_t body;
    int rc = ms__wire_header(f->rx + off, f->max_body, &type, &id, &body);
    if (rc != 0)
      return rc;
    size_t total = MS__WIRE_HDR + (size_t)body;
    if (f->rx_len - off < total) {
      if (total > MS__FRAMER_RX) { /* the rest goes to its own buffer */
        f->big = ms__malloc(total);
        if (f->big == NULL)
          return MS_ENOMEM;
        f->big_need = total;
        f->big_len = f->rx_len - off;
        memcpy(f->big, f->rx + off, f->big_len);
        off = f->rx_len;
      }
      break;
    }
    if (on_frame(ctx, f->rx + off, total, 0) != 0)
      return 1;
    off += total;
  }
  memmove(f->rx, f->rx + off, f->rx_len - off);
  f->rx_len -= off;
  return 0;
}

void ms__framer_free(ms__framer *f) {
  ms__free(f->rx);
  ms__free(f->big);
  f->rx = f->big = NULL;
  f->rx_len = f->big_len = f->big_need = 0;
}

typedef struct wframe {
  uv_write_t req;
  ms__wbuf b;
} wframe;

static void wframe_done(uv_write_t *req, int status) {
  (void)status;
  wframe *f = (wframe *)req;
  ms__wbuf_free(&f->b);
  ms__free(f);
}

int ms__wire_send(struct uv_stream_s *s, ms__wbuf *b) {
  wframe *f = ms__malloc(sizeof(*f));
  if (f == NULL) {
    ms__wbuf_free(b);
    return MS_ENOMEM;
  }
  f->b = *b;
  b->p = NULL;
  b->len = b->cap = 0;
  uv_buf_t ub = uv_buf_init((char *)f->b.p, (unsigned)f->b.len);
  if (uv_write(&f->req, s, &ub, 1, wframe_done) != 0) {
    wframe_done(&f->req, -1);
    return MS_EIO;
  }
  return 0;
}
