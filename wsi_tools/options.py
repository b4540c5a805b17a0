"""One config system: frozen dataclasses whose fields carry their help, check and role.

Every config of the toolkit (training, mining, figures, extraction, the pipeline's
sections) declares its keys with :func:`option`. From that one declaration come:

- validation on construction (:func:`validate`, called in ``__post_init__``): the
  value's type (ints accepted for floats, YAML lists for tuples) and its check;
- reading a mapping (:func:`from_mapping`) with errors that name the key path and
  the file (``hnm.yaml: mining.alpha: must be >= 1, got -3``);
- ``--help`` texts and CLI flags (:func:`describe`, :func:`add_flags`), so each
  default lives in one place;
- the keys that change what is written (:func:`output_keys`), which resume and
  the batch engine compare against what a store or run folder recorded;
- the effective config as plain data (:func:`to_plain`) for ``--print-config``,
  checkpoints and provenance.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import yaml

from wsi_tools.config_file import deep_merge, read_yaml_mapping
from wsi_tools.errors import ConfigError

T = TypeVar("T")

Check = Callable[[Any], str | None]  # None when the value is fine, else what is wrong


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    check: Check | None = None,
    output: bool = True,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A config field. ``output``: changing it changes what is written (a resumed or
    skipped output made with another value is not the same output)."""
    metadata = {"help": help, "check": check, "output": output}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ------------------------------------------------------------------ ready-made checks


def at_least(bound: float) -> Check:
    return lambda value: None if value >= bound else f"must be >= {bound}"


def between(low: float, high: float) -> Check:
    return lambda value: None if low <= value <= high else f"must be in [{low}, {high}]"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def proper_fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def unit_interval(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


class one_of:  # noqa: N801 - reads as the other checks do: check=one_of("a", "b")
    """A check that the value is one of ``choices``; CLI flags offer the same choices."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def __call__(self, value: Any) -> str | None:
        return None if value in self.choices else f"must be one of {', '.join(self.choices)}"


def device_name(value: str) -> str | None:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return None
    return "must be auto, cpu, cuda or cuda:N"


# ------------------------------------------------------------------ validation


class FieldError(ConfigError):
    """A bad value for one field; :func:`from_mapping` adds the file and the key path."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"bad value for '{key}': {problem}")
        self.key = key
        self.problem = problem


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as the field's type, or a ``ValueError`` saying what was expected."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None:
            return None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected an integer")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError("expected a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("expected a number")
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError("expected a list")
        args = typing.get_args(hint)
        item_hints = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_hints) != len(value):
            raise ValueError(f"expected a list of {len(item_hints)}")
        return tuple(_coerce(item, item_hint) for item, item_hint in zip(value, item_hints, strict=True))
    if _is_config(hint):
        if not isinstance(value, hint):
            raise ValueError(f"expected a {hint.__name__}")
        return value
    raise TypeError(f"unsupported config field type {hint!r}")


def validate(config: Any) -> None:
    """Coerce and check every field of a frozen config dataclass (its ``__post_init__``)."""
    hints = typing.get_type_hints(type(config))
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        try:
            coerced = _coerce(value, hints[spec.name])
        except ValueError as error:
            raise FieldError(spec.name, f"{value!r} ({error})") from None
        if coerced is not value:
            object.__setattr__(config, spec.name, coerced)
        check = spec.metadata.get("check")
        problem = check(coerced) if check is not None and coerced is not None else None
        if problem:
            raise FieldError(spec.name, f"{coerced!r} ({problem})")


def from_mapping(cls: type, mapping: Mapping[str, Any], source: str, section: str = "") -> Any:
    """A config from a plain mapping (sections of nested configs as nested mappings).
    Errors name the file (``source``) and the key path."""
    prefix = f"{section}." if section else ""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{source}: {section or 'the config'} must be a mapping of key: value lines")
    hints = typing.get_type_hints(cls)
    known = {spec.name for spec in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - known)
    if unknown:
        import difflib

        guesses = [
            f"{prefix}{k}: did you mean {prefix}{close[0]}?"
            for k in unknown
            if (close := difflib.get_close_matches(str(k), sorted(known), n=1, cutoff=0.75))
        ]
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(repr(prefix + str(k)) for k in unknown)}"
            + (f" ({'; '.join(guesses)})" if guesses else "")
            + f"; known keys{' in ' + section if section else ''}: {', '.join(sorted(known))}"
        )
    values = {}
    for key, value in mapping.items():
        hint = hints[key]
        if _is_config(hint) and isinstance(value, Mapping):
            value = from_mapping(hint, value, source, prefix + key)
        values[key] = value
    try:
        return cls(**values)
    except FieldError as error:
        raise ConfigError(f"{source}: bad value for '{prefix}{error.key}': {error.problem}") from None
    except ConfigError as error:  # a check across fields, raised by the config itself
        raise ConfigError(f"{source}: {prefix.rstrip('.') + ': ' if prefix else ''}{error}") from None


# ------------------------------------------------------------------ loading: file, then overrides


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is read as YAML (``2``, ``true``, ``[hard, weak]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set epochs=2 or --set mining.alpha=10")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({error})") from None
    return key.strip(), value


def nest(key: str, value: Any) -> dict[str, Any]:
    """A dotted key as nested mappings: ``nest("mining.alpha", 10) == {"mining": {"alpha": 10}}``."""
    *parents, leaf = key.split(".")
    if not leaf or not all(parents):
        raise ConfigError(f"--set {key}=...: empty part in the dotted key")
    nested: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        nested = {part: nested}
    return nested


Overrides = Sequence[str] | Mapping[str, Any]


