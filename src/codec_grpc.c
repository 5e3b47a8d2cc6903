/* codec_grpc.c -- the Open Inference Protocol over gRPC for model "circle":
 * ModelInferRequest bytes into a circle_request, results into
 * ModelInferResponse bytes, and the small metadata and health messages.
 * Must keep true: a gRPC request means exactly what the same request means
 * over HTTP -- same checks, same limits, same messages, same numbers -- and
 * no byte of a tensor is read outside the message.
 *
 * How: a ModelInferRequest is rewritten as the HTTP route's binary body
 * (the JSON header of the binary tensor data extension, then each input's
 * bytes) and decoded by circle_oip_decode, so there is one decoder of the
 * protocol's meaning:
 *
 *   ModelInferRequest                       OIP binary body
 *   -----------------                       ---------------
 *   id, parameters (InferParameter)   ->    {"id", "parameters": {...,
 *                                              "binary_data_output": true},
 *   inputs: name, datatype, shape     ->     "inputs": [{"name", "datatype",
 *                                              "shape", "parameters":
 *                                              {"binary_data_size": K}}],
 *   outputs: name, parameters         ->     "outputs": [{"name", ...}]}
 *   raw_input_contents[i], or the
 *   input's typed contents            ->    input i's K bytes, in input order
 *
 * What only gRPC can get wrong is checked here, first, in gRPC's words: the
 * number of raw_input_contents entries, an entry's size against the shape,
 * typed contents of the wrong kind or count. Typed contents are written as
 * their little-endian bytes (int_contents as INT32, int64_contents as INT64,
 * fp32_contents as FP32, fp64_contents as FP64), so both paths compute on
 * identical input. The response is built from circle__oip_outputs, as the
 * HTTP response is, with every output in raw_output_contents: the bytes the
 * HTTP route sends as binary data.
 */
#include "codec_grpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "circle_grpc.pb-c.h"
#include "circle_health.pb-c.h"
#include "codec_oip.h"
#include "codec_figures.h"
#include "codec_util.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "codec_grpc.c writes typed contents in host order: little-endian only"
#endif

typedef Inference__ModelInferRequest infer_req;
typedef Inference__ModelInferRequest__InferInputTensor infer_input;
typedef Inference__InferParameter infer_param;

/* ======================================================================== */
/* Request: ModelInferRequest -> the HTTP route's body                      */
/* ======================================================================== */

/* Appends one InferParameter's value as JSON. */
static void param_json(circle_buf *b, const infer_param *p) {
  if (p == NULL) {
    circle_buf_puts(b, "null");
    return;
  }
  switch (p->parameter_choice_case) {
  case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM:
    circle_buf_puts(b, p->bool_param ? "true" : "false");
    break;
  case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM:
    circle_buf_printf(b, "%lld", (long long)p->int64_param);
    break;
  case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_UINT64_PARAM:
    circle_buf_printf(b, "%llu", (unsigned long long)p->uint64_param);
    break;
  case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM:
    /* 17 significant digits: the same double after parsing. */
    circle_buf_json_number(b, p->double_param, CIRCLE_DTYPE_FLOAT64);
    break;
  case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM:
    circle_buf_json_string(b, p->string_param);
    break;
  default: /* no value set */
    circle_buf_puts(b, "null");
    break;
  }
}

/* The three parameter maps have their own entry types with one layout. */
typedef struct {
  const char *key;
  const infer_param *value;
} param_entry;

/* Appends {"key": value, ...} for n entries (reading entry i through get),
 * leaving out the key skip (NULL: none) and adding extra (a member's text,
 * or NULL) last. */
static void params_json(circle_buf *b, size_t n,
                        param_entry (*get)(const void *entries, size_t i),
                        const void *entries, const char *skip,
                        const char *extra) {
  bool first = true;
  circle_buf_puts(b, "{");
  for (size_t i = 0; i < n; i++) {
    param_entry e = get(entries, i);
    if (skip && strcmp(e.key, skip) == 0) continue;
    if (!first) circle_buf_puts(b, ", ");
    first = false;
    circle_buf_json_string(b, e.key);
    circle_buf_puts(b, ": ");
    param_json(b, e.value);
  }
  if (extra) {
    if (!first) circle_buf_puts(b, ", ");
    circle_buf_puts(b, extra);
  }
  circle_buf_puts(b, "}");
}

