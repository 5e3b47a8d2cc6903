/* test_config.c -- the config helpers for Keras' dtype policies: every
 * policy name a loss takes, rounding to float16 and bfloat16 (checked over
 * every value of both formats and every midpoint between neighbours, not
 * just a few samples), one rounding from a double, and circle_output_round
 * with its range errors.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "circle/circle.h"

/* The value of a float16 / bfloat16 bit pattern, from the formats'
 * definitions, independent of the code under test. NaN for inf/NaN. */
static double format_value(uint16_t h, circle_half half) {
  int frac_bits = half == CIRCLE_HALF_FLOAT16 ? 10 : 7;
  int exp_bits = 15 - frac_bits;
  int bias = (1 << (exp_bits - 1)) - 1;
  int e = (h & 0x7fff) >> frac_bits;
  double frac = h & ((1u << frac_bits) - 1);
  if (e == (1 << exp_bits) - 1) return NAN;
  double v = e == 0 ? ldexp(frac, 1 - bias - frac_bits)
                    : ldexp(frac + (1u << frac_bits), e - bias - frac_bits);
  return (h & 0x8000) ? -v : v;
}

static double narrow1(circle_half half, double v, size_t *k) {
  float f = -12345;
  *k = circle_half_narrow(half, &v, &f, 1);
  return f;
}

START_TEST(config_should_parse_every_keras_dtype_policy_name) {
  static const struct {
    const char *name;
    circle_dtype dtype;
    circle_half half;
  } good[] = {{"float32", CIRCLE_DTYPE_FLOAT32, CIRCLE_HALF_NONE},
              {"float64", CIRCLE_DTYPE_FLOAT64, CIRCLE_HALF_NONE},
              {"float16", CIRCLE_DTYPE_FLOAT32, CIRCLE_HALF_FLOAT16},
              {"bfloat16", CIRCLE_DTYPE_FLOAT32, CIRCLE_HALF_BFLOAT16},
              {"mixed_float16", CIRCLE_DTYPE_FLOAT32, CIRCLE_HALF_FLOAT16},
              {"mixed_bfloat16", CIRCLE_DTYPE_FLOAT32, CIRCLE_HALF_BFLOAT16}};
  for (size_t k = 0; k < sizeof good / sizeof *good; k++) {
    circle_dtype dt = (circle_dtype)9;
    circle_half h = (circle_half)9;
    ck_assert_int_eq(circle_dtype_policy_parse(good[k].name, &dt, &h), CIRCLE_OK);
    ck_assert_int_eq(dt, good[k].dtype);
    ck_assert_int_eq(h, good[k].half);
    circle_config c;
    circle_config_init(&c);
    c.dtype = dt;
    c.half = h;
    ck_assert_int_eq(circle_config_validate(&c), CIRCLE_OK);
    /* The name of the compute dtype: a mixed policy computes in its half. */
    const char *want = strncmp(good[k].name, "mixed_", 6) == 0
                           ? good[k].name + 6 : good[k].name;
    ck_assert_str_eq(circle_config_dtype_name(&c), want);
  }
  static const char *const bad[] = {"Float16", "half", "int32", "uint8",
                                    "bool", "mixed_float32", "float8_e4m3fn",
                                    "int8_from_float32", "", "float16 "};
  for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
    circle_dtype dt = CIRCLE_DTYPE_FLOAT64;
    circle_half h = CIRCLE_HALF_BFLOAT16;
    ck_assert_int_eq(circle_dtype_policy_parse(bad[k], &dt, &h), CIRCLE_EINVAL);
    ck_assert_int_eq(dt, CIRCLE_DTYPE_FLOAT64); /* untouched */
    ck_assert_int_eq(h, CIRCLE_HALF_BFLOAT16);
  }
  circle_dtype dt;
  circle_half h;
  ck_assert_int_eq(circle_dtype_policy_parse(NULL, &dt, &h), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_dtype_policy_parse("float16", NULL, &h), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_dtype_policy_parse("float16", &dt, NULL), CIRCLE_EINVAL);
}
END_TEST

