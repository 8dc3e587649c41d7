/* Version queries. */
#include "internal/common.h"

unsigned ms_version(void) { return MS_VERSION_NUMBER; }

const char *ms_version_string(void) { return MS_VERSION_STRING; }