static param_entry request_param(const void *entries, size_t i) {
  const Inference__ModelInferRequest__ParametersEntry *const *e = entries;
  return (param_entry){e[i]->key, e[i]->value};
}
static param_entry input_param(const void *entries, size_t i) {
  const Inference__ModelInferRequest__InferInputTensor__ParametersEntry *const *e =
      entries;
  return (param_entry){e[i]->key, e[i]->value};
}
static param_entry output_param(const void *entries, size_t i) {
  const Inference__ModelInferRequest__InferRequestedOutputTensor__ParametersEntry
      *const *e = entries;
  return (param_entry){e[i]->key, e[i]->value};
}

/* "[2, 3]" for a shape. */
static void shape_text(char *dst, size_t len, const int64_t *shape, size_t n) {
  size_t o = 0;
  o += (size_t)snprintf(dst + o, len - o, "[");
  for (size_t i = 0; i < n && o < len; i++)
    o += (size_t)snprintf(dst + o, len - o, "%s%lld", i ? ", " : "",
                          (long long)shape[i]);
  if (o < len) snprintf(dst + o, len - o, "]");
}

/* Elements the shape holds; false when a dimension is negative or the
 * product overflows (circle_oip_decode then names the problem). */
static bool shape_count(const infer_input *in, uint64_t *count) {
  uint64_t c = 1;
  for (size_t i = 0; i < in->n_shape; i++) {
    if (in->shape[i] < 0 || !circle__mul_u64(c, (uint64_t)in->shape[i], &c))
      return false;
  }
  *count = c;
  return true;
}

/* Where input i's bytes come from. */
typedef struct {
  const void *data;
  size_t len;
} input_bytes;

static const char *const typed_names[] = {
    "bool_contents", "int_contents",  "int64_contents", "uint_contents",
    "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents"};

/* Finds input i's typed contents: the one field that holds values (*which,
 * an index into typed_names, or -1 when none does) and their bytes. False
 * (and *err) when more than one field holds values. */
static bool typed_field(const infer_input *in, int *which, input_bytes *bytes,
                        size_t *values, circle_error *err) {
  const Inference__InferTensorContents *c = in->contents;
  char q[72];
  circle__json_quote(q, sizeof q, in->name, 64);
  *which = -1;
  *values = 0;
  bytes->data = NULL;
  bytes->len = 0;
  if (c == NULL) return true;
  const struct {
    size_t n;
    const void *p;
    size_t size;
  } f[] = {{c->n_bool_contents, c->bool_contents, 0},
           {c->n_int_contents, c->int_contents, sizeof(int32_t)},
           {c->n_int64_contents, c->int64_contents, sizeof(int64_t)},
           {c->n_uint_contents, c->uint_contents, 0},
           {c->n_uint64_contents, c->uint64_contents, 0},
           {c->n_fp32_contents, c->fp32_contents, sizeof(float)},
           {c->n_fp64_contents, c->fp64_contents, sizeof(double)},
           {c->n_bytes_contents, c->bytes_contents, 0}};
  for (int k = 0; k < (int)(sizeof f / sizeof f[0]); k++) {
    if (f[k].n == 0) continue;
    if (*which >= 0) {
      circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                       "input '%s' has values in both %s and %s; send "
                       "them in one field",
                       q, typed_names[*which], typed_names[k]);
      return false;
    }
    *which = k;
    *values = f[k].n;
    bytes->data = f[k].p;
    bytes->len = f[k].n * f[k].size;
  }
  return true;
}

/* The typed contents field for a datatype, -1 for types without one that
 * circled reads (FP16 and BF16 travel as raw bytes only). */
