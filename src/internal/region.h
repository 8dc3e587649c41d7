/*
 * The platform layer: named shared-memory regions and liveness tokens.
 * One implementation per platform (shm_region_linux.c, shm_region_win32.c);
 * the portable tensor and pool code uses nothing else from the OS.
 *
 * Names are plain [A-Za-z0-9_.-] strings without separators; the caller
 * validates them.  Every function returns 0 or a negative MS_E* code.
 */
#ifndef MS_INTERNAL_REGION_H
#define MS_INTERNAL_REGION_H

#include "internal/common.h"

/* Where regions live: shm_open()'s namespace, or a directory. */
typedef struct ms__ns ms__ns;

int ms__ns_open(const char *dir, ms__ns **out);
void ms__ns_close(ms__ns *ns);
/* Free and total bytes of the backing store. */
int ms__ns_space(const ms__ns *ns, uint64_t *free_bytes, uint64_t *total);
/* Calls fn for every object whose name starts with prefix; stops when fn
 * returns non-zero.  MS_ENOTSUP where the namespace cannot be listed
 * (Win32): sweeps then cover only the regions the allocator knows. */
int ms__ns_list(const ms__ns *ns, const char *prefix,
                int (*fn)(const char *name, void *user), void *user);

typedef struct ms__region {
  void *base;
  size_t size;
  intptr_t handle; /* the platform's handle on the object, if it keeps one
                      (a memfd creator's fd; valid while base != NULL) */
  int readonly;    /* sealed against writes: mapped read-only, header too */
} ms__region;

/* Creates a new region (exclusive, owner-only), reserves its backing store
 * (full store: MS_ENOSPC, never a fault later), and maps it read-write,
 * pre-faulted. */
int ms__region_create(const ms__ns *ns, const char *name, size_t size,
                      ms__region *out);
/* Maps an existing region read-write at its real size (fstat /
 * VirtualQuery), after checking the object before any byte of it is
 * touched: a regular object of at least min_size bytes (else
 * MS_EBADREGION), owned by the effective user or allowed_uid (-1: none)
 * and not writable by group or others (else MS_EACCES), and fully backed,
 * so that reading it cannot fault (else MS_EBADREGION).  *why gets a
 * static text naming the failed check, or NULL. */
int ms__region_open(const ms__ns *ns, const char *name, size_t min_size,
                    int64_t allowed_uid, ms__region *out, const char **why);
/* Makes bytes [from, size) read-only, or read-write again.  from is a
 * multiple of the page size. */
int ms__region_protect(ms__region *r, size_t from, int writable);
void ms__region_unmap(ms__region *r);
int ms__region_unlink(const ms__ns *ns, const char *name);
/* Freezes a region for good: bytes [from, size) of this mapping become
 * read-only and, for an anonymous region, the object is sealed against
 * every later writable mapping and write() (F_SEAL_FUTURE_WRITE).  Named
 * objects cannot be sealed: only the mapping changes.  Nothing changes on
 * failure. */
int ms__region_freeze(ms__region *r, size_t from);

/*
 * Anonymous regions (the memfd backend, Linux).  They have no name in any
 * directory: the creator keeps the object's descriptor (r->handle) open for
 * the region's life, and another process reaches it through
 * /proc/<pid>/fd/<fd>.  The object disappears with its last descriptor and
 * mapping, so a crash leaves nothing behind.  Elsewhere: MS_ENOTSUP.
 */
/* Creates one of size bytes (backed at creation: MS_ENOSPC/MS_ENOMEM now,
 * never a fault later), sealed against shrinking and growing, mode 0600,
 * mapped read-write and pre-faulted.  *pid and *fd say where it is. */
int ms__region_create_anon(size_t size, ms__region *out, int64_t *pid,
                           int64_t *fd);
/* Maps process pid's descriptor fd, after the same object checks as
 * ms__region_open() plus the seals: a descriptor that is no longer a
 * memfd region (not sealable, or a shmem file sealed with F_SEAL_SEAL but
 * without the size seals, e.g. a shm_open or tmpfs file) is MS_ENOENT (the
 * number was reused); a memfd without F_SEAL_SHRINK|F_SEAL_GROW is
 * MS_EBADREGION.  A region sealed against
 * writes is mapped read-only (out->readonly).  The descriptor this opens is
 * closed before returning: the mapping keeps the object alive. */
