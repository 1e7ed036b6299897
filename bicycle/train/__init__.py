"""Training: network construction, the capture-ready step, and the loop."""
