/* Resident set size of the calling process (Linux /proc/self/statm), for
 * the examples, tests and bench that measure memory saved. */
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

#endif
