/* blas.c -- OpenBLAS kernel selection: make sure the fast kernels are loaded.
 *
 * Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) does not know some newer CPUs and
 * falls back to generic "Prescott"-class kernels, about three times slower
 * than the SkylakeX or Haswell kernels the CPU can run. OpenBLAS reads
 * OPENBLAS_CORETYPE only when it is loaded, so when we see a generic core on
 * a CPU with AVX-512F or AVX2 and the user has not chosen a core, we set the
 * variable and re-execute ourselves. CIRCLE_BLAS_REEXEC guards against a
 * second re-exec. A user's OPENBLAS_CORETYPE is always respected.
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

const char *circle_blas_pick_coretype(const char *corename, bool has_avx512f,
                                      bool has_avx2) {
  if (corename == NULL) return NULL;
  bool generic = false;
  for (size_t k = 0; generic_cores[k] != NULL; k++)
    if (strcasecmp(corename, generic_cores[k]) == 0) generic = true;
  if (!generic) return NULL;
  if (has_avx512f) return "SkylakeX";
  if (has_avx2) return "Haswell";
  return NULL;
}

const char *circle_blas_corename(void) {
  const char *name = openblas_get_corename();
  return name != NULL ? name : "unknown";
}

void circle_blas_ensure_kernel(int argc, char **argv) {
  (void)argc;
  if (getenv("OPENBLAS_CORETYPE") != NULL) return;
  if (getenv("CIRCLE_BLAS_REEXEC") != NULL) return;
  __builtin_cpu_init();
  /* CIRCLE_TEST_CORENAME stands in for the detected core so the tests can
   * exercise the re-exec on a CPU that OpenBLAS already knows. */
  const char *detected = getenv("CIRCLE_TEST_CORENAME");
  if (detected == NULL) detected = circle_blas_corename();
  const char *pick = circle_blas_pick_coretype(
      detected, __builtin_cpu_supports("avx512f"),
      __builtin_cpu_supports("avx2"));
  if (pick == NULL) return;
  setenv("OPENBLAS_CORETYPE", pick, 1);
  setenv("CIRCLE_BLAS_REEXEC", "1", 1);
  fprintf(stderr,
          "circle: OpenBLAS chose generic '%s' kernels on a CPU that runs "
          "%s; re-executing with OPENBLAS_CORETYPE=%s\n",
          detected, pick, pick);
  execv("/proc/self/exe", argv);
  /* exec failed: carry on with the slow kernels rather than not at all. */
  perror("circle: re-exec for OPENBLAS_CORETYPE failed");
  unsetenv("OPENBLAS_CORETYPE");
}
