/* The descriptor channel: a ring in shared memory from one producer to its
 * subscribers, with spin-then-sleep waiting, tensor lifetime and crash
 * handling.  The layout and the protocol (C1-C8) are in
 * internal/channel.h; the platform's wait/wake at the end of
 * internal/region.h. */
#include "internal/channel.h"
#include "internal/abi.h"
#include "internal/shm.h"

#include <cjson/cJSON.h>
#include <uv.h>

#include <stdio.h>
#include <string.h>

/* Identifies object-less failures (create/open) in the error slots. */
static const char ch_errobj = 0;

struct ms_channel {
  uv_mutex_t lock;
  ms_shm_t *shm;
  int producer;
  ms__region region;
  ms__ch_hdr *h;
  ms__ch_geom g; /* the producer's own values, or the validated snapshot */
  ms__ch_sub *subs;
  unsigned char *slots;
  ms__waitset *ws;
  uint32_t spin_us;
  char obj[MS__CH_OBJ_MAX + 1];
  /* producer */
  ms_tensor_t **held; /* per slot: the reference C7 keeps */
  uint64_t head;      /* == h->head, written only here */
  uint64_t released;  /* every seq below it was released */
  /* subscriber */
  unsigned idx;    /* its entry */
  uint64_t token;  /* its allocator's liveness token */
  uint64_t cursor; /* == subs[idx].cursor, written only here */
  /* counters of this handle */
  uint64_t sent, received, dropped, full_waits, wakes, spin_hits, sleeps;
  uint64_t spin_skips; /* waits that did not spin (C10) */
  /* ms_channel_fd's helper */
  int helper_on;
  uv_thread_t helper;
  uv_mutex_t arm_lock;
  uv_cond_t arm_cond;
  int armed, stop;
  intptr_t nrd, nwr;
  /* ms_channel_recv_start */
  uv_poll_t *poll;
  ms_channel_cb cb;
  void *cb_user;
};

/* ------------------------------------------------------------------------ */
/* Names and the header validator                                            */
/* ------------------------------------------------------------------------ */

static int is_name_char(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '-';
}

int ms__ch_name_valid(const char *name) {
  size_t n = 0;
  if (name == NULL)
    return 0;
  while (n <= MS__CH_NAME_MAX && name[n] != '\0') {
    if (!is_name_char((unsigned char)name[n]))
      return 0;
    n++;
  }
  return n >= 1 && n <= MS__CH_NAME_MAX;
}

int ms__ch_obj_parse(const char *obj) {
  const size_t pl = sizeof(MS__CH_PREFIX) - 1, sl = sizeof(MS__CH_SUFFIX) - 1;
  size_t n = strnlen(obj, MS__CH_OBJ_MAX + 1);
  if (n > MS__CH_OBJ_MAX || n < pl + sl + 1 ||
      strncmp(obj, MS__CH_PREFIX, pl) != 0 ||
      strcmp(obj + n - sl, MS__CH_SUFFIX) != 0)
    return MS_EINVAL;
  char name[MS__CH_NAME_MAX + 1];
  memcpy(name, obj + pl, n - pl - sl);
  name[n - pl - sl] = '\0';
  return ms__ch_name_valid(name) ? 0 : MS_EINVAL;
}

static int lower_hex(const char *s, size_t n, uint64_t *out) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    int c = (unsigned char)s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      return MS_EINVAL;
    v = v << 4 | (uint64_t)(c <= '9' ? c - '0' : c - 'a' + 10);
  }
  *out = v;
  return 0;
}

int ms__ch_stage_parse(const char *obj, uint64_t *token) {
  const size_t pl = sizeof(MS__CH_PREFIX) - 1;
  const size_t tail = 1 + 16 + 1 + 8 + sizeof(MS__CH_STAGE_SUFFIX) - 1;
  size_t n = strnlen(obj, MS__CH_STAGE_MAX + 1);
  if (n > MS__CH_STAGE_MAX || n < pl + 1 + tail ||
      strncmp(obj, MS__CH_PREFIX, pl) != 0)
    return MS_EINVAL;
  const char *t = obj + n - tail; /* ".<16 hex>-<8 hex>.new" */
  uint64_t tok = 0, rnd = 0;
  if (t[0] != '.' || t[17] != '-' || lower_hex(t + 1, 16, &tok) != 0 ||
      lower_hex(t + 18, 8, &rnd) != 0 ||
      strcmp(t + 26, MS__CH_STAGE_SUFFIX) != 0)
    return MS_EINVAL;
  char name[MS__CH_NAME_MAX + 1];
  const size_t nl = (size_t)(t - obj) - pl; /* >= 1: n's lower bound */
  if (nl > MS__CH_NAME_MAX)
    return MS_EINVAL;
  memcpy(name, obj + pl, nl);
  name[nl] = '\0';
  if (!ms__ch_name_valid(name))
    return MS_EINVAL;
  *token = tok;
  return 0;
}

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

