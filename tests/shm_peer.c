/*
 * A peer process for the multi-process shared-memory tests (POSIX): one
 * allocator with the configuration given on the command line, driven by
 * one-line commands on stdin, one reply line each on stdout.
 *
 *   shm_peer DIR PREFIX POOL_BYTES OPEN_CACHE OPEN_CACHE_BYTES MAX_BYTES
 *
 * DIR "-" is the default namespace.  The backend is MS_PEER_BACKEND
 * ("named", "memfd" or "auto") if set, else MS_TEST_BACKEND (shm_backend.h).
 * Replies start with "ok" or with "err CODE message".  Tensors are named by
 * small ids the peer hands out.
 *
 *   alloc BYTES SEED        ok ID DESCRIPTOR   (data = pattern of SEED)
 *   open DESC W             ok ID WRITABLE     (W 1: MS_OPEN_WRITE)
 *   verify ID SEED          ok | bad OFFSET
 *   write ID SEED           ok                 (refused unless writable)
 *   release ID              ok
 *   sweep                   ok RECLAIMED
 *   stats                   ok active pooled opened bytes_mapped allocated
 *                           pool_hits
 *   freeze ID               ms_tensor_freeze: ok WRITABLE (afterwards)
 *   recreate PREFIX POOL_BYTES OPEN_CACHE OPEN_CACHE_BYTES MAX_BYTES [BACKEND]
 *                           releases everything, destroys the allocator and
 *                           creates a new one (BACKEND named, memfd or auto;
 *                           default as at start): ok
 *   fork use [IDS]          a child checks that the inherited allocator
 *                           refuses alloc/open/sweep (MS_EINVAL), makes its
 *                           own allocator and opens every descriptor held
 *                           here, then frees what it inherited: ok STATUS.
 *                           IDS (comma-separated ids) are held tensors whose
 *                           descriptors may no longer open in a new process
 *                           (memfd regions whose creator is gone): for them
 *                           MS_ENOENT / MS_ESTALE is accepted too.
 *   fork tidy               a child releases every inherited tensor and
 *                           destroys the inherited allocator from an atexit
 *                           handler, then exit(0): ok STATUS
 *   fork release ID         a child releases the inherited tensor: ok STATUS
 *   quit                    releases everything, destroys, exits 0
 *
 * STATUS is the child's raw wait status.  Exit codes of `fork use`
 * children: 0 ok, 3 an inherited call was not refused with MS_EINVAL (or
 * its message does not mention fork), 4 the child's own allocator failed,
 * 5 destroying the inherited allocator failed.
 */
#include "modelshare.h"
#include "shm_backend.h"
#include "shm_pattern.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_HELD 256

typedef struct held {
  ms_tensor_t *t;
  char desc[MS_DESCRIPTOR_MAX];
} held;

static ms_shm_t *shm;
static ms_shm_options_t opts;
static char dir_buf[256], prefix_buf[32];
static held tab[MAX_HELD];

static int make_shm(ms_shm_t **out) { return ms_shm_create(&opts, out); }

/* "named", "memfd", "auto"; NULL or anything else: the suite's default. */
static uint32_t backend_named(const char *b) {
  if (b != NULL && strcmp(b, "named") == 0)
    return MS_SHM_BACKEND_NAMED;
  if (b != NULL && strcmp(b, "memfd") == 0)
    return MS_SHM_BACKEND_MEMFD;
  if (b != NULL && strcmp(b, "auto") == 0)
    return MS_SHM_BACKEND_AUTO;
  return test_backend();
}

static int parse_opts(char **a, const char *backend) {
  opts = (ms_shm_options_t)MS_SHM_OPTIONS_INIT;
  opts.backend = backend_named(backend);
  (void)snprintf(prefix_buf, sizeof(prefix_buf), "%s", a[0]);
  opts.dir = strcmp(dir_buf, "-") == 0 ? NULL : dir_buf;
  opts.prefix = prefix_buf;
  opts.pool_bytes = strtoull(a[1], NULL, 0);
  opts.open_cache = (uint32_t)strtoul(a[2], NULL, 0);
  opts.open_cache_bytes = strtoull(a[3], NULL, 0);
  opts.max_bytes = strtoull(a[4], NULL, 0);
  return 0;
}

static void reply_err(int rc, const ms_shm_t *s) {
  printf("err %d %s: %s\n", rc, ms_err_name(rc), ms_shm_errmsg(s));
}

#define FAIL(rc, s)                                                            \
  do {                                                                         \
    reply_err(rc, s);                                                          \
    return;                                                                    \
  } while (0)

static int add(ms_tensor_t *t) {
  for (int i = 0; i < MAX_HELD; i++)
    if (tab[i].t == NULL) {
      tab[i].t = t;
      (void)ms_tensor_descriptor(t, tab[i].desc, sizeof(tab[i].desc));
      return i;
    }
  return -1;
}

static held *get(const char *id) {
  char *end = NULL;
  long i = strtol(id, &end, 10);
  if (end == id || i < 0 || i >= MAX_HELD || tab[i].t == NULL)
    return NULL;
  return &tab[i];
}

