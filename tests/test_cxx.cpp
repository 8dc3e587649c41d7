// The public header compiles and works as C++ (and links against the C
// library without name mangling).
#include "modelshare.h"

#include <cstdio>
#include <cstring>

static int load(void *, const char *, const char *, void **model,
                size_t *bytes) {
  static int value = 42;
  *model = &value;
  *bytes = sizeof(value);
  return 0;
}

int main() {
  ms_registry_options_t opt = MS_REGISTRY_OPTIONS_INIT;
  ms_registry_stats_t stats = MS_REGISTRY_STATS_INIT;
  ms_loader_t loader = MS_LOADER_INIT;
  loader.load = load;
  ms_registry_t *reg = nullptr;
  ms_model_t *m = nullptr;
  if (ms_registry_create(&opt, &reg) != 0 ||
      ms_registry_acquire(reg, "/m/cxx", "{}", &loader, 0, &m) != 0 ||
      *static_cast<int *>(ms_model_get(m)) != 42 ||
      ms_registry_stats(reg, &stats) != 0 || stats.misses != 1) {
    std::puts("FAIL");
    return 1;
  }
  ms_model_release(m);
  if (ms_registry_destroy(reg) != 0 ||
      std::strcmp(ms_err_name(MS_EBUSY), "MS_EBUSY") != 0)
    return 1;
  std::puts("ok");
  return 0;
}
