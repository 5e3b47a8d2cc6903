/* codec_oip.h -- Open Inference Protocol (KServe v2 REST) codec for model
 * "circle": JSON tensors and the binary tensor data extension.
 *
 * Inputs: "labels" INT32|INT64 [N] or [N,1]; "embeddings" FP32|FP64 [N,D]
 * (FP16, BF16 accepted as binary, computed in float32); optional
 * "sample_weight" [N], "ref_labels" [M], "ref_embeddings" [M,D].
 * Parameters: gamma, margin, remove_diagonal, reduction, normalize, dtype,
 * tag. Outputs: "loss", "per_sample_loss", "embeddings_grad",
 * "ref_embeddings_grad".
 */
#ifndef CIRCLE_CODEC_OIP_H
#define CIRCLE_CODEC_OIP_H

#include "request.h"

typedef enum {
  CIRCLE_OIP_BOOL, CIRCLE_OIP_UINT8, CIRCLE_OIP_UINT16, CIRCLE_OIP_UINT32,
  CIRCLE_OIP_UINT64, CIRCLE_OIP_INT8, CIRCLE_OIP_INT16, CIRCLE_OIP_INT32,
  CIRCLE_OIP_INT64, CIRCLE_OIP_FP16, CIRCLE_OIP_FP32, CIRCLE_OIP_FP64,
  CIRCLE_OIP_BF16, CIRCLE_OIP_BYTES, CIRCLE_OIP_UNKNOWN
} circle_oip_datatype;

/* Decodes an infer request. header_len is the Inference-Header-Content-Length
 * value (the JSON part's length), or len when the header is absent; bytes
 * after it are binary tensor data. The body is already decompressed.
 * Returns 0 or a negative status with *err filled (Triton's codes: 400). */
int circle_oip_decode(const char *body, size_t len, size_t header_len,
                      const circle_config *defaults, const circle_limits *lim,
                      circle_request *req, circle_error *err);

/* Encodes the infer response into b. *header_len receives the JSON part's
 * length; when it is less than b->len the caller must send
 * Inference-Header-Content-Length: *header_len. Returns 0 or CIRCLE_ENOMEM. */
int circle_oip_encode(const circle_request *req, const circle_output *out,
                      circle_buf *b, size_t *header_len);

/* Encodes {"error": "message"} into b. */
void circle_oip_error(const circle_error *err, circle_buf *b);

/* Model metadata JSON for GET /v2/models/circle. */
void circle_oip_model_metadata(circle_buf *b);
/* Server metadata JSON for GET /v2. */
void circle_oip_server_metadata(circle_buf *b, const char *version);

#endif /* CIRCLE_CODEC_OIP_H */
