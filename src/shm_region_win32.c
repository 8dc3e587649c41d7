/*
 * Platform layer, Win32: regions are page-file-backed named file mappings
 * in the session's Local\ namespace, committed at creation (a full commit
 * limit is MS_ENOSPC now, not a fault later), readable and writable by the
 * current user only.  Liveness tokens are named events: a named kernel
 * object lives exactly as long as a handle to it is open, so the token of
 * a process that dies, however it dies, disappears with it.
 *
 * How the portable guarantees map onto Windows:
 *   - "unlink" does nothing: a mapping dies with its last handle.  The
 *     header's DEAD state already refuses new opens.
 *   - Named objects cannot be listed, so a sweep only sees the regions its
 *     allocator created or opened (ms__ns_list is MS_ENOTSUP).
 *   - Read-only data: views must start on 64 KiB boundaries, so the data
 *     cannot get a view of its own; the whole region is mapped and the data
 *     pages are made read-only with VirtualProtect.
 *   - A directory namespace (options->dir) is not supported: MS_ENOTSUP.
 */
#include "internal/region.h"
#include "internal/win32.h"

#include <windows.h>

#include <bcrypt.h>
#include <sddl.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ms__ns {
  int unused;
};

static int err_of(DWORD e) {
  switch (e) {
  case ERROR_FILE_NOT_FOUND:
  case ERROR_PATH_NOT_FOUND:
    return MS_ENOENT;
  case ERROR_ACCESS_DENIED:
    return MS_EACCES;
  case ERROR_COMMITMENT_LIMIT:
  case ERROR_NOT_ENOUGH_MEMORY:
  case ERROR_OUTOFMEMORY:
  case ERROR_DISK_FULL:
    return MS_ENOSPC;
  case ERROR_INVALID_PARAMETER:
  case ERROR_INVALID_NAME:
    return MS_EINVAL;
  default:
    return MS_EIO;
  }
}

/* L"Local\<name>"; names are ASCII (validated by the caller). */
static int wide_name(const char *name, const char *suffix, wchar_t *out,
                     size_t cap) {
  char buf[160];
  int n = snprintf(buf, sizeof(buf), "Local\\%s%s", name, suffix);
  if (n <= 0 || (size_t)n >= sizeof(buf) || (size_t)n >= cap)
    return MS_EINVAL;
  for (int i = 0; i <= n; i++)
    out[i] = (wchar_t)(unsigned char)buf[i];
  return 0;
}

/* The current user only (internal/win32.h). */
int ms__win32_owner_only(SECURITY_ATTRIBUTES *sa, PSECURITY_DESCRIPTOR *sd) {
  HANDLE token = NULL;
  char info[256];
  DWORD len = 0;
  LPWSTR sid = NULL;
  int rc = MS_EACCES;
  if (OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &token) &&
      GetTokenInformation(token, TokenUser, info, sizeof(info), &len) &&
      ConvertSidToStringSidW(((TOKEN_USER *)info)->User.Sid, &sid)) {
    wchar_t sddl[256];
    _snwprintf(sddl, 256, L"D:P(A;;GA;;;%ls)", sid);
    sddl[255] = L'\0';
    if (ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl, SDDL_REVISION_1, sd, NULL)) {
      sa->nLength = sizeof(*sa);
      sa->lpSecurityDescriptor = *sd;
      sa->bInheritHandle = FALSE;
      rc = 0;
    }
  }
  if (sid != NULL)
    LocalFree(sid);
  if (token != NULL)
    CloseHandle(token);
  return rc;
}

/* What creating a named object needs: its wide name and an owner-only
 * security descriptor (free *sd with LocalFree). */
static int prepare_named(const char *name, wchar_t *wname,
                         SECURITY_ATTRIBUTES *sa, PSECURITY_DESCRIPTOR *sd) {
  if (wide_name(name, "", wname, 160) != 0)
    return MS_EINVAL;
  return ms__win32_owner_only(sa, sd);
}

