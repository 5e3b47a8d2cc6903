/* util_engine_new.c -- makes an engine for the engine tests, or fails the
 * check test that asked for it.
 */
#include "util_engine_new.h"

#include <check.h>

circle_engine *engine_new(unsigned threads, size_t block_rows,
                          size_t materialize_bytes) {
  circle_engine_opts o = {.threads = threads,
                          .block_rows = block_rows,
                          .materialize_bytes = materialize_bytes};
  circle_engine *e = NULL;
  int rc = circle_engine_init(&e, &o);
  ck_assert_msg(rc == CIRCLE_OK, "circle_engine_init: %s",
                circle_status_str(rc));
  ck_assert_ptr_nonnull(e);
  return e;
}