START_TEST(config_should_refuse_a_half_format_without_float32) {
  circle_config c;
  circle_config_init(&c);
  ck_assert_int_eq(c.half, CIRCLE_HALF_NONE);
  c.half = CIRCLE_HALF_FLOAT16;
  c.dtype = CIRCLE_DTYPE_FLOAT64;
  ck_assert_int_eq(circle_config_validate(&c), CIRCLE_EINVAL);
  ck_assert_ptr_null(circle_config_dtype_name(&c));
  c.dtype = CIRCLE_DTYPE_FLOAT32;
  c.half = (circle_half)3;
  ck_assert_int_eq(circle_config_validate(&c), CIRCLE_EINVAL);
  ck_assert_ptr_null(circle_config_dtype_name(NULL));
  ck_assert_ptr_null(circle_half_name(CIRCLE_HALF_NONE));
  ck_assert_ptr_null(circle_half_name((circle_half)3));
  ck_assert(circle_half_max(CIRCLE_HALF_NONE) == 0);
  ck_assert(circle_half_max(CIRCLE_HALF_FLOAT16) == 65504.0);
  ck_assert(circle_half_max(CIRCLE_HALF_BFLOAT16) == ldexp(255, 120));
}
END_TEST

/* Every finite value of the format rounds to itself; every midpoint
 * between neighbours rounds to the one with an even last bit, and a hair
 * either side of it to the nearer one; past the largest value (its
 * midpoint with the next power of two and up) is out of range. From a
 * double and from a float alike. */
static void check_format_exhaustively(circle_half half) {
  double big = circle_half_max(half);
  for (uint32_t b = 0; b < 0x7fff; b++) {
    double v = format_value((uint16_t)b, half);
    if (isnan(v)) break; /* the infinity pattern: past the largest value */
    bool last = v == big;
    double next = last ? 2 * big - format_value((uint16_t)(b - 1), half)
                       : format_value((uint16_t)(b + 1), half);
    double mid = (v + next) / 2; /* exact in double */
    double even = (b & 1) ? next : v;
    size_t k;
    for (int sign = 1; sign >= -1; sign -= 2) {
      ck_assert_msg(narrow1(half, sign * v, &k) == sign * v && k == 1,
                    "%s %x", circle_half_name(half), b);
      float f = (float)(sign * v);
      ck_assert_uint_eq(circle_half_round(half, &f, 1), 1);
      ck_assert(f == sign * v);
      double below = narrow1(half, sign * nextafter(mid, 0), &k);
      ck_assert_msg(k == 1 && below == sign * v, "%s %x below mid",
                    circle_half_name(half), b);
      double at = narrow1(half, sign * mid, &k);
      if (last) {
        ck_assert_uint_eq(k, 0); /* ties to the even 2^max: out of range */
      } else {
        ck_assert_msg(k == 1 && at == sign * even, "%s %x mid %.17g -> %.17g",
                      circle_half_name(half), b, mid, at);
        double above = narrow1(half, sign * nextafter(mid, INFINITY), &k);
        ck_assert_msg(k == 1 && above == sign * next, "%s %x above mid",
                      circle_half_name(half), b);
      }
    }
  }
}

START_TEST(config_should_round_every_float16_value_and_midpoint) {
  check_format_exhaustively(CIRCLE_HALF_FLOAT16);
}
END_TEST

START_TEST(config_should_round_every_bfloat16_value_and_midpoint) {
  check_format_exhaustively(CIRCLE_HALF_BFLOAT16);
}
END_TEST

