"""Multi-round purification and N-run ensembles with vote / logit / softmax aggregation (docs/METHODS.md §6).

MultiRound chains purifiers (Lee & Kim's "gradual noise": e.g. t* = 30, 30, 50, 125 …); every round draws from
its own Philox round word, so the rounds are independent and still a pure function of the sample seed.
EnsembleClassifier runs N independent purifications (per-sample seeds derived per run) and aggregates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..api import InferenceModule, per_sample_seeds
from ..ops import derive_seeds, streams

AGGREGATIONS = ("logits", "softmax", "vote")


class MultiRound(InferenceModule):
    """x → p_R(… p_2(p_1(x))): each purifier in `rounds` runs with round word r (its noise stream).  Any purifier
    taking (x, seed=, round=) works, so guided purifiers compose too."""

    def __init__(self, rounds: list[nn.Module]):
        super().__init__()
        if not rounds:
            raise ValueError("MultiRound needs at least one round")
        self.rounds = nn.ModuleList(rounds)

    @property
    def nfe(self) -> int:
        return sum(p.config.nfe for p in self.rounds)

    @property
    def last_nfe(self) -> int | None:
        counts = [p.last_nfe for p in self.rounds]
        return None if None in counts else sum(counts)

    def first_round(self):
        return self.rounds[0].first_round()

    def forward(self, x: torch.Tensor, seed=None, round: int = 0, grad: str | None = None,
                trace: list | None = None) -> torch.Tensor:
        if round != 0:
            raise ValueError(f"a MultiRound numbers its own rounds 0..{len(self.rounds) - 1}; got round={round}")
        seeds = per_sample_seeds(seed, x.shape[0], x.device)
        for r, purifier in enumerate(self.rounds):
            x = purifier(x, seed=seeds, round=r, grad=grad, trace=trace)
        return x


class EnsembleClassifier(InferenceModule):
    """Aggregate classifier(purifier(x)) over n_runs independent purifications.

    'logits': mean logits (DiffPure's BPDA defence check); 'softmax': log of the mean probabilities;
    'vote': log of the vote shares (one-hot argmax counts; ties resolve to the lowest class index, as
    argmax does).  The vote has no useful gradient: attack the 'logits' or 'softmax' form, or a surrogate.
    """

    def __init__(self, purifier: nn.Module, classifier: nn.Module, n_runs: int = 10, aggregate: str = "vote",
                 seed=None):
        super().__init__()
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
        if n_runs < 1:
            raise ValueError(f"n_runs must be >= 1, got {n_runs}")
        self.purifier, self.classifier, self.n_runs, self.aggregate, self.seed = (
            purifier, classifier.eval(), n_runs, aggregate, seed)

    def forward(self, x: torch.Tensor, seed=None, grad: str | None = None) -> torch.Tensor:
        self._ensure_eval()
        base = per_sample_seeds(self.seed if seed is None else seed, x.shape[0], x.device)
        outs = []
        for run in range(self.n_runs):
            seeds = derive_seeds(base, torch.full_like(base, streams.ENSEMBLE_RUN + run))
            outs.append(self.classifier(self.purifier(x, seed=seeds, grad=grad)))
        logits = torch.stack(outs)  # (N, B, classes)
        if self.aggregate == "logits":
            return logits.mean(0)
        if self.aggregate == "softmax":
            return logits.softmax(-1).mean(0).clamp_min(1e-12).log()
        votes = F.one_hot(logits.argmax(-1), logits.shape[-1]).float().mean(0)
        return votes.clamp_min(1e-12).log()
