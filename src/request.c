/* request.c -- the decoded request and the limits a codec enforces while
 * decoding: what a codec fills, the server hands to the engine and frees.
 * A request owns its arrays; circle_request_free leaves it re-initialised,
 * so freeing twice is harmless.
 */
#include "request.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Limits and requests                                                      */
/* ------------------------------------------------------------------------ */
void circle_limits_init(circle_limits *lim) {
  if (lim == NULL) return;
  /* Defaults sized for a 2-core, few-GiB box: 65536 rows x 4096 dims of
   * float64 is 2 GiB of input, and 2^32 pairs is a few seconds of compute.
   * Depth 32 is four times what a valid request needs (3 for /v1, 4 for
   * nested OIP data of rank 2) and keeps any recursive walk shallow. */
  lim->max_n = 65536;
  lim->max_m = 65536;
  lim->max_d = 4096;
  lim->max_pairs = (uint64_t)1 << 32;
  lim->max_depth = 32;
  lim->max_inflated = (size_t)256 << 20;
}

int circle__limits_check(const circle_limits *lim, uint64_t n, uint64_t m,
                         bool has_ref, uint64_t d, circle_error *err) {
  if (n > lim->max_n || m > lim->max_m || d > lim->max_d) {
    const char *what = n > lim->max_n ? "N" : (m > lim->max_m ? "M" : "D");
    unsigned long long have = n > lim->max_n ? n : (m > lim->max_m ? m : d);
    size_t cap = n > lim->max_n ? lim->max_n
                                : (m > lim->max_m ? lim->max_m : lim->max_d);
    return circle_error_set(err, CIRCLE_ERR_LIMIT_EXCEEDED,
                            "%s = %llu exceeds this server's limit of %zu",
                            what, have, cap);
  }
  uint64_t k = has_ref ? m : n, pairs;
  if (__builtin_mul_overflow(n, k, &pairs) || pairs > lim->max_pairs)
    return circle_error_set(err, CIRCLE_ERR_LIMIT_EXCEEDED,
                            "%llu x %llu = %llu pairs exceeds the work limit "
                            "of %llu pairs; send a smaller batch",
                            (unsigned long long)n, (unsigned long long)k,
                            (unsigned long long)(n * k),
                            (unsigned long long)lim->max_pairs);
  return 0;
}

void circle_request_init(circle_request *req) {
  if (req == NULL) return;
  memset(req, 0, sizeof(*req));
  circle_config_init(&req->cfg);
  snprintf(req->name, sizeof(req->name), "%s", "circle");
}

void circle_request_free(circle_request *req) {
  if (req == NULL) return;
  free(req->labels);
  free(req->ref_labels);
  free(req->x);
  free(req->r);
  free(req->sw);
  circle_request_init(req);
}