static int typed_field_for(circle_oip_datatype t) {
  switch (t) {
  case CIRCLE_OIP_INT32: return 1;
  case CIRCLE_OIP_INT64: return 2;
  case CIRCLE_OIP_FP32: return 5;
  case CIRCLE_OIP_FP64: return 6;
  default: return -1;
  }
}

/* Checks what only gRPC can get wrong about input i and finds its bytes.
 * Inputs whose datatype circled does not know are passed on unchecked:
 * circle_oip_decode then rejects the datatype with the HTTP route's
 * message. */
static int input_data(const infer_req *m, size_t i, input_bytes *out,
                      circle_error *err) {
  const infer_input *in = m->inputs[i];
  circle_oip_datatype t = circle__oip_datatype_parse(in->datatype);
  size_t esz = circle__oip_datatype_size(t);
  uint64_t count = 0;
  bool sized = t != CIRCLE_OIP_UNKNOWN && esz > 0 && shape_count(in, &count);
  char st[96], q[72];
  shape_text(st, sizeof st, in->shape, in->n_shape);
  circle__json_quote(q, sizeof q, in->name, 64);

  if (m->n_raw_input_contents) {
    const ProtobufCBinaryData *raw = &m->raw_input_contents[i];
    if (in->contents) {
      int which;
      size_t values;
      input_bytes ignored;
      if (!typed_field(in, &which, &ignored, &values, err)) return CIRCLE_EINVAL;
      if (which >= 0)
        return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                                "input '%s' has both %s and "
                                "raw_input_contents[%zu]; send one",
                                q, typed_names[which], i);
    }
    uint64_t want;
    if (sized && (!circle__mul_u64(count, esz, &want) || want != raw->len))
      return circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                              "input '%s': raw_input_contents[%zu] has %zu "
                              "bytes but shape %s of %s needs %llu",
                              q, i, raw->len, st,
                              circle__oip_datatype_name(t),
                              (unsigned long long)(count * esz));
    out->data = raw->data;
    out->len = raw->len;
    return 0;
  }

  int which;
  size_t values;
  if (!typed_field(in, &which, out, &values, err)) return CIRCLE_EINVAL;
  if (t == CIRCLE_OIP_UNKNOWN) return 0;
  int expect = typed_field_for(t);
  if (expect < 0 && (which >= 0 || !sized || count > 0))
    return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                            "input '%s' has datatype %s, which has no "
                            "typed contents field; send it in "
                            "raw_input_contents",
                            q, circle__oip_datatype_name(t));
  if (which >= 0 && which != expect)
    return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                            "input '%s' has datatype %s: send its values "
                            "in %s (or raw_input_contents), not %s",
                            q, circle__oip_datatype_name(t),
                            typed_names[expect], typed_names[which]);
  if (sized && values != count)
    return circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                            "input '%s': %s has %zu values but shape %s "
                            "holds %llu",
                            q, typed_names[expect], values, st,
                            (unsigned long long)count);
  return 0;
}

/* Writes the HTTP route's JSON header for m into b; bytes[i] says where
 * input i's data is. */
