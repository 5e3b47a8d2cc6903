/* pool_impl.h -- private to the engine: its thread pool and scratch
 * (pool.c), and the row norm the input check and the stats share
 * (config.c).
 *
 * Two kinds of work run on the pool:
 *  - jobs (circle_engine_submit_job): whole requests, FIFO in two classes
 *    (short first; one extra thread takes only short ones), bounded queue;
 *  - helpers of a parallel loop (circle__parallel): short-lived, unbounded,
 *    always taken before jobs so a loop in progress finishes first.
 */
#ifndef CIRCLE_POOL_IMPL_H
#define CIRCLE_POOL_IMPL_H

#include <stdbool.h>
#include <stddef.h>

#include "circle/circle.h"

/* body(ctx, block, ith): process one block; ith < circle_engine_threads() is
 * the participant's index, stable for the whole call, for scratch slots. */
typedef void (*circle__block_fn)(void *ctx, size_t block, unsigned ith);

/* Runs body for every block in [0, nblocks), on the calling thread and up to
 * threads - 1 helpers, with dynamic chunking (an atomic counter). Returns
 * when every block is done and no helper touches ctx any more. Safe to call
 * from a job running on the pool: the caller never waits for a helper that
 * has not started (it withdraws those), so there is no deadlock. */
void circle__parallel(circle_engine *engine, size_t nblocks,
                      circle__block_fn body, void *ctx);

/* True when a loop of the job the calling thread runs was cancelled by the
 * job's hook (see pool.c): its later loops run no blocks, and the results
 * of the computation are not to be used. False outside jobs. */
bool circle__cancelled(void);

/* Largest scratch buffer the engine keeps between calls, unless the
 * engine's materialize_bytes (and an eighth more) is larger. */
#define CIRCLE__SCRATCH_CACHE_MAX ((size_t)128 << 20)

/* Scratch memory for one call, 64-byte aligned: the engine's cached buffer
 * when it fits, else a fresh allocation. NULL when out of memory. */
void *circle__scratch_take(circle_engine *engine, size_t bytes);
/* Returns scratch taken for `bytes`: kept for the next call when it is at
 * most that limit and larger than what is kept, else freed. */
void circle__scratch_give(circle_engine *engine, void *p, size_t bytes);

/* |row r of p|^2 for an [rows x d] dtype array, summed in double in a
 * fixed lane order (reproducible; no overflow for float32). */
double circle__row_norm2(const void *p, size_t r, size_t d, circle_dtype dt);

/* The options the engine was created with, defaults resolved. */
const circle_engine_opts *circle__engine_opts(const circle_engine *engine);
/* False when the environment held CIRCLE_KERNELS=c at circle_engine_init:
 * the engine then runs its compiler-vectorized C loops even where a
 * hand-written SIMD kernel applies (tests and benchmarks compare both). */
bool circle__engine_simd(const circle_engine *engine);

#endif /* CIRCLE_POOL_IMPL_H */
