"""Each `Config` field's command-line flag, written once on the field (DESIGN §1).

A field carries a `Flag` (its help, panel and spelling) in its metadata; `options` resolves every Flag
against its field's type and default into an `Option`: the choices, the default as --help shows it, the
argv that sets a value and the parse of a value written as text. The CLI turns Options into Typer
options, and a sweep writes each run's `zocli train` argv with them, so both read a value the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

NONE_WORD = "none"  # what an optional flag takes to clear a value a preset set
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class Flag:
    help: str
    panel: str
    shown_default: str | None = None  # how --help reads the default where the value would not say it
    negative: str | None = None  # a boolean's spelling for False (True is --<name>); None: --no-<name>
    metavar: str | None = None


def flag(default: Any, help: str, panel: str, **how: Any) -> Any:
    """A dataclass field defaulting to `default` that carries its flag."""
    return dataclasses.field(default=default, metadata={"flag": Flag(help, panel, **how)})


class _GivenNone:
    """`none` given on the command line: unlike a flag left out, it clears what a preset set."""

    def __repr__(self) -> str:
        return NONE_WORD


NONE_GIVEN = _GivenNone()


def given(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags actually given: None means left out, NONE_GIVEN an explicit None."""
    return {key: None if value is NONE_GIVEN else value for key, value in flags.items() if value is not None}


@dataclass(frozen=True)
class Option:
    name: str
    flag: Flag
    kind: type  # bool, int, float or str
    choices: tuple[str, ...]
    optional: bool  # None is a value of the field
    default: Any

    @property
    def spelling(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def negative(self) -> str:
        return self.flag.negative or f"--no-{self.spelling[2:]}"

    @property
    def decls(self) -> tuple[str, ...]:
        return (f"{self.spelling}/{self.negative}",) if self.kind is bool else (self.spelling,)

    @property
    def metavar(self) -> str:
        if self.flag.metavar is not None:
            return self.flag.metavar
        if self.choices:
            return "|".join(self.choices)
        return {bool: "", int: "INT", float: "FLOAT", str: "TEXT"}[self.kind]

    @property
    def shown_default(self) -> str:
        if self.flag.shown_default is not None:
            return self.flag.shown_default
        if self.kind is bool:  # the spelling that gives it, as click shows a flag pair's default
            return (self.spelling if self.default else self.negative)[2:]
        return str(self.default)

    def argv(self, value: Any) -> list[str]:
        """The arguments that set this field to `value`."""
        if value is None:
            if not self.optional:
                raise ValueError(f"{self.spelling} cannot be {NONE_WORD}")
            return [self.spelling, NONE_WORD]
        if self.kind is bool:
            return [self.spelling if value else self.negative]
        return [self.spelling, str(value)]

    def parse(self, text: str) -> Any:
        """A value written as text (`none` is None for an optional field); ValueError if it is not one."""
        if self.optional and text.lower() == NONE_WORD:
            return None
        if self.kind is bool:
            if text.lower() not in TRUE + FALSE:
                raise ValueError(f"{text!r} is not a boolean (true or false)")
            return text.lower() in TRUE
        try:
            return self.kind(text)
        except ValueError:
            words = {int: "an integer", float: "a number"}[self.kind] + (f" or {NONE_WORD}" if self.optional else "")
            raise ValueError(f"{text!r} is not {words}") from None


def options(config_class: type) -> dict[str, Option]:
    """Every field's Option, in field order."""
    hints = get_type_hints(config_class)
    return {f.name: _option(f, hints[f.name]) for f in dataclasses.fields(config_class)}


def _option(field: dataclasses.Field, annotation: Any) -> Option:
    optional = type(None) in get_args(annotation)
    kind = next(a for a in get_args(annotation) if a is not type(None)) if optional else annotation
    choices = tuple(get_args(kind)) if get_origin(kind) is Literal else ()
    return Option(field.name, field.metadata["flag"], str if choices else kind, choices, optional, field.default)
