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
