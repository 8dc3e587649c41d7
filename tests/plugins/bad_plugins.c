/* Broken worker plugins for test_worker_bin, one per build of this file:
 *   -DBAD_REFUSES   ms_worker_plugin_v1 returns MS_ENOTSUP;
 *   -DBAD_NO_ENTRY  the entry point is missing (another symbol is there). */
#include <modelshare.h>

#if defined(BAD_REFUSES)
MS_PLUGIN_EXPORT int ms_worker_plugin_v1(ms_worker_model_t *out) {
  (void)out;
  return MS_ENOTSUP;
}
#elif defined(BAD_NO_ENTRY)
MS_PLUGIN_EXPORT int ms_worker_plugin_v2(ms_worker_model_t *out);
MS_PLUGIN_EXPORT int ms_worker_plugin_v2(ms_worker_model_t *out) {
  (void)out;
  return 0;
}
#else
#error "build with -DBAD_REFUSES or -DBAD_NO_ENTRY"
#endif
