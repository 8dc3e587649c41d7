/* Shared-memory tensors with real processes: hand-off across processes,
 * read-only enforcement, lifetime and cleanup, kill -9 of producers and
 * consumers, stale descriptors, hostile headers, bad descriptors, quotas,
 * a full tmpfs, permissions, the open cache, DLPack, capabilities. */
#include "shm_backend.h"
#include "test_util.h"

#include "internal/shm.h" /* the header layout, to forge hostile regions */
#include "shm_test_util.h"

#include <dirent.h>
#include <dlpack/dlpack.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *helper;
static char dir[64]; /* a fresh directory on /dev/shm (a tmpfs) per test */

/* ------------------------------------------------------------------------ */
/* Processes                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct child {
  pid_t pid;
  FILE *in;  /* its stdin */
  FILE *out; /* its stdout */
} child;

static child spawn(const char *const *args) {
  int to[2], from[2];
  assert_int_equal(pipe(to), 0);
  assert_int_equal(pipe(from), 0);
  child c;
  c.pid = fork();
  assert_true(c.pid >= 0);
  if (c.pid == 0) {
    dup2(to[0], 0);
    dup2(from[1], 1);
    close(to[0]), close(to[1]), close(from[0]), close(from[1]);
    /* Some children crash on purpose: under ASan, let the kernel's signal
     * end them rather than the sanitizer's handler. */
    setenv("ASAN_OPTIONS", "handle_segv=0:detect_leaks=1", 1);
    setenv("TSAN_OPTIONS", "handle_segv=0", 1);
    execv(helper, (char *const *)args);
    _exit(127);
  }
  close(to[0]);
  close(from[1]);
  c.in = fdopen(to[1], "w");
  c.out = fdopen(from[0], "r");
  return c;
}

static void read_line(child *c, char *buf, size_t len) {
  assert_non_null(fgets(buf, (int)len, c->out));
  buf[strcspn(buf, "\n")] = '\0';
}

/* Closes its stdin and returns its wait status. */
static int finish(child *c) {
  fclose(c->in);
  fclose(c->out);
  int status = 0;
  assert_int_equal(waitpid(c->pid, &status, 0), c->pid);
  return status;
}

static int kill9(child *c) {
  kill(c->pid, SIGKILL);
  return finish(c);
}

static int exited_ok(int status) {
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int run(const char *const *args) {
  child c = spawn(args);
  return finish(&c);
}

/* ------------------------------------------------------------------------ */
/* Fixtures                                                                  */
/* ------------------------------------------------------------------------ */

static int count_entries(const char *d, const char *suffix) {
  DIR *dd = opendir(d);
  assert_non_null(dd);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(dd)) != NULL) {
    size_t l = strlen(e->d_name), s = strlen(suffix);
    if (e->d_name[0] != '.' && l >= s && strcmp(e->d_name + l - s, suffix) == 0)
      n++;
  }
  closedir(dd);
  return n;
}

/* Regions that still exist: named, the files (not tokens) in the test
 * directory; memfd, the memfds this process still maps or has open (the
 * test directory then stays empty: asserted by teardown).  A memfd region
 * of a process that died died with it. */
static int regions(void) {
  if (test_memfd())
    return memfds_of(getpid());
  return count_entries(dir, "") - count_entries(dir, ".lock");
}

/* Token files in the test directory: one per live named allocator; the
 * memfd backend's tokens are abstract sockets, never files. */
static int tokens(int named) {
  return count_entries(dir, ".lock") - (test_memfd() ? 0 : named);
}

/* The region's prefix in descriptors of this run's backend. */
static const char *desc_start(void) {
  return test_memfd() ? "ms2:" : "ms1:ms-";
}

static int setup(void **state) {
  (void)state;
  (void)snprintf(dir, sizeof(dir), "/dev/shm/ms-test-XXXXXX");
  assert_non_null(mkdtemp(dir));
  return 0;
}

static int teardown(void **state) {
  (void)state;
  /* Every test must leave nothing behind. */
  int left = count_entries(dir, "");
  if (left != 0) {
    print_error("%d objects left in %s\n", left, dir);
    return -1;
  }
  return rmdir(dir);
}

static ms_shm_t *new_shm(uint64_t pool_bytes) {
  return shm_on(test_backend(), dir, pool_bytes);
}

/* ------------------------------------------------------------------------ */

static void test_handoff_between_processes(void **state) {
  (void)state;
  static const size_t sizes[] = {1024, 1u << 20, 64u << 20};
  for (size_t i = 0; i < 3; i++) {
    char bytes[32], seed[8], desc[MS_DESCRIPTOR_MAX];
    (void)snprintf(bytes, sizeof(bytes), "%zu", sizes[i]);
    (void)snprintf(seed, sizeof(seed), "%zu", i + 7);
    const char *prod[] = {helper, "produce", dir, bytes, seed, NULL};
    child p = spawn(prod);
    read_line(&p, desc, sizeof(desc));
    assert_int_equal(strncmp(desc, desc_start(), strlen(desc_start())), 0);
    /* Two consumers, each its own process, verify every byte. */
    const char *cons[] = {helper, "consume", dir, desc, bytes, seed, NULL};
    assert_true(exited_ok(run(cons)));
    assert_true(exited_ok(run(cons)));
    /* A wrong expectation is detected (the check can fail). */
    const char *wrong[] = {helper, "consume", dir, desc, bytes, "99", NULL};
    int st = run(wrong);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    assert_true(exited_ok(finish(&p)));
    /* The producer's allocator was destroyed: its region is gone. */
    assert_int_equal(regions(), 0);
  }
}