static void release_all(void) {
  for (int i = 0; i < MAX_HELD; i++) {
    ms_tensor_release(tab[i].t);
    tab[i].t = NULL;
  }
}

/* ---- children of fork ---------------------------------------------------- */

static int mentions_fork(const ms_shm_t *s) {
  const char *m = ms_shm_errmsg(s);
  return strstr(m, "fork") != NULL;
}

/* Whether id is in the comma-separated list ids (NULL: empty). */
static int listed(const char *ids, int id) {
  for (const char *p = ids; p != NULL && *p != '\0';) {
    char *end = NULL;
    long v = strtol(p, &end, 10);
    if (end == p)
      return 0;
    if (v == id)
      return 1;
    p = *end == ',' ? end + 1 : end;
  }
  return 0;
}

static int child_use(const char *may_fail) {
  int64_t shape[1] = {4096};
  ms_tensor_t *t = NULL;
  int rc = ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &t);
  if (rc != MS_EINVAL || !mentions_fork(shm)) {
    fprintf(stderr, "peer child: inherited alloc gave %s (%s)\n",
            ms_err_name(rc), ms_shm_errmsg(shm));
    return 3;
  }
  const char *probe =
      "ms1:ms-0123456789abcdef-0123456789abcdef0123456789abcdef:1";
  for (int i = 0; i < MAX_HELD; i++)
    if (tab[i].t != NULL) {
      probe = tab[i].desc;
      break;
    }
  rc = ms_tensor_open(shm, probe, 0, &t);
  if (rc != MS_EINVAL || !mentions_fork(shm)) {
    fprintf(stderr, "peer child: inherited open gave %s (%s)\n",
            ms_err_name(rc), ms_shm_errmsg(shm));
    return 3;
  }
  size_t n = 0;
  rc = ms_shm_sweep(shm, &n);
  if (rc != MS_EINVAL || !mentions_fork(shm)) {
    fprintf(stderr, "peer child: inherited sweep gave %s (%s)\n",
            ms_err_name(rc), ms_shm_errmsg(shm));
    return 3;
  }
  /* Its own allocator works normally and sees the parent's tensors. */
  ms_shm_t *own = NULL;
  if (make_shm(&own) != 0)
    return 4;
  for (int i = 0; i < MAX_HELD; i++) {
    if (tab[i].t == NULL)
      continue;
    ms_tensor_t *u = NULL;
    rc = ms_tensor_open(own, tab[i].desc, 0, &u);
    if ((rc == MS_ENOENT || rc == MS_ESTALE) && listed(may_fail, i))
      continue;
    if (rc != 0 || ms_tensor_nbytes(u) != ms_tensor_nbytes(tab[i].t)) {
      fprintf(stderr, "peer child: own open of %s gave %s (%s)\n", tab[i].desc,
              ms_err_name(rc), ms_shm_errmsg(own));
      ms_tensor_release(u);
      ms_shm_destroy(own);
      return 4;
    }
    ms_tensor_release(u);
  }
  if (ms_tensor_alloc(own, MS_DTYPE_UINT8, 1, shape, NULL, &t) != 0)
    return 4;
  pat_fill(ms_tensor_data(t), 4096, 77);
  ms_tensor_release(t);
  if (ms_shm_destroy(own) != 0)
    return 4;
  /* What it inherited: the child's memory only. */
  release_all();
  return ms_shm_destroy(shm) == 0 ? 0 : 5;
}

static void tidy_at_exit(void) {
  release_all();
  (void)ms_shm_destroy(shm);
}

static int run_child(const char *mode, const char *arg) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0)
    return -1;
  if (pid == 0) {
    if (strcmp(mode, "use") == 0)
      _exit(child_use(arg));
    if (strcmp(mode, "tidy") == 0) {
      atexit(tidy_at_exit);
      exit(0);
    }
    if (strcmp(mode, "release") == 0) {
      held *h = arg != NULL ? get(arg) : NULL;
      if (h != NULL)
        ms_tensor_release(h->t);
      _exit(h != NULL ? 0 : 6);
    }
    _exit(64);
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
    ;
  return st;
}

/* ---- the command loop -----------------------------------------------------
 */

