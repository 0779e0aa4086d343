"""Named providers: teacher_config.yaml fills the fields a run's `provider` section leaves unset.

A provider file is `providers: {name: {base_url, model, ...}}`, or the shape of the published recipes'
teacher_config.yaml, `model: {deepseek: {api_key, base_url, model}}`, whose api_key must be left empty:
keys come from the environment only (provider.api_key_env)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from components.common.config import from_dict
from components.common.errors import ConfigError
from components.common.plain_yaml import load_plain_yaml
from components.common.provider_config import ProviderConfig
from components.common.secrets import refuse_secret_path

SHIPPED = Path(__file__).with_name("teacher_config.yaml")


def load_presets(path: str = "") -> dict[str, dict]:
    source = Path(path) if path else SHIPPED
    refuse_secret_path(source, "provider_config")
    try:
        data = load_plain_yaml(source.read_text(encoding="utf-8"), f"provider_config {source}") or {}
    except FileNotFoundError:
        raise ConfigError(f"provider_config: {source} does not exist") from None
    if isinstance(data, dict) and "providers" not in data and isinstance(data.get("model"), dict):
        return {name: _keyless(name, preset, source) for name, preset in data["model"].items()}
    presets = data.get("providers") if isinstance(data, dict) else None
    if not isinstance(presets, dict):
        raise ConfigError(
            f"provider_config: {source} must hold a mapping 'providers: {{name: {{...}}}}' "
            "(or 'model: {name: {base_url, model}}')"
        )
    return presets


def _keyless(name: str, preset: object, source: Path) -> object:
    """A preset of the `model: {name: {...}}` shape without its api_key entry, which must be empty."""
    if not isinstance(preset, dict):
        return preset
    fields = dict(preset)
    if fields.pop("api_key", None):
        raise ConfigError(
            f"provider_config {source}: model.{name}.api_key holds a key; keys never go in a file: leave it "
            "empty and put the key in the variable provider.api_key_env names (TEACHER_API_KEY, Secret "
            "distill-teacher)"
        )
    return fields


def resolve_provider(provider: ProviderConfig, presets_path: str = "") -> ProviderConfig:
    """`provider` with every unset field (None or empty) taken from its named preset, then checked."""
    presets = load_presets(presets_path)
    preset = presets.get(provider.name)
    if preset is None and not provider.base_url and not provider.is_local:
        raise ConfigError(
            f"provider.name: {provider.name!r} is not in {presets_path or SHIPPED.name} "
            f"({', '.join(sorted(presets))}); set provider.base_url to use any other OpenAI-compatible API"
        )
    # allow_insecure_http is an administrator's: honoured on a provider of the image's file only, and
    # only for that provider's own base_url.
    if preset and preset.get("allow_insecure_http") and Path(presets_path or SHIPPED) != SHIPPED:
        raise ConfigError(
            f"provider_config: {presets_path} sets allow_insecure_http on {provider.name}; only the image's "
            f"{SHIPPED.name} may"
        )
    # Validate the preset through the same typed loader, so a typo in the YAML names its field.
    from_dict(ProviderConfig, {"name": provider.name, **(preset or {})}, where=f"providers.{provider.name}")
    values = dataclasses.asdict(provider)
    values["allow_insecure_http"] = bool(
        (preset or {}).get("allow_insecure_http")
        and provider.base_url in (None, "", (preset or {}).get("base_url"))
    )
    for key, value in (preset or {}).items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**value, **values[key]}  # headers and body extras merge; the run's win
        elif values.get(key) in (None, ""):
            values[key] = value
    if values["api_key_required"] is None:
        values["api_key_required"] = not provider.is_local
    resolved = from_dict(ProviderConfig, values, where="provider")
    if not resolved.model:
        raise ConfigError(
            "provider.model: empty; name the teacher model (or, for name: local, the model folder)"
        )
    return resolved
