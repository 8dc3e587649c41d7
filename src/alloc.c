/* Memory the library hands to callers is freed here, by the same allocator
 * that made it (this matters on Windows, where each CRT has its own heap). */
#include "internal/common.h"

#include <stdlib.h>

void ms_free(void *ptr) { free(ptr); }
