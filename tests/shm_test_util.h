/* Helpers of the multi-process shared-memory suites (POSIX): driving
 * shm_peer processes, listing and cleaning a namespace, creating shms and
 * tensors (after cmocka, which test_util.h includes), and running a test
 * that needs a tmpfs mount inside a user+mount namespace when the caller
 * may not mount. */
#ifndef MS_TEST_SHM_TEST_UTIL_H
#define MS_TEST_SHM_TEST_UTIL_H

#include "modelshare.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Peers: shm_peer processes driven over pipes                               */
/* ------------------------------------------------------------------------ */

typedef struct peer {
  pid_t pid;
  FILE *in, *out;
} peer;

typedef struct peer_cfg {
  const char *dir; /* "-": default namespace */
  const char *prefix;
  unsigned long long pool_bytes, open_cache, open_cache_bytes, max_bytes;
} peer_cfg;

#define PEER_CFG(dir, prefix, pool)                                            \
  ((peer_cfg){(dir), (prefix), (pool), 64, 1ull << 30, 0})

/* Starts a peer and waits for its "ready".  pid -1 if it did not start. */
static inline peer peer_start(const char *exe, peer_cfg c) {
  peer p = {-1, NULL, NULL};
  int to[2], from[2];
  if (pipe(to) != 0)
    return p;
  if (pipe(from) != 0) {
    close(to[0]), close(to[1]);
    return p;
  }
  char a[5][32];
  (void)snprintf(a[0], 32, "%llu", c.pool_bytes);
  (void)snprintf(a[1], 32, "%llu", c.open_cache);
  (void)snprintf(a[2], 32, "%llu", c.open_cache_bytes);
  (void)snprintf(a[3], 32, "%llu", c.max_bytes);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(to[0], 0);
    dup2(from[1], 1);
    for (int fd = 3; fd < 256; fd++)
      close(fd);
    execl(exe, exe, c.dir, c.prefix, a[0], a[1], a[2], a[3], (char *)NULL);
    _exit(127);
  }
  close(to[0]);
  close(from[1]);
  if (pid < 0) {
    close(to[1]), close(from[0]);
    return p;
  }
  p.pid = pid;
  p.in = fdopen(to[1], "w");
  p.out = fdopen(from[0], "r");
  char line[64];
  if (fgets(line, sizeof(line), p.out) == NULL ||
      strncmp(line, "ready", 5) != 0) {
    fclose(p.in), fclose(p.out);
    waitpid(pid, NULL, 0);
    p = (peer){-1, NULL, NULL};
  }
  return p;
}

/* Sends one command and reads its reply into reply (newline removed).
 * Returns 0 for "ok ...", the error code for "err CODE ...", 1 for any
 * other reply ("bad ..."), and -1000 if the peer is gone. */
static inline int peer_cmd(peer *p, char *reply, size_t len, const char *fmt,
                           ...) {
  char tmp[512];
  if (reply == NULL)
    reply = tmp, len = sizeof(tmp);
  reply[0] = '\0';
  if (p->pid <= 0)
    return -1000;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(p->in, fmt, ap);
  va_end(ap);
  fputc('\n', p->in);
  if (fflush(p->in) != 0 || fgets(reply, (int)len, p->out) == NULL)
    return -1000;
  reply[strcspn(reply, "\n")] = '\0';
  if (strncmp(reply, "ok", 2) == 0)
    return 0;
  if (strncmp(reply, "err ", 4) == 0)
    return atoi(reply + 4);
  return 1;
}

/* Ends a peer (SIGKILL if kill9, else closes its stdin so it tidies up and
 * exits) and returns its wait status. */
static inline int peer_end(peer *p, int kill9) {
  if (p->pid <= 0)
    return -1;
  if (kill9)
    kill(p->pid, SIGKILL);
  fclose(p->in);
  fclose(p->out);
  int st = 0;
  while (waitpid(p->pid, &st, 0) < 0 && errno == EINTR)
    ;
  p->pid = -1;
  return st;
}

/* "ok ID DESC" -> id and descriptor. */
static inline int parse_alloc(const char *reply, int *id, char *desc) {
  return sscanf(reply, "ok %d %95s", id, desc) == 2 ? 0 : -1;
}

/* ------------------------------------------------------------------------ */
/* Shms and tensors (the test fails if they cannot be made)                  */
/* ------------------------------------------------------------------------ */

/* A shm on backend; dir: the named backend's namespace. */
static inline ms_shm_t *shm_on(uint32_t backend, const char *dir,
                               uint64_t pool_bytes) {
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.backend = backend;
  o.dir = dir;
  o.pool_bytes = pool_bytes;
  ms_shm_t *shm = NULL;
  assert_int_equal(ms_shm_create(&o, &shm), 0);
  return shm;
}

/* A one-dimensional uint8 tensor of n bytes. */
static inline ms_tensor_t *alloc_u8(ms_shm_t *shm, size_t n) {
  int64_t shape[1] = {(int64_t)n};
  ms_tensor_t *t = NULL;
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &t), 0);
  return t;
}

