"""Attack harness: PGD-EOT (ℓ∞/ℓ2, chunked EOT, per-sample seeds), N-fold re-evaluation, sanity checks, and
adapters for AutoAttack / torchattacks (optional extras)."""

from .adapters import as_forward, run_autoattack, run_torchattacks
from .pgd import PGDConfig, attack_seeds, eot_gradient, fixed_noise_seeds, pgd_eot, random_start, reevaluate
from .sanity import large_eps_accuracy, sanity_checks, zero_gradient_fraction

__all__ = ["PGDConfig", "pgd_eot", "eot_gradient", "reevaluate", "attack_seeds", "fixed_noise_seeds", "random_start",
           "as_forward", "run_autoattack", "run_torchattacks", "sanity_checks", "large_eps_accuracy",
           "zero_gradient_fraction"]
