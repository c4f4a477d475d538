"""PyTorch BatchNorm import/export (being written)."""


def from_torch(module):
    raise NotImplementedError


def to_torch(layer):
    raise NotImplementedError
