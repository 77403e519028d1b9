// The Philox noise of one tile (noise.cpp), declared apart from tile.h so noise.cpp needs no torch headers.
#pragma once
#include <cstdint>

namespace fastpurify {

constexpr int64_t kTile = 2048; // elements per tile: the unit of parallel work and of the noise buffers

// ξ(seed, step, purpose, round) for elements [e0, e0 + len) of the stream of `seed` into z (len ≤ kTile).
void noise_tile(float* z, uint64_t seed, int64_t e0, int64_t len, uint32_t step, uint32_t purpose, uint32_t round);

}  // namespace fastpurify
