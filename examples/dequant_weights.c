/*
 * dequant_weights: N worker processes share one dequantized copy of a
 * model's weights (a host image).
 *
 * The weights file is safetensors with int8 matrices "<name>.q" [rows, cols]
 * and their per-row float32 scales "<name>.scale" [rows], the layout of
 * row-wise int8 quantization.  Every worker needs float32 "<name>" =
 * q[r][c] * scale[r].  Each one asks for the host image of (file, config,
 * "dequant-int8-rowwise" v1): the first to ask dequantizes, the others map
 * its result read-only.  Each worker then checksums its view.
 *
 *   dequant_weights                      generate a file, run 4 workers, check
 *   dequant_weights generate PATH [ROWS COLS LAYERS SEED]
 *   dequant_weights run PATH N           N workers on PATH
 *
 * "run" exits 0 when every worker saw the same bytes, those bytes equal a
 * private dequantization done by the parent, and the transform ran once.
 */
#include <modelshare.h>

#include <cjson/cJSON.h>

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* The int8 weights file                                                     */
/* ------------------------------------------------------------------------ */

static uint32_t rnd(uint64_t *s) { /* xorshift64*, deterministic */
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return (uint32_t)((*s * 0x2545f4914f6cdd1dULL) >> 32);
}

static int generate(const char *path, long rows, long cols, int layers,
                    uint64_t seed) {
  cJSON *h = cJSON_CreateObject();
  size_t off = 0;
  char name[64];
  for (int l = 0; l < layers; l++) {
    long shape_q[2] = {rows, cols}, shape_s[1] = {rows};
    const struct {
      const char *suffix, *dtype;
      int ndim;
      long *shape;
      size_t bytes;
    } t[2] = {{"q", "I8", 2, shape_q, (size_t)(rows * cols)},
              {"scale", "F32", 1, shape_s, (size_t)rows * 4}};
    for (int k = 0; k < 2; k++) {
      cJSON *e = cJSON_CreateObject();
      cJSON_AddStringToObject(e, "dtype", t[k].dtype);
      cJSON *sh = cJSON_AddArrayToObject(e, "shape");
      for (int d = 0; d < t[k].ndim; d++)
        cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t[k].shape[d]));
      cJSON *o = cJSON_AddArrayToObject(e, "data_offsets");
      cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
      cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(off + t[k].bytes)));
      off += t[k].bytes;
      snprintf(name, sizeof(name), "layers.%d.weight.%s", l, t[k].suffix);
      cJSON_AddItemToObject(h, name, e);
    }
  }
  char *json = cJSON_PrintUnformatted(h);
  cJSON_Delete(h);
  size_t jl = strlen(json), pad = (8 - jl % 8) % 8;
  FILE *f = fopen(path, "wb");
  if (f == NULL) {
    free(json);
    return -1;
  }
  uint64_t hl = jl + pad;
  unsigned char le[8];
  for (int i = 0; i < 8; i++)
    le[i] = (unsigned char)(hl >> (8 * i));
  fwrite(le, 1, 8, f);
  fwrite(json, 1, jl, f);
  for (size_t i = 0; i < pad; i++)
    fputc(' ', f);
  free(json);
  uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;
  for (int l = 0; l < layers; l++) {
    for (long i = 0; i < rows * cols; i++)
      fputc((int)(int8_t)(rnd(&s) & 0xff) & 0xff, f);
    for (long r = 0; r < rows; r++) {
      float sc = (float)(1 + rnd(&s) % 1000) / 65536.0f;
      fwrite(&sc, 4, 1, f);
    }
  }
  return fclose(f) == 0 ? 0 : -1;
}

/* A mapped safetensors file and its parsed header. */
typedef struct wfile {
  unsigned char *map;
  size_t size, data;
  cJSON *hdr;
} wfile;

static void wfile_close(wfile *w) {
  cJSON_Delete(w->hdr);
  if (w->map != NULL)
    munmap(w->map, w->size);
}

static int wfile_open(const char *path, wfile *w) {
  memset(w, 0, sizeof(*w));
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || st.st_size < 8) {
    if (fd >= 0)
      close(fd);
    return -1;
  }
  w->size = (size_t)st.st_size;
  w->map = mmap(NULL, w->size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (w->map == MAP_FAILED) {
    w->map = NULL;
    return -1;
  }
  uint64_t hl = 0;
  for (int i = 0; i < 8; i++)
    hl |= (uint64_t)w->map[i] << (8 * i);
  if (hl > w->size - 8)
    return -1;
  w->data = 8 + (size_t)hl;
  w->hdr = cJSON_ParseWithLength((const char *)w->map + 8, (size_t)hl);
  return w->hdr != NULL ? 0 : -1;
}

/* The bytes of tensor `name` with the given dtype and rank; NULL if the
 * file lacks it or it does not fit. */
