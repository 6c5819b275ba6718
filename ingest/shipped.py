"""Files the service ships beside its code: inside the installed wheel, or at their place in a source checkout.

The wheel carries copies (pyproject.toml's force-include); an editable install or a checkout reads the originals,
which are the ones that are edited. One rule for every such file, so none is read from a stale copy.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_PACKAGE = "ingest"
_REPOSITORY = Path(__file__).resolve().parent.parent


def shipped_dir(in_package: str, in_repository: str) -> Path:
    """The directory `ingest/<in_package>` of an installed wheel, else `<in_repository>` of the checkout."""
    packaged = resources.files(_PACKAGE).joinpath(in_package)
    if packaged.is_dir():
        return Path(str(packaged))
    return _REPOSITORY / in_repository


def shipped_file(in_package: str, in_repository: str) -> Path:
    """The file `ingest/<in_package>` of an installed wheel, else `<in_repository>` of the checkout."""
    packaged = resources.files(_PACKAGE).joinpath(in_package)
    if packaged.is_file():
        return Path(str(packaged))
    return _REPOSITORY / in_repository
