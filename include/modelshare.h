/*
 * modelshare.h - the one public header of libmodelshare.
 *
 * libmodelshare shares loaded models between the parts of a program (a
 * refcounted model registry) and tensors between processes (a shared-memory
 * tensor allocator with a safetensors fallback).  This header is the reference
 * manual: every declaration says what it does, who owns what, what happens on
 * NULL, whether it is thread-safe and which errors it returns.
 *
 * Conventions used throughout:
 *   - Functions that can fail return int: 0 on success, a negative MS_E* code
 *     on failure.  Output parameters are written only on success.
 *   - Objects are opaque and come in create/destroy pairs.  Every destroy or
 *     release function accepts NULL and then does nothing.
 *   - Structs the caller fills in start with `size_t struct_size`; initialise
 *     them with the matching *_INIT macro.  Fields are only ever appended, so a
 *     program built against an older header keeps working: the library
 *     accepts any struct_size from the struct's 1.0 size up.  For input
 *     structs it reads min(struct_size, its sizeof) bytes (newer fields it
 *     does not know are ignored, fields the caller does not have keep their
 *     defaults); output structs are written up to the same bound, never
 *     further.  A struct_size below the 1.0 size is MS_EINVAL.  Padding a
 *     1.0 struct had at its end is an explicit reserved* field.
 *   - There is no global error state.  Each object remembers, per calling
 *     thread, a human-readable message for the last error it returned.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef MODELSHARE_H
#define MODELSHARE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Symbol visibility                                                         */
/* ------------------------------------------------------------------------ */

#if defined(_WIN32) && defined(MS_BUILDING_SHARED)
#define MS_EXPORT __declspec(dllexport)
#elif defined(_WIN32) && defined(MS_USING_SHARED)
#define MS_EXPORT __declspec(dllimport)
#elif defined(__GNUC__) && defined(MS_BUILDING_LIBRARY)
#define MS_EXPORT __attribute__((visibility("default")))
#else
#define MS_EXPORT
#endif

/* ------------------------------------------------------------------------ */
/* Version                                                                   */
/* ------------------------------------------------------------------------ */

#define MS_VERSION_MAJOR 1
#define MS_VERSION_MINOR 2
#define MS_VERSION_PATCH 0
#define MS_VERSION_STRING "1.2.0"
/** (major << 16) | (minor << 8) | patch, comparable with < and >. */
#define MS_VERSION_NUMBER                                                      \
  ((MS_VERSION_MAJOR << 16) | (MS_VERSION_MINOR << 8) | MS_VERSION_PATCH)

/** The MS_VERSION_NUMBER of the library actually linked.  Thread-safe. */
MS_EXPORT unsigned ms_version(void);
/** The MS_VERSION_STRING of the library linked; static storage.  Thread-safe.
 */
MS_EXPORT const char *ms_version_string(void);

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

/*
 * Every error code, once.  Codes are never renumbered or reused; retired codes
 * keep their number.  XX(name, value, description).  Codes shared by the
 * registry and shared memory (MS_ENOMEM, MS_ENOENT, ...) have neutral texts;
 * the object's errmsg names what was not found or did not fit.
 */
#define MS_ERRNO_MAP(XX)                                                       \
  XX(EINVAL, -1, "invalid argument")                                           \
  XX(ENOMEM, -2, "out of memory, or over a memory budget")                     \
  XX(ETIMEDOUT, -3, "timed out")                                               \
  XX(EDEADLK, -4, "a loader asked for the model it is loading")                \
  XX(EBUSY, -5, "object still in use")                                         \
  XX(ENOENT, -6, "not found")                                                  \
  XX(ELOAD, -7, "the loader failed")                                           \
  XX(EIO, -8, "input/output error")                                            \
  XX(ENOSPC, -9, "no space left for a shared-memory region")                   \
  XX(EQUOTA, -10, "allocation over the allocator quota")                       \
  XX(EBADREGION, -11, "malformed or hostile shared-memory region or stream")   \
  XX(ESTALE, -12, "stale descriptor: the region was recycled")                 \
  XX(ENOTSUP, -13, "operation not supported on this platform")                 \
  XX(EACCES, -14, "permission denied")                                         \
  XX(ERANGE, -15, "value out of range")                                        \
  XX(ECANCELED, -16, "the request was cancelled")                              \
  XX(EPIPE, -17, "the channel's producer is gone")                             \
  XX(EDISCONNECTED, -18, "the connection to the model worker was lost")

typedef enum ms_errno {
#define MS__ERR_ENUM(name, value, text) MS_##name = (value),
  MS_ERRNO_MAP(MS__ERR_ENUM)
#undef MS__ERR_ENUM
      MS_OK = 0
} ms_errno_t;

/**
 * A static English description of `code` ("success" for 0, "unknown error"
 * for a code not in MS_ERRNO_MAP).  Never returns NULL.  Thread-safe.
 */
MS_EXPORT const char *ms_strerror(int code);
/**
 * The symbolic name of `code`, e.g. "MS_EINVAL" ("MS_OK" for 0,
 * "MS_UNKNOWN" otherwise).  Never returns NULL.  Thread-safe.
 */
MS_EXPORT const char *ms_err_name(int code);

/* ------------------------------------------------------------------------ */
/* Memory                                                                    */
/* ------------------------------------------------------------------------ */

typedef void *(*ms_malloc_func)(size_t size);
typedef void *(*ms_realloc_func)(void *ptr, size_t size);
typedef void *(*ms_calloc_func)(size_t count, size_t size);
typedef void (*ms_free_func)(void *ptr);

/**
 * Makes every allocation of the library go through the given functions
 * (like libuv's uv_replace_allocator), and ms_free() through free_fn.  The
 * library never asks for 0 bytes.
 *
 * Call it before any other function of the library, from one thread.  It
 * returns MS_EBUSY, changing nothing, while memory the library allocated
 * with the previous functions is still alive (any registry, key, allocator,
 * tensor, model or string from ms_*_json()).
 *
 * Not covered, by design: cJSON and libuv allocate through their own
 * global hooks (cJSON_InitHooks, uv_replace_allocator), which belong to the
 * host program; the library never changes them.  cJSON is used while
 * parsing a config or a safetensors header and while building stats JSON;
 * libuv allocates in the async API (uv_queue_work requests are the
 * library's, libuv's internal ones are not).
 *
 * Allocation failure: every call that allocates returns MS_ENOMEM when an
 * allocation (the library's, cJSON's or libuv's) fails, and leaves the
 * objects it was given as they were: no half-initialised object, no entry
 * stuck loading, no region left in shared memory, no holder slot taken.
 * Releases and destroys never allocate.  A loader's own failure is its own
 * return code.  Other exhausted resources are clean failures too: out of
 * file descriptors is MS_EIO, out of address space (mmap) MS_ENOMEM, a full
 * tmpfs MS_ENOSPC; each call succeeds again once the resource is back.
 * Errors: MS_EINVAL (a NULL function), MS_EBUSY (see above).
 */
MS_EXPORT int ms_replace_allocator(ms_malloc_func malloc_fn,
                                   ms_realloc_func realloc_fn,
                                   ms_calloc_func calloc_fn,
                                   ms_free_func free_fn);

/* ------------------------------------------------------------------------ */
/* Model keys                                                                */
/* ------------------------------------------------------------------------ */

/*
 * A model is identified by the pair (canonical path, canonical config).
 *   - The path is made absolute and resolved (symlinks, "..") when the file
 *     exists; otherwise it is kept as given.
 *   - The config is JSON text.  It is parsed and re-serialised with object
 *     keys sorted recursively (by the bytes of their UTF-8 text) and no
 *     whitespace.  NULL, "" or only whitespace means "{}".
 * Two configs name the same model exactly when they are the same JSON
 * value, written the same way.  Ignored:
 *   - the order of object keys:      {"a":1,"b":2} = {"b":2,"a":1}
 *   - whitespace between tokens:     { "a" : [1, 2] } = {"a":[1,2]}
 *   - string escapes that denote the same characters:
 *                                    "\u0041\/" = "A/",
 *                                    "\ud83d\ude00" = the UTF-8 of U+1F600
 * Not ignored:
 *   - number tokens, which are kept exactly as written (never rounded
 *     through a double) and reach the loader as written:
 *     1.0 != 1, 1e2 != 100, -0 != 0, 0.30000000000000004 != 0.3,
 *     9007199254740993 stays 9007199254740993;
 *   - array order and every character of strings and keys.
 * Refused with MS_EINVAL (ms_key_errmsg() says why):
 *   - anything that is not one JSON value (RFC 8259 grammar: no leading
 *     zeros, "+1", ".5", "1.", NaN or trailing data; control bytes outside
 *     strings, unescaped control characters inside them, lone UTF-16
 *     surrogates in \u escapes);
 *   - duplicate keys in an object;
 *   - a number that does not fit a double: one that rounds to infinity
 *     (magnitude about 1.8e308 or more, e.g. 1e400) or a non-zero one that
 *     rounds to zero (e.g. 1e-400); denormals such as 1e-310 are accepted;
 *   - a number token longer than 63 characters;
 *   - "\u0000" in a string or key (and any \u escape not followed by four
 *     hex digits);
 *   - nesting deeper than 1000, or text over MS_CONFIG_MAX bytes.
 * Two keys are equal only if both strings are equal byte for byte; the 64-bit
 * hash is used for bucketing only, so a hash collision never returns the
 * wrong model.
 *
 * Canonicalisation costs microseconds (realpath, JSON parsing).  Build an
 * ms_key_t once and use ms_registry_acquire_key() on hot paths: with a
 * prebuilt key, a cache hit does no parsing, no system call and no
 * allocation.
 */
typedef struct ms_key ms_key_t;

/** Longest accepted model path, in bytes, excluding the terminator. */
#define MS_PATH_MAX 4095
/** Longest accepted config JSON text, in bytes. */
#define MS_CONFIG_MAX 1048576

/**
 * Builds a key from a model path and optional config JSON.
 *
 * path: non-empty, at most MS_PATH_MAX bytes, no embedded NUL.
 * config_json: JSON text, NULL or "" for none.  Any JSON value is accepted
 *   (objects are the usual case).
 * On success *out owns a new key; free it with ms_key_destroy().  Its
 *   config (ms_key_config()) is the canonical text described above: what
 *   the loader receives.
 * Errors: MS_EINVAL (NULL path or out, empty or over-long path, malformed
 *   JSON or a refused value listed above: ms_key_errmsg() names the
 *   problem and its byte offset), MS_ENOMEM.
 * Thread-safe.
 */
MS_EXPORT int ms_key_create(const char *path, const char *config_json,
                            ms_key_t **out);
/** Frees a key.  NULL is a no-op.  A key may be destroyed while models
 *  acquired with it are held: the registry keeps its own copy. */
MS_EXPORT void ms_key_destroy(ms_key_t *key);
/** The canonical path of key (owned by key).  NULL if key is NULL. */
MS_EXPORT const char *ms_key_path(const ms_key_t *key);
/** The canonical config JSON of key (owned by key).  NULL if key is NULL. */
MS_EXPORT const char *ms_key_config(const ms_key_t *key);
/** The 64-bit bucketing hash of key; 0 if key is NULL. */
MS_EXPORT uint64_t ms_key_hash(const ms_key_t *key);
/**
 * The message for the last ms_key_create() failure on the calling thread
 * ("" if none).  The string is owned by the library and valid until the next
 * ms_key_create() on this thread.
 */
MS_EXPORT const char *ms_key_errmsg(void);

/* ------------------------------------------------------------------------ */
/* Model registry                                                            */
/* ------------------------------------------------------------------------ */

/*
 * The registry keeps at most one loaded instance of each model key.
 *
 * States: an entry is LOADING while exactly one caller runs the loader, then
 * READY.  If the loader fails the entry is removed: every caller waiting on
 * that load gets the loader's error, nothing is cached, and the next acquire
 * loads again.
 *
 * Handles: every successful acquire returns a reference to an ms_model_t.
 * Release it with ms_model_release().  A model whose last reference is
 * released stays cached (idle) until the idle TTL expires, the memory budget
 * needs its bytes (least recently used first), or ms_registry_evict() /
 * ms_registry_trim() remove it.  A held model is never evicted.  The loader's
 * unload function runs exactly once per loaded model, never under a registry
 * lock.
 *
 * Thread safety: every registry function may be called from any thread at
 * any time.  A cache hit takes a shared read lock and two atomic increments.
 *
 * Deadlocks: the loader runs without any registry lock held.  A loader may
 * acquire other keys from the same registry.  A loader that (directly or via
 * nested loads on the same thread) asks for the key being loaded gets
 * MS_EDEADLK.  A cycle of loads across different threads is not detected:
 * give such loaders a timeout.
 */
typedef struct ms_registry ms_registry_t;
typedef struct ms_model ms_model_t;

/** Wait without limit (timeout_ms argument). */
#define MS_WAIT_FOREVER UINT64_MAX
/** Never expire idle models on a timer (idle_ttl_ms option). */
#define MS_TTL_NEVER UINT64_MAX

/**
 * How to load and unload one model.  The registry copies this struct at
 * acquire time, so it may live on the caller's stack.
 */
