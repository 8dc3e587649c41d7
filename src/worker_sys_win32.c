/* The worker's endpoint on Windows: a named pipe.  Pipes die with their
 * last handle, so there is no stale file to replace (a live name is
 * refused by bind); the peer is checked by its process token's user SID. */
#include "internal/worker.h"

#include <windows.h>

#include <stdio.h>
#include <string.h>

size_t ms__ep_max(void) { return 256; }

int ms__ep_prepare(const char *ep, char *msg, size_t cap) {
  if (strncmp(ep, "\\\\.\\pipe\\", 9) != 0 || ep[9] == '\0') {
    (void)snprintf(msg, cap, "a pipe name is \\\\.\\pipe\\NAME");
    return MS_EINVAL;
  }
  /* A live pipe of that name is refused, never shared: bind's
   * FILE_FLAG_FIRST_PIPE_INSTANCE says so too, but not every
   * implementation of the API enforces it (Wine does not). */
  if (WaitNamedPipeA(ep, 1) || GetLastError() != ERROR_FILE_NOT_FOUND) {
    (void)snprintf(msg, cap, "a live worker listens on %s", ep);
    return MS_EBUSY;
  }
  return 0;
}

int ms__ep_secure(const char *ep, uint64_t *ino) {
  (void)ep;
  *ino = 0;
  return 0;
}

void ms__ep_remove(const char *ep, uint64_t ino) { (void)ep, (void)ino; }

/* The user SID of a process token, in buf. */
static int token_user(HANDLE process, unsigned char *buf, DWORD cap) {
  HANDLE tok;
  if (!OpenProcessToken(process, TOKEN_QUERY, &tok))
    return -1;
  DWORD n = 0;
  BOOL ok = GetTokenInformation(tok, TokenUser, buf, cap, &n);
  CloseHandle(tok);
  return ok ? 0 : -1;
}

int ms__peer_check(uv_pipe_t *p, int64_t allowed_uid) {
  (void)allowed_uid;
  uv_os_fd_t h;
  if (uv_fileno((uv_handle_t *)p, &h) != 0)
    return MS_EIO;
  ULONG pid = 0;
  if (!GetNamedPipeClientProcessId(h, &pid))
    return MS_EIO;
  HANDLE proc = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, pid);
  if (proc == NULL)
    return MS_EIO;
  union {
    TOKEN_USER tu;
    unsigned char b[256];
  } peer, self;
  int rc = token_user(proc, peer.b, sizeof(peer.b));
  CloseHandle(proc);
  if (rc != 0 || token_user(GetCurrentProcess(), self.b, sizeof(self.b)) != 0)
    return MS_EIO;
  return EqualSid(peer.tu.User.Sid, self.tu.User.Sid) ? 0 : MS_EACCES;
}

/* A named pipe's writes stay with libuv (its overlapped I/O owns the
 * handle): responses go through the loop. */
int ms__conn_fd(uv_pipe_t *p) {
  (void)p;
  return -1;
}

long ms__conn_send(int fd, const void *p, size_t len) {
  (void)fd;
  (void)p;
  (void)len;
  return -1;
}
