"""Test-session settings: one CPU thread for torch (the test machines are small and shared)."""

import torch

torch.set_num_threads(1)
