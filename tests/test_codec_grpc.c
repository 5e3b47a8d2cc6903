/* test_codec_grpc.c -- the gRPC codec: ModelInferRequest messages (built
 * with the generated protobuf-c code, as a client's bytes) into requests,
 * raw and typed contents giving the same arrays, the gRPC-only checks and
 * their messages, the HTTP route's checks and limits reached through it,
 * the response read back with the generated unpacker, the small messages,
 * and the status codes.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "circle_grpc.pb-c.h"
#include "circle_health.pb-c.h"
#include "codec_grpc.h"

/* ------------------------------------------------------------------------ */
/* Helpers: a request of labels [n] and embeddings [n, d]                   */
/* ------------------------------------------------------------------------ */

typedef struct {
  Inference__ModelInferRequest r;
  Inference__ModelInferRequest__InferInputTensor in[2], *inp[2];
  Inference__InferTensorContents contents[2];
  int64_t shape_l[1], shape_e[2];
  ProtobufCBinaryData raw[2];
  int64_t labels[8];
  float x[32];
} msg_t;

/* n rows of d values (n <= 8, n * d <= 32); raw contents when raw, else
 * int64_contents / fp32_contents. */
static void msg_init(msg_t *m, size_t n, size_t d, bool raw) {
  Inference__ModelInferRequest r = INFERENCE__MODEL_INFER_REQUEST__INIT;
  Inference__ModelInferRequest__InferInputTensor t =
      INFERENCE__MODEL_INFER_REQUEST__INFER_INPUT_TENSOR__INIT;
  Inference__InferTensorContents c = INFERENCE__INFER_TENSOR_CONTENTS__INIT;
  m->r = r;
  for (size_t i = 0; i < n; i++) m->labels[i] = (int64_t)(i % 2);
  for (size_t i = 0; i < n * d; i++) m->x[i] = (float)(i % 7) * 0.25f - 0.5f;
  m->shape_l[0] = (int64_t)n;
  m->shape_e[0] = (int64_t)n;
  m->shape_e[1] = (int64_t)d;
  for (int i = 0; i < 2; i++) {
    m->in[i] = t;
    m->contents[i] = c;
    m->inp[i] = &m->in[i];
  }
  m->in[0].name = "labels";
  m->in[0].datatype = "INT64";
  m->in[0].n_shape = 1;
  m->in[0].shape = m->shape_l;
  m->in[1].name = "embeddings";
  m->in[1].datatype = "FP32";
  m->in[1].n_shape = 2;
  m->in[1].shape = m->shape_e;
  m->r.model_name = "circle";
  m->r.n_inputs = 2;
  m->r.inputs = m->inp;
  if (raw) {
    m->raw[0].data = (uint8_t *)m->labels;
    m->raw[0].len = n * sizeof(int64_t);
    m->raw[1].data = (uint8_t *)m->x;
    m->raw[1].len = n * d * sizeof(float);
    m->r.n_raw_input_contents = 2;
    m->r.raw_input_contents = m->raw;
  } else {
    m->contents[0].n_int64_contents = n;
    m->contents[0].int64_contents = m->labels;
    m->contents[1].n_fp32_contents = n * d;
    m->contents[1].fp32_contents = m->x;
    m->in[0].contents = &m->contents[0];
    m->in[1].contents = &m->contents[1];
  }
}