def override_layers(overrides: Overrides) -> list[tuple[str, dict[str, Any]]]:
    """Each override as (how to name it in an error, nested mapping): ``--set`` strings, or a
    mapping whose items may use dotted keys or nested mappings."""
    if isinstance(overrides, Mapping):
        return [(f"override {key}={value!r}", nest(str(key), value)) for key, value in overrides.items()]
    layers = []
    for text in overrides:
        key, value = parse_override(text)
        layers.append((f"--set {text}", nest(key, value)))
    return layers


def load_layered(
    path: str | Path | None,
    overrides: Overrides,
    build: Callable[[dict[str, Any], str], T],
    *,
    default_path: Path | None = None,
    base: tuple[str, Mapping[str, Any]] | None = None,
) -> T:
    """The one way configs are read: the YAML file (or ``default_path``, or nothing), then
    each override deep-merged over it in order. ``build(mapping, source)`` validates; it runs
    on the file alone first and again after each override, so an error names the file or the
    override at fault together with the key. ``base``: (its name, a mapping) read instead
    of a file, e.g. a checkpoint's own config."""
    chosen = Path(path) if path else default_path
    if base is not None and chosen is None:
        source, mapping = base[0], dict(base[1])
    else:
        mapping = read_yaml_mapping(chosen) if chosen is not None else {}
        source = str(chosen) if chosen is not None else "defaults"
    config = build(mapping, source)
    for name, layer in override_layers(overrides):
        mapping = deep_merge(mapping, layer)
        config = build(mapping, f"{source} + {name}")
    return config


def to_plain(config: Any) -> dict[str, Any]:
    """Plain types only (lists, not tuples; sections as mappings), for YAML, JSON and
    ``torch.load(weights_only=True)``."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {spec.name: plain(getattr(value, spec.name)) for spec in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(item) for item in value]
        if isinstance(value, Mapping):
            return {key: plain(item) for key, item in value.items()}
        return value

    return plain(config)


def to_yaml(config: Any) -> str:
    """The config as YAML, in field order (what ``--print-config`` prints)."""
    return yaml.safe_dump(to_plain(config), sort_keys=False, allow_unicode=True)


def output_keys(cls: type) -> tuple[str, ...]:
    """The fields that change what is written."""
    return tuple(spec.name for spec in dataclasses.fields(cls) if spec.metadata.get("output", True))


def default_of(spec: dataclasses.Field[Any]) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return dataclasses.MISSING


def _shown(value: Any) -> str:
    text = yaml.safe_dump(to_plain(value), default_flow_style=True).strip()
    return text.removesuffix("...").strip()


def describe(cls: type, skip: Sequence[str] = ()) -> str:
    """One line per key with its default, for ``--help``."""
    lines = []
    for spec in dataclasses.fields(cls):
        if spec.name in skip or not spec.metadata.get("help"):
            continue
        default = default_of(spec)
        shown = "required" if default is dataclasses.MISSING else f"default {_shown(default)}"
        lines.append(f"  {spec.name} ({shown}): {spec.metadata['help']}")
    return "\n".join(lines)


def number_flag(text: str) -> float:
    """A float flag's value: a number or a fraction such as ``1/3``."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r} (e.g. 0.25 or 1/3)") from None


def _shown_number(value: float) -> str:
    """``0.05`` and ``1e-05`` as they are, ``1/3`` rather than ``0.3333333333333333``."""
    short = f"{value:.6g}"
    if float(short) == value:
        return short if any(mark in short for mark in ".en") else f"{short}.0"
    fraction = Fraction(value).limit_denominator(100)
    return str(fraction) if float(fraction) == value else repr(value)


def add_flags(
    parser: argparse._ActionsContainer,
    cls: type,
    names: Sequence[str],
    *,
    flags: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """``--name`` flags for the given fields, their help, type, choices and default from
    the field (``flags`` renames a flag, ``defaults`` shows another default where the
    command starts from one). The flag's value is None unless given, so a config file's
    value is not overridden by a flag's default."""
    specs = {spec.name: spec for spec in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in names:
        spec = specs[name]
        hint = hints[name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
        default = (defaults or {}).get(name, default_of(spec))
        shown = (
            _shown_number(default)
            if isinstance(default, float)
            else "none"
            if default is None
            else _shown(default)
        )
        text = f"{spec.metadata.get('help', '')} (default {shown})".replace("%", "%%")
        if hint is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
            continue
        check = spec.metadata.get("check")
        choices = check.choices if isinstance(check, one_of) else None
        kind: Callable[[str], Any] = int if hint is int else number_flag if hint is float else str
        metavar = None if choices else flag.lstrip("-").upper().replace("-", "_")
        parser.add_argument(
            flag, dest=name, type=kind, choices=choices, metavar=metavar, default=None, help=text
        )


def given_flags(args: argparse.Namespace, cls: type, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The flags of :func:`add_flags` that were given on the command line."""
    wanted = names if names is not None else [spec.name for spec in dataclasses.fields(cls)]
    return {name: getattr(args, name) for name in wanted if getattr(args, name, None) is not None}


def load_beside(
    path: str | Path | None,
    overrides: Overrides,
    parse: Callable[[dict[str, Any], str, Path], T],
    default_path: Path,
) -> T:
    """:func:`load_layered` for a config whose keys name other files relative to itself
    (``train_config: train.yaml``): ``parse(mapping, source, folder of the file)``."""
    folder = (Path(path) if path else default_path).parent
    return load_layered(
        path, overrides, lambda mapping, source: parse(mapping, source, folder), default_path=default_path
    )
