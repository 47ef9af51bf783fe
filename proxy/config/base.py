"""The shared ground of every config section: the frozen Struct base and the unit types.

A section that lives with its feature (``proxy/config/<feature>.py``) builds on these, so the
feature's settings sit beside each other without growing one file."""

from typing import Annotated

import msgspec
from msgspec import Meta

Seconds = Annotated[float, Meta(gt=0)]
Bytes = Annotated[int, Meta(gt=0)]
Count = Annotated[int, Meta(gt=0)]
Share = Annotated[float, Meta(ge=0, le=1)]
Name = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@/-]+$")]

KIB = 1024
MIB = 1024 * KIB


class ConfigError(Exception):
    """A configuration that cannot run; the message names the source and the field."""


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass
