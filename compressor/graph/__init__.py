"""Graph analysis: the one torch.fx tracer, the residual/concat modules it keeps whole, channel coupling
(the dependency graph, the one owner of which channels move together) and BatchNorm folding / Tune mode."""
