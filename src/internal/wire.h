/* The model worker's wire format (docs/worker-protocol.md): frame header,
 * message bodies, encoder and the hostile-input decoder.  Pure byte code:
 * no I/O, no libuv, so the decoder can be fuzzed on its own. */
#ifndef MS_INTERNAL_WIRE_H
#define MS_INTERNAL_WIRE_H

#include "internal/common.h"

#include <stddef.h>
#include <stdint.h>

#define MS__WIRE_MAGIC 0x5057534du /* "MSWP" little-endian */
#define MS__WIRE_PROTO 1u
#define MS__WIRE_HDR 16u /* frame header bytes */
/* The smallest max_frame_bytes either side accepts. */
#define MS__WIRE_MIN_FRAME 4096u

/* Message types (frame header byte 4). */
enum {
  MS__MSG_HELLO = 1,   /* client -> worker, id 0 */
  MS__MSG_WELCOME = 2, /* worker -> client, id 0 */
  MS__MSG_REQUEST = 3, /* client -> worker */
  MS__MSG_RESPONSE = 4,
  MS__MSG_ACK = 5, /* client -> worker: outputs of response `id` opened */
  MS__MSG_PING = 6,
  MS__MSG_PONG = 7,
  MS__MSG_STATUS = 8,
  MS__MSG_STATUS_REPLY = 9,
  MS__MSG_BYE = 10 /* worker -> client, id 0: refused or closing */
};

/* HELLO flags: the client wants inline tensors only. */
#define MS__HELLO_INLINE 1u
/* WELCOME flags: the worker opened the client's probe descriptor. */
#define MS__WELCOME_DESC 1u
/* REQUEST flags: send the outputs inline (the client cannot open the
 * worker's descriptors). */
#define MS__REQ_INLINE_OUT 1u

/* Tensor kinds inside REQUEST and RESPONSE bodies. */
#define MS__T_DESC 1u   /* a descriptor string */
#define MS__T_INLINE 2u /* a safetensors stream */

typedef struct ms__wire_tensor {
  uint8_t kind;
  uint32_t len;
  const uint8_t *bytes; /* into the decoded buffer */
} ms__wire_tensor;

/* A decoded frame: pointers into the caller's buffer, nothing allocated. */
typedef struct ms__wire_msg {
  uint8_t type;
  uint64_t id;
  /* HELLO / WELCOME */
  uint32_t magic;
  uint16_t proto;
  uint16_t flags; /* HELLO, WELCOME and REQUEST flags */
  uint32_t lib_version;
  uint32_t max_inflight; /* WELCOME */
  uint64_t max_frame;    /* WELCOME */
  /* HELLO/WELCOME probe descriptor, REQUEST model name, RESPONSE and BYE
   * message text: not NUL-terminated */
  const char *str;
  uint16_t str_len;
  int32_t status; /* RESPONSE, BYE */
  uint16_t n;     /* REQUEST, RESPONSE */
  ms__wire_tensor t[MS_WORKER_MAX_TENSORS];
  const uint8_t *blob; /* STATUS_REPLY: the JSON text */
  size_t blob_len;
} ms__wire_msg;

/* Reads a frame header.  0 and *body_len, or MS_EBADREGION (unknown type,
 * non-zero reserved bytes) or MS_ERANGE (body over max_body). */
int ms__wire_header(const uint8_t hdr[MS__WIRE_HDR], size_t max_body,
                    uint8_t *type, uint64_t *id, uint32_t *body_len);

/* Decodes one whole frame (header + body, exactly len bytes) into *m.
 * Every byte is hostile: lengths are checked against what is there, counts
 * against MS_WORKER_MAX_TENSORS, descriptor lengths against
 * MS_DESCRIPTOR_MAX, and trailing bytes are an error.  0, MS_EBADREGION or
 * MS_ERANGE; *why (may be NULL) gets a static text on failure. */
int ms__wire_decode(const uint8_t *buf, size_t len, size_t max_body,
                    ms__wire_msg *m, const char **why);

/* A growable frame being encoded. */
typedef struct ms__wbuf {
  uint8_t *p;
  size_t len, cap;
  int err; /* sticky MS_ENOMEM / MS_ERANGE */
} ms__wbuf;

