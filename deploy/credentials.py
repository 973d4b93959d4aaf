"""The client's registry credentials: `$DOCKYARD_CONFIG/config.json` (default ~/.dockyard), in
docker's config.json format. Read by pull, push and build (click's and the fast ones) to send the
agent only what a call needs; written by login/logout. AuthConfig messages as plain dicts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from common.registries import config_key


class BadConfig(Exception):
    """config.json is not JSON: the message names the file."""


def config_path() -> Path:
    base = os.environ.get("DOCKYARD_CONFIG") or str(Path.home() / ".dockyard")
    return Path(base) / "config.json"


def read_config() -> dict[str, Any]:
    try:
        data = json.loads(config_path().read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise BadConfig(f"{config_path()}: not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def key(registry: str) -> str:
    return config_key(registry.removeprefix("https://").removeprefix("http://").rstrip("/"))


def auth_for(domain: str, config: dict[str, Any] | None = None) -> dict[str, str]:
    """images.proto's AuthConfig for a registry, as a dict (every field, "" when unknown)."""
    import binascii

    cfg = read_config() if config is None else config
    entry = (cfg.get("auths") or {}).get(key(domain)) or {}
    if not isinstance(entry, dict):
        entry = {}
    user = pw = ""
    if entry.get("auth"):
        try:
            user, _, pw = binascii.a2b_base64(entry["auth"]).decode().partition(":")
        except (ValueError, binascii.Error):
            pass
    return {"username": entry.get("username", user), "password": entry.get("password", pw),
            "identity_token": entry.get("identitytoken", ""), "registry_token": entry.get("registrytoken", "")}


def all_auths() -> dict[str, dict[str, str]]:
    cfg = read_config()
    return {k: auth_for(k, cfg) for k in (cfg.get("auths") or {})}
