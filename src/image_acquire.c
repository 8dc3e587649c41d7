/* Host-scope images: acquiring.  Reading and validating the index entry,
 * the election on the lock word, waiting, building and publishing.  The
 * protocol and its invariants are in internal/image.h. */
#include "internal/abi.h"
#include "internal/image.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(MS__IMAGE_OPTIONS_V1 <= sizeof(ms_image_options_t),
               "frozen image options size");

/* ------------------------------------------------------------------------ */
/* Reading an entry and opening its image                                    */
/* ------------------------------------------------------------------------ */

typedef struct acq {
  ms_shm_t *shm;
  ms_image_options_t o;
  ms__img_key key;
  char hex[33], idx[64], lock[64], prefix[MS__PREFIX_MAX + 1];
  ms__region lock_r;  /* the lock object, mapped (base NULL: not yet) */
  void *copy;         /* private copy of the last entry read */
  ms__img_view v;     /* its validated view (when st != 0) */
  unsigned st;        /* 0: no entry, else the entry's state */
  int bad;            /* the entry could not be used: its code */
  int incomplete;     /* ... because it was never finished (W1-W3 store
                         state last: state 0, or an object not yet sized,
                         means its writer stopped midway) */
  char why[160];      /* ... and why */
  uint64_t threshold; /* failures of attempts >= this are ours (E2) */
} acq;

static void view_reset(acq *a) {
  ms__free(a->v.tv);
  ms__free(a->copy);
  memset(&a->v, 0, sizeof(a->v));
  a->copy = NULL;
  a->st = 0;
  a->bad = 0;
  a->incomplete = 0;
}

/* Reads the entry into a->v, a->st, a->bad. */
static void read_index(acq *a) {
  view_reset(a);
  ms__region r = {0};
  const char *why = NULL;
  int rc = ms__region_open(a->shm->ns, a->idx, sizeof(ms__img_idx),
                           a->shm->allowed_uid, &r, &why);
  if (rc == MS_ENOENT)
    return;
  if (rc != 0) {
    a->incomplete = rc == MS_EBADREGION; /* not sized yet, or cut short */
    a->bad = rc;
    (void)snprintf(a->why, sizeof(a->why), "image index %s: %s", a->idx,
                   why != NULL ? why : ms_strerror(rc));
    return;
  }
  /* State first (seq_cst), then the copy: a READY or FAILED entry is
   * complete by then (W2, W3). */
  (void)atomic_load(&((ms__img_idx *)r.base)->state);
  size_t size = r.size;
  a->copy = ms__malloc(size);
  if (a->copy != NULL)
    memcpy(a->copy, r.base, size);
  ms__region_unmap(&r);
  if (a->copy == NULL) {
    a->bad = MS_ENOMEM;
    (void)snprintf(a->why, sizeof(a->why), "out of memory");
    return;
  }
  rc = ms__img_index_parse(a->copy, size, &a->v, &why);
  if (rc != 0) {
    uint32_t state = 1;
    if (size >= sizeof(ms__img_idx))
      memcpy(&state, (char *)a->copy + offsetof(ms__img_idx, state),
             sizeof(state));
    a->incomplete = state == 0;
    a->bad = rc;
    (void)snprintf(a->why, sizeof(a->why), "image index %s: %s", a->idx,
                   why != NULL ? why : ms_strerror(rc));
    return;
  }
  if (!ms__img_key_equal(&a->v, &a->key)) {
    a->bad = MS_EBADREGION;
    (void)snprintf(a->why, sizeof(a->why),
                   "image index %s is for another key (a hash collision or "
                   "a forgery)",
                   a->idx);
    return;
  }
  a->st = atomic_load(&a->v.hdr.state);
}

/* Opens every tensor of the READY entry in a->v, read-only.  MS_ENOENT or
 * MS_ESTALE: the image is gone (its last holder released it). */
