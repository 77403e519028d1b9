"""Transfer check for AGDM (digits): PGD-50 against the auxiliary network φ alone, then the AGDM and DiffPure
pipelines re-evaluated on those images.  Usage: python benchmarks/agdm_transfer_check.py > out.json"""
import json, torch
from fastpurify.attacks import PGDConfig, pgd_eot, reevaluate
from fastpurify.methods import build_method
from fastpurify.zoo import digits, digits_aux
torch.manual_seed(0)
m, aux = digits(), digits_aux()
x, y = m.test_data(); x, y = x[:32], y[:32]
ids = torch.arange(32)
x_adv = pgd_eot(lambda xb, s: aux(xb), x, y, ids, PGDConfig(0.15, 50, 2.5 * 0.15 / 50))
with torch.no_grad():
    aux_acc = float((aux(x_adv).argmax(1) == y).float().mean())
pur = build_method("agdm", m.diffusion, aux)
fwd = lambda xb, s: m.classifier(pur(xb, seed=s))
r = reevaluate(fwd, x_adv, y, ids, 5, run_seed=7)
# also: the same φ-adversarial images against DiffPure
pd = build_method("diffpure", m.diffusion)
r2 = reevaluate(lambda xb, s: m.classifier(pd(xb, seed=s)), x_adv, y, ids, 5, run_seed=7)
out = {"attack": "PGD-50 on the auxiliary network alone (transfer), linf 0.15, first 32 test images",
       "aux_acc_on_own_adv": aux_acc, "agdm": {k: r[k] for k in ("mean", "worst", "majority")},
       "diffpure": {k: r2[k] for k in ("mean", "worst", "majority")}}
print(json.dumps(out, indent=2))
