"""`stack/kube.sh`'s process handling, with stand-in daemons (symlinks to `sleep` and `false`
named like the real ones): no control plane is started."""

from __future__ import annotations

import subprocess
from pathlib import Path

KUBE_SH = Path(__file__).resolve().parents[2] / "stack" / "kube.sh"


def _bash(script: str, tmp_path: Path) -> str:
    (tmp_path / "logs").mkdir(exist_ok=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, target in (("fake-daemon", "/bin/sleep"), ("fake-crash", "/bin/false")):
        if not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(target)
    prelude = f'source "{KUBE_SH}"; STATE="{tmp_path}"; BIN="{bin_dir}"\n'
    out = subprocess.run(
        ["bash", "-c", prelude + script], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout


def test_a_daemon_just_started_is_alive(tmp_path: Path) -> None:
    # Right after the fork, the child still runs under the shell's name until setsid has
    # exec'd the daemon; pid_alive (which checks the name) must not take that for an exit.
    out = _bash(
        """
        dead=0
        for i in $(seq 1 20); do
            start_proc fake-daemon 300
            pid_alive fake-daemon || dead=$((dead + 1))
            kill "$(<"$STATE/fake-daemon.pid")"
        done
        echo "dead=$dead"
        """,
        tmp_path,
    )
    assert out.strip() == "dead=0"


def test_a_daemon_that_exits_at_once_is_reported_exited(tmp_path: Path) -> None:
    # start_proc stops waiting for the exec when the process is gone (or a zombie), and the
    # wait_for that follows it in `up` then reports the exit.
    out = _bash(
        """
        start_proc fake-crash
        wait "$(<"$STATE/fake-crash.pid")" || true
        pid_alive fake-crash && echo alive || echo exited
        """,
        tmp_path,
    )
    assert out.split() == ["exited"]