static void header_json(const infer_req *m, const input_bytes *bytes,
                        circle_buf *b) {
  circle_buf_puts(b, "{");
  if (m->id[0]) {
    circle_buf_puts(b, "\"id\": ");
    circle_buf_json_string(b, m->id);
    circle_buf_puts(b, ", ");
  }
  /* Over gRPC every output is binary (raw_output_contents). */
  circle_buf_puts(b, "\"parameters\": ");
  params_json(b, m->n_parameters, request_param, m->parameters,
              "binary_data_output", "\"binary_data_output\": true");
  circle_buf_puts(b, ", \"inputs\": [");
  for (size_t i = 0; i < m->n_inputs; i++) {
    const infer_input *in = m->inputs[i];
    if (i) circle_buf_puts(b, ", ");
    circle_buf_puts(b, "{\"name\": ");
    circle_buf_json_string(b, in->name);
    circle_buf_puts(b, ", \"datatype\": ");
    circle_buf_json_string(b, in->datatype);
    circle_buf_puts(b, ", \"shape\": [");
    for (size_t k = 0; k < in->n_shape; k++)
      circle_buf_printf(b, "%s%lld", k ? ", " : "", (long long)in->shape[k]);
    circle_buf_puts(b, "], \"parameters\": ");
    char size[48];
    snprintf(size, sizeof size, "\"binary_data_size\": %zu", bytes[i].len);
    params_json(b, in->n_parameters, input_param, in->parameters,
                "binary_data_size", size);
    circle_buf_puts(b, "}");
  }
  circle_buf_puts(b, "]");
  if (m->n_outputs) {
    circle_buf_puts(b, ", \"outputs\": [");
    for (size_t i = 0; i < m->n_outputs; i++) {
      const Inference__ModelInferRequest__InferRequestedOutputTensor *o =
          m->outputs[i];
      if (i) circle_buf_puts(b, ", ");
      circle_buf_puts(b, "{\"name\": ");
      circle_buf_json_string(b, o->name);
      if (o->n_parameters) {
        circle_buf_puts(b, ", \"parameters\": ");
        params_json(b, o->n_parameters, output_param, o->parameters,
                    "binary_data", NULL);
      }
      circle_buf_puts(b, "}");
    }
    circle_buf_puts(b, "]");
  }
  circle_buf_puts(b, "}");
}

static int decode_message(const infer_req *m, const circle_config *defaults,
                          const circle_limits *lim, circle_request *req,
                          circle_error *err) {
  if (circle__oip_model_check(m->model_name, strlen(m->model_name),
                              m->model_version, strlen(m->model_version),
                              err) != 0)
    return CIRCLE_EINVAL;
  if (m->n_raw_input_contents && m->n_raw_input_contents != m->n_inputs)
    return circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                            "raw_input_contents has %zu entries but the "
                            "request has %zu inputs; send one entry per "
                            "input, in input order, or typed contents only",
                            m->n_raw_input_contents, m->n_inputs);
  input_bytes *bytes = calloc(m->n_inputs ? m->n_inputs : 1, sizeof *bytes);
  if (bytes == NULL)
    return circle_error_set(err, CIRCLE_ERR_OVERLOADED,
                            "out of memory; retry later");
  int rc = CIRCLE_EINVAL;
  size_t data_len = 0;
  for (size_t i = 0; i < m->n_inputs; i++) {
    if (input_data(m, i, &bytes[i], err) != 0) goto done;
    data_len += bytes[i].len; /* each is within the message: no overflow */
  }

  circle_buf body;
  circle_buf_init(&body);
  header_json(m, bytes, &body);
  size_t header_len = body.len;
  if (circle_buf_reserve(&body, data_len))
    for (size_t i = 0; i < m->n_inputs; i++)
      circle_buf_append(&body, bytes[i].data, bytes[i].len);
  if (body.failed) {
    circle_buf_free(&body);
    circle_error_set(err, CIRCLE_ERR_OVERLOADED,
                     "out of memory for the request; retry later or send a "
                     "smaller batch");
    goto done;
  }
  rc = circle_oip_decode(body.data, body.len, header_len, defaults, lim, req,
                         err);
  circle_buf_free(&body);
done:
  free(bytes);
  return rc;
}

int circle_grpc_infer_decode(const uint8_t *msg, size_t len,
                             const circle_config *defaults,
                             const circle_limits *lim, circle_request *req,
                             circle_error *err) {
  if (err == NULL) return CIRCLE_EINVAL;
  if (lim == NULL || req == NULL || (msg == NULL && len))
    return circle_error_set(err, CIRCLE_ERR_INTERNAL, "missing argument");
  circle_request_free(req);
  infer_req *m = inference__model_infer_request__unpack(NULL, len, msg);
  if (m == NULL)
    return circle_error_set(err, CIRCLE_ERR_INVALID_MESSAGE,
                            "the message is not a valid ModelInferRequest "
                            "(protobuf); send what the inference.proto "
                            "ModelInferRequest encodes");
  int rc = decode_message(m, defaults, lim, req, err);
  inference__model_infer_request__free_unpacked(m, NULL);
  if (rc != 0) circle_request_free(req);
  return rc;
}

