"""Loading a config: presets shipped in :mod:`medmae.presets`, YAML files, mappings, ``key.path=value``
overrides, validation errors with key paths, and the resolved ``config.yaml`` of a run."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from medmae.config.checks import model_dump_for_arch
from medmae.config.runs import PretrainConfig, RunConfig
from medmae.errors import ConfigError

C = TypeVar("C", bound=BaseModel)


def preset_names() -> list[str]:
    """Names of the presets shipped in the package."""
    return sorted(p.name[:-5] for p in resources.files("medmae.presets").iterdir() if p.name.endswith(".yaml"))


def preset_dict(name: str) -> dict[str, Any]:
    """Raw preset mapping (YAML) by name."""
    path = resources.files("medmae.presets") / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return yaml.safe_load(path.read_text()) or {}


def finetune_raw_from_preset(name: str, task: str) -> dict[str, Any]:
    """A preset's fine-tuning settings: its data and model sections, then ``finetune`` common keys, then
    ``finetune.<task>``."""
    return finetune_raw_from_mapping(preset_dict(name), task, name, f"preset {name!r}")


def finetune_raw_from_mapping(raw: Mapping[str, Any], task: str, name: str, what: str) -> dict[str, Any]:
    """The fine-tuning settings of a preset-shaped mapping (a preset, a ``medmae plan`` file); ``what`` names it."""
    ft = raw.get("finetune") or {}
    if task not in ft:
        raise ConfigError(f"{what} has no fine-tuning settings for task {task!r} (finetune.{task})")
    out: dict[str, Any] = {"name": raw.get("name", name), "paper": raw.get("paper"), "task": task,
                           "data": copy.deepcopy(raw.get("data", {})), "model": copy.deepcopy(raw.get("model", {}))}
    out["model"].pop("decoder", None)
    common = {k: v for k, v in ft.items() if k not in ("cls", "seg")}
    return deep_merge(deep_merge(out, common), ft[task])


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` -> (["optim", "lr"], 0.001); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    path = [k for k in key.strip().split(".") if k]
    if not path:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for k in path[:-1]:
            child = node.get(k)
            if not isinstance(child, dict):
                child = {}
                node[k] = child
            node = child
        node[path[-1]] = value
    return out


_KEY_LINE = re.compile(r"^[A-Za-z_][\w.\[\]*]*: ")


def _located(loc: str, line: str) -> str:
    """A section validator's ``"key: problem"`` line with the section's path in front (``model.num_heads: ...``)."""
    if _KEY_LINE.match(line):
        return f"{loc}.{line}" if loc else line
    return f"{loc or '<root>'}: {line}"


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        elif e["type"] == "value_error":  # a cross-key check: its lines name their keys
            lines += [_located(loc, line) for line in e["msg"].removeprefix("Value error, ").splitlines()]
        else:
            got = "" if isinstance(e.get("input"), Mapping) else f" (got {e.get('input')!r})"
            lines.append(f"{loc or '<root>'}: {e['msg']}{got}")
    return f"invalid configuration ({source}):\n  " + "\n  ".join(lines)


def validate(model_cls: type[C], raw: Mapping[str, Any], source: str) -> C:
    try:
        return model_cls.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def load_raw(config: str | Path | None, preset: str | None) -> tuple[dict[str, Any], str]:
    """Raw mapping from a preset name or a YAML file (exactly one), and a label for error messages."""
    if (config is None) == (preset is None):
        raise ConfigError("give exactly one of a preset name (--preset) or a config YAML file")
    if preset is not None:
        return preset_dict(preset), f"preset {preset}"
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                          "save the config as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw, str(path)


def load_config(
    model_cls: type[C],
    config: str | Path | BaseModel | Mapping[str, Any] | None = None,
    *,
    preset: str | None = None,
    overrides: Iterable[str] = (),
) -> C:
    """Build a validated config from a preset / YAML path / mapping / model, then apply overrides."""
    if isinstance(config, BaseModel):
        raw, source = config.model_dump(mode="json"), "given config"
        if preset is not None:
            raise ConfigError("give a config object or a preset, not both")
    elif isinstance(config, Mapping):
        raw, source = dict(config), "given mapping"
    else:
        raw, source = load_raw(config, preset)
    overrides = list(overrides)
    if overrides:
        source += " with overrides " + " ".join(overrides)
    return validate(model_cls, apply_overrides(raw, overrides), source)


def set_data_path(cfg: RunConfig, data: str | Path) -> None:
    """``--data`` sets ``data.path``; a config whose data is a pool (``data.sources``) cannot take it."""
    if cfg.data.sources:
        raise ConfigError(f"--data {data}: the config already names a pool in data.sources; give one or the other")
    cfg.data.path = str(data)


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML; ``model`` keeps only the keys its ``arch`` reads (the MAE decoder only when
    pretraining), so the file loads back to an equivalent config."""
    raw = cfg.model_dump(mode="json")
    model = raw.get("model")
    if isinstance(model, dict) and "arch" in model:
        raw["model"] = model_dump_for_arch(model, model["arch"], keep_decoder=isinstance(cfg, PretrainConfig))
    return yaml.safe_dump(raw, sort_keys=False)
