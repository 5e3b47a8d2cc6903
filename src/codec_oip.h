/* codec_oip.h -- Open Inference Protocol (KServe v2 REST) codec for model
 * "circle": JSON tensors and the binary tensor data extension.
 *
 * Inputs: "labels" INT32|INT64 [N] or [N,1]; "embeddings" FP32|FP64 [N,D]
 * (FP16, BF16 accepted as binary, computed in float32 unless dtype names a
 * half format, which also makes the outputs FP16 / BF16); optional
 * "sample_weight" [N], "ref_labels" [M], "ref_embeddings" [M,D].
 * Parameters: gamma, margin, remove_diagonal, reduction, normalize, dtype,
 * tag, binary_data_output, stats, retrieval. Outputs: "loss",
 * "per_sample_loss", "embeddings_grad", "ref_embeddings_grad".
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
 * after it are binary tensor data, one block per input that has
 * parameters.binary_data_size, in input order, with nothing left over. The
 * body is already decompressed. defaults seeds req->cfg. Compute dtype:
 * parameters.dtype when given, else float64 for FP64 embeddings, else
 * defaults->dtype. req->want includes CIRCLE_OUT_STATS unless
 * parameters.stats is false, and CIRCLE_OUT_RETRIEVAL when
 * parameters.retrieval is true (both returned as the response's
 * "parameters"); req->binary_outputs and req->out_order /
 * out_count record the requested outputs. Triton's scheduling parameters
 * (sequence_id, sequence_start, sequence_end, priority, timeout) are
 * accepted and ignored; other unknown keys are errors. Returns 0 or
 * CIRCLE_EINVAL with *err filled: 400 for every malformed request (codes as
 * for /v1), 413 "limit_exceeded" over N, M, D or pair limits, 503
 * "overloaded" when memory runs out. On failure req is left freed. */
int circle_oip_decode(const char *body, size_t len, size_t header_len,
                      const circle_config *defaults, const circle_limits *lim,
                      circle_request *req, circle_error *err);

/* Encodes the infer response into b: {"model_name", "model_version", "id"
 * (when the request had one), "outputs": [...], "parameters": {stats,
 * retrieval_<figure>}} (no "parameters" when neither was asked for),
 * then the bytes of the binary outputs in output order. Outputs are in
 * circle_oip_output_datatype's type for the compute dtype; "loss" has shape [1] for scalar reductions
 * and [N] for "none"/null. *header_len receives the JSON part's length;
 * when it is less than b->len the caller must send
 * Inference-Header-Content-Length: *header_len. Returns 0, CIRCLE_EINVAL
 * for NULL arguments, or CIRCLE_ENOMEM. */
int circle_oip_encode(const circle_request *req, const circle_output *out,
                      circle_buf *b, size_t *header_len);

/* The datatype the outputs go out in for cfg's compute dtype: "FP16" or
 * "BF16" for a half format, else "FP32" or "FP64"; *esz receives its size in
 * bytes (the binary data's element size). */
const char *circle_oip_output_datatype(const circle_config *cfg, size_t *esz);
/* Encodes {"error": "message"} into b. */
void circle_oip_error(const circle_error *err, circle_buf *b);

/* Model metadata JSON for GET /v2/models/circle. */
void circle_oip_model_metadata(circle_buf *b);
/* Triton model configuration JSON for GET /v2/models/circle/config, with
 * the server's default loss config as string parameters. */
void circle_oip_model_config(circle_buf *b, const circle_config *defaults);
/* Server metadata JSON for GET /v2. */
void circle_oip_server_metadata(circle_buf *b, const char *version);

/* ---- Shared with the gRPC codec (codec_grpc.c) ---------------------------
 * The pieces of the protocol that do not depend on its encoding, so that
 * both encodings describe the same model and return the same outputs. */

/* The datatype named s ("FP32"), CIRCLE_OIP_UNKNOWN for others or NULL. */
circle_oip_datatype circle__oip_datatype_parse(const char *s);
/* Bytes per element of t (0 for BYTES and out-of-range values). */
size_t circle__oip_datatype_size(circle_oip_datatype t);
/* The protocol's name of t ("FP32"); "" for out-of-range values. */
const char *circle__oip_datatype_name(circle_oip_datatype t);

/* One tensor of the model's signature, as metadata and config describe it:
 * rank 1 is [-1], rank 2 is [-1, -1]. */
typedef struct {
  const char *name;
  circle_oip_datatype type;
  int rank;
  bool optional;
} circle_oip_tensor_spec;
#define CIRCLE_OIP_N_INPUTS 5
#define CIRCLE_OIP_N_OUTPUTS 4
extern const circle_oip_tensor_spec circle__oip_input_specs[CIRCLE_OIP_N_INPUTS];
extern const circle_oip_tensor_spec circle__oip_output_specs[CIRCLE_OIP_N_OUTPUTS];

/* Calls fn(ctx, key, value) for each model-configuration parameter: the
 * server's default loss config as strings (gamma, margin, remove_diagonal,
 * reduction, dtype, normalize), spelt as GET /config spells them. */
void circle__oip_config_params(const circle_config *defaults,
                               void (*fn)(void *ctx, const char *key,
                                          const char *value),
                               void *ctx);

/* 0 when name (and version, when version_len > 0) is model "circle"
 * version "1"; else CIRCLE_EINVAL with *err 404 "not_found" and Triton's
 * message ("Request for unknown model: 'x' is not found"). */
int circle__oip_model_check(const char *name, size_t name_len,
                            const char *version, size_t version_len,
                            circle_error *err);

/* One output of a computed request, ready to encode. */
typedef struct {
  const char *name;  /* "loss", ... */
  unsigned bit;      /* CIRCLE_OUT_* */
  size_t rows, cols; /* cols 0: shape [rows] */
  size_t elems;      /* rows, or rows * cols */
  const void *data;  /* elems values in req->cfg.dtype */
} circle_oip_out_tensor;

/* The outputs a response returns, in response order. loss32 / loss64 hold
 * the scalar loss that a "loss" tensor of a scalar reduction points at, so
 * the struct must not be copied while its tensors are in use. */
typedef struct {
  size_t count;
  circle_oip_out_tensor t[CIRCLE_OIP_N_OUTPUTS];
  bool stats;     /* the response carries the stats as its parameters */
  bool retrieval; /* and the retrieval figures, as retrieval_<figure> */
  float loss32;
  double loss64;
} circle_oip_outputs;

/* Fills *o from a computed request: the outputs asked for (in request
 * order) or all that apply (in the canonical order), with their shapes and
 * data. Pure; never fails. */
void circle__oip_outputs(const circle_request *req, const circle_output *out,
                         circle_oip_outputs *o);

#endif /* CIRCLE_CODEC_OIP_H */