static const void *wfile_tensor(const wfile *w, const char *name,
                                const char *dtype, int ndim, long *shape) {
  const cJSON *e = cJSON_GetObjectItemCaseSensitive(w->hdr, name);
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
  const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
  const cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
  if (!cJSON_IsString(dt) || strcmp(dt->valuestring, dtype) != 0 ||
      cJSON_GetArraySize(sh) != ndim || cJSON_GetArraySize(of) != 2)
    return NULL;
  size_t n = strcmp(dtype, "I8") == 0 ? 1 : 4;
  for (int d = 0; d < ndim; d++) {
    shape[d] = (long)cJSON_GetArrayItem(sh, d)->valuedouble;
    n *= (size_t)shape[d];
  }
  double a = cJSON_GetArrayItem(of, 0)->valuedouble;
  double b = cJSON_GetArrayItem(of, 1)->valuedouble;
  if (a < 0 || b - a != (double)n || w->data + (size_t)b > w->size)
    return NULL;
  return w->map + w->data + (size_t)a;
}

static void dequant_rows(const int8_t *q, const float *scale, long rows,
                         long cols, float *out) {
  for (long r = 0; r < rows; r++)
    for (long c = 0; c < cols; c++)
      out[r * cols + c] = (float)q[r * cols + c] * scale[r];
}

/* ------------------------------------------------------------------------ */
/* The transform, as a host image build                                      */
/* ------------------------------------------------------------------------ */

static int build_dequant(ms_image_builder_t *b, const char *path,
                         const char *config_json, void *user) {
  (void)config_json, (void)user;
  wfile w;
  int rc = wfile_open(path, &w) == 0 ? 0 : MS_EIO;
  const cJSON *e = NULL, *root = NULL;
  if (rc == 0)
    root = w.hdr;
  cJSON_ArrayForEach(e, root) {
    size_t n = strlen(e->string);
    if (n < 3 || strcmp(e->string + n - 2, ".q") != 0)
      continue;
    char base[256], sname[272];
    snprintf(base, sizeof(base), "%.*s", (int)(n - 2), e->string);
    snprintf(sname, sizeof(sname), "%s.scale", base);
    long qs[2], ss[1];
    const int8_t *q = wfile_tensor(&w, e->string, "I8", 2, qs);
    const float *sc = wfile_tensor(&w, sname, "F32", 1, ss);
    if (q == NULL || sc == NULL || ss[0] != qs[0]) {
      rc = MS_EIO;
      break;
    }
    int64_t shape[2] = {qs[0], qs[1]};
    float *out = NULL;
    rc = ms_image_builder_add(b, base, MS_DTYPE_FLOAT32, shape, 2,
                              (void **)&out);
    if (rc != 0)
      break;
    dequant_rows(q, sc, qs[0], qs[1], out);
  }
  wfile_close(&w);
  return rc;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const unsigned char *s = p;
  for (size_t i = 0; i < n; i++)
    h = (h ^ s[i]) * 0x100000001b3ULL;
  return h;
}

static int sum_tensor(const char *name, ms_tensor_t *t, void *user) {
  uint64_t *h = user;
  *h = fnv(*h, name, strlen(name) + 1);
  *h = fnv(*h, ms_tensor_data(t), ms_tensor_nbytes(t));
  return 0;
}

/* The same checksum over a private dequantization, for checking. */
static int reference_sum(const char *path, uint64_t *sum) {
  wfile w;
  if (wfile_open(path, &w) != 0)
    return -1;
  /* Image tensors come in name order (bytewise). */
  size_t n = 0;
  const cJSON *e = NULL;
  char(*names)[256] = calloc((size_t)cJSON_GetArraySize(w.hdr), 256);
  cJSON_ArrayForEach(e, w.hdr) {
    size_t l = strlen(e->string);
    if (l >= 3 && strcmp(e->string + l - 2, ".q") == 0)
      snprintf(names[n++], 256, "%.*s", (int)(l - 2), e->string);
  }
  qsort(names, n, 256, (int (*)(const void *, const void *))strcmp);
  uint64_t h = 0xcbf29ce484222325ULL;
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    char qn[272], sn[272];
    snprintf(qn, sizeof(qn), "%s.q", names[i]);
    snprintf(sn, sizeof(sn), "%s.scale", names[i]);
    long qs[2], ss[1];
    const int8_t *q = wfile_tensor(&w, qn, "I8", 2, qs);
    const float *sc = wfile_tensor(&w, sn, "F32", 1, ss);
    float *out = q != NULL && sc != NULL
                     ? malloc((size_t)(qs[0] * qs[1]) * sizeof(float))
                     : NULL;
    if (out == NULL) {
      rc = -1;
      break;
    }
    dequant_rows(q, sc, qs[0], qs[1], out);
    h = fnv(h, names[i], strlen(names[i]) + 1);
    h = fnv(h, out, (size_t)(qs[0] * qs[1]) * sizeof(float));
    free(out);
  }
  free(names);
  wfile_close(&w);
  *sum = h;
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Workers                                                                   */
/* ------------------------------------------------------------------------ */

