/*
 * Model-based, randomized multi-process test of the shared-memory
 * allocator (issue 9, "Tests that look in the right places").
 *
 * A seeded driver runs several shm_peer worker processes, each with its own
 * random configuration (prefix "ms-", "a-" or "bb_"; pooling off, small or
 * large; open cache of 0, 1 or 64 entries, with or without a byte bound;
 * quota on or off; opening writable or not; backend named, memfd or auto),
 * and drives random operations over pipes: allocate and write a pattern
 * derived from (seed, tensor), open other workers' descriptors, verify
 * bytes, write through writable handles, freeze, release, sweep, destroy
 * and recreate the allocator with a new configuration, fork a child that
 * uses or tidies what it inherited, and kill -9 a worker (and start a new
 * one).  The driver keeps a model of who
 * holds what and checks after every step:
 *
 *   - a held tensor's bytes never change unless a writer holding it wrote
 *     them (verified from a holder);
 *   - a descriptor whose tensor nobody holds never opens (MS_ENOENT or
 *     MS_ESTALE) once no dead process can still appear to hold it, i.e.
 *     after its last release, or after a sweep of its prefix if a holder
 *     was killed;
 *   - nothing the library did not create is unlinked: decoys with
 *     near-miss names, some locked by a live process, survive;
 *   - at the end, after every worker has exited and one sweep per prefix
 *     (by sweepers of random backends), no region or token is left;
 *   - a frozen tensor is never writable through its creator's handle, its
 *     writable opens are MS_EACCES, and its bytes stay as they were (unless
 *     a holder that opened it writable before the freeze writes them);
 *     freezing through an opened handle is MS_EINVAL and changes nothing;
 *   - every 8 steps, a worker's stats: regions_active within what the model
 *     allows, bytes_allocated within the quota (both backends alike).
 *
 * Backends (issue 13).  Processes of either backend open each other's
 * descriptors, both ways.  Where memfd semantics legitimately differ from
 * named regions (src/internal/shm.h, modelshare.h "Backends"), the model
 * says so at the spot; in short:
 *   - M1. A memfd descriptor opens only through its creator's
 *     /proc/<pid>/fd, which the creator's allocator keeps open: once that
 *     allocator is destroyed (recreate, quit) or its process dies, the
 *     descriptor never opens in a process that does not map the region
 *     already, even while others still hold it (their bytes stay intact).
 *     A process that maps the region (holds it, or keeps it in its open
 *     cache, whatever generation it opened) may still reopen it while it is
 *     LIVE: it never needs /proc for that.  A forked child is a new
 *     process: `fork use` lists such descriptors as allowed to fail.
 *   - M2. A frozen memfd is sealed against writes, so its consumers hold it
 *     by their read-only mapping alone, without a holder slot (I9): the
 *     descriptor then opens in new processes only while its creator still
 *     holds it through the handle ms_tensor_alloc() returned (a handle the
 *     creator reopened after the freeze is a consumer's).  Once it does
 *     not, the descriptor may or may not open anywhere, depending on when
 *     the remaining holders mapped it; the model then accepts either, and
 *     checks the bytes if it opens.
 *   - M3. Nothing of a memfd is ever in the directory, and a sweep never
 *     unlinks a locator: a sweep clears dead holders only in the memfd
 *     regions mapped in the sweeping process.  So a memfd tensor that a
 *     killed process may still appear to hold becomes unopenable after a
 *     sweep by its creator (which maps all of its own regions), not after a
 *     sweep of its creator's prefix by anyone else.
 *   - M4. Named sweeps of a prefix work the same whatever the sweeper's
 *     backend (a memfd allocator still lists its namespace); memfd
 *     allocators hold no token file, so the final count of token files
 *     counts the named sweepers only.
 *   - M5. AUTO picks memfd only for the default namespace (dir NULL); this
 *     test uses a private dir, so AUTO must give ms1 descriptors here.
 *
 * MS_MODEL_SKIP (diagnostics: "decoys", "fork", "writable", "mixed" = one
 * prefix and no pooling, "memfd" = named backend only) leaves parts out to
 * look past a known bug on an old build.
 *
 * Seeds: argv[2] or MS_SEED runs that one seed; otherwise seeds are drawn
 * from the clock and run one after another for MS_MODEL_SECONDS (default
 * 120), each for at most MS_MODEL_STEPS steps (default 2000).  Every seed is
 * printed; a failure prints the seed, the step and the last operations.
 * Everything a step does is chosen from the seed (kill points by step
 * number), so a seed replays the same operations, up to the scheduling of
 * the forked children and the replies that depend on it.
 *
 * The namespace is a private directory on /dev/shm (the `dir` option).
 * The first workers' configurations (with their backends) are printed with
 * the seed; every later one (respawn, recreate) is in the history that a
 * failure prints, with the configurations of the workers alive then.
 */
#include "test_util.h"

#include "shm_pattern.h"
#include "shm_test_util.h"

#include <stdint.h>
#include <sys/file.h>
#include <time.h>

static const char *peer_exe;

/* ------------------------------------------------------------------------ */
/* Random numbers: one stream per seed                                       */
/* ------------------------------------------------------------------------ */

static uint64_t rng;

static uint64_t next(void) {
  rng += 0x9e3779b97f4a7c15ULL;
  return pat_mix(rng);
}

static unsigned below(unsigned n) { return (unsigned)(next() % n); }

/* ------------------------------------------------------------------------ */
/* The model                                                                 */
/* ------------------------------------------------------------------------ */

#define NPREFIX 3
static const char *const prefixes[NPREFIX] = {"ms-", "a-", "bb_"};

#define MAXW 5        /* workers at once */
#define MAXT 4096     /* tensors per seed */
#define MAXH 32       /* handles per tensor */
#define WORKER_MAX 24 /* handles per worker */

