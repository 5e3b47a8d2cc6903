/* blas.c -- OpenBLAS kernel selection: make sure the fast kernels are loaded.
 *
 * Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) does not know some newer CPUs. It
 * falls back either to generic "Prescott"-class kernels, about three times
 * slower than the SkylakeX or Haswell kernels the CPU can run, or, on
 * AVX-512 CPUs it takes for AVX2 ones (AMD Zen 4 and Zen 5), to its AVX2
 * "Haswell" or "Zen" kernels: on a Zen 5 the SkylakeX sgemm takes half
 * their time (docs/performance.md). OpenBLAS reads OPENBLAS_CORETYPE only
 * when it is loaded, so when the loaded kernels are slower than ones the CPU
 * runs and the user has not chosen a core, we set the variable and
 * re-execute ourselves. CIRCLE_BLAS_REEXEC guards against a second re-exec.
 * A user's OPENBLAS_CORETYPE is always respected.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "circle/circle.h"

/* Provided by OpenBLAS (not declared in Debian's cblas.h in every version). */
extern char *openblas_get_corename(void);

static const char *const generic_cores[] = {
    "Prescott", "Core2",  "Nehalem",   "Atom",  "Katmai",   "Banias",
    "Northwood", "Dunnington", "Penryn", "Barcelona", "Opteron", NULL};

/* Cores whose kernels use AVX or AVX2 at most. */
static const char *const avx2_cores[] = {"Sandybridge", "Haswell", "Zen", NULL};

static bool in_list(const char *name, const char *const *list) {
  for (size_t k = 0; list[k] != NULL; k++)
    if (strcasecmp(name, list[k]) == 0) return true;
  return false;
}

const char *circle_blas_pick_coretype(const char *corename, bool has_avx512,
                                      bool has_avx2) {
  if (corename == NULL) return NULL;
  bool generic = in_list(corename, generic_cores);
  bool avx2 = in_list(corename, avx2_cores);
  if (!generic && !avx2) return NULL;
  if (has_avx512) return "SkylakeX";
  if (has_avx2 && (generic || strcasecmp(corename, "Sandybridge") == 0))
    return "Haswell";
  return NULL;
}

const char *circle_blas_corename(void) {
  const char *name = openblas_get_corename();
  return name != NULL ? name : "unknown";
}

/* The core circle_blas_pick_coretype would force over `core` on this CPU. */
static const char *better_core(const char *core) {
  __builtin_cpu_init();
  /* OpenBLAS' SkylakeX kernels are built for AVX-512 F, VL, BW and DQ. */
  bool avx512 = __builtin_cpu_supports("avx512f") &&
                __builtin_cpu_supports("avx512vl") &&
                __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512dq");
  return circle_blas_pick_coretype(core, avx512,
                                   __builtin_cpu_supports("avx2"));
}

void circle_blas_ensure_kernel(int argc, char **argv) {
  (void)argc;
  const char *chosen = getenv("OPENBLAS_CORETYPE");
  if (chosen != NULL) {
    /* Kept as set (it may be there because a kernel misbehaves on this
     * CPU), but said once, since it can halve the speed of every product. */
    const char *better = better_core(chosen);
    if (better != NULL && getenv("CIRCLE_BLAS_REEXEC") == NULL)
      fprintf(stderr,
              "circle: OPENBLAS_CORETYPE=%s is set and kept; this CPU also "
              "runs OpenBLAS' %s kernels, which can be much faster (unset "
              "OPENBLAS_CORETYPE to let circle choose)\n",
              chosen, better);
    return;
  }
  if (getenv("CIRCLE_BLAS_REEXEC") != NULL) return;
  /* CIRCLE_TEST_CORENAME stands in for the detected core so the tests can
   * exercise the re-exec on a CPU that OpenBLAS already knows. */
  const char *detected = getenv("CIRCLE_TEST_CORENAME");
  if (detected == NULL) detected = circle_blas_corename();
  const char *pick = better_core(detected);
  if (pick == NULL) return;
  setenv("OPENBLAS_CORETYPE", pick, 1);
  setenv("CIRCLE_BLAS_REEXEC", "1", 1);
  fprintf(stderr,
          "circle: OpenBLAS chose its '%s' kernels on a CPU that runs "
          "%s; re-executing with OPENBLAS_CORETYPE=%s\n",
          detected, pick, pick);
  execv("/proc/self/exe", argv);
  /* exec failed: carry on with the slow kernels rather than not at all. */
  perror("circle: re-exec for OPENBLAS_CORETYPE failed");
  unsetenv("OPENBLAS_CORETYPE");
}
