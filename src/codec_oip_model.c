/* codec_oip_model.c -- what the Open Inference Protocol says about model
 * "circle" and its server: the names of its inputs and outputs, its
 * signature as metadata and as Triton model configuration, the check of a
 * requested model name and version, and the server metadata. Must keep
 * true: one list of tensors (circle__oip_input_specs, _output_specs) feeds
 * the metadata, the model configuration and the gRPC codec, so every
 * endpoint and both encodings describe the same model; an unknown model
 * or version gets Triton's 404 message.
 */
#include "codec_oip_impl.h"

#include <stdio.h>
#include <string.h>

#include "codec_util.h"

/* ------------------------------------------------------------------------ */
/* Names                                                                    */
/* ------------------------------------------------------------------------ */

const char *const circle__oip_input_names[CIRCLE__OIP_IN_COUNT] = {
    "labels", "embeddings", "sample_weight", "ref_labels", "ref_embeddings"};

const circle__oip_output_name circle__oip_output_names[CIRCLE_OIP_N_OUTPUTS] = {
    {"loss", CIRCLE_OUT_LOSS},
    {"per_sample_loss", CIRCLE_OUT_PER_SAMPLE},
    {"embeddings_grad", CIRCLE_OUT_GRAD},
    {"ref_embeddings_grad", CIRCLE_OUT_REF_GRAD}};

/* ------------------------------------------------------------------------ */
/* Metadata                                                                 */
/* ------------------------------------------------------------------------ */

const circle_oip_tensor_spec circle__oip_input_specs[CIRCLE_OIP_N_INPUTS] = {
    {"labels", CIRCLE_OIP_INT64, 1, false},
    {"embeddings", CIRCLE_OIP_FP32, 2, false},
    {"sample_weight", CIRCLE_OIP_FP32, 1, true},
    {"ref_labels", CIRCLE_OIP_INT64, 1, true},
    {"ref_embeddings", CIRCLE_OIP_FP32, 2, true}};
const circle_oip_tensor_spec circle__oip_output_specs[CIRCLE_OIP_N_OUTPUTS] = {
    {"loss", CIRCLE_OIP_FP32, 1, false},
    {"per_sample_loss", CIRCLE_OIP_FP32, 1, false},
    {"embeddings_grad", CIRCLE_OIP_FP32, 2, false},
    {"ref_embeddings_grad", CIRCLE_OIP_FP32, 2, false}};

/* Appends a list of tensors as metadata ({"name", "datatype", "shape"}) or,
 * with config, as Triton model configuration ({"name", "data_type",
 * "dims"}, and "optional" where it applies). */
static void write_tensors(circle_buf *b, const circle_oip_tensor_spec *t,
                          size_t count, bool config) {
  circle_buf_puts(b, "[");
  for (size_t i = 0; i < count; i++) {
    if (i) circle_buf_puts(b, ", ");
    circle_buf_puts(b, "{\"name\": ");
    circle_buf_json_string(b, t[i].name);
    circle_buf_printf(b, config ? ", \"data_type\": \"TYPE_%s\", \"dims\": "
                                : ", \"datatype\": \"%s\", \"shape\": ",
                      circle__oip_datatype_name(t[i].type));
    circle_buf_puts(b, t[i].rank == 2 ? "[-1, -1]" : "[-1]");
    if (config && t[i].optional) circle_buf_puts(b, ", \"optional\": true");
    circle_buf_puts(b, "}");
  }
  circle_buf_puts(b, "]");
}

void circle_oip_model_metadata(circle_buf *b) {
  if (b == NULL) return;
  circle_buf_puts(b, "{\"name\": \"circle\", \"versions\": [\"1\"], "
                     "\"platform\": \"circled\", \"inputs\": ");
  write_tensors(b, circle__oip_input_specs, CIRCLE_OIP_N_INPUTS, false);
  circle_buf_puts(b, ", \"outputs\": ");
  write_tensors(b, circle__oip_output_specs, CIRCLE_OIP_N_OUTPUTS, false);
  circle_buf_puts(b, "}");
}