typedef enum {
  HELD,  /* a live process holds it: it opens, its bytes are seed's */
  LIMBO, /* unheld, but a killed holder may still appear to hold it until a
            sweep of its prefix: it may open (then its bytes are intact) */
  GONE   /* nobody holds it: it never opens */
} tstate;

typedef struct handle {
  int w, lid, writable;
  int own; /* the handle ms_tensor_alloc() returned */
} handle;

typedef struct tensor {
  char desc[MS_DESCRIPTOR_MAX];
  int prefix; /* index into prefixes */
  size_t size;
  uint64_t seed; /* pattern its bytes hold */
  tstate state;
  int dead_slots; /* a holder was killed since the last sweep of prefix */
  int memfd;      /* an ms2 descriptor */
  int cw;         /* creator worker, and its incarnation (worker.inc) */
  unsigned cinc;
  int frozen;
  unsigned touched[MAXW]; /* worker.inc of each worker that mapped it */
  int nh;
  handle h[MAXH];
} tensor;

typedef struct worker {
  peer p;
  int alive;
  int prefix, quota, wopen;
  int backend;  /* index into backends */
  unsigned inc; /* allocator incarnation: new at spawn and recreate */
  unsigned long long pool, cache, cache_bytes;
  int nhandles;
} worker;

#define NBACKEND 3
static const char *const backends[NBACKEND] = {"named", "memfd", "auto"};
static unsigned incarnations;

static tensor T[MAXT];
static int nt;
static worker W[MAXW];
static char dir[64];
static uint64_t cur_seed;
static int step;
static int decoys_on, forks_on, writable_check, mixed_on, memfd_on;
static pid_t locker = -1;
static int locker_fd = -1;

/* Counters for the summary. */
static struct {
  long steps, allocs, opens, refused_opens, writes, releases, sweeps, recreates,
      forks, kills, verifies, freezes, memfd_allocs, cross_opens,
      orphan_refusals, stats;
} ctr;

/* The last operations, printed on failure. */
#define HIST 400
static char hist[HIST][160];
static int nhist;

static void note(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *h = hist[nhist++ % HIST];
  int n = snprintf(h, 160, "%5d ", step);
  vsnprintf(h + n, (size_t)(160 - n), fmt, ap);
  va_end(ap);
}

static void cleanup_world(void);
static int pick_handle(int w, int want_writable, int *hk);

/* Reports an invariant violation with everything needed to replay it. */
static void die(const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nMODEL FAILURE seed=%llu step=%d: %s\n",
          (unsigned long long)cur_seed, step, msg);
  fprintf(stderr, "last operations (step, worker, operation):\n");
  int first = nhist > HIST ? nhist - HIST : 0;
  for (int i = first; i < nhist; i++)
    fprintf(stderr, "  %s\n", hist[i % HIST]);
  fprintf(stderr, "workers:\n");
  for (int i = 0; i < MAXW; i++)
    if (W[i].alive)
      fprintf(stderr,
              "  w%d pid %d backend %s prefix %s pool %llu cache %llu/%llu "
              "quota %d wopen %d\n",
              i, (int)W[i].p.pid, backends[W[i].backend], prefixes[W[i].prefix],
              W[i].pool, W[i].cache, W[i].cache_bytes, W[i].quota, W[i].wopen);
  fprintf(stderr, "replay with: MS_SEED=%llu\n", (unsigned long long)cur_seed);
  cleanup_world();
  fail_msg("seed %llu step %d: %s", (unsigned long long)cur_seed, step, msg);
}

