/* circle.h -- public API of the circle loss engine (keras.losses.Circle in C).
 *
 * The engine computes exactly what Keras 3 computes for
 *
 *     keras.losses.Circle(gamma, margin, remove_diagonal, reduction, dtype)
 *         (y_true, y_pred, sample_weight)
 *
 * plus the functional form's reference set (keras.losses.circle(...,
 * ref_labels, ref_embeddings)) and the gradients of the result with respect
 * to the embeddings and the reference embeddings.  It knows nothing of HTTP
 * or JSON: callers hand it typed arrays and get typed arrays back.
 *
 *   s_ij = <x_i, r_j>            c_ij = max(1 - s_ij, 0)
 *   positive pair: same label (minus (i,i) when remove_diagonal)
 *   negative pair: different label
 *   a_p = max(m + c, 0)          a_n = max(1 + m - c, 0)
 *   p_i = logsumexp_{j pos} (-gamma * a_p * (m - c))
 *   n_i = logsumexp_{j neg} ( gamma * a_n * (1 - m - c))
 *   v_i = softplus(p_i + n_i)    (per-sample value; Keras masks v_i == 0)
 *   loss = reduce(v * sample_weight * mask)
 *
 * Memory management: the engine never frees what the caller passed in, and
 * the caller allocates every output buffer (sizes follow from n, m, d and the
 * dtype).  Every *_free accepts NULL.  Functions return a circle_status: 0 on
 * success, negative on error, and leave their outputs untouched on failure.
 *
 * Thread safety: a circle_engine may be used by any number of threads at
 * once; each circle_loss_compute call is independent. An engine keeps at
 * most one scratch buffer between calls (up to 128 MiB, or up to
 * materialize_bytes and an eighth more when that is larger), so repeated
 * large batches do not page-fault their working memory in every time.
 */
#ifndef CIRCLE_CIRCLE_H
#define CIRCLE_CIRCLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks the library's exported symbols (everything else is hidden). */
#define CIRCLE_API __attribute__((visibility("default")))

/* ------------------------------------------------------------------------ */
/* Status codes                                                             */
/* ------------------------------------------------------------------------ */

/* X(name, value, message): the one table that defines every status. */
#define CIRCLE_STATUS_MAP(X)                                                  \
  X(OK, 0, "success")                                                         \
  X(EINVAL, -1, "invalid argument")                                           \
  X(ENOMEM, -2, "out of memory")                                              \
  X(EOVERFLOW, -3, "size computation overflows")                              \
  X(EEMPTY, -4, "empty batch")                                                \
  X(ENONFINITE, -5, "non-finite input value")                                 \
  X(ELIMIT, -6, "request exceeds a configured limit")                         \
  X(EBUSY, -7, "queue is full")                                               \
  X(ESHUTDOWN, -8, "shutting down")                                           \
  X(EBLAS, -9, "BLAS library problem")                                       \
  X(ERANGE, -10, "values too large for the dtype")                           \
  X(ECANCELED, -11, "computation cancelled")

typedef enum {
#define CIRCLE__STATUS_ENUM(name, value, msg) CIRCLE_##name = value,
  CIRCLE_STATUS_MAP(CIRCLE__STATUS_ENUM)
#undef CIRCLE__STATUS_ENUM
} circle_status;

/* Human-readable message for a status; "unknown status" for other values. */
CIRCLE_API const char *circle_status_str(int status);
/* Symbolic name of a status ("EINVAL"); "EUNKNOWN" for other values. */
CIRCLE_API const char *circle_status_name(int status);

/* ------------------------------------------------------------------------ */
/* Configuration                                                            */
/* ------------------------------------------------------------------------ */

typedef enum {
  CIRCLE_DTYPE_FLOAT32 = 0,
  CIRCLE_DTYPE_FLOAT64 = 1
} circle_dtype;

/* A half-precision format Keras can compute a loss in (its DTypePolicy's
 * compute dtype float16 or bfloat16). The engine does not compute in them:
 * such a loss is computed in float32 on inputs rounded to the format
 * (circle_half_round, circle_half_narrow), and every result is rounded to
 * the format afterwards (circle_output_round). README "Keras conformance"
 * gives the measurements behind that choice and the tolerance it meets. */
