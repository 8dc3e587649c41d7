/*
 * modelshare-bench: reproduces the founding measurements of libmodelshare
 * on this machine, each beside a baseline measured in the same run, and
 * prints PASS/MISS against the project's targets.
 *
 * Exit status: 0 when every target of every scenario run passed, 1 when any
 * target was missed (each MISS is printed), 2 on a bad argument, 3 when a
 * scenario could not run or the JSON could not be written.  CI's --quick
 * run (bench/check_json.sh) checks the JSON schema only and accepts 0 and 1
 * on purpose: a shared CI machine is too noisy to judge speed targets.
 */
#include "bench.h"
#include "gbench_shim.h"
#include "rss.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

static const char usage[] =
    "usage: modelshare-bench [options]\n"
    "\n"
    "Runs the founding measurements of libmodelshare: a table on stdout,\n"
    "progress on stderr.  Every speed figure is compared with a baseline\n"
    "measured in the same run; PASS/MISS marks each target.\n"
    "\n"
    "  --only LIST      comma-separated scenarios to run (default: all):\n"
    "                     micro     Google Benchmark micro-benchmarks\n"
    "                     registry  N nodes on the real speech model, with\n"
    "                               and without the registry (RSS, load time)\n"
    "                     dedup     64 threads acquiring one cold key\n"
    "                     shm       shared memory vs heap, pipe serialization\n"
    "                               and Python multiprocessing.shared_memory\n"
    "                     vision    100 MiB frames between two processes\n"
    "                     python    the Python package vs Python's\n"
    "                               multiprocessing.shared_memory\n"
    "                     channel   descriptor channel latency, idle CPU\n"
    "                     memfd     memfd vs named regions: first open,\n"
    "                               cached reopen, pooled cycle\n"
    "                     weights   4 workers sharing one 256 MiB host\n"
    "                               image of dequantized weights vs private\n"
    "                     worker    model worker: round trip vs a raw Unix\n"
    "                               socket, batching, PSS vs separate\n"
    "                               processes on the speech model\n"
    "  --instances N    registry: model instances (default 3)\n"
    "  --sizes LIST     shm: sizes in MiB (default 1,10,100)\n"
    "  --reps N         repetitions behind each median (default 5)\n"
    "  --quick          small sizes and few repetitions, for CI (< 1 min)\n"
    "  --json PATH      also write every raw measurement as JSON\n"
    "  --help           this text\n"
    "\n"
    "Exit status: 0 every target passed, 1 some target was missed (MISS),\n"
    "2 bad argument, 3 a scenario could not run.\n";

static int misses; /* MISS verdicts printed; the bench is single-threaded */

const char *msb_pass(int ok) {
  misses += !ok;
  return ok ? "PASS" : "MISS";
}

int msb_misses(void) { return misses; }

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