/* A command that a live worker must answer.  Its reply code. */
static int cmd(int w, char *reply, size_t len, const char *fmt, ...) {
  char line[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  int rc = peer_cmd(&W[w].p, reply, len, "%s", line);
  if (rc == -1000) {
    int st = peer_end(&W[w].p, 0);
    W[w].alive = 0;
    die("worker w%d died on \"%s\" (wait status %#x)", w, line, st);
  }
  return rc;
}

static int ntensors_held_by(int w) { return W[w].nhandles; }

/* ------------------------------------------------------------------------ */
/* Workers                                                                   */
/* ------------------------------------------------------------------------ */

/* Whether t's creator allocator is still the one that made it. */
static int creator_alive(const tensor *t) {
  return W[t->cw].alive && W[t->cw].inc == t->cinc;
}

/* Whether worker w maps t's region now or may (its open cache keeps
 * mappings per region, across generations): M1. */
static int touched(const tensor *t, int w) {
  if (!W[w].alive)
    return 0;
  const size_t len = (size_t)(strrchr(t->desc, ':') - t->desc);
  for (int i = 0; i < nt; i++)
    if (T[i].touched[w] == W[w].inc && strncmp(T[i].desc, t->desc, len) == 0 &&
        T[i].desc[len] == ':')
      return 1;
  return 0;
}

/* Whether the creator holds t through the handle ms_tensor_alloc() gave
 * it (a handle it opened from its own descriptor after a freeze is a
 * consumer's: no slot, M2). */
static int creator_holds(const tensor *t) {
  for (int k = 0; k < t->nh; k++)
    if (t->h[k].w == t->cw && t->h[k].own)
      return 1;
  return 0;
}

/* M1, M2: 1 if t is a memfd descriptor that no longer opens in a process
 * that does not map it (its creator's allocator is gone); 2 if it may or
 * may not: a frozen memfd whose creator no longer holds it stays LIVE
 * (and its descriptor opens) only while a holder keeps a slot, which only
 * holders whose mapping predates the freeze have (I9). */
static int orphan(const tensor *t) {
  if (!t->memfd)
    return 0;
  if (!creator_alive(t))
    return 1;
  return t->frozen && !creator_holds(t) ? 2 : 0;
}

/* A sweep by worker w (-1: an allocator that maps nothing, e.g. a new
 * one) of prefix: named regions of the prefix lose their dead holders;
 * memfd regions only if w is their creator (M3). */
static void sweep_effect(int prefix, int w) {
  for (int i = 0; i < nt; i++) {
    tensor *t = &T[i];
    if (t->memfd ? (w < 0 || t->cw != w || !creator_alive(t))
                 : t->prefix != prefix)
      continue;
    t->dead_slots = 0;
    if (t->state == LIMBO)
      t->state = GONE;
  }
}

static void random_config(worker *x) {
  static const unsigned long long pools[] = {0, 4u << 20, 256u << 20};
  static const unsigned long long caches[] = {0, 1, 64};
  x->prefix = (int)below(NPREFIX);
  x->pool = pools[below(3)];
  if (!mixed_on)
    x->prefix = 0, x->pool = 0;
  x->cache = caches[below(3)];
  x->cache_bytes = below(2) ? 1ull << 30 : 2u << 20;
  x->quota = below(3) == 0;
  x->wopen = below(2);
  x->backend = memfd_on ? (int)below(NBACKEND) : 0;
  x->inc = ++incarnations;
}

static void spawn(int w) {
  worker *x = &W[w];
  random_config(x);
  peer_cfg c = {dir,      prefixes[x->prefix], x->pool,
                x->cache, x->cache_bytes,      x->quota ? 3u << 20 : 0};
  /* The peer takes its backend from the environment it inherits. */
  setenv("MS_PEER_BACKEND", backends[x->backend], 1);
  x->p = peer_start(peer_exe, c);
  if (x->p.pid <= 0)
    die("cannot start worker w%d", w);
  x->alive = 1;
  x->nhandles = 0;
  note("w%d start: pid %d backend %s prefix %s pool %llu cache %llu/%llu "
       "quota %d wopen %d",
       w, (int)x->p.pid, backends[x->backend], prefixes[x->prefix], x->pool,
       x->cache, x->cache_bytes, x->quota, x->wopen);
  sweep_effect(x->prefix, -1); /* ms_shm_create sweeps */
}

/* Forgets handle k of tensor t (its worker released it or died). */
static void drop_handle(tensor *t, int k, int killed) {
  W[t->h[k].w].nhandles--;
  t->h[k] = t->h[--t->nh];
  if (killed)
    t->dead_slots = 1;
  if (t->nh == 0)
    t->state = t->dead_slots ? LIMBO : GONE;
}

static void forget_worker(int w, int killed) {
  for (int i = 0; i < nt; i++)
    for (int k = T[i].nh - 1; k >= 0; k--)
      if (T[i].h[k].w == w)
        drop_handle(&T[i], k, killed);
}

/* Kills w in the middle of an operation: sends a command and kills it
 * after a random delay, without waiting for the reply (writes excepted:
 * the model could not know the bytes).  The outcome is unknown, and the
 * model allows either. */
static void kill_worker_mid_op(int w) {
  char line[160] = "sweep";
  unsigned what = below(3);
  int k = -1, i = what == 1 ? pick_handle(w, 0, &k) : -1;
  if (what == 0)
    (void)snprintf(line, sizeof(line), "alloc %zu 1", (size_t)(1u << 20));
  else if (what == 1 && i >= 0)
    (void)snprintf(line, sizeof(line), "release %d", T[i].h[k].lid);
  else if (what == 2 && nt > 0) {
    i = (int)below((unsigned)nt);
    (void)snprintf(line, sizeof(line), "open %s 0", T[i].desc);
    if (T[i].state != GONE)
      T[i].dead_slots = 1; /* it may have claimed a slot */
  }
  note("w%d kill -9 during \"%s\"", w, line);
  fprintf(W[w].p.in, "%s\n", line);
  fflush(W[w].p.in);
  struct timespec ts = {0, (long)below(2000) * 1000};
  nanosleep(&ts, NULL);
  (void)peer_end(&W[w].p, 1);
  W[w].alive = 0;
  forget_worker(w, 1);
  ctr.kills++;
}

static void kill_worker(int w) {
  note("w%d kill -9", w);
  (void)peer_end(&W[w].p, 1);
  W[w].alive = 0;
  forget_worker(w, 1);
  ctr.kills++;
}

/* ------------------------------------------------------------------------ */
/* Checks                                                                    */
/* ------------------------------------------------------------------------ */

static void verify_handle(const tensor *t, const handle *h, const char *why) {
  char r[128];
  int rc = cmd(h->w, r, sizeof(r), "verify %d %llu", h->lid,
               (unsigned long long)t->seed);
  ctr.verifies++;
  if (rc != 0)
    die("%s: %s held by w%d (handle %d) does not hold the pattern of seed "
        "%llu: %s",
        why, t->desc, h->w, h->lid, (unsigned long long)t->seed, r);
}

static void check_decoys(void) {
  if (!decoys_on)
    return;
  char p[512];
  for (int pi = 0; pi < NPREFIX; pi++)
    for (size_t i = 0; i < MS_TEST_NEAR_MISS; i++) {
      (void)snprintf(p, sizeof(p), "%s/%s%s", dir, prefixes[pi],
                     ms_test_near_miss[i]);
      if (access(p, F_OK) != 0)
        die("decoy \"%s\" (not a name the library makes) was unlinked", p);
    }
  for (size_t i = 0; i < MS_TEST_NEAR_MISS_TOK; i++) {
    (void)snprintf(p, sizeof(p), "%s/%s", dir, ms_test_near_miss_tok[i]);
    if (access(p, F_OK) != 0)
      die("decoy \"%s\" (not a name the library makes) was unlinked", p);
  }
}

static int pick_live_worker(void) {
  int n = 0, ws[MAXW];
  for (int i = 0; i < MAXW; i++)
    if (W[i].alive)
      ws[n++] = i;
  return n > 0 ? ws[below((unsigned)n)] : -1;
}

/* Opens tensor i in worker w; checks the outcome against the model. */
static void open_in(int w, int i, int writable) {
  tensor *t = &T[i];
  char r[256];
  if (ntensors_held_by(w) >= WORKER_MAX || t->nh >= MAXH)
    return;
  /* M1/M2: an orphaned memfd descriptor opens at most where the region
   * is mapped already. */
  const int orph = orphan(t), mapped = touched(t, w);
  const int must_refuse = t->state == GONE || (orph == 1 && !mapped);
  int rc = cmd(w, r, sizeof(r), "open %s %d", t->desc, writable);
  ctr.opens++;
  const int cross = t->memfd != (W[w].backend == 1);
  note("w%d open %s %s (%s%s%s%s): %s", w, writable ? "rw" : "ro", t->desc,
       t->state == HELD    ? "held"
       : t->state == LIMBO ? "limbo"
                           : "gone",
       t->frozen ? ", frozen" : "",
       orph == 1   ? ", creator gone"
       : orph == 2 ? ", creator released"
                   : "",
       orph && mapped ? ", mapped here" : "", r);
  if (rc == 0) {
    int lid = -1, wr = -1;
    if (sscanf(r, "ok %d %d", &lid, &wr) != 2)
      die("bad reply %s", r);
    if (must_refuse || (writable && t->frozen)) {
      (void)cmd(w, r, sizeof(r), "release %d", lid);
      die("%s opened %s in w%d although %s", t->desc,
          writable ? "writable" : "read-only", w,
          t->state == GONE ? "nobody holds it"
          : must_refuse ? "its memfd creator is gone and it is not mapped there"
                        : "it is frozen");
    }
    if (writable_check && wr != writable)
      die("%s opened %s in w%d: ms_tensor_is_writable is %d", t->desc,
          writable ? "with MS_OPEN_WRITE" : "read-only", w, wr);
    t->h[t->nh++] = (handle){w, lid, writable, 0};
    W[w].nhandles++;
    t->state = HELD;
    t->touched[w] = W[w].inc;
    ctr.cross_opens += cross;
    verify_handle(t, &t->h[t->nh - 1], "fresh open");
    return;
  }
  ctr.refused_opens++;
  if (orph == 1 && rc != MS_EBUSY)
    ctr.orphan_refusals++;
  /* A frozen tensor refuses writable opens with MS_EACCES before it looks
   * at the generation, so EACCES is right in any state. */
  if (writable && t->frozen && rc == MS_EACCES)
    return;
  if (writable && t->frozen && t->state == HELD && !orph)
    die("%s is frozen and held: MS_OPEN_WRITE in w%d gave %s, not MS_EACCES",
        t->desc, w, r);
  if (t->state == HELD && !orph && rc != MS_EBUSY)
    die("%s is held but opens in w%d as %s", t->desc, w, r);
  if ((t->state != HELD || orph) && rc != MS_ENOENT && rc != MS_ESTALE &&
      !(t->state == HELD && rc == MS_EBUSY))
    die("%s (%s) opened in w%d as %s, not MS_ENOENT/MS_ESTALE", t->desc,
        t->state != HELD ? "not held" : "memfd creator gone", w, r);
}

/* Worker w's stats against the model, the same for both backends:
 * regions_active counts its own regions that some process holds (a holder
 * slot keeps them LIVE); a region that a killed holder may still appear to
 * hold (LIMBO), or a frozen memfd held by consumers (who hold a slot only if
 * their mapping predates the freeze, M2), may or may not count.  With a
 * quota, bytes_allocated stays within it. */
static void check_stats(int w) {
  char r[256];
  if (cmd(w, r, sizeof(r), "stats") != 0)
    die("stats in w%d: %s", w, r);
  unsigned long long active = 0, pooled = 0, opened = 0, mapped = 0,
                     allocated = 0, hits = 0;
  if (sscanf(r, "ok %llu %llu %llu %llu %llu %llu", &active, &pooled, &opened,
             &mapped, &allocated, &hits) != 6)
    die("bad stats reply %s", r);
  unsigned long long lo = 0, hi = 0;
  for (int i = 0; i < nt; i++) {
    const tensor *t = &T[i];
    if (t->cw != w || t->cinc != W[w].inc || t->state == GONE)
      continue;
    int own_held = 0;
    for (int k = 0; k < t->nh; k++)
      own_held |= t->h[k].w == w && t->h[k].own;
    if (t->state == HELD && (own_held || !(t->memfd && t->frozen)))
      lo++;
    hi++;
  }
  if (active < lo || active > hi)
    die("w%d (%s) reports %llu active regions; the model says %llu to %llu", w,
        backends[W[w].backend], active, lo, hi);
  if (W[w].quota && allocated > (3ull << 20))
    die("w%d (%s) has %llu bytes allocated over its quota of %llu", w,
        backends[W[w].backend], allocated, 3ull << 20);
  ctr.stats++;
}

/* After every step. */
static void check_step(void) {
  check_decoys();
  int held[MAXT], nheld = 0, gone[MAXT], ngone = 0;
  for (int i = 0; i < nt; i++) {
    if (T[i].state == HELD)
      held[nheld++] = i;
    else if (T[i].state == GONE)
      gone[ngone++] = i;
  }
  /* A held tensor's bytes, from one of its holders. */
  if (nheld > 0) {
    tensor *t = &T[held[below((unsigned)nheld)]];
    verify_handle(t, &t->h[below((unsigned)t->nh)], "after the step");
  }
  /* A descriptor nobody holds. */
  int w = pick_live_worker();
  if (ngone > 0 && w >= 0)
    open_in(w, gone[below((unsigned)ngone)], 0);
  /* A held memfd descriptor whose creator is gone, in a worker that does
   * not map it (M1). */
  int orph[MAXT], norph = 0;
  for (int i = 0; i < nt; i++)
    if (T[i].state != GONE && orphan(&T[i]) == 1)
      orph[norph++] = i;
  if (norph > 0 && w >= 0) {
    tensor *t = &T[orph[below((unsigned)norph)]];
    for (int k = 0; k < MAXW; k++) {
      int v = (w + k) % MAXW;
      if (W[v].alive && !touched(t, v)) {
        open_in(v, (int)(t - T), 0);
        break;
      }
    }
  }
  if (w >= 0 && step % 8 == 0)
    check_stats(w);
  /* Every 50 steps: every holder of every tensor. */
  if (step % 50 == 49)
    for (int k = 0; k < nheld; k++)
      for (int j = 0; j < T[held[k]].nh; j++)
        verify_handle(&T[held[k]], &T[held[k]].h[j], "full check");
}

/* ------------------------------------------------------------------------ */
/* Operations                                                                */
/* ------------------------------------------------------------------------ */

static size_t random_size(void) {
  switch (below(4)) {
  case 0:
    return 1 + below(4096);
  case 1:
    return 4096 + below(60000);
  case 2:
    return 65536 + below(400000);
  default:
    return (1u << 20) - below(2) * 4096;
  }
}

static void op_alloc(int w) {
  if (nt >= MAXT || ntensors_held_by(w) >= WORKER_MAX)
    return;
  tensor *t = &T[nt];
  memset(t, 0, sizeof(*t));
  t->size = random_size();
  t->seed = pat_mix(cur_seed ^ ((uint64_t)nt << 20)) | 1;
  t->prefix = W[w].prefix;
  t->cw = w;
  t->cinc = W[w].inc;
  t->touched[w] = W[w].inc;
  char r[256];
  int rc = cmd(w, r, sizeof(r), "alloc %zu %llu", t->size,
               (unsigned long long)t->seed);
  note("w%d alloc %zu: %s", w, t->size, r);
  ctr.allocs++;
  if (rc != 0) {
    if (rc == MS_EQUOTA && W[w].quota) {
      sweep_effect(W[w].prefix, w); /* it swept before failing */
      return;
    }
    die("alloc of %zu bytes in w%d failed: %s", t->size, w, r);
  }
  int lid = -1;
  if (parse_alloc(r, &lid, t->desc) != 0)
    die("bad reply %s", r);
  /* Named (and AUTO with a dir, M5): ms1 with the prefix; memfd: ms2. */
  t->memfd = W[w].backend == 1;
  if (strncmp(t->desc, t->memfd ? "ms2:" : "ms1:", 4) != 0)
    die("backend %s allocated %s", backends[W[w].backend], t->desc);
  if (!t->memfd &&
      strncmp(t->desc + 4, prefixes[t->prefix], strlen(prefixes[t->prefix])))
    die("descriptor %s lacks the prefix %s", t->desc, prefixes[t->prefix]);
  ctr.memfd_allocs += t->memfd;
  t->state = HELD;
  t->h[t->nh++] = (handle){w, lid, 1, 1};
  W[w].nhandles++;
  nt++;
}

/* A tensor, most often a held one (3 in 4: most tensors of a long run are
 * gone, and check_step already opens those). */
static int pick_tensor(void) {
  if (nt == 0)
    return -1;
  if (below(4) != 0) {
    int held[MAXT], n = 0;
    for (int i = 0; i < nt; i++)
      if (T[i].state == HELD)
        held[n++] = i;
    if (n > 0)
      return held[below((unsigned)n)];
  }
  return (int)below((unsigned)nt);
}

static void op_open(int w) {
  int i = pick_tensor();
  if (i >= 0)
    open_in(w, i, W[w].wopen && below(2));
}

/* A random handle of worker w: tensor index and handle index. */
static int pick_handle(int w, int want_writable, int *hk) {
  int n = 0;
  for (int i = 0; i < nt; i++)
    for (int k = 0; k < T[i].nh; k++)
      if (T[i].h[k].w == w && (!want_writable || T[i].h[k].writable))
        n++;
  if (n == 0)
    return -1;
  int pick = (int)below((unsigned)n);
  for (int i = 0; i < nt; i++)
    for (int k = 0; k < T[i].nh; k++)
      if (T[i].h[k].w == w && (!want_writable || T[i].h[k].writable) &&
          pick-- == 0) {
        *hk = k;
        return i;
      }
  return -1;
}

static void op_write(int w) {
  int k = -1, i = pick_handle(w, 1, &k);
  if (i < 0)
    return;
  tensor *t = &T[i];
  uint64_t seed = pat_mix(t->seed + (uint64_t)step) | 1;
  char r[128];
  int rc = cmd(w, r, sizeof(r), "write %d %llu", t->h[k].lid,
               (unsigned long long)seed);
  note("w%d write %s seed %llu: %s", w, t->desc, (unsigned long long)seed, r);
  if (rc != 0)
    die("write through a writable handle of w%d failed: %s", w, r);
  t->seed = seed;
  ctr.writes++;
  /* Every other holder sees the new bytes at once. */
  verify_handle(t, &t->h[below((unsigned)t->nh)], "after a write");
}

static void op_release(int w) {
  int k = -1, i = pick_handle(w, 0, &k);
  if (i < 0)
    return;
  tensor *t = &T[i];
  char r[128];
  if (cmd(w, r, sizeof(r), "release %d", t->h[k].lid) != 0)
    die("release failed: %s", r);
  note("w%d release %s", w, t->desc);
  drop_handle(t, k, 0);
  ctr.releases++;
}

/* ms_tensor_freeze through one of w's handles: the handle ms_tensor_alloc()
 * returned freezes (again: a no-op), an opened one is refused with
 * MS_EINVAL and changes nothing. */
static void op_freeze(int w) {
  int k = -1, i = pick_handle(w, 0, &k);
  if (i < 0)
    return;
  tensor *t = &T[i];
  handle *h = &t->h[k];
  char r[128];
  int rc = cmd(w, r, sizeof(r), "freeze %d", h->lid);
  note("w%d freeze %s (%s handle%s): %s", w, t->desc,
       h->own ? "allocated" : "opened", t->frozen ? ", frozen" : "", r);
  if (!h->own) {
    if (rc != MS_EINVAL)
      die("freezing %s through a handle w%d opened gave %s, not MS_EINVAL",
          t->desc, w, r);
  } else {
    int wr = -1;
    if (rc != 0 || sscanf(r, "ok %d", &wr) != 1 || wr != 0)
      die("freezing %s in its creator w%d gave %s (want ok 0)", t->desc, w, r);
    t->frozen = 1;
    h->writable = 0; /* the creator's handle only: holders that opened it
                        writable before keep their access */
    ctr.freezes++;
  }
  verify_handle(t, h, "after a freeze");
}

static void op_sweep(int w) {
  char r[128];
  if (cmd(w, r, sizeof(r), "sweep") != 0)
    die("sweep in w%d failed: %s", w, r);
  note("w%d sweep (%s): %s", w, prefixes[W[w].prefix], r);
  sweep_effect(W[w].prefix, w);
  ctr.sweeps++;
}

static void op_recreate(int w) {
  worker *x = &W[w];
  forget_worker(w, 0); /* it releases everything first */
  random_config(x);
  char r[256];
  if (cmd(w, r, sizeof(r), "recreate %s %llu %llu %llu %llu %s",
          prefixes[x->prefix], x->pool, x->cache, x->cache_bytes,
          x->quota ? 3ull << 20 : 0ull, backends[x->backend]) != 0)
    die("recreate in w%d failed: %s", w, r);
  note("w%d recreate: backend %s prefix %s pool %llu cache %llu/%llu quota %d "
       "wopen %d",
       w, backends[x->backend], prefixes[x->prefix], x->pool, x->cache,
       x->cache_bytes, x->quota, x->wopen);
  sweep_effect(x->prefix, -1);
  ctr.recreates++;
}

static void op_fork(int w) {
  if (!forks_on)
    return;
  static const char *const modes[] = {"use", "tidy", "release"};
  const char *mode = modes[below(3)];
  char r[128], arg[160] = "";
  if (strcmp(mode, "release") == 0) {
    int k = -1, i = pick_handle(w, 0, &k);
    if (i < 0)
      return;
    (void)snprintf(arg, sizeof(arg), " %d", T[i].h[k].lid);
  } else if (strcmp(mode, "use") == 0) {
    /* The child is a new process: held memfd descriptors whose creator is
     * gone may not open there (M1, M2). */
    size_t used = 0;
    for (int i = 0; i < nt; i++)
      for (int k = 0; k < T[i].nh; k++)
        if (T[i].h[k].w == w && orphan(&T[i]) != 0 && used + 8 < sizeof(arg)) {
          int n = snprintf(arg + used, sizeof(arg) - used, "%c%d",
                           used == 0 ? ' ' : ',', T[i].h[k].lid);
          used += n > 0 ? (size_t)n : 0;
        }
  }
  if (cmd(w, r, sizeof(r), "fork %s%s", mode, arg) != 0)
    die("fork %s in w%d: %s", mode, w, r);
  int st = atoi(r + 3);
  note("w%d fork %s%s: child status %#x", w, mode, arg, st);
  if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
    die("w%d's forked child (%s%s) ended with status %#x%s", w, mode, arg, st,
        WIFEXITED(st) && WEXITSTATUS(st) == 3
            ? ": an inherited allocator was not refused with MS_EINVAL"
            : "");
  ctr.forks++;
  if (strcmp(mode, "use") == 0)
    sweep_effect(W[w].prefix, -1); /* the child's own allocator swept */
  /* The parent's tensors are untouched: check each from the parent. */
  for (int i = 0; i < nt; i++)
    for (int k = 0; k < T[i].nh; k++)
      if (T[i].h[k].w == w)
        verify_handle(&T[i], &T[i].h[k], "after a forked child");
}

/* ------------------------------------------------------------------------ */
/* One seed                                                                  */
/* ------------------------------------------------------------------------ */

static void plant_decoys(void) {
  if (!decoys_on)
    return;
  char p[512];
  int fds[64], n = 0;
  for (int pi = 0; pi < NPREFIX; pi++)
    for (size_t i = 0; i < MS_TEST_NEAR_MISS; i++) {
      (void)snprintf(p, sizeof(p), "%s/%s%s", dir, prefixes[pi],
                     ms_test_near_miss[i]);
      int fd = open(p, O_CREAT | O_EXCL | O_RDWR, 0600);
      assert_true(fd >= 0);
      if (n < 64 && i % 2 == 0)
        fds[n++] = fd; /* half of them locked by a live process */
      else
        close(fd);
    }
  for (size_t i = 0; i < MS_TEST_NEAR_MISS_TOK; i++) {
    (void)snprintf(p, sizeof(p), "%s/%s", dir, ms_test_near_miss_tok[i]);
    int fd = open(p, O_CREAT | O_EXCL | O_RDWR, 0600);
    assert_true(fd >= 0);
    if (n < 64)
      fds[n++] = fd;
    else
      close(fd);
  }
  int go[2];
  assert_int_equal(pipe(go), 0);
  locker = fork();
  assert_true(locker >= 0);
  if (locker == 0) {
    close(go[1]);
    for (int i = 0; i < n; i++)
      if (flock(fds[i], LOCK_EX) != 0)
        _exit(3);
    char c;
    while (read(go[0], &c, 1) > 0)
      ;
    _exit(0);
  }
  close(go[0]);
  for (int i = 0; i < n; i++)
    close(fds[i]);
  locker_fd = go[1];
}

static int is_decoy(const char *name) {
  for (int pi = 0; pi < NPREFIX; pi++) {
    size_t pl = strlen(prefixes[pi]);
    if (strncmp(name, prefixes[pi], pl) != 0)
      continue;
    for (size_t i = 0; i < MS_TEST_NEAR_MISS; i++)
      if (strcmp(name + pl, ms_test_near_miss[i]) == 0)
        return 1;
  }
  for (size_t i = 0; i < MS_TEST_NEAR_MISS_TOK; i++)
    if (strcmp(name, ms_test_near_miss_tok[i]) == 0)
      return 1;
  return 0;
}

/* Library objects (anything but decoys) in dir; their names into buf. */
static int non_decoys(char *buf, size_t len) {
  DIR *d = opendir(dir);
  if (d == NULL)
    return -1;
  int n = 0;
  size_t used = 0;
  buf[0] = '\0';
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
        is_decoy(e->d_name))
      continue;
    n++;
    int k = snprintf(buf + used, len - used, " %s", e->d_name);
    if (k > 0 && used + (size_t)k < len)
      used += (size_t)k;
  }
  closedir(d);
  return n;
}

