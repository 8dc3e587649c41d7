/* Platform layer, Linux: anonymous regions, sealed memfds (the memfd
 * backend; region.h has the contract).  The creator keeps the memfd open
 * for the region's life; another process duplicates it with pidfd_getfd()
 * or, where that is refused, reopens it as /proc/<pid>/fd/<fd>, and closes
 * it again once mapped (nothing is pre-faulted on that side: the region is
 * backed and sealed against shrinking, so a fault cannot SIGBUS, and the
 * consumer faults in only the pages it reads).  Seals:
 * F_SEAL_SHRINK|F_SEAL_GROW at creation, so no process can truncate the region
 * under a consumer (no SIGBUS); F_SEAL_FUTURE_WRITE|F_SEAL_SEAL when frozen
 * (ms__region_freeze, shm_region_linux.c).  F_SEAL_SEAL is not added at
 * creation because a freeze needs to add a seal later: a same-user process
 * can at worst add a write seal itself, which makes consumers map the
 * region read-only (a denial of service it could cause anyway by writing
 * to the region, which it can reach the same way). */
#define _GNU_SOURCE /* memfd_create, MAP_POPULATE */
#include "internal/posix.h"
#include "internal/region.h"

#include <uv.h>

#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef F_SEAL_FUTURE_WRITE /* Linux 5.1; older headers */
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

#define SEALS_SIZE (F_SEAL_SHRINK | F_SEAL_GROW)
#define SEALS_WRITE (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)

int ms__region_create_anon(size_t size, ms__region *out, int64_t *pid,
                           int64_t *fdout) {
  if (size == 0 || (off_t)size < 0)
    return MS_EINVAL;
  int fd = memfd_create("modelshare", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0)
    return ms__posix_err(errno);
  /* memfds are created 0777: consumers check "not writable by group or
   * others", as for named regions. */
  int e = fchmod(fd, 0600) == 0 ? 0 : errno;
  if (e == 0) /* backed now: out of memory is an error here, not SIGBUS */
    e = ms__posix_reserve(fd, size);
  if (e == 0 && fcntl(fd, F_ADD_SEALS, SEALS_SIZE) != 0)
    e = errno;
  void *base = MAP_FAILED;
  if (e == 0)
    e = ms__posix_map_new(fd, size, &base);
  if (e != 0) {
    close(fd);
    return ms__posix_err(e);
  }
  /* fd kept: it is how other processes reach the region */
  ms__posix_region_set(out, base, size, fd, 0);
  *pid = (int64_t)getpid();
  *fdout = fd;
  return 0;
}

/* pidfd_getfd() (Linux 5.6) duplicates process pid's descriptor fdnum:
 * one syscall pair, no path walk through /proc, and nothing is opened, so a
 * reused number (a device, a FIFO) cannot be touched.  It needs
 * PTRACE_MODE_ATTACH (/proc needs READ), which Yama's ptrace_scope >= 1
 * refuses outside the creator's ancestry; seccomp policies and old kernels
 * refuse the call.  The caller then reopens through /proc, and once that
 * worked where pidfd_getfd was refused, this process stops trying it.
 * The descriptor, or -1: the process or its descriptor is gone (*gone), or
 * the call was refused (*refused), or another error (use /proc). */
static atomic_int getfd_refused;

static int fd_by_getfd(int64_t pid, int64_t fdnum, int *gone, int *refused) {
  *gone = *refused = 0;
#if defined(SYS_pidfd_open) && defined(SYS_pidfd_getfd)
  if (atomic_load_explicit(&getfd_refused, memory_order_relaxed))
    return -1;
  int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0u);
  int fd =
      pidfd < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, pidfd, (int)fdnum, 0u);
  int e = fd < 0 ? errno : 0;
  if (pidfd >= 0)
    close(pidfd);
  if (fd >= 0)
    return fd;
  /* ESRCH: no such process (pidfd_open) or it is exiting (getfd);
   * EBADF: it has no such descriptor (getfd). */
  if (e == ESRCH || (pidfd >= 0 && e == EBADF))
    *gone = 1;
  else
    *refused = e == EPERM || e == EACCES || e == ENOSYS;
  return -1;
#else
  (void)pid, (void)fdnum;
  return -1;
#endif
}