static void test_read_only_consumer_faults(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm(0);
  ms_tensor_t *t = alloc_u8(shm, 4096);
  memset(ms_tensor_data(t), 0x5a, 4096);
  char desc[MS_DESCRIPTOR_MAX];
  descriptor(t, desc);
  const char *args[] = {helper, "write-ro", dir, desc, NULL};
  int st = run(args);
  assert_true(WIFSIGNALED(st));
  assert_int_equal(WTERMSIG(st), SIGSEGV);
  const unsigned char *p = ms_tensor_data(t);
  for (int i = 0; i < 4096; i++)
    assert_int_equal(p[i], 0x5a);
  /* The crashed writer left its holder slot; a sweep clears it. */
  ms_tensor_release(t);
  assert_int_equal(regions(), 1);
  assert_int_equal(ms_shm_sweep(shm, NULL), 0);
  assert_int_equal(regions(), 0);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_last_release_unlinks_or_pools(void **state) {
  (void)state;
  /* No pool: the last holder, in whichever process, unlinks. */
  ms_shm_t *a = new_shm(0), *b = new_shm(0);
  ms_tensor_t *t = alloc_u8(a, 10000), *u = NULL;
  char desc[MS_DESCRIPTOR_MAX];
  descriptor(t, desc);
  assert_int_equal(ms_tensor_open(b, desc, 0, &u), 0);
  ms_tensor_release(t); /* the producer lets go first */
  assert_int_equal(regions(), 1);
  assert_int_equal(((unsigned char *)ms_tensor_data(u))[9999], 0);
  ms_tensor_release(u); /* the consumer is last */
  /* memfd: a's mapping and descriptor go at its next call (as a's mapping
   * of the unlinked file does for named regions). */
  assert_int_equal(regions(), test_memfd() ? 1 : 0);
  assert_int_equal(ms_shm_sweep(a, NULL), 0);
  assert_int_equal(regions(), 0);
  assert_int_equal(ms_tensor_open(b, desc, 0, &u), MS_ENOENT);

  /* Pool: the region stays for reuse until the allocator goes. */
  ms_shm_t *p = new_shm(1u << 20);
  t = alloc_u8(p, 10000);
  ms_tensor_release(t);
  assert_int_equal(regions(), 1);
  ms_shm_stats_t s = MS_SHM_STATS_INIT;
  assert_int_equal(ms_shm_stats(p, &s), 0);
  assert_int_equal(s.regions_pooled, 1);
  assert_int_equal(s.bytes_allocated, 0);
  assert_int_equal(ms_shm_destroy(p), 0);
  assert_int_equal(regions(), 0);
  assert_int_equal(ms_shm_destroy(a), 0);
  assert_int_equal(ms_shm_destroy(b), 0);
}

static void test_kill9_producer_after_publish(void **state) {
  (void)state;
  char desc[MS_DESCRIPTOR_MAX], line[16];
  /* The consumer process is already running, as in a real pipeline. */
  const char *cons[] = {helper, "consume", dir, "-", "1048576", "3", NULL};
  child c = spawn(cons);
  read_line(&c, line, sizeof(line));
  assert_string_equal(line, "ready");
  const char *prod[] = {helper, "publish", dir, "1048576", "3", NULL};
  child p = spawn(prod);
  read_line(&p, desc, sizeof(desc));
  int st = kill9(&p);
  assert_true(WIFSIGNALED(st));
  /* The data outlives its producer (named)... */
  fprintf(c.in, "%s\n", desc);
  fflush(c.in);
  st = finish(&c);
  if (test_memfd()) /* ...or died with it, nobody else mapping it */
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 10 - MS_ENOENT);
  else
    assert_true(exited_ok(st));
  /* ...the dead producer still "holds" it until a sweep, which the next
   * allocator runs at creation: region and token are then gone.  (A memfd
   * died with the last process that mapped it.) */
  assert_int_equal(regions(), test_memfd() ? 0 : 1);
  ms_shm_t *shm = new_shm(0);
  assert_int_equal(regions(), 0);
  assert_int_equal(tokens(1), 0); /* only its own */
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_kill9_consumer_while_holding(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm(0);
  ms_tensor_t *t = alloc_u8(shm, 1u << 20);
  char desc[MS_DESCRIPTOR_MAX], line[16];
  descriptor(t, desc);
  const char *hold[] = {helper, "hold", dir, desc, NULL};
  child c = spawn(hold);
  read_line(&c, line, sizeof(line));
  assert_string_equal(line, "held");
  ms__hdr *h = (ms__hdr *)((char *)ms_tensor_data(t) - 4096);
  assert_int_equal(ms__slots_count(h), 2);
  (void)kill9(&c);
  ms_tensor_release(t);
  assert_int_equal(regions(), 1); /* the dead consumer still "holds" it */
  size_t reclaimed = 99;
  assert_int_equal(ms_shm_sweep(shm, &reclaimed), 0);
  assert_int_equal(regions(), 0);
  assert_int_equal(tokens(1), 0);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_orphans_swept_at_create(void **state) {
  (void)state;
  /* Three producers die holding their regions; nobody else ever held.
   * (All start before any dies: a producer's own start would sweep the
   * orphans of earlier ones.) */
  child p[3];
  for (int i = 0; i < 3; i++) {
    char desc[MS_DESCRIPTOR_MAX];
    const char *prod[] = {helper, "publish", dir, "65536", "1", NULL};
    p[i] = spawn(prod);
    read_line(&p[i], desc, sizeof(desc));
  }
  for (int i = 0; i < 3; i++)
    (void)kill9(&p[i]);
  assert_int_equal(regions(), test_memfd() ? 0 : 3); /* memfd: died too */
  assert_int_equal(tokens(3), 0);
  /* A region whose creator died before writing its header. */
  char junk[256];
  (void)snprintf(junk, sizeof(junk),
                 "%s/ms-00000000deadbeef-0123456789abcdef0123456789abcdef",
                 dir);
  int fd = open(junk, O_CREAT | O_WRONLY, 0600);
  assert_true(fd >= 0);
  close(fd);
  ms_shm_t *shm = new_shm(0);
  assert_int_equal(regions(), 0);
  assert_int_equal(tokens(1), 0);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_stale_descriptor(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm(1u << 20), *other = new_shm(0);
  ms_tensor_t *t = alloc_u8(shm, 5000), *u = NULL;
  char old[MS_DESCRIPTOR_MAX], now[MS_DESCRIPTOR_MAX];
  descriptor(t, old);
  void *data = ms_tensor_data(t);
  ms_tensor_release(t);
  t = alloc_u8(shm, 5000); /* reuses the pooled region */
  assert_ptr_equal(ms_tensor_data(t), data);
  descriptor(t, now);
  assert_string_not_equal(old, now);
  assert_int_equal(ms_tensor_open(other, old, 0, &u), MS_ESTALE);
  assert_non_null(strstr(ms_shm_errmsg(other), "recycled"));
  assert_int_equal(ms_tensor_open(shm, old, 0, &u), MS_ESTALE);
  assert_int_equal(ms_tensor_open(other, now, 0, &u), 0);
  ms_tensor_release(u);
  /* In another process too. */
  const char *cons[] = {helper, "consume", dir, old, "5000", "0", NULL};
  int st = run(cons);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 10 - MS_ESTALE);
  ms_shm_stats_t s = MS_SHM_STATS_INIT;
  assert_int_equal(ms_shm_stats(shm, &s), 0);
  assert_int_equal(s.pool_hits, 1);
  assert_int_equal(s.allocations, 2);
  ms_tensor_release(t);
  assert_int_equal(ms_shm_destroy(other), 0);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

/* Copies a real region into a new object of the same namespace, lets
 * `forge` damage the copy (header fields, or its length), and expects a
 * consumer to refuse it with MS_EBADREGION and to leave it alone. */
static void expect_hostile(void (*forge)(ms__hdr *h, size_t *len)) {
  ms_shm_t *shm = new_shm(0), *other = new_shm(0);
  int64_t shape[2] = {64, 64};
  ms_tensor_t *t = NULL, *u = NULL;
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_FLOAT32, 2, shape, NULL, &t),
                   0);
  char desc[MS_DESCRIPTOR_MAX], name[128], path[256], forged[MS_DESCRIPTOR_MAX];
  descriptor(t, desc);
  const char *gen = strrchr(desc, ':') + 1;
  (void)snprintf(name, sizeof(name), "%.*s", (int)(gen - 1 - desc - 4),
                 desc + 4);
  name[strlen(name) - 1] = name[strlen(name) - 1] == '0' ? '1' : '0';
  if (test_memfd()) /* a named copy of a memfd region: any consumer opens
                       ms1 (forged memfds: test_shm_memfd.c) */
    (void)snprintf(name, sizeof(name), "%s",
                   "ms-00000000000000ff-0123456789abcdef0123456789abcdef");
  (void)snprintf(path, sizeof(path), "%s/%s", dir, name);
  (void)snprintf(forged, sizeof(forged), "ms1:%s:%s", name, gen);

  size_t size = 4096 + 64 * 64 * 4, len = size;
  unsigned char *copy = calloc(1, 2 * size);
  memcpy(copy, (char *)ms_tensor_data(t) - 4096, size);
  ms__hdr *h = (ms__hdr *)copy;
  for (int i = 0; i < MS__SLOTS; i++)
    atomic_store(&h->slots[i], 0);
  forge(h, &len);
  int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, copy, len), (ssize_t)len);
  close(fd);

  assert_int_equal(ms_tensor_open(other, forged, 0, &u), MS_EBADREGION);
  assert_null(u);
  assert_int_equal(access(path, F_OK), 0); /* refused, not destroyed */
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal((size_t)st.st_size, len);

  unlink(path);
  free(copy);
  ms_tensor_release(t);
  assert_int_equal(ms_shm_destroy(other), 0);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void bad_magic(ms__hdr *h, size_t *n) { (void)n, h->magic ^= 1; }
