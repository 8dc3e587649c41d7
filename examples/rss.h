/* Resident set size (Linux /proc/self/statm) and proportional set size
 * (/proc/self/smaps_rollup) of the calling process, for the examples, tests
 * and bench that measure memory saved.  RSS counts every resident page the
 * process maps; PSS divides each page by the number of processes mapping
 * it, so memory shared across processes is counted once in their sum. */
#ifndef MS_EXAMPLE_RSS_H
#define MS_EXAMPLE_RSS_H

#include <stddef.h>
#include <stdio.h>
#include <unistd.h>

static inline size_t ms_example_rss_bytes(void) {
  long pages = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL)
    return 0;
  if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
    resident = 0;
  fclose(f);
  return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* PSS in bytes of process pid (0: the calling process), or 0 when it is
 * gone, not readable, or the kernel has no smaps_rollup (before 4.14). */
static inline size_t ms_example_pss_bytes_of(long pid) {
  char path[64], line[256];
  size_t kb = 0;
  if (pid == 0)
    snprintf(path, sizeof(path), "/proc/self/smaps_rollup");
  else
    snprintf(path, sizeof(path), "/proc/%ld/smaps_rollup", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return 0;
  while (fgets(line, sizeof(line), f) != NULL)
    if (sscanf(line, "Pss: %zu kB", &kb) == 1)
      break;
  fclose(f);
  return kb * 1024;
}

/* PSS in bytes, or 0 when the kernel has no smaps_rollup (before 4.14). */
static inline size_t ms_example_pss_bytes(void) {
  return ms_example_pss_bytes_of(0);
}

#endif