/* Starts a frame of `type` and id (reserves the header). */
void ms__wbuf_begin(ms__wbuf *b, uint8_t type, uint64_t id);
void ms__wbuf_u8(ms__wbuf *b, uint8_t v);
void ms__wbuf_u16(ms__wbuf *b, uint16_t v);
void ms__wbuf_u32(ms__wbuf *b, uint32_t v);
void ms__wbuf_u64(ms__wbuf *b, uint64_t v);
void ms__wbuf_bytes(ms__wbuf *b, const void *p, size_t n);
/* A u16 length then the bytes (MS_ERANGE over 65535). */
void ms__wbuf_str(ms__wbuf *b, const char *s, size_t n);
/* A tensor: by descriptor when `desc` is set and t has one, else inline
 * (safetensors).  *used_desc (may be NULL) tells which. */
void ms__wbuf_tensor(ms__wbuf *b, const ms_tensor_t *t, int desc,
                     int *used_desc);
/* Ends the frame: writes the body length.  0, or the sticky error
 * (MS_ERANGE also when the body is over max_body).  On error the buffer is
 * freed. */
int ms__wbuf_end(ms__wbuf *b, size_t max_body);
void ms__wbuf_free(ms__wbuf *b);

/* Little-endian loads. */
static inline uint16_t ms__le16(const uint8_t *p) {
  return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t ms__le32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
         ((uint32_t)p[3] << 24);
}
static inline uint64_t ms__le64(const uint8_t *p) {
  return (uint64_t)ms__le32(p) | ((uint64_t)ms__le32(p + 4) << 32);
}

/* Splits a byte stream into frames: small frames are read into one
 * RX_CAP buffer, a larger one into a buffer of its own (so a frame is
 * never copied more than once).  max_body bounds what a header may
 * announce, so a peer can make us hold at most one frame of that size. */
#define MS__FRAMER_RX 65536u
typedef struct ms__framer {
  uint8_t *rx;
  size_t rx_len;
  uint8_t *big;
  size_t big_len, big_need;
  size_t max_body;
} ms__framer;

/* Where the next read goes (libuv's alloc_cb); *len 0 when out of memory. */
void ms__framer_buf(ms__framer *f, char **base, size_t *len);
/* Takes n more bytes: calls on_frame(ctx, frame, len, owned) for each
 * complete frame (owned: the callee must ms__free it); stops when it
 * returns non-zero (the connection was closed: f is then left alone).
 * Returns 0, 1 (stopped by on_frame), MS_EBADREGION / MS_ERANGE (bad
 * header) or MS_ENOMEM. */
int ms__framer_feed(ms__framer *f, size_t n,
                    int (*on_frame)(void *ctx, uint8_t *buf, size_t len,
                                    int owned),
                    void *ctx);
void ms__framer_free(ms__framer *f);

/* Writes an encoded frame (taking b's buffer) to a libuv stream; the
 * buffer is freed when the write ends.  0 or MS_EIO / MS_ENOMEM. */
struct uv_stream_s;
struct uv_pipe_s;
int ms__wire_send(struct uv_stream_s *s, ms__wbuf *b);

/* worker_sys_posix.c / worker_sys_win32.c: writes from threads other than
 * the loop's (worker.h and client.c say when).  The descriptor of a
 * connected pipe that other threads may write to, or -1 where every write
 * goes through the loop (Windows). */
int ms__conn_fd(struct uv_pipe_s *p);
/* A non-blocking write of len bytes to fd without SIGPIPE: bytes written
 * (maybe fewer), 0 if it would block, or -1 on an error. */
long ms__conn_send(int fd, const void *p, size_t len);

/* The HELLO/WELCOME probe: 1 if shm (NULL: none) opens descriptor s (n
 * bytes, not NUL-terminated), else 0.  The tensor is released at once. */
int ms__wire_probe_opens(ms_shm_t *shm, const char *s, size_t n);

/* Model names: 1..MS_WORKER_NAME_MAX of [A-Za-z0-9_.-]. */
int ms__wire_name_ok(const char *s, size_t n);

#endif
