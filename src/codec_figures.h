/* codec_figures.h -- the stats and retrieval figures as every encoder names
 * them (private): the member lists, and their JSON writer, which /v1's
 * "stats" and "retrieval" objects and the OIP response parameters share.
 * Must keep true: one name per figure across /v1, OIP and gRPC, and every
 * figure written is valid JSON (null where it is not finite).
 */
#ifndef CIRCLE_CODEC_FIGURES_H
#define CIRCLE_CODEC_FIGURES_H

#include <stdbool.h>

#include "buf.h"
#include "circle/circle.h"

/* The circle_stats members a response reports, in response order: the
 * figures (double) and then the counts (uint64_t). X(member). Every
 * protocol's encoder walks these, so the names agree everywhere. */
#define CIRCLE__STATS_FIGURES(X)                                           \
  X(pos_row_frac) X(mean_pos_sim) X(min_pos_sim) X(mean_neg_sim)           \
  X(max_neg_sim) X(sim_gap) X(hard_neg_frac) X(recall_at_1)                \
  X(norm_dev_mean) X(norm_dev_max)
#define CIRCLE__STATS_COUNTS(X) X(pos_pairs) X(neg_pairs)

/* The circle_retrieval members a response reports, in response order, as
 * CIRCLE__STATS_FIGURES / _COUNTS are for the stats. */
#define CIRCLE__RETRIEVAL_FIGURES(X) X(precision_at_1) X(r_precision) X(map_at_r)
#define CIRCLE__RETRIEVAL_COUNTS(X) X(queries)

/* Appends the members of a JSON object for the stats and/or the retrieval
 * figures, without the braces: the stats members in CIRCLE__STATS_FIGURES
 * and _COUNTS order, then the retrieval ones, each name prefixed by
 * retrieval_prefix ("" for /v1's "retrieval" object, "retrieval_" for the
 * OIP response parameters). NULL leaves a group out; first says whether
 * nothing precedes the first member. Figures as float64 numbers (null if
 * non-finite), counts as integers. */
void circle__json_figures_members(circle_buf *b, const circle_stats *s,
                                  const circle_retrieval *r,
                                  const char *retrieval_prefix, bool first);

#endif /* CIRCLE_CODEC_FIGURES_H */
