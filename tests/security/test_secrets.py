"""Secrets never enter training data (issue 17): every text of an episode is scanned, not only file
contents; the probe's six leaks are each caught, placeholders are not."""

from __future__ import annotations

from collections import Counter

import pytest

from agent.episode import SECRET_DROPPED, completion_episode, load_episodes, new_episode, save_episodes, tool_call
from agent.secret_scan import episode_secret, scan_text
from daemon_support import FILES, commit, git
from trainer.experience.build import BuildOptions, build_experience
from trainer.experience.files import secret_reason

# the secrets the probe found in training episodes, each as it was planted
AWS_ID = "AKIAIOSFODNN7EXAMPLE"
PG_PASSWORD = "Tr0ub4dor3xq"
DB_PASSWORD = "correcthorsebatterystaple"
AWS_DEFAULT = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REDIS_PASSWORD = "r3d1sPa55w0rdx"
COMMENT_TOKEN = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
PLANTED = [AWS_ID, PG_PASSWORD, DB_PASSWORD, AWS_DEFAULT, REDIS_PASSWORD, COMMENT_TOKEN]


@pytest.mark.parametrize("text", [
    f"Rotate the deploy key {AWS_ID}",  # a commit message
    f'DATABASE_URL = "postgres://app:{PG_PASSWORD}@db.internal:5432/app"',
    "engine = connect('postgres://user:password@host/db')",  # the literal example
    f'DB_PASSWORD="{DB_PASSWORD}"',
    f"    password = '{DB_PASSWORD}'",
    f'AWS_SECRET = os.environ.get("AWS_SECRET", "{AWS_DEFAULT}")',
    f'token = os.getenv("API_TOKEN", "{COMMENT_TOKEN}")',
    f'cache = redis.from_url("redis://:{REDIS_PASSWORD}@cache:6379/0")',
    f"requirepass {REDIS_PASSWORD}",
    f"    # token: {COMMENT_TOKEN}",
    f"// the api key is {COMMENT_TOKEN}",
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    "auth = 'ghp_" + "a1B2" * 9 + "'",
])
def test_each_leak_of_the_probe_is_caught(text):
    assert scan_text(text), text


@pytest.mark.parametrize("text", [
    "password = os.environ['PASSWORD']",
    "password_option = click.password_option()",
    'value = click.prompt("Password", hide_input=True, confirmation_prompt="Repeat password")',
    "secret = '${SECRET}'",
    "password = '<your password>'",
    'API_TOKEN = os.environ.get("API_TOKEN", "changeme")',
    'home = os.getenv("HOME", "/home/user/projects")',
    "PASSWORD = 'xxxxxxxxxxxxxxxxxxxx'",
    'proxies = {"http": "http://user:pass@10.10.1.10:3128/"}',  # requests' documentation
    'url = "https://{user}:{password}@example.com"',
    "    # key: the sort key, a callable",
    "digest = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'",  # a hash is no secret
    "def test_token_refresh(token_store):\n    token = token_store.get()\n    assert token",
    '__author_email__ = "me@kennethreitz.org"',  # requests' __version__.py: an author is no auth
])
def test_placeholders_names_and_hashes_are_not_secrets(text):
    assert scan_text(text) is None, text
    assert secret_reason("settings.py", text) is None, text