typedef enum {
  CIRCLE_HALF_NONE = 0,     /* compute dtype is circle_config.dtype itself */
  CIRCLE_HALF_FLOAT16 = 1,  /* IEEE binary16: 11-bit significand, max 65504 */
  CIRCLE_HALF_BFLOAT16 = 2  /* bfloat16: 8-bit significand, float32's range */
} circle_half;

typedef enum {
  CIRCLE_REDUCTION_SUM_OVER_BATCH_SIZE = 0,
  CIRCLE_REDUCTION_SUM,
  CIRCLE_REDUCTION_MEAN,
  CIRCLE_REDUCTION_MEAN_WITH_SAMPLE_WEIGHT,
  CIRCLE_REDUCTION_NONE, /* the string "none" */
  CIRCLE_REDUCTION_NULL  /* Python None: same numbers as "none" */
} circle_reduction;

/* Size in bytes of one element of dtype (4 or 8); 0 for an unknown dtype. */
CIRCLE_API size_t circle_dtype_size(circle_dtype dtype);
/* "float32" / "float64"; NULL for an unknown dtype. */
CIRCLE_API const char *circle_dtype_name(circle_dtype dtype);
/* Parses "float32" / "float64" into *out. CIRCLE_EINVAL otherwise. */
CIRCLE_API int circle_dtype_parse(const char *s, circle_dtype *out);
/* Parses a Keras DTypePolicy name for a loss: "float32", "float64",
 * "float16", "bfloat16", "mixed_float16" or "mixed_bfloat16" (a mixed
 * policy computes in its half format). *dtype receives the engine's dtype
 * (float32 for the half formats, float64 or float32 otherwise), *half the
 * half format or CIRCLE_HALF_NONE. CIRCLE_EINVAL for anything else (NULL
 * included, which callers map to Keras' floatx, "float32"); outputs are
 * untouched then. */
CIRCLE_API int circle_dtype_policy_parse(const char *s, circle_dtype *dtype,
                                         circle_half *half);
/* "float16" / "bfloat16"; NULL for CIRCLE_HALF_NONE and unknown values. */
CIRCLE_API const char *circle_half_name(circle_half half);
/* Largest finite value of the format (65504, 3.3895313892515355e38); 0 for
 * CIRCLE_HALF_NONE and unknown values. */
CIRCLE_API double circle_half_max(circle_half half);
/* Rounds p[0..count) in place to the nearest value of the format (ties to
 * even, as numpy and jax convert). Returns the index of the first value that
 * rounds past the format's largest finite value (it and those after it are
 * left unrounded), or count when all fit. CIRCLE_HALF_NONE leaves p as it
 * is and returns count. */
CIRCLE_API size_t circle_half_round(circle_half half, float *p, size_t count);
/* Rounds src[0..count) (doubles) straight to the format, once, into dst as
 * float32 (exact: every value of either format is a float). Same return
 * value as circle_half_round; dst[k] for k at and past it is unspecified.
 * CIRCLE_HALF_NONE rounds to float32. */
CIRCLE_API size_t circle_half_narrow(circle_half half, const double *src,
                                     float *dst, size_t count);
/* Keras spelling of a reduction; NULL for CIRCLE_REDUCTION_NULL. */
CIRCLE_API const char *circle_reduction_name(circle_reduction r);
/* Parses a Keras reduction string ("none" included, not NULL: the caller maps
 * JSON null to CIRCLE_REDUCTION_NULL itself). CIRCLE_EINVAL otherwise. */
CIRCLE_API int circle_reduction_parse(const char *s, circle_reduction *out);
/* True for "none" and NULL: the loss is a vector of n values. */
CIRCLE_API bool circle_reduction_is_elementwise(circle_reduction r);

typedef struct {
  double gamma;               /* scale; > 0 and finite. Keras default 80 */
  double margin;              /* relaxation; finite. Keras default 0.4 */
  bool remove_diagonal;       /* drop pairs (i, i) from the positives */
  circle_reduction reduction; /* how per-sample values are combined */
  circle_dtype dtype;         /* precision of the whole computation */
  circle_half half;           /* Keras' compute dtype when it is a half
                                 format (dtype is float32 then); the engine
                                 itself ignores it, see circle_half */
  bool normalize;             /* L2-normalize embeddings first, as
                                 keras.layers.UnitNormalization does */
} circle_config;

/* Fills *cfg with Keras' defaults (gamma 80, margin 0.4, remove_diagonal,
 * sum_over_batch_size, float32, no half format, no normalize). */