/* ======================================================================== */
/* Response                                                                 */
/* ======================================================================== */

/* Packs msg at the end of b. */
static int pack(const ProtobufCMessage *msg, circle_buf *b) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  if (!circle_buf_reserve(b, n ? n : 1)) return CIRCLE_ENOMEM;
  b->len += protobuf_c_message_pack(msg, (uint8_t *)b->data + b->len);
  return 0;
}

#define COUNT_ONE(f) +1
#define N_FIGURE_PARAMS                                                    \
  (0 CIRCLE__STATS_FIGURES(COUNT_ONE) CIRCLE__STATS_COUNTS(COUNT_ONE)      \
     CIRCLE__RETRIEVAL_FIGURES(COUNT_ONE) CIRCLE__RETRIEVAL_COUNTS(COUNT_ONE))

int circle_grpc_infer_encode(const circle_request *req,
                             const circle_output *out, circle_buf *b) {
  if (req == NULL || out == NULL || b == NULL) return CIRCLE_EINVAL;
  circle_oip_outputs o;
  circle__oip_outputs(req, out, &o);
  const char *dtn = req->cfg.dtype == CIRCLE_DTYPE_FLOAT32 ? "FP32" : "FP64";
  size_t esz = circle_dtype_size(req->cfg.dtype);

  Inference__ModelInferResponse r = INFERENCE__MODEL_INFER_RESPONSE__INIT;
  Inference__ModelInferResponse__InferOutputTensor t[CIRCLE_OIP_N_OUTPUTS];
  Inference__ModelInferResponse__InferOutputTensor *tp[CIRCLE_OIP_N_OUTPUTS];
  int64_t shapes[CIRCLE_OIP_N_OUTPUTS][2];
  ProtobufCBinaryData raw[CIRCLE_OIP_N_OUTPUTS];
  for (size_t i = 0; i < o.count; i++) {
    const circle_oip_out_tensor *ot = &o.t[i];
    Inference__ModelInferResponse__InferOutputTensor init =
        INFERENCE__MODEL_INFER_RESPONSE__INFER_OUTPUT_TENSOR__INIT;
    t[i] = init;
    t[i].name = (char *)ot->name;
    t[i].datatype = (char *)dtn;
    shapes[i][0] = (int64_t)ot->rows;
    shapes[i][1] = (int64_t)ot->cols;
    t[i].shape = shapes[i];
    t[i].n_shape = ot->cols ? 2 : 1;
    tp[i] = &t[i];
    raw[i].data = (uint8_t *)ot->data;
    raw[i].len = ot->elems * esz;
  }
  r.model_name = "circle";
  r.model_version = "1";
  r.id = (char *)req->id;
  r.n_outputs = o.count;
  r.outputs = tp;
  r.n_raw_output_contents = o.count;
  r.raw_output_contents = raw;

  /* The stats and the retrieval figures, as the HTTP response's
   * "parameters" carry them. */
  enum { N_PARAMS = N_FIGURE_PARAMS };
  Inference__ModelInferResponse__ParametersEntry e[N_PARAMS];
  Inference__ModelInferResponse__ParametersEntry *ep[N_PARAMS];
  Inference__InferParameter v[N_PARAMS];
  size_t k = 0;
#define ENTRY(name, CASE, member, val)                                     \
  do {                                                                     \
    Inference__ModelInferResponse__ParametersEntry ei =                    \
        INFERENCE__MODEL_INFER_RESPONSE__PARAMETERS_ENTRY__INIT;           \
    Inference__InferParameter vi = INFERENCE__INFER_PARAMETER__INIT;       \
    e[k] = ei;                                                             \
    v[k] = vi;                                                             \
    v[k].parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_##CASE; \
    v[k].member = (val);                                                   \
    e[k].key = (char *)(name);                                             \
    e[k].value = &v[k];                                                    \
    ep[k] = &e[k];                                                         \
    k++;                                                                   \
  } while (0);
  if (o.stats) {
    const circle_stats *s = &out->stats;
#define FIGURE(f) ENTRY(#f, DOUBLE_PARAM, double_param, s->f)
#define COUNT(f) ENTRY(#f, INT64_PARAM, int64_param, (int64_t)s->f)
    CIRCLE__STATS_FIGURES(FIGURE)
    CIRCLE__STATS_COUNTS(COUNT)
#undef FIGURE
#undef COUNT
  }
  if (o.retrieval) {
    const circle_retrieval *q = &out->retrieval;
#define FIGURE(f) ENTRY("retrieval_" #f, DOUBLE_PARAM, double_param, q->f)
#define COUNT(f) ENTRY("retrieval_" #f, INT64_PARAM, int64_param, (int64_t)q->f)
    CIRCLE__RETRIEVAL_FIGURES(FIGURE)
    CIRCLE__RETRIEVAL_COUNTS(COUNT)
#undef FIGURE
#undef COUNT
  }
#undef ENTRY
  r.n_parameters = k;
  r.parameters = ep;
  return pack(&r.base, b);
}

