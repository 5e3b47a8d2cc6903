/* codec_oip.c -- Open Inference Protocol (KServe v2 REST) codec for model
 * "circle", with Triton's binary tensor data extension: decoding an infer
 * request (its JSON header: inputs, parameters, outputs) into a
 * circle_request. Must keep true: whatever tritonclient.http or KServe's
 * REST client sends is understood (JSON or binary tensors, flat or nested
 * data, [N] or [N, 1] labels), every byte of binary data is accounted for
 * (shapes must match sizes exactly, no bytes left over), and a rejected
 * request names the input, the element and what was expected.
 *
 *   body = JSON header (header_len bytes) | input bytes, in input order
 *          (only inputs whose parameters carry binary_data_size)
 *
 * The codec's other files: codec_oip_tensor.c reads an input's data (JSON
 * or binary) into an array, codec_oip_encode.c writes the infer response
 * and errors, codec_oip_model.c describes the model (metadata, model
 * configuration); codec_oip_impl.h is what they share.
 *
 * The compute dtype is parameters.dtype when given, else float64 when the
 * embeddings are FP64, else the server default (float32 unless configured).
 * FP16 and BF16 embeddings are widened to float32. A half-precision compute
 * dtype (float16, bfloat16 and their mixed policies) reads the inputs as
 * float64, rounds them once to the format, and returns FP16 / BF16 outputs.
 * Binary data is little-endian, as the extension specifies.
 *
 * JSON data never becomes cJSON nodes (80 bytes each: 40 times a header of
 * small numbers): parse_header cuts every input's data array out of the
 * text cJSON parses, and circle__oip_read_input reads it from the header as
 * sent. The rest may hold at most MAX_HEADER_VALUES values. Decoding so
 * holds at most the body, a copy of the header and the decoded arrays.
 */
#include "codec_oip_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "codec_config.h"
#include "codec_util.h"
#include "json_fast.h"

/* ------------------------------------------------------------------------ */
/* Inputs                                                                   */
/* ------------------------------------------------------------------------ */

static bool is_float_type(circle_oip_datatype t) {
  return t == CIRCLE_OIP_FP16 || t == CIRCLE_OIP_FP32 ||
         t == CIRCLE_OIP_FP64 || t == CIRCLE_OIP_BF16;
}

/* Reads a JSON number that must be a non-negative integer (shapes, sizes). */
static bool json_uint(const cJSON *it, uint64_t *out) {
  if (!cJSON_IsNumber(it)) return false;
  double v = it->valuedouble;
  if (!(v >= 0) || v >= CIRCLE__OIP_EXACT_INT_LIMIT || v != trunc(v)) return false;
  *out = (uint64_t)v;
  return true;
}

static int parse_input_params(circle__oip_decoder *dc, const cJSON *p,
                              const char *name, bool *has_bin,
                              uint64_t *bin_size) {
  circle_error *err = dc->err;
  char where[64];
  snprintf(where, sizeof(where), "the parameters of input '%s'", name);
  if (!cJSON_IsObject(p))
    return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                            "the parameters of input '%s' are %s; expected "
                            "an object",
                            name, circle__json_kind(p));
  circle__json_field f[] = {{"binary_data_size", NULL},
                            {"shared_memory_region", NULL},
                            {"shared_memory_byte_size", NULL},
                            {"shared_memory_offset", NULL},
                            {"content_type", NULL}};
  if (circle__json_fields(p, where, f, 5, err) != 0) return CIRCLE_EINVAL;
  if (f[1].item || f[2].item || f[3].item)
    return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                            "input '%s' uses shared memory, which circled "
                            "does not support; send the data in the body "
                            "(JSON or binary_data_size)",
                            name);
  /* content_type (KServe / MLServer codecs) is informational: ignored. */
  if (f[0].item) {
    if (!json_uint(f[0].item, bin_size))
      return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                              "input '%s': binary_data_size must be an "
                              "integer >= 0",
                              name);
    *has_bin = true;
  }
  return 0;
}

/* Reads one element of "inputs"; *bin_off is where its binary data starts
 * (advanced past it). */
