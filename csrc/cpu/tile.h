// Tiled loops shared by the C++ CPU kernels.  Work is cut into tiles that lie inside one sample, so the per-element
// loops see a fixed sample (no division per element) and are simple enough to vectorise; at::parallel_for spreads
// the (sample, tile) pairs over threads.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "noise.h"

namespace fastpurify {

// f(b, e0, len) for every tile [e0, e0 + len) of every sample b < B of n elements.
template <typename F>
void for_each_tile(int64_t B, int64_t n, const F& f) {
  const int64_t per = (n + kTile - 1) / kTile;
  at::parallel_for(0, B * per, /*grain_size=*/8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / per, e0 = (i - b * per) * kTile;
      f(b, e0, std::min(kTile, n - e0));
    }
  });
}

}  // namespace fastpurify
