"""Every variable settings.py reads is documented in .env.example and in README.md's table."""

import ast
import re

from tests.services import ROOT

SETTINGS = ROOT / "intelliwiz_config" / "settings.py"


def _is_environ(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _reads_environment(func: ast.expr, helpers: set[str]) -> bool:
    if isinstance(func, ast.Name):
        return func.id in helpers
    if isinstance(func, ast.Attribute):
        return func.attr == "getenv" or (func.attr == "get" and _is_environ(func.value))
    return False


def variables_read_by_settings() -> set[str]:
    """Names passed as a literal to an env_* helper, os.environ.get, os.environ[...] or getenv."""
    tree = ast.parse(SETTINGS.read_text())
    helpers = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("env_")
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and node.args and _reads_environment(node.func, helpers):
            key = node.args[0]
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            names.add(key.value)
    return names


def test_the_parser_finds_the_variables_settings_py_reads():
    names = variables_read_by_settings()
    assert {"ENV_FILE", "DJANGO_DEBUG", "MQTT_PORT", "JWT_SIGNING_KEY", "LOG_FORMAT"} <= names
    assert len(names) > 40


def test_every_variable_settings_py_reads_has_a_line_in_env_example():
    text = (ROOT / ".env.example").read_text()
    missing = sorted(
        name
        for name in variables_read_by_settings()
        if not re.search(rf"^(# )?{name}=", text, re.MULTILINE)
    )
    assert not missing, f"add `NAME=default` with a comment line to .env.example for {missing}"


def test_every_variable_settings_py_reads_has_a_row_in_the_readme_settings_table():
    text = (ROOT / "README.md").read_text()
    missing = sorted(
        name
        for name in variables_read_by_settings()
        if not re.search(rf"^\| `{name}` \|", text, re.MULTILINE)
    )
    assert not missing, f"add a row to README.md's Settings table for {missing}"
