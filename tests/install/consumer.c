/* A program built against the installed copy of libmodelshare. */
#include <modelshare.h>

#include <stdio.h>
#include <string.h>

static int load(void *user, const char *path, const char *config, void **model,
                size_t *bytes) {
  (void)user, (void)path, (void)config;
  static const char weights[] = "weights";
  *model = (void *)weights;
  *bytes = sizeof(weights);
  return 0;
}

int main(void) {
  ms_registry_t *reg = NULL;
  ms_model_t *a = NULL, *b = NULL;
  ms_loader_t loader = MS_LOADER_INIT;
  loader.load = load;
  if (ms_registry_create(NULL, &reg) != 0 ||
      ms_registry_acquire(reg, "/m/x", "{\"b\":1,\"a\":2}", &loader, 0, &a) ||
      ms_registry_acquire(reg, "/m/x", "{\"a\":2,\"b\":1}", &loader, 0, &b) ||
      a != b || strcmp(ms_model_get(a), "weights") != 0) {
    fprintf(stderr, "consumer: registry did not behave\n");
    return 1;
  }
  ms_model_release(a);
  ms_model_release(b);
  if (ms_registry_destroy(reg) != 0 || ms_version() != MS_VERSION_NUMBER)
    return 1;
  printf("consumer ok (libmodelshare %s)\n", ms_version_string());
  return 0;
}
