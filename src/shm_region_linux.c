/* Platform layer, Linux: regions are shm_open() objects (listed through
 * /dev/shm) or files in a directory (a tmpfs); liveness tokens are
 * flock()ed objects.  Linux-specific: the /dev/shm listing, MAP_POPULATE,
 * getrandom() and the st_blocks backing check. */
#define _GNU_SOURCE /* MAP_POPULATE, O_NOFOLLOW, flock */
#include "internal/posix.h"
#include "internal/region.h"

#include <uv.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/random.h>
#endif

#ifndef F_SEAL_FUTURE_WRITE /* Linux 5.1; older headers */
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

/* Where Linux exposes shm_open()'s namespace, for listing and statvfs. */
#define SHM_DIR "/dev/shm"

struct ms__ns {
  int dirfd; /* -1: shm_open()'s namespace */
  char dir[];
};

/*
 * fork(): the child's epoch differs from every object its parent made, and
 * the child closes its copies of the parent's token descriptors before
 * fork() returns: a flock() belongs to the open file, which the child's
 * copy would otherwise keep locked after the parent died, making the dead
 * parent look alive to every sweep.  The list of held tokens is guarded by
 * a mutex that the prepare handler takes, so no thread is changing it when
 * the child copies it.
 */
static atomic_uint fork_epoch;
static uv_once_t fork_once = UV_ONCE_INIT;
static pthread_mutex_t tokens_lock = PTHREAD_MUTEX_INITIALIZER;
static ms__token *tokens; /* held by this process */

static void on_fork_prepare(void) { (void)pthread_mutex_lock(&tokens_lock); }
static void on_fork_parent(void) { (void)pthread_mutex_unlock(&tokens_lock); }

static void on_fork_child(void) {
  atomic_fetch_add_explicit(&fork_epoch, 1, memory_order_relaxed);
  for (ms__token *t = tokens; t != NULL; t = t->next) {
    if (t->handle >= 0)
      close((int)t->handle);
    if (t->aux >= 0)
      close((int)t->aux);
    t->handle = t->aux = -1;
  }
  tokens = NULL;
  (void)pthread_mutex_unlock(&tokens_lock);
}

static void fork_hook(void) {
  (void)pthread_atfork(on_fork_prepare, on_fork_parent, on_fork_child);
}

/* tokens_lock held (from before the descriptor exists: a fork() in between
 * would leave the child a copy nobody closes). */
static void tokens_add(ms__token *t) {
  t->prev = NULL;
  t->next = tokens;
  if (tokens != NULL)
    tokens->prev = t;
  tokens = t;
}

/* 0 if t was still held (and is now off the list), -1 if a fork() already
 * closed it in this process. */
static int tokens_remove(ms__token *t) {
  (void)pthread_mutex_lock(&tokens_lock);
  int held = t->handle >= 0 || t->aux >= 0;
  if (held) {
    if (t->prev != NULL)
      t->prev->next = t->next;
    else
      tokens = t->next;
    if (t->next != NULL)
      t->next->prev = t->prev;
  }
  (void)pthread_mutex_unlock(&tokens_lock);
  return held ? 0 : -1;
}

unsigned ms__fork_epoch(void) {
  return atomic_load_explicit(&fork_epoch, memory_order_relaxed);
}

int ms__ns_open(const char *dir, ms__ns **out) {
  uv_once(&fork_once, fork_hook);
  size_t len = dir != NULL ? strlen(dir) : 0;
  ms__ns *ns = ms__malloc(sizeof(*ns) + len + 1);
  if (ns == NULL)
    return MS_ENOMEM;
  ns->dirfd = -1;
  memcpy(ns->dir, dir != NULL ? dir : "", len + 1);
  if (dir != NULL) {
    ns->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (ns->dirfd < 0) {
      int rc = errno == ENOTDIR ? MS_EINVAL : ms__posix_err(errno);
      ms__free(ns);
      return rc;
    }
  }
  *out = ns;
  return 0;
}

void ms__ns_close(ms__ns *ns) {
  if (ns == NULL)
    return;
  if (ns->dirfd >= 0)
    close(ns->dirfd);
  ms__free(ns);
}

