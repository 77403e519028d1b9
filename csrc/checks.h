// Input checks for every op entry point: a failing check names the argument and what was expected.
#pragma once
#include <ATen/core/Tensor.h>  // not ATen/ATen.h: every translation unit pays for its headers

#define FP_CHECK_DEVICE(x, dev) TORCH_CHECK((x).device().type() == (dev), #x " must be on ", dev, ", got ", (x).device())
#define FP_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define FP_CHECK_DTYPE(x, dt) TORCH_CHECK((x).scalar_type() == (dt), #x " must be ", dt, ", got ", (x).scalar_type())
#define FP_CHECK_DIM(x, d) TORCH_CHECK((x).dim() == (d), #x " must have ", d, " dims, got ", (x).dim())
