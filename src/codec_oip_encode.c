/* codec_oip_encode.c -- the Open Inference Protocol's infer response and
 * error bodies. Must keep true: the outputs and their order are those
 * circle__oip_outputs picks, which the gRPC codec returns too; binary
 * outputs follow the JSON header in output order, each exactly its
 * binary_data_size bytes, little-endian, FP16 / BF16 for a half-precision
 * compute dtype; *header_len is set only when the whole response is.
 *
 *   response = JSON header | output bytes, in output order (only outputs
 *              returned as binary: per-output "binary_data", or the
 *              request-level "binary_data_output")
 */
#include "codec_oip_impl.h"

#include <math.h>
#include <string.h>

#include "codec_figures.h"
#include "codec_util.h"
#include "json_fast.h"

/* ------------------------------------------------------------------------ */
/* Encoding                                                                 */
/* ------------------------------------------------------------------------ */

/* The bits of f in the half format; f is a finite value of that format
 * (circle_half_round made it one), so nothing is rounded here. */
static uint16_t float_to_half_bits(float f, circle_half half) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if (half == CIRCLE_HALF_BFLOAT16) return (uint16_t)(u >> 16);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  float a = fabsf(f);
  if (a < 0x1p-14f) /* subnormal (or zero): a multiple of 2^-24 */
    return sign | (uint16_t)(a * 0x1p24f);
  uint32_t exp = ((u >> 23) & 0xffu) - 112;
  return sign | (uint16_t)(exp << 10) | (uint16_t)((u >> 13) & 0x3ffu);
}

/* Appends count values of dtype at p as a flat JSON array. */
static void write_flat(circle_buf *b, const void *p, size_t count,
                       circle_dtype dt) {
  circle_buf_puts(b, "[");
  /* Row-sized reservations keep the peak near the final size. */
  const size_t step = 4096;
  for (size_t i = 0; i < count && !b->failed; i += step) {
    size_t k = count - i < step ? count - i : step;
    if (!circle_buf_reserve(b, k * (CIRCLE_JSON_NUMBER_MAX + 1))) return;
    char *o = b->data + b->len;
    for (size_t j = i; j < i + k; j++) {
      if (j) *o++ = ',';
      double v = dt == CIRCLE_DTYPE_FLOAT32 ? (double)((const float *)p)[j]
                                            : ((const double *)p)[j];
      o += circle__json_number_write(o, v, dt);
    }
    b->len = (size_t)(o - b->data);
  }
  circle_buf_puts(b, "]");
}

const char *circle_oip_output_datatype(const circle_config *cfg, size_t *esz) {
  circle_oip_datatype t = cfg->half == CIRCLE_HALF_FLOAT16    ? CIRCLE_OIP_FP16
                          : cfg->half == CIRCLE_HALF_BFLOAT16 ? CIRCLE_OIP_BF16
                          : cfg->dtype == CIRCLE_DTYPE_FLOAT32 ? CIRCLE_OIP_FP32
                                                               : CIRCLE_OIP_FP64;
  *esz = circle__oip_datatype_size(t);
  return circle__oip_datatype_name(t);
}

void circle__oip_outputs(const circle_request *req, const circle_output *out,
                         circle_oip_outputs *o) {
  circle_dtype dt = req->cfg.dtype;
  unsigned w = req->want & out->want;
  if (!req->has_ref) w &= ~(unsigned)CIRCLE_OUT_REF_GRAD;
  o->stats = (w & CIRCLE_OUT_STATS) != 0;
  o->retrieval = (w & CIRCLE_OUT_RETRIEVAL) != 0;

  /* Output order: as requested, else the canonical order. */
  unsigned order[CIRCLE_OIP_N_OUTPUTS];
  size_t norder = 0;
  if (req->out_count) {
    for (size_t i = 0; i < req->out_count && norder < CIRCLE_OIP_N_OUTPUTS; i++)
      if (w & req->out_order[i]) order[norder++] = req->out_order[i];
  } else {
    for (size_t k = 0; k < CIRCLE_OIP_N_OUTPUTS; k++)
      if (w & circle__oip_output_names[k].bit)
        order[norder++] = circle__oip_output_names[k].bit;
  }

  /* The scalar loss, in the output dtype. */
  o->loss32 = (float)out->loss;
  o->loss64 = out->loss;
  bool elementwise = circle_reduction_is_elementwise(req->cfg.reduction);
  o->count = norder;
  for (size_t i = 0; i < norder; i++) {
    unsigned bit = order[i];
    circle_oip_out_tensor *t = &o->t[i];
    t->bit = bit;
    t->name = "";
    for (size_t k = 0; k < CIRCLE_OIP_N_OUTPUTS; k++)
      if (circle__oip_output_names[k].bit == bit)
        t->name = circle__oip_output_names[k].name;
    t->rows = t->cols = 0;
    t->data = NULL;
    switch (bit) {
      case CIRCLE_OUT_LOSS:
        t->rows = elementwise ? req->n : 1;
        t->data = elementwise ? out->loss_values
                              : (dt == CIRCLE_DTYPE_FLOAT32 ? (const void *)&o->loss32
                                                            : (const void *)&o->loss64);
        break;
      case CIRCLE_OUT_PER_SAMPLE:
        t->rows = req->n;
        t->data = out->per_sample;
        break;
      case CIRCLE_OUT_GRAD:
        t->rows = req->n;
        t->cols = req->d;
        t->data = out->grad;
        break;
      case CIRCLE_OUT_REF_GRAD:
        t->rows = req->m;
        t->cols = req->d;
        t->data = out->ref_grad;
        break;
    }
    t->elems = t->cols ? t->rows * t->cols : t->rows;
  }
}

