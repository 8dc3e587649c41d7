/* The worker's endpoint on POSIX: a Unix domain socket in a private
 * directory, and the peer's uid from the kernel. */
#define _GNU_SOURCE /* SO_PEERCRED, struct ucred */
#include "internal/worker.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

size_t ms__ep_max(void) {
  struct sockaddr_un a;
  return sizeof(a.sun_path) - 1;
}

/* 1 if something accepts connections on the socket at path. */
static int socket_live(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_un a;
  memset(&a, 0, sizeof(a));
  a.sun_family = AF_UNIX;
  memcpy(a.sun_path, path, strlen(path) + 1);
  int rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
  int e = errno;
  close(fd);
  if (rc == 0 || e == EAGAIN) /* EAGAIN: live, its backlog is full */
    return 1;
  return e == ECONNREFUSED ? 0 : -1;
}

int ms__ep_prepare(const char *ep, char *msg, size_t cap) {
  char dir[512];
  const char *slash = strrchr(ep, '/');
  if (slash == NULL) {
    memcpy(dir, ".", 2);
  } else if (slash == ep) {
    memcpy(dir, "/", 2);
  } else {
    size_t n = (size_t)(slash - ep);
    if (n >= sizeof(dir))
      return MS_ERANGE;
    memcpy(dir, ep, n);
    dir[n] = '\0';
  }
  struct stat st;
  if (lstat(dir, &st) != 0) {
    if (errno != ENOENT || mkdir(dir, 0700) != 0) {
      int e = errno;
      (void)snprintf(msg, cap, "cannot create %s: %s", dir, strerror(e));
      return e == ENOENT ? MS_ENOENT : e == EACCES ? MS_EACCES : MS_EIO;
    }
    if (lstat(dir, &st) != 0)
      return MS_EIO;
  }
  if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() ||
      (st.st_mode & 022) != 0) {
    (void)snprintf(msg, cap,
                   "%s must be a directory of this user, not writable by "
                   "group or others",
                   dir);
    return MS_EACCES;
  }
  if (lstat(ep, &st) != 0)
    return errno == ENOENT ? 0 : MS_EIO;
  if (!S_ISSOCK(st.st_mode)) {
    (void)snprintf(msg, cap, "%s exists and is not a socket", ep);
    return MS_EACCES;
  }
  int live = socket_live(ep);
  if (live != 0) {
    (void)snprintf(msg, cap, "a live worker listens on %s", ep);
    return live > 0 ? MS_EBUSY : MS_EIO;
  }
  if (unlink(ep) != 0 && errno != ENOENT) { /* stale: nobody accepts */
    (void)snprintf(msg, cap, "cannot remove the stale %s", ep);
    return MS_EACCES;
  }
  return 0;
}

int ms__ep_secure(const char *ep, uint64_t *ino) {
  struct stat st;
  if (chmod(ep, 0600) != 0 || lstat(ep, &st) != 0)
    return MS_EIO;
  *ino = (uint64_t)st.st_ino;
  return 0;
}

void ms__ep_remove(const char *ep, uint64_t ino) {
  struct stat st;
  if (lstat(ep, &st) == 0 && S_ISSOCK(st.st_mode) && (uint64_t)st.st_ino == ino)
    (void)unlink(ep);
}

int ms__peer_check(uv_pipe_t *p, int64_t allowed_uid) {
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)p, &fd) != 0)
    return MS_EIO;
  struct ucred cr;
  socklen_t len = sizeof(cr);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0)
    return MS_EIO;
  if (cr.uid == geteuid() || (allowed_uid >= 0 && cr.uid == allowed_uid))
    return 0;
  return MS_EACCES;
}

int ms__conn_fd(uv_pipe_t *p) {
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)p, &fd) != 0)
    return -1;
  return fd;
}

long ms__conn_send(int fd, const void *p, size_t len) {
#ifdef MSG_NOSIGNAL
  int flags = MSG_NOSIGNAL | MSG_DONTWAIT;
#else
  int flags = MSG_DONTWAIT; /* libuv's sockets are non-blocking anyway */
#endif
  for (;;) {
    ssize_t n = send(fd, p, len, flags);
    if (n >= 0)
      return (long)n;
    if (errno == EINTR)
      continue;
    return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
  }
}