static void command(char *line) {
  char *a[8] = {0};
  int n = 0;
  for (char *tok = strtok(line, " \t\n"); tok != NULL && n < 8;
       tok = strtok(NULL, " \t\n"))
    a[n++] = tok;
  if (n == 0) {
    printf("err -1 empty\n");
    return;
  }
  int rc = 0;
  if (strcmp(a[0], "alloc") == 0 && n == 3) {
    int64_t shape[1] = {(int64_t)strtoull(a[1], NULL, 0)};
    ms_tensor_t *t = NULL;
    rc = ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &t);
    if (rc != 0)
      FAIL(rc, shm);
    pat_fill(ms_tensor_data(t), (size_t)shape[0], strtoull(a[2], NULL, 0));
    int id = add(t);
    if (id < 0) {
      ms_tensor_release(t);
      FAIL(MS_ENOMEM, shm);
    }
    printf("ok %d %s\n", id, tab[id].desc);
  } else if (strcmp(a[0], "open") == 0 && n == 3) {
    ms_tensor_t *t = NULL;
    rc = ms_tensor_open(shm, a[1], atoi(a[2]) ? MS_OPEN_WRITE : 0, &t);
    if (rc != 0)
      FAIL(rc, shm);
    int id = add(t);
    if (id < 0) {
      ms_tensor_release(t);
      FAIL(MS_ENOMEM, shm);
    }
    printf("ok %d %d\n", id, ms_tensor_is_writable(t));
  } else if (strcmp(a[0], "verify") == 0 && n == 3) {
    held *h = get(a[1]);
    if (h == NULL)
      FAIL(MS_EINVAL, NULL);
    long long off = pat_check(ms_tensor_data(h->t), ms_tensor_nbytes(h->t),
                              strtoull(a[2], NULL, 0));
    if (off < 0)
      printf("ok\n");
    else
      printf("bad %lld\n", off);
  } else if (strcmp(a[0], "write") == 0 && n == 3) {
    held *h = get(a[1]);
    if (h == NULL || !ms_tensor_is_writable(h->t))
      FAIL(MS_EINVAL, NULL);
    pat_fill(ms_tensor_data(h->t), ms_tensor_nbytes(h->t),
             strtoull(a[2], NULL, 0));
    printf("ok\n");
  } else if (strcmp(a[0], "freeze") == 0 && n == 2) {
    held *h = get(a[1]);
    if (h == NULL)
      FAIL(MS_EINVAL, NULL);
    rc = ms_tensor_freeze(h->t);
    if (rc != 0)
      FAIL(rc, shm);
    printf("ok %d\n", ms_tensor_is_writable(h->t));
  } else if (strcmp(a[0], "release") == 0 && n == 2) {
    held *h = get(a[1]);
    if (h == NULL)
      FAIL(MS_EINVAL, NULL);
    ms_tensor_release(h->t);
    h->t = NULL;
    printf("ok\n");
  } else if (strcmp(a[0], "sweep") == 0 && n == 1) {
    size_t got = 0;
    rc = ms_shm_sweep(shm, &got);
    if (rc != 0)
      FAIL(rc, shm);
    printf("ok %zu\n", got);
  } else if (strcmp(a[0], "stats") == 0 && n == 1) {
    ms_shm_stats_t s = MS_SHM_STATS_INIT;
    rc = ms_shm_stats(shm, &s);
    if (rc != 0)
      FAIL(rc, shm);
    printf("ok %llu %llu %llu %llu %llu %llu\n",
           (unsigned long long)s.regions_active,
           (unsigned long long)s.regions_pooled,
           (unsigned long long)s.regions_opened,
           (unsigned long long)s.bytes_mapped,
           (unsigned long long)s.bytes_allocated,
           (unsigned long long)s.pool_hits);
  } else if (strcmp(a[0], "recreate") == 0 && (n == 6 || n == 7)) {
    release_all();
    rc = ms_shm_destroy(shm);
    if (rc != 0)
      FAIL(rc, shm);
    shm = NULL;
    parse_opts(a + 1, n == 7 ? a[6] : getenv("MS_PEER_BACKEND"));
    rc = make_shm(&shm);
    if (rc != 0) {
      reply_err(rc, NULL);
      fflush(stdout);
      exit(10 - rc);
    }
    printf("ok\n");
  } else if (strcmp(a[0], "fork") == 0 && n >= 2) {
    printf("ok %d\n", run_child(a[1], n > 2 ? a[2] : NULL));
  } else if (strcmp(a[0], "quit") == 0 && n == 1) {
    release_all();
    rc = ms_shm_destroy(shm);
    printf(rc == 0 ? "ok\n" : "err %d destroy\n", rc);
    fflush(stdout);
    exit(rc == 0 ? 0 : 9);
  } else {
    printf("err -1 unknown command %s\n", a[0]);
  }
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: shm_peer DIR PREFIX POOL_BYTES OPEN_CACHE "
                    "OPEN_CACHE_BYTES MAX_BYTES\n");
    return 64;
  }
  (void)snprintf(dir_buf, sizeof(dir_buf), "%s", argv[1]);
  parse_opts(argv + 2, getenv("MS_PEER_BACKEND"));
  int rc = make_shm(&shm);
  if (rc != 0) {
    fprintf(stderr, "shm_peer: ms_shm_create: %s\n", ms_shm_errmsg(NULL));
    return 10 - rc;
  }
  printf("ready\n");
  fflush(stdout);
  char line[512];
  while (fgets(line, sizeof(line), stdin) != NULL) {
    command(line);
    fflush(stdout);
  }
  /* stdin closed: the driver is gone, tidy up. */
  release_all();
  return ms_shm_destroy(shm) == 0 ? 0 : 9;
}
