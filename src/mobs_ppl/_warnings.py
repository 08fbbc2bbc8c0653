"""Warning category of the package."""

__all__ = ["MobsPplWarning"]


class MobsPplWarning(UserWarning):
    """Input was unusual and has been fixed; the message says what was done."""
