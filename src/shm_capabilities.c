/* ms_capabilities: can this machine share memory, and how much. */
#include "internal/abi.h"
#include "internal/shm.h"

#include <stdio.h>
#include <string.h>

_Static_assert(MS__CAPABILITIES_V1 <= sizeof(ms_capabilities_t),
               "1.0 capabilities size");

int ms_capabilities(const char *dir, ms_capabilities_t *caps) {
  if (caps == NULL || caps->struct_size < MS__CAPABILITIES_V1)
    return MS_EINVAL;
  ms_capabilities_t c = MS_CAPABILITIES_INIT;
  c.page_size = ms__page_size();

  ms__ns *ns = NULL;
  if (ms__ns_open(dir, &ns) == 0) {
    uint64_t free_bytes = 0, total = 0;
    if (ms__ns_space(ns, &free_bytes, &total) == 0) {
      c.shm_free_bytes = free_bytes;
      c.shm_total_bytes = total;
      c.max_region_bytes = free_bytes < SIZE_MAX ? free_bytes : SIZE_MAX;
    }
    /* Probe: create, map, write, unlink a one-page region. */
    unsigned char rnd[8];
    char name[64];
    if (ms__random(rnd, sizeof(rnd)) == 0) {
      (void)snprintf(name, sizeof(name),
                     "ms-probe-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0],
                     rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
      ms__region r;
      if (ms__region_create(ns, name, (size_t)c.page_size, &r) == 0) {
        memset(r.base, 0xA5, (size_t)c.page_size);
        c.shm_available = ((unsigned char *)r.base)[c.page_size - 1] == 0xA5;
        ms__region_unmap(&r);
        (void)ms__region_unlink(ns, name);
      }
    }
    ms__ns_close(ns);
  }
  int made = 0;
  c.memfd_reopen = (uint32_t)ms__anon_probe(&made);
  c.memfd_available = (uint32_t)made;
  (void)ms__struct_out(caps, &c, sizeof(c), MS__CAPABILITIES_V1);
  return 0;
}
