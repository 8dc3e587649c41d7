/* Channel wait/wake, Linux: futexes on 32-bit words in the ring itself
 * (FUTEX_WAIT / FUTEX_WAKE without _PRIVATE: the words are in a shared
 * mapping, so the kernel keys them by the object, across processes), and
 * a non-blocking pipe as the pollable notifier of ms_channel_fd(). */
#define _GNU_SOURCE /* pipe2, sched_getcpu */
#include "internal/region.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct ms__waitset {
  int unused;
};

int ms__waitset_open(const ms__ns *ns, const char *ring, unsigned n,
                     ms__waitset **out) {
  (void)ns, (void)ring, (void)n;
  *out = ms__calloc(1, sizeof(**out));
  return *out != NULL ? 0 : MS_ENOMEM;
}

void ms__waitset_close(ms__waitset *ws) { ms__free(ws); }

void ms__wait(ms__waitset *ws, unsigned idx, _Atomic uint32_t *word,
              uint32_t expect, uint32_t timeout_ms) {
  (void)ws, (void)idx;
  struct timespec ts = {(time_t)(timeout_ms / 1000),
                        (long)(timeout_ms % 1000) * 1000000L};
  /* EAGAIN (changed), EINTR, ETIMEDOUT: the caller re-checks. */
  (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expect, &ts, NULL, 0);
}

void ms__wake(ms__waitset *ws, unsigned idx, _Atomic uint32_t *word) {
  (void)ws, (void)idx;
  (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL,
                0);
}

int ms__notify_open(intptr_t *rd, intptr_t *wr) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0)
    return errno == EMFILE || errno == ENFILE ? MS_EIO : MS_ENOMEM;
  *rd = fds[0];
  *wr = fds[1];
  return 0;
}

void ms__notify_signal(intptr_t wr) {
  const char b = 1;
  ssize_t n; /* a full pipe is already readable: nothing lost */
  do
    n = write((int)wr, &b, 1);
  while (n < 0 && errno == EINTR);
}

void ms__notify_drain(intptr_t rd) {
  char buf[64];
  while (read((int)rd, buf, sizeof(buf)) > 0) {
  }
}

void ms__notify_close(intptr_t rd, intptr_t wr) {
  if (rd >= 0)
    close((int)rd);
  if (wr >= 0)
    close((int)wr);
}

uint32_t ms__cpu_now(void) {
  int c = sched_getcpu(); /* glibc: the rseq area's cpu_id, no syscall */
  return c >= 0 ? (uint32_t)c + 1 : 0;
}