static int ns_open_fd(const ms__ns *ns, const char *name, int flags,
                      mode_t mode) {
  flags |= O_CLOEXEC | O_NOFOLLOW;
  if (ns->dirfd >= 0)
    return openat(ns->dirfd, name, flags, mode);
  char path[256];
  if (snprintf(path, sizeof(path), "/%s", name) >= (int)sizeof(path)) {
    errno = ENAMETOOLONG;
    return -1;
  }
  return shm_open(path, flags, mode);
}

static int ns_unlink(const ms__ns *ns, const char *name) {
  if (ns->dirfd >= 0)
    return unlinkat(ns->dirfd, name, 0);
  char path[256];
  (void)snprintf(path, sizeof(path), "/%s", name);
  return shm_unlink(path);
}

int ms__ns_space(const ms__ns *ns, uint64_t *free_bytes, uint64_t *total) {
  struct statvfs st;
  int rc = ns->dirfd >= 0 ? fstatvfs(ns->dirfd, &st) : statvfs(SHM_DIR, &st);
  if (rc != 0)
    return ms__posix_err(errno);
  *free_bytes = (uint64_t)st.f_bavail * st.f_frsize;
  *total = (uint64_t)st.f_blocks * st.f_frsize;
  return 0;
}

int ms__ns_list(const ms__ns *ns, const char *prefix,
                int (*fn)(const char *name, void *user), void *user) {
  DIR *d = NULL;
  if (ns->dirfd >= 0) {
    int fd = openat(ns->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    d = fd >= 0 ? fdopendir(fd) : NULL;
    if (d == NULL && fd >= 0)
      close(fd);
  } else {
    d = opendir(SHM_DIR);
  }
  if (d == NULL)
    return errno == ENOENT ? MS_ENOTSUP : ms__posix_err(errno);
  size_t plen = strlen(prefix);
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (strncmp(e->d_name, prefix, plen) == 0 && fn(e->d_name, user) != 0)
      break;
  closedir(d);
  return 0;
}

int ms__region_create(const ms__ns *ns, const char *name, size_t size,
                      ms__region *out) {
  if (size == 0 || (off_t)size < 0)
    return MS_EINVAL;
  int fd = ns_open_fd(ns, name, O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0)
    return ms__posix_err(errno);
  /* Reserve the pages now: a full tmpfs fails here, not with SIGBUS at
   * first touch. */
  void *base = MAP_FAILED;
  int e = ms__posix_reserve(fd, size);
  if (e == 0)
    e = ms__posix_map_new(fd, size, &base);
  close(fd);
  if (e != 0) {
    (void)ns_unlink(ns, name);
    return ms__posix_err(e);
  }
  /* the mapping keeps the object alive; no fd kept */
  ms__posix_region_set(out, base, size, -1, 0);
  return 0;
}

int ms__region_open(const ms__ns *ns, const char *name, size_t min_size,
                    int64_t allowed_uid, ms__region *out, const char **why) {
  *why = NULL;
  int fd = ns_open_fd(ns, name, O_RDWR, 0);
  if (fd < 0)
    return ms__posix_err(errno);
  struct stat st;
  int rc = ms__posix_check_object(fd, min_size, allowed_uid, &st, why);
  if (rc != 0) {
    close(fd);
    return rc;
  }
  size_t size = (size_t)st.st_size;
  void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = base == MAP_FAILED ? errno : 0;
  close(fd);
  if (e != 0)
    return ms__posix_err(e);
  /* the mapping keeps the object alive; no fd kept */
  ms__posix_region_set(out, base, size, -1, 0);
  return 0;
}

int ms__posix_check_object(int fd, size_t min_size, int64_t allowed_uid,
                           struct stat *out, const char **why) {
  struct stat st;
  int rc = 0;
  *why = NULL;
  if (fstat(fd, &st) != 0) {
    rc = ms__posix_err(errno);
  } else if (!S_ISREG(st.st_mode) || st.st_size <= 0 ||
             (uint64_t)st.st_size < min_size ||
             (uint64_t)st.st_size > SIZE_MAX) {
    rc = MS_EBADREGION;
    *why = "not a regular object of a plausible size";
  } else if (st.st_uid != geteuid() &&
             (allowed_uid < 0 ||
              (uint64_t)st.st_uid != (uint64_t)allowed_uid)) {
    rc = MS_EACCES;
    *why = "owned by another user (see the allowed_uid option)";
  } else if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    rc = MS_EACCES;
    *why = "writable by group or others";
  } else if ((uint64_t)st.st_blocks * 512 < (uint64_t)st.st_size) {
    /* Holes would fault (SIGBUS) on a full tmpfs when read. */
    rc = MS_EBADREGION;
    *why = "not fully backed (sparse)";
  }
  if (rc == 0)
    *out = st;
  return rc;
}