static void bad_version(ms__hdr *h, size_t *n) { (void)n, h->version = 7; }
static void huge_ndim(ms__hdr *h, size_t *n) { (void)n, h->ndim = 1000; }
static void shape_overflow(ms__hdr *h, size_t *n) {
  (void)n;
  h->ndim = 4;
  for (int i = 0; i < 4; i++)
    h->shape[i] = INT64_C(1) << 40;
}
static void negative_dim(ms__hdr *h, size_t *n) { (void)n, h->shape[0] = -64; }
static void zero_dim_huge_others(ms__hdr *h, size_t *n) {
  (void)n; /* found by fuzz_region_header: 0 bytes, strides overflow */
  h->ndim = 3;
  h->shape[0] = 0;
  h->shape[1] = h->shape[2] = INT64_C(1) << 62;
  h->data_bytes = 0;
}
static void bytes_mismatch(ms__hdr *h, size_t *n) {
  (void)n, h->data_bytes = 8;
}
static void bytes_past_end(ms__hdr *h, size_t *n) {
  (void)n;
  h->shape[0] = 1 << 20; /* consistent with data_bytes, but not the file */
  h->data_bytes = (uint64_t)(1 << 20) * 64 * 4;
}
static void offset_past_end(ms__hdr *h, size_t *n) {
  (void)n;
  h->data_offset = UINT64_C(1) << 40;
}
static void offset_unaligned(ms__hdr *h, size_t *n) {
  (void)n, h->data_offset += 8;
}
static void offset_in_header(ms__hdr *h, size_t *n) {
  (void)n, h->data_offset = 64;
}
static void bad_strides(ms__hdr *h, size_t *n) {
  (void)n, h->strides[0] = 1 << 20;
}
static void bad_dtype(ms__hdr *h, size_t *n) { (void)n, h->dtype_bits = 13; }
static void small_header(ms__hdr *h, size_t *n) { (void)n, h->header_size = 8; }
static void truncated(ms__hdr *h, size_t *n) { (void)h, *n = 4096 + 100; }
static void truncated_in_header(ms__hdr *h, size_t *n) { (void)h, *n = 512; }
static void empty_file(ms__hdr *h, size_t *n) { (void)h, *n = 0; }

