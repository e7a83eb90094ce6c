"""The search: spaces, the HeuristicSampler (Algorithm 1), the study runner, comparison, the Ray engine."""
