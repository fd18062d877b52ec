"""The one configuration object, read from the environment and `.env` by pydantic-settings.

Every setting is one field of `Settings`: its variable is the field's name in upper case, its type says
what the variable may hold (`types`), and its description is the configuration table of the docs
(`make config-table` rewrites it). The fields are grouped by concern, one module each (`workers`,
`network`, `limits`, `security`); `settings` puts them into the one `Settings`. Adding a setting is adding
one field. `Settings.from_env()` fails with `ConfigError` naming the variable when a value is invalid, so a
bad `.env` stops a process at start instead of at the first request.
"""

from services.common.config.settings import VARIABLES, ConfigError, Settings, check_token, env_text
from services.common.config.types import MIN_TOKEN_CHARS
from services.common.config.workers import EMBEDDED_MODEL

__all__ = ["EMBEDDED_MODEL", "MIN_TOKEN_CHARS", "VARIABLES", "ConfigError", "Settings", "check_token", "env_text"]
