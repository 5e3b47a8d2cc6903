/* util_mem.c -- see util_mem.h. */
#include "util_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

bool util_cap_address_space(size_t extra) {
#if defined(__SANITIZE_ADDRESS__)
  (void)extra;
  return true;
#else
  FILE *f = fopen("/proc/self/status", "r");
  if (f == NULL) return false;
  char line[256];
  unsigned long long kib = 0;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "VmSize:", 7) == 0) kib = strtoull(line + 7, NULL, 10);
  fclose(f);
  if (kib == 0) return false;
  rlim_t cap = (rlim_t)(kib * 1024 + extra);
  struct rlimit rl = {cap, cap};
  return setrlimit(RLIMIT_AS, &rl) == 0;
#endif
}
