"""Shared fixtures. Torch threads are capped: the CI machine has 2 cores (design.md section 8)."""

import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