int ms__region_protect(ms__region *r, size_t from, int writable) {
  if (from >= r->size)
    return 0;
  int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  return mprotect((char *)r->base + from, r->size - from, prot) == 0
             ? 0
             : ms__posix_err(errno);
}

void ms__region_unmap(ms__region *r) {
  if (r->base != NULL) {
    (void)munmap(r->base, r->size);
    if (r->handle >= 0) /* a memfd creator's descriptor */
      close((int)r->handle);
  }
  r->base = NULL;
  r->size = 0;
  r->handle = -1;
}

int ms__region_freeze(ms__region *r, size_t from) {
  int rc = ms__region_protect(r, from, 0);
  if (rc != 0 || r->handle < 0)
    return rc; /* a named object cannot be sealed: the mapping only */
  /* A memfd: no process may map it writable or write() it any more.  Our
   * own read-write mapping of the header stays (the holder slots), and the
   * data part of it is read-only now. */
  if (fcntl((int)r->handle, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) != 0) {
    rc = ms__posix_err(errno);
    (void)ms__region_protect(r, from, 1);
    return rc == MS_EACCES ? MS_EIO : rc;
  }
  (void)fcntl((int)r->handle, F_ADD_SEALS, F_SEAL_SEAL);
  return 0;
}

int ms__region_unlink(const ms__ns *ns, const char *name) {
  return ns_unlink(ns, name) == 0 ? 0 : ms__posix_err(errno);
}

/*
 * Tokens have two witnesses, both dropped by the kernel when the holder
 * dies: a flock()ed file in the namespace and a bound abstract unix socket
 * "\0<name>" (no file anywhere; per network namespace).  A token is alive
 * iff either is held, so a holder with the file alone (a named allocator in
 * another network namespace) and one with the socket alone (a memfd
 * allocator, MS__TOKEN_NOFILE) are both seen alive by every observer.
 *
 * The file: the creator makes it (O_EXCL), takes an exclusive flock, gives
 * it one byte, then checks that the name still leads to its own object.
 * Whoever can take the lock of a token file (empty or not) while its socket
 * is unbound knows that no process holds it, and may unlink it; a creator
 * whose fresh file was unlinked that way sees it in the final check and
 * starts over.  The socket is bound first, so a creator mid-setup is
 * already alive.
 */
static int same_object(const ms__ns *ns, const char *name, int fd) {
  struct stat a, b;
  int fd2 = ns_open_fd(ns, name, O_RDONLY, 0);
  int same = fd2 >= 0 && fstat(fd, &a) == 0 && fstat(fd2, &b) == 0 &&
             a.st_dev == b.st_dev && a.st_ino == b.st_ino;
  if (fd2 >= 0)
    close(fd2);
  return same;
}

static socklen_t token_addr(const char *name, struct sockaddr_un *a) {
  memset(a, 0, sizeof(*a));
  a->sun_family = AF_UNIX;
  size_t n = strlen(name);
  if (n > sizeof(a->sun_path) - 1)
    n = sizeof(a->sun_path) - 1;
  memcpy(a->sun_path + 1, name, n); /* sun_path[0] = 0: abstract */
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

/* A socket bound to the token's abstract address, or -1 (errno set;
 * EADDRINUSE: another holder has it). */
static int token_bind(const char *name) {
  struct sockaddr_un a;
  socklen_t len = token_addr(name, &a);
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s >= 0 && bind(s, (struct sockaddr *)&a, len) != 0) {
    int e = errno;
    close(s);
    errno = e;
    s = -1;
  }
  return s;
}

