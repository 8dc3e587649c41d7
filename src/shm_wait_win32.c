/* Channel wait/wake, Win32: one named auto-reset event per word index,
 * "Local\<ring>.w<i>", owner-only.  WaitOnAddress is process-local, so it
 * cannot serve.  An event stays signalled until one wait consumes it, so a
 * wake-up that comes before the wait is not lost; a stale one only makes a
 * wait return early, and every caller re-checks its condition.  There is
 * no pollable notifier (uv_poll takes sockets only on Windows). */
#include "internal/region.h"
#include "internal/win32.h"

#include <windows.h>

#include <sddl.h>

#include <stdio.h>

struct ms__waitset {
  unsigned n;
  HANDLE ev[];
};

void ms__waitset_close(ms__waitset *ws) {
  if (ws == NULL)
    return;
  for (unsigned i = 0; i < ws->n; i++)
    if (ws->ev[i] != NULL)
      CloseHandle(ws->ev[i]);
  ms__free(ws);
}

int ms__waitset_open(const ms__ns *ns, const char *ring, unsigned n,
                     ms__waitset **out) {
  (void)ns;
  ms__waitset *ws = ms__calloc(1, sizeof(*ws) + n * sizeof(HANDLE));
  if (ws == NULL)
    return MS_ENOMEM;
  ws->n = n;
  SECURITY_ATTRIBUTES sa;
  PSECURITY_DESCRIPTOR sd = NULL;
  int rc = ms__win32_owner_only(&sa, &sd);
  for (unsigned i = 0; rc == 0 && i < n; i++) {
    char buf[160];
    wchar_t w[160];
    int len = snprintf(buf, sizeof(buf), "Local\\%s.w%u", ring, i);
    if (len <= 0 || len >= (int)sizeof(buf)) {
      rc = MS_EINVAL;
      break;
    }
    for (int k = 0; k <= len; k++)
      w[k] = (wchar_t)(unsigned char)buf[k];
    ws->ev[i] = CreateEventW(&sa, FALSE, FALSE, w); /* or opens it */
    if (ws->ev[i] == NULL)
      rc = GetLastError() == ERROR_ACCESS_DENIED ? MS_EACCES : MS_EIO;
  }
  if (sd != NULL)
    LocalFree(sd);
  if (rc != 0) {
    ms__waitset_close(ws);
    return rc;
  }
  *out = ws;
  return 0;
}

void ms__wait(ms__waitset *ws, unsigned idx, _Atomic uint32_t *word,
              uint32_t expect, uint32_t timeout_ms) {
  if (idx >= ws->n || atomic_load(word) != expect)
    return;
  (void)WaitForSingleObject(ws->ev[idx], timeout_ms);
}

void ms__wake(ms__waitset *ws, unsigned idx, _Atomic uint32_t *word) {
  (void)word;
  if (idx < ws->n)
    (void)SetEvent(ws->ev[idx]);
}

int ms__notify_open(intptr_t *rd, intptr_t *wr) {
  (void)rd, (void)wr;
  return MS_ENOTSUP;
}
void ms__notify_signal(intptr_t wr) { (void)wr; }
void ms__notify_drain(intptr_t rd) { (void)rd; }
void ms__notify_close(intptr_t rd, intptr_t wr) { (void)rd, (void)wr; }

uint32_t ms__cpu_now(void) {
  return (uint32_t)GetCurrentProcessorNumber() + 1; /* in its group */
}
