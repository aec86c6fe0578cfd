"""The recipe that trains the model organisms from a seed: corpus, tokenizer, training, planting."""
