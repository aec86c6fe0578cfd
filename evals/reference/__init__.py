"""Independent reference implementations that the correctness tests compare `tools/` against.

Dev/test code only: `tools/` never imports from here.
"""
