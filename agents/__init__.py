"""circuitsleuth agents: the investigation graph, brains, reporter and the ``sleuth`` CLI."""