/* Packs m and decodes it under lim (NULL: the defaults). */
static int decode(const msg_t *m, const circle_limits *lim, circle_request *req,
                  circle_error *err) {
  size_t len = inference__model_infer_request__get_packed_size(&m->r);
  uint8_t *buf = malloc(len ? len : 1);
  inference__model_infer_request__pack(&m->r, buf);
  circle_limits l;
  circle_limits_init(&l);
  circle_request_init(req);
  memset(err, 0, sizeof *err);
  int rc = circle_grpc_infer_decode(buf, len, NULL, lim ? lim : &l, req, err);
  free(buf);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Decoding                                                                 */
/* ------------------------------------------------------------------------ */

START_TEST(codec_grpc_should_decode_raw_contents_like_tritonclient) {
  msg_t m;
  msg_init(&m, 4, 3, true);
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode(&m, NULL, &req, &err), 0);
  ck_assert_uint_eq(req.n, 4);
  ck_assert_uint_eq(req.d, 3);
  ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT32);
  ck_assert_mem_eq(req.x, m.x, 12 * sizeof(float));
  ck_assert_mem_eq(req.labels, m.labels, 4 * sizeof(int64_t));
  /* Every output, and every one binary. */
  ck_assert(req.want & CIRCLE_OUT_GRAD);
  ck_assert_uint_eq(req.binary_outputs,
                    req.want & ~(unsigned)CIRCLE_OUT_STATS);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_grpc_should_decode_typed_contents_to_the_same_arrays) {
  msg_t a, b;
  msg_init(&a, 4, 3, true);
  msg_init(&b, 4, 3, false);
  circle_request ra, rb;
  circle_error err;
  ck_assert_int_eq(decode(&a, NULL, &ra, &err), 0);
  ck_assert_int_eq(decode(&b, NULL, &rb, &err), 0);
  ck_assert_mem_eq(ra.x, rb.x, 12 * sizeof(float));
  ck_assert_mem_eq(ra.labels, rb.labels, 4 * sizeof(int64_t));
  circle_request_free(&ra);
  circle_request_free(&rb);
}
END_TEST

START_TEST(codec_grpc_should_take_parameters_as_infer_parameters) {
  msg_t m;
  msg_init(&m, 4, 3, true);
  Inference__ModelInferRequest__ParametersEntry e[3], *ep[3];
  Inference__InferParameter v[3];
  for (int i = 0; i < 3; i++) {
    Inference__ModelInferRequest__ParametersEntry ei =
        INFERENCE__MODEL_INFER_REQUEST__PARAMETERS_ENTRY__INIT;
    Inference__InferParameter vi = INFERENCE__INFER_PARAMETER__INIT;
    e[i] = ei;
    v[i] = vi;
    e[i].value = &v[i];
    ep[i] = &e[i];
  }
  e[0].key = "gamma";
  v[0].parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM;
  v[0].double_param = 0.1 + 0.2; /* not short in decimal: must survive exactly */
  e[1].key = "reduction"; /* no value: null */
  e[2].key = "tag";
  v[2].parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM;
  v[2].string_param = "run-7";
  m.r.n_parameters = 3;
  m.r.parameters = ep;
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode(&m, NULL, &req, &err), 0);
  ck_assert(req.cfg.gamma == 0.1 + 0.2);
  ck_assert_int_eq(req.cfg.reduction, CIRCLE_REDUCTION_NULL);
  ck_assert_str_eq(req.tag, "run-7");
  circle_request_free(&req);

  /* A string where a number belongs: the HTTP route's message. */
  v[0].parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM;
  v[0].string_param = "80";
  ck_assert_int_ne(decode(&m, NULL, &req, &err), 0);
  ck_assert_int_eq(circle_error_http(err.kind), 400);
  ck_assert_ptr_nonnull(strstr(err.message, "parameters.gamma"));
}
END_TEST

/* parameters["retrieval"] is a bool_param, checked by the HTTP route's
 * decoder: a string or a number gets its message and code. */
START_TEST(codec_grpc_should_take_the_retrieval_parameter) {
  msg_t m;
  msg_init(&m, 4, 3, true);
  Inference__ModelInferRequest__ParametersEntry e =
      INFERENCE__MODEL_INFER_REQUEST__PARAMETERS_ENTRY__INIT;
  Inference__ModelInferRequest__ParametersEntry *ep[1] = {&e};
  Inference__InferParameter v = INFERENCE__INFER_PARAMETER__INIT;
  e.key = "retrieval";
  e.value = &v;
  m.r.n_parameters = 1;
  m.r.parameters = ep;
  circle_request req;
  circle_error err;
  /* Off by default. */
  m.r.n_parameters = 0;
  ck_assert_int_eq(decode(&m, NULL, &req, &err), 0);
  ck_assert_uint_eq(req.want & CIRCLE_OUT_RETRIEVAL, 0);
  circle_request_free(&req);
  m.r.n_parameters = 1;
  v.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
  v.bool_param = true;
  ck_assert_int_eq(decode(&m, NULL, &req, &err), 0);
  ck_assert_uint_ne(req.want & CIRCLE_OUT_RETRIEVAL, 0);
  ck_assert_uint_ne(req.want & CIRCLE_OUT_STATS, 0);
  circle_request_free(&req);
  v.bool_param = false;
  ck_assert_int_eq(decode(&m, NULL, &req, &err), 0);
  ck_assert_uint_eq(req.want & CIRCLE_OUT_RETRIEVAL, 0);
  circle_request_free(&req);
  v.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM;
  v.string_param = "true";
  ck_assert_int_ne(decode(&m, NULL, &req, &err), 0);
  ck_assert_int_eq(circle_error_http(err.kind), 400);
  ck_assert_str_eq(circle_error_code(err.kind), "wrong_type");
  ck_assert_str_eq(err.message,
                   "parameters.retrieval is a string; expected true or false");
  v.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM;
  v.int64_param = 1;
  ck_assert_int_ne(decode(&m, NULL, &req, &err), 0);
  ck_assert_str_eq(circle_error_code(err.kind), "wrong_type");
  ck_assert_ptr_nonnull(strstr(err.message, "parameters.retrieval is a number"));
}
END_TEST

