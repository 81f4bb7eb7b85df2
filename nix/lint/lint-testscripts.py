#!/usr/bin/env python3
"""Lints the VM tests' testScripts without nixpkgs. Input (argv[1]): JSON {test: {nodes: [...],
testScript: "..."}} as nix-instantiate extracts it from vm-tests/. Each script gets a prelude
that declares what the NixOS test driver gives it (nixos_test_driver.pyi beside this file, one
`Machine` per node), then pyflakes (undefined names: a node that does not exist) and mypy
(a misspelt Machine method, wrong arguments) run on it. Prints `ok|FAIL <what>` lines.
Usage: lint-testscripts.py TESTS.json VENV_BIN WORKDIR"""
import json, os, re, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
GLOBALS = ["Machine", "machines", "start_all", "join_all", "subtest", "retry",
           "serial_stdout_on", "serial_stdout_off", "driver"]


def prelude(nodes):
    lines = [f"from nixos_test_driver import {', '.join(GLOBALS)}",
             f"__all__ = {GLOBALS!r}"]  # marks the driver's globals as used for pyflakes
    lines += [f"{n}: Machine = Machine({n!r})" for n in nodes]
    return "\n".join(lines) + "\n"


def lint(name, nodes, script, venv_bin, work):
    """Returns the problems found, with line numbers of the testScript itself."""
    head = prelude(nodes)
    offset = head.count("\n")
    path = os.path.join(work, f"{name}.py")
    with open(path, "w") as f:
        f.write(head + script)
    env = dict(os.environ, MYPYPATH=HERE)
    problems = []
    for cmd in ([f"{venv_bin}/pyflakes", path],
                [f"{venv_bin}/mypy", "--check-untyped-defs", "--no-error-summary", "--no-incremental",
                 "--cache-dir", os.path.join(work, ".mypy"), path]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
        for line in (r.stdout + r.stderr).splitlines():
            m = re.match(rf"(?:{re.escape(path)}|{re.escape(name)}\.py):(\d+):(.*)", line)
            if m:
                problems.append(f"{name}:{int(m.group(1)) - offset}:{m.group(2)}")
            elif line.strip():
                problems.append(line)
        if r.returncode != 0 and not problems:
            problems.append(f"{cmd[0]} exited {r.returncode}")
    return problems


def main():
    tests_file, venv_bin, work = sys.argv[1:4]
    with open(tests_file) as f:
        tests = json.load(f)
    for name, t in sorted(tests.items()):
        problems = lint(name, t["nodes"], t["testScript"], venv_bin, work)
        print(("FAIL " if problems else "ok   ") + f"testScript {name} (nodes {', '.join(t['nodes'])}): pyflakes, mypy"
              + "".join(f"\n     {p}" for p in problems))
    # the linter itself: a broken script must be caught
    for what, script, expect in (
            ("a misspelt Machine method", 'start_all()\nmachine.wait_for_unti("npg.service")\n', 'has no attribute "wait_for_unti"'),
            ("an undefined node", 'start_all()\nnosuchnode.succeed("true")\n', "undefined name 'nosuchnode'"),
            ("a wrong argument type", 'machine.wait_for_open_port("80")\n', "incompatible type")):
        problems = [p for p in lint("selftest", ["machine"], script, venv_bin, work) if expect in p]
        print(("ok   " if problems else "FAIL ") + f"lint catches {what}"
              + (f": {problems[0]}" if problems else f": no problem reported containing {expect!r}"))


main()
