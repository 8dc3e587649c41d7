/* Shared by the POSIX platform files (shm_region_linux.c,
 * shm_region_memfd.c): errno to MS_E*, the checks an object passes
 * before any byte of it is mapped, and backing and mapping a new one. */
#ifndef MS_INTERNAL_POSIX_H
#define MS_INTERNAL_POSIX_H

#include "internal/common.h"
#include "internal/region.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>

#ifndef MAP_POPULATE
#define MAP_POPULATE 0
#endif

static inline int ms__posix_err(int e) {
  switch (e) {
  case ENOENT:
    return MS_ENOENT;
  case EACCES:
  case EPERM:
  case EROFS:
    return MS_EACCES;
  case ENOSPC:
  case EFBIG:
  case EDQUOT:
    return MS_ENOSPC;
  case ENOMEM:
    return MS_ENOMEM;
  case ENOSYS:
  case EOPNOTSUPP:
    return MS_ENOTSUP;
  case ELOOP:
  case ENAMETOOLONG:
  case EINVAL:
    return MS_EINVAL;
  default:
    return MS_EIO;
  }
}

/* fstat()s fd and checks it as ms__region_open() documents: a regular
 * object of a plausible size (>= min_size), owned by the effective user or
 * allowed_uid, not writable by group or others, fully backed.  0 and *st,
 * or the error with *why naming the failed check. */
int ms__posix_check_object(int fd, size_t min_size, int64_t allowed_uid,
                           struct stat *st, const char **why);

/* Reserves fd's first size bytes of backing store now: a full tmpfs or
 * memory fails here, not with SIGBUS at first touch.  0 or the error
 * (an errno value). */
static inline int ms__posix_reserve(int fd, size_t size) {
  int e;
  do /* posix_fallocate returns the error, not errno */
    e = posix_fallocate(fd, 0, (off_t)size);
  while (e == EINTR);
  return e;
}

/* Maps fd's first size bytes shared, read-write and populated, into
 * *base.  0, or the errno value (*base is then MAP_FAILED). */
static inline int ms__posix_map_new(int fd, size_t size, void **base) {
  *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
               fd, 0);
  return *base == MAP_FAILED ? errno : 0;
}

/* Fills *out for a mapped region. */
static inline void ms__posix_region_set(ms__region *out, void *base,
                                        size_t size, intptr_t handle,
                                        int readonly) {
  out->base = base;
  out->size = size;
  out->handle = handle;
  out->readonly = readonly;
}

#endif