START_TEST(codec_grpc_should_check_what_only_grpc_can_get_wrong) {
  msg_t m;
  circle_request req;
  circle_error err;

  msg_init(&m, 4, 3, true);
  m.r.n_raw_input_contents = 1;
  ck_assert_int_ne(decode(&m, NULL, &req, &err), 0);
  ck_assert_str_eq(err.message,
                   "raw_input_contents has 1 entries but the request has 2 "
                   "inputs; send one entry per input, in input order, or "
                   "typed contents only");

  msg_init(&m, 4, 3, true);
  m.raw[1].len -= 4;
  ck_assert_int_ne(decode(&m, NULL, &req, &err), 0);
  ck_assert_str_eq(err.message,
                   "input 'embeddings': raw_input_contents[1] has 44 bytes but "
                   "shape [4, 3] of FP32 needs 48");

  msg_init(&m, 4, 3, false);
  m.contents[1].n_fp32_contents = 11;
  ck_assert_int_ne(decode(&m, NULL, &req, &err), 0);
  ck_assert_str_eq(err.message,
                   "input 'embeddings': fp32_contents has 11 values but shape "
                   "[4, 3] holds 12");

  msg_init(&m, 4, 3, false);
  m.in[1].datatype = "FP64";
  ck_assert_int_ne(decode(&m, NULL, &req, &err), 0);
  ck_assert_str_eq(err.message,
                   "input 'embeddings' has datatype FP64: send its values in "
                   "fp64_contents (or raw_input_contents), not fp32_contents");

  msg_init(&m, 4, 3, false);
  m.in[1].datatype = "FP16";
  ck_assert_int_ne(decode(&m, NULL, &req, &err), 0);
  ck_assert_str_eq(err.message,
                   "input 'embeddings' has datatype FP16, which has no typed "
                   "contents field; send it in raw_input_contents");
  ck_assert_int_eq(circle_error_http(err.kind), 400);
}
END_TEST

START_TEST(codec_grpc_should_give_the_http_checks_and_limits) {
  msg_t m;
  circle_request req;
  circle_error err;

  msg_init(&m, 4, 3, true);
  m.in[0].datatype = "FP32";
  m.raw[0].len = 16;
  ck_assert_int_ne(decode(&m, NULL, &req, &err), 0);
  ck_assert_str_eq(err.message,
                   "input 'labels' has datatype \"FP32\"; expected INT32 or "
                   "INT64");

  msg_init(&m, 4, 3, true);
  m.r.model_name = "other";
  ck_assert_int_ne(decode(&m, NULL, &req, &err), 0);
  ck_assert_int_eq(circle_error_http(err.kind), 404);
  ck_assert_str_eq(err.message, "Request for unknown model: 'other' is not found");

  msg_init(&m, 4, 3, true);
  circle_limits lim;
  circle_limits_init(&lim);
  lim.max_n = 3;
  ck_assert_int_ne(decode(&m, &lim, &req, &err), 0);
  ck_assert_int_eq(circle_error_http(err.kind), 413);
  ck_assert_str_eq(circle_error_code(err.kind), "limit_exceeded");
  ck_assert_ptr_null(req.x);
}
END_TEST