/* ======================================================================== */
/* Metadata, config, health                                                 */
/* ======================================================================== */

int circle_grpc_model_request_check(const uint8_t *msg, size_t len,
                                    circle_error *err) {
  /* ModelReadyRequest, ModelMetadataRequest and ModelConfigRequest are all
   * {string name = 1; string version = 2;}. */
  Inference__ModelReadyRequest *m =
      inference__model_ready_request__unpack(NULL, len, msg);
  if (m == NULL)
    return circle_error_set(err, CIRCLE_ERR_INVALID_MESSAGE,
                            "the message is not a valid request for a model "
                            "(protobuf: name = 1, version = 2)");
  int rc = circle__oip_model_check(m->name, strlen(m->name), m->version,
                                   strlen(m->version), err);
  inference__model_ready_request__free_unpacked(m, NULL);
  return rc;
}

void circle_grpc_bool_response(bool value, circle_buf *b) {
  /* The three responses are all {bool = 1}. */
  Inference__ServerLiveResponse r = INFERENCE__SERVER_LIVE_RESPONSE__INIT;
  r.live = value;
  pack(&r.base, b);
}

void circle_grpc_server_metadata(const char *version, circle_buf *b) {
  Inference__ServerMetadataResponse r = INFERENCE__SERVER_METADATA_RESPONSE__INIT;
  char *ext[] = {"binary_tensor_data"};
  r.name = "circled";
  r.version = (char *)(version ? version : "unknown");
  r.n_extensions = 1;
  r.extensions = ext;
  pack(&r.base, b);
}

static const int64_t dims_1[] = {-1}, dims_2[] = {-1, -1};

void circle_grpc_model_metadata(circle_buf *b) {
  Inference__ModelMetadataResponse r = INFERENCE__MODEL_METADATA_RESPONSE__INIT;
  enum { N = CIRCLE_OIP_N_INPUTS + CIRCLE_OIP_N_OUTPUTS };
  Inference__ModelMetadataResponse__TensorMetadata t[N], *tp[N];
  for (size_t i = 0; i < N; i++) {
    const circle_oip_tensor_spec *s =
        i < CIRCLE_OIP_N_INPUTS ? &circle__oip_input_specs[i]
                                : &circle__oip_output_specs[i - CIRCLE_OIP_N_INPUTS];
    Inference__ModelMetadataResponse__TensorMetadata init =
        INFERENCE__MODEL_METADATA_RESPONSE__TENSOR_METADATA__INIT;
    t[i] = init;
    t[i].name = (char *)s->name;
    t[i].datatype = (char *)circle__oip_datatype_name(s->type);
    t[i].n_shape = (size_t)s->rank;
    t[i].shape = (int64_t *)(s->rank == 2 ? dims_2 : dims_1);
    tp[i] = &t[i];
  }
  char *versions[] = {"1"};
  r.name = "circle";
  r.n_versions = 1;
  r.versions = versions;
  r.platform = "circled";
  r.n_inputs = CIRCLE_OIP_N_INPUTS;
  r.inputs = tp;
  r.n_outputs = CIRCLE_OIP_N_OUTPUTS;
  r.outputs = tp + CIRCLE_OIP_N_INPUTS;
  pack(&r.base, b);
}