static int parse_input(circle__oip_decoder *dc, const cJSON *obj,
                       size_t index, size_t *bin_off, size_t body_len) {
  circle_error *err = dc->err;
  char where[32];
  snprintf(where, sizeof(where), "inputs[%zu]", index);
  if (!cJSON_IsObject(obj))
    return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                            "inputs[%zu] is %s; expected an object with "
                            "name, shape, datatype and data",
                            index, circle__json_kind(obj));
  circle__json_field f[] = {{"name", NULL}, {"shape", NULL},
                            {"datatype", NULL}, {"parameters", NULL},
                            {"data", NULL}};
  if (circle__json_fields(obj, where, f, 5, err) != 0) return CIRCLE_EINVAL;
  if (!cJSON_IsString(f[0].item))
    return circle_error_set(err, f[0].item ? CIRCLE_ERR_WRONG_TYPE : CIRCLE_ERR_MISSING_FIELD,
                            "inputs[%zu].name is %s; expected one of labels, "
                            "embeddings, sample_weight, ref_labels, "
                            "ref_embeddings",
                            index, circle__json_kind(f[0].item));
  int k;
  for (k = 0; k < CIRCLE__OIP_IN_COUNT; k++)
    if (strcmp(f[0].item->valuestring, circle__oip_input_names[k]) == 0) break;
  char q[72];
  circle__json_quote(q, sizeof(q), f[0].item->valuestring, 64);
  if (k == CIRCLE__OIP_IN_COUNT)
    return circle_error_set(err, CIRCLE_ERR_UNKNOWN_KEY,
                            "model 'circle' has no input '%s'; its inputs "
                            "are labels, embeddings, sample_weight, "
                            "ref_labels and ref_embeddings",
                            q);
  const char *name = circle__oip_input_names[k];
  circle__oip_input *in = &dc->in[k];
  if (in->present)
    return circle_error_set(err, CIRCLE_ERR_DUPLICATE_KEY,
                            "input '%s' is given twice (inputs[%zu] and "
                            "inputs[%zu])",
                            name, in->index, index);
  in->present = true;
  in->index = index;

  /* datatype */
  if (!cJSON_IsString(f[2].item))
    return circle_error_set(err, f[2].item ? CIRCLE_ERR_WRONG_TYPE : CIRCLE_ERR_MISSING_FIELD,
                            "input '%s': datatype is %s; expected a string "
                            "such as \"FP32\"",
                            name, circle__json_kind(f[2].item));
  in->type = circle__oip_datatype_parse(f[2].item->valuestring);
  circle__json_quote(q, sizeof(q), f[2].item->valuestring, 64);
  bool is_label = k == CIRCLE__OIP_IN_LABELS || k == CIRCLE__OIP_IN_REF_LABELS;
  if (is_label && in->type != CIRCLE_OIP_INT32 && in->type != CIRCLE_OIP_INT64)
    return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                            "input '%s' has datatype \"%s\"; expected INT32 "
                            "or INT64",
                            name, q);
  if (!is_label && !is_float_type(in->type))
    return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                            "input '%s' has datatype \"%s\"; expected FP32 or "
                            "FP64 (FP16 and BF16 also accepted)",
                            name, q);

  /* shape */
  const cJSON *sh = f[1].item;
  if (!cJSON_IsArray(sh))
    return circle_error_set(err, sh ? CIRCLE_ERR_WRONG_TYPE : CIRCLE_ERR_MISSING_FIELD,
                            "input '%s': shape is %s; expected an array of "
                            "dimensions",
                            name, circle__json_kind(sh));
  size_t rank = 0;
  uint64_t count = 1;
  const cJSON *it;
  cJSON_ArrayForEach(it, sh) {
    uint64_t dim;
    if (!json_uint(it, &dim))
      return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                              "input '%s': shape[%zu] is not an integer >= 0",
                              name, rank);
    if (rank < 2) in->shape[rank] = dim;
    if (!circle__mul_u64(count, dim, &count))
      return circle_error_set(err, CIRCLE_ERR_LIMIT_EXCEEDED,
                              "input '%s': the shape's element count "
                              "overflows",
                              name);
    rank++;
  }
  in->rank = rank;
  in->count = count;
  bool matrix =
      k == CIRCLE__OIP_IN_EMBEDDINGS || k == CIRCLE__OIP_IN_REF_EMBEDDINGS;
  bool ok_rank = matrix ? rank == 2 : (rank == 1 || (rank == 2 && in->shape[1] == 1));
  if (!ok_rank)
    return circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                            "input '%s' has rank %zu; expected %s", name, rank,
                            matrix ? "[N, D]" : "[N] or [N, 1]");

  /* data: JSON, or binary after the header */
  bool has_bin = false;
  uint64_t bin_size = 0;
  if (f[3].item && !cJSON_IsNull(f[3].item) &&
      parse_input_params(dc, f[3].item, name, &has_bin, &bin_size) != 0)
    return CIRCLE_EINVAL;
  if (has_bin && f[4].item)
    return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                            "input '%s' has both JSON data and "
                            "binary_data_size; send one",
                            name);
  if (!has_bin) {
    if (f[4].item == NULL)
      return circle_error_set(err, CIRCLE_ERR_MISSING_FIELD,
                              "input '%s' has no data; send \"data\" or "
                              "parameters.binary_data_size with the bytes "
                              "after the JSON",
                              name);
    if (!cJSON_IsArray(f[4].item))
      return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                              "input '%s': data is %s; expected an array",
                              name, circle__json_kind(f[4].item));
    /* cannot happen: see cut */
    if (index >= CIRCLE__OIP_CUT_INPUTS || !dc->cut[index])
      return circle_error_set(err, CIRCLE_ERR_INTERNAL,
                              "input '%s': its data was not found in the text",
                              name);
    in->json = true;
    in->data_off = dc->cut_off[index];
    return 0;
  }
  size_t esz = circle__oip_datatype_size(in->type);
  uint64_t want;
  if (!circle__mul_u64(count, esz, &want) || want != bin_size) {
    char st[64];
    circle__oip_shape_text(st, sizeof(st), in);
    return circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                            "input '%s': binary_data_size is %llu bytes but "
                            "shape %s of %s needs %llu",
                            name, (unsigned long long)bin_size, st,
                            circle__oip_datatype_name(in->type),
                            (unsigned long long)(count * esz));
  }
  size_t avail = body_len - *bin_off;
  if (bin_size > avail)
    return circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                            "input '%s' needs %llu bytes of binary data at "
                            "byte %zu, but the body has only %zu bytes "
                            "left there (truncated body, or a wrong "
                            "Inference-Header-Content-Length?)",
                            name, (unsigned long long)bin_size, *bin_off,
                            avail);
  in->bin = dc->body + *bin_off;
  in->bin_len = (size_t)bin_size;
  *bin_off += (size_t)bin_size;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Request parameters and outputs                                           */
