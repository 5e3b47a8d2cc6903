/* fuzz_oip.c -- libFuzzer harness for the Open Inference Protocol codec
 * with binary tensor data and gzip/deflate bodies (circle_inflate, then
 * circle_oip_decode, then circle_oip_encode).
 *
 * Input layout:
 *
 *   byte 0      mode = byte % 5, variant = byte / 5
 *                 0  identity: the body is used as it is
 *                 1  the body is a gzip stream as sent (hostile bytes)
 *                 2  the body is a deflate stream as sent (zlib or raw)
 *                 3  the body is compressed here with gzip, then inflated
 *                 4  the body is compressed here with deflate (variant
 *                    picks zlib-wrapped or raw), then inflated
 *   bytes 1..2  Inference-Header-Content-Length, little-endian; 0xffff
 *               means the header is absent (the whole body is JSON).
 *               Values past the body's end are passed on as they are.
 *   bytes 3..   the body
 *
 * It must keep true: nothing crashes, leaks or reads out of bounds; inflate
 * never returns more than the cap, refuses anything over it (413), and
 * gives back exactly what was compressed when it fits (modes 3 and 4 try
 * the cap at len - 1, len and len + 1); every rejection is a 4xx (or 503)
 * with a printable message; an accepted request is within the limits; and
 * the encoded response is a JSON header followed by exactly the binary
 * outputs it announces, each holding the request's own numbers bit for bit.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <zlib.h>

#include "codec_oip.h"
#include "fuzz_util.h"
#include "inflate.h"

/* Compresses in[0..len) with windowBits wbits (31 gzip, 15 zlib, -15 raw).
 * Returns a malloc'd stream or NULL. */
static char *compress_with(const char *in, size_t len, int wbits,
                           size_t *out_len) {
  z_stream zs;
  memset(&zs, 0, sizeof zs);
  if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, wbits, 8,
                   Z_DEFAULT_STRATEGY) != Z_OK)
    return NULL;
  uLong bound = deflateBound(&zs, (uLong)len) + 32;
  char *out = malloc(bound);
  if (out == NULL) {
    deflateEnd(&zs);
    return NULL;
  }
  zs.next_in = (Bytef *)in;
  zs.avail_in = (uInt)len;
  zs.next_out = (Bytef *)out;
  zs.avail_out = (uInt)bound;
  int rc = deflate(&zs, Z_FINISH);
  *out_len = zs.total_out;
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) {
    free(out);
    return NULL;
  }
  return out;
}

/* Encodes req with outputs made of its own numbers and checks the response:
 * a JSON header, then exactly the binary outputs it announces, in order. */