/* 1 if some process has the token's socket bound (or we cannot tell). */
static int token_bound(const char *name) {
  struct sockaddr_un a;
  socklen_t len = token_addr(name, &a);
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0)
    return 1; /* out of descriptors: not ours to judge */
  int rc = connect(s, (struct sockaddr *)&a, len);
  int e = errno;
  close(s);
  return rc == 0 || e != ECONNREFUSED;
}

int ms__token_acquire(const ms__ns *ns, const char *name, unsigned flags,
                      ms__token *out) {
  (void)pthread_mutex_lock(&tokens_lock);
  int rc = 0, fd = -1;
  int s = token_bind(name);
  if (s < 0)
    rc = errno == EADDRINUSE ? MS_EIO : ms__posix_err(errno);
  if (rc == 0 && !(flags & MS__TOKEN_NOFILE)) {
    fd = ns_open_fd(ns, name, O_RDWR | O_CREAT | O_EXCL, 0600);
    rc = fd < 0 ? ms__posix_err(errno) : 0;
    errno = 0;
    if (fd >= 0 && (flock(fd, LOCK_EX | LOCK_NB) != 0 ||
                    ftruncate(fd, 1) != 0 || !same_object(ns, name, fd))) {
      rc = errno != 0 ? ms__posix_err(errno) : MS_EIO;
      rc = rc == MS_ENOENT ? MS_EIO : rc; /* swept mid-setup: try again */
      close(fd);
      fd = -1;
    }
  }
  if (rc == 0) {
    out->handle = fd;
    out->aux = s;
    tokens_add(out);
  } else if (s >= 0) {
    close(s);
  }
  (void)pthread_mutex_unlock(&tokens_lock);
  return rc;
}

void ms__token_release(const ms__ns *ns, const char *name, ms__token *t) {
  if (tokens_remove(t) != 0)
    return; /* inherited and already closed: the parent's to remove */
  if (t->handle >= 0) {
    (void)ns_unlink(ns, name);
    close((int)t->handle);
  }
  if (t->aux >= 0)
    close((int)t->aux);
  t->handle = t->aux = -1;
}

void ms__token_forget(ms__token *t) {
  if (tokens_remove(t) == 0) { /* the lock stays with the parent's copy */
    if (t->handle >= 0)
      close((int)t->handle);
    if (t->aux >= 0)
      close((int)t->aux);
  }
  t->handle = t->aux = -1;
}

int ms__token_alive(const ms__ns *ns, const char *name) {
  int fd = ns_open_fd(ns, name, O_RDWR, 0);
  if (fd < 0 && errno != ENOENT)
    return 1; /* unreadable (another user's): not ours to judge */
  if (fd < 0)
    return token_bound(name);
  int alive = flock(fd, LOCK_EX | LOCK_NB) != 0 || token_bound(name);
  if (!alive) /* its holder is gone, or died before locking it */
    (void)ns_unlink(ns, name);
  close(fd); /* also drops our lock */
  return alive;
}

int ms__random(void *buf, size_t len) {
  unsigned char *p = buf;
#if defined(__linux__)
  while (len > 0) {
    ssize_t n = getrandom(p, len, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    p += n;
    len -= (size_t)n;
  }
  if (len == 0)
    return 0;
#endif
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return MS_EIO;
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n <= 0) {
      close(fd);
      return MS_EIO;
    }
    p += n;
    len -= (size_t)n;
  }
  close(fd);
  return 0;
}

size_t ms__page_size(void) {
  long ps = sysconf(_SC_PAGESIZE);
  return ps > 0 ? (size_t)ps : 4096;
}

int ms__region_link(const ms__ns *ns, const char *from, const char *to) {
  int rc;
  if (ns->dirfd >= 0) {
    rc = linkat(ns->dirfd, from, ns->dirfd, to, 0);
  } else {
    char a[256], b[256];
    if (snprintf(a, sizeof(a), SHM_DIR "/%s", from) >= (int)sizeof(a) ||
        snprintf(b, sizeof(b), SHM_DIR "/%s", to) >= (int)sizeof(b))
      return MS_EINVAL;
    rc = link(a, b);
  }
  return rc == 0 ? 0 : errno == EEXIST ? MS_EBUSY : ms__posix_err(errno);
}