START_TEST(codec_grpc_should_refuse_bad_arguments) {
  circle_request req;
  circle_request_init(&req);
  circle_error err;
  circle_limits lim;
  circle_limits_init(&lim);
  static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff};
  ck_assert_int_ne(circle_grpc_infer_decode(junk, sizeof junk, NULL, &lim, &req, &err), 0);
  ck_assert_int_eq(circle_error_http(err.kind), 400);
  ck_assert_str_eq(circle_error_code(err.kind), "invalid_message");
  ck_assert_int_ne(circle_grpc_infer_decode(junk, sizeof junk, NULL, NULL, &req, &err), 0);
  ck_assert_int_ne(circle_grpc_infer_decode(NULL, 4, NULL, &lim, &req, &err), 0);
  ck_assert_int_eq(circle_grpc_infer_decode(junk, 4, NULL, &lim, &req, NULL), CIRCLE_EINVAL);
  circle_output out;
  memset(&out, 0, sizeof out);
  circle_buf b;
  circle_buf_init(&b);
  ck_assert_int_eq(circle_grpc_infer_encode(NULL, &out, &b), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_grpc_infer_encode(&req, NULL, &b), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_grpc_infer_encode(&req, &out, NULL), CIRCLE_EINVAL);
  ck_assert_int_ne(circle_grpc_model_request_check(junk, sizeof junk, &err), 0);
  ck_assert_int_ne(circle_grpc_health_check(junk, sizeof junk, true, &b, &err), 0);
  ck_assert_uint_eq(b.len, 0);
  circle_buf_free(&b);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Encoding                                                                 */
/* ------------------------------------------------------------------------ */

START_TEST(codec_grpc_should_encode_raw_outputs_and_stats) {
  msg_t m;
  msg_init(&m, 4, 3, true);
  m.r.id = "req-1";
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode(&m, NULL, &req, &err), 0);
  float per[4] = {1, 2, 3, 4}, grad[12];
  for (int i = 0; i < 12; i++) grad[i] = (float)i / 3;
  circle_output out;
  memset(&out, 0, sizeof out);
  out.want = req.want;
  out.loss = 2.5;
  out.per_sample = per;
  out.grad = grad;
  out.stats.sim_gap = 0.125;
  out.stats.pos_pairs = 6;
  circle_buf b;
  circle_buf_init(&b);
  ck_assert_int_eq(circle_grpc_infer_encode(&req, &out, &b), 0);
  Inference__ModelInferResponse *r =
      inference__model_infer_response__unpack(NULL, b.len, (uint8_t *)b.data);
  ck_assert_ptr_nonnull(r);
  ck_assert_str_eq(r->model_name, "circle");
  ck_assert_str_eq(r->model_version, "1");
  ck_assert_str_eq(r->id, "req-1");
  ck_assert_uint_eq(r->n_outputs, 3);
  ck_assert_uint_eq(r->n_raw_output_contents, 3);
  ck_assert_str_eq(r->outputs[0]->name, "loss");
  ck_assert_str_eq(r->outputs[0]->datatype, "FP32");
  ck_assert_uint_eq(r->outputs[0]->n_shape, 1);
  ck_assert_int_eq(r->outputs[0]->shape[0], 1);
  float loss;
  memcpy(&loss, r->raw_output_contents[0].data, 4);
  ck_assert(loss == 2.5f);
  ck_assert_str_eq(r->outputs[2]->name, "embeddings_grad");
  ck_assert_int_eq(r->outputs[2]->shape[1], 3);
  ck_assert_uint_eq(r->raw_output_contents[2].len, sizeof grad);
  ck_assert_mem_eq(r->raw_output_contents[2].data, grad, sizeof grad);
  bool gap = false, pairs = false;
  for (size_t i = 0; i < r->n_parameters; i++) {
    const Inference__InferParameter *v = r->parameters[i]->value;
    if (!strcmp(r->parameters[i]->key, "sim_gap"))
      gap = v->parameter_choice_case ==
                INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM &&
            v->double_param == 0.125;
    if (!strcmp(r->parameters[i]->key, "pos_pairs"))
      pairs = v->parameter_choice_case ==
                  INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM &&
              v->int64_param == 6;
  }
  ck_assert(gap && pairs);
  ck_assert_uint_eq(r->n_parameters, 12);
  inference__model_infer_response__free_unpacked(r, NULL);
  circle_buf_free(&b);
  circle_request_free(&req);
}
END_TEST

