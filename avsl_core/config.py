"""Profiles: one YAML file per profile under configs/, mirrored by the notebooks' parameters cells.

A profile file has `profile`, `seed`, and a `notebooks:` mapping from notebook name to the
parameters papermill injects into that notebook (`papermill -f` style). Module configs (models,
losses, composer, trainer) are frozen dataclasses in their own modules, built from these sections.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

PROFILES = ("smoke", "quick", "full", "paper")


def repo_root() -> Path:
    """The checkout root (the folder holding configs/ and avsl_core/)."""
    env = os.environ.get("AVSL_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """The team's shared folder beside the project (reference metadata), if present."""
    env = os.environ.get("AVSL_REFERENCE_DATA")
    if env:
        return Path(env).resolve().parent
    cand = repo_root().parent / "shared"
    return cand if cand.is_dir() else None


def load_profile(name: str, configs_dir: str | os.PathLike | None = None) -> dict:
    """Read configs/<name>.yaml; errors name the file and the missing or wrong field."""
    path = Path(configs_dir or repo_root() / "configs") / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such profile (known: {', '.join(PROFILES)})")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    if data.get("profile") != name:
        raise ValueError(f"{path}: field 'profile' must be '{name}', found {data.get('profile')!r}")
    if not isinstance(data.get("notebooks", {}), dict):
        raise ValueError(f"{path}: field 'notebooks' must map notebook names to parameter mappings")
    data.setdefault("seed", 0)
    data.setdefault("notebooks", {})
    return data
