"""ctest: the CMake-built Python module loads into Python (its ops register in torch.ops.fastpurify) and draws the
reference's noise.  Usage: python tests/cpp/check_module.py path/to/_C.cpython-*.so"""

import importlib.util
import sys

import torch

from fastpurify.ops.reference.philox import normal_ref, philox_bits

spec = importlib.util.spec_from_file_location("fastpurify._C", sys.argv[1])
module = importlib.util.module_from_spec(spec)  # loads the library: the ops' static registrations run
spec.loader.exec_module(module)
seeds = torch.tensor([3, -5, 1 << 40])
r0, r1 = torch.ops.fastpurify.philox_bits(seeds, 1001, 4, 1, 0)
w0, w1 = philox_bits(seeds, 1001, 4, 1, 0)
assert torch.equal(r0, w0) and torch.equal(r1, w1), "words differ from the reference"
z = torch.ops.fastpurify.normal(seeds, 1001, 4, 1, 0)
torch.testing.assert_close(z, normal_ref(seeds, (3, 1001), step=4, purpose=1), atol=2e-6, rtol=2e-6)
print(f"ok: {sys.argv[1]} ({torch.ops.fastpurify.build_info()}, noise on {torch.ops.fastpurify.cpu_isa()})")
