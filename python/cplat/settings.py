"""Reading settings files: one TOML reader for the service's and the agent's settings.

Both `cplat serve` (``[serve]``) and `cplat agent` (``[agent]``) take a TOML file; a file that
is missing, unreadable or not TOML is the caller's mistake and must say which file, never
raise a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from cplat.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["read_toml"]


def read_toml(file: str | Path) -> dict[str, Any]:
    """Return the tables of a TOML settings file.

    Parameters
    ----------
    file : str or Path
        The file.

    Raises
    ------
    InputError
        When it is missing, unreadable, not UTF-8 or not TOML; ``source`` names the file.
    """
    source = str(file)
    try:
        return tomllib.loads(Path(file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("file not found", source=source) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read config ({exc})", source=source) from None
