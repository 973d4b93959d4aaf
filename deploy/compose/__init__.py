"""Compose-file pieces shared by stack files: a bounded YAML loader with line numbers
(yamlload), Compose's variable interpolation (interpolate) and `.env` files (dotenv)."""