typedef struct ms_loader {
  size_t struct_size; /**< sizeof(ms_loader_t); set by MS_LOADER_INIT */
  /**
   * Loads the model named by path/config_json (the canonical strings).
   * Must set *model (may be NULL only if the model has no state) and
   * *bytes (its resident size, used by the memory budget; 0 is allowed).
   * Returns 0, or a negative code that is handed unchanged to every caller
   * waiting on this load (use MS_ELOAD when nothing more specific fits).
   * A positive return is treated as MS_ELOAD.
   * Runs on the thread of the first caller (or on libuv's thread pool for
   * ms_registry_acquire_async), with no registry lock held.
   *
   * It must return: it must not throw (C++), longjmp out, or exit or
   * cancel its thread.  The entry would then stay LOADING for ever, and
   * every waiter with MS_WAIT_FOREVER (and ms_registry_destroy()) with it.
   * Report failure with a negative return instead.
   */
  int (*load)(void *user, const char *path, const char *config_json,
              void **model, size_t *bytes);
  /** Frees a model returned by load.  Exactly once per successful load. May
   *  be NULL.  Runs with no registry lock held, on whichever thread evicts. */
  void (*unload)(void *user, void *model);
  /** Passed to load and unload unchanged.  Whatever it points to must
   *  outlive every model loaded through this loader: unload runs with it
   *  when the model is evicted, possibly long after the acquire returned
   *  (at the latest in ms_registry_trim() or ms_registry_destroy()). */
  void *user;
} ms_loader_t;

#define MS_LOADER_INIT                                                         \
  { sizeof(ms_loader_t), NULL, NULL, NULL }

/** Registry options.  Initialise with MS_REGISTRY_OPTIONS_INIT. */
typedef struct ms_registry_options {
  size_t struct_size; /**< sizeof(ms_registry_options_t) */
  /**
   * How long a model with no holder stays cached, in milliseconds.
   * 0 unloads it at its last release.  MS_TTL_NEVER (the default) keeps it
   * until the budget or an explicit evict needs it.
   *
   * Expiry happens in passes: ms_registry_expire(), which the registry also
   * runs on every miss and which ms_registry_timer_start() runs
   * periodically on a libuv loop.  The first pass that sees a model idle
   * starts its TTL clock, and the first pass after the TTL has run out
   * unloads it.  With a timer period P, an idle model is therefore
   * unloaded between idle_ttl_ms and idle_ttl_ms + 2P after its last
   * release.  (Releases never read the clock: that keeps a cache hit at a
   * few atomic operations.)
   */
  uint64_t idle_ttl_ms;
  /**
   * Memory budget: the most bytes (as reported by loaders) resident at once.
   * 0 (the default) means no budget.  When a new model would go over it,
   * idle models are unloaded least recently used first; if it still does not
   * fit, the acquire fails with MS_ENOMEM and nothing is evicted.
   */
  uint64_t max_bytes;
} ms_registry_options_t;

#define MS_REGISTRY_OPTIONS_INIT                                               \
  { sizeof(ms_registry_options_t), MS_TTL_NEVER, 0 }

/**
 * Creates a registry.  options may be NULL for the defaults.
 * Errors: MS_EINVAL (out is NULL, or options->struct_size is below the 1.0
 *   size), MS_ENOMEM.
 */
MS_EXPORT int ms_registry_create(const ms_registry_options_t *options,
                                 ms_registry_t **out);

/**
 * Destroys a registry, unloading every cached model (each unload runs once,
 * on the calling thread).  NULL returns 0.
 * Errors: MS_EBUSY (nothing is changed) while the registry is in use:
 *   a model is still held, a load is in flight, an async acquire is
 *   pending (its callback has not returned yet), an eviction timer is
 *   attached, or any other call on reg is still in progress on another
 *   thread -- for instance a release with idle_ttl_ms 0 that is unloading
 *   the model it just released, or a waiter still waking up from a failed
 *   load.  Destroy never waits for them: retry later (ms_registry_errmsg()
 *   says what was busy).  Once it returned 0, no call of another thread is
 *   inside the registry any more.
 * Thread-safe, but a call on reg that starts after destroy returned 0 is
 * undefined (reg is freed).
 */
MS_EXPORT int ms_registry_destroy(ms_registry_t *reg);

/**
 * Acquires the model named by key, loading it with loader on a miss.
 *
 * If another caller is already loading the key, waits up to timeout_ms
 * milliseconds (MS_WAIT_FOREVER: no limit; 0: do not wait) for that load.
 * A waiter that times out gets MS_ETIMEDOUT; the load goes on and its
 * result is cached for later callers.
 * On success *out holds one reference; release it with ms_model_release().
 * The loader is used only on a miss: a hit returns the cached model whatever
 * loader was passed.
 * Errors: MS_EINVAL (NULL reg, key, loader, loader->load or out; struct_size
 *   too small), MS_ETIMEDOUT, MS_EDEADLK, MS_ENOMEM (allocation, or over the
 *   memory budget), MS_ERANGE (the loader reported a size that would
 *   overflow the accounting), or the loader's own negative code.  A model
 *   refused with MS_ENOMEM or MS_ERANGE is unloaded again at once.
 * Thread-safe.  A hit does not allocate or make a system call.
 */
MS_EXPORT int ms_registry_acquire_key(ms_registry_t *reg, const ms_key_t *key,
                                      const ms_loader_t *loader,
                                      uint64_t timeout_ms, ms_model_t **out);

/**
 * Same as ms_registry_acquire_key() with a key built from path and
 * config_json on every call (see ms_key_create(); malformed JSON is
 * MS_EINVAL with a message in ms_registry_errmsg()).  Convenient, but it
 * canonicalises on every call: prefer a prebuilt key on hot paths.
 */
MS_EXPORT int ms_registry_acquire(ms_registry_t *reg, const char *path,
                                  const char *config_json,
                                  const ms_loader_t *loader,
                                  uint64_t timeout_ms, ms_model_t **out);

/** Adds a reference to a held model.  Returns model (NULL for NULL).
 *  Lock-free and thread-safe. */
MS_EXPORT ms_model_t *ms_model_retain(ms_model_t *model);
/**
 * Drops one reference.  When the last one goes, the model becomes idle (see
 * idle_ttl_ms; with a TTL of 0 it is unloaded here, on this thread).  NULL
 * is a no-op.  Releasing more references than were acquired is undefined.
 * Thread-safe; lock-free unless the TTL is 0.
 */
MS_EXPORT void ms_model_release(ms_model_t *model);
/** The pointer the loader produced.  NULL for NULL.  Valid while held. */
MS_EXPORT void *ms_model_get(const ms_model_t *model);
/** The byte size the loader reported.  0 for NULL. */
MS_EXPORT size_t ms_model_bytes(const ms_model_t *model);
/** Canonical path / config of the model (owned by it; valid while held). */
MS_EXPORT const char *ms_model_path(const ms_model_t *model);
MS_EXPORT const char *ms_model_config(const ms_model_t *model);

/**
 * Unloads the idle model named by key now.
 * Errors: MS_EINVAL (NULL argument), MS_ENOENT (not cached, or still
 *   loading), MS_EBUSY (held; nothing is changed).
 * The unload callback runs on the calling thread.  Thread-safe.
 */
MS_EXPORT int ms_registry_evict(ms_registry_t *reg, const ms_key_t *key);
/** Unloads every idle model.  *count (may be NULL) receives how many.
 *  Errors: MS_EINVAL (NULL reg).  Thread-safe. */
MS_EXPORT int ms_registry_trim(ms_registry_t *reg, size_t *count);
/** One expiry pass (see idle_ttl_ms): starts the TTL clock of models newly
 *  seen idle and unloads those whose TTL has run out.  *count (may be NULL)
 *  receives how many were unloaded.  Errors: MS_EINVAL (NULL reg).
 *  Thread-safe. */
MS_EXPORT int ms_registry_expire(ms_registry_t *reg, size_t *count);

/** Counters of a registry.  Initialise with MS_REGISTRY_STATS_INIT.
 *  Counts are since the registry was created. */
typedef struct ms_registry_stats_s {
  size_t struct_size;
  uint64_t hits;            /**< acquires served without running a loader */
  uint64_t misses;          /**< acquires that ran the loader */
  uint64_t waits;           /**< hits that waited for another caller's load */
  uint64_t timeouts;        /**< waits that ended in MS_ETIMEDOUT */
  uint64_t loads;           /**< successful loads */
  uint64_t load_failures;   /**< loads that failed (incl. over budget) */
  uint64_t evictions;       /**< models unloaded (TTL, budget, evict, trim) */
  uint64_t bytes_resident;  /**< sum of the loaders' reported sizes */
  uint64_t models_resident; /**< models loaded and not yet evicted */
  uint64_t models_held;     /**< resident models with at least one holder */
  uint64_t load_ns_total;   /**< wall time in successful loads, in ns */
} ms_registry_stats_t;

/* Every field is listed so that -Wmissing-field-initializers stays quiet. */
#define MS_REGISTRY_STATS_INIT                                                 \
  { sizeof(ms_registry_stats_t), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }

/**
 * Fills *stats, up to min(stats->struct_size, sizeof(ms_registry_stats_t))
 * bytes; stats->struct_size is left as the caller set it.
 * Consistency: misses, loads, load_failures, evictions, bytes_resident,
 * models_resident and load_ns_total change only under the registry's
 * write lock, which this call excludes: they are one consistent snapshot
 * (e.g. bytes_resident is exactly the sum of the resident models' bytes).
 * hits, waits, timeouts and models_held change without that lock (cache
 * hits and releases take no write lock), so they may be a few operations
 * ahead of or behind the others when other threads are busy.
 * Errors: MS_EINVAL (NULL argument, or struct_size below the 1.0 size;
 * *stats is then untouched).  Thread-safe.
 */
MS_EXPORT int ms_registry_stats(ms_registry_t *reg, ms_registry_stats_t *stats);

/** One resident model, as seen by ms_registry_foreach(). */
typedef struct ms_model_info {
  size_t struct_size;
  const char *path;       /**< canonical path */
  const char *config;     /**< canonical config JSON */
  uint64_t bytes;         /**< as reported by the loader */
  uint64_t refcount;      /**< current holders */
  uint64_t hits;          /**< acquires served from cache */
  uint64_t loaded_at_ns;  /**< uv_hrtime() clock when the load finished */
  uint64_t idle_since_ns; /**< uv_hrtime() clock from which its idle TTL
                            runs; 0 while held or not yet seen idle by an
                            expiry pass */
  uint64_t load_ns;       /**< how long its load took */
} ms_model_info_t;

/**
 * Calls fn once per resident model with a snapshot taken under the lock; fn
 * runs with no lock held and may call into the registry.  The info and its
 * strings are valid only during the call.  Stops early when fn returns
 * non-zero.  Errors: MS_EINVAL (NULL reg or fn), MS_ENOMEM.  Thread-safe.
 */
MS_EXPORT int ms_registry_foreach(ms_registry_t *reg,
                                  int (*fn)(const ms_model_info_t *info,
                                            void *user),
                                  void *user);

/**
 * The counters and per-model listing as one JSON object.  Every number is
 * an integer; times come in two units (the *_ns fields are exact, the
 * *_ms fields are the same times in whole milliseconds, rounded down, for
 * humans and older readers):
 *   hits, misses, waits, timeouts, loads, load_failures, evictions,
 *   bytes_resident, models_resident, models_held
 *                      the ms_registry_stats_t fields of the same names
 *                      (counts; bytes_resident in bytes)
 *   load_ns_total      wall time of all successful loads, nanoseconds
 *   load_ms_total      the same in milliseconds
 *   models             one object per resident (READY) model:
 *     path, config     canonical path and config JSON (strings)
 *     bytes            size reported by its loader, bytes
 *     refcount         current holders
 *     hits             acquires served from cache
 *     loaded_at_ns     uv_hrtime() clock when its load finished, ns
 *     age_ms           milliseconds since then
 *     load_ns, load_ms how long its load took (ns; ms)
 *     idle_ms          milliseconds since an expiry pass first saw it idle;
 *                      0 while held or not yet seen idle
 * Counters and the listing are two snapshots taken one after the other
 * (see ms_registry_stats() for what each is consistent with).  JSON
 * numbers are doubles: exact up to 2^53.
 * On success *json is a NUL-terminated string the caller frees with
 * ms_free().  Errors: MS_EINVAL (NULL argument), MS_ENOMEM.  Thread-safe.
 */
MS_EXPORT int ms_registry_stats_json(ms_registry_t *reg, char **json);

/** Frees memory the library returned to the caller (NULL is a no-op), with
 *  the allocator the library used (see ms_replace_allocator()). */
MS_EXPORT void ms_free(void *ptr);

/**
 * The message for the last error the calling thread got from a function on
 * reg ("" if none).  NULL reg returns "".
 *
 * Lifetime: messages live in a small per-thread table (4 objects per
 * thread, at most 511 bytes each, longer ones truncated).  The string is
 * owned by the library and belongs to the calling thread: read it on this
 * thread, before its next failing call on reg, and before failing calls
 * on 4 other registries or allocators from this thread reuse its slot (the
 * pointer then shows their message).  Copy it to keep it.  Destroying reg
 * clears it.  For async acquires, the callback's failure text is put here
 * on the loop thread before the callback runs.
 */
MS_EXPORT const char *ms_registry_errmsg(const ms_registry_t *reg);

/* ------------------------------------------------------------------------ */
/* Tensors                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * A tensor is a C-contiguous n-dimensional array.  It lives either in a
 * named shared-memory region (allocated with ms_tensor_alloc or opened from
 * another process with ms_tensor_open) or on the heap (from
 * ms_tensor_deserialize without an allocator).  Every accessor below works
 * on both.
 *
 * Element types are DLPack's (code, bits, lanes) triples.  MS_DTYPE_* name
 * the supported ones; the value packs code | bits << 8 | lanes << 16.
 */
typedef enum ms_dtype {
  MS_DTYPE_INT8 = 0 | (8 << 8) | (1 << 16),
  MS_DTYPE_INT16 = 0 | (16 << 8) | (1 << 16),
  MS_DTYPE_INT32 = 0 | (32 << 8) | (1 << 16),
  MS_DTYPE_INT64 = 0 | (64 << 8) | (1 << 16),
  MS_DTYPE_UINT8 = 1 | (8 << 8) | (1 << 16),
  MS_DTYPE_UINT16 = 1 | (16 << 8) | (1 << 16),
  MS_DTYPE_UINT32 = 1 | (32 << 8) | (1 << 16),
  MS_DTYPE_UINT64 = 1 | (64 << 8) | (1 << 16),
  MS_DTYPE_FLOAT16 = 2 | (16 << 8) | (1 << 16),
  MS_DTYPE_FLOAT32 = 2 | (32 << 8) | (1 << 16),
  MS_DTYPE_FLOAT64 = 2 | (64 << 8) | (1 << 16),
  MS_DTYPE_BFLOAT16 = 4 | (16 << 8) | (1 << 16),
  /** DLPack kDLBool (code 6), one byte per element. */
  MS_DTYPE_BOOL = 6 | (8 << 8) | (1 << 16)
} ms_dtype_t;

