"""Does a text hold a secret? One answer for every text that may become training data.

Two layers. **detect-secrets** (Yelp's well-kept detector), used in memory through its Python API with its
format plugins (AWS, private keys, GitHub/GitLab/Slack/Stripe/npm/PyPI/... tokens, JWTs, basic-auth URLs,
secret keywords) and its false-positive filters; its two high-entropy plugins and the public-IP plugin are
off, because on real repositories they flag test hashes, digests and documentation addresses, which would
drop a large share of the code. **Our own rules** for what it misses: credentials in any URL (also an empty
user, ``redis://:pass@``), password-like assignments with a real value, the defaults of environment lookups
(``os.environ.get("AWS_SECRET", "...")``), redis ``requirepass``/``masterauth``, token-like values in
comments, and the key shapes of ``trainer/experience/files.py`` (AWS key ids, ``ghp_``, ``sk-``, JWTs...).

Speed: experience builds scan tens of thousands of texts, mostly the same file contents shown again and
again. Answers are cached per text digest, and only the lines a cheap prefilter picks (a secret-sounding
word, a ``scheme://`` URL, or a line one of detect-secrets' own format patterns matches) reach the slower
line checks. Nothing here touches the network or writes a baseline file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections import Counter

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.core.scan import scan_line
from detect_secrets.settings import get_settings

# ---- our own rules ---------------------------------------------------------------------------------
KEY_SHAPES = [
    ("private key block", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY( BLOCK)?-----")),
    ("aws access key", re.compile(r"\b(AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b")),
    ("github token", re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b")),
    ("slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b")),
    ("google api key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b")),
    ("openai-style key", re.compile(r"\bsk-(proj-)?[A-Za-z0-9_\-]{32,}\b")),
    ("stripe key", re.compile(r"\b[sr]k_live_[0-9A-Za-z]{20,}\b")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\b")),
]

_WORD = (r"(?:pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|auth[_-]?key"
         r"|client[_-]?secret|credentials?|contrase[ñn]a)")
# a secret-sounding name, then = : := => and a quoted value
ASSIGNMENT = re.compile(
    r"(?i)" + _WORD + r"[\w.\-]*['\"\]]?\s*(?::=|=>|[:=])\s*[rbuf]?(['\"`])([^'\"`\n]{6,})\1"
)
# os.environ.get("NAME", "default"), os.getenv("NAME", "default"), environ.get / env.get / getenv(...)
ENV_DEFAULT = re.compile(
    r"(?i)\b(?:environ\.get|getenv|env\.get|environ\.setdefault)\s*\(\s*['\"]([^'\"]+)['\"]\s*,\s*[rbuf]?(['\"])([^'\"\n]{6,})\2"
)
# scheme://user:password@host (user may be empty: redis://:password@host)
URL_CREDENTIALS = re.compile(r"(?i)\b[a-z][a-z0-9+.\-]*://([^\s:/@'\"`<>]*):([^\s/@'\"`<>]+)@")
REDIS_DIRECTIVE = re.compile(r"(?i)(?:^|[\s\"'-])(?:requirepass|masterauth)\s+['\"]?([^\s'\"]{4,})")
COMMENT_TOKEN = re.compile(
    r"(?i)(?:#|//|/\*|<!--|^\s*\*|--)[^\n]{0,80}?\b(?:token|key|secret|password|passwd|pwd|credential|bearer|api[_ -]?key)s?\b"
    r"\s*(?:is|=|:|->)?\s*['\"`]?([A-Za-z0-9_\-+/=.]{16,})"
)
SECRET_NAME = re.compile(r"(?i)pass|pwd|secret|token|key|auth|credential")

# the prefilter: a line is looked at only if it has a secret-sounding word followed by an assignment (run
# on the lowercased text: a case-sensitive regex is several times faster than (?i)), a URL with user info,
# a redis directive, or a key shape; detect-secrets' own format regexes are added when it loads
_KEYWORD_THEN_VALUE = r"(?:p(?:ass|wd|w\b)|secret|token|key|auth|credential|contrase|bearer)[^\n]*?(?:[:=]|\bis\b)|://[^\s]*@|requirepass|masterauth"
PREFILTER_LOWER = re.compile(_KEYWORD_THEN_VALUE)
PREFILTER_ANYCASE = re.compile("(?i)" + _KEYWORD_THEN_VALUE)
PREFILTER_SHAPES = re.compile(
    r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T)|BEGIN|eyJ|gh[pousr]_|github_pat|xox|sk-|sk_|rk_|AIza|gl[a-z]{2,4}-|npm_|pypi-|SG\."
)

PLACEHOLDER_WORDS = {
    "password", "passwd", "pass", "secret", "token", "changeme", "change_me", "changeit", "example", "dummy", "fake",
    "test", "testing", "none", "null", "nil", "true", "false", "undefined", "empty", "default", "placeholder",
    "redacted", "hidden", "xxx", "foo", "bar", "baz", "foobar", "username", "user", "value", "string", "required",
    "optional", "todo", "fixme", "mypassword", "yourpassword", "password123", "secret123", "notasecret", "sample",
    "apikey", "api_key", "your_api_key", "your-api-key", "mysecret", "supersecret", "s3cr3t", "qwerty",
}
_PLACEHOLDER_SHAPE = re.compile(
    r"^(?:[x*•.#?_\-]+|<[^>]*>|\$\{?[\w.:-]*\}?|\{\{?[^}]*\}?\}|%\(?\w*\)?[sd]?|\[[^\]]*\]|:\w+|@\w+|\w+\(\)?)$"
    r"|^(?:your|my|some|example|dummy|fake|test|sample|the|a|an|enter|insert|replace)[-_ ]"
    r"|[-_ ](?:here|goes|placeholder)$"
)


def shannon_entropy(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def is_placeholder(value: str) -> bool:
    """A value that stands for a secret rather than being one: ``<password>``, ``${TOKEN}``, ``xxxx``,
    ``changeme``, ``your-key-here``, a format string, a prose phrase, a repeated character."""
    v = value.strip()
    low = v.lower()
    if len(v) < 6 or low in PLACEHOLDER_WORDS or _PLACEHOLDER_SHAPE.search(low):
        return True
    if " " in v.strip():  # prose ("Enter your password", "Password: ") is not a credential
        return True
    if len(set(low)) <= 2:  # "aaaaaaaa", "12121212"
        return True
    return False


def _url_credential(line: str) -> bool:
    for match in URL_CREDENTIALS.finditer(line):
        password = match.group(2)
        if password.startswith(("$", "{", "%", "<", "[")) or set(password) <= set("*x.•") or password.lower() in {"pass", "x"}:
            continue  # a template or a mask, not a credential
        return True
    return False


def _assignment(line: str) -> bool:
    for match in ASSIGNMENT.finditer(line):
        value = match.group(2)
        if not is_placeholder(value) and not _reference(value):
            return True
    return False


def _reference(value: str) -> bool:
    """``settings.SECRET_KEY``, ``os.environ``, ``some_function_name``: a name, not a value. A value that is
    one lowercase identifier of words (``password_option``) is a name; a credential mixes in digits or
    case changes or symbols."""
    return bool(re.fullmatch(r"[a-z_][a-z_.]*", value)) and "_" in value or bool(re.fullmatch(r"[A-Z_][A-Z0-9_.]*", value) and "_" in value)


def _env_default(line: str) -> bool:
    for match in ENV_DEFAULT.finditer(line):
        name, value = match.group(1), match.group(3)
        if SECRET_NAME.search(name) and not is_placeholder(value) and not _reference(value):
            return True
    return False


def _comment_token(line: str) -> bool:
    for match in COMMENT_TOKEN.finditer(line):
        value = match.group(1)
        # a token mixes letters and digits and is not a word or a path
        if (re.search(r"\d", value) and re.search(r"[A-Za-z]", value) and "/" not in value.strip("/")
                and shannon_entropy(value) >= 3.0 and not is_placeholder(value)):
            return True
    return False


OUR_LINE_RULES = [
    ("credentials in a URL", _url_credential),
    ("password-like assignment", _assignment),
    ("secret default of an environment lookup", _env_default),
    ("redis password", lambda line: bool(REDIS_DIRECTIVE.search(line)) and not all(
        is_placeholder(m.group(1)) for m in REDIS_DIRECTIVE.finditer(line))),
    ("token in a comment", _comment_token),
]

# ---- detect-secrets --------------------------------------------------------------------------------
OFF_PLUGINS = {"Base64HighEntropyString", "HexHighEntropyString", "IPPublicDetector"}
_lock = threading.Lock()
_detectors: list | None = None  # compiled format regexes of the enabled plugins (the prefilter's second half)


def _detect_secrets_ready() -> list:
    """Configure detect-secrets once for this process (the enabled plugins; its default filters stay)."""
    global _detectors
    if _detectors is None:
        mapping: dict[str, type] = get_mapping_from_secret_type_to_class()
        plugins = [cls for cls in mapping.values() if cls.__name__ not in OFF_PLUGINS]
        get_settings().configure_plugins([{"name": cls.__name__} for cls in plugins])
        patterns = []
        for cls in plugins:
            for pattern in getattr(cls(), "denylist", ()) or ():
                # the keyword-gated ones (Cloudant, IBM, SoftLayer: "<vendor>_password = ...") are slow on
                # long texts, and their lines already pass PREFILTER's keyword-then-assignment test
                if not pattern.pattern.startswith("(?:(?<=\\W)|(?<=^))"):
                    patterns.append(pattern)
        _detectors = patterns
    return _detectors


def _detect_secrets_line(line: str) -> str | None:
    for found in scan_line(line):
        if found.type == "Secret Keyword" and found.secret_value and (is_placeholder(found.secret_value) or _reference(found.secret_value)):
            continue  # "password: <your password>" and friends: detect-secrets' filters miss some placeholders
        if found.type == "Basic Auth Credentials" and not _url_credential(line):
            continue  # "http://user:pass@proxy" in documentation: a mask, judged by our URL rule
        return f"detect-secrets: {found.type}"
    return None


def _candidate_lines(text: str, detectors: list) -> list[str]:
    starts: set[int] = set()
    lowered = text.lower()
    if len(lowered) == len(text):  # (a few characters lowercase to two: then use the slower regex)
        searches = [(PREFILTER_LOWER, lowered)]
    else:
        searches = [(PREFILTER_ANYCASE, text)]
    searches += [(pattern, text) for pattern in (PREFILTER_SHAPES, *detectors)]
    for pattern, where in searches:
        for hit in pattern.finditer(where):
            starts.add(text.rfind("\n", 0, hit.start()) + 1)
    lines = []
    for start in sorted(starts):
        end = text.find("\n", start)
        lines.append(text[start: end if end >= 0 else len(text)][:2000])
    return lines


def _scan_uncached(text: str) -> str | None:
    for name, pattern in KEY_SHAPES:
        if pattern.search(text):
            return name
    with _lock:
        detectors = _detect_secrets_ready()
        for line in _candidate_lines(text, detectors):
            for name, rule in OUR_LINE_RULES:
                if rule(line):
                    return name
            reason = _detect_secrets_line(line)
            if reason:
                return reason
    return None


_cache: dict[bytes, str | None] = {}
_CACHE_LIMIT = 200_000


def scan_text(text: str) -> str | None:
    """Why ``text`` looks like it holds a secret (a short reason), or None. Cached per text digest."""
    if not text:
        return None
    key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    try:
        return _cache[key]
    except KeyError:
        pass
    reason = _scan_uncached(text)
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()
    _cache[key] = reason
    return reason


def _strings(value):
    if isinstance(value, str):
        yield value
        # tool-call arguments are JSON text: scan the decoded strings too, so escaped quotes hide nothing
        if value[:1] in "{[":
            try:
                decoded = json.loads(value)
            except ValueError:
                return
            if not isinstance(decoded, str):
                yield from _strings(decoded)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def episode_secret(episode: dict) -> str | None:
    """Why an episode holds a secret, or None: every text that enters it (the task, observations, the
    assistant's content, reasoning and tool-call arguments, completion prefixes and targets, and the
    strings of ``meta`` and ``verified``) is scanned. The tool schemas are ours and are not."""
    for key in ("messages", "meta", "verified"):
        for text in _strings(episode.get(key)):
            reason = scan_text(text)
            if reason:
                return reason
    return None