CIRCLE_API void circle_config_init(circle_config *cfg);
/* CIRCLE_OK when every field is in range (a half format only with dtype
 * float32), else CIRCLE_EINVAL. */
CIRCLE_API int circle_config_validate(const circle_config *cfg);
/* Keras' name of cfg's compute dtype: the half format's name when there is
 * one, else dtype's ("float32", "float64"); NULL for an invalid config. */
CIRCLE_API const char *circle_config_dtype_name(const circle_config *cfg);

/* ------------------------------------------------------------------------ */
/* Inputs and outputs                                                       */
/* ------------------------------------------------------------------------ */

/* What a caller wants computed; what is not asked for is not computed. */
enum {
  CIRCLE_OUT_LOSS = 1u << 0,       /* output.loss or output.loss_values */
  CIRCLE_OUT_PER_SAMPLE = 1u << 1, /* output.per_sample */
  CIRCLE_OUT_GRAD = 1u << 2,       /* output.grad */
  CIRCLE_OUT_REF_GRAD = 1u << 3,   /* output.ref_grad (needs a ref set) */
  CIRCLE_OUT_STATS = 1u << 4,      /* output.stats */
  CIRCLE_OUT_RETRIEVAL = 1u << 5,  /* output.retrieval */
  CIRCLE_OUT_ALL = 0x3fu
};

/* All arrays are dense, row-major and in cfg.dtype (float or double). */
typedef struct {
  size_t n;                   /* batch rows, >= 1 */
  size_t m;                   /* reference rows; ignored without a ref set */
  size_t d;                   /* embedding dimension, >= 1 */
  const int64_t *labels;      /* [n] */
  const void *embeddings;     /* [n * d] */
  const void *sample_weight;  /* [n] or NULL (all ones) */
  const int64_t *ref_labels;  /* [m] or NULL: both ref arrays or neither */
  const void *ref_embeddings; /* [m * d] or NULL */
} circle_input;

/* Embedding-quality figures, computed in the same pass as the loss over the
 * similarities the loss sees (after normalize, when asked for). A figure
 * over an empty set (say, no positive pair) is 0 and its count says so. */
typedef struct {
  double pos_row_frac;   /* fraction of rows with per-sample value > 0 */
  double mean_pos_sim;   /* mean similarity over all positive pairs */
  double min_pos_sim;    /* smallest positive similarity */
  double mean_neg_sim;   /* mean similarity over all negative pairs */
  double max_neg_sim;    /* largest negative similarity */
  double sim_gap;        /* mean_pos_sim - mean_neg_sim */
  double hard_neg_frac;  /* negatives above their row's weakest positive,
                            over negatives of rows that have a positive */
  double recall_at_1;    /* rows whose nearest neighbour (pair (i,i)
                            excluded) shares their label */
  double norm_dev_mean;  /* mean |‖x_i‖ - 1| of the raw query embeddings */
  double norm_dev_max;   /* max  |‖x_i‖ - 1| */
  uint64_t pos_pairs;    /* number of positive pairs */
  uint64_t neg_pairs;    /* number of negative pairs */
  uint64_t hard_neg_base; /* negatives of rows that have a positive:
                             hard_neg_frac's denominator (0: no figure) */
  uint64_t nn_rows;      /* rows with a nearest neighbour: recall_at_1's
                            denominator (0: no figure) */
} circle_stats;

/* Retrieval figures of pytorch-metric-learning's AccuracyCalculator, over
 * the similarities the loss sees (after normalize, when asked for): every
 * batch row is a query; the gallery is the reference set, or the batch
 * itself without the query row ("embeddings come from the same source").
 * R_i, the number of gallery items sharing row i's label, sets how far row
 * i looks. Rows with R_i == 0 ("lone" queries) are left out of all three
 * figures and of `queries`. Neighbours are ranked by similarity, largest
 * first; equal similarities rank by gallery index, smaller first. */
typedef struct {
  double precision_at_1; /* queries whose nearest neighbour shares their
                            label, over `queries` */
  double r_precision;    /* mean over queries of (relevant items among the
                            R_i nearest) / R_i */
  double map_at_r;       /* mean over queries of (sum over the relevant
                            items among the R_i nearest of their precision
                            at their rank) / R_i: MAP@R */
  uint64_t queries;      /* rows with R_i > 0: the figures' denominator
                            (0: no figure, and all three are 0) */
} circle_retrieval;

/* Output buffers are allocated by the caller, in cfg.dtype, and written only
 * when the matching CIRCLE_OUT_* bit is set in `want`. */
