// FP_WIDE_CLONES: compile a function for AVX-512, AVX2 and the x86-64 baseline and pick one at load time (GCC/Clang
// target_clones, glibc ifunc), so a portable build still runs wide vectors where the CPU has them.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define FP_WIDE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FP_WIDE_CLONES
#endif