double msb_median(double *v, int n) {
  if (n <= 0)
    return 0;
  qsort(v, (size_t)n, sizeof(*v), cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

uint64_t msb_read_all(const void *p, size_t n) {
  const uint64_t *w = p;
  uint64_t a = 0, b = 0, c = 0, d = 0;
  size_t i = 0, words = n / 8;
  for (; i + 4 <= words; i += 4) {
    a += w[i];
    b ^= w[i + 1];
    c += w[i + 2];
    d ^= w[i + 3];
  }
  for (; i < words; i++)
    a += w[i];
  return a + b + c + d;
}

size_t msb_rss(void) { return ms_example_rss_bytes(); }

void msb_progress(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("[modelshare-bench] ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static void machine(cJSON *root) {
  char cpu[600] = "unknown", line[512];
  FILE *f = fopen("/proc/cpuinfo", "r");
  while (f != NULL && fgets(line, sizeof(line), f) != NULL)
    if (strncmp(line, "model name", 10) == 0) {
      const char *c = strchr(line, ':');
      (void)snprintf(cpu, sizeof(cpu), "%s", c != NULL ? c + 2 : line);
      cpu[strcspn(cpu, "\n")] = '\0';
      break;
    }
  if (f != NULL)
    fclose(f);
  struct utsname u;
  const char *kernel = uname(&u) == 0 ? u.release : "unknown";
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  printf("libmodelshare %s bench on %s, %ld cores, Linux %s\n",
         ms_version_string(), cpu, cores, kernel);
  cJSON *m = cJSON_AddObjectToObject(root, "machine");
  cJSON_AddStringToObject(m, "cpu", cpu);
  cJSON_AddNumberToObject(m, "cores", (double)cores);
  cJSON_AddStringToObject(m, "kernel", kernel);
}

static int wants(const char *only, const char *name) {
  if (only == NULL)
    return 1;
  size_t n = strlen(name);
  for (const char *p = only; *p;) {
    const char *e = strchr(p, ',');
    size_t len = e != NULL ? (size_t)(e - p) : strlen(p);
    if (len == n && strncmp(p, name, n) == 0)
      return 1;
    p += len + (e != NULL);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--consumer") == 0)
    return msb_consumer_main();
  if (argc >= 2 && strcmp(argv[1], "--channel-peer") == 0)
    return msb_channel_peer_main(argc - 1, argv + 1);
  if (argc >= 2 && strcmp(argv[1], "--worker-peer") == 0)
    return msb_worker_peer_main(argc - 1, argv + 1);

  setvbuf(stdout, NULL, _IOLBF, 0); /* keep the table in step with stderr */
  msb_opts o = {0};
  o.instances = 3;
  o.reps = 5;
  o.sizes_mib[0] = 1, o.sizes_mib[1] = 10, o.sizes_mib[2] = 100;
  o.nsizes = 3;
  o.vision_mib = 100;
  o.vision_frames = 20;
  o.self = argv[0];
  const char *only = NULL, *json_path = NULL;
  int reps_given = 0, sizes_given = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--help") == 0) {
      fputs(usage, stdout);
      return 0;
    } else if (strcmp(a, "--quick") == 0) {
      o.quick = 1;
    } else if (strcmp(a, "--only") == 0 && val) {
      only = val, i++;
    } else if (strcmp(a, "--json") == 0 && val) {
      json_path = val, i++;
    } else if (strcmp(a, "--instances") == 0 && val && atoi(val) >= 1) {
      o.instances = atoi(val), i++;
    } else if (strcmp(a, "--reps") == 0 && val && atoi(val) >= 1) {
      o.reps = atoi(val), reps_given = 1, i++;
    } else if (strcmp(a, "--sizes") == 0 && val) {
      char *copy = strdup(val);
      o.nsizes = 0;
      for (char *s = strtok(copy, ","); s && o.nsizes < MSB_MAX_SIZES;
           s = strtok(NULL, ","))
        if (strtoull(s, NULL, 10) > 0)
          o.sizes_mib[o.nsizes++] = strtoull(s, NULL, 10);
      free(copy);
      sizes_given = o.nsizes > 0;
      i++;
    } else {
      fprintf(stderr, "modelshare-bench: bad argument %s\n\n%s", a, usage);
      return 2;
    }
  }
  if (o.quick) {
    if (!reps_given)
      o.reps = 3;
    if (!sizes_given) {
      o.sizes_mib[0] = 1, o.sizes_mib[1] = 10;
      o.nsizes = 2;
    }
    o.vision_mib = 10;
    o.vision_frames = 8;
  }

  cJSON *root = cJSON_CreateObject();
  machine(root);
  int missed = 0, failed = 0; /* over every scenario run */
  /* The registry table quotes the hit and mutex micro-benchmarks. */
  if (wants(only, "micro") || wants(only, "registry")) {
    msb_progress("micro-benchmarks (Google Benchmark)");
    msb_micro_register();
    msb_run(o.quick ? 3 : 5, o.quick ? 0.02 : 0.2);
    msb_micro_done();
    cJSON *micro = cJSON_AddObjectToObject(root, "micro_ns_median");
    static const char *names[] = {"registry_hit",
                                  "registry_hit_2threads",
                                  "registry_hit_string_key",
                                  "uv_mutex_lock_unlock",
                                  "tensor_alloc_release_pooled_1MiB",
                                  "descriptor_open_cached",
                                  "descriptor_open_uncached",
                                  "safetensors_serialize_1MiB",
                                  "safetensors_serialize_10MiB",
                                  "safetensors_serialize_100MiB",
                                  "safetensors_deserialize_1MiB",
                                  "safetensors_deserialize_10MiB",
                                  "safetensors_deserialize_100MiB"};
    if (wants(only, "micro"))
      printf("\n== Micro-benchmarks (Google Benchmark, median ns per "
             "operation) ==\n");
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
      double ns = msb_median_ns(names[i]);
      cJSON_AddNumberToObject(micro, names[i], ns);
      if (wants(only, "micro"))
        printf("%-36s %14.1f\n", names[i], ns);
    }
  }
  static const struct {
    const char *name;
    int (*run)(const msb_opts *, cJSON *);
  } scenarios[] = {{"registry", msb_registry}, {"dedup", msb_dedup},
                   {"shm", msb_shm},           {"vision", msb_vision},
                   {"python", msb_python},     {"channel", msb_channel},
                   {"memfd", msb_memfd},       {"weights", msb_weights},
                   {"worker", msb_worker}};
  for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
    if (!wants(only, scenarios[i].name))
      continue;
    int rc = scenarios[i].run(&o, root);
    if (rc < 0) {
      fprintf(stderr, "modelshare-bench: scenario %s failed to run\n",
              scenarios[i].name);
      failed = 1;
    }
    missed |= rc == MSB_MISSED;
  }
  /* A scenario that prints a MISS but returns MSB_ALL_PASS still fails
   * the run: every MISS shown counts. */
  missed |= msb_misses() > 0;

  if (json_path != NULL) {
    char *text = cJSON_Print(root);
    FILE *f = fopen(json_path, "w");
    if (f == NULL || text == NULL || fputs(text, f) < 0) {
      fprintf(stderr, "modelshare-bench: cannot write %s\n", json_path);
      failed = 1;
    }
    if (f != NULL && fclose(f) != 0)
      failed = 1;
    cJSON_free(text);
  }
  cJSON_Delete(root);
  if (missed)
    printf("\nmodelshare-bench: %d target(s) missed: exit status 1\n",
           msb_misses());
  return failed ? 3 : missed ? 1 : 0;
}