static void test_hostile_headers(void **state) {
  (void)state;
  void (*forges[])(ms__hdr *, size_t *) = {
      bad_magic,           bad_version,      huge_ndim,
      shape_overflow,      negative_dim,     zero_dim_huge_others,
      bytes_mismatch,      bytes_past_end,   offset_past_end,
      offset_unaligned,    offset_in_header, bad_strides,
      bad_dtype,           small_header,     truncated,
      truncated_in_header, empty_file};
  for (size_t i = 0; i < sizeof(forges) / sizeof(forges[0]); i++)
    expect_hostile(forges[i]);
}

static void test_bad_descriptors(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm(0);
  ms_tensor_t *t = NULL;
  const char *bad[] = {
      "",
      "../x",
      "ms1:../../etc/passwd:1",
      "ms1:ms-0123456789abcdef-0123456789abcdef0123456789abcdef",
      "ms1:ms-0123456789abcdef-0123456789abcdef0123456789abcdef:",
      "ms1:ms-0123456789abcdef-0123456789abcdef0123456789abcdef:xyz",
      "ms1:ms-0123456789abcdef-0123456789abcdef0123456789abcdef:"
      "11111111111111111",
      "ms1:ms-0123456789abcdef/0123456789abcdef0123456789abcdef:1",
      "ms1:ms-0123456789ABCDEF-0123456789abcdef0123456789abcdef:1",
      "ms1:ms.0123456789abcdef-0123456789abcdef0123456789abcdef:1",
      "ms1:toolongprefix12345-0123456789abcdef-"
      "0123456789abcdef0123456789abcdef:1",
      "ms2:ms-0123456789abcdef-0123456789abcdef0123456789abcdef:1",
      "ms1:ms-0123456789abcdef-0123456789abcdef0123456789abcde:1",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    if (ms_tensor_open(shm, bad[i], 0, &t) != MS_EINVAL)
      fail_msg("descriptor \"%s\" was not refused", bad[i]);
  }
  assert_int_equal(ms_tensor_open(shm, NULL, 0, &t), MS_EINVAL);
  assert_int_equal(ms_tensor_open(shm, "ms1:x:1", 0, NULL), MS_EINVAL);
  assert_int_equal(ms_tensor_open(shm, "ms1:x:1", 0x80, &t), MS_EINVAL);
  assert_int_equal(ms_tensor_open(NULL, "ms1:x:1", 0, &t), MS_EINVAL);
  /* Well-formed but absent. */
  assert_int_equal(
      ms_tensor_open(
          shm, "ms1:ms-0123456789abcdef-0123456789abcdef0123456789abcdef:1", 0,
          &t),
      MS_ENOENT);
  assert_null(t);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_quotas(void **state) {
  (void)state;
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.backend = test_backend();
  o.dir = dir;
  o.max_bytes = 1000000;
  o.max_session_bytes = 600000;
  ms_shm_t *shm = NULL;
  assert_int_equal(ms_shm_create(&o, &shm), 0);
  int64_t n400k[1] = {400000}, n300k[1] = {300000};
  ms_tensor_t *a = NULL, *b = NULL, *c = NULL, *d = NULL;
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, n400k, "cam0", &a),
                   0);
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, n400k, "cam0", &b),
                   MS_EQUOTA); /* session cap */
  assert_non_null(strstr(ms_shm_errmsg(shm), "cam0"));
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, n400k, "cam1", &b),
                   0);
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, n400k, "cam2", &c),
                   MS_EQUOTA); /* global cap */
  assert_null(c);
  assert_int_equal(regions(), 2); /* nothing half-made */
  ms_shm_stats_t s = MS_SHM_STATS_INIT;
  assert_int_equal(ms_shm_stats(shm, &s), 0);
  assert_int_equal(s.bytes_allocated, 800000);
  ms_tensor_release(a);
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, n300k, "cam2", &c),
                   0);
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, n400k, "cam0", &d),
                   MS_EQUOTA); /* 400k + 300k + 400k > 1M */
  ms_tensor_release(b);
  ms_tensor_release(c);
  assert_int_equal(ms_shm_stats(shm, &s), 0);
  assert_int_equal(s.bytes_allocated, 0);
  /* Bad sizes. */
  int64_t neg[1] = {-1}, big[2] = {INT64_MAX, INT64_MAX};
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, neg, NULL, &d),
                   MS_EINVAL);
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 2, big, NULL, &d),
                   MS_ERANGE);
  assert_int_equal(
      ms_tensor_alloc(shm, MS_DTYPE_UINT8, MS_MAX_NDIM + 1, big, NULL, &d),
      MS_EINVAL);
  assert_int_equal(ms_tensor_alloc(shm, (ms_dtype_t)12345, 1, n300k, NULL, &d),
                   MS_EINVAL);
  char label[80];
  memset(label, 'l', sizeof(label) - 1);
  label[79] = '\0';
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, n300k, label, &d),
                   MS_EINVAL);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_full_tmpfs_is_enospc(void **state) {
  (void)state;
  char mnt[128], why[256];
  (void)snprintf(mnt, sizeof(mnt), "%s/tiny", dir);
  assert_int_equal(mkdir(mnt, 0700), 0);
  /* Never skipped: as root it mounts; otherwise it runs again inside a new
   * user+mount namespace (unshare -rm); if neither works, it fails. */
  int st = 0;
  int how = ms_test_tmpfs(mnt, "1m", "test_full_tmpfs_is_enospc", &st, why,
                          sizeof(why));
  if (how != 1)
    assert_int_equal(rmdir(mnt), 0);
  if (how < 0)
    fail_msg("cannot mount a tmpfs, as root or in a user namespace: %s", why);
  if (how == 0) {
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
      fail_msg("test_full_tmpfs_is_enospc failed inside unshare -rm "
               "(status %#x)",
               st);
    print_message("ran inside unshare -rm (a user+mount namespace)\n");
    return;
  }
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT; /* named: the tmpfs's cap */
  o.dir = mnt;
  ms_shm_t *shm = NULL;
  assert_int_equal(ms_shm_create(&o, &shm), 0);
  ms_capabilities_t caps = MS_CAPABILITIES_INIT;
  assert_int_equal(ms_capabilities(mnt, &caps), 0);
  assert_true(caps.shm_available);
  assert_true(caps.shm_total_bytes <= (1u << 20));
  int64_t shape[1] = {4 << 20};
  ms_tensor_t *t = NULL;
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &t),
                   MS_ENOSPC);
  assert_null(t);
  /* Smaller ones still work, and touching every byte does not fault. */
  shape[0] = 256 << 10;
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_UINT8, 1, shape, NULL, &t), 0);
  memset(ms_tensor_data(t), 1, 256 << 10);
  ms_tensor_release(t);
  assert_int_equal(ms_shm_destroy(shm), 0);
  assert_int_equal(count_entries(mnt, ""), 0);
  assert_int_equal(umount(mnt), 0);
  assert_int_equal(rmdir(mnt), 0);
}