/* t's descriptor into buf (MS_DESCRIPTOR_MAX bytes). */
static inline void descriptor(const ms_tensor_t *t, char *buf) {
  assert_int_equal(ms_tensor_descriptor(t, buf, MS_DESCRIPTOR_MAX), 0);
}

/* ------------------------------------------------------------------------ */
/* Namespaces                                                                */
/* ------------------------------------------------------------------------ */

/* The region file of a descriptor "ms1:NAME:GEN" in dir. */
static inline void desc_path(const char *dir, const char *desc, char *path,
                             size_t len) {
  const char *name = desc + 4, *colon = strrchr(desc, ':');
  (void)snprintf(path, len, "%s/%.*s", dir, (int)(colon - name), name);
}

/* Entries of d whose names start with prefix (NULL: all but "." and ".."). */
static inline int count_prefix(const char *d, const char *prefix) {
  DIR *dd = opendir(d);
  if (dd == NULL)
    return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(dd)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    n += prefix == NULL || strncmp(e->d_name, prefix, strlen(prefix)) == 0;
  }
  closedir(dd);
  return n;
}

/* Names of the library's objects: regions <prefix><16 hex>-<32 hex>. */
static inline int is_lower_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return 0;
  return 1;
}

static inline int is_region_of(const char *name, const char *prefix) {
  size_t pl = strlen(prefix);
  return strncmp(name, prefix, pl) == 0 && strlen(name) == pl + 49 &&
         is_lower_hex(name + pl, 16) && name[pl + 16] == '-' &&
         is_lower_hex(name + pl + 17, 32);
}

/* Regions of prefix in d. */
static inline int count_regions(const char *d, const char *prefix) {
  DIR *dd = opendir(d);
  if (dd == NULL)
    return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(dd)) != NULL)
    n += is_region_of(e->d_name, prefix);
  closedir(dd);
  return n;
}

/* The library's memfds ("memfd:modelshare") that process pid still maps
 * or has open: distinct inodes in /proc/<pid>/maps and /proc/<pid>/fd.
 * -1 if /proc cannot be read. */
static inline int memfds_of(pid_t pid) {
  unsigned long inos[256];
  int n = 0;
  char path[64], line[512];
  (void)snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return -1;
  while (fgets(line, sizeof(line), f) != NULL) {
    unsigned long ino = 0;
    if (strstr(line, "/memfd:modelshare") == NULL ||
        sscanf(line, "%*s %*s %*s %*s %lu", &ino) != 1)
      continue;
    int seen = 0;
    for (int i = 0; i < n; i++)
      seen |= inos[i] == ino;
    if (!seen && n < 256)
      inos[n++] = ino;
  }
  fclose(f);
  (void)snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
  DIR *d = opendir(path);
  if (d == NULL)
    return -1;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    char p[320], target[256];
    (void)snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
    ssize_t l = readlink(p, target, sizeof(target) - 1);
    struct stat st;
    if (l <= 0)
      continue;
    target[l] = '\0';
    if (strncmp(target, "/memfd:modelshare", 17) != 0 || stat(p, &st) != 0)
      continue;
    int seen = 0;
    for (int i = 0; i < n; i++)
      seen |= inos[i] == (unsigned long)st.st_ino;
    if (!seen && n < 256)
      inos[n++] = (unsigned long)st.st_ino;
  }
  closedir(d);
  return n;
}

/* Removes every entry of d whose name starts with prefix (NULL: all);
 * returns how many there were. */
static inline int remove_prefix(const char *d, const char *prefix) {
  DIR *dd = opendir(d);
  if (dd == NULL)
    return 0;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(dd)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    if (prefix != NULL && strncmp(e->d_name, prefix, strlen(prefix)) != 0)
      continue;
    char p[512];
    (void)snprintf(p, sizeof(p), "%s/%s", d, e->d_name);
    n += unlink(p) == 0;
  }
  closedir(dd);
  return n;
}

/* Writes text to a new file at path.  0 or -1. */
static inline int write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f == NULL)
    return -1;
  int rc = fputs(text, f) < 0 ? -1 : 0;
  return fclose(f) != 0 ? -1 : rc;
}

/* A sorted, newline-separated listing of d (for before/after checks). */
static inline char *listing(const char *d) {
  struct dirent **names = NULL;
  int n = scandir(d, &names, NULL, alphasort);
  size_t cap = 1, len = 0;
  for (int i = 0; i < n; i++)
    cap += strlen(names[i]->d_name) + 1;
  char *out = calloc(1, cap);
  for (int i = 0; i < n; i++) {
    if (out != NULL) {
      size_t l = strlen(names[i]->d_name);
      memcpy(out + len, names[i]->d_name, l);
      out[len + l] = '\n';
      len += l + 1;
    }
    free(names[i]);
  }
  free(names);
  return out;
}