/* The retrieval figures follow the stats as retrieval_<figure>
 * parameters: figures as double_param, the query count as int64_param. */
START_TEST(codec_grpc_should_encode_the_retrieval_figures_as_parameters) {
  for (int stats = 0; stats < 2; stats++) {
    msg_t m;
    msg_init(&m, 4, 3, true);
    Inference__ModelInferRequest__ParametersEntry e[2], *ep[2];
    Inference__InferParameter v[2];
    for (int i = 0; i < 2; i++) {
      Inference__ModelInferRequest__ParametersEntry ei =
          INFERENCE__MODEL_INFER_REQUEST__PARAMETERS_ENTRY__INIT;
      Inference__InferParameter vi = INFERENCE__INFER_PARAMETER__INIT;
      e[i] = ei;
      v[i] = vi;
      e[i].value = &v[i];
      ep[i] = &e[i];
      v[i].parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
    }
    e[0].key = "retrieval";
    v[0].bool_param = true;
    e[1].key = "stats";
    v[1].bool_param = stats;
    m.r.n_parameters = 2;
    m.r.parameters = ep;
    circle_request req;
    circle_error err;
    ck_assert_int_eq(decode(&m, NULL, &req, &err), 0);
    float per[4] = {0}, grad[12] = {0};
    circle_output out;
    memset(&out, 0, sizeof out);
    out.want = req.want;
    out.per_sample = per;
    out.grad = grad;
    out.retrieval.precision_at_1 = 0.75;
    out.retrieval.r_precision = 0.5;
    out.retrieval.map_at_r = 1.0 / 3;
    out.retrieval.queries = 4;
    circle_buf b;
    circle_buf_init(&b);
    ck_assert_int_eq(circle_grpc_infer_encode(&req, &out, &b), 0);
    Inference__ModelInferResponse *r =
        inference__model_infer_response__unpack(NULL, b.len, (uint8_t *)b.data);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->n_outputs, 3);
    ck_assert_uint_eq(r->n_parameters, stats ? 12 + 4 : 4);
    int found = 0;
    for (size_t i = 0; i < r->n_parameters; i++) {
      const char *k = r->parameters[i]->key;
      const Inference__InferParameter *p = r->parameters[i]->value;
      bool dbl = p->parameter_choice_case ==
                 INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM;
      if (!strcmp(k, "retrieval_precision_at_1") && dbl && p->double_param == 0.75)
        found++;
      if (!strcmp(k, "retrieval_r_precision") && dbl && p->double_param == 0.5)
        found++;
      if (!strcmp(k, "retrieval_map_at_r") && dbl && p->double_param == 1.0 / 3)
        found++;
      if (!strcmp(k, "retrieval_queries") &&
          p->parameter_choice_case ==
              INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM &&
          p->int64_param == 4)
        found++;
    }
    ck_assert_int_eq(found, 4);
    inference__model_infer_response__free_unpacked(r, NULL);
    circle_buf_free(&b);
    circle_request_free(&req);
  }
}
END_TEST

