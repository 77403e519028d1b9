"""Print which instruction set each layer of the CPU stack runs in this process's environment (scripts/test.sh
prints it at the start of every lane, so the log says what each lane tested)."""

import os
import subprocess
import sys

import torch

_PROBE = "import torch; a = torch.ones(8, 8); a @ a"


def mkl_isa() -> str:
    """MKL names its code path in its first MKL_VERBOSE line ('... for Intel(R) 64 architecture <ISA> ...')."""
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**os.environ, "MKL_VERBOSE": "1"},
                         capture_output=True, text=True, timeout=120).stdout
    for line in out.splitlines():
        if "architecture" in line:
            isa = line.split("architecture", 1)[1]
            return isa.split(" enabled processors")[0].split(" with support")[0].split(",")[0].strip()
    return "not reported (MKL not in use?)"


def main() -> None:
    try:
        from fastpurify.ops import _ext

        why = _ext.load_error()  # loads the compiled extension, which registers torch.ops.fastpurify
        ours = f"unavailable ({why})" if why else torch.ops.fastpurify.cpu_isa()
    except Exception as e:  # the lane still runs; the tests say what is wrong with the extension
        ours = f"unavailable ({type(e).__name__}: {e})"
    print(f"lane ISA: ATen {torch.backends.cpu.get_cpu_capability()} | MKL {mkl_isa()} | "
          f"oneDNN cap {os.environ.get('ONEDNN_MAX_CPU_ISA', 'none (widest)')} | fastpurify C++ {ours} | "
          f"torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