/** Most dimensions a tensor may have. */
#define MS_MAX_NDIM 16
/** Longest descriptor string, including the terminating NUL. */
#define MS_DESCRIPTOR_MAX 96

typedef struct ms_tensor ms_tensor_t;

/** Bytes per element of dtype, or 0 if dtype is not an MS_DTYPE_* value. */
MS_EXPORT size_t ms_dtype_size(ms_dtype_t dtype);

/** The data, in place: never a copy.  NULL for NULL.  Writing through it is
 *  only allowed for tensors allocated here or opened with MS_OPEN_WRITE
 *  (read-only mappings fault on write). */
MS_EXPORT void *ms_tensor_data(const ms_tensor_t *t);
/** dtype, number of dimensions, shape and strides (in elements, DLPack
 *  style).  The arrays are owned by t, validated private copies: another
 *  process rewriting the region header cannot change them. */
MS_EXPORT ms_dtype_t ms_tensor_dtype(const ms_tensor_t *t);
MS_EXPORT int ms_tensor_ndim(const ms_tensor_t *t);
MS_EXPORT const int64_t *ms_tensor_shape(const ms_tensor_t *t);
MS_EXPORT const int64_t *ms_tensor_strides(const ms_tensor_t *t);
/** Size of the data in bytes (elements x element size).  0 for NULL. */
MS_EXPORT size_t ms_tensor_nbytes(const ms_tensor_t *t);
/** 1 if the caller may write t's data through ms_tensor_data(): a tensor
 *  from ms_tensor_alloc() or ms_tensor_deserialize(), or one opened with
 *  MS_OPEN_WRITE.  0 for read-only handles (writing through one faults) and
 *  for NULL.  Read-only is per handle: another handle on the same region
 *  opened writable does not make this one writable. */
MS_EXPORT int ms_tensor_is_writable(const ms_tensor_t *t);

/** Adds a reference to t (returns t).  Lock-free, thread-safe. */
MS_EXPORT ms_tensor_t *ms_tensor_retain(ms_tensor_t *t);
/**
 * Drops a reference.  The last one releases this process's hold on the
 * region: when no process holds it any more, it goes back to its creator's
 * pool or, if the creator has no pool or is gone, is unlinked.  NULL is a
 * no-op.  Thread-safe.
 */
MS_EXPORT void ms_tensor_release(ms_tensor_t *t);

/**
 * Writes t's descriptor into buf (at least MS_DESCRIPTOR_MAX bytes): a short
 * printable string (region name or memfd locator and generation,
 * [A-Za-z0-9_:-] only: "ms1:..." or "ms2:...", see "Backends") that
 * another process passes to ms_tensor_open().  The descriptor stays valid
 * while some process holds the tensor; after that it may be unlinked or
 * recycled, and opening it gives MS_ENOENT or MS_ESTALE.
 * On failure buf is not written.
 * Errors: MS_EINVAL (NULL, heap tensor), MS_ERANGE (len too small).
 */
MS_EXPORT int ms_tensor_descriptor(const ms_tensor_t *t, char *buf, size_t len);

/**
 * Makes a tensor allocated by ms_tensor_alloc() read-only for good, for
 * data that never changes again (weights, a host image).  Call it once the
 * data is written.  Afterwards t is no longer writable (writing through
 * ms_tensor_data() faults, ms_tensor_is_writable() is 0), opening its
 * descriptor with MS_OPEN_WRITE fails with MS_EACCES, and its region is
 * never pooled: at its last release it is unlinked (named) or dropped
 * (memfd), never reused for another tensor.  Freezing a frozen tensor does
 * nothing and returns 0.
 *
 * What enforces it depends on the backend:
 *   - memfd (Linux): the region is sealed with F_SEAL_FUTURE_WRITE (then
 *     F_SEAL_SEAL): the kernel refuses every later writable mapping and
 *     write() by any process, so the bytes cannot change through a mapping
 *     made after the freeze.  Mappings made before it keep their access
 *     (the kernel does not revoke them): freeze before handing the
 *     descriptor to anyone who opens it with MS_OPEN_WRITE.  Consumers of a
 *     frozen memfd map it read-only and take no holder slot (nobody can
 *     write the header any more): their mappings keep the bytes alive, but
 *     the descriptor opens only while the creator still holds the tensor.
 *   - named regions (and Win32): weaker.  The creator's mapping becomes
 *     read-only and the library refuses MS_OPEN_WRITE, but any process of
 *     the same user can still open the object writable or truncate it
 *     outside the library.
 * Errors: MS_EINVAL (NULL, a heap tensor, a tensor this process opened
 *   rather than allocated, or its allocator was inherited across fork()),
 *   MS_EIO (the kernel refused the seal or mprotect; t is then unchanged
 *   and still writable).  Thread-safe, but no other thread may be writing
 *   t's data meanwhile.  Since 1.2.
 */
MS_EXPORT int ms_tensor_freeze(ms_tensor_t *t);

/* ------------------------------------------------------------------------ */
/* Shared-memory allocator                                                   */
/* ------------------------------------------------------------------------ */

/*
 * An allocator (ms_shm_t) creates tensors in shared memory and opens other
 * processes' tensors.  Producer and consumer each create their own, pointed
 * at the same namespace (the same `dir`, or both the default; on Linux the
 * default is /dev/shm, so dir "/dev/shm" is the same namespace).  Their
 * other options may differ freely: prefix, pooling, cache sizes and quotas
 * are each allocator's own business and never change what another process
 * sees.  (Processes running release 1.0 of the library must not share a
 * namespace with later ones: 1.0 named its liveness tokens by prefix.)
 *
 * Regions: created with mode 0600 and O_EXCL under unguessable names
 * (random 128 bits), backed at creation (posix_fallocate: a full tmpfs is
 * MS_ENOSPC now, never SIGBUS later) and pre-faulted.  A released region
 * stays mapped in its creator's pool and is reused by a later allocation of
 * a similar size, so a steady allocate/write/hand-off/read cycle runs at
 * memcpy speed.
 *
 * Descriptors and lifetime: a descriptor opens while some process holds
 * its tensor.  Once the last holder (creator or consumer) releases it, the
 * descriptor gives MS_ENOENT, and MS_ESTALE after the region was reused for
 * a new tensor, even while the region waits in its creator's pool.  So a
 * producer must keep its tensor until the consumer has opened it.
 *
 * Every header field read from shared memory is treated as hostile: it is
 * copied once into a private snapshot, which alone is checked against the
 * real size of the mapping (magic, layout version, sizes, shape x itemsize
 * overflow, contiguous strides, ndim <= MS_MAX_NDIM) and used; a bad header
 * is MS_EBADREGION.  Before mapping, the object itself is checked: owned by
 * the effective user (or the allowed_uid option), not writable by group or
 * others (else MS_EACCES), and fully backed, not sparse (else
 * MS_EBADREGION).
 *
 * Truncation (POSIX named regions): any process of the same user may
 * ftruncate() a region after a consumer validated it.  Touching the lost
 * pages then raises SIGBUS, in the consumer's own reads and in library
 * calls that touch the region's header (release, sweep, reopen).  Nothing
 * the library can check prevents that on named regions; run producers you
 * trust in a namespace only they can write, or use the memfd backend,
 * whose regions are sealed against truncation.  Win32 sections cannot
 * shrink under their views.
 *
 * Read-only: a tensor opened without MS_OPEN_WRITE is read-only through its
 * own mapping, whatever other handles of the same process do; writing
 * through it faults (SIGSEGV).  ms_tensor_is_writable() tells which a
 * handle is.  A creator's own tensors are writable; reopening its own
 * descriptor read-only gives a read-only handle.
 *
 * Crash safety: each allocator holds a liveness token that the kernel drops
 * when its process dies (on Linux a flock()ed file named after the token
 * alone and an abstract unix socket of the same name, either of which
 * proves it alive; memfd allocators hold the socket only), so every
 * observer reaches the same verdict whatever its own backend.
 * ms_shm_sweep() clears the holder slots of dead processes and unlinks
 * regions that no live process holds, and also reclaims what dead
 * processes left of the other objects in the namespace: channel rings and
 * staging objects of dead producers (as ms_channel_reclaim()) and images
 * that no live process holds or builds (as ms_image_sweep()).  After every
 * process has exited, one ms_shm_sweep() leaves nothing of the library's
 * in the namespace (regions: those with the sweeping allocator's prefix).
 * ms_shm_create() sweeps too, but only regions of its prefix and dead
 * tokens.  Tokens are random, so pid reuse cannot make a dead process look
 * alive.  A sweep only ever unlinks names of the exact form the library
 * makes, and never a region it cannot open.
 *
 * fork(): objects inherited by a child made with fork() belong to the
 * parent.  In the child, ms_tensor_alloc(), ms_tensor_open(),
 * ms_shm_sweep() and ms_shm_stats() on an inherited allocator return
 * MS_EINVAL; ms_tensor_release() of an inherited tensor and
 * ms_shm_destroy() of an inherited allocator free only the child's memory
 * (the parent's holders, pool, regions and token are untouched), and the
 * child may read inherited tensors only while the parent holds them.  Use
 * inherited objects from one thread of the child.  A child that wants
 * tensors of its own creates its own allocator.  The child does not keep
 * its parent's liveness token: when the parent dies, its regions are
 * reclaimed even while the child lives (fork() must then come from a
 * thread outside ms_shm_create(), which holds a lock fork() waits for).
 *
 * Backends (ms_shm_options_t.backend; since 1.2).  Where an allocator
 * creates its regions; any allocator opens descriptors of either kind.
 *   - MS_SHM_BACKEND_NAMED (the default): named objects in the namespace
 *     above; descriptors "ms1:<name>:<generation>".
 *   - MS_SHM_BACKEND_MEMFD (Linux): sealed memfds.  A region is created with
 *     memfd_create(MFD_CLOEXEC|MFD_ALLOW_SEALING), mode 0600, backed at
 *     creation (out of memory: MS_ENOSPC/MS_ENOMEM at allocation) and sealed
 *     with F_SEAL_SHRINK|F_SEAL_GROW: no process can truncate it, so a
 *     consumer never gets SIGBUS.  It lives in no directory, so a crash
 *     leaves nothing behind (the kernel frees it with its last descriptor
 *     and mapping), and it is not capped by the size of /dev/shm (Docker's
 *     64 MiB default).  The creator keeps the memfd open; a consumer reaches
 *     it with pidfd_getfd() (or as /proc/<pid>/fd/<fd> where Yama or
 *     seccomp refuse that), checks the object and its seals (no size
 *     seals: MS_EBADREGION), maps it, closes the descriptor again, and
 *     checks the region's random 128-bit identity, so that a reused pid or
 *     descriptor number gives MS_ENOENT.  Descriptors are
 *     "ms2:<pid>:<fd>:<creator>-<identity>:<generation>" (at most 89 bytes).
 *     The liveness token is an abstract unix socket, no file.  Limits: a
 *     consumer must be able to open the creator's /proc/<pid>/fd (same pid
 *     namespace, /proc mounted, not forbidden by hidepid or a security
 *     module), and liveness is seen within one network namespace.  A
 *     descriptor stops opening once its creator's allocator is destroyed or
 *     its process dies, even while consumers still map the region (their
 *     mappings stay valid; a process that still maps it, holding it or in
 *     its open cache, can reopen it while someone holds it).  Pooling,
 *     quotas, holder slots, generations, the open cache and the stats
 *     behave as for named regions.  The descriptor
 *     could also travel with the memfd itself over a unix socket
 *     (SCM_RIGHTS), e.g. on a channel or worker connection; no call does
 *     that yet.
 *   - MS_SHM_BACKEND_AUTO: memfd when dir is NULL and ms_capabilities()
 *     saw a second process reopen a memfd here (memfd_reopen), else named.
 * Why named stays the default: a consumer running release 1.0 or 1.1 of the
 * library cannot open ms2 descriptors, memfd descriptors do not cross pid
 * namespaces (containers sharing only a /dev/shm volume), and they stop
 * opening when the producer's allocator goes.  Where all processes run
 * 1.2 on one host, AUTO gives the sealed regions at the same speed (see
 * the bench's memfd table).
 * Windows needs no second backend: a section cannot be shrunk under its
 * views (no SIGBUS), it dies with its last handle (nothing is left after a
 * crash) and it is backed by the commit charge, not a tmpfs (no /dev/shm
 * cap).  MS_SHM_BACKEND_MEMFD fails there with MS_ENOTSUP at allocation.
 *
 * Thread safety: every function may be called from any thread.
 *
 * On Windows, the same guarantees map onto the system as follows:
 *   - Regions are page-file-backed named file mappings in the session's
 *     Local\ namespace, committed at creation (over the commit limit:
 *     MS_ENOSPC at allocation), with a DACL granting the current user only.
 *   - The real size comes from VirtualQuery (whole pages).  Read-only data
 *     is made so with VirtualProtect: views must start on 64 KiB bounds, so
 *     the data cannot have a read-only view of its own.
 *   - There is no unlink: a mapping dies with its last handle.  What POSIX
 *     unlinks, Windows marks dead in the header, so it cannot be reopened.
 *   - Liveness tokens are named events, which vanish with their process
 *     however it ends (TerminateProcess included).
 *   - Named objects cannot be listed, so ms_shm_sweep() releases dead
 *     holders of the regions its allocator created or opened, and the
 *     `dir` option is MS_ENOTSUP.
 */
