/* codec_oip_impl.h -- private to the Open Inference Protocol codec: what
 * its decoder (codec_oip.c), tensor readers (codec_oip_tensor.c), encoder
 * (codec_oip_encode.c) and model description (codec_oip_model.c) share.
 * Not a public header: the codec's API is codec_oip.h.
 *
 * Keeps true: the CIRCLE__OIP_IN_* indices, circle__oip_input_names and
 * circle__oip_input_specs list the inputs in one order; a
 * circle__oip_decoder describes one request body and points into it,
 * owning nothing.
 */
#ifndef CIRCLE_CODEC_OIP_IMPL_H
#define CIRCLE_CODEC_OIP_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec_oip.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "codec_oip reads and writes binary tensors in host order: little-endian only"
#endif

#define CIRCLE__OIP_EXACT_INT_LIMIT 9007199254740992.0 /* 2^53 */

enum { CIRCLE__OIP_IN_LABELS, CIRCLE__OIP_IN_EMBEDDINGS,
       CIRCLE__OIP_IN_SAMPLE_WEIGHT, CIRCLE__OIP_IN_REF_LABELS,
       CIRCLE__OIP_IN_REF_EMBEDDINGS, CIRCLE__OIP_IN_COUNT };

/* The inputs' names, by CIRCLE__OIP_IN_* (codec_oip_model.c). */
extern const char *const circle__oip_input_names[CIRCLE__OIP_IN_COUNT];

/* An output's name and its CIRCLE_OUT_* bit. */
typedef struct {
  const char *name;
  unsigned bit;
} circle__oip_output_name;
/* The outputs in the canonical order (codec_oip_model.c). */
extern const circle__oip_output_name circle__oip_output_names[CIRCLE_OIP_N_OUTPUTS];

/* One input as the request describes it. */
typedef struct {
  bool present;
  size_t index;             /* position in "inputs" */
  circle_oip_datatype type; /* datatype */
  size_t rank;
  uint64_t shape[2];
  uint64_t count;           /* product of the shape */
  bool json;               /* JSON data, at data_off of the header */
  size_t data_off;
  const char *bin;          /* binary data, or NULL */
  size_t bin_len;
} circle__oip_input;

/* JSON data arrays cut from the text cJSON parses, by input position:
 * more inputs than this can only be an error found before data is read. */
#define CIRCLE__OIP_CUT_INPUTS 16

typedef struct {
  const char *body;
  size_t header_len;
  const circle_limits *lim;
  circle_error *err;
  circle__oip_input in[CIRCLE__OIP_IN_COUNT];
  bool cut[CIRCLE__OIP_CUT_INPUTS];       /* inputs[i].data was cut ... */
  size_t cut_off[CIRCLE__OIP_CUT_INPUTS]; /* ... from here in the header */
} circle__oip_decoder;

/* Writes "[2, 3]" for in's shape (rank 1 or 2) into buf, cut to len. */
void circle__oip_shape_text(char *buf, size_t len, const circle__oip_input *in);

/* Reads the data of input k (CIRCLE__OIP_IN_*), as parsed into dc->in[k],
 * into a new array: int64 for labels, dt for the rest. Returns 0 with *out
 * the array (the caller frees it), or CIRCLE_EINVAL with *dc->err set (400
 * naming the first bad element, 503 when memory runs out) and *out
 * untouched. */
int circle__oip_read_input(circle__oip_decoder *dc, int k, circle_dtype dt,
                           void **out);

/* For a half format: replaces *arr, input k read as float64, by a new
 * float32 array of its values rounded once to the format, and frees the
 * doubles; nothing changes for CIRCLE_HALF_NONE. Returns 0, or
 * CIRCLE_EINVAL with *dc->err set (400 "non_finite" naming a value past
 * the format's range, 503 when memory runs out) and *arr untouched. */
int circle__oip_narrow_input(circle__oip_decoder *dc, int k, circle_half half,
                             void **arr);

#endif /* CIRCLE_CODEC_OIP_IMPL_H */
