"""Attack harness: PGD-EOT and N-fold re-evaluation."""

from .pgd import PGDConfig, attack_seeds, eot_gradient, pgd_eot, reevaluate

__all__ = ["PGDConfig", "pgd_eot", "eot_gradient", "reevaluate", "attack_seeds"]