static int open_image(acq *a, ms_image_t **out) {
  size_t name_bytes = 0;
  for (size_t i = 0; i < a->v.n; i++)
    name_bytes += a->v.tv[i].name_len + 1;
  ms_image_t *img = ms__img_new(a->shm, a->v.n, name_bytes);
  if (img == NULL)
    return ms__errmsg_set(a->shm, MS_ENOMEM, "out of memory");
  img->bytes = a->v.hdr.image_bytes;
  img->keep_ms = a->v.hdr.keep_ms;
  memcpy(img->idx, a->idx, sizeof(img->idx));
  char *p = img->names;
  int rc = 0;
  for (size_t i = 0; i < a->v.n && rc == 0; i++) {
    const ms__img_entry *e = &a->v.tv[i];
    char name[MS__NAME_MAX + 1];
    uint64_t gen;
    size_t plen = 0;
    if (ms__descriptor_parse(e->desc, name, &gen) != 0 ||
        ms__name_parse(name, &plen, NULL) != 0 || plen != strlen(a->prefix) ||
        memcmp(name, a->prefix, plen) != 0) {
      rc = ms__errmsg_set(a->shm, MS_EBADREGION,
                          "image index %s names a region that is not the "
                          "image's",
                          a->idx);
      break;
    }
    ms_tensor_t *t = NULL;
    rc = ms_tensor_open(a->shm, e->desc, 0, &t);
    if (rc != 0)
      break;
    int same = ms_tensor_dtype(t) == e->dtype && ms_tensor_ndim(t) == e->ndim;
    for (int d = 0; same && d < e->ndim; d++)
      same = ms_tensor_shape(t)[d] == e->shape[d];
    if (!same) {
      ms_tensor_release(t);
      rc = ms__errmsg_set(a->shm, MS_EBADREGION,
                          "image tensor %.*s: dtype or shape differs from the "
                          "index",
                          (int)e->name_len, e->name);
      break;
    }
    memcpy(p, e->name, e->name_len);
    p[e->name_len] = '\0';
    img->e[i].name = p;
    img->e[i].t = t;
    img->n = i + 1;
    p += e->name_len + 1;
  }
  if (rc != 0) {
    img->keep_ms = 0;
    ms_image_release(img);
    return rc;
  }
  if (img->keep_ms > 0)
    ms__img_touch(a->shm, a->idx);
  *out = img;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* The lock (ELECTION in internal/image.h)                                   */
/* ------------------------------------------------------------------------ */

int ms__img_lock_map(ms_shm_t *shm, const char *name, ms__region *r) {
  int rc = MS_EIO;
  for (int tries = 0; tries < 4; tries++) {
    const char *why = NULL;
    rc = ms__region_open(shm->ns, name, sizeof(uint64_t) * 2, shm->allowed_uid,
                         r, &why);
    if (rc == 0)
      return 0;
    if (rc == MS_ENOENT) {
      /* A page of zeros: word 0 (the owner) is 0, free. */
      rc = ms__region_create(shm->ns, name, shm->page, r);
      if (rc == 0)
        return 0;
    }
    if (rc != MS_EIO && rc != MS_EBADREGION && rc != MS_ENOENT)
      break; /* EIO: made by another at the same time; EBADREGION: one
                being made (not yet backed) */
    uv_sleep(1);
  }
  return ms__errmsg_set(shm, rc, "image lock %s: %s", name, ms_strerror(rc));
}

static _Atomic uint64_t *lock_word(acq *a) {
  return (_Atomic uint64_t *)a->lock_r.base;
}

/* 1 if we took the lock, 0 if a live process holds it (or it is being
 * removed), negative on error. */
static int lock_try(acq *a) {
  if (a->lock_r.base == NULL) {
    int rc = ms__img_lock_map(a->shm, a->lock, &a->lock_r);
    if (rc != 0)
      return rc;
  }
  _Atomic uint64_t *w = lock_word(a);
  uint64_t v = atomic_load(w);
  if (v == MS__IMG_TOMB) { /* being removed: look it up again next time */
    ms__region_unmap(&a->lock_r);
    return 0;
  }
  if (v != 0 && ms__holder_alive(a->shm, v))
    return 0;
  return atomic_compare_exchange_strong(w, &v, a->shm->token) ? 1 : 0;
}

static void lock_release(acq *a) {
  uint64_t mine = a->shm->token;
  (void)atomic_compare_exchange_strong(lock_word(a), &mine, 0);
}

/* ------------------------------------------------------------------------ */
/* Building (the lock held)                                                  */
/* ------------------------------------------------------------------------ */

static int part_cmp(const void *x, const void *y) {
  return strcmp(((const ms__img_part *)x)->name,
                ((const ms__img_part *)y)->name);
}

/* Creates entry object idx of `size` bytes, filled for the key; mapped. */
static int index_create(acq *a, size_t size, uint64_t attempt, ms__region *r) {
  (void)ms__region_unlink(a->shm->ns, a->idx);
  int rc = ms__region_create(a->shm->ns, a->idx, size, r);
  if (rc != 0)
    return ms__errmsg_set(a->shm, rc, "cannot create image index %s: %s",
                          a->idx, ms_strerror(rc));
  ms__img_index_fill(r->base, &a->key, attempt, a->shm->token, a->o.keep_ms);
  return 0;
}

/* W2: the READY entry, from the sealed builder. */
static int publish(acq *a, ms_image_builder_t *b, uint64_t attempt) {
  qsort(b->parts, b->n, sizeof(*b->parts), part_cmp);
  char(*desc)[MS_DESCRIPTOR_MAX] = ms__calloc(b->n, sizeof(*desc));
  if (desc == NULL)
    return ms__errmsg_set(a->shm, MS_ENOMEM, "out of memory");
  size_t table = 0;
  for (size_t i = 0; i < b->n; i++) {
    ms_tensor_t *t = b->parts[i].t;
    (void)ms_tensor_descriptor(t, desc[i], sizeof(desc[i]));
    table += ms__img_table_put(NULL, b->parts[i].name, ms_tensor_dtype(t),
                               ms_tensor_ndim(t), ms_tensor_shape(t), desc[i]);
  }
  int rc = 0;
  if (table > UINT32_MAX)
    rc = ms__errmsg_set(a->shm, MS_ERANGE, "image table over 4 GiB");
  ms__region r = {0};
  if (rc == 0)
    rc = index_create(a, ms__img_index_size(&a->key, table), attempt, &r);
  if (rc == 0) {
    ms__img_idx *h = r.base;
    unsigned char *p = (unsigned char *)r.base + ms__img_table_offset(&a->key);
    for (size_t i = 0; i < b->n; i++) {
      ms_tensor_t *t = b->parts[i].t;
      p += ms__img_table_put(p, b->parts[i].name, ms_tensor_dtype(t),
                             ms_tensor_ndim(t), ms_tensor_shape(t), desc[i]);
    }
    h->ntensors = (uint32_t)b->n;
    h->table_bytes = (uint32_t)table;
    h->image_bytes = b->bytes;
    atomic_store(&h->state, MS__IMG_READY);
    ms__region_unmap(&r);
  }
  ms__free(desc);
  return rc;
}

/* The builder's image: its own (frozen) tensors, handed over. */
static int builder_image(acq *a, ms_image_builder_t *b, ms_image_t **out) {
  size_t name_bytes = 0;
  for (size_t i = 0; i < b->n; i++)
    name_bytes += strlen(b->parts[i].name) + 1;
  ms_image_t *img = ms__img_new(a->shm, b->n, name_bytes);
  if (img == NULL)
    return ms__errmsg_set(a->shm, MS_ENOMEM, "out of memory");
  char *p = img->names;
  for (size_t i = 0; i < b->n; i++) {
    size_t l = strlen(b->parts[i].name) + 1;
    memcpy(p, b->parts[i].name, l);
    img->e[i].name = p;
    img->e[i].t = b->parts[i].t;
    b->parts[i].t = NULL;
    p += l;
  }
  img->n = b->n;
  img->bytes = b->bytes;
  img->keep_ms = a->o.keep_ms;
  img->built = 1;
  memcpy(img->idx, a->idx, sizeof(img->idx));
  *out = img;
  return 0;
}

static void builder_free(ms_image_builder_t *b) {
  for (size_t i = 0; i < b->n; i++) {
    ms_tensor_release(b->parts[i].t);
    ms__free(b->parts[i].name);
  }
  ms__free(b->parts);
}

/* The keys this thread is building (nested builds of other keys are
 * fine; asking for one's own key would wait for itself). */
typedef struct building {
  const char *hex;
  const struct building *outer;
} building;
static _Thread_local const building *builds_here;

static int building_here(const char *hex) {
  for (const building *b = builds_here; b != NULL; b = b->outer)
    if (strcmp(b->hex, hex) == 0)
      return 1;
  return 0;
}

/* Runs the build with the lock held (E1-E3).  The lock is released. */
static int build(acq *a, ms_image_t **out) {
  uint64_t attempt = (a->st != 0 ? a->v.hdr.attempt : 0) + 1;
  ms__region cr = {0};
  int rc = index_create(a, ms__img_index_size(&a->key, 0), attempt, &cr);
  if (rc != 0) {
    lock_release(a);
    return rc;
  }
  atomic_store(&((ms__img_idx *)cr.base)->state, MS__IMG_CREATING);
  /* E1: what a builder of this key killed earlier left behind. */
  (void)ms__sweep_prefix(a->shm, a->prefix, NULL);

  ms_image_builder_t b = {.shm = a->shm};
  memcpy(b.prefix, a->prefix, sizeof(b.prefix));
  while (a->o.keep_ms > 0 && b.keeper == 0 &&
         ms__random(&b.keeper, sizeof(b.keeper)) == 0)
    ;
  if (a->o.keep_ms > 0 && b.keeper == 0)
    rc = ms__errmsg_set(a->shm, MS_EIO, "no random bytes for a keeper token");
  if (rc == 0) {
    building me = {a->hex, builds_here};
    builds_here = &me;
    rc = a->o.build(&b, a->key.path, a->key.config, a->o.user);
    builds_here = me.outer;
    if (rc > 0)
      rc = MS_ELOAD;
    if (rc != 0)
      (void)ms__errmsg_set(a->shm, rc, "the image build failed: %s",
                           ms_strerror(rc));
    else if (b.n == 0)
      rc = ms__errmsg_set(a->shm, MS_EINVAL, "the build made no tensor");
  }
  if (rc == 0)
    rc = ms__img_builder_seal(&b);
  if (rc == 0)
    rc = publish(a, &b, attempt);
  if (rc == 0)
    rc = builder_image(a, &b, out);
  if (rc != 0) {
    ms__img_builder_discard(&b);
    /* W3, in the CREATING object if it is still the named one; publish
     * may have replaced it. */
    ms__region fr = {0};
    if (ms__region_open(a->shm->ns, a->idx, sizeof(ms__img_idx),
                        a->shm->allowed_uid, &fr, &(const char *){NULL}) == 0) {
      ms__region_unmap(&fr);
      ms__img_idx *h = cr.base;
      h->error = rc;
      atomic_store(&h->state, MS__IMG_FAILED);
    }
  }
  ms__region_unmap(&cr);
  builder_free(&b);
  lock_release(a);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Acquire                                                                   */
/* ------------------------------------------------------------------------ */

static int transform_valid(const char *s, int may_be_empty) {
  size_t n = 0;
  for (; s[n] != '\0'; n++) {
    unsigned char c = (unsigned char)s[n];
    if (n >= MS__IMG_TRANSFORM_MAX ||
        !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
      return 0;
  }
  return n > 0 || may_be_empty;
}

static int source_identity(acq *a) {
  uv_fs_t req;
  int e = uv_fs_stat(NULL, &req, a->key.path, NULL);
  if (e == 0) {
    const uv_stat_t *st = &req.statbuf;
    a->key.dev = st->st_dev;
    a->key.ino = st->st_ino;
    a->key.size = st->st_size;
    a->key.mtime_ns = (uint64_t)st->st_mtim.tv_sec * 1000000000u +
                      (uint64_t)st->st_mtim.tv_nsec;
    e = (st->st_mode & S_IFMT) == S_IFREG ? 0 : UV_EINVAL;
  }
  uv_fs_req_cleanup(&req);
  if (e != 0)
    return ms__errmsg_set(a->shm, MS_ENOENT,
                          "the key's path %s is not a readable file: %s",
                          a->key.path, uv_strerror(e));
  return 0;
}

/* The attempt whose failure a waiter that first saw the current entry
 * reports (E2). */
static uint64_t first_threshold(const acq *a) {
  if (a->st == 0)
    return 1;
  return a->v.hdr.attempt + (a->st == MS__IMG_CREATING ? 0 : 1);
}

int ms_image_acquire(ms_shm_t *shm, const ms_key_t *key,
                     const ms_image_options_t *options, ms_image_t **out) {
  if (shm == NULL)
    return MS_EINVAL;
  MS__REFUSE_IF_INHERITED(shm);
  acq *a = ms__calloc(1, sizeof(*a));
  if (a == NULL)
    return ms__errmsg_set(shm, MS_ENOMEM, "out of memory");
  a->shm = shm;
  a->o = (ms_image_options_t)MS_IMAGE_OPTIONS_INIT;
  int rc = 0;
  if (key == NULL || options == NULL || out == NULL)
    rc = ms__errmsg_set(shm, MS_EINVAL, "NULL key, options or out");
  else if (ms__struct_in(&a->o, sizeof(a->o), options, MS__IMAGE_OPTIONS_V1) !=
           0)
    rc = ms__errmsg_set(shm, MS_EINVAL, "options struct_size too small");
  else if (a->o.build == NULL || a->o.transform_id == NULL ||
           !transform_valid(a->o.transform_id, 0) ||
           (a->o.transform_version != NULL &&
            !transform_valid(a->o.transform_version, 1)))
    rc = ms__errmsg_set(shm, MS_EINVAL,
                        "no build function, or a transform id (1..64) or "
                        "version (0..64) not of [A-Za-z0-9._-]");
  if (rc != 0) {
    ms__free(a);
    return rc;
  }
  a->key.path = ms_key_path(key);
  a->key.config = ms_key_config(key);
  a->key.transform = a->o.transform_id;
  a->key.version = a->o.transform_version != NULL ? a->o.transform_version : "";
  rc = source_identity(a);
  if (rc == 0) {
    ms__img_hash(&a->key, a->hex);
    ms__img_names(a->hex, a->idx, a->lock, a->prefix);
    if (building_here(a->hex))
      rc = ms__errmsg_set(shm, MS_EDEADLK,
                          "a build callback asked for the image it builds");
  }

  const uint64_t start = uv_hrtime();
  uint64_t backoff = 1;
  int first = 1;
  while (rc == 0) {
    read_index(a);
    if (a->st == MS__IMG_READY) {
      rc = open_image(a, out);
      if (rc == 0)
        break;
      if (rc != MS_ENOENT && rc != MS_ESTALE)
        break; /* forged or hostile: never silently rebuilt over */
      rc = 0;  /* gone with its last holder: build again */
    }
    if (first) {
      a->threshold = first_threshold(a);
      first = 0;
    }
    if (a->st == MS__IMG_FAILED && a->v.hdr.attempt >= a->threshold) {
      rc = ms__errmsg_set(shm, a->v.hdr.error,
                          "the image build of another process failed: %s",
                          ms_strerror(a->v.hdr.error));
      break;
    }
    int got = lock_try(a);
    if (got < 0) {
      rc = got;
      break;
    }
    if (got == 1) {
      /* A bad entry with nobody building it: one never finished is a
       * creation cut short (rebuilt over); anything else is refused. */
      if (a->bad != 0 && !a->incomplete) {
        lock_release(a);
        rc = ms__errmsg_set(shm, a->bad, "%s", a->why);
        break;
      }
      read_index(a); /* again, under the lock: it may be READY now */
      if (a->st == MS__IMG_READY) {
        rc = open_image(a, out);
        if (rc == 0 || (rc != MS_ENOENT && rc != MS_ESTALE)) {
          lock_release(a);
          break;
        }
      }
      rc = build(a, out);
      break;
    }
    uint64_t waited = (uv_hrtime() - start) / 1000000u;
    if (a->o.timeout_ms != MS_WAIT_FOREVER && waited >= a->o.timeout_ms) {
      rc = ms__errmsg_set(shm, MS_ETIMEDOUT,
                          "another process is still building image %s", a->hex);
      break;
    }
    uint64_t nap = backoff;
    if (a->o.timeout_ms != MS_WAIT_FOREVER && nap > a->o.timeout_ms - waited)
      nap = a->o.timeout_ms - waited;
    uv_sleep((unsigned)nap);
    backoff = backoff < 32 ? backoff * 2 : 32;
  }
  view_reset(a);
  ms__region_unmap(&a->lock_r);
  ms__free(a);
  return rc;
}