START_TEST(codec_grpc_should_answer_metadata_config_and_health) {
  circle_buf b;
  circle_buf_init(&b);
  circle_grpc_model_metadata(&b);
  Inference__ModelMetadataResponse *md =
      inference__model_metadata_response__unpack(NULL, b.len, (uint8_t *)b.data);
  ck_assert_ptr_nonnull(md);
  ck_assert_uint_eq(md->n_inputs, 5);
  ck_assert_str_eq(md->inputs[1]->name, "embeddings");
  ck_assert_uint_eq(md->inputs[1]->n_shape, 2);
  ck_assert_uint_eq(md->n_outputs, 4);
  inference__model_metadata_response__free_unpacked(md, NULL);

  b.len = 0;
  circle_config cfg;
  circle_config_init(&cfg);
  circle_grpc_model_config(&cfg, &b);
  Inference__ModelConfigResponse *mc =
      inference__model_config_response__unpack(NULL, b.len, (uint8_t *)b.data);
  ck_assert_ptr_nonnull(mc);
  ck_assert_str_eq(mc->config->backend, "circled");
  ck_assert_int_eq(mc->config->input[0]->data_type, INFERENCE__DATA_TYPE__TYPE_INT64);
  ck_assert(mc->config->input[2]->optional);
  ck_assert_uint_eq(mc->config->n_parameters, 6);
  ck_assert_str_eq(mc->config->parameters[0]->key, "gamma");
  ck_assert_str_eq(mc->config->parameters[0]->value->string_value, "80.0");
  inference__model_config_response__free_unpacked(mc, NULL);

  circle_error err;
  b.len = 0;
  ck_assert_int_eq(circle_grpc_health_check(NULL, 0, false, &b, &err), 0);
  ck_assert_uint_eq(b.len, 2);
  ck_assert_mem_eq(b.data, "\x08\x02", 2); /* NOT_SERVING */
  static const uint8_t other[] = {0x0a, 0x03, 'f', 'o', 'o'};
  ck_assert_int_ne(circle_grpc_health_check(other, sizeof other, true, &b, &err), 0);
  ck_assert_int_eq(circle_error_http(err.kind), 404);
  static const uint8_t model_v2[] = {0x0a, 0x06, 'c', 'i', 'r', 'c', 'l', 'e',
                                     0x12, 0x01, '2'};
  ck_assert_int_ne(circle_grpc_model_request_check(model_v2, sizeof model_v2, &err), 0);
  ck_assert_str_eq(err.message,
                   "Request for unknown model: 'circle' version 2 is not found");
  ck_assert_int_eq(circle_grpc_model_request_check(model_v2, 8, &err), 0);
  circle_buf_free(&b);
}
END_TEST

START_TEST(codec_grpc_should_map_errors_to_status_codes) {
  circle_error e;
  struct {
    circle_error_kind kind;
    int http;
    const char *code;
    int grpc;
  } cases[] = {{CIRCLE_ERR_WRONG_TYPE, 400, "wrong_type", 3},
               {CIRCLE_ERR_UNAUTHORIZED, 401, "unauthorized", 16},
               {CIRCLE_ERR_NOT_FOUND, 404, "not_found", 5},
               {CIRCLE_ERR_LIMIT_EXCEEDED, 413, "limit_exceeded", 8},
               {CIRCLE_ERR_OVERLOADED, 503, "overloaded", 8},
               {CIRCLE_ERR_SHUTTING_DOWN, 503, "shutting_down", 14},
               {CIRCLE_ERR_UNKNOWN_METHOD, 501, "not_found", 12},
               {CIRCLE_ERR_INTERNAL, 500, "internal", 13}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    circle_error_set(&e, cases[i].kind, "x");
    ck_assert_int_eq(circle_error_http(e.kind), cases[i].http);
    ck_assert_str_eq(circle_error_code(e.kind), cases[i].code);
    ck_assert_int_eq(circle_grpc_status_of(&e), cases[i].grpc);
  }
  ck_assert_int_eq(circle_grpc_status_of(NULL), 13);
}
END_TEST

static Suite *codec_grpc_suite(void) {
  Suite *s = suite_create("codec_grpc");
  TCase *tc = tcase_create("codec_grpc");
  tcase_add_test(tc, codec_grpc_should_decode_raw_contents_like_tritonclient);
  tcase_add_test(tc, codec_grpc_should_decode_typed_contents_to_the_same_arrays);
  tcase_add_test(tc, codec_grpc_should_take_parameters_as_infer_parameters);
  tcase_add_test(tc, codec_grpc_should_take_the_retrieval_parameter);
  tcase_add_test(tc, codec_grpc_should_check_what_only_grpc_can_get_wrong);
  tcase_add_test(tc, codec_grpc_should_give_the_http_checks_and_limits);
  tcase_add_test(tc, codec_grpc_should_refuse_bad_arguments);
  tcase_add_test(tc, codec_grpc_should_encode_raw_outputs_and_stats);
  tcase_add_test(tc, codec_grpc_should_encode_the_retrieval_figures_as_parameters);
  tcase_add_test(tc, codec_grpc_should_answer_metadata_config_and_health);
  tcase_add_test(tc, codec_grpc_should_map_errors_to_status_codes);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(codec_grpc_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
