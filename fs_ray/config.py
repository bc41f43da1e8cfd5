"""Typed run configs: YAML on disk, dotted overrides on the command line, validated up front.

Every kind of run (prepare, pretrain, finetune, tune, serve) is one pydantic model built from
:class:`Section`. Loading goes YAML -> dict -> ``--set a.b=c`` overrides -> validation, and any
unknown or ill-typed field raises :class:`ConfigError` naming the dotted field, before a single
Ray resource is requested. The resolved config is written next to every run's outputs
(:func:`write_resolved`) so that a run can be rebuilt from its folder alone.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "ConfigError",
    "Section",
    "apply_overrides",
    "describe_fields",
    "load_config",
    "parse_override",
    "resolved_yaml",
    "set_dotted",
    "write_resolved",
]

RESOLVED_CONFIG_NAME = "config.yaml"

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used. The message names every offending field."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"trainer.lr=3e-4"`` -> (["trainer", "lr"], "3e-4" parsed as YAML).

    The value is parsed as YAML so lists (``[a, b]``), booleans and null work; pydantic then
    coerces strings such as ``3e-4`` to the field's type.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"override {text!r} has an empty part in its key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw config dict (in place, returned for chaining)."""
    for text in overrides:
        keys, value = parse_override(text)
        try:
            set_dotted(data, _join_dotted_keys(data, keys), value)
        except ConfigError as err:
            raise ConfigError(f"override {text!r}: {err}") from None
    return data


def set_dotted(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """``data[a][b][c] = value`` for ``parts == [a, b, c]``, creating missing sections."""
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _join_dotted_keys(data: dict[str, Any], parts: list[str]) -> list[str]:
    """Keys that themselves contain dots (a tune search space's ``optim.lr``) stay one part:
    ``search_space.optim.lr.low`` -> [search_space, optim.lr, low] when ``optim.lr`` exists there."""
    out, node, i = [], data, 0
    while i < len(parts):
        j = next(
            (
                j
                for j in range(len(parts), i + 1, -1)
                if isinstance(node, dict) and ".".join(parts[i:j]) in node
            ),
            i + 1,
        )
        key = ".".join(parts[i:j])
        out.append(key)
        node = node.get(key) if isinstance(node, dict) else None
        i = j
    return out


def _format_errors(model: type[BaseModel], err: ValidationError, source: str) -> str:
    lines = [f"invalid {model.__name__} config ({source}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
            close = _close_names(model, [str(p) for p in e["loc"]])
            if close:
                msg += f" (did you mean {', '.join(close)}?)"
        else:
            msg = e["msg"]
            if "input" in e and e["type"] != "missing":
                msg += f" (got {e['input']!r})"
        lines.append(f"  {field}: {msg}")
    return "\n".join(lines)


def _close_names(model: type[BaseModel], loc: list[str]) -> list[str]:
    import difflib

    node: Any = model
    for part in loc[:-1]:
        fields = getattr(node, "model_fields", None)
        if not fields or part not in fields:
            return []
        node = _section_type(fields[part].annotation)
        if node is None:
            return []
    fields = getattr(node, "model_fields", {})
    return difflib.get_close_matches(loc[-1], list(fields), n=3, cutoff=0.6)


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The Section class inside an annotation such as ``Foo`` or ``Foo | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _section_type(arg)
            if found is not None:
                return found
    return None


def validate(model: type[M], data: dict[str, Any], source: str = "<dict>") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(model, err, source)) from None


def load_config(model: type[M], path: str | Path | None = None, overrides: list[str] | None = None) -> M:
    """Load ``path`` (YAML) into ``model``, apply dotted overrides, validate.

    Raises :class:`ConfigError` naming the file and every bad field.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level, not {type(loaded).__name__}")
        data = loaded
    if overrides:
        apply_overrides(data, overrides)
        source += " + --set " + " ".join(overrides)
    return validate(model, data, source)


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def resolved_yaml(cfg: BaseModel) -> str:
    """The fully resolved config (defaults filled in) as written next to every result."""
    return f"# resolved {type(cfg).__name__}; rerun with --config {RESOLVED_CONFIG_NAME}\n" + to_yaml(cfg)


def write_resolved(cfg: BaseModel, directory: str) -> str:
    """Write :func:`resolved_yaml` as ``<directory>/config.yaml`` (a local folder or a URI); return its path."""
    from fs_ray import storage

    target = storage.join(str(directory), RESOLVED_CONFIG_NAME)
    storage.write_text(target, resolved_yaml(cfg))
    return target


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # PositiveInt and friends: the type, not its constraints
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(annotation)) + "}"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def describe_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, description) for every leaf field, sections expanded."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        section = _section_type(field.annotation)
        if section is not None and typing.get_origin(field.annotation) is None:
            if field.description:
                rows.append((dotted, "section", "", field.description))
            rows.extend(describe_fields(section, prefix=dotted + "."))
            continue
        if field.is_required():
            default = "(required)"
        else:
            value = field.get_default(call_default_factory=True)
            default = yaml.safe_dump(
                value.model_dump(mode="json") if isinstance(value, BaseModel) else value,
                default_flow_style=True,
                allow_unicode=True,
            ).strip()
            default = default.removesuffix("...").strip()
        rows.append((dotted, _type_name(field.annotation), default, field.description or ""))
    return rows