/* ------------------------------------------------------------------------ */

enum { P_GAMMA, P_MARGIN, P_REMOVE_DIAGONAL, P_REDUCTION, P_NORMALIZE,
       P_DTYPE, P_TAG, P_BINARY_DATA_OUTPUT, P_STATS, P_RETRIEVAL, P_SEQUENCE_ID,
       P_SEQUENCE_START, P_SEQUENCE_END, P_PRIORITY, P_TIMEOUT, P_COUNT };

static int parse_params(circle__oip_decoder *dc, const cJSON *p, circle_request *r,
                        bool *dtype_given, bool *binary_default, bool *stats,
                        bool *retrieval) {
  circle_error *err = dc->err;
  if (!cJSON_IsObject(p))
    return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                            "parameters is %s; expected an object",
                            circle__json_kind(p));
  /* The last five are Triton's scheduling parameters (tritonclient sends
   * them for sequences, priorities and timeouts); they mean nothing to a
   * stateless loss and are accepted and ignored. */
  circle__json_field f[P_COUNT] = {
      {"gamma", NULL},          {"margin", NULL},       {"remove_diagonal", NULL},
      {"reduction", NULL},      {"normalize", NULL},    {"dtype", NULL},
      {"tag", NULL},            {"binary_data_output", NULL},
      {"stats", NULL},          {"retrieval", NULL},
      {"sequence_id", NULL},    {"sequence_start", NULL},
      {"sequence_end", NULL},   {"priority", NULL},     {"timeout", NULL}};
  if (circle__json_fields(p, "parameters", f, P_COUNT, err) != 0)
    return CIRCLE_EINVAL;
  /* gamma, margin, remove_diagonal, reduction, dtype: exactly as a Keras
   * config; reuse its parser on an object of just those members. */
  cJSON *cfg = cJSON_CreateObject();
  if (cfg == NULL)
    return circle_error_set(err, CIRCLE_ERR_OVERLOADED, "out of memory; retry later");
  static const int cfg_keys[] = {P_GAMMA, P_MARGIN, P_REMOVE_DIAGONAL,
                                 P_REDUCTION, P_DTYPE};
  for (size_t i = 0; i < sizeof(cfg_keys) / sizeof(cfg_keys[0]); i++) {
    const cJSON *it = f[cfg_keys[i]].item;
    if (it == NULL) continue;
    cJSON *dup = cJSON_Duplicate(it, 1);
    if (dup == NULL || !cJSON_AddItemToObject(cfg, f[cfg_keys[i]].name, dup)) {
      cJSON_Delete(dup);
      cJSON_Delete(cfg);
      return circle_error_set(err, CIRCLE_ERR_OVERLOADED, "out of memory; retry later");
    }
  }
  int rc = circle__config_from_json(cfg, &r->cfg, r->name, sizeof(r->name), err);
  cJSON_Delete(cfg);
  if (rc != 0) {
    /* Name the parameters, not a config object. */
    if (strncmp(err->message, "config.", 7) == 0) {
      char m[sizeof(err->message)];
      snprintf(m, sizeof(m), "parameters.%s", err->message + 7);
      memcpy(err->message, m, sizeof(m));
    }
    return CIRCLE_EINVAL;
  }
  /* null is Keras' floatx (float32), a choice like any other spelling. */
  *dtype_given = f[P_DTYPE].item != NULL;
  if (f[P_NORMALIZE].item &&
      circle__bool_parse(f[P_NORMALIZE].item, &r->cfg.normalize,
                         "parameters.normalize", CIRCLE_ERR_BAD_CONFIG, err) != 0)
    return CIRCLE_EINVAL;
  if (f[P_TAG].item &&
      circle__tag_parse(f[P_TAG].item, r->tag, sizeof(r->tag), "parameters.tag", err) != 0)
    return CIRCLE_EINVAL;
  if (f[P_BINARY_DATA_OUTPUT].item &&
      circle__bool_parse(f[P_BINARY_DATA_OUTPUT].item, binary_default,
                         "parameters.binary_data_output", CIRCLE_ERR_WRONG_TYPE,
                         err) != 0)
    return CIRCLE_EINVAL;
  /* stats: false skips the quality figures (response parameters and
   * /metrics) for a client that wants the loss and gradients alone. */
  if (f[P_STATS].item &&
      circle__bool_parse(f[P_STATS].item, stats, "parameters.stats",
                         CIRCLE_ERR_WRONG_TYPE, err) != 0)
    return CIRCLE_EINVAL;
  /* retrieval: true adds the retrieval figures (precision@1, R-precision,
   * MAP@R) to the response parameters; off by default, as they cost a
   * ranking per row. */
  if (f[P_RETRIEVAL].item &&
      circle__bool_parse(f[P_RETRIEVAL].item, retrieval, "parameters.retrieval",
                         CIRCLE_ERR_WRONG_TYPE, err) != 0)
    return CIRCLE_EINVAL;
  return 0;
}