/* Ends every process of this seed and removes the directory. */
static void cleanup_world(void) {
  for (int i = 0; i < MAXW; i++)
    if (W[i].alive) {
      (void)peer_end(&W[i].p, 1);
      W[i].alive = 0;
    }
  if (locker > 0) {
    close(locker_fd);
    (void)waitpid(locker, NULL, 0);
    locker = -1;
  }
  (void)remove_prefix(dir, NULL);
  (void)rmdir(dir);
}

static void run_seed(uint64_t seed, int max_steps, double deadline) {
  cur_seed = seed;
  rng = seed;
  nt = 0;
  nhist = 0;
  step = 0;
  memset(W, 0, sizeof(W));
  (void)snprintf(dir, sizeof(dir), "/dev/shm/msmodel.XXXXXX");
  assert_non_null(mkdtemp(dir));
  plant_decoys();
  int nworkers = 3 + (int)below(MAXW - 2);
  for (int w = 0; w < nworkers; w++)
    spawn(w);
  check_decoys();
  /* The configuration, with the seed: later ones follow from it. */
  char cfg[512];
  size_t used = 0;
  cfg[0] = '\0';
  for (int w = 0; w < nworkers; w++) {
    int n = snprintf(cfg + used, sizeof(cfg) - used,
                     " w%d=%s/%s/pool%llu/cache%llu/%llu/quota%d/wopen%d", w,
                     backends[W[w].backend], prefixes[W[w].prefix], W[w].pool,
                     W[w].cache, W[w].cache_bytes, W[w].quota, W[w].wopen);
    if (n > 0 && used + (size_t)n < sizeof(cfg))
      used += (size_t)n;
  }
  print_message("seed %llu workers:%s\n", (unsigned long long)seed, cfg);

  for (step = 0; step < max_steps; step++) {
    if (deadline > 0 && step % 16 == 0 && (double)uv_hrtime() / 1e9 > deadline)
      break;
    ctr.steps++;
    /* Keep the world populated. */
    for (int w = 0; w < nworkers; w++)
      if (!W[w].alive && below(2) == 0)
        spawn(w);
    int w = pick_live_worker();
    if (w < 0) {
      spawn(0);
      w = 0;
    }
    unsigned r = below(100);
    if (r < 22)
      op_alloc(w);
    else if (r < 44)
      op_open(w);
    else if (r < 50)
      op_write(w);
    else if (r < 52)
      op_freeze(w);
    else if (r < 74)
      op_release(w);
    else if (r < 82)
      op_sweep(w);
    else if (r < 85)
      op_recreate(w);
    else if (r < 91)
      op_fork(w);
    else if (r < 93)
      kill_worker(w);
    else if (r < 95)
      kill_worker_mid_op(w);
    /* else: only the checks */
    check_step();
  }

  /* Everyone exits (some by kill -9); then one sweep per prefix. */
  for (int w = 0; w < MAXW; w++) {
    if (!W[w].alive)
      continue;
    if (below(3) == 0) {
      kill_worker(w);
    } else {
      char r[64];
      if (cmd(w, r, sizeof(r), "quit") != 0)
        die("quit in w%d: %s", w, r);
      int st = peer_end(&W[w].p, 0);
      W[w].alive = 0;
      forget_worker(w, 0);
      if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        die("w%d exited with status %#x", w, st);
    }
  }
  /* The sweepers' backends are random too (M4): a memfd allocator sweeps
   * the named regions of its prefix like any other, and holds no token
   * file. */
  ms_shm_t *sweepers[NPREFIX] = {0};
  int named_sweepers = 0;
  char sweeper_cfg[64] = "";
  for (int pi = 0; pi < NPREFIX; pi++) {
    ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
    o.dir = dir;
    o.prefix = prefixes[pi];
    int b = memfd_on ? (int)below(NBACKEND) : 0;
    o.backend = b == 0   ? MS_SHM_BACKEND_NAMED
                : b == 1 ? MS_SHM_BACKEND_MEMFD
                         : MS_SHM_BACKEND_AUTO;
    named_sweepers += b != 1; /* AUTO with a dir is named (M5) */
    size_t len = strlen(sweeper_cfg);
    (void)snprintf(sweeper_cfg + len, sizeof(sweeper_cfg) - len, " %s",
                   backends[b]);
    if (ms_shm_create(&o, &sweepers[pi]) != 0)
      die("final sweeper %s: %s", prefixes[pi], ms_shm_errmsg(NULL));
  }
  for (int pi = 0; pi < NPREFIX; pi++)
    if (ms_shm_sweep(sweepers[pi], NULL) != 0)
      die("final sweep %s: %s", prefixes[pi], ms_shm_errmsg(sweepers[pi]));
  char left[2048];
  int n = non_decoys(left, sizeof(left));
  for (int pi = 0; pi < NPREFIX; pi++)
    assert_int_equal(ms_shm_destroy(sweepers[pi]), 0);
  /* Only the named sweepers' tokens may have been there. */
  if (n != named_sweepers)
    die("after every worker exited and one sweep per prefix (sweepers:%s), "
        "%d objects (expected only the %d named sweepers' tokens):%s",
        sweeper_cfg, n, named_sweepers, left);
  n = non_decoys(left, sizeof(left));
  if (n != 0)
    die("%d objects left after the sweepers were destroyed:%s", n, left);
  check_decoys();
  cleanup_world();
}