int ms__ns_open(const char *dir, ms__ns **out) {
  if (dir != NULL)
    return MS_ENOTSUP;
  ms__ns *ns = ms__calloc(1, sizeof(*ns));
  if (ns == NULL)
    return MS_ENOMEM;
  *out = ns;
  return 0;
}

void ms__ns_close(ms__ns *ns) { ms__free(ns); }

int ms__ns_space(const ms__ns *ns, uint64_t *free_bytes, uint64_t *total) {
  (void)ns;
  MEMORYSTATUSEX m;
  m.dwLength = sizeof(m);
  if (!GlobalMemoryStatusEx(&m))
    return err_of(GetLastError());
  *free_bytes = m.ullAvailPageFile; /* what can still be committed */
  *total = m.ullTotalPageFile;
  return 0;
}

int ms__ns_list(const ms__ns *ns, const char *prefix,
                int (*fn)(const char *name, void *user), void *user) {
  (void)ns, (void)prefix, (void)fn, (void)user;
  return MS_ENOTSUP;
}

int ms__region_create(const ms__ns *ns, const char *name, size_t size,
                      ms__region *out) {
  (void)ns;
  wchar_t wname[160];
  SECURITY_ATTRIBUTES sa;
  PSECURITY_DESCRIPTOR sd = NULL;
  if (size == 0)
    return MS_EINVAL;
  int rc = prepare_named(name, wname, &sa, &sd);
  if (rc != 0)
    return rc;
  HANDLE h = CreateFileMappingW(
      INVALID_HANDLE_VALUE, &sa, PAGE_READWRITE | SEC_COMMIT,
      (DWORD)((uint64_t)size >> 32), (DWORD)(size & 0xffffffffu), wname);
  DWORD e = GetLastError();
  LocalFree(sd);
  if (h == NULL)
    return err_of(e);
  if (e == ERROR_ALREADY_EXISTS) { /* names are random: never ours */
    CloseHandle(h);
    return MS_EIO;
  }
  void *base = MapViewOfFile(h, FILE_MAP_ALL_ACCESS, 0, 0, size);
  if (base == NULL) {
    e = GetLastError();
    CloseHandle(h);
    return err_of(e);
  }
  /* Pre-fault: the commit charge is taken; touch every page once. */
  size_t page = ms__page_size();
  for (size_t off = 0; off < size; off += page)
    ((volatile char *)base)[off] = 0;
  out->base = base;
  out->size = size;
  out->handle = (intptr_t)h;
  out->readonly = 0;
  return 0;
}

int ms__region_open(const ms__ns *ns, const char *name, size_t min_size,
                    int64_t allowed_uid, ms__region *out, const char **why) {
  (void)ns, (void)allowed_uid; /* the object's DACL admits its user only */
  *why = NULL;
  wchar_t wname[160];
  if (wide_name(name, "", wname, 160) != 0)
    return MS_EINVAL;
  HANDLE h = OpenFileMappingW(FILE_MAP_ALL_ACCESS, FALSE, wname);
  if (h == NULL)
    return err_of(GetLastError());
  void *base = MapViewOfFile(h, FILE_MAP_ALL_ACCESS, 0, 0, 0);
  if (base == NULL) {
    DWORD e = GetLastError();
    CloseHandle(h);
    return err_of(e);
  }
  /* The real size of the mapping (rounded up to pages by the system). */
  MEMORY_BASIC_INFORMATION mbi;
  if (VirtualQuery(base, &mbi, sizeof(mbi)) == 0 || mbi.RegionSize < min_size) {
    *why = "smaller than a region header";
    UnmapViewOfFile(base);
    CloseHandle(h);
    return MS_EBADREGION;
  }
  out->base = base;
  out->size = mbi.RegionSize;
  out->handle = (intptr_t)h;
  out->readonly = 0;
  return 0;
}