static int parse_outputs(circle__oip_decoder *dc, const cJSON *a,
                         bool binary_default, circle_request *r) {
  circle_error *err = dc->err;
  static const char *const list =
      "loss, per_sample_loss, embeddings_grad, ref_embeddings_grad";
  if (!cJSON_IsArray(a))
    return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                            "outputs is %s; expected an array of {\"name\": "
                            "...}",
                            circle__json_kind(a));
  size_t i = 0;
  const cJSON *o;
  cJSON_ArrayForEach(o, a) {
    char where[32];
    snprintf(where, sizeof(where), "outputs[%zu]", i);
    if (!cJSON_IsObject(o))
      return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                              "outputs[%zu] is %s; expected {\"name\": ...}",
                              i, circle__json_kind(o));
    circle__json_field f[] = {{"name", NULL}, {"parameters", NULL}};
    if (circle__json_fields(o, where, f, 2, err) != 0) return CIRCLE_EINVAL;
    if (!cJSON_IsString(f[0].item))
      return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                              "outputs[%zu].name is %s; expected one of %s", i,
                              circle__json_kind(f[0].item), list);
    size_t k;
    for (k = 0; k < CIRCLE_OIP_N_OUTPUTS; k++)
      if (strcmp(f[0].item->valuestring, circle__oip_output_names[k].name) == 0)
        break;
    char q[72];
    circle__json_quote(q, sizeof(q), f[0].item->valuestring, 64);
    if (k == CIRCLE_OIP_N_OUTPUTS)
      return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                              "model 'circle' has no output '%s'; its outputs "
                              "are %s",
                              q, list);
    unsigned bit = circle__oip_output_names[k].bit;
    if (r->want & bit)
      return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                              "output '%s' is requested twice", q);
    if (bit == CIRCLE_OUT_REF_GRAD && !r->has_ref)
      return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                              "output 'ref_embeddings_grad' needs the inputs "
                              "ref_labels and ref_embeddings");
    bool binary = binary_default;
    const cJSON *p = f[1].item;
    if (p && !cJSON_IsNull(p)) {
      char pw[112];
      snprintf(pw, sizeof(pw), "the parameters of output '%s'", q);
      if (!cJSON_IsObject(p))
        return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT, "%s are %s; expected an object",
                                pw, circle__json_kind(p));
      circle__json_field pf[] = {{"binary_data", NULL}, {"classification", NULL}};
      if (circle__json_fields(p, pw, pf, 2, err) != 0) return CIRCLE_EINVAL;
      if (pf[1].item)
        return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                                "output '%s' asks for classification, which "
                                "a loss does not have",
                                q);
      if (pf[0].item) {
        if (!cJSON_IsBool(pf[0].item))
          return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                                  "output '%s': binary_data is %s; expected "
                                  "true or false",
                                  q, circle__json_kind(pf[0].item));
        binary = cJSON_IsTrue(pf[0].item);
      }
    }
    r->want |= bit;
    if (binary) r->binary_outputs |= bit;
    r->out_order[r->out_count++] = bit;
    i++;
  }
  if (i == 0)
    return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                            "outputs is empty; name at least one of %s, or "
                            "leave outputs out for all",
                            list);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Decoding                                                                 */
