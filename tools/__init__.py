"""circuitsleuth mechanism layer: model loading, architecture adapters, typed specs, experiments.

Nothing here imports openai, langgraph or chromadb.
"""
