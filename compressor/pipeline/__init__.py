"""The recipe, the runner that drives passes, exports and benchmarks, the report and the CI gate."""