typedef struct {
  unsigned want;      /* CIRCLE_OUT_* bits */
  double loss;        /* reduced loss for scalar reductions */
  void *loss_values;  /* [n] for "none"/NULL reductions (weighted values) */
  void *per_sample;   /* [n] keras.losses.circle values (unweighted) */
  void *grad;         /* [n * d] d loss / d embeddings */
  void *ref_grad;     /* [m * d] d loss / d ref_embeddings */
  circle_stats stats; /* when CIRCLE_OUT_STATS */
  circle_retrieval retrieval; /* when CIRCLE_OUT_RETRIEVAL */
} circle_output;

/* ------------------------------------------------------------------------ */
/* Engine                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct circle_engine circle_engine;

typedef struct {
  unsigned threads;         /* compute threads; 0 = one per online core */
  size_t max_queue;         /* jobs waiting in circle_engine_submit's queue
                               before it answers CIRCLE_EBUSY; 0 = 1024 */
  size_t block_rows;        /* rows per work item; 0 = automatic */
  size_t materialize_bytes; /* largest n*m similarity matrix kept whole
                               (faster); above it the engine streams row
                               blocks, and a self-referenced batch keeps
                               lower-triangle strips for its gradient pass
                               within this budget (and an eighth more,
                               the rest of the scratch included).
                               0 = 256 MiB */
} circle_engine_opts;

/* Creates an engine with its thread pool (opts.threads compute threads and
 * one more for short jobs, see circle_job_opts). opts may be NULL. Sets
 * OpenBLAS to one thread: parallelism comes from the engine's own pool.
 * Returns CIRCLE_EINVAL, CIRCLE_ENOMEM; *out is untouched on failure. */
CIRCLE_API int circle_engine_init(circle_engine **out, const circle_engine_opts *opts);
/* Runs every job already submitted, joins the threads and frees. NULL is a
 * no-op. Must not be called from one of the engine's own threads. */
CIRCLE_API void circle_engine_free(circle_engine *engine);
/* Number of compute threads (the short lane's thread not counted); 0 for
 * NULL. */
CIRCLE_API unsigned circle_engine_threads(const circle_engine *engine);
/* Jobs submitted and not yet started; 0 for NULL. Thread-safe. */
CIRCLE_API size_t circle_engine_queue_depth(circle_engine *engine);

/* Checks the input's shapes, pointers and values (finite numbers, non-
 * negative finite sample weights) against cfg. Without normalize, it also
 * refuses embeddings whose norms are so large that gamma * (1 - s)^2 could
 * overflow the dtype, and (always) sample weights so large that the
 * weighted loss or its gradients could (CIRCLE_ERANGE, naming the largest
 * weight and the limit); the engine never hands out NaN or
 * Inf for input it accepts. Returns CIRCLE_OK, CIRCLE_EINVAL (d == 0, NULL
 * pointers, half a reference set, negative weights, bad config),
 * CIRCLE_EEMPTY (n == 0, or m == 0 with a reference set),
 * CIRCLE_ENONFINITE, CIRCLE_ERANGE or CIRCLE_EOVERFLOW. When
 * where is not NULL it receives a sentence naming the offending field and
 * row (at most where_len bytes, NUL-terminated). */
CIRCLE_API int circle_input_check(const circle_config *cfg, const circle_input *in,
                       char *where, size_t where_len);

/* Bytes of working memory circle_loss_compute will allocate for this input
 * with this engine (scratch only; the caller's output buffers not included).
 * Returns 0 when the size overflows size_t or an argument is NULL. */
CIRCLE_API size_t circle_loss_scratch_bytes(const circle_engine *engine,
                                 const circle_config *cfg,
                                 const circle_input *in, unsigned want);

/* Computes what out->want asks for. Blocks until done, using the calling
 * thread and the engine's threads. May be called from a job running on the
 * engine (that is how the server uses it). Results are bitwise identical
 * whatever the number of threads (block size and the materialized or
 * streamed path may change the last bits). Returns circle_input_check's
 * errors, CIRCLE_EINVAL for unknown bits in want, a reference gradient
 * without a reference set or a missing output buffer, CIRCLE_ENOMEM, or
 * CIRCLE_OK. On failure *out is untouched, except after CIRCLE_ECANCELED:
 * called from a job whose circle_job_opts.cancelled hook said yes between
 * row blocks, the computation stops early and the output buffers hold no
 * meaningful values. With normalize, the reference embeddings are
 * normalized too. */