static void check_encoding(const circle_request *req) {
  circle_output out;
  if (!fuzz_output_make(req, &out)) return;
  circle_buf b;
  circle_buf_init(&b);
  size_t header_len = 0;
  int rc = circle_oip_encode(req, &out, &b, &header_len);
  FUZZ_CHECK(rc == 0 && !b.failed, "encode failed: %d", rc);
  FUZZ_CHECK(header_len <= b.len, "header %zu > body %zu", header_len, b.len);
  cJSON *root = fuzz_parse_exact(b.data, header_len);
  FUZZ_CHECK(root != NULL, "the response header is not JSON: %.*s",
             (int)(header_len < 200 ? header_len : 200), b.data);
  circle_dtype dt = req->cfg.dtype;
  circle_half half = req->cfg.half;
  size_t esz;
  const char *want_type = circle_oip_output_datatype(&req->cfg, &esz);
  FUZZ_CHECK(esz == (half != CIRCLE_HALF_NONE ? 2 : circle_dtype_size(dt)),
             "%s has %zu bytes", want_type, esz);
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, "id");
  if (req->id[0]) {
    FUZZ_CHECK(cJSON_IsString(it), "no id echo");
    /* An id that is not UTF-8 comes back with U+FFFD for its bad bytes. */
    if (circle__utf8_valid(req->id))
      FUZZ_CHECK(strcmp(it->valuestring, req->id) == 0, "id echo differs");
    else
      FUZZ_CHECK(circle__utf8_valid(it->valuestring), "id echo is not UTF-8");
  }
  const cJSON *outputs = cJSON_GetObjectItemCaseSensitive(root, "outputs");
  FUZZ_CHECK(cJSON_IsArray(outputs), "outputs");
  size_t bin_off = header_len;
  const cJSON *o;
  cJSON_ArrayForEach(o, outputs) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "datatype");
    FUZZ_CHECK(cJSON_IsString(name) && cJSON_IsString(type), "output fields");
    FUZZ_CHECK(strcmp(type->valuestring, want_type) == 0, "datatype %s",
               type->valuestring);
    const void *p = NULL;
    size_t count = 0;
    bool scalar = false;
    if (!strcmp(name->valuestring, "loss")) {
      if (circle_reduction_is_elementwise(req->cfg.reduction)) {
        p = out.loss_values;
        count = req->n;
      } else {
        p = req->x; /* fuzz_output_make's scalar loss is x[0] */
        count = 1;
        scalar = true;
      }
    } else if (!strcmp(name->valuestring, "per_sample_loss")) {
      p = out.per_sample;
      count = req->n;
    } else if (!strcmp(name->valuestring, "embeddings_grad")) {
      p = out.grad;
      count = req->n * req->d;
    } else if (!strcmp(name->valuestring, "ref_embeddings_grad")) {
      FUZZ_CHECK(req->has_ref, "ref grad without a reference set");
      p = out.ref_grad;
      count = req->m * req->d;
    } else {
      FUZZ_CHECK(0, "unknown output %s", name->valuestring);
    }
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(o, "parameters");
    const cJSON *bds = cJSON_GetObjectItemCaseSensitive(params, "binary_data_size");
    if (bds) {
      FUZZ_CHECK(cJSON_IsNumber(bds) && bds->valuedouble == (double)(count * esz),
                 "binary_data_size of %s", name->valuestring);
      FUZZ_CHECK(b.len - bin_off >= count * esz, "%s: binary data cut short",
                 name->valuestring);
      if (half != CIRCLE_HALF_NONE) {
        for (size_t j = 0; j < count; j++)
          FUZZ_CHECK(fuzz_half_value(b.data + bin_off + 2 * j, half) ==
                         ((const float *)p)[j],
                     "binary %s[%zu] differs", name->valuestring, j);
      } else if (scalar) {
        /* The scalar loss goes out in the output dtype. */
        double v = 0;
        if (dt == CIRCLE_DTYPE_FLOAT32) {
          float f;
          memcpy(&f, b.data + bin_off, 4);
          v = f;
        } else {
          memcpy(&v, b.data + bin_off, 8);
        }
        FUZZ_CHECK(fuzz_same(v, p, 0, dt, CIRCLE_HALF_NONE), "binary loss");
      } else {
        FUZZ_CHECK(memcmp(b.data + bin_off, p, count * esz) == 0,
                   "binary %s differs", name->valuestring);
      }
      bin_off += count * esz;
    } else {
      fuzz_check_numbers(cJSON_GetObjectItemCaseSensitive(o, "data"), p, count,
                         dt, CIRCLE_HALF_NONE, name->valuestring);
    }
  }
  FUZZ_CHECK(bin_off == b.len, "%zu bytes after the binary outputs",
             b.len - bin_off);
  /* The figures are response parameters, there exactly when asked for. */
  const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "parameters");
  const cJSON *rq = cJSON_GetObjectItemCaseSensitive(rp, "retrieval_queries");
  if (req->want & CIRCLE_OUT_RETRIEVAL)
    FUZZ_CHECK(cJSON_IsNumber(rq) && rq->valuedouble == (double)req->n,
               "retrieval_queries");
  else
    FUZZ_CHECK(rq == NULL, "retrieval not asked for, but returned");
  FUZZ_CHECK((rp != NULL) == ((req->want & CIRCLE__OUT_FIGURES) != 0),
             "response parameters without figures, or figures without them");
  cJSON_Delete(root);
  circle_buf_free(&b);
  fuzz_output_free(&out);
}

