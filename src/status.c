/* status.c -- circle_status messages and names, generated from the one table
 * in circle.h (CIRCLE_STATUS_MAP) so codes and strings cannot drift apart. */
#include "circle/circle.h"

const char *circle_status_str(int status) {
  switch (status) {
#define CIRCLE__STATUS_STR(name, value, msg) \
  case value:                               \
    return msg;
    CIRCLE_STATUS_MAP(CIRCLE__STATUS_STR)
#undef CIRCLE__STATUS_STR
  }
  return "unknown status";
}

const char *circle_status_name(int status) {
  switch (status) {
#define CIRCLE__STATUS_NAME(name, value, msg) \
  case value:                                 \
    return #name;
    CIRCLE_STATUS_MAP(CIRCLE__STATUS_NAME)
#undef CIRCLE__STATUS_NAME
  }
  return "EUNKNOWN";
}