typedef struct ms_shm ms_shm_t;

/** Allocator options.  Initialise with MS_SHM_OPTIONS_INIT. */
typedef struct ms_shm_options {
  size_t struct_size;
  /** Directory on a tmpfs to keep regions in, or NULL (default) for
   *  shm_open()'s namespace (/dev/shm on Linux). */
  const char *dir;
  /** Name prefix of every object created: 1 to 16 of [A-Za-z0-9_-].
   *  NULL means "ms-".  Sweeps only look at objects with this prefix. */
  const char *prefix;
  /** Most bytes of live tensor data this allocator may have allocated at
   *  once; 0 = no limit.  Over it: MS_EQUOTA. */
  uint64_t max_bytes;
  /** The same limit per session label; 0 = no limit. */
  uint64_t max_session_bytes;
  /** Bytes of released regions kept mapped for reuse; 0 disables pooling
   *  (regions are unlinked at their last release).  Default 256 MiB. */
  uint64_t pool_bytes;
  /** Mappings of other processes' regions kept for fast reopening. */
  uint32_t open_cache;
  /** Reserved (was tail padding in 1.0): ignored, set it to 0. */
  uint32_t reserved0;
  /* ---- 1.1 ---- */
  /** Most bytes of other processes' regions kept mapped by the open cache
   *  while nobody here holds them; 0 = no byte bound (open_cache alone).
   *  Default 1 GiB. */
  uint64_t open_cache_bytes;
  /** A second user id, besides the process's effective one, whose regions
   *  ms_tensor_open() accepts; -1 (default) = none.  Ignored on Windows,
   *  where the DACL decides. */
  int64_t allowed_uid;
  /* ---- 1.2 ---- */
  /** Where this allocator creates its regions: MS_SHM_BACKEND_NAMED
   *  (default), MS_SHM_BACKEND_MEMFD or MS_SHM_BACKEND_AUTO; see "Backends"
   *  above.  Opening descriptors works whatever the value. */
  uint32_t backend;
  /** Reserved (tail padding): ignored, set it to 0. */
  uint32_t reserved1;
} ms_shm_options_t;

/** Values of ms_shm_options_t.backend. */
#define MS_SHM_BACKEND_NAMED 0u /**< named objects (shm_open / dir), ms1: */
#define MS_SHM_BACKEND_MEMFD 1u /**< sealed memfds (Linux only), ms2: */
#define MS_SHM_BACKEND_AUTO 2u  /**< memfd where ms_capabilities() proves it */

#define MS_SHM_OPTIONS_INIT                                                    \
  {                                                                            \
    sizeof(ms_shm_options_t), NULL, NULL, 0, 0, 256u << 20, 64, 0, 1ull << 30, \
        -1, MS_SHM_BACKEND_NAMED, 0                                            \
  }

/**
 * Creates an allocator, takes its liveness token and sweeps the namespace
 * for regions of its prefix and tokens that dead processes left (rings and
 * images are left to ms_shm_sweep()).
 * options may be NULL for the defaults.
 * Errors: MS_EINVAL (bad option: prefix charset or length, dir not a
 *   directory, unknown backend, options struct_size below the 1.0 size),
 * MS_ENOENT (dir does not exist), MS_ENOTSUP (no shared memory here),
 * MS_EACCES, MS_EIO (also out of file descriptors), MS_ENOMEM.
 * ms_shm_errmsg(NULL) says which.
 */
MS_EXPORT int ms_shm_create(const ms_shm_options_t *options, ms_shm_t **out);
/**
 * Destroys an allocator: unlinks its pooled regions, unmaps its cache and
 * drops its liveness token.  Regions it created that other processes still
 * hold stay until their last holder releases them.  In a forked child, an
 * inherited allocator only frees the child's memory (see fork() above).
 * Errors: MS_EBUSY if tensors obtained from shm are still held (nothing is
 * changed then).  NULL returns 0.
 */
MS_EXPORT int ms_shm_destroy(ms_shm_t *shm);

/**
 * Allocates a C-contiguous tensor in shared memory, held once by the
 * caller.  Data is aligned to at least 64 bytes (a page, in practice) and
 * its contents are unspecified (a reused region keeps old bytes).
 * ndim: 0..MS_MAX_NDIM; shape: ndim non-negative sizes (NULL if ndim is 0).
 * session: label for per-session quotas, or NULL.
 * Errors: MS_EINVAL (bad dtype, ndim, shape, or a session label longer
 *   than 63 bytes), MS_ERANGE (size overflows), MS_EQUOTA, MS_ENOSPC (the
 *   tmpfs is full; memfd: no memory to back it), MS_ENOMEM, MS_ENOTSUP (the
 *   memfd backend where there is none), MS_EIO.
 */
MS_EXPORT int ms_tensor_alloc(ms_shm_t *shm, ms_dtype_t dtype, int ndim,
                              const int64_t *shape, const char *session,
                              ms_tensor_t **out);

/** Flags of ms_tensor_open(). */
#define MS_OPEN_WRITE 1u /**< map the data read-write (default read-only) */

/**
 * Opens a descriptor made by ms_tensor_descriptor() (in any process that
 * uses the same namespace) and returns the tensor in place, held once.
 * Without MS_OPEN_WRITE the data is mapped read-only for this handle.
 * Reopening a region this allocator already maps with the same access
 * takes no system call; mappings of regions that died are dropped first.
 * Errors: MS_EINVAL (malformed descriptor: wrong charset or length, path
 *   separators, bad generation; or shm inherited across fork()), MS_ENOENT
 *   (no such region, or nobody holds its tensor any more; for ms2, also a
 *   reused pid or descriptor number), MS_ESTALE (it was reused for a newer
 *   tensor), MS_EBADREGION (hostile or corrupt header, a sparse object, or
 *   a memfd not sealed against shrinking and growing), MS_EACCES (another
 *   user's object, one writable by group or others, MS_OPEN_WRITE on a
 *   frozen tensor, or /proc/<pid>/fd not accessible), MS_EBUSY (64
 *   processes hold it already), MS_ENOMEM, MS_EIO.  ms_shm_errmsg() names
 *   the failed check.
 */
MS_EXPORT int ms_tensor_open(ms_shm_t *shm, const char *descriptor,
                             unsigned flags, ms_tensor_t **out);

/**
 * Reclaims what dead processes left in this allocator's namespace:
 *   - releases their references and unlinks regions that no live process
 *     holds (those with this allocator's prefix), and the liveness tokens
 *     of dead processes (any prefix);
 *   - unlinks channel rings whose producer died and staging objects of
 *     creations cut short (what ms_channel_reclaim() does; since 1.2);
 *   - unlinks host images that no live process holds or builds, kept ones
 *     once keep_ms has passed since their last release, and what builders
 *     killed at any point left (what ms_image_sweep() does; since 1.2).
 * Nothing a live process holds, builds or produces is touched.
 * On success *reclaimed (may be NULL) receives the number of objects
 * unlinked (regions, rings, staging objects, image entries, locks and
 * regions; not tokens); on failure it is not written.  Every part runs
 * even if an earlier one fails; the first failure is returned.
 * Errors: MS_EINVAL (NULL shm, or inherited across fork()), MS_EIO (the
 *   namespace cannot be listed), MS_ENOMEM.
 */
MS_EXPORT int ms_shm_sweep(ms_shm_t *shm, size_t *reclaimed);

/** Allocator counters.  Initialise with MS_SHM_STATS_INIT. */
typedef struct ms_shm_stats_s {
  size_t struct_size;
  uint64_t regions_active;  /**< created here and held by some process */
  uint64_t regions_pooled;  /**< created here, free, kept for reuse */
  uint64_t regions_opened;  /**< others' regions mapped (cache included) */
  uint64_t bytes_mapped;    /**< all mappings of this allocator */
  uint64_t bytes_allocated; /**< live data bytes counted by the quota */
  uint64_t allocations;     /**< ms_tensor_alloc successes */
  uint64_t pool_hits;       /**< allocations served by a pooled region */
  uint64_t frees;           /**< regions of ours that became free */
  uint64_t opens;           /**< ms_tensor_open successes */
  uint64_t open_cache_hits;
} ms_shm_stats_t;

#define MS_SHM_STATS_INIT                                                      \
  { sizeof(ms_shm_stats_t), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }

/** Fills *stats (up to stats->struct_size bytes) with a snapshot taken
 *  under the allocator's lock.  Read-only: it changes nothing, not even
 *  the pool (regions freed elsewhere count as pooled and their bytes as
 *  freed at once).  Errors: MS_EINVAL (NULL argument, struct_size below
 *  sizeof(size_t), or shm inherited across fork()). */
MS_EXPORT int ms_shm_stats(ms_shm_t *shm, ms_shm_stats_t *stats);
/** The same as a JSON object; free *json with ms_free().
 *  Errors: MS_EINVAL, MS_ENOMEM. */
MS_EXPORT int ms_shm_stats_json(ms_shm_t *shm, char **json);
/** Message for the last error the calling thread got from shm ("" if none;
 *  NULL shm: the last ms_shm_create() or ms_tensor_deserialize() failure of
 *  this thread). */
MS_EXPORT const char *ms_shm_errmsg(const ms_shm_t *shm);

/** What shared memory can do here.  Initialise with MS_CAPABILITIES_INIT. */
typedef struct ms_capabilities_s {
  size_t struct_size;
  int shm_available;        /**< 1 if a region could be created and mapped */
  uint64_t shm_free_bytes;  /**< free space of the backing tmpfs */
  uint64_t shm_total_bytes; /**< its size */
  uint64_t page_size;
  uint64_t max_region_bytes; /**< the largest region that fits now */
  /* ---- 1.2 ---- */
  /** 1 if a sealed memfd region could be created here (Linux). */
  uint32_t memfd_available;
  /** 1 if another process could reopen it through /proc/<pid>/fd (proved
   *  by a forked child, once per process): MS_SHM_BACKEND_AUTO then picks
   *  memfd.  0 where /proc is missing or hardened, and off Linux. */
  uint32_t memfd_reopen;
} ms_capabilities_t;

#define MS_CAPABILITIES_INIT                                                   \
  { sizeof(ms_capabilities_t), 0, 0, 0, 0, 0, 0, 0 }

/**
 * Probes shared memory in dir (NULL: the default namespace) by creating,
 * mapping and unlinking a one-page region.  On Linux it also creates a
 * sealed memfd and, the first time in a process, forks a child that
 * reopens it through /proc/<pid>/fd (the child only opens, reads and
 * exits; the result is kept for the process's life): memfd_reopen.
 * Errors: MS_EINVAL (NULL caps or struct_size too small).  An unusable
 * namespace is not an error: shm_available is 0 and tensors should travel
 * by ms_tensor_serialize().  Thread-safe.
 */
MS_EXPORT int ms_capabilities(const char *dir, ms_capabilities_t *caps);

/* ------------------------------------------------------------------------ */
/* Descriptor channel                                                        */
/* ------------------------------------------------------------------------ */

/*
 * A channel carries messages from one producer to its subscribers (up to
 * max_subscribers processes) through a ring in shared memory: raw messages
 * of up to payload_bytes, or tensor descriptors plus a few user bytes.
 * Every subscriber receives every message published after it attached, in
 * order (a broadcast, not a queue).
 *
 * Names: the ring is the object "msch-<name>.ring" in the allocator's
 * namespace (the same `dir` for both sides; prefixes may differ).  name is
 * 1 to 32 of [A-Za-z0-9_-].  The ring is created owner-only and checked on
 * open like a region (owner, mode, fully backed); its header is hostile
 * input: a forged ring is MS_EBADREGION, never a crash or a hang.
 *
 * Tensors: ms_channel_send_tensor() keeps its own reference until every
 * subscriber attached at send time has received the message (or died), so
 * the sender may release its handle at once; ms_channel_recv_tensor()
 * returns the tensor already opened through the receiver's allocator.
 * Under MS_CHANNEL_DROP_OLDEST a message a slow subscriber lost is counted
 * as dropped, and its tensor is released when its slot is reused.
 *
 * Waiting: a receiver spins for spin_us microseconds, then sleeps (a futex
 * on Linux, a named event on Windows); the producer makes a system call
 * only when a subscriber sleeps.  A receiver with a spin window under 1
 * ms that runs on the CPU where the producer last sent does not spin (the
 * producer would wait for that CPU): it sleeps at once.  A window of 1 ms
 * or more always spins (latency first: the scheduler then moves one of
 * the two processes to another CPU).  A blocked producer (MS_CHANNEL_BLOCK,
 * full ring) sleeps the same way.
 *
 * Crash safety: subscribers are known by their allocator's liveness token.
 * A dead subscriber's entry is dropped when the producer finds the ring
 * full, and by ms_channel_sweep(): until then it pins at most `capacity`
 * tensors.  When the producer dies or closes, receivers get every message
 * already published, then MS_EPIPE.  ms_channel_reclaim() and
 * ms_shm_sweep() unlink rings whose producer died.
 *
 * Thread safety: every function may be called from any thread; calls on
 * one channel are serialised by its lock (a blocked recv holds it).  The
 * allocator passed to create/open must outlive the channel.  On Windows,
 * ms_channel_fd() and ms_channel_recv_start() are MS_ENOTSUP and rings are
 * not listed (ms_channel_reclaim() finds nothing: a ring dies with its
 * last handle).
 */
/* Declared here so that this header does not need <uv.h>. */
struct uv_loop_s;
typedef struct ms_channel ms_channel_t;

/** Full-ring policies. */
#define MS_CHANNEL_BLOCK 0u       /**< send waits (up to its timeout) */
#define MS_CHANNEL_DROP_OLDEST 1u /**< send overwrites; laggards drop */
/** A timeout that never expires. */
#define MS_CHANNEL_FOREVER UINT32_MAX

