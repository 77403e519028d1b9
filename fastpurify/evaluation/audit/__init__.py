"""`fastpurify audit`: any user's defence (a black-box nn.Module), the protocol's attack ensemble and masking checks
plus the black-box diagnostics, and a verdict (docs/AUDIT.md)."""

from .blackbox import AuditError, BlackBoxPurifier
from .run import audit
from .settings import AuditSettings

__all__ = ["AuditError", "AuditSettings", "BlackBoxPurifier", "audit"]
