/* codec_figures.c -- writes the stats and retrieval figures as JSON
 * members, for /v1's objects and the OIP response parameters alike. Must
 * keep true: names come only from the lists in codec_figures.h, so every
 * protocol agrees; a figure that is not finite is written as null.
 */
#include "codec_figures.h"

#include <stdio.h>

static void write_stat(circle_buf *b, const char *name, double v, bool first) {
  if (!first) circle_buf_puts(b, ", ");
  circle_buf_json_string(b, name);
  circle_buf_puts(b, ": ");
  circle_buf_json_number(b, v, CIRCLE_DTYPE_FLOAT64);
}

void circle__json_figures_members(circle_buf *b, const circle_stats *s,
                                  const circle_retrieval *r,
                                  const char *retrieval_prefix, bool first) {
  char name[64];
#define WRITE_FIGURE(f)                         \
  write_stat(b, #f, s->f, first);               \
  first = false;
#define WRITE_COUNT(f)                          \
  circle_buf_puts(b, first ? "\"" #f "\": " : ", \"" #f "\": "); \
  circle_buf_json_uint(b, s->f);                \
  first = false;
  if (s) {
    CIRCLE__STATS_FIGURES(WRITE_FIGURE)
    CIRCLE__STATS_COUNTS(WRITE_COUNT)
  }
#undef WRITE_FIGURE
#undef WRITE_COUNT
#define WRITE_FIGURE(f)                                        \
  snprintf(name, sizeof name, "%s" #f, retrieval_prefix);      \
  write_stat(b, name, r->f, first);                            \
  first = false;
#define WRITE_COUNT(f)                                         \
  snprintf(name, sizeof name, "%s" #f, retrieval_prefix);      \
  if (!first) circle_buf_puts(b, ", ");                        \
  circle_buf_json_string(b, name);                             \
  circle_buf_puts(b, ": ");                                    \
  circle_buf_json_uint(b, r->f);                               \
  first = false;
  if (r) {
    CIRCLE__RETRIEVAL_FIGURES(WRITE_FIGURE)
    CIRCLE__RETRIEVAL_COUNTS(WRITE_COUNT)
  }
#undef WRITE_FIGURE
#undef WRITE_COUNT
}
