"""Every named random stream of the package, in one table.

A Gaussian draw is a pure function of (per-sample seed, step, purpose, round, element index) — `reference/philox.py`
is its specification.  Two kinds of names keep uses apart:
- a *purpose* is the Philox counter's third word: which draw within one purification (the forward diffusion, the
  sampler steps, GDMP's guidance target);
- a *salt* separates the per-sample seeds of different uses derived from one run seed:
  `derive_seeds(base, salt + index)` (index: the draw number within that use).  Salts are multiples of 2⁴⁰, so
  indices below 2⁴⁰ never make two uses collide.
Attacks add their own name: each attack's run seed is salted by a stable hash of its name (`AttackSpec.seed_for`).
"""

from .reference.philox import FORWARD, GUIDANCE_TARGET, SEED_DERIVE, STEP

PURPOSES = {"forward": FORWARD, "step": STEP, "guidance_target": GUIDANCE_TARGET, "seed_derive": SEED_DERIVE}

ATTACK = 1 << 40          # EOT draws inside an attack's steps (index: step · eot + draw)
EVAL = 2 << 40            # report draws: the N fresh purifications of a candidate (index: draw)
ENSEMBLE_RUN = 3 << 40    # EnsembleClassifier's independent purification runs (index: run)
FIXED = 4 << 40           # the fixed-noise seeds of the deterministic white-box setting
START = 5 << 40           # PGD's random start
SELECT = 6 << 40          # selection draws: the S purifications that choose each sample's candidate (index: draw)

SALTS = {"attack": ATTACK, "eval": EVAL, "ensemble_run": ENSEMBLE_RUN, "fixed": FIXED, "start": START,
         "select": SELECT}
