/* codec_grpc.h -- the Open Inference Protocol over gRPC (KServe v2's
 * inference.GRPCInferenceService, Triton's ModelConfig, grpc.health.v1) for
 * model "circle": protobuf message bytes into a circle_request, results into
 * response message bytes.
 *
 * The messages are those of proto/circle_grpc.proto and
 * proto/circle_health.proto. Every function here is pure (no I/O, no
 * global state) and thread-safe; none needs the network side.
 *
 * What a request means is the HTTP route's meaning: the same inputs,
 * datatypes, parameters, outputs, limits and error messages (see
 * codec_oip.h). The only differences are the encoding's: tensors arrive in
 * raw_input_contents (little-endian, one entry per input, in input order)
 * or in typed contents (int_contents, int64_contents, fp32_contents,
 * fp64_contents), and every output is returned in raw_output_contents.
 */
#ifndef CIRCLE_CODEC_GRPC_H
#define CIRCLE_CODEC_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "request.h"

/* Decodes a ModelInferRequest. The model must be "circle" (version "" or
 * "1"). defaults (NULL: Keras's) seeds req->cfg; lim is enforced as for the HTTP
 * route, and the compute dtype is chosen the same way. A parameter
 * "binary_data_output" and an input's "binary_data_size" are ignored (over
 * gRPC every tensor is binary). Returns 0, or CIRCLE_EINVAL with *err
 * filled: 400 for a message that is not a ModelInferRequest and for every
 * invalid request (the HTTP route's codes and messages), 404 "not_found"
 * for another model, 413 "limit_exceeded" over a limit, 503 "overloaded"
 * when memory runs out. On failure req is left freed. */
int circle_grpc_infer_decode(const uint8_t *msg, size_t len,
                             const circle_config *defaults,
                             const circle_limits *lim, circle_request *req,
                             circle_error *err);

/* Appends the ModelInferResponse for a computed request to b: model_name,
 * model_version "1", id, outputs (name, datatype FP32/FP64, shape) in the
 * HTTP route's order with their bytes in raw_output_contents, and the
 * stats as parameters (double_param figures, int64_param counts) unless
 * the request turned stats off, then the retrieval figures as
 * retrieval_<figure> parameters when the request turned them on. Returns
 * 0, CIRCLE_EINVAL for NULL
 * arguments, or CIRCLE_ENOMEM (b->failed). */
int circle_grpc_infer_encode(const circle_request *req,
                             const circle_output *out, circle_buf *b);

/* Reads the model name and version of a ModelReadyRequest,
 * ModelMetadataRequest or ModelConfigRequest (the three share their
 * fields) and checks them. Returns 0, or CIRCLE_EINVAL with *err: 400 for
 * bytes that are not such a message, 404 for another model. */
int circle_grpc_model_request_check(const uint8_t *msg, size_t len,
                                    circle_error *err);

/* Appends a ServerLiveResponse, ServerReadyResponse or ModelReadyResponse
 * (each is one bool, field 1) carrying value. */
void circle_grpc_bool_response(bool value, circle_buf *b);
/* Appends the ServerMetadataResponse: "circled", version, extensions. */
void circle_grpc_server_metadata(const char *version, circle_buf *b);
/* Appends the ModelMetadataResponse: the tensors of GET /v2/models/circle. */
void circle_grpc_model_metadata(circle_buf *b);
/* Appends the ModelConfigResponse: what GET /v2/models/circle/config
 * says, as model_config.proto. */
void circle_grpc_model_config(const circle_config *defaults, circle_buf *b);

/* The standard health check. Reads a grpc.health.v1 HealthCheckRequest:
 * service "" and "inference.GRPCInferenceService" are this server's, and
 * get a HealthCheckResponse appended to b (SERVING, or NOT_SERVING when
 * serving is false). Returns 0, or CIRCLE_EINVAL with *err: 400 for bytes
 * that are not a HealthCheckRequest, 404 for another service (the health
 * protocol's NOT_FOUND). */
int circle_grpc_health_check(const uint8_t *msg, size_t len, bool serving,
                             circle_buf *b, circle_error *err);

/* The gRPC status code (grpc_status_code's numbering, which is the gRPC
 * protocol's) for a circle_error: its row's column in CIRCLE_ERROR_MAP
 * (error.h). 400 rows are INVALID_ARGUMENT (3), 401 UNAUTHENTICATED (16),
 * 404 NOT_FOUND (5), 501 UNIMPLEMENTED (12), 413 and 503 "overloaded"
 * RESOURCE_EXHAUSTED (8), 503 "shutting_down" UNAVAILABLE (14), anything
 * else (a NULL err too) INTERNAL (13). */
int circle_grpc_status_of(const circle_error *err);

#endif /* CIRCLE_CODEC_GRPC_H */
