"""Answer keys of the benchmark: the components and edges that matter for each behaviour,
found by brute force (`evals.keys.compute`), in ``<name>.json`` files beside this module."""

from evals.keys.schema import KEYS_DIR, AnswerKey, ComponentEffect, Edge, Effect, KeyMethod, KeyPrompts, load_key

__all__ = ["KEYS_DIR", "AnswerKey", "ComponentEffect", "Edge", "Effect", "KeyMethod", "KeyPrompts", "load_key"]
