"""Pseudo-labels for unlabelled speech: embed a pool, cluster it, drop unreliable members, report.

The stages, lowest first: ``cluster`` (k-means, agglomerative; collapse checks), ``estimate``
(the number of clusters for ``clusters="auto"``), ``filter`` (which members to keep),
``diagnostics`` (NMI/ARI/purity against true speakers, for the report only) and ``run`` (the
orchestrator behind ``sslspeaker pseudolabel``). This package sits above ``inference`` and
below ``commands``.
"""

from .errors import PseudoLabelError
from .run import PseudoLabelOptions, pseudolabel

__all__ = ["PseudoLabelError", "PseudoLabelOptions", "pseudolabel"]
