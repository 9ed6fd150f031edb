"""Structured pruning: LRP rules and composites (Yeom et al.), filter-importance criteria behind one protocol,
and the pruning schedule (selection, removal, BatchNorm re-estimation)."""
