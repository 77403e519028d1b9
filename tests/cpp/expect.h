// The check macro of the standalone C++ tests (tests/cpp/test_*.cpp, run by ctest): EXPECT(cond, printf-args...)
// prints the file, line and message of a failed check and counts it; finish() prints the verdict and is main's
// exit status.
#pragma once

#include <cstdio>

namespace fastpurify_test {

inline int failures = 0;

inline int finish() {
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}

}  // namespace fastpurify_test

#define EXPECT(cond, ...)                              \
  do {                                                \
    if (!(cond)) {                                    \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                       \
      std::printf("\n");                              \
      ++fastpurify_test::failures;                    \
    }                                                 \
  } while (0)
