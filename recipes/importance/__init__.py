"""Layer importance: which attention layers to give a Mamba mixer next (Apriel-H1 paper, section 3.1).

* :mod:`.loo`: leave-one-out, ``I_l = P(M) - P(M without layer l)`` (cheap, no training).
* :mod:`.mmr`: MIL-Mamba-Replacement, the KD loss after a short distillation with only layer l's mixer
  replaced (costly, resumable, shardable).

Both write a ranking file (:mod:`.ranking`) that ``python -m conversion.convert --importance FILE`` reads,
and a plot (:mod:`.plots`). Command line: ``python -m recipes.importance {loo,mmr,merge,plot} --help``.
"""

from recipes.importance.layers import skip_layer
from recipes.importance.loo import LooResult, leave_one_out
from recipes.importance.ranking import ranking_payload, read_ranking, write_ranking

__all__ = ["LooResult", "leave_one_out", "ranking_payload", "read_ranking", "skip_layer", "write_ranking"]