int ms__region_open_anon(int64_t pid, int64_t fd, size_t min_size,
                         int64_t allowed_uid, ms__region *out,
                         const char **why);
/* 1 if a second process (a forked child) could reopen an anonymous region
 * of this one, probed once per process; 0 if not or unsupported.  *made is
 * 1 if one could be created at all. */
int ms__anon_probe(int *made);

/* A liveness token: held by a live process, released by the kernel when it
 * dies. */
typedef struct ms__token ms__token;
struct ms__token {
  intptr_t handle;               /* -1 once released or forgotten */
  intptr_t aux;                  /* Linux: the socket, -1 if none */
  struct ms__token *prev, *next; /* the process's held tokens (fork) */
};

/* Liveness has two witnesses on Linux: a flock()ed file `name` in the
 * namespace and an abstract unix socket "\0<name>", both held by the
 * holder; the kernel drops both when it dies.  MS__TOKEN_NOFILE takes the
 * socket alone (the memfd backend, which leaves nothing in any directory).
 * A token is alive iff either witness is held. */
#define MS__TOKEN_NOFILE 1u
int ms__token_acquire(const ms__ns *ns, const char *name, unsigned flags,
                      ms__token *out);
void ms__token_release(const ms__ns *ns, const char *name, ms__token *t);
/* Closes this process's handle on a token it inherited across fork(),
 * without removing the object: the parent still holds it.  (On POSIX a
 * forked child has already closed every inherited token handle when fork()
 * returns, so that the child never keeps its parent's tokens alive; this
 * then does nothing.) */
void ms__token_forget(ms__token *t);
/* 1 if a live process holds the token (or is creating it), 0 if not. */
int ms__token_alive(const ms__ns *ns, const char *name);

/* A counter that changes in a child process made by fork() (0 where there
 * is no fork): objects record it to tell that they were inherited.  Cheap:
 * one relaxed load.  Valid once ms__ns_open() has run. */
unsigned ms__fork_epoch(void);

int ms__random(void *buf, size_t len);
size_t ms__page_size(void);

/* ------------------------------------------------------------------------ */
/* Channel wait/wake (channel.c's block; shm_wait_linux.c, shm_wait_win32.c) */
/* ------------------------------------------------------------------------ */

#include <stdatomic.h>

/* The wake objects of one ring: nothing on Linux (futexes on the ring's
 * own words), named auto-reset events "<ring>.w<i>" on Win32. */
typedef struct ms__waitset ms__waitset;

/* Opens (or creates) the wake objects of ring object `ring` for word
 * indexes 0..n-1, owner-only. */
int ms__waitset_open(const ms__ns *ns, const char *ring, unsigned n,
                     ms__waitset **out);
void ms__waitset_close(ms__waitset *ws);
/* Sleeps while *word == expect, at most timeout_ms; may return early
 * (callers re-check).  word lives in shared memory: cross-process. */
void ms__wait(ms__waitset *ws, unsigned idx, _Atomic uint32_t *word,
              uint32_t expect, uint32_t timeout_ms);
/* Wakes every process sleeping on word idx (the caller changed *word). */
void ms__wake(ms__waitset *ws, unsigned idx, _Atomic uint32_t *word);
/* A process-local pollable notifier (a non-blocking pipe on POSIX):
 * MS_ENOTSUP where there is none (Win32). */
int ms__notify_open(intptr_t *rd, intptr_t *wr);
void ms__notify_signal(intptr_t wr);
void ms__notify_drain(intptr_t rd);
void ms__notify_close(intptr_t rd, intptr_t wr);
/* 1 + the number of the CPU the calling thread runs on, 0 if unknown.
 * Cheap (no system call where the platform can help it); a hint only. */
uint32_t ms__cpu_now(void);
/* Gives the existing object `from` the second name `to` (a hard link), so
 * that an object built under a private name appears under its public one
 * complete, at once.  MS_EBUSY if `to` exists (it is never replaced),
 * MS_ENOTSUP where objects have one name only (Win32: there an object
 * dies with its last handle, so an interrupted creation leaves nothing). */
int ms__region_link(const ms__ns *ns, const char *from, const char *to);

#endif