static void test_model_random_configs(void **state) {
  (void)state;
  const char *s = getenv("MS_SEED");
  if (ms_test_argv[1] != NULL && ms_test_argv[2] != NULL)
    s = ms_test_argv[2];
  const char *e = getenv("MS_MODEL_STEPS");
  int max_steps = e != NULL ? atoi(e) : 2000;
  e = getenv("MS_MODEL_SECONDS");
  double seconds = e != NULL ? atof(e) : 120;
  /* Diagnostics only (to look past one known bug on an old build):
   * MS_MODEL_SKIP lists parts to leave out: decoys, fork, writable, mixed
   * (one prefix, no pooling), memfd (named backend only). */
  const char *skip = getenv("MS_MODEL_SKIP") ? getenv("MS_MODEL_SKIP") : "";
  decoys_on = strstr(skip, "decoys") == NULL;
  forks_on = strstr(skip, "fork") == NULL;
  writable_check = strstr(skip, "writable") == NULL;
  mixed_on = strstr(skip, "mixed") == NULL;
  memfd_on = strstr(skip, "memfd") == NULL;
  double t0 = (double)uv_hrtime() / 1e9;
  int seeds = 0;
  if (s != NULL) {
    uint64_t seed = strtoull(s, NULL, 0);
    print_message("seed %llu (%d steps)\n", (unsigned long long)seed,
                  max_steps);
    run_seed(seed, max_steps, 0);
    seeds = 1;
  } else {
    uint64_t base = pat_mix(uv_hrtime() ^ (uint64_t)getpid()) >> 16;
    while (seeds == 0 || (double)uv_hrtime() / 1e9 - t0 < seconds) {
      uint64_t seed = base + (uint64_t)seeds;
      print_message("seed %llu (replay: MS_SEED=%llu)\n",
                    (unsigned long long)seed, (unsigned long long)seed);
      /* The last seed ends at the budget; earlier ones at their steps. */
      run_seed(seed, max_steps, t0 + seconds);
      seeds++;
    }
  }
  print_message("%d seeds in %.1f s: %ld steps, %ld allocations, %ld opens "
                "(%ld refused), %ld writes, %ld releases, %ld sweeps, %ld "
                "recreates, %ld forks, %ld kills, %ld verifications; %ld "
                "memfd allocations, %ld cross-backend opens (succeeded), %ld "
                "freezes, "
                "%ld refusals of memfd descriptors whose creator was gone, "
                "%ld stats checks\n",
                seeds, (double)uv_hrtime() / 1e9 - t0, ctr.steps, ctr.allocs,
                ctr.opens, ctr.refused_opens, ctr.writes, ctr.releases,
                ctr.sweeps, ctr.recreates, ctr.forks, ctr.kills, ctr.verifies,
                ctr.memfd_allocs, ctr.cross_opens, ctr.freezes,
                ctr.orphan_refusals, ctr.stats);
}