/* ------------------------------------------------------------------------ */
/* Decoys                                                                    */
/* ------------------------------------------------------------------------ */

/* Names the library never makes, to plant as decoys: each is appended to
 * a prefix.  The three come first. */
static const char *const ms_test_near_miss[] = {
    /* the three */
    "ABCDEF0123456789.lock",
    " +0x0e4627f794ad.lock",
    "-e4627f794ad5df2.lock",
    /* token look-alikes */
    "0123456789abcde.lock",
    "0123456789abcdef0.lock",
    "0123456789abcdeg.lock",
    "0123456789abcdef.lock~",
    "0123456789abcdef.LOCK",
    "0x23456789abcdef.lock",
    /* region look-alikes */
    "0123456789ABCDEF-0123456789abcdef0123456789abcdef",
    "0123456789abcdef-0123456789abcdef0123456789abcdeF",
    "0123456789abcdef_0123456789abcdef0123456789abcdef",
    "0123456789abcdef-0123456789abcdef0123456789abcdef.tmp",
    "0123456789abcdef-0123456789abcdef0123456789abcde",
    "0123456789abcdef-0123456789abcdef0123456789abcdef0",
    " 123456789abcdef-0123456789abcdef0123456789abcdef",
    "+123456789abcdef-0123456789abcdef0123456789abcdef",
};
#define MS_TEST_NEAR_MISS                                                      \
  (sizeof(ms_test_near_miss) / sizeof(ms_test_near_miss[0]))
/* Token look-alikes of the new prefix-independent form. */
static const char *const ms_test_near_miss_tok[] = {
    "mstok-ABCDEF0123456789.lock", "mstok- +0x0e4627f794ad.lock",
    "mstok--e4627f794ad5df2.lock", "mstok-0123456789abcdef.lock.bak",
    "mstok-0123456789abcde.lock",  "mstok-0123456789abcdef0.lock",
};
#define MS_TEST_NEAR_MISS_TOK                                                  \
  (sizeof(ms_test_near_miss_tok) / sizeof(ms_test_near_miss_tok[0]))

/* ------------------------------------------------------------------------ */
/* A tmpfs of our own                                                        */
/* ------------------------------------------------------------------------ */

/* main() stores its argv here so that a test can re-run itself. */
static char **ms_test_argv;

/* Mounts a tmpfs of `size` at mnt (an existing empty directory).
 *   1: mounted here, go on (umount it when done);
 *   0: the caller may not mount, so test `name` was re-run in a new
 *      user+mount namespace (`unshare -rm`, root there) and *status holds
 *      that run's wait status: the caller asserts it is 0 and returns;
 *  -1: neither works (*why says why): the caller fails loudly.
 * Inside the namespace run (MS_TEST_IN_USERNS set) a mount failure is -1. */
static inline int ms_test_tmpfs(const char *mnt, const char *size,
                                const char *name, int *status, char *why,
                                size_t why_len) {
  char opts[64];
  (void)snprintf(opts, sizeof(opts), "size=%s,mode=0700", size);
  if (mount("tmpfs", mnt, "tmpfs", 0, opts) == 0)
    return 1;
  int e = errno;
  if (getenv("MS_TEST_IN_USERNS") != NULL || (e != EPERM && e != EACCES)) {
    (void)snprintf(why, why_len, "mount tmpfs on %s: %s", mnt, strerror(e));
    return -1;
  }
  char self[4096];
  ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (sl <= 0) {
    (void)snprintf(why, why_len, "mount: %s; cannot find /proc/self/exe",
                   strerror(e));
    return -1;
  }
  self[sl] = '\0';
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    setenv("MS_TEST_IN_USERNS", "1", 1);
    setenv("MS_TEST_FILTER", name, 1);
    int argc = 0;
    while (ms_test_argv[argc] != NULL)
      argc++;
    char **args = calloc((size_t)argc + 4, sizeof(char *));
    args[0] = "unshare";
    args[1] = "-rm";
    args[2] = self;
    for (int i = 1; i < argc; i++)
      args[2 + i] = ms_test_argv[i];
    execvp("unshare", args);
    _exit(127);
  }
  int st = 0;
  if (pid < 0 || waitpid(pid, &st, 0) != pid) {
    (void)snprintf(why, why_len, "cannot run unshare -rm");
    return -1;
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 127) {
    (void)snprintf(why, why_len,
                   "mount: %s; unshare -rm is not available either",
                   strerror(e));
    return -1;
  }
  *status = st;
  return 0;
}

/* In main(), after including cmocka: a run inside the namespace runs only
 * the test it was made for. */
#define MS_TEST_MAIN(argv)                                                     \
  do {                                                                         \
    ms_test_argv = (argv);                                                     \
    signal(SIGPIPE, SIG_IGN);                                                  \
    if (getenv("MS_TEST_FILTER") != NULL)                                      \
      cmocka_set_test_filter(getenv("MS_TEST_FILTER"));                        \
  } while (0)

#endif