static void decode(const char *body, size_t len, size_t header_len,
                   const circle_limits *lim) {
  circle_config defaults;
  circle_config_init(&defaults);
  circle_request req;
  circle_request_init(&req);
  circle_error err;
  memset(&err, 0, sizeof err);
  int rc = circle_oip_decode(body, len, header_len, &defaults, lim, &req, &err);
  if (rc != 0) {
    fuzz_check_rejection(rc, &req, &err, circle_oip_error);
    return;
  }
  FUZZ_CHECK(req.proto == CIRCLE_PROTO_OIP, "proto");
  /* The stats unless parameters.stats is false; the retrieval figures only
   * when parameters.retrieval is true: any CIRCLE_OUT_* bits, no others. */
  FUZZ_CHECK((req.want & ~(unsigned)CIRCLE_OUT_ALL) == 0, "want 0x%x", req.want);
  FUZZ_CHECK((req.binary_outputs & ~req.want) == 0, "binary outputs 0x%x",
             req.binary_outputs);
  FUZZ_CHECK(req.out_count <= 4, "out_count %zu", req.out_count);
  fuzz_check_request(&req, lim);
  check_encoding(&req);
  circle_request_free(&req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 3) return 0;
  unsigned mode = data[0] % 5, variant = data[0] / 5;
  unsigned h = (unsigned)data[1] | (unsigned)data[2] << 8;
  const char *body = (const char *)data + 3;
  size_t len = size - 3;
  circle_limits lim;
  fuzz_limits(&lim);

  if (mode == 0) {
    decode(body, len, h == 0xffff ? len : h, &lim);
    return 0;
  }

  const char *encoding = (mode == 1 || mode == 3) ? "gzip" : "deflate";
  char *z = NULL;
  size_t zlen = 0, cap = lim.max_inflated;
  if (mode >= 3) {
    int wbits = mode == 3 ? 31 : (variant & 1 ? -15 : 15);
    z = compress_with(body, len, wbits, &zlen);
    if (z == NULL) return 0;
    /* The cap just below, at and just above the body's length. */
    cap = len + (variant >> 1) % 3;
    cap = cap ? cap - 1 : 0;
  }
  char *plain = NULL;
  size_t plain_len = 0;
  circle_error err;
  memset(&err, 0, sizeof err);
  int rc = circle_inflate(encoding, z ? z : body, z ? zlen : len, cap, &plain,
                          &plain_len, &err);
  if (mode >= 3) {
    /* A stream we made: it fits exactly when the body does. */
    if (len <= cap) {
      FUZZ_CHECK(rc == 0, "a valid %s stream of %zu bytes was refused under "
                          "a cap of %zu: %s", encoding, len, cap, err.message);
      FUZZ_CHECK(plain_len == len && memcmp(plain, body, len) == 0,
                 "inflate did not give back what was compressed");
    } else {
      FUZZ_CHECK(rc != 0 && circle_error_http(err.kind) == 413,
                 "%zu bytes passed a cap of %zu (rc %d, status %d)", len, cap,
                 rc, circle_error_http(err.kind));
    }
  }
  if (rc != 0) {
    fuzz_check_error(&err);
    int status = circle_error_http(err.kind);
    FUZZ_CHECK(status == 400 || status == 413 || status == 503,
               "inflate status %d", status);
  } else {
    FUZZ_CHECK(plain_len <= cap, "inflated %zu bytes past the cap %zu",
               plain_len, cap);
    FUZZ_CHECK(plain != NULL, "no output");
    decode(plain, plain_len, h == 0xffff ? plain_len : h, &lim);
    free(plain);
  }
  free(z);
  return 0;
}
