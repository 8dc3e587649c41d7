/* Model keys: canonical path + canonical config JSON, and their hash. */
#ifndef MS_INTERNAL_KEY_H
#define MS_INTERNAL_KEY_H

#include "internal/common.h"

struct ms_key {
  uint64_t hash;
  size_t path_len;
  size_t config_len;
  char *path;   /* points into buf */
  char *config; /* points into buf */
  char buf[];   /* path NUL config NUL */
};

/* 64-bit hash of the two canonical strings (bucketing only). */
uint64_t ms__key_hash(const char *path, size_t path_len, const char *config,
                      size_t config_len);

/* A deep copy (for requests that outlive the caller's key). */
int ms__key_dup(const ms_key_t *key, ms_key_t **out);

/* Canonicalise config JSON: keys sorted recursively, no whitespace, string
 * escapes normalised, number tokens copied verbatim (see "Model keys" in
 * modelshare.h for what is refused).  *out is malloc'd.  On error, errbuf
 * gets a message naming the problem. */
int ms__config_canonical(const char *json, char **out, char *errbuf,
                         size_t errlen);

/* Tests only: force a hash so that distinct keys share a bucket. */
void ms__key_set_hash(ms_key_t *key, uint64_t hash);

#endif
