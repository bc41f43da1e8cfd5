"""The README's commands cannot rot: every fenced bash command that runs an fs_ray front end is
run here as written (shell variables expanded, ``<placeholders>`` filled) with ``--print-config``
appended, which validates its config and every ``--set`` and exits before touching Ray; ``--help``
commands run as they are; every repository file a command names exists."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from .conftest import REPO

FRONT_END = re.compile(r"(?:^|\s--\s+|^)python\s+((?:jobs|tune|serve)/\w+\.py)(.*)$")


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


COMMANDS = readme_commands()
FRONT_ENDS = [c for c in COMMANDS if FRONT_END.search(c)]


def test_the_readme_has_front_end_commands_to_check():
    assert len(FRONT_ENDS) >= 10 and any("--help" in c for c in FRONT_ENDS)


@pytest.mark.parametrize("command", FRONT_ENDS)
def test_front_end_command_validates_as_written(command):
    script, rest = FRONT_END.search(command).groups()
    rest = re.sub(r"<([^>]*)>", lambda m: re.sub(r"\W+", "-", m.group(1)).strip("-"), rest)
    args = rest if "--help" in rest else rest + " --print-config"
    env = {**os.environ, "PWD": str(REPO)}
    # the front end as the job would run it: the venv's python, from the repository root
    proc = subprocess.run(
        ["bash", "-c", f"{shlex.quote(sys.executable)} {script} {args}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_repository_file_a_command_names_exists(command):
    for word in shlex.split(re.sub(r"<[^>]*>", "x", command), comments=True):
        word = word.split("=", 1)[-1]
        if re.match(r"^(cluster|jobs|tune|serve|tests)/[\w./-]+\.(sh|py|yaml)$", word) or word == "ray-cluster.yaml":
            assert (REPO / word).exists(), f"{command}: {word} does not exist"