/* ------------------------------------------------------------------------ */

/* The most JSON values and keys an inference request has besides its
 * tensors' data: five inputs and four outputs with their names, shapes and
 * parameters, and the request's parameters, come to about two hundred. */
#define MAX_HEADER_VALUES 4096

/* Validates the JSON header, cuts every input's data array out of the text
 * cJSON parses (noting where each one is: circle__oip_read_input reads it from the
 * header as sent) and parses the rest, of at most MAX_HEADER_VALUES values.
 * So no element of the data costs a cJSON node, and the tree is small
 * whatever the header holds. Returns the tree or NULL with dc->err set. */
static cJSON *parse_header(circle__oip_decoder *dc) {
  const char *b = dc->body;
  size_t hl = dc->header_len;
  if (circle__json_validate(b, hl, dc->lim->max_depth, NULL, dc->err) != 0)
    return NULL;
  size_t spans[2 * CIRCLE__OIP_CUT_INPUTS], nspans = 0, top = 0, at, in_at, data_at;
  while (top < hl && (b[top] == ' ' || b[top] == '\t' || b[top] == '\n' ||
                      b[top] == '\r'))
    top++;
  char key[16];
  bool key_ok;
  circle__json_iter root, inputs, input;
  if (top < hl && b[top] == '{') {
    circle__json_iter_init(&root, b, hl, top);
    while (circle__json_iter_member(&root, key, sizeof key, &key_ok, &at)) {
      if (!key_ok || strcmp(key, "inputs") != 0 || b[at] != '[') continue;
      circle__json_iter_init(&inputs, b, hl, at);
      for (size_t i = 0;
           i < CIRCLE__OIP_CUT_INPUTS && circle__json_iter_next(&inputs, &in_at);
           i++) {
        if (b[in_at] != '{') continue;
        circle__json_iter_init(&input, b, hl, in_at);
        while (circle__json_iter_member(&input, key, sizeof key, &key_ok,
                                        &data_at)) {
          if (!key_ok || strcmp(key, "data") != 0 || b[data_at] != '[' ||
              dc->cut[i])
            continue;
          dc->cut[i] = true;
          dc->cut_off[i] = data_at;
          spans[2 * nspans] = data_at;
          spans[2 * nspans + 1] = circle__json_iter_skip(&input);
          nspans++;
        }
      }
      break; /* a second "inputs" is a duplicate key: the tree says so */
    }
  }
  char *copy;
  size_t copy_len;
  if (!circle__json_cut(b, hl, spans, nspans, &copy, &copy_len)) {
    circle_error_set(dc->err, CIRCLE_ERR_OVERLOADED,
                     "out of memory reading the request; retry later");
    return NULL;
  }
  cJSON *tree = circle__json_parse(copy, copy_len, dc->lim->max_depth,
                                   MAX_HEADER_VALUES, dc->err);
  free(copy);
  return tree;
}

