"""AdaIN-style z injection for bicycle: modulates features instead of concatenating z."""
