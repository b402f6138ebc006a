"""Sync configuration: YAML files validated into typed pydantic models."""

from conversion_sync.config.loader import BrokenSync, ProjectConfig, config_directory, load_project_config
from conversion_sync.config.problems import ConfigError, ConfigProblem

__all__ = [
    "BrokenSync",
    "ConfigError",
    "ConfigProblem",
    "ProjectConfig",
    "config_directory",
    "load_project_config",
]