/** Channel options.  Initialise with MS_CHANNEL_OPTIONS_INIT. */
typedef struct ms_channel_options {
  size_t struct_size;
  /** Slots in the ring, a power of two (2 .. 1048576).  Default 256. */
  uint32_t capacity;
  /** Bytes a message may carry, 1 .. 65536; tensor messages need their
   *  descriptor (< MS_DESCRIPTOR_MAX) plus the user bytes.  Default
   *  MS_DESCRIPTOR_MAX + 64. */
  uint32_t payload_bytes;
  /** Subscribers that may be attached at once, 1 .. 64.  Default 8. */
  uint32_t max_subscribers;
  /** MS_CHANNEL_BLOCK (default) or MS_CHANNEL_DROP_OLDEST. */
  uint32_t policy;
  /** How long a waiting call spins before it sleeps, in microseconds;
   *  0 = sleep at once.  Default 20.  Used by both sides. */
  uint32_t spin_us;
  /** Reserved: set it to 0. */
  uint32_t reserved0;
} ms_channel_options_t;

#define MS_CHANNEL_OPTIONS_INIT                                                \
  {                                                                            \
    sizeof(ms_channel_options_t), 256, MS_DESCRIPTOR_MAX + 64, 8,              \
        MS_CHANNEL_BLOCK, 20, 0                                                \
  }

/**
 * Creates the channel `name` as its producer.  options may be NULL for the
 * defaults.  The ring is built under a private name and appears under its
 * own complete, so subscribers never see a half-made one, and a producer
 * killed at any point leaves nothing that blocks the name: a ring of that
 * name whose producer died is replaced.
 * On success *out owns the channel; close it with ms_channel_close().
 * Errors: MS_EINVAL (NULL argument, bad name or option, shm inherited
 *   across fork()), MS_EBUSY (a live producer has that name, or an object
 *   that is not a ring does), MS_ENOSPC, MS_EACCES, MS_ENOMEM, MS_EIO.
 */
MS_EXPORT int ms_channel_create(ms_shm_t *shm, const char *name,
                                const ms_channel_options_t *options,
                                ms_channel_t **out);
/**
 * Attaches to the channel `name` as a subscriber; it receives the messages
 * published from now on.  options may be NULL; only spin_us is used.
 * Errors: MS_EINVAL (NULL argument, bad name), MS_ENOENT (no such
 *   channel, or not yet initialised), MS_EBADREGION (malformed or hostile
 *   ring), MS_EACCES (another user's, or writable by others), MS_EBUSY
 *   (max_subscribers live subscribers), MS_EPIPE (its producer is gone),
 *   MS_ENOMEM, MS_EIO.  ms_channel_errmsg(NULL) says why.
 */
MS_EXPORT int ms_channel_open(ms_shm_t *shm, const char *name,
                              const ms_channel_options_t *options,
                              ms_channel_t **out);
/**
 * Closes a channel.  A producer marks the ring closed (receivers drain it,
 * then get MS_EPIPE), releases the tensors it kept and unlinks the ring;
 * call ms_channel_flush() first to wait for delivery.  A subscriber frees
 * its entry.  Stops ms_channel_recv_start() (call it on the loop thread
 * then).  NULL does nothing.
 */
MS_EXPORT void ms_channel_close(ms_channel_t *ch);

/**
 * Publishes n bytes (n <= payload_bytes; n may be 0) to every subscriber.
 * Under MS_CHANNEL_BLOCK a full ring waits up to timeout_ms (0: not at
 * all; MS_CHANNEL_FOREVER) for the slowest live subscriber.
 * Errors: MS_EINVAL (NULL ch, NULL bytes with n > 0, not the producer),
 *   MS_ERANGE (n too large), MS_ETIMEDOUT (still full; nothing sent).
 */
MS_EXPORT int ms_channel_send(ms_channel_t *ch, const void *bytes, size_t n,
                              uint32_t timeout_ms);
/**
 * Publishes shared-memory tensor t's descriptor plus n user bytes.  The
 * channel takes its own reference on t (see "Tensors" above); the caller
 * keeps its own and may release it at once.
 * Errors: as ms_channel_send(); MS_EINVAL also for a NULL or heap tensor,
 *   MS_ERANGE when descriptor + n exceed payload_bytes.
 */
MS_EXPORT int ms_channel_send_tensor(ms_channel_t *ch, ms_tensor_t *t,
                                     const void *user, size_t n,
                                     uint32_t timeout_ms);
/**
 * Waits up to timeout_ms for every live subscriber to receive everything
 * sent so far (producer only), and releases the tensors every subscriber
 * has received (even on MS_ETIMEDOUT).  The channel otherwise releases
 * them at the next send; a producer whose own protocol tells it a frame
 * was consumed (an acknowledgement) may call ms_channel_flush(ch, 0) to
 * give the region back to its pool at once (timeout 0 never spins).
 * Errors: MS_EINVAL, MS_ETIMEDOUT.
 */
MS_EXPORT int ms_channel_flush(ms_channel_t *ch, uint32_t timeout_ms);

/**
 * Receives the next raw message into buf (cap bytes); *n gets its length.
 * Waits up to timeout_ms (spinning spin_us first).  A tensor message is
 * left in place (MS_EINVAL): receive it with ms_channel_recv_tensor().
 * Errors: MS_EINVAL (NULL argument, not a subscriber, a tensor message),
 *   MS_ERANGE (cap too small: *n is the length, the message stays),
 *   MS_ETIMEDOUT (nothing arrived), MS_EPIPE (the producer closed or died
 *   and every message was received), MS_EBADREGION (the ring was
 *   scribbled on).
 */
MS_EXPORT int ms_channel_recv(ms_channel_t *ch, void *buf, size_t cap,
                              size_t *n, uint32_t timeout_ms);
/**
 * Receives the next message.  A tensor message gives *t, opened through
 * the subscriber's allocator with `flags` (MS_OPEN_WRITE or 0) and held
 * once (release it with ms_tensor_release()), and its user bytes in
 * user[0..*n) (user may be NULL when cap is 0); a raw message gives
 * *t = NULL and its bytes.
 * Errors: as ms_channel_recv(), and ms_tensor_open()'s (the message is
 *   then consumed: its tensor was not there, e.g. its producer died).
 */
MS_EXPORT int ms_channel_recv_tensor(ms_channel_t *ch, unsigned flags,
                                     uint32_t timeout_ms, ms_tensor_t **t,
                                     void *user, size_t cap, size_t *n);

/**
 * A file descriptor that polls readable while messages may be waiting for
 * this subscriber (POSIX).  It is this process's own pipe, written by a
 * helper thread that sleeps on the ring like a receiver; it is re-armed by
 * a recv that finds the ring empty (MS_ETIMEDOUT), so receive with timeout
 * 0 until then.  Owned by the channel.
 * Errors: MS_EINVAL (NULL argument, producer), MS_ENOTSUP (Windows),
 *   MS_EIO, MS_ENOMEM.
 */
MS_EXPORT int ms_channel_fd(ms_channel_t *ch, int *fd);

/** Called on the loop thread when messages may be waiting: receive with
 *  timeout 0 until MS_ETIMEDOUT; on MS_EPIPE call ms_channel_recv_stop(). */
typedef void (*ms_channel_cb)(ms_channel_t *ch, void *user);

/**
 * Watches ms_channel_fd() with a uv_poll_t on loop and calls cb from it.
 * Errors: MS_EINVAL (NULL argument), MS_EBUSY (already started), and
 *   ms_channel_fd()'s.  Call from the loop's thread.
 */
MS_EXPORT int ms_channel_recv_start(ms_channel_t *ch, struct uv_loop_s *loop,
                                    ms_channel_cb cb, void *user);
/** Stops watching; the poll handle is closed on the loop's next turn.
 *  Errors: MS_EINVAL (NULL), MS_ENOENT (not started).  Loop thread. */
MS_EXPORT int ms_channel_recv_stop(ms_channel_t *ch);

/**
 * Producer: drops the entries of subscribers that died and releases the
 * tensors only they still needed.  *dropped (may be NULL) gets how many.
 * Errors: MS_EINVAL (NULL ch, not the producer).
 */
MS_EXPORT int ms_channel_sweep(ms_channel_t *ch, size_t *dropped);
/**
 * Unlinks the rings in shm's namespace whose producer died, and what a
 * producer killed inside ms_channel_create() left.  *reclaimed (may be
 * NULL) gets how many.  ms_shm_sweep() does this too, with the tensors
 * and images: call that one unless only rings are wanted.
 * Errors: MS_EINVAL (NULL shm or inherited), MS_EIO, MS_ENOMEM.
 */
MS_EXPORT int ms_channel_reclaim(ms_shm_t *shm, size_t *reclaimed);

/**
 * Counters as JSON; free *json with ms_free().  Keys: role ("producer" or
 * "subscriber"), sent, received, dropped, full_waits (sends that found the
 * ring full), wakes (wake-up system calls this handle made), spin_hits
 * (waits that found a message while spinning), sleeps (waits that slept),
 * spin_skips (waits that did not spin: a window under 1 ms, and the
 * producer last sent from the receiver's own CPU);
 * a producer adds "subscribers": [{received, dropped, lag}] of the live
 * entries.  Errors: MS_EINVAL, MS_ENOMEM.
 */
MS_EXPORT int ms_channel_stats_json(ms_channel_t *ch, char **json);
/** Message for the last error the calling thread got from ch ("" if none;
 *  NULL: the last failed ms_channel_create/open of this thread). */
MS_EXPORT const char *ms_channel_errmsg(const ms_channel_t *ch);

/* ------------------------------------------------------------------------ */
/* Serialization fallback (safetensors)                                      */
/* ------------------------------------------------------------------------ */

/**
 * Largest JSON header, in bytes after the 8-byte length prefix, that the
 * encoder writes and the decoder accepts (64 KiB).  A single tensor needs
 * under 2 KiB; the rest is room for "__metadata__".  The cap bounds the
 * decoder's work: decoding n bytes costs O(n) time and memory.
 */
#define MS_SAFETENSORS_HEADER_MAX 65536

/**
 * Encodes t as a single-tensor safetensors stream: an 8-byte little-endian
 * header length, a JSON header {"<name>":{"dtype":..,"shape":[..],
 * "data_offsets":[0,N]}} (plus "__metadata__" when metadata_json is a JSON
 * object of strings), padded with spaces to 8 bytes, then the raw data.
 * Any safetensors reader can read it.  name: 1..255 bytes, not
 * "__metadata__"; NULL means "tensor".
 * On success *buf (free with ms_free) holds *len bytes.  Each call
 * allocates and copies the data: to send a tensor without either, use
 * ms_tensor_serialize_header() and write the data from ms_tensor_data().
 * Errors: MS_EINVAL (NULL t/buf/len, bad name or metadata, header over
 *   MS_SAFETENSORS_HEADER_MAX), MS_ENOMEM, MS_ERANGE.
 * Thread-safe (t is only read).
 */
MS_EXPORT int ms_tensor_serialize(const ms_tensor_t *t, const char *name,
                                  const char *metadata_json, void **buf,
                                  size_t *len);

/**
 * Encodes only the start of ms_tensor_serialize()'s stream: the 8-byte
 * length prefix and the padded JSON header, into the caller's buf.  The
 * stream is that header followed by the ms_tensor_nbytes(t) bytes at
 * ms_tensor_data(t), so a sender can writev() both without copying the
 * data:
 *
 *     char hdr[1024]; size_t hl;     // most headers fit 1 KiB
 *     if (ms_tensor_serialize_header(t, "frame", NULL, hdr, sizeof hdr,
 *                                    &hl) == 0) {
 *       struct iovec iov[2] = {{hdr, hl},
 *                              {ms_tensor_data(t), ms_tensor_nbytes(t)}};
 *       writev(fd, iov, 2);          // loop on short writes
 *     }
 *
 * The bytes are identical to ms_tensor_serialize()'s.  *len is set to the
 * header size (at most 8 + MS_SAFETENSORS_HEADER_MAX) on success and on
 * MS_ERANGE; buf may be NULL when cap is 0 (a size query).
 * Errors: MS_EINVAL (NULL t or len, NULL buf with cap > 0, bad name or
 *   metadata, header over the cap), MS_ERANGE (cap < *len; buf untouched),
 *   MS_ENOMEM.  Thread-safe.
 */
MS_EXPORT int ms_tensor_serialize_header(const ms_tensor_t *t, const char *name,
                                         const char *metadata_json, void *buf,
                                         size_t cap, size_t *len);

/**
 * Decodes a single-tensor safetensors stream into a new tensor: in shared
 * memory allocated from shm, or on the heap when shm is NULL.  The input is
 * treated as hostile: every length, offset, dtype and shape is checked, the
 * JSON header (at most MS_SAFETENSORS_HEADER_MAX bytes) must be an object
 * with exactly one tensor (plus optional "__metadata__", an object of
 * strings, which is checked and dropped) and no duplicate keys, the data
 * must be exactly the tensor's bytes, and nothing outside buf is read.
 * Cost: O(len) time and memory for any input; a header with more than 2
 * root members, a tensor entry with more than 3 fields or an array of more
 * than MS_MAX_NDIM elements is refused while scanning its text, before any
 * JSON is built.
 * Errors: MS_EINVAL (NULL argument), MS_EBADREGION (malformed stream; the
 *   message says what: ms_shm_errmsg(shm)), and ms_tensor_alloc()'s errors.
 */
MS_EXPORT int ms_tensor_deserialize(ms_shm_t *shm, const void *buf, size_t len,
                                    ms_tensor_t **out);

