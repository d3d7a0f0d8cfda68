"""Who wants which paper: the subscribers file loaded and validated, the `query:` language, `regex:`
patterns, the reference evaluator (the oracle) and the fast index-based matcher."""
