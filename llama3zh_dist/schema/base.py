"""What every config dataclass shares: a check that names the key and says why a value is rejected."""

from __future__ import annotations


class ConfigValueError(ValueError):
    """A rejected value: ``key`` is the field's name inside its group, ``reason`` the why."""

    def __init__(self, key: str, value, reason: str):
        super().__init__(f"{key}={value!r}: {reason}")
        self.key, self.value, self.reason = key, value, reason


def require(ok: bool, key: str, value, reason: str) -> None:
    if not ok:
        raise ConfigValueError(key, value, reason)


def one_of(key: str, value, allowed: tuple, why: str = "") -> None:
    require(value in allowed, key, value, f"use one of {', '.join(map(str, allowed))}" + (f" ({why})" if why else ""))