/**
 * Reads the header of a stream, for receivers that read the data straight
 * into a tensor they already have (a pooled or shared-memory one) instead
 * of a fresh allocation per frame.  buf holds the first len bytes of the
 * stream; anything after the header is ignored.
 *   - Too few bytes: MS_ERANGE, and *header_len is how many the header
 *     needs (8 for the length prefix, then 8 + its length).
 *   - Otherwise the header is checked as ms_tensor_deserialize() checks it
 *     and, on success, *dtype, *ndim, shape[0..*ndim) (room for
 *     MS_MAX_NDIM), *header_len (prefix + JSON header: the data starts
 *     there) and *data_len (the tensor's bytes, which follow) are set.
 * A streaming reader:
 *
 *     unsigned char hdr[8 + MS_SAFETENSORS_HEADER_MAX];
 *     size_t hl = 8, dl; ms_dtype_t dt; int nd; int64_t shape[MS_MAX_NDIM];
 *     read_exactly(fd, hdr, 8);
 *     int rc = ms_tensor_parse_header(hdr, 8, &dt, &nd, shape, &hl, &dl);
 *     if (rc == MS_ERANGE) {          // hl is now 8 + the header length
 *       read_exactly(fd, hdr + 8, hl - 8);
 *       rc = ms_tensor_parse_header(hdr, hl, &dt, &nd, shape, &hl, &dl);
 *     }
 *     // rc == 0: check dt/nd/shape against dst (or pick a dst of that
 *     // shape), then read dl bytes straight into ms_tensor_data(dst).
 *
 * Errors: MS_EINVAL (NULL argument), MS_ERANGE (see above; nothing else is
 *   written), MS_EBADREGION (malformed header; ms_shm_errmsg(NULL) says
 *   what).  Thread-safe.
 */
MS_EXPORT int ms_tensor_parse_header(const void *buf, size_t len,
                                     ms_dtype_t *dtype, int *ndim,
                                     int64_t *shape, size_t *header_len,
                                     size_t *data_len);

/**
 * Decodes a whole stream (as ms_tensor_deserialize() does) into dst, an
 * existing tensor of the same dtype and shape, instead of a new one: no
 * allocation, one copy of the data.  dst must be writable
 * (ms_tensor_is_writable()); it is not written unless the call succeeds.
 * Errors: MS_EINVAL (NULL argument; the stream's dtype or shape differs
 *   from dst's), MS_EACCES (dst is read-only), MS_EBADREGION (malformed
 *   stream).  The message is ms_shm_errmsg(NULL).  Thread-safe as long as
 *   no other thread uses dst's data.
 */
MS_EXPORT int ms_tensor_deserialize_into(const void *buf, size_t len,
                                         ms_tensor_t *dst);

/* ------------------------------------------------------------------------ */
/* DLPack                                                                    */
/* ------------------------------------------------------------------------ */

/* From <dlpack/dlpack.h>; declared here so this header does not need it. */
struct DLManagedTensor;

/**
 * Exports t as a DLPack DLManagedTensor on the CPU device, pointing at the
 * same bytes (no copy).  It holds its own reference to t; its deleter
 * releases it.  Pass it to any DLPack consumer (NumPy, PyTorch...).
 * DLManagedTensor (DLPack 0.6) has no read-only flag: consumers must assume
 * the memory may be read-only.  Export a read-only handle
 * (ms_tensor_is_writable() == 0) only to code that does not write into it:
 * a write faults (SIGSEGV) rather than corrupting the producer's data.
 * Errors: MS_EINVAL (NULL argument), MS_ENOMEM.
 */
MS_EXPORT int ms_tensor_to_dlpack(ms_tensor_t *t, struct DLManagedTensor **out);

/* ------------------------------------------------------------------------ */
/* libuv integration                                                         */
/* ------------------------------------------------------------------------ */

/* Declared here so that this header does not need <uv.h>. */
struct uv_loop_s;

/**
 * Called on the loop thread when an async acquire finishes.  On success
 * status is 0 and model holds one reference the callback owns; otherwise
 * status is a negative MS_E* (or loader) code and model is NULL.  During
 * the callback (and until the next failing call on the registry from the
 * loop thread), ms_registry_errmsg(reg) on the loop thread returns the
 * text of a failure: the loader's error, the budget refusal, the timeout
 * or the cancellation.
 */
typedef void (*ms_acquire_cb)(int status, ms_model_t *model, void *user_data);

/** An async acquire in progress (see ms_registry_acquire_async2()). */
typedef struct ms_acquire_req ms_acquire_req_t;

/**
 * Acquires key without blocking the loop.  cb runs exactly once, later, on
 * the thread running loop, never from inside this call.  Deduplicated with
 * synchronous and other async callers of the same key.  key and loader are
 * copied; they may be freed when this returns.
 *
 * Waiting is event-driven: a request for a model that is loading joins the
 * load's waiter list and is completed through a uv_async_t on loop when the
 * load ends; no thread waits for it.  Only the load itself runs on libuv's
 * thread pool (uv_queue_work), so waiters never starve the pool, and a
 * loader may itself use the pool.
 *
 * timeout_ms bounds the wait for a load started by another caller
 * (MS_WAIT_FOREVER: no limit; 0: MS_ETIMEDOUT on the loop's next
 * iteration unless the model is ready by then); the load goes on and its result
 * is cached.  A request whose miss started the load waits for that load without
 * limit, like a synchronous caller running the loader.
 *
 * Errors (cb is then not called, and nothing is left for the loop to
 *   close): MS_EINVAL (NULL argument, loader struct_size below the 1.0
 *   size), MS_ENOMEM, MS_EIO (libuv could not make the request's async
 *   handle, e.g. out of file descriptors).
 * The callback's status: 0, the loader's code, MS_ENOMEM, MS_ERANGE,
 *   MS_ETIMEDOUT, MS_ECANCELED.
 * Call from the loop's thread.  The loop must run until every callback has
 * run (pending requests keep it alive) before it is closed; until then
 * ms_registry_destroy() returns MS_EBUSY.
 */
MS_EXPORT int ms_registry_acquire_async(ms_registry_t *reg,
                                        struct uv_loop_s *loop,
                                        const ms_key_t *key,
                                        const ms_loader_t *loader,
                                        uint64_t timeout_ms, ms_acquire_cb cb,
                                        void *user_data);

/**
 * ms_registry_acquire_async() that also returns a handle to the request in
 * *req (req may be NULL), for ms_registry_acquire_cancel().  *req is valid
 * from this call's success until its callback returns; it is owned by the
 * library (never free it).  Since 1.1.
 */
MS_EXPORT int
ms_registry_acquire_async2(ms_registry_t *reg, struct uv_loop_s *loop,
                           const ms_key_t *key, const ms_loader_t *loader,
                           uint64_t timeout_ms, ms_acquire_cb cb,
                           void *user_data, ms_acquire_req_t **req);

/**
 * Cancels an async acquire whose callback has not run yet.  The callback
 * still runs exactly once, later on the loop thread (never from inside this
 * call), with status MS_ECANCELED and a NULL model, whatever happened
 * meanwhile: a model the request had already obtained is released again.
 * Cancelling never stops a load: other waiters still get its result, and a
 * successful load stays cached (idle).  Cancelling twice is harmless.
 * Returns 0, MS_EINVAL (NULL req), or MS_ENOENT when called from inside the
 * request's own callback (too late: the result is being delivered).
 * Calling it after the callback returned is undefined (req is gone).
 * Call from the loop's thread.  Since 1.1.
 */
MS_EXPORT int ms_registry_acquire_cancel(ms_acquire_req_t *req);

/**
 * Attaches a repeating uv_timer to loop that runs ms_registry_expire()
 * every period_ms milliseconds, so idle models are unloaded on the loop
 * thread when their TTL passes.  The timer does not keep the loop alive.
 * Errors: MS_EINVAL (NULL argument, period_ms 0), MS_EBUSY (a timer is
 *   already attached), MS_ENOMEM.  Call from the loop's thread.
 */
MS_EXPORT int ms_registry_timer_start(ms_registry_t *reg,
                                      struct uv_loop_s *loop,
                                      uint64_t period_ms);
/**
 * Stops and closes the timer; it is fully detached after the loop has run
 * once more (uv_close semantics).  Errors: MS_EINVAL (NULL reg), MS_ENOENT
 * (no timer).  Call from the loop's thread.
 */
MS_EXPORT int ms_registry_timer_stop(ms_registry_t *reg);

/* ------------------------------------------------------------------------ */
/* Host-scope images                                                         */
/* ------------------------------------------------------------------------ */

/*
 * A host image is a read-only set of named tensors (the shape of a
 * safetensors file) in shared memory: a model's weights after a transform
 * (dequantised, repacked, transposed...), made once per machine and mapped
 * read-only by every process that asks for the same key.
 *
 * Key: the model key (ms_key_t: canonical path + canonical config), the
 * source file's identity (device, inode, size and modification time of the
 * key's path, read at every acquire: an edited or replaced file makes a new
 * image), and the caller's transform id and version.  They are hashed (128
 * bits) to name the image's index entry "msimg-<32 hex>.idx" in the
 * allocator's namespace; the entry holds the full key, so a hash collision
 * or a forged entry is MS_EBADREGION, never another model's weights.
 *
 * Acquiring: the first process to ask (it wins a per-key lock held through
 * its allocator's liveness token, which the kernel drops if it dies) runs
 * the build callback, which allocates and fills the image's tensors with
 * ms_image_builder_add().  The tensors are then checked (see below) and
 * frozen, and only then is the entry published READY.  Every other
 * process, concurrent or later, waits up to its timeout (sleeping, with a
 * backoff from 1 to 32 ms) and maps the finished image: nobody ever sees a
 * partial one.
 *   - A builder that dies mid-build leaves a CREATING entry and a dead
 *     lock: the next waiter discards its half-made tensors and builds.
 *   - A build that fails publishes FAILED with its code: every process
 *     that was waiting for that build gets the code; the next acquire
 *     builds again (the registry's semantics for loads).
 *
 * Freezing: every tensor is frozen with ms_tensor_freeze() before the
 * image is published: the builder's own mapping becomes read-only, the
 * region is never pooled or reused, and opening a tensor's descriptor with
 * MS_OPEN_WRITE is MS_EACCES; every other process maps the data read-only.
 * A write through any of these mappings faults (SIGSEGV).  Named regions
 * cannot be sealed: a process of the same user can still open the object
 * outside the library (see "Truncation" above).
 *
 * Build errors: a build callback that writes outside its tensors is
 * detected after it returns by a post-build check (no guard pages): the
 * bytes after each tensor's data up to the end of its region (at least 64
 * bytes, filled with a pattern at allocation) and its region header must
 * be unchanged; otherwise the build fails with MS_EBADREGION.  Writes that
 * land further away hit other memory and cannot be detected.
 *
 * Lifetime: each process that acquired the image holds every tensor of it
 * (the allocator's holder protocol), so the image lives while any process
 * holds it; without keep_ms it goes with its last holder.  With keep_ms,
 * an image nobody holds stays mapped-able (a restarting worker finds it)
 * until ms_image_sweep() or ms_shm_sweep() runs keep_ms after its last
 * release.  Images of processes that died are reclaimed by either of them
 * (not by the sweep of ms_shm_create()).  Images use region prefixes of
 * the form "mi<13 hex>-", reserved for them: do not give an allocator such
 * a prefix.
 *
 * Backends: an image's tensors are always named regions in the
 * allocator's namespace, whatever its backend option, and the index entry
 * and the lock are named objects beside them ("msimg-<hash>.idx",
 * "msimg-<hash>.lock"): the entry names the regions, so a process that
 * never met the builder finds them, and keep_ms can outlive every process.
 * A process killed at any point leaves only objects ms_image_sweep() (and
 * ms_shm_sweep()) removes.  (A memfd region has no name and lives only
 * while some process holds its descriptor: an index entry could make one
 * findable, but never keep it past its last process, so images do not use
 * them.)
 * Windows: a named object dies with its last handle, so an index entry
 * disappears as soon as no process maps it, and objects cannot be listed
 * (ms_image_sweep() finds nothing).  Images are not yet usable across
 * processes there: the code compiles, its tests run on Linux only.
 *
 * Thread safety: every function may be called from any thread; an
 * ms_image_t may be used by several threads at once.  Two threads of one
 * process acquiring the same key through one allocator build once (the
 * second waits).  For sharing within one process, put images in a registry
 * (ms_image_loader()): the registry deduplicates within the process, the
 * image across processes.
 */
typedef struct ms_image ms_image_t;
typedef struct ms_image_builder ms_image_builder_t;

/** Longest tensor name in an image, in bytes. */
#define MS_IMAGE_NAME_MAX 255
/** Most tensors an image may have. */
#define MS_IMAGE_MAX_TENSORS 65536

/**
 * Builds an image: allocate every tensor with ms_image_builder_add() and
 * fill it.  path and config_json are the key's canonical strings.  Runs in
 * the electing process, on the calling thread of ms_image_acquire(), with
 * no library lock held.  Return 0, or a negative code that every waiter
 * for this build receives (a positive return is MS_ELOAD).  An image with
 * no tensor is MS_EINVAL.  Must return (no longjmp, no thread exit).
 */
typedef int (*ms_image_build_fn)(ms_image_builder_t *b, const char *path,
                                 const char *config_json, void *user);

/** Options of ms_image_acquire().  Initialise with MS_IMAGE_OPTIONS_INIT. */
typedef struct ms_image_options {
  size_t struct_size;
  /** The transform's name: 1 to 64 bytes of [A-Za-z0-9._-].  Required. */
  const char *transform_id;
  /** Its version (same charset, 0 to 64 bytes; NULL is "").  Change it
   *  whenever the transform's output changes. */
  const char *transform_version;
  /** Builds the image on a miss.  Required. */
  ms_image_build_fn build;
  /** Passed to build unchanged. */
  void *user;
  /** How long to wait for another process's build, in ms
   *  (MS_WAIT_FOREVER: no limit; 0: do not wait).  A builder's own build
   *  is not bounded.  Default MS_WAIT_FOREVER. */
  uint64_t timeout_ms;
  /** Keep the image this many ms after its last release (0, the default:
   *  it goes with its last holder).  The builder's value is the image's. */
  uint64_t keep_ms;
} ms_image_options_t;