/* model_config.proto's DataType for a protocol datatype: TYPE_<name>, in
 * the order of circle_oip_datatype (BOOL .. BF16; BYTES is TYPE_STRING). */
static Inference__DataType config_type(circle_oip_datatype t) {
  static const Inference__DataType map[] = {
      [CIRCLE_OIP_BOOL] = INFERENCE__DATA_TYPE__TYPE_BOOL,
      [CIRCLE_OIP_UINT8] = INFERENCE__DATA_TYPE__TYPE_UINT8,
      [CIRCLE_OIP_UINT16] = INFERENCE__DATA_TYPE__TYPE_UINT16,
      [CIRCLE_OIP_UINT32] = INFERENCE__DATA_TYPE__TYPE_UINT32,
      [CIRCLE_OIP_UINT64] = INFERENCE__DATA_TYPE__TYPE_UINT64,
      [CIRCLE_OIP_INT8] = INFERENCE__DATA_TYPE__TYPE_INT8,
      [CIRCLE_OIP_INT16] = INFERENCE__DATA_TYPE__TYPE_INT16,
      [CIRCLE_OIP_INT32] = INFERENCE__DATA_TYPE__TYPE_INT32,
      [CIRCLE_OIP_INT64] = INFERENCE__DATA_TYPE__TYPE_INT64,
      [CIRCLE_OIP_FP16] = INFERENCE__DATA_TYPE__TYPE_FP16,
      [CIRCLE_OIP_FP32] = INFERENCE__DATA_TYPE__TYPE_FP32,
      [CIRCLE_OIP_FP64] = INFERENCE__DATA_TYPE__TYPE_FP64,
      [CIRCLE_OIP_BF16] = INFERENCE__DATA_TYPE__TYPE_BF16,
      [CIRCLE_OIP_BYTES] = INFERENCE__DATA_TYPE__TYPE_STRING};
  return t >= 0 && t < CIRCLE_OIP_UNKNOWN ? map[t]
                                          : INFERENCE__DATA_TYPE__TYPE_INVALID;
}

/* Collects the config parameters (circle__oip_config_params) as entries;
 * the values are copied, since the callback's strings are temporary. */
#define N_CONFIG_PARAMS 6
typedef struct {
  size_t n;
  Inference__ModelConfig__ParametersEntry e[N_CONFIG_PARAMS];
  Inference__ModelConfig__ParametersEntry *ep[N_CONFIG_PARAMS];
  Inference__ModelParameter v[N_CONFIG_PARAMS];
  char text[N_CONFIG_PARAMS][48];
} config_params;

static void collect_param(void *ctx, const char *key, const char *value) {
  config_params *p = ctx;
  if (p->n == N_CONFIG_PARAMS) return;
  size_t i = p->n++;
  Inference__ModelConfig__ParametersEntry ei =
      INFERENCE__MODEL_CONFIG__PARAMETERS_ENTRY__INIT;
  Inference__ModelParameter vi = INFERENCE__MODEL_PARAMETER__INIT;
  p->e[i] = ei;
  p->v[i] = vi;
  snprintf(p->text[i], sizeof p->text[i], "%s", value);
  p->v[i].string_value = p->text[i];
  p->e[i].key = (char *)key; /* a string literal */
  p->e[i].value = &p->v[i];
  p->ep[i] = &p->e[i];
}

