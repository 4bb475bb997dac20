"""The optional parts of strangler: a module that needs one of pyproject.toml's extras imports
its dependency through `missing_extra`, so a plain `pip install strangler` that lacks it fails
with the extra to install rather than a bare ImportError."""

from __future__ import annotations

__all__ = ["MissingExtraError", "missing_extra"]


class MissingExtraError(ImportError):
    """A module needs a package that only one of strangler's extras installs."""

    def __init__(self, message: str, *, extra: str, name: str | None) -> None:
        super().__init__(message, name=name)
        self.extra = extra


def missing_extra(extra: str, feature: str, exc: ImportError) -> MissingExtraError:
    """The error to raise `from exc` when `feature` could not import its optional dependency."""
    return MissingExtraError(
        f"{feature} needs the Python package {exc.name!r}, which is not installed; install the "
        f"'{extra}' extra: pip install 'strangler[{extra}]' (in a checkout: pip install -e '.[{extra}]')",
        extra=extra,
        name=exc.name,
    )