int circle_oip_encode(const circle_request *req, const circle_output *out,
                      circle_buf *b, size_t *header_len) {
  if (req == NULL || out == NULL || b == NULL || header_len == NULL)
    return CIRCLE_EINVAL;
  circle_dtype dt = req->cfg.dtype;
  /* A half format's outputs are float32 arrays of its values (see
   * circle_output_round), sent as FP16 / BF16. */
  circle_half half = req->cfg.half;
  size_t esz;
  const char *dtn = circle_oip_output_datatype(&req->cfg, &esz);
  circle_oip_outputs o;
  circle__oip_outputs(req, out, &o);

  size_t start = b->len;
  circle_buf_puts(b, "{\"model_name\": \"circle\", \"model_version\": \"1\"");
  if (req->id[0]) {
    circle_buf_puts(b, ", \"id\": ");
    circle_buf_json_string(b, req->id);
  }
  circle_buf_puts(b, ", \"outputs\": [");
  for (size_t i = 0; i < o.count; i++) {
    const circle_oip_out_tensor *t = &o.t[i];
    if (i) circle_buf_puts(b, ", ");
    circle_buf_puts(b, "{\"name\": ");
    circle_buf_json_string(b, t->name);
    circle_buf_printf(b, ", \"datatype\": \"%s\", \"shape\": [%zu", dtn, t->rows);
    if (t->cols) circle_buf_printf(b, ", %zu", t->cols);
    circle_buf_puts(b, "]");
    if (req->binary_outputs & t->bit) {
      circle_buf_printf(b, ", \"parameters\": {\"binary_data_size\": %zu}}",
                        t->elems * esz);
    } else {
      circle_buf_puts(b, ", \"data\": ");
      write_flat(b, t->data, t->elems, dt);
      circle_buf_puts(b, "}");
    }
  }
  circle_buf_puts(b, "]");
  if (o.stats || o.retrieval) {
    circle_buf_puts(b, ", \"parameters\": {");
    circle__json_figures_members(b, o.stats ? &out->stats : NULL,
                                 o.retrieval ? &out->retrieval : NULL,
                                 "retrieval_", true);
    circle_buf_puts(b, "}");
  }
  circle_buf_puts(b, "}");
  size_t json_end = b->len;
  for (size_t i = 0; i < o.count; i++) {
    const circle_oip_out_tensor *t = &o.t[i];
    if (!(req->binary_outputs & t->bit)) continue;
    if (half == CIRCLE_HALF_NONE) {
      circle_buf_append(b, t->data, t->elems * esz);
    } else if (circle_buf_reserve(b, t->elems * 2)) {
      const float *v = t->data;
      for (size_t j = 0; j < t->elems; j++) {
        uint16_t h = float_to_half_bits(v[j], half);
        memcpy(b->data + b->len + 2 * j, &h, 2);
      }
      b->len += t->elems * 2;
      b->data[b->len] = '\0';
    }
  }
  if (b->failed) return CIRCLE_ENOMEM;
  *header_len = json_end - start;
  return 0;
}

void circle_oip_error(const circle_error *err, circle_buf *b) {
  if (err == NULL || b == NULL) return;
  circle_buf_puts(b, "{\"error\": ");
  circle_buf_json_string(b, err->message);
  circle_buf_puts(b, "}");
}
