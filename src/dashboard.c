/* dashboard.c -- embeds src/dashboard.html into the binary, so circled
 * serves its dashboard with no file to install. It must keep true: the page
 * is the file byte for byte, followed by one NUL.
 *
 * The assembler's .incbin copies the file into .rodata at build time; the
 * path is relative to the directory the compiler runs in (the repository
 * root, where make runs), and the Makefile makes dashboard.o depend on the
 * file so an edit to the page rebuilds it. Override the path with
 * -DCIRCLE_DASHBOARD_FILE=\"...\" when compiling from elsewhere.
 */
#include "dashboard.h"

#ifndef CIRCLE_DASHBOARD_FILE
#define CIRCLE_DASHBOARD_FILE "src/dashboard.html"
#endif

__asm__(".pushsection .rodata\n"
        ".balign 16\n"
        "circle__dashboard_start:\n"
        ".incbin \"" CIRCLE_DASHBOARD_FILE "\"\n"
        "circle__dashboard_end:\n"
        ".byte 0\n"
        ".popsection\n");

extern const char circle__dashboard_start[] __attribute__((visibility("hidden")));
extern const char circle__dashboard_end[] __attribute__((visibility("hidden")));

const char *circle_dashboard_html(size_t *len) {
  if (len) *len = (size_t)(circle__dashboard_end - circle__dashboard_start);
  return circle__dashboard_start;
}