CIRCLE_API int circle_loss_compute(circle_engine *engine, const circle_config *cfg,
                        const circle_input *in, circle_output *out);

/* Turns the engine's float32 results for a config with a half format into
 * what Keras computing in that format returns: rows whose per-sample value
 * is 0 in the format leave the reduction (Keras masks them; the loss and
 * gradients take its divisor), then every output array out->want holds
 * (loss_values, per_sample, grad, ref_grad) and out->loss is rounded to the
 * format, in place. out must hold per_sample (CIRCLE_OUT_PER_SAMPLE) for a
 * half format. Returns CIRCLE_OK (also for CIRCLE_HALF_NONE, which changes
 * nothing), CIRCLE_EINVAL for NULL arguments, an invalid config or no
 * per_sample, or CIRCLE_ERANGE when a value rounds past the format's largest
 * finite value (Keras would return inf there); where (when not NULL)
 * receives a sentence naming the output and row. The arrays may be partly
 * rounded on CIRCLE_ERANGE: the caller discards them. */
CIRCLE_API int circle_output_round(const circle_config *cfg, const circle_input *in,
                                   circle_output *out, char *where,
                                   size_t where_len);

/* Queues fn(arg) to run on one of the engine's threads, as an ordinary job
 * (circle_engine_submit_job with NULL options). Returns CIRCLE_OK,
 * CIRCLE_EBUSY when max_queue jobs are waiting, CIRCLE_ESHUTDOWN once
 * circle_engine_free has begun. fn owns arg. */
CIRCLE_API int circle_engine_submit(circle_engine *engine, void (*fn)(void *arg),
                         void *arg);

/* How a job is scheduled and stopped. Zeroed: an ordinary job. */
typedef struct {
  /* The submitter knows the job to be short. Short jobs are taken before
   * ordinary ones, and one engine thread beyond `threads` runs only short
   * jobs, so a short job never waits behind an ordinary one, however
   * long. */
  bool short_job;
  /* NULL, or asked with the job's arg before each row block of every
   * circle_loss_compute the job makes, from any engine thread (so it must
   * be thread-safe and cheap). Once it returns true that computation stops
   * and returns CIRCLE_ECANCELED, as does any later one of the job. */
  bool (*cancelled)(void *arg);
} circle_job_opts;

/* circle_engine_submit with options (NULL: an ordinary job); same returns. */
CIRCLE_API int circle_engine_submit_job(circle_engine *engine,
                                        void (*fn)(void *arg), void *arg,
                                        const circle_job_opts *opts);
/* max_queue as resolved (jobs waiting before CIRCLE_EBUSY); 0 for NULL. */
CIRCLE_API size_t circle_engine_queue_capacity(const circle_engine *engine);

/* ------------------------------------------------------------------------ */
/* OpenBLAS kernel selection                                                */
/* ------------------------------------------------------------------------ */

/* The OpenBLAS core type to force for a detected core name, or NULL to keep
 * it. has_avx512: the CPU runs AVX-512 F, VL, BW and DQ (what OpenBLAS'
 * SkylakeX kernels need). A generic core ("Prescott", "Core2", "Nehalem",
 * "Atom", "Katmai", "Banias", "Northwood", "Dunnington", "Penryn",
 * "Barcelona", "Opteron") gets "SkylakeX" on an AVX-512 CPU, "Haswell" on
 * an AVX2 one; an AVX or AVX2 core ("Sandybridge", "Haswell", "Zen") gets
 * "SkylakeX" on an AVX-512 CPU, and "Sandybridge" gets "Haswell" on an AVX2
 * one. Pure. */
CIRCLE_API const char *circle_blas_pick_coretype(const char *corename, bool has_avx512,
                                      bool has_avx2);
/* OpenBLAS' name for the kernels it loaded ("SkylakeX"), or "unknown". */
CIRCLE_API const char *circle_blas_corename(void);
/* Call first thing in main(). If OPENBLAS_CORETYPE is unset and
 * circle_blas_pick_coretype picks a core, sets the variable and re-executes
 * the program (/proc/self/exe) so OpenBLAS loads with it; returns only when
 * no re-exec is needed or it failed. Never re-executes twice. */
CIRCLE_API void circle_blas_ensure_kernel(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif /* CIRCLE_CIRCLE_H */
