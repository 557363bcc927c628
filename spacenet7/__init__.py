"""spacenet7: monthly Planet mosaics -> tracked building footprints (SpaceNet 7 style)."""

__version__ = "0.1.0"

__all__ = ["Model", "__version__"]  # the stages: spacenet7.stages (the registry)


def __getattr__(name: str) -> object:
    """``spacenet7.Model`` (:mod:`spacenet7.api`), imported on first use so that the CLI starts fast."""
    if name == "Model":
        from spacenet7.api import Model

        return Model
    raise AttributeError(f"module 'spacenet7' has no attribute {name!r}")
