/* Memory the library hands to callers is freed here, by the same allocator
 * that made it (this matters on Windows, where each CRT has its own heap). */
#include "internal/common.h"

#include <cjson/cJSON.h>

#include <stdlib.h>
#include <string.h>

void ms_free(void *ptr) { free(ptr); }

int ms__json_print(const cJSON *root, char **out) {
  /* cJSON may use allocator hooks another part of the program installed:
   * copy its text into memory that ms_free() releases. */
  char *text = root != NULL ? cJSON_PrintUnformatted(root) : NULL;
  size_t len = text != NULL ? strlen(text) + 1 : 0;
  *out = text != NULL ? malloc(len) : NULL;
  if (*out != NULL)
    memcpy(*out, text, len);
  cJSON_free(text);
  return *out != NULL ? 0 : MS_ENOMEM;
}