void circle__oip_config_params(const circle_config *defaults,
                               void (*fn)(void *ctx, const char *key,
                                          const char *value),
                               void *ctx) {
  circle_buf num;
  circle_buf_init(&num);
  circle_buf_python_float(&num, defaults->gamma);
  fn(ctx, "gamma", num.failed ? "" : num.data);
  num.len = 0;
  circle_buf_python_float(&num, defaults->margin);
  fn(ctx, "margin", num.failed ? "" : num.data);
  circle_buf_free(&num);
  fn(ctx, "remove_diagonal", defaults->remove_diagonal ? "true" : "false");
  const char *red = circle_reduction_name(defaults->reduction);
  fn(ctx, "reduction", red ? red : "null");
  const char *dtn = circle_config_dtype_name(defaults);
  fn(ctx, "dtype", dtn ? dtn : "float32");
  fn(ctx, "normalize", defaults->normalize ? "true" : "false");
}

/* A Triton model-configuration "parameters" entry: {"string_value": s},
 * after a ", " for every entry but the first. */
typedef struct {
  circle_buf *b;
  bool first;
} param_writer;

static void config_param(void *ctx, const char *key, const char *value) {
  param_writer *w = ctx;
  if (!w->first) circle_buf_puts(w->b, ", ");
  w->first = false;
  circle_buf_json_string(w->b, key);
  circle_buf_puts(w->b, ": {\"string_value\": ");
  circle_buf_json_string(w->b, value);
  circle_buf_puts(w->b, "}");
}

void circle_oip_model_config(circle_buf *b, const circle_config *defaults) {
  if (b == NULL || defaults == NULL) return;
  /* Triton's model configuration (model_config.proto as JSON), as
   * tritonclient's get_model_config reads it. The tensors are those of the
   * metadata; optional inputs say so; the loss defaults a request gets when
   * its parameters leave them out are string parameters, the values spelt
   * as GET /config spells them. */
  circle_buf_puts(b, "{\"name\": \"circle\", \"platform\": \"circled\", "
                     "\"backend\": \"circled\", \"version_policy\": "
                     "{\"latest\": {\"num_versions\": 1}}, "
                     "\"max_batch_size\": 0, \"input\": ");
  write_tensors(b, circle__oip_input_specs, CIRCLE_OIP_N_INPUTS, true);
  circle_buf_puts(b, ", \"output\": ");
  write_tensors(b, circle__oip_output_specs, CIRCLE_OIP_N_OUTPUTS, true);
  circle_buf_puts(b, ", \"parameters\": {");
  param_writer w = {b, true};
  circle__oip_config_params(defaults, config_param, &w);
  circle_buf_puts(b, "}}");
}

int circle__oip_model_check(const char *name, size_t name_len,
                            const char *version, size_t version_len,
                            circle_error *err) {
  /* The client's bytes, cut and with non-printable bytes as '?'. */
  char raw[104], q[112];
  if (name_len != 6 || strncmp(name, "circle", 6)) {
    snprintf(raw, sizeof raw, "%.*s", (int)(name_len > 100 ? 100 : name_len), name);
    circle__json_quote(q, sizeof q, raw, 100);
    return circle_error_set(err, CIRCLE_ERR_NOT_FOUND,
                            "Request for unknown model: '%s' is not found", q);
  }
  if (version_len && (version_len != 1 || version[0] != '1')) {
    snprintf(raw, sizeof raw, "%.*s", (int)(version_len > 40 ? 40 : version_len),
             version);
    circle__json_quote(q, sizeof q, raw, 40);
    return circle_error_set(err, CIRCLE_ERR_NOT_FOUND,
                            "Request for unknown model: 'circle' version %s "
                            "is not found",
                            q);
  }
  return 0;
}

void circle_oip_server_metadata(circle_buf *b, const char *version) {
  if (b == NULL) return;
  circle_buf_puts(b, "{\"name\": \"circled\", \"version\": ");
  circle_buf_json_string(b, version ? version : "unknown");
  circle_buf_puts(b, ", \"extensions\": [\"binary_tensor_data\"]}");
}