#define MS_IMAGE_OPTIONS_INIT                                                  \
  { sizeof(ms_image_options_t), NULL, NULL, NULL, NULL, MS_WAIT_FOREVER, 0 }

/**
 * Acquires the host image of (key, the key's source file, transform) in
 * shm's namespace, building it with options->build if no process has.
 * On success *out holds the image: every tensor mapped read-only and held;
 * release it with ms_image_release().  shm must outlive it.
 * Errors: MS_EINVAL (NULL argument, options struct_size below its first
 *   size, no build function, a transform id or version that is empty,
 *   too long or outside the charset, shm inherited across fork()),
 *   MS_ENOENT (the key's path is not a file that can be stat()ed),
 *   MS_ETIMEDOUT (another process is still building), MS_EBADREGION (a
 *   malformed, forged or colliding index entry or image tensor; or a
 *   build callback that wrote outside its tensors), MS_EACCES (another
 *   user's entry), MS_EBUSY (64 processes hold the image already),
 *   MS_EDEADLK (a build callback asked for the image it is building), the
 *   build callback's code (also when another process's build failed
 *   while we waited), MS_ENOSPC, MS_ENOMEM, MS_EIO.
 *   ms_shm_errmsg(shm) says what.
 * Thread-safe.
 */
MS_EXPORT int ms_image_acquire(ms_shm_t *shm, const ms_key_t *key,
                               const ms_image_options_t *options,
                               ms_image_t **out);

/**
 * From inside a build callback: allocates tensor `name` of the image
 * (C-contiguous, ndim 0..MS_MAX_NDIM, shape as ms_tensor_alloc()) and sets
 * *data to its bytes, writable until the callback returns and read-only
 * afterwards.  The bytes start unspecified; write exactly
 * ms_dtype_size(dtype) x the shape's product of them.
 * name: 1..MS_IMAGE_NAME_MAX bytes, unique in the image (a name used
 *   twice fails the acquire with MS_EINVAL when the callback returns).
 * Errors: MS_EINVAL (NULL argument, bad name, bad dtype, ndim or shape,
 *   more than MS_IMAGE_MAX_TENSORS tensors), MS_ERANGE,
 *   MS_ENOSPC, MS_ENOMEM, MS_EIO.  Return the code from the callback (or
 *   handle it).  Use b only from the callback's thread, during the call.
 */
MS_EXPORT int ms_image_builder_add(ms_image_builder_t *b, const char *name,
                                   ms_dtype_t dtype, const int64_t *shape,
                                   int ndim, void **data);

/**
 * Finds tensor `name` of img.  *out is owned by img (read-only data, valid
 * until ms_image_release(img)); ms_tensor_retain() it to keep it longer
 * (the allocator passed to ms_image_acquire() must then outlive it).
 * Errors: MS_EINVAL (NULL argument), MS_ENOENT (no such tensor).
 * Thread-safe; a lookup is a binary search, no allocation.
 */
MS_EXPORT int ms_image_tensor(const ms_image_t *img, const char *name,
                              ms_tensor_t **out);

/**
 * Calls fn for every tensor of img in name order (bytewise), with the
 * tensor owned by img.  Stops and returns fn's value when it is non-zero.
 * Errors: MS_EINVAL (NULL img or fn).  Thread-safe.
 */
MS_EXPORT int ms_image_foreach(const ms_image_t *img,
                               int (*fn)(const char *name, ms_tensor_t *t,
                                         void *user),
                               void *user);

/** Number of tensors of img (0 for NULL). */
MS_EXPORT size_t ms_image_count(const ms_image_t *img);
/** Sum of the tensors' data sizes, in bytes (0 for NULL). */
MS_EXPORT uint64_t ms_image_bytes(const ms_image_t *img);
/** 1 if this call of ms_image_acquire() ran the build, else 0. */
MS_EXPORT int ms_image_built_here(const ms_image_t *img);

/**
 * Releases img: this process's hold on every tensor of it (tensors the
 * caller retained stay held).  The last holder on the host unlinks the
 * image unless keep_ms keeps it.  NULL is a no-op.  Thread-safe, but img
 * must not be used after this call.
 */
MS_EXPORT void ms_image_release(ms_image_t *img);

/**
 * Reclaims images in shm's namespace: index entries of builds whose
 * builder died or that failed, images no live process holds (READY images
 * with keep_ms only once keep_ms has passed since their last release), and
 * leftovers of builders killed at any point.  Never touches an image a
 * live process holds or builds.  *reclaimed (may be NULL) gets the number
 * of objects unlinked.  Run it from a supervisor, or at start-up;
 * ms_shm_sweep() runs it too, after the allocator's regions.
 * Errors: MS_EINVAL (NULL shm, or inherited across fork()), MS_EIO (the
 *   namespace cannot be listed), MS_ENOMEM.  Thread-safe.
 */
MS_EXPORT int ms_image_sweep(ms_shm_t *shm, size_t *reclaimed);

/**
 * Where an ms_image_loader() loads from.  Initialise with
 * MS_IMAGE_SOURCE_INIT.  It must outlive every model loaded through the
 * loader (the registry calls unload with it).
 */
typedef struct ms_image_source {
  size_t struct_size;
  ms_shm_t *shm;                     /**< allocator of the images */
  const ms_image_options_t *options; /**< transform, build, timeout, keep */
} ms_image_source_t;

#define MS_IMAGE_SOURCE_INIT                                                   \
  { sizeof(ms_image_source_t), NULL, NULL }

/**
 * Fills *loader so that an ms_registry_acquire() miss acquires the host
 * image of (path, config) with src: the model is the ms_image_t (cast
 * ms_model_get()'s pointer), its bytes ms_image_bytes(), and the registry's
 * unload releases it.  The nodes of one process then share one handle
 * (the registry) and the processes of one host one copy (the image):
 *
 *     ms_image_source_t src = MS_IMAGE_SOURCE_INIT;
 *     src.shm = shm; src.options = &opts;
 *     ms_loader_t ld;
 *     ms_image_loader(&src, &ld);
 *     ms_registry_acquire(reg, "/models/w.safetensors", "{}", &ld,
 *                         MS_WAIT_FOREVER, &model);
 *     ms_image_t *img = ms_model_get(model);
 *
 * Errors: MS_EINVAL (NULL argument, struct_size below the first size, NULL
 *   shm or options).  The load's errors are ms_image_acquire()'s.
 */
MS_EXPORT int ms_image_loader(const ms_image_source_t *src,
                              ms_loader_t *loader);

/* ------------------------------------------------------------------------ */
/* Model worker                                                              */
/* ------------------------------------------------------------------------ */

/*
 * A model worker is one process (or one part of a host program) that owns a
 * loaded model and serves inference requests from client processes.  It
 * listens on an endpoint through libuv's uv_pipe_t: a Unix domain socket
 * (a filesystem path) on POSIX, a named pipe ("\\.\pipe\NAME") on Windows.
 *
 * Tensors: every connection chooses, at its handshake, how tensors travel.
 * When both sides can open each other's shared-memory descriptors (the same
 * namespace; each side proves it by opening a probe tensor of the other),
 * shared-memory tensors travel as descriptors and no data is copied.
 * Otherwise (no shared memory on one side, different namespaces, or forced
 * with MS_WORKER_INLINE / MS_CLIENT_INLINE) they travel inline as
 * safetensors bytes (ms_tensor_serialize()).  Heap tensors always travel
 * inline.  The wire format (framing, message types, versioning) is
 * documented in docs/worker-protocol.md; the handshake refuses a peer of
 * another protocol version or library major version.
 *
 * Requests: each carries a model name (the name given to
 * ms_worker_add_model()), up to MS_WORKER_MAX_TENSORS input tensors and a
 * request id, so that many client threads share one connection.  The
 * worker runs inference on `threads` threads of its own, never on the loop
 * thread, and groups requests for one model into batches of up to
 * max_batch, waiting at most max_batch_delay_us for a batch to fill.
 * Output tensors are allocated from the worker's allocator; the client owns
 * the outputs it receives and releases them with ms_tensor_release().
 *
 * Security (POSIX): the endpoint's socket is created mode 0600 in a
 * directory the worker creates mode 0700, or that already exists, is owned
 * by the effective user and is not writable by group or others.  Every
 * connection's peer uid (SO_PEERCRED / getpeereid) must be the worker's
 * effective uid or allowed_uid; others are closed at once and counted.  On
 * Windows, the peer process's user SID must be the worker's.
 *
 * Limits: a connection is closed when it sends a malformed frame, a frame
 * over max_frame_bytes, or no valid handshake within handshake_timeout_ms.
 * An unknown model, a bad tensor or more than max_inflight_per_client
 * requests in flight fail that request only (its response carries the
 * error).  A connection that stops reading its responses is no longer read
 * from, so it pins at most max_inflight_per_client responses.  Connections
 * over max_clients are closed at once and counted as refused.
 *
 * Crash semantics: a client that dies mid-request loses its responses; the
 * worker releases their outputs when it sees the connection close and keeps
 * serving the others.  When the worker dies or stops, every call in flight
 * on its clients fails with MS_EDISCONNECTED (not MS_ETIMEDOUT), and the
 * next call reconnects according to the client's retry options.  A socket
 * file left by a dead worker is replaced at start; a live worker's endpoint
 * is refused (MS_EBUSY), never stolen.
 */
typedef struct ms_worker ms_worker_t;
typedef struct ms_client ms_client_t;

/** Most input tensors of one request, and most output tensors of one
 *  response. */
#define MS_WORKER_MAX_TENSORS 16
/** Longest model name, in bytes (names are 1.. of [A-Za-z0-9_.-]). */
#define MS_WORKER_NAME_MAX 64

/** Flags of ms_worker_options_t: accept only inline tensors (every
 *  connection uses safetensors bytes, whatever the client offers). */
#define MS_WORKER_INLINE 1u

/** Worker options.  Initialise with MS_WORKER_OPTIONS_INIT. */
typedef struct ms_worker_options {
  size_t struct_size;
  /** Where to listen: a socket path (POSIX, at most 100 bytes) or a pipe
   *  name (Windows, "\\.\pipe\..." ).  Required.  Copied. */
  const char *endpoint;
  /** Most requests handed to one infer_batch call (1 disables batching).
   *  Default 8. */
  uint32_t max_batch;
  /** How long an inference thread waits for a batch to fill once it has
   *  one request, in microseconds (0: take what is queued).  Default 500. */
  uint32_t max_batch_delay_us;
  /** Connections served at once; more are closed at accept and counted as
   *  refused.  Default 64. */
  uint32_t max_clients;
  /** Requests one connection may have in flight (received and not yet
   *  acknowledged); more fail with MS_EBUSY.  Default 64. */
  uint32_t max_inflight_per_client;
  /** Largest frame accepted or sent, bytes (inline tensors included);
   *  a bigger incoming frame closes its connection, a bigger response
   *  fails its request with MS_ERANGE.  Default 64 MiB, at least 4096. */
  uint64_t max_frame_bytes;
  /** Inference threads.  Default 1. */
  uint32_t threads;
  /** MS_WORKER_INLINE, or 0 (default). */
  uint32_t flags;
  /** A second user id, besides the worker's effective one, allowed to
   *  connect; -1 (default) = none.  Ignored on Windows. */
  int64_t allowed_uid;
  /** Milliseconds a new connection has to complete its handshake before it
   *  is closed.  Default 5000. */
  uint32_t handshake_timeout_ms;
  /** Reserved: set it to 0. */
  uint32_t reserved0;
} ms_worker_options_t;

#define MS_WORKER_OPTIONS_INIT                                                 \
  {                                                                            \
    sizeof(ms_worker_options_t), NULL, 8, 500, 64, 64, 64u << 20, 1, 0, -1,    \
        5000, 0                                                                \
  }

/** Where an infer function allocates its outputs (see ms_worker_out_alloc). */
typedef struct ms_worker_out ms_worker_out_t;

/**
 * Allocates one output tensor for the request being served: in the
 * worker's shared memory (labelled with the client's session, for the
 * allocator's per-session quota), or on the heap when the worker has no
 * shared memory.  *t holds one reference, which the infer function puts in
 * its outputs array (the worker then owns it).  Contents unspecified.
 * Errors: ms_tensor_alloc()'s.  Call only from inside the infer or
 * infer_batch call that received `out`.
 */
MS_EXPORT int ms_worker_out_alloc(ms_worker_out_t *out, ms_dtype_t dtype,
                                  int ndim, const int64_t *shape,
                                  ms_tensor_t **t);

/**
 * One request of a batch, as infer_batch sees it.  Filled by the worker
 * (struct_size is the worker's sizeof; read fields past the first release's
 * only when struct_size covers them).
 */
typedef struct ms_worker_request {
  size_t struct_size;
  /** The inputs, read-only (n_in of them); owned by the worker. */
  ms_tensor_t *const *inputs;
  size_t n_in;
  /** For ms_worker_out_alloc() of this request's outputs. */
  ms_worker_out_t *out;
  /** Room for MS_WORKER_MAX_TENSORS outputs.  The callee stores held
   *  tensors here and sets n_out; the worker owns them afterwards, whatever
   *  status says. */
  ms_tensor_t **outputs;
  size_t n_out;
  /** 0, or this request's negative error code (its outputs are then
   *  released and the client gets the code). */
  int status;
  /** Reserved. */
  int reserved0;
} ms_worker_request_t;

/**
 * A model the worker serves.  Initialise with MS_WORKER_MODEL_INIT.  Copied
 * by ms_worker_add_model(): the strings and the loader struct may be freed
 * after it returns; `user` must live until `release` (or the worker's
 * destruction).
 */
