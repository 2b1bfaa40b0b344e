"""Fixed-point solvers for implicit networks ``x = σ(Ax + w)``."""

__all__: list[str] = []
