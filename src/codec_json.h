/* codec_json.h -- the native /v1/loss JSON codec: bytes <-> circle_request.
 *
 * Request:  {"labels": [N ints or strings], "embeddings": [[D] x N],
 *            "sample_weight"?: [N], "ref_labels"?: [M],
 *            "ref_embeddings"?: [[D] x M], "config"?: {...},
 *            "normalize"?: bool, "outputs"?: [...], "tag"?: string}
 * Response: {"loss", "per_sample_loss", "embeddings_grad",
 *            "ref_embeddings_grad", "stats", "retrieval" (only when outputs
 *            names it), "config", "dtype", "n", "m", "d"}
 */
#ifndef CIRCLE_CODEC_JSON_H
#define CIRCLE_CODEC_JSON_H

#include "request.h"

/* Decodes a /v1/loss body. defaults seeds req->cfg and req->name. Returns 0,
 * or a negative status with *err filled (4xx, precise message with field,
 * row and byte offset where it applies). req must be circle_request_init'ed;
 * on failure it is left freed. */
int circle_json_decode(const char *body, size_t len,
                       const circle_config *defaults, const char *default_name,
                       const circle_limits *lim, circle_request *req,
                       circle_error *err);

/* Encodes the /v1 response for req and the engine's out into b (numbers
 * written straight into the buffer, no cJSON tree). Returns 0 or
 * CIRCLE_ENOMEM. */
int circle_json_encode(const circle_request *req, const circle_output *out,
                       circle_buf *b);

/* Encodes {"error": {"code": ..., "message": ...}} into b. */
void circle_json_error(const circle_error *err, circle_buf *b);

#endif /* CIRCLE_CODEC_JSON_H */
