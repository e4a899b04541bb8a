"""Helpers for the daemon tests and the freshness benchmark: a small real git repository that grows
commits during a test, a real ``swespot daemon`` process, and waiting on its status.json (events on
disk, with a generous timeout only as a failure guard)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}

# A little ledger package: enough files for design, implementation and evolution episodes, and for a
# held-out share of shards (the loss gate).
FILES = {
    "ledger/__init__.py": '"""A tiny double-entry ledger."""\n',
    "ledger/money.py": '''"""Amounts in cents."""


def cents(amount):
    """An amount in euros as whole cents."""
    return int(round(amount * 100))


def euros(cents_value):
    """Cents back to euros."""
    return cents_value / 100


def add(a, b):
    """The sum of two amounts in cents."""
    return a + b
''',
    "ledger/accounts.py": '''"""Accounts hold a balance."""
from ledger.money import add


class Account:
    """A named account with a balance in cents."""

    def __init__(self, name, balance=0):
        self.name = name
        self.balance = balance

    def deposit(self, amount):
        """Put money in."""
        self.balance = add(self.balance, amount)
        return self.balance

    def withdraw(self, amount):
        """Take money out; refuse to overdraw."""
        if amount > self.balance:
            raise ValueError("insufficient funds")
        self.balance -= amount
        return self.balance
''',
    "ledger/journal.py": '''"""The journal records transfers between accounts."""
from ledger.accounts import Account


class Journal:
    """Every transfer, in order."""

    def __init__(self):
        self.entries = []

    def transfer(self, source: Account, target: Account, amount):
        """Move amount from source to target and record it."""
        source.withdraw(amount)
        target.deposit(amount)
        self.entries.append((source.name, target.name, amount))
        return len(self.entries)

    def total(self):
        """The sum of all transferred amounts."""
        return sum(amount for _, _, amount in self.entries)
''',
    "ledger/report.py": '''"""Text reports."""
from ledger.money import euros


def line(name, balance):
    """One line of a balance report."""
    return f"{name}: {euros(balance):.2f}"


def report(accounts):
    """A report of every account, sorted by name."""
    return "\\n".join(line(a.name, a.balance) for a in sorted(accounts, key=lambda a: a.name))
''',
    "tests/test_accounts.py": '''from ledger.accounts import Account


def test_deposit():
    assert Account("a").deposit(5) == 5
''',
}

# Later commits, made during tests (message, files).
NEXT_COMMITS = [
    ("Add a fee to transfers", {"ledger/fees.py": '''"""Transfer fees."""


def fee(amount):
    """One percent, at least one cent."""
    return max(1, amount // 100)
'''}),
    ("Report totals in euros", {"ledger/totals.py": '''"""Totals across accounts."""
from ledger.money import euros


def grand_total(accounts):
    """The sum of all balances, in euros."""
    return euros(sum(a.balance for a in accounts))
'''}),
    ("Name the currency in reports", {"ledger/currency.py": '''"""The currency of the ledger."""

CODE = "EUR"


def label(text):
    """Text followed by the currency code."""
    return f"{text} {CODE}"
'''}),
    ("Limit transfers", {"ledger/limits.py": '''"""Transfer limits."""

LIMIT = 100_000


def allowed(amount):
    """Whether a transfer of amount cents is allowed."""
    return 0 < amount <= LIMIT
'''}),
]


def git(root: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True, env=env).stdout.strip()


def commit(root: Path, message: str, files: dict[str, str]) -> str:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        git(root, "add", rel)
    git(root, "commit", "-qm", message)
    return git(root, "rev-parse", "HEAD")


def make_repo(root: Path) -> str:
    """The ledger repository with its first commit; returns that commit."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    return commit(root, "Start the ledger", FILES)


def daemon_cmd(repo: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "swespot", "daemon", "--repo", str(repo), *extra]


def start_daemon(repo: Path, state_root: Path, log: Path, *extra: str) -> subprocess.Popen:
    """A real daemon process in its own session (as the language server starts it)."""
    env = {**os.environ, "SWESPOT_STATE_DIR": str(state_root), **GIT_ENV}
    out = open(log, "ab")
    try:
        return subprocess.Popen(daemon_cmd(repo, *extra), cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def wait_for(check: Callable[[], object], what: str, timeout: float = 600, proc: subprocess.Popen | None = None,
             log: Path | None = None):
    """Poll ``check`` until it returns something truthy. The timeout is only a guard against a hang; a
    daemon process that exits meanwhile fails at once, with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            value = check()
            if value:
                return value
            tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
            raise AssertionError(f"the daemon exited ({proc.returncode}) while waiting for {what}\n{tail}")
        time.sleep(0.1)
    tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def stop_daemon(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    return proc.wait(timeout=timeout)
