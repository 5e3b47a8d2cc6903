/* fuzz_grpc.c -- libFuzzer harness for the gRPC request decoder: the input
 * is the bytes of a ModelInferRequest as a client would send them
 * (circle_grpc_infer_decode), and an accepted request is encoded back
 * (circle_grpc_infer_encode) and read with the generated unpacker.
 *
 * It must keep true: nothing crashes, leaks or reads out of bounds; every
 * rejection is a 4xx (or 503) with a printable message; an accepted
 * request is within the limits; and the response is a valid
 * ModelInferResponse whose raw_output_contents hold, bit for bit, the
 * outputs made from the request's own numbers (fuzz_output_make), one
 * entry per output, each its shape's size.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "circle_grpc.pb-c.h"
#include "codec_grpc.h"
#include "codec_oip.h"
#include "fuzz_util.h"

static void check_response(const circle_request *req) {
  circle_output out;
  if (!fuzz_output_make(req, &out)) return;
  circle_buf b;
  circle_buf_init(&b);
  int rc = circle_grpc_infer_encode(req, &out, &b);
  FUZZ_CHECK(rc == 0 || rc == CIRCLE_ENOMEM, "encode rc %d", rc);
  if (rc == 0) {
    Inference__ModelInferResponse *r = inference__model_infer_response__unpack(
        NULL, b.len, (const uint8_t *)b.data);
    FUZZ_CHECK(r != NULL, "the response does not unpack");
    FUZZ_CHECK(r->n_outputs == r->n_raw_output_contents, "%zu outputs, %zu raw",
               r->n_outputs, r->n_raw_output_contents);
    size_t esz = circle_dtype_size(req->cfg.dtype);
    for (size_t i = 0; i < r->n_outputs; i++) {
      const Inference__ModelInferResponse__InferOutputTensor *t = r->outputs[i];
      uint64_t count = 1;
      for (size_t k = 0; k < t->n_shape; k++) count *= (uint64_t)t->shape[k];
      FUZZ_CHECK(r->raw_output_contents[i].len == count * esz,
                 "output %s: %zu bytes for %llu elements", t->name,
                 r->raw_output_contents[i].len, (unsigned long long)count);
      const void *want = NULL;
      if (strcmp(t->name, "embeddings_grad") == 0) want = out.grad;
      if (strcmp(t->name, "ref_embeddings_grad") == 0) want = out.ref_grad;
      if (strcmp(t->name, "per_sample_loss") == 0) want = out.per_sample;
      if (want)
        FUZZ_CHECK(memcmp(r->raw_output_contents[i].data, want,
                          r->raw_output_contents[i].len) == 0,
                   "output %s differs from the computed values", t->name);
    }
    inference__model_infer_response__free_unpacked(r, NULL);
  }
  circle_buf_free(&b);
  fuzz_output_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  circle_limits lim;
  fuzz_limits(&lim);
  circle_config defaults;
  circle_config_init(&defaults);
  circle_request req;
  circle_request_init(&req);
  circle_error err;
  memset(&err, 0, sizeof err);
  int rc = circle_grpc_infer_decode(data, size, &defaults, &lim, &req, &err);
  if (rc != 0) {
    fuzz_check_rejection(rc, &req, &err, circle_oip_error);
    return 0;
  }
  FUZZ_CHECK(req.proto == CIRCLE_PROTO_OIP, "proto");
  FUZZ_CHECK((req.binary_outputs & ~req.want) == 0 &&
                 (req.want & ~CIRCLE__OUT_FIGURES & ~req.binary_outputs) == 0,
             "every output must be binary over gRPC (want 0x%x, binary 0x%x)",
             req.want, req.binary_outputs);
  fuzz_check_request(&req, &lim);
  check_response(&req);
  circle_request_free(&req);
  return 0;
}