START_TEST(config_should_round_a_double_once_not_through_float) {
  /* 1 + 2^-11 + 2^-40 is just above float16's midpoint between 1 and
   * 1 + 2^-10; as a float it would be the midpoint itself and go to 1. */
  size_t k;
  ck_assert(narrow1(CIRCLE_HALF_FLOAT16, 1 + ldexp(1, -11) + ldexp(1, -40), &k) ==
            1 + ldexp(1, -10));
  ck_assert(narrow1(CIRCLE_HALF_BFLOAT16, 1 + ldexp(1, -8) + ldexp(1, -40), &k) ==
            1 + ldexp(1, -7));
  ck_assert(narrow1(CIRCLE_HALF_FLOAT16, 0.1, &k) == 0.0999755859375);
  /* Signed zero and the smallest subnormals. */
  double z = narrow1(CIRCLE_HALF_FLOAT16, -0.0, &k);
  ck_assert(z == 0 && signbit(z));
  ck_assert(narrow1(CIRCLE_HALF_FLOAT16, ldexp(1, -25), &k) == 0);
  ck_assert(narrow1(CIRCLE_HALF_FLOAT16, ldexp(1.25, -25), &k) == ldexp(1, -24));
  ck_assert(narrow1(CIRCLE_HALF_BFLOAT16, 1e-45, &k) == 0);
  /* Without a half format: plain float32, overflow reported. */
  ck_assert(narrow1(CIRCLE_HALF_NONE, 0.1, &k) == 0.1f && k == 1);
  narrow1(CIRCLE_HALF_NONE, 1e39, &k);
  ck_assert_uint_eq(k, 0);
  narrow1(CIRCLE_HALF_FLOAT16, INFINITY, &k);
  ck_assert_uint_eq(k, 0);
  /* The index of the first value out of range. */
  double src[4] = {1, 2, 65520, 3};
  float dst[4];
  ck_assert_uint_eq(circle_half_narrow(CIRCLE_HALF_FLOAT16, src, dst, 4), 2);
  float p[3] = {1, 7e4f, 2};
  ck_assert_uint_eq(circle_half_round(CIRCLE_HALF_FLOAT16, p, 3), 1);
  ck_assert_uint_eq(circle_half_round(CIRCLE_HALF_NONE, p, 3), 3);
}
END_TEST

START_TEST(config_should_round_outputs_and_name_one_out_of_range) {
  circle_config c;
  circle_config_init(&c);
  c.half = CIRCLE_HALF_FLOAT16;
  c.reduction = CIRCLE_REDUCTION_NONE;
  float lv[2] = {0.1f, 300.3f}, ps[2] = {1.0f / 3, 2}, g[4] = {1e-3f, -5, 6, 7};
  circle_input in = {.n = 2, .d = 2};
  circle_output out = {.want = CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE | CIRCLE_OUT_GRAD,
                       .loss_values = lv, .per_sample = ps, .grad = g};
  char where[256] = "";
  ck_assert_int_eq(circle_output_round(&c, &in, &out, where, sizeof where), CIRCLE_OK);
  /* The values numpy.float16 gives for these floats. */
  ck_assert(lv[0] == 0.0999755859375f && lv[1] == 300.25f);
  ck_assert(ps[0] == 0.333251953125f && ps[1] == 2);
  ck_assert(g[0] == 0.0010004043579101562f && g[1] == -5);
  g[3] = 1e5f;
  ck_assert_int_eq(circle_output_round(&c, &in, &out, where, sizeof where), CIRCLE_ERANGE);
  ck_assert_ptr_nonnull(strstr(where, "embeddings_grad[1][1] is 1e+05"));
  ck_assert_ptr_nonnull(strstr(where, "65504"));
  /* A scalar loss, and the reference gradient. */
  c.reduction = CIRCLE_REDUCTION_SUM;
  float ps2[2] = {1, 2};
  circle_output o2 = {.want = CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE,
                      .loss = 1e6, .per_sample = ps2};
  ck_assert_int_eq(circle_output_round(&c, &in, &o2, where, sizeof where), CIRCLE_ERANGE);
  ck_assert_ptr_nonnull(strstr(where, "the loss is 1e+06"));
  o2.loss = 1.0 / 3;
  ck_assert_int_eq(circle_output_round(&c, &in, &o2, NULL, 0), CIRCLE_OK);
  ck_assert(o2.loss == 0.333251953125);
  float rg[2] = {0.1f, 3e38f};
  float rx[2] = {0};
  int64_t rl[1] = {0};
  circle_input in2 = {.n = 1, .m = 1, .d = 2, .ref_labels = rl, .ref_embeddings = rx};
  float ps3[1] = {1};
  circle_output o3 = {.want = CIRCLE_OUT_REF_GRAD | CIRCLE_OUT_PER_SAMPLE,
                      .ref_grad = rg, .per_sample = ps3};
  c.half = CIRCLE_HALF_BFLOAT16;
  ck_assert_int_eq(circle_output_round(&c, &in2, &o3, where, sizeof where), CIRCLE_OK);
  ck_assert(rg[0] == 0.10009765625f);
  /* Without the per-sample values the rows cannot be masked as Keras does. */
  circle_output o5 = {.want = CIRCLE_OUT_LOSS, .loss = 1};
  ck_assert_int_eq(circle_output_round(&c, &in, &o5, where, sizeof where), CIRCLE_EINVAL);
  ck_assert_ptr_nonnull(strstr(where, "per-sample"));
  /* No half format: nothing changes. Bad arguments. */
  c.half = CIRCLE_HALF_NONE;
  float keep[2] = {0.1f, 0.2f};
  circle_output o4 = {.want = CIRCLE_OUT_PER_SAMPLE, .per_sample = keep};
  ck_assert_int_eq(circle_output_round(&c, &in, &o4, NULL, 0), CIRCLE_OK);
  ck_assert(keep[0] == 0.1f && keep[1] == 0.2f);
  ck_assert_int_eq(circle_output_round(NULL, &in, &o4, NULL, 0), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_output_round(&c, NULL, &o4, NULL, 0), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_output_round(&c, &in, NULL, NULL, 0), CIRCLE_EINVAL);
  c.dtype = CIRCLE_DTYPE_FLOAT64;
  c.half = CIRCLE_HALF_FLOAT16;
  ck_assert_int_eq(circle_output_round(&c, &in, &o4, NULL, 0), CIRCLE_EINVAL);
}
END_TEST

