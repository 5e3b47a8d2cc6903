/* util_engine_golden.h -- reads the Keras golden files (tests/golden/NAME.json)
 * for the engine tests, without cJSON: engine tests must build with nothing
 * but the engine, check and libc.
 *
 * The reader is strict on purpose. It accepts exactly the layout that
 * tests/golden/generate.py writes (see its docstring): every key present once,
 * no unknown key, each value of its one type, array lengths consistent with
 * n, m and d. A golden file that drifts from that layout is an error, never
 * a silently skipped field.
 *
 * Memory: golden_case_load fills a caller-owned golden_case whose arrays are
 * malloc'd; golden_case_free releases them (NULL is a no-op). golden_list
 * returns malloc'd paths freed by golden_list_free.
 */
#ifndef CIRCLE_TESTS_UTIL_ENGINE_GOLDEN_H
#define CIRCLE_TESTS_UTIL_ENGINE_GOLDEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "circle/circle.h"

/* One golden case. Every floating array holds the exact values Keras saw or
 * produced, as doubles (a float32 case's values convert to float exactly). */
typedef struct {
  char *id;
  char *keras_version;
  char *jax_version;
  char *numpy_version;
  char *note;
  circle_config cfg;        /* gamma, margin, remove_diagonal, reduction,
                               dtype, normalize as in the file */
  size_t n, m, d;           /* m == 0 when there is no reference set */
  int64_t *labels;          /* [n] */
  double *embeddings;       /* [n * d], raw (before normalize) */
  double *sample_weight;    /* [n] or NULL */
  int64_t *ref_labels;      /* [m] or NULL */
  double *ref_embeddings;   /* [m * d] or NULL */
  double loss;              /* scalar reductions */
  double *loss_values;      /* [n] for "none" / null, else NULL */
  double *per_sample;       /* [n] keras.losses.circle values */
  double *grad;             /* [n * d] */
  double *ref_grad;         /* [m * d] or NULL */
} golden_case;

/* Parses the golden file at path into *out. Returns 0, or -1 with a message
 * naming the file, the byte offset and the problem in err (err_len bytes,
 * NUL-terminated); *out is untouched on failure. */
int golden_case_load(const char *path, golden_case *out, char *err,
                     size_t err_len);
/* Frees the arrays of c and zeroes it. NULL is a no-op. */
void golden_case_free(golden_case *c);

/* The golden directory: $CIRCLE_GOLDEN_DIR, or "tests/golden" if unset or
 * empty. */
const char *golden_dir(void);
/* Lists dir's *.json files, sorted by name, as malloc'd "dir/name" paths.
 * Returns 0 (possibly with *count == 0), or -1 when dir cannot be read or
 * memory runs out; *paths and *count are untouched on failure. */
int golden_list(const char *dir, char ***paths, size_t *count);
/* Frees what golden_list returned. NULL is a no-op. */
void golden_list_free(char **paths, size_t count);

#endif /* CIRCLE_TESTS_UTIL_ENGINE_GOLDEN_H */