static const ms_image_options_t *dequant_options(void) {
  static ms_image_options_t o = MS_IMAGE_OPTIONS_INIT;
  o.transform_id = "dequant-int8-rowwise";
  o.transform_version = "1";
  o.build = build_dequant;
  o.timeout_ms = 60000;
  return &o;
}

/* One worker: acquire, checksum, report on `out`, wait for "go" on `in`
 * (a serving worker keeps its weights while it runs), release. */
static int worker(const char *path, int in, int out) {
  ms_shm_t *shm = NULL;
  ms_key_t *key = NULL;
  ms_image_t *img = NULL;
  int rc = ms_shm_create(NULL, &shm);
  if (rc == 0)
    rc = ms_key_create(path, "{\"bits\":8,\"scales\":\"per-row\"}", &key);
  if (rc == 0)
    rc = ms_image_acquire(shm, key, dequant_options(), &img);
  uint64_t h = 0xcbf29ce484222325ULL;
  if (rc == 0)
    (void)ms_image_foreach(img, sum_tensor, &h);
  char line[128];
  int n = snprintf(line, sizeof(line), "%d %d %016" PRIx64 " %zu\n", rc,
                   ms_image_built_here(img), h, ms_image_count(img));
  if (rc != 0)
    fprintf(stderr, "worker %d: %s: %s\n", (int)getpid(), ms_err_name(rc),
            ms_shm_errmsg(shm));
  if (write(out, line, (size_t)n) != n)
    rc = -1;
  char go;
  (void)read(in, &go, 1);
  ms_image_release(img);
  ms_key_destroy(key);
  ms_shm_destroy(shm);
  return rc == 0 ? 0 : 1;
}

static int run(const char *path, int nworkers) {
  int to[64][2], from[64][2];
  pid_t pid[64];
  if (nworkers < 1 || nworkers > 64)
    return 2;
  for (int i = 0; i < nworkers; i++) {
    if (pipe(to[i]) != 0 || pipe(from[i]) != 0)
      return 1;
    fflush(NULL);
    pid[i] = fork();
    if (pid[i] == 0) {
      close(to[i][1]);
      close(from[i][0]);
      _exit(worker(path, to[i][0], from[i][1]));
    }
    close(to[i][0]);
    close(from[i][1]);
  }
  uint64_t ref = 0;
  int ok = reference_sum(path, &ref) == 0, built = 0;
  for (int i = 0; i < nworkers; i++) {
    char line[128] = {0};
    ssize_t n = read(from[i][0], line, sizeof(line) - 1);
    int rc = -1, here = 0;
    uint64_t h = 0;
    size_t count = 0;
    if (n <= 0 ||
        sscanf(line, "%d %d %" SCNx64 " %zu", &rc, &here, &h, &count) != 4)
      rc = -1;
    printf("worker %d (pid %d): %s, %zu tensors, checksum %016" PRIx64 "%s\n",
           i, (int)pid[i], rc == 0 ? "ok" : ms_err_name(rc), count, h,
           here ? " (ran the transform)" : "");
    ok &= rc == 0 && h == ref;
    built += here;
  }
  for (int i = 0; i < nworkers; i++) { /* everyone has it: let them go */
    (void)write(to[i][1], "g", 1);
    close(to[i][1]);
    close(from[i][0]);
  }
  for (int i = 0; i < nworkers; i++) {
    int st = 0;
    ok &= waitpid(pid[i], &st, 0) == pid[i] && WIFEXITED(st) &&
          WEXITSTATUS(st) == 0;
  }
  printf("reference checksum %016" PRIx64 ", transform ran %d time(s)\n", ref,
         built);
  ok &= built == 1;
  /* The image went with its last holder; the sweep removes its entry. */
  ms_shm_t *shm = NULL;
  if (ms_shm_create(NULL, &shm) == 0) {
    (void)ms_image_sweep(shm, NULL);
    ms_shm_destroy(shm);
  }
  printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "generate") == 0) {
    long rows = argc > 3 ? atol(argv[3]) : 512,
         cols = argc > 4 ? atol(argv[4]) : 512;
    int layers = argc > 5 ? atoi(argv[5]) : 4;
    uint64_t seed = argc > 6 ? strtoull(argv[6], NULL, 10) : 1;
    return generate(argv[2], rows, cols, layers, seed) == 0 ? 0 : 1;
  }
  if (argc == 4 && strcmp(argv[1], "run") == 0)
    return run(argv[2], atoi(argv[3]));
  if (argc != 1) {
    fprintf(stderr,
            "usage: %s [generate PATH [ROWS COLS LAYERS SEED] | run "
            "PATH N]\n",
            argv[0]);
    return 2;
  }
  char dir[] = "/tmp/dequant-XXXXXX", path[64];
  if (mkdtemp(dir) == NULL)
    return 1;
  snprintf(path, sizeof(path), "%s/weights.safetensors", dir);
  int rc = generate(path, 512, 512, 4, 42) == 0 ? run(path, 4) : 1;
  unlink(path);
  rmdir(dir);
  return rc;
}
