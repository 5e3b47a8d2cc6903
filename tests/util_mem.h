/* util_mem.h -- memory helpers for the codec tests: cap this process's
 * address space a given number of bytes above what it uses now, so that a
 * decoder that builds more than a bounded amount fails (with 503, out of
 * memory) instead of merely being slow.
 *
 * Nothing here uses check; the caller asserts.
 */
#ifndef TESTS_UTIL_MEM_H
#define TESTS_UTIL_MEM_H

#include <stdbool.h>
#include <stddef.h>

/* Sets RLIMIT_AS (soft and hard) to the current VmSize plus extra bytes.
 * Returns false when it could not (no /proc, setrlimit refused). Under
 * AddressSanitizer, which reserves terabytes of address space, it does
 * nothing and returns true. Call it in a forked test: it cannot be undone. */
bool util_cap_address_space(size_t extra);

#endif /* TESTS_UTIL_MEM_H */
