"""circuitsleuth evals: model organisms, benchmark questions, answer keys and scoring."""