static void test_modes_are_owner_only(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm(0);
  ms_tensor_t *t = alloc_u8(shm, 100);
  DIR *d = opendir(dir);
  struct dirent *e;
  int seen = 0;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    char p[512];
    struct stat st;
    (void)snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
    assert_int_equal(lstat(p, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);
    seen++;
  }
  closedir(d);
  assert_int_equal(seen, test_memfd() ? 0 : 2); /* the region and the token */
  if (test_memfd()) { /* the memfd itself, through its locator */
    char desc[MS_DESCRIPTOR_MAX], path[64];
    long long pid = 0, fd = 0;
    struct stat st;
    descriptor(t, desc);
    assert_int_equal(sscanf(desc, "ms2:%lld:%lld:", &pid, &fd), 2);
    (void)snprintf(path, sizeof(path), "/proc/%lld/fd/%lld", pid, fd);
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);
  }
  ms_tensor_release(t);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_open_cache_and_writable(void **state) {
  (void)state;
  ms_shm_t *prod = new_shm(0), *cons = new_shm(0);
  ms_tensor_t *t = alloc_u8(prod, 8192), *a = NULL, *b = NULL;
  char desc[MS_DESCRIPTOR_MAX];
  descriptor(t, desc);
  assert_int_equal(ms_tensor_open(cons, desc, 0, &a), 0);
  assert_int_equal(ms_tensor_open(cons, desc, 0, &b), 0);
  assert_ptr_equal(ms_tensor_data(a), ms_tensor_data(b));
  ms_tensor_release(a);
  ms_tensor_release(b);
  assert_int_equal(ms_tensor_open(cons, desc, MS_OPEN_WRITE, &a), 0);
  ((unsigned char *)ms_tensor_data(a))[100] = 42; /* writable on request */
  assert_int_equal(((unsigned char *)ms_tensor_data(t))[100], 42);
  /* Read-only is per mapping: the writable open maps the region again,
   * and the read-only handles before it never became writable. */
  ms_shm_stats_t s = MS_SHM_STATS_INIT;
  assert_int_equal(ms_shm_stats(cons, &s), 0);
  assert_int_equal(s.opens, 3);
  assert_int_equal(s.open_cache_hits, 1);
  assert_int_equal(s.regions_opened, 2);
  assert_int_equal(ms_shm_destroy(cons), MS_EBUSY); /* a is held */
  ms_tensor_release(a);
  char *json = NULL;
  assert_int_equal(ms_shm_stats_json(cons, &json), 0);
  assert_non_null(strstr(json, "\"open_cache_hits\":1"));
  ms_free(json);
  ms_tensor_release(t);
  assert_int_equal(ms_shm_destroy(cons), 0);
  assert_int_equal(ms_shm_destroy(prod), 0);
}