int ms__region_protect(ms__region *r, size_t from, int writable) {
  if (from >= r->size)
    return 0;
  DWORD old;
  return VirtualProtect((char *)r->base + from, r->size - from,
                        writable ? PAGE_READWRITE : PAGE_READONLY, &old)
             ? 0
             : err_of(GetLastError());
}

void ms__region_unmap(ms__region *r) {
  if (r->base != NULL)
    UnmapViewOfFile(r->base);
  if (r->handle != 0 && r->handle != -1)
    CloseHandle((HANDLE)r->handle);
  r->base = NULL;
  r->size = 0;
  r->handle = -1;
}

int ms__region_unlink(const ms__ns *ns, const char *name) {
  (void)ns, (void)name;
  return 0; /* the mapping dies with its last handle */
}

/* A section cannot be shrunk under its views, and views cannot be sealed:
 * freezing makes this view read-only. */
int ms__region_freeze(ms__region *r, size_t from) {
  return ms__region_protect(r, from, 0);
}

/* No memfd here, and none needed: see "Backends" in modelshare.h. */
int ms__region_create_anon(size_t size, ms__region *out, int64_t *pid,
                           int64_t *fd) {
  (void)size, (void)out, (void)pid, (void)fd;
  return MS_ENOTSUP;
}

int ms__region_open_anon(int64_t pid, int64_t fd, size_t min_size,
                         int64_t allowed_uid, ms__region *out,
                         const char **why) {
  (void)pid, (void)fd, (void)min_size, (void)allowed_uid, (void)out;
  *why = "memfd regions exist on Linux only";
  return MS_ENOTSUP;
}

int ms__anon_probe(int *made) {
  *made = 0;
  return 0;
}

int ms__token_acquire(const ms__ns *ns, const char *name, unsigned flags,
                      ms__token *out) {
  (void)ns, (void)flags;
  wchar_t wname[160];
  SECURITY_ATTRIBUTES sa;
  PSECURITY_DESCRIPTOR sd = NULL;
  int rc = prepare_named(name, wname, &sa, &sd);
  if (rc != 0)
    return rc;
  HANDLE h = CreateEventW(&sa, TRUE, FALSE, wname);
  DWORD e = GetLastError();
  LocalFree(sd);
  if (h == NULL)
    return err_of(e);
  if (e == ERROR_ALREADY_EXISTS) {
    CloseHandle(h);
    return MS_EIO;
  }
  out->handle = (intptr_t)h;
  return 0;
}

void ms__token_release(const ms__ns *ns, const char *name, ms__token *t) {
  (void)ns, (void)name;
  CloseHandle((HANDLE)t->handle);
  t->handle = -1;
}

int ms__token_alive(const ms__ns *ns, const char *name) {
  (void)ns;
  wchar_t wname[160];
  if (wide_name(name, "", wname, 160) != 0)
    return 0;
  HANDLE h = OpenEventW(SYNCHRONIZE, FALSE, wname);
  if (h == NULL) /* its last handle closed: the holder is gone; any other */
    return GetLastError() != ERROR_FILE_NOT_FOUND; /* failure: not ours to */
  CloseHandle(h);                                  /* judge, so alive */
  return 1;
}

void ms__token_forget(ms__token *t) {
  CloseHandle((HANDLE)t->handle);
  t->handle = -1;
}

unsigned ms__fork_epoch(void) { return 0; /* no fork() on Windows */ }

int ms__random(void *buf, size_t len) {
  return BCryptGenRandom(NULL, buf, (ULONG)len,
                         BCRYPT_USE_SYSTEM_PREFERRED_RNG) == 0
             ? 0
             : MS_EIO;
}

size_t ms__page_size(void) {
  SYSTEM_INFO si;
  GetSystemInfo(&si);
  return si.dwPageSize;
}

int ms__region_link(const ms__ns *ns, const char *from, const char *to) {
  (void)ns, (void)from, (void)to;
  return MS_ENOTSUP; /* a mapping has one name, and dies with its handles */
}
