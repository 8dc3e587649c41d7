/* Shared by the POSIX platform files (shm_region_linux.c,
 * shm_region_memfd.c): errno to MS_E* and the checks an object passes
 * before any byte of it is mapped. */
#ifndef MS_INTERNAL_POSIX_H
#define MS_INTERNAL_POSIX_H

#include "internal/common.h"

#include <errno.h>
#include <sys/stat.h>

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

#endif