/* Writing through p in a forked child: 1 if it faulted. */
static int write_faults(unsigned char *p) {
  fflush(stdout);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    signal(SIGSEGV, SIG_DFL);
    signal(SIGBUS, SIG_DFL);
    p[0] ^= 1;
    _exit(0);
  }
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  return WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV;
}

static void test_freeze(void **state) {
  (void)state;
  ms_shm_t *prod = new_shm(64 << 20), *cons = new_shm(0);
  ms_tensor_t *t = alloc_u8(prod, 3 * 4096), *a = NULL, *w = NULL;
  unsigned char *p = ms_tensor_data(t);
  for (size_t i = 0; i < 3 * 4096; i++)
    p[i] = (unsigned char)(i * 7);
  char desc[MS_DESCRIPTOR_MAX];
  descriptor(t, desc);
  assert_int_equal(ms_tensor_freeze(NULL), MS_EINVAL);
  assert_int_equal(ms_tensor_freeze(t), 0);
  assert_int_equal(ms_tensor_freeze(t), 0); /* idempotent */
  assert_int_equal(ms_tensor_is_writable(t), 0);
  assert_true(write_faults(p));
  assert_int_equal(ms_tensor_open(cons, desc, MS_OPEN_WRITE, &w), MS_EACCES);
  assert_null(w);
  assert_int_equal(ms_tensor_open(cons, desc, 0, &a), 0);
  assert_int_equal(ms_tensor_freeze(a), MS_EINVAL); /* not its creator */
  const unsigned char *q = ms_tensor_data(a);
  for (size_t i = 0; i < 3 * 4096; i++)
    assert_int_equal(q[i], (unsigned char)(i * 7));
  assert_true(write_faults((unsigned char *)q));
  /* Never pooled: the next allocation of the same size is a new region,
   * and once both handles are gone nothing is left. */
  ms_tensor_release(t);
  ms_tensor_t *t2 = alloc_u8(prod, 3 * 4096);
  ms_tensor_release(a);
  ms_tensor_release(t2);
  ms_shm_stats_t s = MS_SHM_STATS_INIT;
  assert_int_equal(ms_shm_stats(prod, &s), 0);
  assert_int_equal(s.pool_hits, 0);
  assert_int_equal(s.regions_pooled, 1); /* t2's, not the frozen one */
  ms_tensor_t *h = NULL;
  int64_t shape = 4;
  assert_int_equal(ms__tensor_new_heap(MS_DTYPE_UINT8, 1, &shape, &h), 0);
  assert_int_equal(ms_tensor_freeze(h), MS_EINVAL);
  ms_tensor_release(h);
  assert_int_equal(ms_shm_destroy(cons), 0);
  assert_int_equal(ms_shm_destroy(prod), 0);
}

/* A released descriptor stays MS_ENOENT/MS_ESTALE when its region was
 * reused and then frozen: a writable open must not answer MS_EACCES
 * (found by test_shm_model, seed 78267042597187). */