/* The same through /proc/<pid>/fd/<fdnum>: a new open file description. */
static int fd_by_proc(int64_t pid, int64_t fdnum, const char **why) {
  char path[64];
  (void)snprintf(path, sizeof(path), "/proc/%lld/fd/%lld", (long long)pid,
                 (long long)fdnum);
  /* What the number leads to now, before opening it: a reused number may
   * be a pipe, a socket or a device, which open() must not touch. */
  struct stat st;
  if (stat(path, &st) != 0)
    return errno == ENOENT || errno == ESRCH ? MS_ENOENT : ms__posix_err(errno);
  if (!S_ISREG(st.st_mode)) {
    *why = "the process's descriptor is not a region any more";
    return MS_ENOENT;
  }
  int fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0)
    return errno == ENOENT ? MS_ENOENT : ms__posix_err(errno);
  return fd;
}

int ms__region_open_anon(int64_t pid, int64_t fdnum, size_t min_size,
                         int64_t allowed_uid, ms__region *out,
                         const char **why) {
  *why = NULL;
  int gone = 0, refused = 0;
  int fd = fd_by_getfd(pid, fdnum, &gone, &refused);
  if (gone)
    return MS_ENOENT;
  if (fd < 0) {
    fd = fd_by_proc(pid, fdnum, why);
    if (fd >= 0 && refused)
      atomic_store_explicit(&getfd_refused, 1, memory_order_relaxed);
  }
  if (fd < 0)
    return fd;
  /* The seals first: they also tell a duplicated descriptor that is no
   * memfd (a pipe, a socket, a device: EINVAL) from a region. */
  struct stat st;
  int rc = 0, seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) { /* not a memfd (nor any shmem file) */
    rc = MS_ENOENT;
    *why = "the process's descriptor is not a memfd any more";
  } else if ((seals & SEALS_SIZE) != SEALS_SIZE && (seals & F_SEAL_SEAL)) {
    /* Sealed against sealing without the size seals: a shmem file that
     * never allowed sealing (a shm_open region, a token file on tmpfs: the
     * kernel reports F_SEAL_SEAL for those), or a memfd sealed that way by
     * someone else.  Never one of our regions (they get the size seals
     * before their descriptor exists, F_SEAL_SEAL only after them), so the
     * number was reused: the region it named is gone. */
    rc = MS_ENOENT;
    *why = "the process's descriptor is not a memfd region any more";
  } else if ((seals & SEALS_SIZE) != SEALS_SIZE) {
    rc = MS_EBADREGION;
    *why = "not sealed against shrinking and growing";
  } else {
    rc = ms__posix_check_object(fd, min_size, allowed_uid, &st, why);
  }
  void *base = MAP_FAILED;
  int ro = rc == 0 && (seals & SEALS_WRITE) != 0;
  if (rc == 0) {
    base = mmap(NULL, (size_t)st.st_size,
                ro ? PROT_READ : PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
      rc = ms__posix_err(errno);
  }
  close(fd); /* the mapping keeps the object alive */
  if (rc != 0)
    return rc;
  ms__posix_region_set(out, base, (size_t)st.st_size, -1, ro);
  return 0;
}

/* Whether another process can reopen our memfds: a forked child opens
 * /proc/<our pid>/fd/<n> and reads the first bytes.  Hardened systems
 * (no /proc, hidepid, an LSM policy) refuse it.  /proc, not
 * pidfd_getfd: consumers fall back to it, and a child would pass Yama's
 * ptrace_scope 1 where an unrelated consumer does not.  The child runs
 * async-signal-safe calls only (fork() from a threaded process). */
static int probe_made, probe_reopen;
static uv_once_t probe_once = UV_ONCE_INIT;

static void probe(void) {
  ms__region r;
  int64_t pid = 0, fd = -1;
  if (ms__region_create_anon((size_t)ms__page_size(), &r, &pid, &fd) != 0)
    return;
  probe_made = 1;
  static const char magic[8] = "msprobe";
  memcpy(r.base, magic, sizeof(magic));
  char path[64];
  (void)snprintf(path, sizeof(path), "/proc/%lld/fd/%lld", (long long)pid,
                 (long long)fd);
  pid_t child = fork();
  if (child == 0) {
    char buf[8];
    int cfd = open(path, O_RDONLY | O_CLOEXEC);
    int ok = cfd >= 0 &&
             pread(cfd, buf, sizeof(buf), 0) == (ssize_t)sizeof(buf) &&
             memcmp(buf, magic, sizeof(buf)) == 0;
    _exit(ok ? 0 : 1);
  }
  int st = 0;
  if (child > 0) {
    pid_t w;
    do
      w = waitpid(child, &st, 0);
    while (w < 0 && errno == EINTR);
    probe_reopen = w == child && WIFEXITED(st) && WEXITSTATUS(st) == 0;
  }
  ms__region_unmap(&r);
}

int ms__anon_probe(int *made) {
  uv_once(&probe_once, probe);
  *made = probe_made;
  return probe_reopen;
}
