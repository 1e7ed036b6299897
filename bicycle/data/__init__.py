"""Datasets: the protocol every dataset plugin follows, the built-in procedural dataset, folders."""