static void test_freeze_after_reuse_keeps_old_descriptor_stale(void **state) {
  (void)state;
  ms_shm_t *prod = new_shm(64 << 20), *cons = new_shm(0);
  ms_tensor_t *t = alloc_u8(prod, 3 * 4096), *w = NULL;
  char old[MS_DESCRIPTOR_MAX], cur[MS_DESCRIPTOR_MAX];
  descriptor(t, old);
  ms_tensor_release(t); /* pooled */
  t = alloc_u8(prod, 3 * 4096);
  descriptor(t, cur);
  ms_shm_stats_t s = MS_SHM_STATS_INIT;
  assert_int_equal(ms_shm_stats(prod, &s), 0);
  if (s.pool_hits == 1) { /* the same region, one generation on */
    assert_int_equal(ms_tensor_freeze(t), 0);
    assert_int_equal(ms_tensor_open(cons, old, MS_OPEN_WRITE, &w), MS_ESTALE);
    assert_int_equal(ms_tensor_open(cons, old, 0, &w), MS_ESTALE);
    assert_null(w);
    assert_int_equal(ms_tensor_open(cons, cur, MS_OPEN_WRITE, &w), MS_EACCES);
    assert_null(w);
  } else {
    fail_msg("the second allocation did not reuse the pooled region");
  }
  ms_tensor_release(t);
  assert_int_equal(ms_shm_destroy(cons), 0);
  assert_int_equal(ms_shm_destroy(prod), 0);
}

static void test_dlpack_export(void **state) {
  (void)state;
  ms_shm_t *shm = new_shm(0);
  int64_t shape[3] = {2, 3, 4};
  ms_tensor_t *t = NULL;
  assert_int_equal(ms_tensor_alloc(shm, MS_DTYPE_FLOAT32, 3, shape, NULL, &t),
                   0);
  DLManagedTensor *m = NULL;
  assert_int_equal(ms_tensor_to_dlpack(t, &m), 0);
  ms_tensor_release(t); /* the export keeps it alive */
  assert_int_equal(ms_shm_destroy(shm), MS_EBUSY);
  assert_ptr_equal(m->dl_tensor.data, ms_tensor_data(t));
  assert_int_equal(m->dl_tensor.device.device_type, kDLCPU);
  assert_int_equal(m->dl_tensor.ndim, 3);
  assert_int_equal(m->dl_tensor.dtype.code, kDLFloat);
  assert_int_equal(m->dl_tensor.dtype.bits, 32);
  assert_int_equal(m->dl_tensor.dtype.lanes, 1);
  assert_int_equal(m->dl_tensor.shape[2], 4);
  assert_int_equal(m->dl_tensor.strides[0], 12);
  assert_int_equal(m->dl_tensor.strides[2], 1);
  assert_int_equal((uintptr_t)m->dl_tensor.data % 64, 0);
  m->deleter(m);
  assert_int_equal(ms_shm_destroy(shm), 0);
}

static void test_capabilities_and_defaults(void **state) {
  (void)state;
  ms_capabilities_t caps = MS_CAPABILITIES_INIT;
  assert_int_equal(ms_capabilities(NULL, &caps), 0);
  assert_int_equal(caps.shm_available, 1);
  assert_true(caps.shm_free_bytes > 0);
  assert_true(caps.page_size >= 4096);
  assert_int_equal(ms_capabilities(NULL, NULL), MS_EINVAL);
  caps.struct_size = 0;
  assert_int_equal(ms_capabilities(NULL, &caps), MS_EINVAL);
  ms_capabilities_t none = MS_CAPABILITIES_INIT;
  assert_int_equal(ms_capabilities("/nonexistent-dir", &none), 0);
  assert_int_equal(none.shm_available, 0);

  /* Default namespace with a private prefix: nothing left after. */
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.backend = test_backend();
  o.prefix = "mstest_";
  ms_shm_t *shm = NULL;
  assert_int_equal(ms_shm_create(&o, &shm), 0);
  ms_tensor_t *t = alloc_u8(shm, 1000);
  char desc[MS_DESCRIPTOR_MAX];
  descriptor(t, desc);
  assert_int_equal(strncmp(desc, test_memfd() ? "ms2:" : "ms1:mstest_",
                           test_memfd() ? 4 : 11),
                   0);
  assert_int_equal(caps.memfd_available, 1); /* Linux */
  assert_int_equal(caps.memfd_reopen, 1);
  ms_tensor_release(t);
  assert_int_equal(ms_shm_destroy(shm), 0);
  char probe[128];
  (void)snprintf(probe, sizeof(probe), "/dev/shm/%.*s",
                 (int)(strrchr(desc, ':') - desc - 4), desc + 4);
  assert_int_equal(access(probe, F_OK), -1);

  /* Bad options. */
  o.prefix = "bad/prefix";
  assert_int_equal(ms_shm_create(&o, &shm), MS_EINVAL);
  o.prefix = "";
  assert_int_equal(ms_shm_create(&o, &shm), MS_EINVAL);
  o.prefix = NULL;
  o.dir = "/nonexistent-dir";
  assert_int_equal(ms_shm_create(&o, &shm), MS_ENOENT);
  assert_non_null(strstr(ms_shm_errmsg(NULL), "nonexistent"));
  o.dir = NULL;
  o.struct_size = 8;
  assert_int_equal(ms_shm_create(&o, &shm), MS_EINVAL);
  assert_int_equal(ms_shm_create(NULL, NULL), MS_EINVAL);
  assert_int_equal(ms_shm_destroy(NULL), 0);
  assert_int_equal(ms_shm_sweep(NULL, NULL), MS_EINVAL);
  ms_tensor_release(NULL);
  assert_null(ms_tensor_data(NULL));
  assert_int_equal(ms_tensor_nbytes(NULL), 0);
  assert_int_equal(ms_tensor_descriptor(NULL, desc, sizeof(desc)), MS_EINVAL);
}