/* Keras masks a row whose value is 0 in float16; the engine's float32 value
 * 1e-9 is not 0, so the row leaves the reduction here: the divisor of a mean
 * and the gradients follow Keras'. bfloat16 keeps 1e-9. */
START_TEST(config_should_mask_rows_whose_value_is_zero_in_the_format) {
  circle_config c;
  circle_config_init(&c);
  c.half = CIRCLE_HALF_FLOAT16;
  float w[3] = {1, 2, 4};
  circle_input in = {.n = 3, .d = 1, .sample_weight = w};
  static const struct {
    circle_reduction r;
    double loss, want_loss; /* engine (float32 mask) and Keras' (float16) */
    float scale;
  } cases[] = {
      /* sum_over_batch_size / mean: sum(w v mask) / valid */
      {CIRCLE_REDUCTION_SUM_OVER_BATCH_SIZE, (2e-9 + 4 + 12) / 3, (4 + 12) / 2.0, 1.5f},
      {CIRCLE_REDUCTION_MEAN, (2e-9 + 4 + 12) / 3, 8, 1.5f},
      /* mean_with_sample_weight: over sum(w mask) */
      {CIRCLE_REDUCTION_MEAN_WITH_SAMPLE_WEIGHT, (2e-9 + 4 + 12) / 7, 16.0 / 6, 7.0f / 6},
      /* sum: the row's tiny term leaves, nothing else changes */
      {CIRCLE_REDUCTION_SUM, 2e-9 + 4 + 12, 16, 1},
  };
  for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
    c.reduction = cases[k].r;
    float ps[3] = {1e-9f, 2, 3}, g[3] = {0.5f, 1, -2};
    circle_output out = {.want = CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE | CIRCLE_OUT_GRAD,
                         .loss = cases[k].loss, .per_sample = ps, .grad = g};
    ck_assert_int_eq(circle_output_round(&c, &in, &out, NULL, 0), CIRCLE_OK);
    float want = (float)cases[k].want_loss;
    ck_assert(circle_half_round(c.half, &want, 1) == 1);
    ck_assert_msg(out.loss == want, "%d: %.9g vs %.9g", (int)k, out.loss, want);
    ck_assert(ps[0] == 0);
    float g1 = 1 * cases[k].scale;
    circle_half_round(c.half, &g1, 1);
    ck_assert_msg(g[1] == g1, "%d: %.9g vs %.9g", (int)k, g[1], g1);
  }
  /* "none": the masked row's weighted value is 0, even where w v is not. */
  c.reduction = CIRCLE_REDUCTION_NONE;
  float ps[3] = {1e-9f, 2, 3}, lv[3] = {4e-8f, 4, 12};
  circle_output out = {.want = CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE,
                       .per_sample = ps, .loss_values = lv};
  ck_assert_int_eq(circle_output_round(&c, &in, &out, NULL, 0), CIRCLE_OK);
  ck_assert(lv[0] == 0 && lv[1] == 4 && lv[2] == 12);
  /* Every row masked: divide_no_nan gives 0. */
  c.reduction = CIRCLE_REDUCTION_MEAN;
  float tiny[3] = {1e-9f, 1e-10f, 0}, g[3] = {1, 1, 1};
  circle_output all = {.want = CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE | CIRCLE_OUT_GRAD,
                       .loss = 1e-9, .per_sample = tiny, .grad = g};
  ck_assert_int_eq(circle_output_round(&c, &in, &all, NULL, 0), CIRCLE_OK);
  ck_assert(all.loss == 0 && g[0] == 0);
  /* bfloat16 reaches far lower: nothing is masked. */
  c.half = CIRCLE_HALF_BFLOAT16;
  c.reduction = CIRCLE_REDUCTION_SUM_OVER_BATCH_SIZE;
  float pb[3] = {1e-9f, 2, 3}, gb[3] = {0.5f, 1, -2};
  circle_output ob = {.want = CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE | CIRCLE_OUT_GRAD,
                      .loss = 16.0 / 3, .per_sample = pb, .grad = gb};
  ck_assert_int_eq(circle_output_round(&c, &in, &ob, NULL, 0), CIRCLE_OK);
  ck_assert(gb[1] == 1 && pb[0] != 0);
}
END_TEST

