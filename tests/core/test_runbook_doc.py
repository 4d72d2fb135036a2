"""docs/RUNBOOK.md cannot drift silently from the code it tells operators to run.

Every `manage.py <command>` it mentions exists, every `make <target>` is in the Makefile, every
file under deploy/ or scripts/ it names exists, every program it hands to `stackctl` is one that
`make run` supervises (or an alias of one), every systemd unit it starts is shipped in
deploy/systemd/ (or is the distribution's Redis / Mosquitto), its alert table matches
deploy/prometheus/alerts.yml, and every log line it (or the README) greps for is one the code
writes, searched in the whole log.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from django.conf import settings
from django.core.management import get_commands

from apps.core.tasks.celery_settings import QUEUES
from apps.monitoring import stack
from tests.services import ROOT

RUNBOOK = ROOT / "docs" / "RUNBOOK.md"
TEXT = RUNBOOK.read_text()
README = (ROOT / "README.md").read_text()
QUEUE_NAMES = {queue.name for queue in QUEUES}


def code_text() -> str:
    """Fenced blocks and inline code spans: where commands are written."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", TEXT, flags=re.MULTILINE | re.DOTALL)
    without_fences = re.sub(r"^```.*?^```", "", TEXT, flags=re.MULTILINE | re.DOTALL)
    inline = re.findall(r"`([^`\n]+)`", without_fences)
    return "\n".join([*fenced, *inline])


def without_comments(text: str) -> str:
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())


CODE = without_comments(code_text())


def makefile_targets() -> set[str]:
    targets: set[str] = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([^\s#:=$][^:=]*?)\s*:(?!=)", line)
        if match:
            targets.update(name for name in match.group(1).split() if "%" not in name)
    return targets


def test_the_runbook_mentions_commands_at_all():
    # Guards the extraction below: an empty match would make every other test pass vacuously.
    assert len(re.findall(r"manage\.py\s+[a-z_]+", TEXT)) > 20
    assert "make run" in CODE
    assert "systemctl" in CODE


def test_every_manage_py_command_exists():
    mentioned = set(re.findall(r"manage\.py\s+([a-z][a-z0-9_]*)", TEXT))
    missing = sorted(mentioned - set(get_commands()))
    assert not missing, f"docs/RUNBOOK.md names manage.py commands that do not exist: {missing}"


def test_every_make_target_exists():
    mentioned = set(re.findall(r"(?:^|[\s;&|(`])make\s+([a-z][\w-]*)", CODE, flags=re.MULTILINE))
    missing = sorted(mentioned - makefile_targets())
    assert mentioned, "no `make <target>` found in docs/RUNBOOK.md"
    assert not missing, f"docs/RUNBOOK.md names make targets the Makefile lacks: {missing}"


def test_every_deploy_and_scripts_path_exists():
    paths = set(re.findall(r"(?<![\w.-])((?:deploy|scripts)/[\w@.%/-]*[\w@-])", TEXT))
    assert paths, "no deploy/ or scripts/ path found in docs/RUNBOOK.md"
    missing = sorted(path for path in paths if not (ROOT / path).exists())
    assert not missing, f"docs/RUNBOOK.md names files that do not exist: {missing}"


def stack_programs() -> set[str]:
    names = stack.control_names(stack.programs(stack.StackPaths(Path(settings.VAR_DIR))))
    return {*names, *(alias for aliases in names.values() for alias in aliases)}


def test_every_stackctl_program_is_one_make_run_supervises():
    verbs = "start|stop|restart|status|signal|pid"
    used: set[str] = set()
    for line in re.findall(rf"stackctl[ \t]+(?:{verbs})[ \t]+([^\n#;&|`]*)", CODE):
        words = [word.strip("'\"") for word in line.split()]
        if words and words[0].isupper():  # `signal KILL <programs>`
            words = words[1:]
        used.update(word for word in words if word and "<" not in word)
    assert used, "no stackctl program found in docs/RUNBOOK.md"
    unknown = sorted(used - stack_programs())
    assert not unknown, f"docs/RUNBOOK.md hands stackctl programs make run lacks: {unknown}"


def test_every_systemd_unit_is_shipped_or_the_distributions():
    shipped = {path.name for path in (ROOT / "deploy" / "systemd").iterdir()}
    distribution = {"redis-server", "mosquitto", "prometheus"}
    verbs = "start|stop|restart|reload|status|enable|disable|kill"
    units: set[str] = set()
    for line in re.findall(rf"systemctl[ \t]+(?:{verbs})[ \t]+([^\n#;&|`]*)", CODE):
        units.update(
            word.strip("'\"")
            for word in line.split()
            if not word.startswith("-") and "<" not in word
        )
    assert units, "no systemctl unit found in docs/RUNBOOK.md"
    unknown = []
    for unit in sorted(units):
        name = unit.removesuffix(".service")
        if name.startswith("celery@"):
            instance = name.removeprefix("celery@")
            if instance != "*" and instance not in QUEUE_NAMES:
                unknown.append(unit)
        elif name in distribution or unit in shipped or f"{name}.service" in shipped:
            continue
        else:
            unknown.append(unit)
    assert not unknown, f"docs/RUNBOOK.md manages systemd units nobody ships: {unknown}"


def test_every_worker_node_name_is_a_queue():
    nodes = set(re.findall(r"-d\s+([a-z_]+)@", CODE))
    assert nodes, "no `-d <queue>@host` found in docs/RUNBOOK.md"
    assert nodes <= QUEUE_NAMES, f"unknown worker node names: {sorted(nodes - QUEUE_NAMES)}"


def test_the_quick_reference_lists_every_queue():
    for queue in QUEUE_NAMES:
        assert f"`celery@{queue}`" in TEXT, queue
        assert f"`celery:{queue}`" in TEXT, queue


def test_the_alert_table_matches_the_rules():
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    defined = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    section = TEXT.split("### Alerts and what to do", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))
    assert documented == defined, (
        f"only in alerts.yml: {sorted(defined - documented)}; "
        f"only in the runbook: {sorted(documented - defined)}"
    )


def test_no_printed_grep_reads_only_the_last_lines_of_a_log():
    # A line logged once (`Connected to MQTT Broker`, at connect) is soon older than the last N
    # lines: grep the whole log, then take the last match (`grep … | tail -n 1`).
    tails = re.findall(r"tail -n \d+ [^|\n]*\.log[^|\n]*\|\s*grep[^\n]*", TEXT + README)
    assert not tails, f"greps of a log's last lines only: {tails}"


# Written by Python itself (an uncaught exception), not by our code.
LOGGED_BY_PYTHON = {"Traceback"}


def test_every_fixed_string_grepped_in_a_log_is_one_the_code_logs():
    greps = re.findall(
        r"grep(?:\s+-[A-Za-z]+(?:\s+\d+)?)*\s+\"([^\"]+)\"\s+\S+\.log", TEXT + README
    )
    fixed = {string for string in greps if not re.search(r"[.*\[\]|^$\\]", string)}
    assert "Connected to MQTT Broker" in fixed, "the grep extraction found nothing"
    source = "\n".join(path.read_text() for path in (ROOT / "apps").rglob("*.py"))
    missing = sorted(fixed - LOGGED_BY_PYTHON - {s for s in fixed if s in source})
    assert not missing, f"the docs grep logs for lines no code writes: {missing}"