/* Threads of one process allocate, hand off and release concurrently. */
typedef struct worker {
  ms_shm_t *prod, *cons;
  int failures;
  uv_thread_t th;
} worker;

static void worker_run(void *arg) {
  worker *w = arg;
  for (int i = 0; i < 300; i++) {
    int64_t shape[1] = {1000 + (i % 7) * 4096};
    ms_tensor_t *t = NULL, *u = NULL;
    char desc[MS_DESCRIPTOR_MAX];
    if (ms_tensor_alloc(w->prod, MS_DTYPE_UINT8, 1, shape, NULL, &t) != 0 ||
        ms_tensor_descriptor(t, desc, sizeof(desc)) != 0) {
      w->failures++;
      ms_tensor_release(t);
      continue;
    }
    memset(ms_tensor_data(t), i & 0xff, (size_t)shape[0]);
    if (ms_tensor_open(w->cons, desc, 0, &u) != 0 ||
        ((unsigned char *)ms_tensor_data(u))[shape[0] - 1] != (i & 0xff))
      w->failures++;
    if (i % 2)
      ms_tensor_release(t), ms_tensor_release(u);
    else
      ms_tensor_release(u), ms_tensor_release(t);
  }
}

static void test_threads(void **state) {
  (void)state;
  ms_shm_t *prod = new_shm(8u << 20), *cons = new_shm(0);
  worker w[4];
  for (int i = 0; i < 4; i++) {
    w[i] = (worker){prod, cons, 0, 0};
    assert_int_equal(uv_thread_create(&w[i].th, worker_run, &w[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    uv_thread_join(&w[i].th);
    assert_int_equal(w[i].failures, 0);
  }
  ms_shm_stats_t s = MS_SHM_STATS_INIT;
  assert_int_equal(ms_shm_stats(prod, &s), 0);
  assert_int_equal(s.allocations, 1200);
  assert_true(s.pool_hits > 1000);
  assert_int_equal(s.bytes_allocated, 0);
  assert_int_equal(ms_shm_destroy(cons), 0);
  assert_int_equal(ms_shm_destroy(prod), 0);
}

/* Errors about shared memory speak of shared memory: the texts of the
 * codes it returns, and a real failure's message, never mention models. */
static void test_errors_do_not_speak_of_models(void **state) {
  (void)state;
  static const int codes[] = {MS_EINVAL, MS_ENOMEM,  MS_EBUSY,  MS_ENOENT,
                              MS_EIO,    MS_ENOSPC,  MS_EQUOTA, MS_EBADREGION,
                              MS_ESTALE, MS_ENOTSUP, MS_EACCES, MS_ERANGE};
  for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
    if (strstr(ms_strerror(codes[i]), "model") != NULL)
      fail_msg("%s: \"%s\"", ms_err_name(codes[i]), ms_strerror(codes[i]));
  ms_shm_options_t o = MS_SHM_OPTIONS_INIT;
  o.backend = test_backend();
  o.dir = "/nonexistent-ms-test-dir";
  ms_shm_t *shm = NULL;
  assert_true(ms_shm_create(&o, &shm) < 0);
  assert_null(shm);
  const char *msg = ms_shm_errmsg(NULL);
  assert_true(msg[0] != '\0');
  if (strstr(msg, "model") != NULL)
    fail_msg("ms_shm_create: \"%s\"", msg);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: test_shm PATH-TO-shm_helper\n");
    return 2;
  }
  helper = argv[1];
  MS_TEST_MAIN(argv);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_errors_do_not_speak_of_models),
      cmocka_unit_test_setup_teardown(test_handoff_between_processes, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_read_only_consumer_faults, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_last_release_unlinks_or_pools, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_kill9_producer_after_publish, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_kill9_consumer_while_holding, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_orphans_swept_at_create, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_stale_descriptor, setup, teardown),
      cmocka_unit_test_setup_teardown(test_hostile_headers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_descriptors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_quotas, setup, teardown),
      cmocka_unit_test_setup_teardown(test_full_tmpfs_is_enospc, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_modes_are_owner_only, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_open_cache_and_writable, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_freeze, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_freeze_after_reuse_keeps_old_descriptor_stale, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dlpack_export, setup, teardown),
      cmocka_unit_test_setup_teardown(test_capabilities_and_defaults, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
