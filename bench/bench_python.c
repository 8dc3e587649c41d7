/* The python scenario: the Python package (python/modelshare) measured by
 * Debian's /usr/bin/python3 running bench/bench_python.py, against
 * multiprocessing.shared_memory measured in the same run by the same
 * script (same processes, same bytes, same pipe).  This file runs the
 * script, reads its JSON and judges the targets of issue 14. */
#include "bench.h"

#include <stdlib.h>
#include <string.h>

#ifndef MSB_PYTHON_SCRIPT
#error "MSB_PYTHON_SCRIPT, MSB_PYTHON_PATH and MSB_LIBRARY come from CMake"
#endif

#define MSB_PYTHON "/usr/bin/python3" /* Debian's numpy is for Debian's */

/* An ASan build's library needs the sanitizer runtimes first in the
 * (uninstrumented) interpreter; its own allocations are not leak-checked.
 * Set for the interpreter's command only: a preloaded runtime inherited by
 * later scenarios' children (espeak-ng) deadlocks them. */
#ifdef MSB_PYTHON_PRELOAD
#define MSB_PYTHON_ENV                                                         \
  "LD_PRELOAD='" MSB_PYTHON_PRELOAD "' ASAN_OPTIONS=detect_leaks=0 "
#else
#define MSB_PYTHON_ENV ""
#endif

static double num(const cJSON *row, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(row, key);
  return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* Runs the script; returns its stdout (malloc'ed) or NULL. */
static char *run_script(const msb_opts *o) {
  char sizes[128] = "";
  for (int i = 0; i < o->nsizes; i++) {
    size_t len = strlen(sizes);
    (void)snprintf(sizes + len, sizeof(sizes) - len, "%s%zu", i ? "," : "",
                   o->sizes_mib[i]);
  }
  /* The package and the library of this build, unless the caller points
   * MODELSHARE_LIBRARY elsewhere. */
  if (setenv("PYTHONPATH", MSB_PYTHON_PATH, 1) != 0 ||
      setenv("MODELSHARE_LIBRARY", MSB_LIBRARY, 0) != 0)
    return NULL;
  char cmd[1024];
  int n =
      snprintf(cmd, sizeof(cmd),
               MSB_PYTHON_ENV MSB_PYTHON " %s --sizes %s --reps %d "
                                         "--frames %d --c-consumer %s",
               MSB_PYTHON_SCRIPT, sizes, o->reps, o->quick ? 4 : 8, o->self);
  if (n < 0 || (size_t)n >= sizeof(cmd))
    return NULL;
  fflush(NULL);
  FILE *f = popen(cmd, "r");
  if (f == NULL)
    return NULL;
  size_t cap = 4096, len = 0;
  char *out = malloc(cap);
  size_t got;
  while (out != NULL && (got = fread(out + len, 1, cap - len - 1, f)) > 0) {
    len += got;
    if (cap - len < 2) {
      char *bigger = realloc(out, cap *= 2);
      if (bigger == NULL)
        free(out);
      out = bigger;
    }
  }
  int status = pclose(f);
  if (out != NULL)
    out[len] = '\0';
  if (status != 0) {
    free(out);
    return NULL;
  }
  return out;
}

int msb_python(const msb_opts *o, cJSON *root) {
  msb_progress("python: package vs multiprocessing.shared_memory");
  cJSON *arr = cJSON_AddArrayToObject(root, "python");
  char *out = run_script(o);
  cJSON *doc = out != NULL ? cJSON_Parse(out) : NULL;
  free(out);
  const cJSON *rows = cJSON_GetObjectItemCaseSensitive(doc, "python");
  if (!cJSON_IsArray(rows)) {
    printf("\n== Python package ==\n%s with numpy could not run "
           "bench/bench_python.py: no figures\n",
           MSB_PYTHON);
    cJSON_Delete(doc);
    return -1;
  }
  printf("\n== Python package (Debian python3 + numpy; consumer in another "
         "process; medians of %d) ==\n",
         o->reps);
  printf("%8s %9s %9s %9s %9s %9s %9s\n", "size", "open us", "hot us", "pooled",
         "pooled C", "mp fresh", "mp reuse");
  const cJSON *row;
  int all_ok = 1;
  cJSON_ArrayForEach(row, rows) {
    double size = num(row, "size_bytes"),
           open = num(row, "open_view_us_median"),
           hot = num(row, "open_view_hot_us_median"),
           pooled = num(row, "cycle_pooled_gibs"),
           pooled_c = num(row, "cycle_pooled_c_gibs"),
           fresh = num(row, "mp_shm_fresh_gibs"),
           reused = num(row, "mp_shm_reused_gibs");
    double vs_fresh = fresh > 0 ? pooled / fresh : 0,
           vs_reused = reused > 0 ? pooled / reused : 0;
    int big = size >= 10.0 * (1 << 20); /* the reused target: 10, 100 MiB */
    printf("%5.0f MiB %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f\n", size / (1 << 20),
           open, hot, pooled, pooled_c, fresh, reused);
    int ok_open = open >= 0 && open <= 10, ok_fresh = vs_fresh >= 3,
        ok_reused = !big || vs_reused >= 1;
    all_ok &= ok_open && ok_fresh && ok_reused;
    /* One verdict per target: the warm figure is shown, not judged. */
    printf("%9s open+numpy %.1f us %s (<= 10; warm: %.1f us) | %.1fx mp "
           "fresh %s (>= 3x) | %.2fx mp reused %s\n",
           "", open, msb_pass(ok_open), hot, vs_fresh, msb_pass(ok_fresh),
           vs_reused, big ? msb_pass(ok_reused) : "(judged at 10 and 100 MiB)");
    cJSON *e = cJSON_Duplicate(row, 1);
    cJSON_AddNumberToObject(e, "vs_mp_fresh", vs_fresh);
    cJSON_AddNumberToObject(e, "vs_mp_reused", vs_reused);
    cJSON_AddItemToArray(arr, e);
  }
  printf("(GiB/s; open us = shm.open + numpy() in the consumer, per frame of "
         "the pooled cycle; hot us = the same call repeated on one region; "
         "pooled C = the same frames read by a C consumer)\n");
  cJSON_Delete(doc);
  return all_ok ? MSB_ALL_PASS : MSB_MISSED;
}
