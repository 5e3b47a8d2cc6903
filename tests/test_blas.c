/* test_blas.c -- the choice of OpenBLAS kernels (src/blas.c): the table
 * that picks a core type for a generic core or for AVX2 kernels on an
 * AVX-512 CPU, and that a core type the user
 * chose is never overridden by a re-exec. tests/py/test_blas_kernel.py
 * runs circled itself under each case.
 */
#include <check.h>
#include <stdbool.h>
#include <stdlib.h>

#include "circle/circle.h"

START_TEST(loss_should_pick_the_blas_coretype_from_the_table) {
  ck_assert_str_eq(circle_blas_pick_coretype("Prescott", true, true),
                   "SkylakeX");
  ck_assert_str_eq(circle_blas_pick_coretype("Prescott", true, false),
                   "SkylakeX");
  ck_assert_str_eq(circle_blas_pick_coretype("Prescott", false, true),
                   "Haswell");
  ck_assert_ptr_null(circle_blas_pick_coretype("Prescott", false, false));
  /* AVX2 kernels on an AVX-512 CPU (Zen 4 and Zen 5 under 0.3.21). */
  ck_assert_str_eq(circle_blas_pick_coretype("Zen", true, true), "SkylakeX");
  ck_assert_str_eq(circle_blas_pick_coretype("Haswell", true, true),
                   "SkylakeX");
  ck_assert_str_eq(circle_blas_pick_coretype("haswell", true, true),
                   "SkylakeX");
  ck_assert_str_eq(circle_blas_pick_coretype("Sandybridge", true, true),
                   "SkylakeX");
  ck_assert_str_eq(circle_blas_pick_coretype("Sandybridge", false, true),
                   "Haswell");
  ck_assert_ptr_null(circle_blas_pick_coretype("Sandybridge", false, false));
  ck_assert_ptr_null(circle_blas_pick_coretype("Zen", false, true));
  ck_assert_ptr_null(circle_blas_pick_coretype("Zen", false, false));
  ck_assert_ptr_null(circle_blas_pick_coretype("Haswell", false, true));
  /* AVX-512 kernels, and ones this table does not know, stay. */
  ck_assert_ptr_null(circle_blas_pick_coretype("SkylakeX", true, true));
  ck_assert_ptr_null(circle_blas_pick_coretype("Cooperlake", true, true));
  ck_assert_ptr_null(circle_blas_pick_coretype("SapphireRapids", true, true));
  ck_assert_ptr_null(circle_blas_pick_coretype("Neoverse", true, true));
  ck_assert_ptr_null(circle_blas_pick_coretype(NULL, true, true));
  ck_assert_ptr_null(circle_blas_pick_coretype("", true, true));
  static const char *const generic[] = {
      "Prescott", "Core2", "Nehalem", "Atom", "Katmai", "Banias",
      "Northwood", "Dunnington", "Penryn", "Barcelona", "Opteron"};
  for (size_t k = 0; k < sizeof generic / sizeof *generic; k++) {
    ck_assert_str_eq(circle_blas_pick_coretype(generic[k], true, false),
                     "SkylakeX");
    ck_assert_str_eq(circle_blas_pick_coretype(generic[k], false, true),
                     "Haswell");
    ck_assert_ptr_null(circle_blas_pick_coretype(generic[k], false, false));
  }
  const char *name = circle_blas_corename();
  ck_assert_ptr_nonnull(name);
  ck_assert(name[0] != 0);
}
END_TEST

/* With OPENBLAS_CORETYPE set by the user, nothing is re-executed. */
START_TEST(loss_should_not_reexec_when_the_user_chose_a_coretype) {
  setenv("OPENBLAS_CORETYPE", "Prescott", 1);
  char *argv[] = {"test_loss", NULL};
  circle_blas_ensure_kernel(1, argv); /* must return */
  ck_assert_str_eq(getenv("OPENBLAS_CORETYPE"), "Prescott");
}
END_TEST

/* ------------------------------------------------------------------------ */

static Suite *blas_suite(void) {
  Suite *s = suite_create("blas");
  TCase *kernel = tcase_create("kernel");
  tcase_add_test(kernel, loss_should_pick_the_blas_coretype_from_the_table);
  tcase_add_test(kernel, loss_should_not_reexec_when_the_user_chose_a_coretype);
  suite_add_tcase(s, kernel);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(blas_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
