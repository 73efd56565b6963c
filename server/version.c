/* The build's identity (iisan --version, the iisan_build_info metric). The Makefile
 * compiles this file on every build with IISAN_VERSION and IISAN_GIT_DESCRIBE set. */
#include "server/serve.h"

#ifndef IISAN_VERSION
#define IISAN_VERSION "unknown"
#endif
#ifndef IISAN_GIT_DESCRIBE
#define IISAN_GIT_DESCRIBE "unknown"
#endif

const char iisan_version[] = IISAN_VERSION;
const char iisan_git_describe[] = IISAN_GIT_DESCRIBE;