START_TEST(config_should_bound_embedding_norms_by_float16s_range) {
  /* float16 keeps gamma (|margin| + 2 + s)^2 16 times below 65504: at gamma
   * 256 and margin 0.4, similarities up to 1.6 pass and 4 do not. */
  circle_config c;
  circle_config_init(&c);
  c.gamma = 256;
  c.half = CIRCLE_HALF_FLOAT16;
  int64_t y[2] = {0, 1};
  float x[4] = {1, 0, 0, 1};
  circle_input in = {.n = 2, .d = 2, .labels = y, .embeddings = x};
  char where[256] = "";
  ck_assert_int_eq(circle_input_check(&c, &in, where, sizeof where), CIRCLE_OK);
  x[0] = 2;
  ck_assert_int_eq(circle_input_check(&c, &in, where, sizeof where), CIRCLE_ERANGE);
  ck_assert_ptr_nonnull(strstr(where, "too large for float16 at gamma 256"));
  c.half = CIRCLE_HALF_BFLOAT16; /* float32's range */
  ck_assert_int_eq(circle_input_check(&c, &in, where, sizeof where), CIRCLE_OK);
  /* A gamma no similarity fits under says so. */
  c.half = CIRCLE_HALF_FLOAT16;
  c.gamma = 1024;
  ck_assert_int_eq(circle_input_check(&c, &in, where, sizeof where), CIRCLE_ERANGE);
  ck_assert_ptr_nonnull(strstr(where, "gamma 1024 with margin 0.4 is too large "
                                      "for float16"));
}
END_TEST

static Suite *config_suite(void) {
  Suite *s = suite_create("config");
  TCase *tc = tcase_create("dtype");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, config_should_parse_every_keras_dtype_policy_name);
  tcase_add_test(tc, config_should_refuse_a_half_format_without_float32);
  tcase_add_test(tc, config_should_round_every_float16_value_and_midpoint);
  tcase_add_test(tc, config_should_round_every_bfloat16_value_and_midpoint);
  tcase_add_test(tc, config_should_round_a_double_once_not_through_float);
  tcase_add_test(tc, config_should_round_outputs_and_name_one_out_of_range);
  tcase_add_test(tc, config_should_mask_rows_whose_value_is_zero_in_the_format);
  tcase_add_test(tc, config_should_bound_embedding_norms_by_float16s_range);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(config_suite());
  srunner_set_fork_status(sr, CK_FORK);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
