/* The backend the shared-memory suites run on: MS_TEST_BACKEND=memfd in
 * the environment (a second ctest registration) makes every allocator of
 * the test and of its helper processes use sealed memfds; anything else
 * (or unset) keeps named regions. */
#ifndef MS_TEST_SHM_BACKEND_H
#define MS_TEST_SHM_BACKEND_H

#include "modelshare.h"

#include <stdlib.h>
#include <string.h>

static inline uint32_t test_backend(void) {
  const char *b = getenv("MS_TEST_BACKEND");
  return b != NULL && strcmp(b, "memfd") == 0 ? MS_SHM_BACKEND_MEMFD
                                              : MS_SHM_BACKEND_NAMED;
}

static inline int test_memfd(void) {
  return test_backend() == MS_SHM_BACKEND_MEMFD;
}

#endif
