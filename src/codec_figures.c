/* codec_figures.c -- writes the stats and retrieval figures as JSON
 * members, for /v1's objects and the OIP response parameters alike. Must
 * keep true: names come only from the lists in codec_figures.h, so every
 * protocol agrees; a figure that is not finite is written as null.
 */
#include "codec_figures.h"

#include <stdio.h>

/* Appends one member named prefix + name: ", " first unless *first. */
static void member_name(circle_buf *b, bool *first, const char *prefix,
                        const char *name) {
  char full[64];
  snprintf(full, sizeof full, "%s%s", prefix, name);
  if (!*first) circle_buf_puts(b, ", ");
  circle_buf_json_string(b, full);
  circle_buf_puts(b, ": ");
  *first = false;
}

void circle__json_figures_members(circle_buf *b, const circle_stats *s,
                                  const circle_retrieval *r,
                                  const char *retrieval_prefix, bool first) {
#define WRITE_FIGURE(f)                         \
  member_name(b, &first, prefix, #f);           \
  circle_buf_json_number(b, g->f, CIRCLE_DTYPE_FLOAT64);
#define WRITE_COUNT(f)                          \
  member_name(b, &first, prefix, #f);           \
  circle_buf_json_uint(b, g->f);
  if (s) {
    const circle_stats *g = s;
    const char *prefix = "";
    CIRCLE__STATS_FIGURES(WRITE_FIGURE)
    CIRCLE__STATS_COUNTS(WRITE_COUNT)
  }
  if (r) {
    const circle_retrieval *g = r;
    const char *prefix = retrieval_prefix;
    CIRCLE__RETRIEVAL_FIGURES(WRITE_FIGURE)
    CIRCLE__RETRIEVAL_COUNTS(WRITE_COUNT)
  }
#undef WRITE_FIGURE
#undef WRITE_COUNT
}
