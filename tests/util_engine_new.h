/* util_engine_new.h -- makes an engine for the engine tests, or fails the
 * test that asked; shared by the suites that need one (test_loss,
 * test_pool).
 */
#ifndef CIRCLE_TESTS_UTIL_ENGINE_NEW_H
#define CIRCLE_TESTS_UTIL_ENGINE_NEW_H

#include <stddef.h>

#include "circle/circle.h"

/* An engine with these options (0: the default), never NULL: a failure to
 * make one fails the calling check test. Freed by circle_engine_free. */
circle_engine *engine_new(unsigned threads, size_t block_rows,
                          size_t materialize_bytes);

#endif /* CIRCLE_TESTS_UTIL_ENGINE_NEW_H */