/* Found by the model (seed 1, step 123, on the first memfd build): a
 * worker whose memfd allocator had been destroyed reused the descriptor
 * number for a file on tmpfs, and opening the old ms2 descriptor gave
 * MS_EBADREGION ("not sealed") instead of MS_ENOENT.  The same here in one
 * process: the memfd's number is reused by a tmpfs file. */
static void test_reused_memfd_number_is_enoent(void **state) {
  (void)state;
  char d[64] = "/dev/shm/msmodel.XXXXXX";
  assert_non_null(mkdtemp(d));
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.dir = d;
  o.backend = MS_SHM_BACKEND_MEMFD;
  ms_shm_t *a = NULL, *b = NULL;
  assert_int_equal(ms_shm_create(&o, &a), 0);
  o.backend = MS_SHM_BACKEND_NAMED;
  assert_int_equal(ms_shm_create(&o, &b), 0);
  int64_t shape[1] = {4096};
  ms_tensor_t *t = NULL, *u = NULL;
  assert_int_equal(ms_tensor_alloc(a, MS_DTYPE_UINT8, 1, shape, NULL, &t), 0);
  char desc[MS_DESCRIPTOR_MAX];
  assert_int_equal(ms_tensor_descriptor(t, desc, sizeof(desc)), 0);
  long long pid = 0, fdnum = -1;
  assert_int_equal(sscanf(desc, "ms2:%lld:%lld:", &pid, &fdnum), 2);
  ms_tensor_release(t);
  assert_int_equal(ms_shm_destroy(a), 0);
  /* The number now leads to a tmpfs file (it reports F_SEAL_SEAL). */
  char p[128];
  (void)snprintf(p, sizeof(p), "%s/reused", d);
  int fd = open(p, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, 65536), 0);
  if (fd != fdnum) {
    assert_true(fdnum >= 0 && fdnum < 1024);
    assert_int_equal(dup2(fd, (int)fdnum), (int)fdnum);
    close(fd);
    fd = (int)fdnum;
  }
  int rc = ms_tensor_open(b, desc, 0, &u);
  char msg[256];
  (void)snprintf(msg, sizeof(msg), "%s", ms_shm_errmsg(b));
  ms_tensor_release(u);
  close(fd);
  (void)unlink(p);
  assert_int_equal(ms_shm_destroy(b), 0);
  (void)remove_prefix(d, NULL);
  (void)rmdir(d);
  if (rc != MS_ENOENT)
    fail_msg("%s, its number reused by a tmpfs file, opened as %s (%s)", desc,
             ms_err_name(rc), msg);
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: test_shm_model PATH-TO-shm_peer [SEED]\n");
    return 2;
  }
  peer_exe = argv[1];
  MS_TEST_MAIN(argv);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reused_memfd_number_is_enoent),
      cmocka_unit_test(test_model_random_configs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
