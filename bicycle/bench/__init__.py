"""Benchmarks (``bicycle bench``): the fused ops against their references (:mod:`.ops`), the training
step against the original-style reference step (:mod:`.step`), batch preparation in CPU training
(:mod:`.prep`); shared timing, metadata and JSON writing in :mod:`.common`; the command in :mod:`.command`.
Imports nothing heavy: each command imports what it measures."""
