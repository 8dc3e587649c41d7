/* Error codes (ms_strerror, ms_err_name) and per-thread error messages. */
#include "internal/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *ms_strerror(int code) {
  switch (code) {
  case 0:
    return "success";
#define MS__ERR_TEXT(name, value, text)                                        \
  case (value):                                                                \
    return text;
    MS_ERRNO_MAP(MS__ERR_TEXT)
#undef MS__ERR_TEXT
  default:
    return "unknown error";
  }
}

const char *ms_err_name(int code) {
  switch (code) {
  case 0:
    return "MS_OK";
#define MS__ERR_NAME(name, value, text)                                        \
  case (value):                                                                \
    return "MS_" #name;
    MS_ERRNO_MAP(MS__ERR_NAME)
#undef MS__ERR_NAME
  default:
    return "MS_UNKNOWN";
  }
}

/*
 * A few slots per thread, so that a thread using several objects keeps the
 * message of each; the oldest slot is reused.  Plain thread-local arrays: no
 * allocation, nothing to free when a thread exits.
 */
#define MS__ERRSLOTS 4
#define MS__ERRLEN 512

typedef struct ms__errslot {
  const void *obj;
  unsigned long stamp;
  char msg[MS__ERRLEN];
} ms__errslot;

static _Thread_local ms__errslot errslots[MS__ERRSLOTS];
static _Thread_local unsigned long errstamp;

static ms__errslot *errslot_find(const void *obj) {
  for (int i = 0; i < MS__ERRSLOTS; i++)
    if (errslots[i].obj == obj)
      return &errslots[i];
  return NULL;
}

int ms__errmsg_set(const void *obj, int code, const char *fmt, ...) {
  ms__errslot *slot = errslot_find(obj);
  if (slot == NULL) {
    slot = &errslots[0];
    for (int i = 1; i < MS__ERRSLOTS; i++)
      if (errslots[i].stamp < slot->stamp)
        slot = &errslots[i];
    slot->obj = obj;
  }
  slot->stamp = ++errstamp;
  va_list ap;
  va_start(ap, fmt);
  /* va_start above: the analyzer misreads fortified vsnprintf. */
  // NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized)
  (void)vsnprintf(slot->msg, sizeof(slot->msg), fmt, ap);
  va_end(ap);
  return code;
}

const char *ms__errmsg_get(const void *obj) {
  const ms__errslot *slot = errslot_find(obj);
  return slot != NULL ? slot->msg : "";
}

void ms__errmsg_clear(const void *obj) {
  ms__errslot *slot = errslot_find(obj);
  if (slot != NULL) {
    slot->obj = NULL;
    slot->stamp = 0;
    slot->msg[0] = '\0';
  }
}
