"""Config validation with messages that name the key, for the Snakefile and the stages."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml


class ConfigError(ValueError):
    """A config value the schema rejects; the message names its key."""


def key_name(path) -> str:
    """['gmm', 'pretrain', 'lr'] -> 'gmm.pretrain.lr'; list positions as [i]."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def describe(error: jsonschema.ValidationError) -> str:
    key = key_name(error.absolute_path)
    if error.validator == "enum":
        return f"config key '{key}': {error.instance!r} is not allowed; allowed values: {', '.join(map(str, error.validator_value))}"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        where = f"under '{key}'" if error.absolute_path else "at the top level"
        return f"unknown config key(s) {', '.join(repr(u) for u in unknown)} {where}; allowed keys: {', '.join(allowed)}"
    if error.validator == "required":
        return f"config key '{key}': {error.message}"
    if error.validator in ("oneOf", "anyOf") and "description" in error.schema:
        return f"config key '{key}': {error.instance!r} is not allowed; expected {error.schema['description']}"
    return f"config key '{key}': {error.message}"


def validate_config(config: dict, schema_path) -> None:
    """Raise ConfigError listing every violation of the schema, one line each."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n".join(f"  - {describe(e)}" for e in errors)
        raise ConfigError(f"invalid configuration ({len(errors)} problem(s)):\n{lines}")