int ms__ch_hdr_validate(const void *h, size_t map_size, ms__ch_geom *g) {
  ms__ch_hdr s; /* C1: one private copy of the plain fields */
  if (map_size < sizeof(ms__ch_hdr))
    return MS_EBADREGION;
  memcpy(&s, h, MS__CH_SNAPSHOT);
  if (s.magic != MS__CH_MAGIC || s.version != MS__CH_VERSION)
    return MS_EBADREGION;
  if (s.capacity < 2 || s.capacity > MS__CH_CAP_MAX ||
      (s.capacity & (s.capacity - 1)) != 0)
    return MS_EBADREGION;
  if (s.payload < 1 || s.payload > MS__CH_PAYLOAD_MAX ||
      s.slot_size != round_up(MS__CH_SLOT_HDR + s.payload, 64) ||
      s.max_subs < 1 || s.max_subs > MS__CH_SUBS_MAX ||
      s.policy > MS_CHANNEL_DROP_OLDEST || s.producer_token == 0)
    return MS_EBADREGION;
  /* Every product below fits 64 bits: capacity <= 2^20, slots < 2^17. */
  const uint64_t subs_end = sizeof(ms__ch_hdr) + (uint64_t)s.max_subs * 64;
  if (s.sub_offset != sizeof(ms__ch_hdr) || s.slot_offset != subs_end)
    return MS_EBADREGION;
  const uint64_t end = s.slot_offset + (uint64_t)s.capacity * s.slot_size;
  if (s.total_size < end || s.total_size > map_size)
    return MS_EBADREGION;
  g->capacity = s.capacity;
  g->slot_size = s.slot_size;
  g->payload = s.payload;
  g->max_subs = s.max_subs;
  g->policy = s.policy;
  g->sub_offset = s.sub_offset;
  g->slot_offset = s.slot_offset;
  g->total_size = s.total_size;
  g->producer_token = s.producer_token;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

static ms__ch_slot *slot_at(ms_channel_t *ch, uint64_t seq) {
  /* Slots are 64-byte aligned: the offsets are validated multiples. */
  return (ms__ch_slot *)(void *)(ch->slots +
                                 (size_t)(seq & (ch->g.capacity - 1)) *
                                     ch->g.slot_size);
}

static uint64_t now_ms(void) { return uv_hrtime() / 1000000u; }

/* Milliseconds left before deadline (UINT64_MAX: forever). */
static uint32_t left_ms(uint64_t deadline) {
  if (deadline == UINT64_MAX)
    return UINT32_MAX;
  uint64_t t = now_ms();
  return t >= deadline ? 0 : (uint32_t)(deadline - t);
}

static uint64_t deadline_of(uint32_t timeout_ms) {
  return timeout_ms == MS_CHANNEL_FOREVER ? UINT64_MAX : now_ms() + timeout_ms;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* ------------------------------------------------------------------------ */
/* Producer                                                                  */
/* ------------------------------------------------------------------------ */

/* Drops entries whose subscriber died (C8).  Lock held. */
static size_t drop_dead(ms_channel_t *ch) {
  size_t n = 0;
  for (uint32_t i = 0; i < ch->g.max_subs; i++) {
    uint64_t t = atomic_load(&ch->subs[i].token);
    if (t != 0 && !ms__holder_alive(ch->shm, t) &&
        atomic_compare_exchange_strong(&ch->subs[i].token, &t, 0))
      n++;
  }
  return n;
}

/* The lowest cursor of the attached entries, at most head (C3, C5). */
static uint64_t min_cursor(ms_channel_t *ch) {
  uint64_t m = ch->head;
  for (uint32_t i = 0; i < ch->g.max_subs; i++) {
    if (atomic_load(&ch->subs[i].token) == 0)
      continue;
    uint64_t c = atomic_load(&ch->subs[i].cursor);
    if (c < m)
      m = c;
  }
  return m;
}

/* Releases the tensors of every sequence below upto (C7).  Lock held. */
static void release_upto(ms_channel_t *ch, uint64_t upto) {
  for (; ch->released < upto; ch->released++) {
    ms_tensor_t **t = &ch->held[ch->released & (ch->g.capacity - 1)];
    ms_tensor_release(*t);
    *t = NULL;
  }
}

/* Waits until head - min_cursor <= lag, up to deadline.  0 or
 * MS_ETIMEDOUT.  Lock held. */
static int wait_lag(ms_channel_t *ch, uint64_t lag, uint64_t deadline) {
  const uint32_t widx = ch->g.max_subs; /* the producer's wake word */
  uint64_t spin_end = uv_hrtime() + (uint64_t)ch->spin_us * 1000u;
  int checked = 0;
  for (;;) {
    if (ch->head - min_cursor(ch) <= lag)
      return 0;
    if (uv_hrtime() < spin_end) {
      cpu_relax();
      continue;
    }
    if (!checked) { /* the slowest may be dead (C8) */
      checked = 1;
      if (drop_dead(ch) > 0)
        continue;
    }
    uint32_t left = left_ms(deadline);
    if (left == 0)
      return MS_ETIMEDOUT;
    atomic_store(&ch->h->p_sleep, 1);
    uint32_t w = atomic_load(&ch->h->space);
    if (ch->head - min_cursor(ch) > lag) {
      ms__wait(ch->ws, widx, &ch->h->space, w,
               left < MS__CH_LIVENESS_MS ? left : MS__CH_LIVENESS_MS);
      if (ch->head - min_cursor(ch) > lag)
        checked = 0; /* another liveness check after each slice */
    }
    atomic_store(&ch->h->p_sleep, 0);
  }
}

/* Wakes the subscribers that sleep (C6). */
static void wake_sleepers(ms_channel_t *ch) {
  for (uint32_t i = 0; i < ch->g.max_subs; i++) {
    ms__ch_sub *s = &ch->subs[i];
    if (atomic_load(&s->asleep) != 0 && atomic_exchange(&s->asleep, 0) != 0) {
      atomic_fetch_add(&s->wake, 1);
      ms__wake(ch->ws, i, &s->wake);
      ch->wakes++;
    }
  }
}

static int publish(ms_channel_t *ch, uint32_t kind, const char *desc,
                   size_t desc_len, const void *bytes, size_t n, ms_tensor_t *t,
                   uint32_t timeout_ms) {
  if (desc_len + n > ch->g.payload)
    return ms__errmsg_set(ch, MS_ERANGE,
                          "message of %zu bytes over the payload (%u)",
                          desc_len + n, ch->g.payload);
  const uint64_t cap = ch->g.capacity;
  if (ch->g.policy == MS_CHANNEL_BLOCK && ch->head - min_cursor(ch) >= cap) {
    ch->full_waits++;
    if (wait_lag(ch, cap - 1, deadline_of(timeout_ms)) != 0)
      return ms__errmsg_set(ch, MS_ETIMEDOUT, "the ring is full");
  }
  const uint64_t seq = ch->head;
  uint64_t done = min_cursor(ch);
  if (seq >= cap && done < seq - cap + 1)
    done = seq - cap + 1; /* drop-oldest: this slot is overwritten (C7b) */
  release_upto(ch, done);

  ms__ch_slot *s = slot_at(ch, seq);
  atomic_store(&s->seq, 0);
  s->kind = kind;
  s->len = (uint32_t)(desc_len + n);
  s->desc_len = (uint32_t)desc_len;
  unsigned char *p = (unsigned char *)(s + 1);
  if (desc_len > 0)
    memcpy(p, desc, desc_len);
  if (n > 0)
    memcpy(p + desc_len, bytes, n);
  atomic_store_explicit(&s->seq, seq + 1, memory_order_release);
  ch->held[seq & (cap - 1)] = t != NULL ? ms_tensor_retain(t) : NULL;
  ch->head = seq + 1;
  atomic_store(&ch->h->head, seq + 1); /* C2 */
  atomic_store_explicit(&ch->h->p_cpu, ms__cpu_now(), memory_order_relaxed);
  ch->sent++;
  wake_sleepers(ch);
  return 0;
}

/* A channel inherited across fork() is its parent's: the child may only
 * close it (which frees the child's memory), as with allocators (I8). */
#define INHERITED_CHECK(ch)                                                    \
  do {                                                                         \
    if (MS__UNLIKELY(ms__shm_inherited((ch)->shm)))                            \
      return ms__errmsg_set((ch), MS_EINVAL,                                   \
                            "channel inherited across fork()");                \
  } while (0)

#define PRODUCER_CALL(ch)                                                      \
  do {                                                                         \
    if ((ch) == NULL)                                                          \
      return MS_EINVAL;                                                        \
    INHERITED_CHECK(ch);                                                       \
    if (!(ch)->producer)                                                       \
      return ms__errmsg_set((ch), MS_EINVAL, "not the channel's producer");    \
  } while (0)

int ms_channel_send(ms_channel_t *ch, const void *bytes, size_t n,
                    uint32_t timeout_ms) {
  PRODUCER_CALL(ch);
  if (bytes == NULL && n > 0)
    return ms__errmsg_set(ch, MS_EINVAL, "bytes is NULL");
  uv_mutex_lock(&ch->lock);
  int rc = publish(ch, MS__CH_RAW, NULL, 0, bytes, n, NULL, timeout_ms);
  uv_mutex_unlock(&ch->lock);
  return rc;
}

int ms_channel_send_tensor(ms_channel_t *ch, ms_tensor_t *t, const void *user,
                           size_t n, uint32_t timeout_ms) {
  PRODUCER_CALL(ch);
  char desc[MS_DESCRIPTOR_MAX];
  if (t == NULL || (user == NULL && n > 0) ||
      ms_tensor_descriptor(t, desc, sizeof(desc)) != 0)
    return ms__errmsg_set(ch, MS_EINVAL,
                          "NULL or heap tensor, or NULL user bytes");
  uv_mutex_lock(&ch->lock);
  int rc =
      publish(ch, MS__CH_TENSOR, desc, strlen(desc), user, n, t, timeout_ms);
  uv_mutex_unlock(&ch->lock);
  return rc;
}

int ms_channel_flush(ms_channel_t *ch, uint32_t timeout_ms) {
  PRODUCER_CALL(ch);
  uv_mutex_lock(&ch->lock);
  int rc = ch->head == min_cursor(ch) ? 0
           : timeout_ms == 0          ? MS_ETIMEDOUT /* no spinning */
                             : wait_lag(ch, 0, deadline_of(timeout_ms));
  release_upto(ch, min_cursor(ch)); /* what every subscriber has (C7) */
  uv_mutex_unlock(&ch->lock);
  return rc == 0 ? 0 : ms__errmsg_set(ch, rc, "subscribers still behind");
}

int ms_channel_sweep(ms_channel_t *ch, size_t *dropped) {
  PRODUCER_CALL(ch);
  uv_mutex_lock(&ch->lock);
  size_t n = drop_dead(ch);
  release_upto(ch, min_cursor(ch));
  uv_mutex_unlock(&ch->lock);
  if (dropped != NULL)
    *dropped = n;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Subscriber                                                                */
/* ------------------------------------------------------------------------ */

/* 1 if the producer closed, or died (checked only when `check`). */
static int producer_gone(ms_channel_t *ch, int check) {
  return atomic_load(&ch->h->closed) != 0 ||
         (check && !ms__holder_alive(ch->shm, ch->g.producer_token));
}

static void advance(ms_channel_t *ch, uint64_t to) {
  ch->cursor = to;
  atomic_store(&ch->subs[ch->idx].cursor, to); /* C3, C7 */
  if (atomic_load(&ch->h->p_sleep) != 0 &&     /* C6, mirrored */
      atomic_exchange(&ch->h->p_sleep, 0) != 0) {
    atomic_fetch_add(&ch->h->space, 1);
    ms__wake(ch->ws, ch->g.max_subs, &ch->h->space);
    ch->wakes++;
  }
}

static void count_drops(ms_channel_t *ch, uint64_t n) {
  ch->dropped += n;
  atomic_fetch_add(&ch->subs[ch->idx].dropped, n);
}

/* The helper of ms_channel_fd() sleeps until re-armed by a recv that found
 * the ring empty. */
static void rearm(ms_channel_t *ch) {
  if (!ch->helper_on)
    return;
  ms__notify_drain(ch->nrd);
  uv_mutex_lock(&ch->arm_lock);
  ch->armed = 1;
  uv_cond_signal(&ch->arm_cond);
  uv_mutex_unlock(&ch->arm_lock);
}

/* Waits for head > cursor.  0, MS_ETIMEDOUT or MS_EPIPE.  Lock held. */
static int wait_data(ms_channel_t *ch, uint32_t timeout_ms) {
  ms__ch_sub *me = &ch->subs[ch->idx];
  const uint64_t head = atomic_load(&ch->h->head);
  if (head > ch->cursor)
    return 0;
  if (head < ch->cursor)
    return MS_EBADREGION; /* C1: only the producer moves it, forwards */
  if (producer_gone(ch, 0))
    return MS_EPIPE;
  if (timeout_ms == 0)
    return MS_ETIMEDOUT;
  const uint64_t deadline = deadline_of(timeout_ms);
  uint64_t spin_end = uv_hrtime() + (uint64_t)ch->spin_us * 1000u;
  const uint32_t cpu = ch->spin_us > 0 && ch->spin_us < MS__CH_SPIN_SHARED_US
                           ? ms__cpu_now()
                           : 0;
  if (cpu != 0 &&
      atomic_load_explicit(&ch->h->p_cpu, memory_order_relaxed) == cpu) {
    spin_end = 0; /* the producer waits for this CPU (C10) */
    ch->spin_skips++;
  }
  while (uv_hrtime() < spin_end) {
    for (int k = 0; k < 64; k++) {
      if (atomic_load_explicit(&ch->h->head, memory_order_relaxed) >
          ch->cursor) {
        ch->spin_hits++;
        return 0;
      }
      cpu_relax();
    }
  }
  for (;;) {
    atomic_store(&me->asleep, 1); /* C6 */
    uint32_t w = atomic_load(&me->wake);
    int ready = atomic_load(&ch->h->head) > ch->cursor;
    uint32_t left = left_ms(deadline);
    if (!ready && !producer_gone(ch, 0) && left > 0) {
      ms__wait(ch->ws, ch->idx, &me->wake, w,
               left < MS__CH_LIVENESS_MS ? left : MS__CH_LIVENESS_MS);
      ch->sleeps++;
    }
    if (atomic_load(&ch->h->head) > ch->cursor)
      return 0;
    if (producer_gone(ch, 1))
      return atomic_load(&ch->h->head) > ch->cursor ? 0 : MS_EPIPE;
    if (left_ms(deadline) == 0)
      return MS_ETIMEDOUT;
  }
}

/* The next message: copied (C2) and, for a tensor, opened (C7) before the
 * cursor moves.  want_tensor 0: a tensor message is left in place. */
static int recv_locked(ms_channel_t *ch, int want_tensor, unsigned flags,
                       uint32_t timeout_ms, ms_tensor_t **t, void *buf,
                       size_t cap, size_t *n) {
  const uint64_t capacity = ch->g.capacity;
  for (;;) {
    int rc = wait_data(ch, timeout_ms);
    if (rc != 0) {
      if (rc == MS_ETIMEDOUT)
        rearm(ch);
      else if (ch->helper_on)
        ms__notify_drain(ch->nrd);
      return ms__errmsg_set(ch, rc, "%s",
                            rc == MS_EPIPE       ? "the producer is gone"
                            : rc == MS_ETIMEDOUT ? "no message in time"
                                                 : "the ring's head went back");
    }
    const uint64_t head = atomic_load(&ch->h->head);
    if (head < ch->cursor)
      return ms__errmsg_set(ch, MS_EBADREGION, "the ring's head went back");
    if (head - ch->cursor > capacity) { /* lapped (C4) */
      count_drops(ch, head - capacity - ch->cursor);
      advance(ch, head - capacity);
    }
    const uint64_t c = ch->cursor;
    ms__ch_slot *s = slot_at(ch, c);
    const uint64_t s1 = atomic_load_explicit(&s->seq, memory_order_acquire);
    if (s1 != c + 1) { /* overwritten, or being overwritten (C2) */
      if (s1 != 0 && s1 < c + 1)
        return ms__errmsg_set(ch, MS_EBADREGION, "slot sequence went back");
      count_drops(ch, 1);
      advance(ch, c + 1);
      continue;
    }
    ms__ch_slot copy;
    memcpy(&copy, s, sizeof(copy));
    if ((copy.kind != MS__CH_RAW && copy.kind != MS__CH_TENSOR) ||
        copy.len > ch->g.payload || copy.desc_len > copy.len ||
        (copy.kind == MS__CH_TENSOR &&
         (copy.desc_len == 0 || copy.desc_len >= MS_DESCRIPTOR_MAX)) ||
        (copy.kind == MS__CH_RAW && copy.desc_len != 0)) {
      if (atomic_load(&s->seq) != s1)
        continue; /* torn by an overwrite: look again */
      return ms__errmsg_set(ch, MS_EBADREGION, "malformed slot");
    }
    const unsigned char *p = (const unsigned char *)(s + 1);
    const size_t ulen = copy.len - copy.desc_len;
    if (copy.kind == MS__CH_TENSOR && !want_tensor)
      return ms__errmsg_set(ch, MS_EINVAL,
                            "a tensor message: use ms_channel_recv_tensor");
    if (ulen > cap) {
      *n = ulen;
      return ms__errmsg_set(ch, MS_ERANGE, "message of %zu bytes", ulen);
    }
    ms_tensor_t *opened = NULL;
    int orc = 0;
    if (copy.kind == MS__CH_TENSOR) {
      char desc[MS_DESCRIPTOR_MAX];
      memcpy(desc, p, copy.desc_len);
      desc[copy.desc_len] = '\0';
      orc = ms_tensor_open(ch->shm, desc, flags, &opened);
    }
    if (ulen > 0)
      memcpy(buf, p + copy.desc_len, ulen);
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load(&s->seq) != s1) { /* overwritten meanwhile: dropped */
      ms_tensor_release(opened);
      count_drops(ch, 1);
      advance(ch, c + 1);
      continue;
    }
    advance(ch, c + 1);
    if (orc != 0)
      return ms__errmsg_set(ch, orc, "the message's tensor: %s",
                            ms_shm_errmsg(ch->shm));
    ch->received++;
    atomic_fetch_add(&ch->subs[ch->idx].received, 1);
    if (t != NULL)
      *t = opened;
    *n = ulen;
    return 0;
  }
}

#define SUBSCRIBER_CALL(ch)                                                    \
  do {                                                                         \
    if ((ch) == NULL)                                                          \
      return MS_EINVAL;                                                        \
    INHERITED_CHECK(ch);                                                       \
    if ((ch)->producer)                                                        \
      return ms__errmsg_set((ch), MS_EINVAL, "not a subscriber");              \
  } while (0)

int ms_channel_recv(ms_channel_t *ch, void *buf, size_t cap, size_t *n,
                    uint32_t timeout_ms) {
  SUBSCRIBER_CALL(ch);
  if (n == NULL || (buf == NULL && cap > 0))
    return ms__errmsg_set(ch, MS_EINVAL, "NULL n, or NULL buf");
  uv_mutex_lock(&ch->lock);
  int rc = recv_locked(ch, 0, 0, timeout_ms, NULL, buf, cap, n);
  uv_mutex_unlock(&ch->lock);
  return rc;
}

int ms_channel_recv_tensor(ms_channel_t *ch, unsigned flags,
                           uint32_t timeout_ms, ms_tensor_t **t, void *user,
                           size_t cap, size_t *n) {
  SUBSCRIBER_CALL(ch);
  if (t == NULL || n == NULL || (user == NULL && cap > 0) ||
      (flags & ~MS_OPEN_WRITE) != 0)
    return ms__errmsg_set(ch, MS_EINVAL, "NULL argument or unknown flags");
  uv_mutex_lock(&ch->lock);
  int rc = recv_locked(ch, 1, flags, timeout_ms, t, user, cap, n);
  uv_mutex_unlock(&ch->lock);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* The pollable descriptor: a helper thread sleeping on the ring            */
/* ------------------------------------------------------------------------ */

static void helper_main(void *arg) {
  ms_channel_t *ch = arg;
  ms__ch_sub *me = &ch->subs[ch->idx];
  for (;;) {
    uv_mutex_lock(&ch->arm_lock);
    while (!ch->armed && !ch->stop)
      uv_cond_wait(&ch->arm_cond, &ch->arm_lock);
    int stop = ch->stop;
    uv_mutex_unlock(&ch->arm_lock);
    if (stop)
      return;
    for (;;) { /* C6, as a receiver */
      atomic_store(&me->asleep, 1);
      uint32_t w = atomic_load(&me->wake);
      int ready = atomic_load(&ch->h->head) > atomic_load(&me->cursor) ||
                  producer_gone(ch, 0);
      if (!ready)
        ms__wait(ch->ws, ch->idx, &me->wake, w, MS__CH_LIVENESS_MS);
      uv_mutex_lock(&ch->arm_lock);
      stop = ch->stop;
      uv_mutex_unlock(&ch->arm_lock);
      if (stop)
        return;
      if (ready || atomic_load(&ch->h->head) > atomic_load(&me->cursor) ||
          producer_gone(ch, 1))
        break;
    }
    uv_mutex_lock(&ch->arm_lock);
    ch->armed = 0;
    uv_mutex_unlock(&ch->arm_lock);
    ms__notify_signal(ch->nwr);
  }
}

static void helper_stop(ms_channel_t *ch) {
  if (!ch->helper_on)
    return;
  uv_mutex_lock(&ch->arm_lock);
  ch->stop = 1;
  uv_cond_signal(&ch->arm_cond);
  uv_mutex_unlock(&ch->arm_lock);
  ms__ch_sub *me = &ch->subs[ch->idx];
  atomic_fetch_add(&me->wake, 1);
  ms__wake(ch->ws, ch->idx, &me->wake);
  uv_thread_join(&ch->helper);
  uv_cond_destroy(&ch->arm_cond);
  uv_mutex_destroy(&ch->arm_lock);
  ms__notify_close(ch->nrd, ch->nwr);
  ch->helper_on = 0;
}

/* Lock held. */
static int helper_start(ms_channel_t *ch) {
  if (ch->helper_on)
    return 0;
  int rc = ms__notify_open(&ch->nrd, &ch->nwr);
  if (rc != 0)
    return rc;
  if (uv_mutex_init(&ch->arm_lock) != 0) {
    ms__notify_close(ch->nrd, ch->nwr);
    return MS_ENOMEM;
  }
  if (uv_cond_init(&ch->arm_cond) != 0) {
    uv_mutex_destroy(&ch->arm_lock);
    ms__notify_close(ch->nrd, ch->nwr);
    return MS_ENOMEM;
  }
  ch->armed = 1;
  ch->stop = 0;
  if (uv_thread_create(&ch->helper, helper_main, ch) != 0) {
    uv_cond_destroy(&ch->arm_cond);
    uv_mutex_destroy(&ch->arm_lock);
    ms__notify_close(ch->nrd, ch->nwr);
    return MS_ENOMEM;
  }
  ch->helper_on = 1;
  return 0;
}

int ms_channel_fd(ms_channel_t *ch, int *fd) {
  SUBSCRIBER_CALL(ch);
  if (fd == NULL)
    return ms__errmsg_set(ch, MS_EINVAL, "fd is NULL");
  uv_mutex_lock(&ch->lock);
  int rc = helper_start(ch);
  if (rc == 0)
    *fd = (int)ch->nrd;
  uv_mutex_unlock(&ch->lock);
  return rc == 0 ? 0
                 : ms__errmsg_set(ch, rc, "no pollable descriptor: %s",
                                  ms_strerror(rc));
}

static void on_poll(uv_poll_t *p, int status, int events) {
  (void)status, (void)events;
  ms_channel_t *ch = p->data;
  ch->cb(ch, ch->cb_user);
}

int ms_channel_recv_start(ms_channel_t *ch, uv_loop_t *loop, ms_channel_cb cb,
                          void *user) {
  SUBSCRIBER_CALL(ch);
  if (loop == NULL || cb == NULL)
    return ms__errmsg_set(ch, MS_EINVAL, "NULL loop or cb");
  if (ch->poll != NULL)
    return ms__errmsg_set(ch, MS_EBUSY, "already started");
  int fd = -1;
  int rc = ms_channel_fd(ch, &fd);
  if (rc != 0)
    return rc;
  uv_poll_t *p = ms__calloc(1, sizeof(*p));
  if (p == NULL)
    return ms__errmsg_set(ch, MS_ENOMEM, "out of memory");
  if (uv_poll_init(loop, p, fd) != 0) {
    ms__free(p);
    return ms__errmsg_set(ch, MS_EIO, "uv_poll_init failed");
  }
  p->data = ch;
  ch->cb = cb;
  ch->cb_user = user;
  ch->poll = p;
  (void)uv_poll_start(p, UV_READABLE, on_poll);
  return 0;
}

static void on_poll_closed(uv_handle_t *h) { ms__free(h); }

int ms_channel_recv_stop(ms_channel_t *ch) {
  if (ch == NULL)
    return MS_EINVAL;
  if (ch->poll == NULL)
    return ms__errmsg_set(ch, MS_ENOENT, "not started");
  (void)uv_poll_stop(ch->poll);
  uv_close((uv_handle_t *)ch->poll, on_poll_closed);
  ch->poll = NULL;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Create, open, close                                                       */
/* ------------------------------------------------------------------------ */

static void obj_name(char *buf, const char *name) {
  (void)snprintf(buf, MS__CH_OBJ_MAX + 1, MS__CH_PREFIX "%s" MS__CH_SUFFIX,
                 name);
}

static ms_channel_t *channel_new(ms_shm_t *shm, const char *obj) {
  ms_channel_t *ch = ms__calloc(1, sizeof(*ch));
  if (ch == NULL)
    return NULL;
  if (uv_mutex_init(&ch->lock) != 0) {
    ms__free(ch);
    return NULL;
  }
  ch->shm = shm;
  ch->nrd = ch->nwr = -1;
  memcpy(ch->obj, obj, strlen(obj) + 1);
  return ch;
}

static void channel_free(ms_channel_t *ch) {
  ms__waitset_close(ch->ws);
  ms__region_unmap(&ch->region);
  ms__free(ch->held);
  /* An inherited lock may have been held by a parent's thread at fork():
   * it is only freed with ch, never destroyed. */
  if (!ms__shm_inherited(ch->shm))
    uv_mutex_destroy(&ch->lock);
  ms__errmsg_clear(ch);
  ms__free(ch);
}

static void map_areas(ms_channel_t *ch) {
  ch->h = ch->region.base;
  ch->subs = (ms__ch_sub *)(void *)((char *)ch->region.base + ch->g.sub_offset);
  ch->slots = (unsigned char *)ch->region.base + ch->g.slot_offset;
}

/* A ring of that object name: 1 if its producer was dead and it is now
 * unlinked, -1 if it is a ring with a live producer, 0 if it cannot be
 * read as a ring (missing, another user's, malformed: left alone). */
static int replace_dead(ms_shm_t *shm, const char *obj) {
  ms__region r = {0};
  const char *why = NULL;
  if (ms__region_open(shm->ns, obj, sizeof(ms__ch_hdr), shm->allowed_uid, &r,
                      &why) != 0)
    return 0;
  ms__ch_geom g;
  int ring = ms__ch_hdr_validate(r.base, r.size, &g) == 0;
  int dead = ring && !ms__holder_alive(shm, g.producer_token);
  ms__region_unmap(&r);
  if (dead)
    return ms__region_unlink(shm->ns, obj) == 0;
  return ring ? -1 : 0;
}

/* Creates the object `obj` (new, zeroed) as ch's ring and writes its
 * whole header (C1). */
static int build(ms_channel_t *ch, const char *obj) {
  const ms__ch_geom *g = &ch->g;
  int rc =
      ms__region_create(ch->shm->ns, obj, (size_t)g->total_size, &ch->region);
  if (rc != 0)
    return rc;
  map_areas(ch);
  ms__ch_hdr *h = ch->h;
  h->magic = MS__CH_MAGIC;
  h->version = MS__CH_VERSION;
  h->capacity = g->capacity;
  h->slot_size = g->slot_size;
  h->payload = g->payload;
  h->max_subs = g->max_subs;
  h->policy = g->policy;
  h->sub_offset = g->sub_offset;
  h->slot_offset = g->slot_offset;
  h->total_size = g->total_size;
  h->producer_token = g->producer_token;
  atomic_store(&h->ready, 1);
  return 0;
}

/* Gives the built ring at `stage` its name ch->obj (C0): MS_EBUSY when a
 * live producer's ring, or anything that is not a ring, has that name; a
 * dead producer's ring is replaced.  The staging name goes either way. */
static int link_ring(ms_channel_t *ch, const char *stage) {
  const ms__ns *ns = ch->shm->ns;
  int rc = ms__region_link(ns, stage, ch->obj);
  if (rc == MS_EBUSY && replace_dead(ch->shm, ch->obj) == 1)
    rc = ms__region_link(ns, stage, ch->obj);
  (void)ms__region_unlink(ns, stage);
  return rc;
}

/* Creates ch's ring (geometry set) under ch->obj, complete (C0). */
static int make_ring(ms_channel_t *ch, const char *name) {
  ms_shm_t *shm = ch->shm;
  char stage[MS__CH_STAGE_MAX + 1];
  uint32_t rnd = 0;
  int rc = ms__random(&rnd, sizeof(rnd));
  if (rc != 0)
    return rc;
  (void)snprintf(stage, sizeof(stage),
                 MS__CH_PREFIX "%s.%016llx-%08x" MS__CH_STAGE_SUFFIX, name,
                 (unsigned long long)shm->token, (unsigned)rnd);
  rc = build(ch, stage);
  if (rc == 0)
    rc = link_ring(ch, stage);
  if (rc != MS_ENOTSUP)
    return rc;
  /* Win32: one name per object; a ring dies with its last handle (C0). */
  ms__region_unmap(&ch->region);
  rc = build(ch, ch->obj);
  if (rc != 0 && rc != MS_ENOSPC && rc != MS_ENOMEM) {
    int old = replace_dead(shm, ch->obj);
    rc = old == 1 ? build(ch, ch->obj) : MS_EBUSY;
  }
  return rc;
}

int ms_channel_create(ms_shm_t *shm, const char *name,
                      const ms_channel_options_t *options, ms_channel_t **out) {
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  if (shm == NULL || out == NULL || !ms__ch_name_valid(name))
    return ms__errmsg_set(&ch_errobj, MS_EINVAL,
                          "NULL argument, or name not 1 to %d of "
                          "[A-Za-z0-9_-]",
                          MS__CH_NAME_MAX);
  if (ms__shm_inherited(shm))
    return ms__errmsg_set(&ch_errobj, MS_EINVAL, "allocator inherited");
  if (options != NULL &&
      ms__struct_in(&o, sizeof(o), options, MS__CHANNEL_OPTIONS_V1) != 0)
    return ms__errmsg_set(&ch_errobj, MS_EINVAL, "options struct_size");
  if (o.capacity < 2 || o.capacity > MS__CH_CAP_MAX ||
      (o.capacity & (o.capacity - 1)) != 0 || o.payload_bytes < 1 ||
      o.payload_bytes > MS__CH_PAYLOAD_MAX || o.max_subscribers < 1 ||
      o.max_subscribers > MS__CH_SUBS_MAX || o.policy > MS_CHANNEL_DROP_OLDEST)
    return ms__errmsg_set(&ch_errobj, MS_EINVAL,
                          "capacity (a power of two, 2..%u), payload "
                          "(1..%u), subscribers (1..%u) or policy",
                          MS__CH_CAP_MAX, MS__CH_PAYLOAD_MAX, MS__CH_SUBS_MAX);
  char obj[MS__CH_OBJ_MAX + 1];
  obj_name(obj, name);
  ms_channel_t *ch = channel_new(shm, obj);
  if (ch == NULL)
    return ms__errmsg_set(&ch_errobj, MS_ENOMEM, "out of memory");
  ch->producer = 1;
  ch->spin_us = o.spin_us;
  ms__ch_geom *g = &ch->g;
  g->capacity = o.capacity;
  g->slot_size = (uint32_t)round_up(MS__CH_SLOT_HDR + o.payload_bytes, 64);
  g->payload = g->slot_size - MS__CH_SLOT_HDR;
  g->max_subs = o.max_subscribers;
  g->policy = o.policy;
  g->sub_offset = sizeof(ms__ch_hdr);
  g->slot_offset = g->sub_offset + (uint64_t)g->max_subs * 64;
  g->total_size =
      round_up((size_t)(g->slot_offset + (uint64_t)g->capacity * g->slot_size),
               ms__page_size());
  g->producer_token = shm->token;
  ch->held = ms__calloc(g->capacity, sizeof(ms_tensor_t *));
  int rc = ch->held == NULL ? MS_ENOMEM : 0;
  if (rc == 0)
    rc = ms__waitset_open(shm->ns, obj, g->max_subs + 1, &ch->ws);
  if (rc == 0)
    rc = make_ring(ch, name);
  if (rc != 0) {
    channel_free(ch);
    return ms__errmsg_set(&ch_errobj, rc, "cannot create channel %s: %s", name,
                          rc == MS_EBUSY ? "the name is taken (a live "
                                           "producer, or not a ring)"
                                         : ms_strerror(rc));
  }
  *out = ch;
  return 0;
}

static int attach(ms_channel_t *ch) {
  for (int pass = 0; pass < 2; pass++) {
    for (uint32_t i = 0; i < ch->g.max_subs; i++) {
      uint64_t zero = 0;
      if (atomic_compare_exchange_strong(&ch->subs[i].token, &zero,
                                         ch->token)) {
        ms__ch_sub *s = &ch->subs[i]; /* ours now: C5 */
        atomic_store(&s->dropped, 0);
        atomic_store(&s->received, 0);
        atomic_store(&s->asleep, 0);
        ch->idx = i;
        ch->cursor = atomic_load(&ch->h->head);
        atomic_store(&s->cursor, ch->cursor);
        return 0;
      }
    }
    /* Full: entries of dead subscribers are free for the taking (C8). */
    if (pass == 0 && drop_dead(ch) == 0)
      break;
  }
  return MS_EBUSY;
}

int ms_channel_open(ms_shm_t *shm, const char *name,
                    const ms_channel_options_t *options, ms_channel_t **out) {
  ms_channel_options_t o = MS_CHANNEL_OPTIONS_INIT;
  if (shm == NULL || out == NULL || !ms__ch_name_valid(name))
    return ms__errmsg_set(&ch_errobj, MS_EINVAL, "NULL argument or bad name");
  if (ms__shm_inherited(shm))
    return ms__errmsg_set(&ch_errobj, MS_EINVAL, "allocator inherited");
  if (options != NULL &&
      ms__struct_in(&o, sizeof(o), options, MS__CHANNEL_OPTIONS_V1) != 0)
    return ms__errmsg_set(&ch_errobj, MS_EINVAL, "options struct_size");
  char obj[MS__CH_OBJ_MAX + 1];
  obj_name(obj, name);
  ms_channel_t *ch = channel_new(shm, obj);
  if (ch == NULL)
    return ms__errmsg_set(&ch_errobj, MS_ENOMEM, "out of memory");
  ch->spin_us = o.spin_us;
  ch->token = shm->token;
  const char *why = NULL;
  int rc = ms__region_open(shm->ns, obj, sizeof(ms__ch_hdr), shm->allowed_uid,
                           &ch->region, &why);
  if (rc == 0 && atomic_load(&((ms__ch_hdr *)ch->region.base)->ready) != 1) {
    rc = MS_ENOENT;
    why = "not initialised yet";
  }
  if (rc == 0 &&
      ms__ch_hdr_validate(ch->region.base, ch->region.size, &ch->g) != 0) {
    rc = MS_EBADREGION;
    why = "malformed or hostile ring header";
  }
  if (rc == 0) {
    map_areas(ch);
    if (producer_gone(ch, 1)) {
      rc = MS_EPIPE;
      why = "its producer is gone";
    }
  }
  if (rc == 0 && (rc = attach(ch)) != 0)
    why = "every subscriber entry is taken";
  if (rc == 0 &&
      (rc = ms__waitset_open(shm->ns, obj, ch->g.max_subs + 1, &ch->ws)) != 0)
    atomic_store(&ch->subs[ch->idx].token, 0);
  if (rc != 0) {
    channel_free(ch);
    return ms__errmsg_set(&ch_errobj, rc, "cannot open channel %s: %s", name,
                          why != NULL ? why : ms_strerror(rc));
  }
  *out = ch;
  return 0;
}

void ms_channel_close(ms_channel_t *ch) {
  if (ch == NULL)
    return;
  if (MS__UNLIKELY(ms__shm_inherited(ch->shm))) {
    /* The parent's ring, entry and tensors stay as they are; the helper
     * thread did not survive fork(), its descriptors did.  Only the
     * child's copies go (the held references: I8 of internal/shm.h). */
    if (ch->helper_on)
      ms__notify_close(ch->nrd, ch->nwr);
    for (uint64_t i = 0; ch->producer && i < ch->g.capacity; i++)
      ms_tensor_release(ch->held[i]);
    channel_free(ch);
    return;
  }
  if (ch->poll != NULL)
    (void)ms_channel_recv_stop(ch);
  helper_stop(ch);
  if (ch->producer) {
    uv_mutex_lock(&ch->lock);
    atomic_store(&ch->h->closed, 1);
    for (uint32_t i = 0; i < ch->g.max_subs; i++) { /* wake everyone */
      atomic_fetch_add(&ch->subs[i].wake, 1);
      ms__wake(ch->ws, i, &ch->subs[i].wake);
    }
    release_upto(ch, ch->head); /* every slot (C7) */
    uv_mutex_unlock(&ch->lock);
    (void)ms__region_unlink(ch->shm->ns, ch->obj);
  } else {
    uint64_t t = ch->token;
    (void)atomic_compare_exchange_strong(&ch->subs[ch->idx].token, &t, 0);
    if (atomic_exchange(&ch->h->p_sleep, 0) != 0) { /* a blocked producer */
      atomic_fetch_add(&ch->h->space, 1);
      ms__wake(ch->ws, ch->g.max_subs, &ch->h->space);
    }
  }
  channel_free(ch);
}

/* ------------------------------------------------------------------------ */
/* Reclaim, stats, errors                                                    */
/* ------------------------------------------------------------------------ */

typedef struct reclaim_ctx {
  ms_shm_t *shm;
  size_t n;
} reclaim_ctx;

/* A ring whose producer died, or the staging object of a creation whose
 * creator died (C0). */
static int reclaim_one(const char *obj, void *user) {
  reclaim_ctx *c = user;
  uint64_t token = 0;
  if (ms__ch_obj_parse(obj) == 0 ? replace_dead(c->shm, obj) == 1
                                 : ms__ch_stage_parse(obj, &token) == 0 &&
                                       !ms__holder_alive(c->shm, token) &&
                                       ms__region_unlink(c->shm->ns, obj) == 0)
    c->n++;
  return 0;
}

int ms__channel_reclaim_all(ms_shm_t *shm, size_t *reclaimed) {
  reclaim_ctx c = {shm, 0};
  int rc = ms__ns_list(shm->ns, MS__CH_PREFIX, reclaim_one, &c);
  if (rc == MS_ENOTSUP)
    rc = 0; /* Win32: a ring dies with its last handle */
  *reclaimed = c.n;
  return rc;
}

int ms_channel_reclaim(ms_shm_t *shm, size_t *reclaimed) {
  static const ms__sweep_part part = {ms__channel_reclaim_all, "rings"};
  return ms__sweep_run(shm, &part, 1, reclaimed);
}

int ms_channel_stats_json(ms_channel_t *ch, char **json) {
  if (ch == NULL || json == NULL)
    return MS_EINVAL;
  cJSON *o = cJSON_CreateObject();
  int ok = o != NULL;
  uv_mutex_lock(&ch->lock);
  const struct {
    const char *k;
    uint64_t v;
  } f[] = {{"sent", ch->sent},       {"received", ch->received},
           {"dropped", ch->dropped}, {"full_waits", ch->full_waits},
           {"wakes", ch->wakes},     {"spin_hits", ch->spin_hits},
           {"sleeps", ch->sleeps},   {"spin_skips", ch->spin_skips}};
  ok = ok && cJSON_AddStringToObject(
                 o, "role", ch->producer ? "producer" : "subscriber") != NULL;
  for (size_t i = 0; ok && i < sizeof(f) / sizeof(f[0]); i++)
    ok = cJSON_AddNumberToObject(o, f[i].k, (double)f[i].v) != NULL;
  cJSON *arr =
      ok && ch->producer ? cJSON_AddArrayToObject(o, "subscribers") : NULL;
  for (uint32_t i = 0; arr != NULL && ok && i < ch->g.max_subs; i++) {
    ms__ch_sub *s = &ch->subs[i];
    if (atomic_load(&s->token) == 0)
      continue;
    cJSON *e = cJSON_CreateObject();
    ok = e != NULL && cJSON_AddItemToArray(arr, e);
    ok = ok &&
         cJSON_AddNumberToObject(e, "received",
                                 (double)atomic_load(&s->received)) != NULL &&
         cJSON_AddNumberToObject(e, "dropped",
                                 (double)atomic_load(&s->dropped)) != NULL &&
         cJSON_AddNumberToObject(
             e, "lag", (double)(ch->head - atomic_load(&s->cursor))) != NULL;
  }
  uv_mutex_unlock(&ch->lock);
  int rc = ok ? ms__json_print(o, json) : MS_ENOMEM;
  cJSON_Delete(o);
  return rc == 0 ? 0 : ms__errmsg_set(ch, rc, "out of memory");
}

const char *ms_channel_errmsg(const ms_channel_t *ch) {
  return ms__errmsg_get(ch != NULL ? (const void *)ch : &ch_errobj);
}