int circle_oip_decode(const char *body, size_t len, size_t header_len,
                      const circle_config *defaults, const circle_limits *lim,
                      circle_request *req, circle_error *err) {
  if (req == NULL || err == NULL || lim == NULL || (body == NULL && len) ||
      header_len > len) {
    if (err)
      circle_error_set(err,
                       header_len > len && body ? CIRCLE_ERR_BAD_ENCODING
                                                : CIRCLE_ERR_INTERNAL,
                       header_len > len && body
                           ? "Inference-Header-Content-Length is larger than "
                             "the body"
                           : "circle_oip_decode: bad argument");
    return CIRCLE_EINVAL;
  }
  if (body == NULL) body = "";
  circle_request_free(req);
  circle__oip_decoder dc;
  memset(&dc, 0, sizeof(dc));
  dc.body = body;
  dc.header_len = header_len;
  dc.lim = lim;
  dc.err = err;
  cJSON *root = parse_header(&dc);
  if (root == NULL) return CIRCLE_EINVAL;
  circle_request r;
  circle_request_init(&r);
  r.proto = CIRCLE_PROTO_OIP;
  if (defaults) r.cfg = *defaults;
  int rc = CIRCLE_EINVAL;

  if (!cJSON_IsObject(root)) {
    circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                     "the inference request is %s; expected a JSON object "
                     "with inputs",
                     circle__json_kind(root));
    goto fail;
  }
  circle__json_field f[] = {{"id", NULL},      {"model_name", NULL},
                            {"model_version", NULL}, {"inputs", NULL},
                            {"outputs", NULL}, {"parameters", NULL}};
  if (circle__json_fields(root, "the inference request", f, 6, err) != 0)
    goto fail;
  const cJSON *it;
  if ((it = f[0].item) != NULL && !cJSON_IsNull(it)) {
    if (!cJSON_IsString(it) || strlen(it->valuestring) >= sizeof(r.id)) {
      circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                       "id must be a string of at most %zu bytes",
                       sizeof(r.id) - 1);
      goto fail;
    }
    /* The id is echoed in the response: it must come back as sent, and
     * bytes that are not UTF-8 would come back as U+FFFD. */
    if (!circle__utf8_valid(it->valuestring)) {
      circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                       "id is not valid UTF-8; send the id as UTF-8 text");
      goto fail;
    }
    snprintf(r.id, sizeof(r.id), "%s", it->valuestring);
  }
  if ((it = f[1].item) != NULL &&
      (!cJSON_IsString(it) || strcmp(it->valuestring, "circle") != 0)) {
    circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                     "model_name must be \"circle\", the only model served "
                     "here");
    goto fail;
  }
  if ((it = f[2].item) != NULL &&
      (!cJSON_IsString(it) ||
       (it->valuestring[0] && strcmp(it->valuestring, "1") != 0))) {
    circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                     "model_version must be \"1\", the only version served "
                     "here");
    goto fail;
  }

  /* Parameters: config first, it decides the dtype. */
  bool dtype_given = false, binary_default = false, stats = true,
       retrieval = false;
  if (f[5].item && !cJSON_IsNull(f[5].item) &&
      parse_params(&dc, f[5].item, &r, &dtype_given, &binary_default, &stats,
                   &retrieval) != 0)
    goto fail;

  /* Inputs, and where each one's binary data lies. */
  const cJSON *inputs = f[3].item;
  if (inputs == NULL) {
    circle_error_set(err, CIRCLE_ERR_MISSING_FIELD,
                     "inputs is missing; send labels and embeddings");
    goto fail;
  }
  if (!cJSON_IsArray(inputs)) {
    circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                     "inputs is %s; expected an array of tensors",
                     circle__json_kind(inputs));
    goto fail;
  }
  size_t bin_off = header_len, idx = 0;
  cJSON_ArrayForEach(it, inputs) {
    if (parse_input(&dc, it, idx, &bin_off, len) != 0) goto fail;
    idx++;
  }
  if (bin_off != len) {
    circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                     "the body has %zu bytes after the binary data of the "
                     "inputs (the JSON header is %zu bytes, binary data "
                     "ends at byte %zu); check binary_data_size and "
                     "Inference-Header-Content-Length",
                     len - bin_off, header_len, bin_off);
    goto fail;
  }
  circle__oip_input *L = &dc.in[CIRCLE__OIP_IN_LABELS],
                    *E = &dc.in[CIRCLE__OIP_IN_EMBEDDINGS],
                    *W = &dc.in[CIRCLE__OIP_IN_SAMPLE_WEIGHT],
                    *RL = &dc.in[CIRCLE__OIP_IN_REF_LABELS],
                    *RE = &dc.in[CIRCLE__OIP_IN_REF_EMBEDDINGS];
  if (!L->present || !E->present) {
    circle_error_set(err, CIRCLE_ERR_MISSING_FIELD,
                     "input '%s' is missing; model 'circle' needs labels "
                     "(INT32/INT64 [N]) and embeddings (FP32/FP64 [N, D])",
                     L->present ? "embeddings" : "labels");
    goto fail;
  }
  if (RL->present != RE->present) {
    circle_error_set(err, CIRCLE_ERR_HALF_REFERENCE,
                     "input '%s' is given without '%s'; send both "
                     "ref_labels and ref_embeddings, or neither",
                     RL->present ? "ref_labels" : "ref_embeddings",
                     RL->present ? "ref_embeddings" : "ref_labels");
    goto fail;
  }
  uint64_t n = L->shape[0], d = E->shape[1], m = RL->present ? RL->shape[0] : 0;
  if (n == 0) {
    circle_error_set(err, CIRCLE_ERR_EMPTY_BATCH,
                     "input 'labels' has shape [0]; send at least one row");
    goto fail;
  }
  if (E->shape[0] != n) {
    circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                     "input 'embeddings' has %llu rows; expected %llu, one "
                     "per label",
                     (unsigned long long)E->shape[0], (unsigned long long)n);
    goto fail;
  }
  if (d == 0) {
    circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                     "input 'embeddings' has shape [%llu, 0]; each row needs "
                     "at least one number",
                     (unsigned long long)n);
    goto fail;
  }
  if (W->present && W->shape[0] != n) {
    circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                     "input 'sample_weight' has %llu elements; expected %llu, "
                     "one per label",
                     (unsigned long long)W->shape[0], (unsigned long long)n);
    goto fail;
  }
  r.has_ref = RL->present;
  if (r.has_ref) {
    if (m == 0) {
      circle_error_set(err, CIRCLE_ERR_EMPTY_BATCH,
                       "input 'ref_labels' has shape [0]; send at least one "
                       "reference row or leave the reference set out");
      goto fail;
    }
    if (RE->shape[0] != m || RE->shape[1] != d) {
      circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                       "input 'ref_embeddings' has shape [%llu, %llu]; "
                       "expected [%llu, %llu] (M from ref_labels, D from "
                       "embeddings)",
                       (unsigned long long)RE->shape[0],
                       (unsigned long long)RE->shape[1],
                       (unsigned long long)m, (unsigned long long)d);
      goto fail;
    }
  }
  if (circle__limits_check(lim, n, m, r.has_ref, d, err) != 0) goto fail;

  /* The compute dtype, and the one the inputs are read in: float64 for a
   * half format, rounded to it once read. */
  if (!dtype_given && E->type == CIRCLE_OIP_FP64) {
    r.cfg.dtype = CIRCLE_DTYPE_FLOAT64;
    r.cfg.half = CIRCLE_HALF_NONE;
  }
  r.emb_datatype = E->type;
  circle_dtype rdt = r.cfg.half != CIRCLE_HALF_NONE ? CIRCLE_DTYPE_FLOAT64
                                                    : r.cfg.dtype;

  /* Outputs: asked for, or all that apply; stats (as parameters) unless
   * parameters.stats is false, retrieval (as parameters too) only when
   * parameters.retrieval is true. */
  if (f[4].item && !cJSON_IsNull(f[4].item)) {
    if (parse_outputs(&dc, f[4].item, binary_default, &r) != 0) goto fail;
  } else {
    for (size_t k = 0; k < CIRCLE_OIP_N_OUTPUTS; k++) {
      unsigned bit = circle__oip_output_names[k].bit;
      if (bit == CIRCLE_OUT_REF_GRAD && !r.has_ref) continue;
      r.want |= bit;
      if (binary_default) r.binary_outputs |= bit;
    }
  }
  if (stats) r.want |= CIRCLE_OUT_STATS;
  if (retrieval) r.want |= CIRCLE_OUT_RETRIEVAL;

  /* The data. */
  void *p;
  circle_half half = r.cfg.half;
  if (circle__oip_read_input(&dc, CIRCLE__OIP_IN_LABELS, rdt, &p) != 0)
    goto fail;
  r.labels = p;
  if (circle__oip_read_input(&dc, CIRCLE__OIP_IN_EMBEDDINGS, rdt, &p) != 0)
    goto fail;
  r.x = p;
  if (circle__oip_narrow_input(&dc, CIRCLE__OIP_IN_EMBEDDINGS, half, &r.x) != 0)
    goto fail;
  if (W->present) {
    if (circle__oip_read_input(&dc, CIRCLE__OIP_IN_SAMPLE_WEIGHT, rdt, &p) != 0)
      goto fail;
    r.sw = p;
    if (circle__oip_narrow_input(&dc, CIRCLE__OIP_IN_SAMPLE_WEIGHT, half,
                                 &r.sw) != 0)
      goto fail;
  }
  if (r.has_ref) {
    if (circle__oip_read_input(&dc, CIRCLE__OIP_IN_REF_LABELS, rdt, &p) != 0)
      goto fail;
    r.ref_labels = p;
    if (circle__oip_read_input(&dc, CIRCLE__OIP_IN_REF_EMBEDDINGS, rdt, &p) != 0)
      goto fail;
    r.r = p;
    if (circle__oip_narrow_input(&dc, CIRCLE__OIP_IN_REF_EMBEDDINGS, half,
                                 &r.r) != 0)
      goto fail;
  }
  r.n = (size_t)n;
  r.m = (size_t)m;
  r.d = (size_t)d;
  *req = r;
  rc = 0;
  goto done;
fail:
  circle_request_free(&r);
done:
  cJSON_Delete(root);
  return rc;
}
