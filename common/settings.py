"""One configuration mechanism for every binary: declare a field once, get its flag, variable and help.

A binary's settings are a ``BinarySettings`` subclass (pydantic-settings): each field has its type (units
in the name: ``_s``, ``_watts``), default, validation (pydantic constraints or the annotated types below)
and help text, declared once with ``setting()``. From that declaration ``load()`` derives:

- the flag: ``--field-name``, or the ``flag=`` given (kept where a published flag name differs), plus a
  one-letter alias where ``short=`` gives one (``-v``);
- the environment variable: the class's prefix + the flag in upper snake case (``--log-level`` →
  ``EO_LOG_LEVEL``), read by a pydantic-settings source; a flag wins over its variable. The prefix is
  ``EO_`` unless the class sets ``model_config = SettingsConfigDict(env_prefix=...)`` (the demo's
  ``EO_DEMO_``);
- ``--help``: every flag with its help, variable and default;
- errors: a bad value raises ``SettingsError`` naming the flag and the variable (never a traceback,
  never the whole input echoed); the binaries print it and exit with status 2. A check across fields
  names its settings with ``flag_for`` / ``variables_for`` / ``flag_and_variable`` (derived, never
  spelled out), and two settings that mean nothing alone use the one rule ``require_together``.

Booleans take ``--flag`` (true), ``--flag=false`` or ``--flag false``, and ``true/false/1/0/yes/no/on/off``
in variables: one parser for every binary.

Why pydantic-settings with our own name derivation rather than its built-in CLI: the flag and variable
names are a published interface (manifests, docs, users' scripts), and several flags spell units out
(``--interval-seconds``) where the field says ``interval_s``; the derivation keeps them unchanged.
"""

from __future__ import annotations

import argparse
import contextvars
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "EO_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_MAX_ECHO = 80
# A check across fields (a model validator) writes its own message, naming several flags: longer.
_MAX_MODEL_MESSAGE = 400
# The environment that load()/from_values() read. Outside them it is None and no variable is read, so a
# settings object built in code (the demo's, the simulator's) never picks up a stray EO_* of the shell.
_environ: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("eo_env", default=None)

S = TypeVar("S", bound="BinarySettings")


class SettingsError(ValueError):
    """A setting has a bad value; the message names the flag and its environment variable."""


def setting(
    default: Any, help: str, *, flag: str | None = None, short: str | None = None, **constraints: Any
) -> Any:
    """A field of a ``BinarySettings``: its default, its help, (rarely) a flag name of its own and a
    one-letter alias (``short="-v"``)."""
    extra: dict[str, Any] = {key: value for key, value in (("flag", flag), ("short", short)) if value}
    return Field(default, description=help, json_schema_extra=extra or None, **constraints)


def parse_bool(value: object) -> bool:
    """The one boolean parser: ``true/false/1/0/yes/no/on/off`` (any case) or a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("must be true or false")


def _empty_is_none(value: object) -> object:
    return None if isinstance(value, str) and value == "" else value


def _existing_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"file {_short(str(value))!r} does not exist")
    return value


def _base_url(value: str | None) -> str | None:
    # The value is not echoed: a URL may carry credentials (https://user:password@host).
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL, e.g. https://10.0.0.5")
    return None if value is None else value.rstrip("/")


def _finite_positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a number > 0")
    return value


# Annotated types shared by the binaries' settings.
Flag = Annotated[bool, BeforeValidator(parse_bool)]
Seconds = Annotated[float, AfterValidator(_finite_positive)]
Port = Annotated[int, Field(ge=0, le=65535)]
OptionalText = Annotated[str | None, BeforeValidator(_empty_is_none)]
OptionalPath = Annotated[Path | None, BeforeValidator(_empty_is_none)]
ExistingFile = Annotated[Path | None, BeforeValidator(_empty_is_none), AfterValidator(_existing_file)]
# A base URL (paths are appended to it): http(s) only, trailing slashes dropped; empty is None.
OptionalBaseUrl = Annotated[str | None, BeforeValidator(_empty_is_none), AfterValidator(_base_url)]


class _FlagNamedEnvironment(PydanticBaseSettingsSource):
    """Reads ``<prefix><FLAG>`` for each field (names derived from the flags, see the module docstring)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        environ = _environ.get()
        env = env_name(flag_of(field, field_name), env_prefix(self.settings_cls))
        return (None if environ is None else environ.get(env)), env, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                values[name] = value
        return values