void circle_grpc_model_config(const circle_config *defaults, circle_buf *b) {
  if (defaults == NULL) return;
  Inference__ModelInput in[CIRCLE_OIP_N_INPUTS], *inp[CIRCLE_OIP_N_INPUTS];
  Inference__ModelOutput out[CIRCLE_OIP_N_OUTPUTS], *outp[CIRCLE_OIP_N_OUTPUTS];
  for (size_t i = 0; i < CIRCLE_OIP_N_INPUTS; i++) {
    const circle_oip_tensor_spec *s = &circle__oip_input_specs[i];
    Inference__ModelInput init = INFERENCE__MODEL_INPUT__INIT;
    in[i] = init;
    in[i].name = (char *)s->name;
    in[i].data_type = config_type(s->type);
    in[i].n_dims = (size_t)s->rank;
    in[i].dims = (int64_t *)(s->rank == 2 ? dims_2 : dims_1);
    in[i].optional = s->optional;
    inp[i] = &in[i];
  }
  for (size_t i = 0; i < CIRCLE_OIP_N_OUTPUTS; i++) {
    const circle_oip_tensor_spec *s = &circle__oip_output_specs[i];
    Inference__ModelOutput init = INFERENCE__MODEL_OUTPUT__INIT;
    out[i] = init;
    out[i].name = (char *)s->name;
    out[i].data_type = config_type(s->type);
    out[i].n_dims = (size_t)s->rank;
    out[i].dims = (int64_t *)(s->rank == 2 ? dims_2 : dims_1);
    outp[i] = &out[i];
  }
  config_params params;
  params.n = 0;
  circle__oip_config_params(defaults, collect_param, &params);

  Inference__ModelVersionPolicy__Latest latest =
      INFERENCE__MODEL_VERSION_POLICY__LATEST__INIT;
  latest.num_versions = 1;
  Inference__ModelVersionPolicy policy = INFERENCE__MODEL_VERSION_POLICY__INIT;
  policy.policy_choice_case = INFERENCE__MODEL_VERSION_POLICY__POLICY_CHOICE_LATEST;
  policy.latest = &latest;
  Inference__ModelConfig c = INFERENCE__MODEL_CONFIG__INIT;
  c.name = "circle";
  c.platform = "circled";
  c.backend = "circled";
  c.version_policy = &policy;
  c.max_batch_size = 0;
  c.n_input = CIRCLE_OIP_N_INPUTS;
  c.input = inp;
  c.n_output = CIRCLE_OIP_N_OUTPUTS;
  c.output = outp;
  c.n_parameters = params.n;
  c.parameters = params.ep;
  Inference__ModelConfigResponse r = INFERENCE__MODEL_CONFIG_RESPONSE__INIT;
  r.config = &c;
  pack(&r.base, b);
}

int circle_grpc_health_check(const uint8_t *msg, size_t len, bool serving,
                             circle_buf *b, circle_error *err) {
  Grpc__Health__V1__HealthCheckRequest *m =
      grpc__health__v1__health_check_request__unpack(NULL, len, msg);
  if (m == NULL)
    return circle_error_set(err, CIRCLE_ERR_INVALID_MESSAGE,
                            "the message is not a valid HealthCheckRequest "
                            "(protobuf: service = 1)");
  bool ours = m->service[0] == '\0' ||
              strcmp(m->service, "inference.GRPCInferenceService") == 0;
  char q[72];
  if (!ours) circle__json_quote(q, sizeof q, m->service, 64);
  grpc__health__v1__health_check_request__free_unpacked(m, NULL);
  if (!ours)
    return circle_error_set(err, CIRCLE_ERR_NOT_FOUND,
                            "unknown service '%s'; this server serves \"\" "
                            "and \"inference.GRPCInferenceService\"",
                            q);
  Grpc__Health__V1__HealthCheckResponse r =
      GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  r.status = serving
                 ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                 : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
  pack(&r.base, b);
  return 0;
}

/* ======================================================================== */
/* Status codes                                                             */
/* ======================================================================== */

int circle_grpc_status_of(const circle_error *err) {
  /* The gRPC code is a column of the error table (error.h). */
  return circle_error_grpc(err ? err->kind : CIRCLE_ERR_INTERNAL);
}
