/* For the CUDA test programs, which run under ASan: its default shadow-gap
 * protection makes CUDA's initialisation fail, and the driver keeps
 * allocations until exit. The sanitiser runtime reads these hooks at start-up
 * (ASAN_OPTIONS from the environment still applies). Include once, in the
 * program's main file. */
#ifndef IISAN_TESTS_CUDA_ASAN_H
#define IISAN_TESTS_CUDA_ASAN_H

const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "protect_shadow_gap=0"; }
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) {
    return "leak:libcuda.so\nleak:libcudart.so\nleak:libcublas.so\nleak:libcublasLt.so\n"
           "leak:libnvidia-\n";
}

#endif