typedef struct ms_worker_model {
  size_t struct_size;
  /** Model path and config JSON, as for ms_registry_acquire(). */
  const char *path;
  const char *config_json;
  /** How to load and unload it (through the worker's registry, so a
   *  model loaded in-process by the host is shared, not loaded again). */
  const ms_loader_t *loader;
  /**
   * Runs one request: model is ms_model_get() of the loaded model, inputs
   * its n_in read-only inputs.  Stores up to MS_WORKER_MAX_TENSORS held
   * tensors in outputs (allocate them with ms_worker_out_alloc(); any
   * tensor this process holds may be returned, e.g. a retained input) and
   * sets *n_out (0 on entry).  The worker owns outputs[0..*n_out) after
   * the call whatever it returns.  Returns 0 or a negative code, which the
   * client receives.  Runs on an inference thread; several threads may
   * call it at once when `threads` > 1.  Required.
   */
  int (*infer)(void *user, void *model, ms_tensor_t *const *inputs, size_t n_in,
               ms_worker_out_t *out, ms_tensor_t **outputs, size_t *n_out);
  /**
   * Optional: runs n (1..max_batch) requests of this model at once, each
   * described by reqs[i], whose outputs, n_out and status it sets.  A
   * negative return fails every request of the batch with that code.  When
   * NULL, the worker calls infer once per request.
   */
  int (*infer_batch)(void *user, void *model, ms_worker_request_t *const *reqs,
                     size_t n);
  /** Passed to infer, infer_batch and release unchanged. */
  void *user;
  /** Optional: called once with user when the worker is destroyed (after
   *  the model is released), or when ms_worker_add_model() fails. */
  void (*release)(void *user);
} ms_worker_model_t;

#define MS_WORKER_MODEL_INIT                                                   \
  { sizeof(ms_worker_model_t), NULL, NULL, NULL, NULL, NULL, NULL, NULL }

/**
 * The entry point of a worker plugin: a shared object that defines
 *
 *     MS_PLUGIN_EXPORT int ms_worker_plugin_v1(ms_worker_model_t *out);
 *
 * The host (the modelshare-worker program) initialises *out with
 * MS_WORKER_MODEL_INIT, sets path and config_json from its command line,
 * then calls it once; the plugin fills loader, infer, optionally
 * infer_batch, user and release, and returns 0 (or a negative code, which
 * the host reports).  The library itself does not define this function.
 */
#if defined(_WIN32)
#define MS_PLUGIN_EXPORT __declspec(dllexport)
#elif defined(__GNUC__)
#define MS_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define MS_PLUGIN_EXPORT
#endif
/** The name a host looks up with dlsym()/GetProcAddress(). */
#define MS_WORKER_PLUGIN_SYMBOL "ms_worker_plugin_v1"
/** The type of that symbol. */
typedef int (*ms_worker_plugin_fn)(ms_worker_model_t *out);
MS_PLUGIN_EXPORT int ms_worker_plugin_v1(ms_worker_model_t *out);

/**
 * Creates a worker (not yet listening).  options is required (its endpoint
 * is).  reg: the registry models are acquired through, or NULL for a
 * private one.  shm: the allocator that opens clients' descriptors and
 * allocates outputs, or NULL for a private one with the defaults (if
 * shared memory is unavailable, the worker then serves inline only).
 * reg and shm, when given, must outlive the worker.
 * Errors: MS_EINVAL (NULL options/endpoint/out, struct_size below the
 *   first release's, a zero max_batch/threads/max_clients/
 *   max_inflight_per_client, max_frame_bytes below 4096), MS_ERANGE
 *   (endpoint too long), MS_ENOMEM.  ms_worker_errmsg(NULL) says which.
 * Thread-safe.
 */
MS_EXPORT int ms_worker_create(const ms_worker_options_t *options,
                               ms_registry_t *reg, ms_shm_t *shm,
                               ms_worker_t **out);

/**
 * Adds a model under `name` (1..MS_WORKER_NAME_MAX of [A-Za-z0-9_.-]) and
 * acquires it now through the worker's registry (so a load error shows
 * here); the worker holds it until it is destroyed.  Only before
 * ms_worker_start()/ms_worker_run().  On failure model->release (if any)
 * has been called.
 * Errors: MS_EINVAL (NULL argument, bad name, NULL path/loader/infer,
 *   struct_size too small), MS_EBUSY (the name is taken, or the worker is
 *   started), the registry's acquire errors (the loader's own code).
 * Not thread-safe with other calls on w.
 */
MS_EXPORT int ms_worker_add_model(ms_worker_t *w, const char *name,
                                  const ms_worker_model_t *model);

/**
 * Starts listening on the host's libuv loop (call from the loop's thread;
 * the host runs the loop).  Creates the endpoint's directory if missing
 * (0700), replaces a stale socket file (one nobody accepts on), and starts
 * the inference threads.
 * Errors: MS_EINVAL (NULL argument), MS_EBUSY (already started, or a live
 *   worker listens on the endpoint: nothing is changed), MS_EACCES (the
 *   directory is another user's or writable by others, or the path exists
 *   and is not a socket), MS_ENOENT (the directory's parent is missing),
 *   MS_EIO, MS_ENOMEM.
 */
MS_EXPORT int ms_worker_start(ms_worker_t *w, struct uv_loop_s *loop);

/**
 * ms_worker_start() on a loop of the worker's own, run by a thread it
 * creates.  Returns once the worker listens (or failed to).  Errors: as
 * ms_worker_start().  Thread-safe.
 */
MS_EXPORT int ms_worker_run(ms_worker_t *w);

/**
 * Stops the worker: stops accepting (the socket file is removed), lets the
 * requests already received finish and sends their responses, then closes
 * every connection and stops the inference threads.  From any thread but
 * the loop's it waits until that is done (and, after ms_worker_run(),
 * joins the loop thread).  From the loop thread of ms_worker_start() it
 * only begins the drain: run the loop until ms_worker_destroy() stops
 * returning MS_EBUSY.  Stopping a stopped or never started worker returns
 * 0.  Errors: MS_EINVAL (NULL w).
 */
MS_EXPORT int ms_worker_stop(ms_worker_t *w);

/**
 * Destroys a worker: releases its models (calling each model's release),
 * and its private registry and allocator.  NULL returns 0.
 * Errors: MS_EBUSY while it is started and not fully stopped (nothing is
 *   changed).
 */
MS_EXPORT int ms_worker_destroy(ms_worker_t *w);

/**
 * The worker's counters as a JSON object; free *json with ms_free().  Keys:
 *   clients          connections open now
 *   connections      connections accepted in all
 *   refused          connections refused (max_clients, peer uid, bad
 *                    handshake)
 *   refused_uid      of which for another peer uid
 *   requests         requests received
 *   responses        requests finished: answered, or dropped with the
 *                    connection of a client that left
 *   inflight         requests - responses
 *   errors           object: error name ("MS_EBUSY", ...) -> requests that
 *                    failed with it
 *   protocol_errors  connections closed for a malformed or oversized frame
 *   batches          infer/infer_batch calls
 *   mean_batch       requests per batch (a double)
 *   batch_hist       array: batch_hist[i] = batches of i+1 requests
 *   models           object: name -> {requests, errors, latency_us_p50,
 *                    latency_us_p99} (latency from receipt to response
 *                    queued, over the last 1024 requests)
 *   inline           connections using inline tensors
 * Errors: MS_EINVAL (NULL argument), MS_ENOMEM.  Thread-safe.
 */
MS_EXPORT int ms_worker_stats_json(ms_worker_t *w, char **json);

/** Message for the last error the calling thread got from w ("" if none;
 *  NULL: the last failed ms_worker_create() of this thread). */
MS_EXPORT const char *ms_worker_errmsg(const ms_worker_t *w);

/** Flags of ms_client_options_t: send and receive tensors inline
 *  (safetensors bytes) even when descriptors would work. */
#define MS_CLIENT_INLINE 1u

/** Client options.  Initialise with MS_CLIENT_OPTIONS_INIT. */
typedef struct ms_client_options {
  size_t struct_size;
  /** The allocator that opens the worker's output descriptors, or NULL for
   *  a private one with the defaults (none, and inline tensors, when
   *  shared memory is unavailable).  Must outlive the client. */
  ms_shm_t *shm;
  /** Milliseconds one connection attempt (connect + handshake) may take.
   *  Default 2000. */
  uint32_t connect_timeout_ms;
  /** Connection attempts per call (ms_client_connect(), and a call that
   *  finds the connection gone), at least 1.  Default 5. */
  uint32_t retry_attempts;
  /** Pause after the first failed attempt, doubled after each next one up
   *  to retry_backoff_max_ms.  Defaults 20 and 1000. */
  uint32_t retry_backoff_ms;
  uint32_t retry_backoff_max_ms;
  /** Largest response frame accepted, bytes.  Default 64 MiB. */
  uint64_t max_frame_bytes;
  /** MS_CLIENT_INLINE, or 0 (default). */
  uint32_t flags;
  /** Reserved: set it to 0. */
  uint32_t reserved0;
} ms_client_options_t;

#define MS_CLIENT_OPTIONS_INIT                                                 \
  { sizeof(ms_client_options_t), NULL, 2000, 5, 20, 1000, 64u << 20, 0, 0 }

/**
 * Connects to the worker at endpoint (see ms_worker_options_t) and
 * completes the handshake, retrying as the options say.  options may be
 * NULL for the defaults.  The client runs its connection on a thread of
 * its own.  On success *out owns the client; close it with
 * ms_client_close().
 * Errors: MS_EINVAL (NULL endpoint/out, struct_size too small),
 *   MS_ERANGE (endpoint too long), MS_ENOENT (nobody listens there),
 *   MS_EACCES, MS_ETIMEDOUT, MS_EDISCONNECTED (the worker closed the
 *   connection during the handshake, e.g. it refused this uid or is full),
 *   MS_ENOTSUP (another protocol or library major version), MS_EIO,
 *   MS_ENOMEM.  ms_client_errmsg(NULL) says why.
 */
MS_EXPORT int ms_client_connect(const char *endpoint,
                                const ms_client_options_t *options,
                                ms_client_t **out);

/**
 * Runs model_name on the worker with inputs[0..n_in) (n_in <=
 * MS_WORKER_MAX_TENSORS) and waits up to timeout_ms (MS_WAIT_FOREVER: no
 * limit) for the outputs.  The inputs stay the caller's (the call holds
 * its own references while it needs them).  On entry *n_out is the room in
 * outputs; on success outputs[0..*n_out) hold one reference each, owned by
 * the caller (ms_tensor_release()).  Shared-memory outputs are the
 * worker's regions opened read-only; inline ones are heap tensors.
 * If the connection is gone, the call first reconnects (retry options).
 * Errors: MS_EINVAL (NULL argument, bad name, too many inputs),
 *   MS_EDISCONNECTED (the worker went away before answering, or could not
 *   be reached again), MS_ETIMEDOUT (no answer in time; a late answer is
 *   dropped and its outputs released), MS_ERANGE (more outputs than
 *   *n_out, or a frame over max_frame_bytes), MS_ENOENT (no such model),
 *   MS_EBUSY (too many requests in flight on this connection), the
 *   model's own error code, and ms_tensor_serialize()/ms_tensor_open()'s.
 *   ms_client_errmsg(c) says why.
 * Thread-safe: any number of threads may call it at once on one client.
 */
MS_EXPORT int ms_client_infer(ms_client_t *c, const char *model_name,
                              ms_tensor_t *const *inputs, size_t n_in,
                              uint64_t timeout_ms, ms_tensor_t **outputs,
                              size_t *n_out);

/**
 * Called on the loop thread when an async request ends.  status is 0 or
 * an error as ms_client_infer() returns them.  On success the callback
 * owns one reference on each outputs[i] (release them, or retain/keep
 * them); the array itself is valid only during the call.
 */
typedef void (*ms_client_cb)(int status, ms_tensor_t **outputs, size_t n_out,
                             void *user);

/**
 * ms_client_infer() without blocking: cb runs exactly once, later, on the
 * thread running loop (never from inside this call).  A needed reconnect
 * happens on the client's own thread.  Call from loop's thread.  The loop
 * must run until the callback ran.  If the client is closed first, cb
 * gets MS_ECANCELED.
 * Errors (cb is then not called): MS_EINVAL (NULL c/loop/model_name/cb,
 *   bad name, too many inputs), MS_ENOMEM, MS_EIO.
 */
MS_EXPORT int ms_client_infer_async(ms_client_t *c, struct uv_loop_s *loop,
                                    const char *model_name,
                                    ms_tensor_t *const *inputs, size_t n_in,
                                    uint64_t timeout_ms, ms_client_cb cb,
                                    void *user);

/**
 * Health check: a round trip to the worker within timeout_ms.  Reconnects
 * first if needed.  Errors: MS_EINVAL, MS_EDISCONNECTED, MS_ETIMEDOUT.
 * Thread-safe.
 */
MS_EXPORT int ms_client_ping(ms_client_t *c, uint64_t timeout_ms);

/**
 * The worker's ms_worker_stats_json() text, fetched within timeout_ms; free
 * *json with ms_free().  Errors: as ms_client_ping(), MS_ENOMEM.
 * Thread-safe.
 */
MS_EXPORT int ms_client_status_json(ms_client_t *c, uint64_t timeout_ms,
                                    char **json);

/**
 * Closes the connection and stops the client's thread.  Blocking calls
 * still in progress on other threads return MS_ECANCELED; pending async
 * requests get MS_ECANCELED on their loops.  Responses not yet received
 * are dropped (the worker releases their outputs).  NULL does nothing.
 * Call it once, after every other thread is done starting calls on c.
 */
MS_EXPORT void ms_client_close(ms_client_t *c);

/** Message for the last error the calling thread got from c ("" if none;
 *  NULL: the last failed ms_client_connect() of this thread). */
MS_EXPORT const char *ms_client_errmsg(const ms_client_t *c);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MODELSHARE_H */
