"""Attack harness: PGD-EOT (ℓ∞/ℓ2, chunked EOT, per-sample seeds, CE/margin/DLR, best iterate), APGD-EOT, adaptive
attacks on whole defences and their components, N-fold re-evaluation, and adapters for AutoAttack / torchattacks."""

from .adapters import as_forward, autoattack_library, run_autoattack, run_torchattacks
from .adaptive import AttackSpec, Defence, default_attacks, run_attack
from .apgd import apgd_eot
from .losses import LOSSES, get_loss
from .pgd import PGDConfig, attack_seeds, eot_gradient, fixed_noise_seeds, pgd_eot, random_start, reevaluate

__all__ = ["PGDConfig", "pgd_eot", "apgd_eot", "eot_gradient", "reevaluate", "attack_seeds", "fixed_noise_seeds", "random_start",
           "as_forward", "autoattack_library", "run_autoattack", "run_torchattacks", "AttackSpec", "Defence",
           "default_attacks", "run_attack", "LOSSES", "get_loss"]