def _observation_episode(tool_output: str, *, argument: str = "x = 1") -> dict:
    call = tool_call("edit", {"path": "app/db.py", "old": "x = 0", "new": argument}, "c1")
    messages = [{"role": "system", "content": "You edit code."}, {"role": "user", "content": "Tidy the settings"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": tool_output},
                {"role": "assistant", "content": "Done."}]
    return new_episode("evolution", "0" * 40, messages, [])


def test_an_episode_with_a_secret_in_any_text_is_dropped_and_counted(tmp_path):
    clean = _observation_episode("ok: 1 line changed")
    in_observation = _observation_episode(f"app/db.py:3: DB_PASSWORD = \"{DB_PASSWORD}\"")
    # inside JSON tool arguments the quotes are escaped: the decoded strings are scanned too
    in_arguments = _observation_episode("ok", argument=f'PASSWORD = "{DB_PASSWORD}"')
    assert f'\\"{DB_PASSWORD}\\"' in in_arguments["messages"][2]["tool_calls"][0]["function"]["arguments"]
    in_completion = completion_episode("implementation", "0" * 40, f"# token: {COMMENT_TOKEN}\ndef f():\n", "    return 1")
    in_target = completion_episode("implementation", "0" * 40, "def url():\n", f'    return "redis://:{REDIS_PASSWORD}@cache"')
    in_meta = new_episode("evolution", "0" * 40, [{"role": "user", "content": "Fix it"}, {"role": "assistant", "content": "ok"}],
                          [], meta={"commit_message": f"Fix it\n\nkey {AWS_ID}"})
    dropped: Counter = Counter()
    written = save_episodes(tmp_path / "s.jsonl", [clean, in_observation, in_arguments, in_completion, in_target, in_meta],
                            dropped=dropped)
    assert written == 1 and dropped == {SECRET_DROPPED: 5}
    assert [e["id"] for e in load_episodes(tmp_path / "s.jsonl")] == [clean["id"]]
    assert episode_secret(clean) is None


SETTINGS = f'''"""Deployment settings."""
import os

DATABASE_URL = "postgres://app:{PG_PASSWORD}@db.internal:5432/app"
AWS_SECRET = os.environ.get("AWS_SECRET", "{AWS_DEFAULT}")
'''
CACHE = f'''"""The cache connection."""


def cache_url(host):
    """Where the cache lives."""
    return "redis://:{REDIS_PASSWORD}@" + host + ":6379/0"
'''
CLIENT = f'''"""The payments client."""


def headers():
    """Request headers for the payments API."""
    # token: {COMMENT_TOKEN}
    return {{"Accept": "application/json"}}
'''
DB = f'''"""The database layer."""

DB_PASSWORD="{DB_PASSWORD}"


def connect(name):
    """Open a connection to name."""
    return (name, len(DB_PASSWORD))
'''


def test_planted_repository_gives_episodes_without_any_planted_secret(tmp_path):
    root = tmp_path / "planted"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit(root, "Start the ledger", FILES)
    commit(root, "Add deployment settings", {"deploy/settings.py": SETTINGS})
    commit(root, "Add the cache and the payments client", {"ledger/cache.py": CACHE, "ledger/client.py": CLIENT})
    commit(root, "Connect to the database", {"ledger/db.py": DB})
    # a file the ignore rules match, force-added: neither its contents nor its commit's replay are learned
    commit(root, "Ignore local settings", {".gitignore": "local_settings.py\n"})
    (root / "local_settings.py").write_text("MODE = 'ignored-local-value'\n")
    git(root, "add", "-f", "local_settings.py")
    git(root, "commit", "-qm", "Add local settings")
    # a clean change whose commit message carries the secret: the message is the replay's task text
    commit(root, f"Rotate deploy key {AWS_ID} and add fees",
           {"ledger/fees.py": '"""Fees."""\n\n\ndef fee(amount):\n    """One percent."""\n    return amount // 100\n'})
    commit(root, "Report in euros", {"ledger/totals.py": '"""Totals."""\n\n\ndef total(xs):\n    """Sum."""\n    return sum(xs)\n'})
    out = tmp_path / "exp"
    result = build_experience(root, out, BuildOptions(progress=False))
    text = "\n".join(p.read_text() for p in out.rglob("*.jsonl"))
    assert text.count('"unit"') > 20  # the clean files still teach
    assert [s for s in PLANTED if s in text] == []
    assert "ignored-local-value" not in text
    # file-level exclusion holds (four files with secrets), and the commit message was caught at the door
    assert sum(result.excluded.values()) >= 4
    assert result.stats["evolution"]["rejected"].get(SECRET_DROPPED, 0) >= 1
    assert "fees.py" in text  # the fee file itself was learned from, only the episode quoting the message was dropped
