"""Typed errors. Each subclasses a builtin and carries the data an operator needs to act."""

from __future__ import annotations


class WellwatchError(Exception):
    """Base of all wellwatch errors."""


class ConfigError(WellwatchError, ValueError):
    """A configuration key holds a value that is not allowed."""

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config key {key!r}: got {value!r}; {allowed}")


class NamingError(WellwatchError, ValueError):
    """A file name does not match the naming preset, or names an impossible well."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        super().__init__(f"{name}: {reason}")


class FrameReadError(WellwatchError, IOError):
    """A frame file could not be read as a valid image; `retryable` says if waiting may help."""

    def __init__(self, path: str, reason: str, retryable: bool = True):
        self.path, self.reason, self.retryable = path, reason, retryable
        super().__init__(f"{path}: {reason}")


class ContractError(WellwatchError, ValueError):
    """A model file lacks a valid model contract, or it does not fit its slot."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"model {path}: {reason}")


class ProviderError(WellwatchError, RuntimeError):
    """The execution provider the configuration requires is not available."""


class StartupError(WellwatchError, RuntimeError):
    """The daemon cannot start; the message names what to fix."""


class UsageError(WellwatchError, ValueError):
    """A command-line argument the user must fix (the message names it)."""
