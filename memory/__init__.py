"""circuitsleuth memory: vector memory of findings, run store and experiment cache."""
