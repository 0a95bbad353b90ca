"""Reading config files, in one torch-free place: JSON or YAML, preset names, ``extends`` chains, unknown keys.

The engine (``cldl train``, ``cldl synth``, ``cldl ablate``) and the Slicer training module read configs here, so
that both resolve ``extends`` the same way; :func:`check_known_keys` is the one "unknown keys" check of every
config section (training, model, preprocessing, phantoms, the anatomy generator, studies).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: The presets (``cldl train --config brats2018_paper``).
CONFIG_DIR = Path(__file__).parent / "configs"
#: What a config file may expand to (a YAML alias bomb grows without bound).
MAX_CONFIG_VALUES = 100_000


def check_known_keys(data: Iterable[str], valid: Sequence[str], what: str, where: str = "") -> None:
    """Refuse keys of ``data`` (a mapping or its keys) outside ``valid``: ``ValueError`` naming the unknown keys
    (sorted) and the valid ones (in the order given); ``where`` prefixes the message (e.g. ``"study.yaml: "``)."""
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"{where}unknown {what} keys {unknown}; valid keys: {list(valid)}")


def resolve_config(name: str | Path) -> Path:
    """A config file path, or a preset name of ``cldl/configs`` (``brats2018_paper`` -> its ``.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    for suffix in ("", ".yaml", ".yml", ".json"):
        preset = CONFIG_DIR / f"{name}{suffix}"
        if path.name == str(name) and preset.is_file():
            return preset
    presets = sorted({p.stem for p in CONFIG_DIR.iterdir() if p.suffix in (".yaml", ".yml", ".json")})
    raise FileNotFoundError(f"{name}: no such config file or preset (presets: {', '.join(presets)})")


def merge_configs(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base``; mappings (``model``, ``preprocess``, ...) are merged key by key."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_configs(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(name: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file or preset with ``extends: <preset or path relative to the file>`` resolved (base first)."""
    path = resolve_config(name).resolve()
    if path in _seen:
        raise ValueError(f"{path}: 'extends' loops back to this file")
    return resolve_extends(read_config_file(path), path.parent, (*_seen, path))


def resolve_extends(
    data: Mapping[str, Any], folder: str | Path | None = None, _seen: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """``data`` merged over what its ``extends`` names (a preset, or a path relative to ``folder``, default the
    working folder), recursively; the result holds no ``extends``, so it stands alone wherever it is saved."""
    data = dict(data)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    relative = Path(folder if folder is not None else ".") / str(parent)
    base = load_config(relative if relative.is_file() else parent, _seen)
    return merge_configs(base, data)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON or YAML file holding a mapping, with one clear error when it is not."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:  # not a ValueError: the CLI would show a traceback
            raise ValueError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of keys to values")
    if _expands_beyond(data, MAX_CONFIG_VALUES):
        raise ValueError(
            f"{path}: expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases repeated inside each other?); "
            "a config is a few hundred values"
        )
    return data


def _expands_beyond(data: Any, limit: int) -> bool:
    """Whether ``data`` holds more than ``limit`` values once every YAML alias is expanded (stops counting there)."""
    stack, seen = [data], 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return False
