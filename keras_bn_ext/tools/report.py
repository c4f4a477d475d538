"""Model report (being written)."""


def report(model):
    raise NotImplementedError