class BinarySettings(BaseSettings):
    """Base of every binary's settings: frozen, unknown keys refused, flags over ``EO_*`` variables."""

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", validate_default=True, env_prefix=ENV_PREFIX
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags arrive as init values and win; then the flag-named variables; then the defaults.
        return (init_settings, _FlagNamedEnvironment(settings_cls))

    # -- naming settings in a cross-field check's message ---------------------------------------------
    @classmethod
    def flag_for(cls, field: str) -> str:
        """The flag of ``field`` (``--tls-cert-file``)."""
        return flag_of(cls.model_fields[field], field)

    @classmethod
    def variable_for(cls, field: str) -> str:
        """The environment variable of ``field`` (``EO_TLS_CERT_FILE``)."""
        return env_name(cls.flag_for(field), env_prefix(cls))

    @classmethod
    def flag_and_variable(cls, field: str) -> str:
        """``--flag / EO_VARIABLE``: how a message names one setting."""
        return f"{cls.flag_for(field)} / {cls.variable_for(field)}"

    @classmethod
    def variables_for(cls, *fields: str) -> str:
        """``(EO_A, EO_B)``: the variables of the settings a message has named by flag."""
        return "(" + ", ".join(cls.variable_for(f) for f in fields) + ")"

    def require_together(self, first: str, second: str, advice: str = "") -> None:
        """The rule for two settings that mean nothing alone (a user name and its password, a
        certificate and its key): ``ValueError`` naming both when one is set without the other."""
        if (getattr(self, first) is None) != (getattr(self, second) is None):
            raise ValueError(
                f"{self.flag_for(first)} and {self.flag_for(second)} go together "
                f"{self.variables_for(first, second)}{advice}"
            )


def _extra(field: FieldInfo, key: str) -> str | None:
    extra = field.json_schema_extra
    value = extra.get(key) if isinstance(extra, dict) else None
    return value if isinstance(value, str) else None


def flag_of(field: FieldInfo, name: str) -> str:
    return _extra(field, "flag") or "--" + name.replace("_", "-")


def env_prefix(cls: type[BaseSettings]) -> str:
    """The class's variable prefix: ``EO_`` unless its ``model_config`` names another."""
    return str(cls.model_config.get("env_prefix") or ENV_PREFIX)


def env_name(flag: str, prefix: str = ENV_PREFIX) -> str:
    return prefix + flag.removeprefix("--").replace("-", "_").upper()


def _is_bool(field: FieldInfo) -> bool:
    return field.annotation is bool


def _metavar(field: FieldInfo) -> str | None:
    """``{a,b}`` for a field that takes one of a few words (a ``Literal``); else argparse's own."""
    if get_origin(field.annotation) is Literal:
        return "{" + ",".join(str(choice) for choice in get_args(field.annotation)) + "}"
    return None


def _short(text: str, limit: int = _MAX_ECHO) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def build_parser(
    cls: type[BinarySettings], prog: str, description: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    """The binary's argument parser, derived from its settings class."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prefix = env_prefix(cls)
    for name, field in cls.model_fields.items():
        flag = flag_of(field, name)
        short = _extra(field, "short")
        flags = (short, flag) if short else (flag,)
        default = field.default
        shown = "" if default is None else str(default)
        shown = shown.lower() if isinstance(default, bool) else shown
        shown = "none, required" if field.is_required() else shown or "none"
        help_text = f"{field.description or ''} (env {env_name(flag, prefix)}; default: {shown})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if _is_bool(field):
            parser.add_argument(
                *flags, dest=name, nargs="?", const="true", default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(
                *flags, dest=name, default=argparse.SUPPRESS, metavar=_metavar(field), help=help_text
            )
    return parser


def load(
    cls: type[S],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    epilog: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> S:
    """Settings from ``argv`` over ``environ`` (default: the process's) over the defaults.

    ``--help`` and argparse's own usage errors exit as argparse does (status 0 / 2); a bad value raises
    ``SettingsError``.
    """
    given = vars(build_parser(cls, prog, description, epilog).parse_args(argv))
    return from_values(cls, given, environ=environ)


def from_values(cls: type[S], values: Mapping[str, Any], *, environ: Mapping[str, str] | None = None) -> S:
    """Settings from field values (as text or typed) over ``environ`` (default: the process's) over the
    defaults. Constructing a settings class directly reads no environment at all."""
    token = _environ.set(os.environ if environ is None else environ)
    try:
        return cls(**values)
    except ValidationError as exc:
        raise SettingsError(describe(cls, exc)) from None
    finally:
        _environ.reset(token)


def describe(cls: type[BinarySettings], exc: ValidationError) -> str:
    """One line per bad field, naming its flag and variable, without echoing long input."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = error.get("loc") or ("",)
        name = str(loc[0])
        field = cls.model_fields.get(name)
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if field is None:
            lines.append(
                _short(message, _MAX_MODEL_MESSAGE) if not name else f"{_short(name)}: {_short(message)}"
            )
            continue
        lines.append(f"{cls.flag_and_variable(name)}: {_short(message)}")
    return "; ".join(lines)
