"""The tool's version, in one place: the command line, the JSON reports and the package
metadata (pyproject.toml; tests/test_cli_usage.py checks they agree) all say this."""

__version__ = "0.2.0"
