"""Recognising secrets pasted where they do not belong, and keeping them out of output.

An inventory is read by people, kept in git, and rendered into 0644 unit files and
process command lines; a secret belongs in a 0600 environment file referenced by path.
This module looks at three things:

- variable names (``HF_AUTH``, ``REDIS_PASS``, ``DB_PWD``, ``X_AUTHORIZATION`` ...);
- values: known token prefixes (``sk-``, ``hf_``, ``ghp_``, ``Bearer `` ...), credentials
  in a URL (``https://user:pass@host``), and key-like runs (a run of 20 or more letters
  and digits mixing both, as random keys are and model names, paths and words are not);
- command-line flags that carry a secret (``--api-key X``, ``--token=X``; a ``*-file``
  flag naming a file is the right way and is allowed).

:func:`redact` applies the value rules to any text on its way to a terminal or ``--json``.
"""

from __future__ import annotations

import re

# Words of a variable name (split at '_') that mean it holds a secret. Whole words, so
# TOKENIZERS_PARALLELISM or HF_HUB_DISABLE_KEYRING are not secrets; a word ending in KEY
# or TOKEN (APIKEY, HFTOKEN) is.
_NAME_WORDS = {"KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "PASS", "PWD", "PW", "AUTH",
               "AUTHORIZATION", "BEARER", "COOKIE", "CREDENTIAL", "CREDENTIALS", "CREDS", "DSN"}

# Prefixes of well-known API tokens (OpenAI/Anthropic sk-, Hugging Face, GitHub, GitLab,
# Slack, AWS, Google, npm, PyPI, Stripe, Groq, NVIDIA, Replicate, DigitalOcean, JWTs).
_TOKEN_PREFIXES = ("sk-", "sk_live_", "sk_test_", "rk_live_", "hf_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
                   "github_pat_", "glpat-", "xoxb-", "xoxp-", "xoxa-", "xapp-", "AKIA", "ASIA", "AIza", "ya29.",
                   "npm_", "pypi-", "gsk_", "nvapi-", "r8_", "dop_v1_", "whsec_", "pplx-", "eyJ")
_PREFIX_RE = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(re.escape(p) for p in _TOKEN_PREFIXES)
                        + r")[A-Za-z0-9_\-.+/=]{8,}")
_SCHEME_RE = re.compile(r"(?i)\b(bearer|basic|token|apikey)\s+[A-Za-z0-9_\-.+/=~]{8,}")
_URL_CREDS_RE = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@")
_URL_QUERY_RE = re.compile(r"(?i)[?&](api[_-]?key|key|token|access_token|secret|password|pass|sig|signature)"
                           r"=[^&\s]+")
_RUN_RE = re.compile(r"[A-Za-z0-9]{20,}")

# A flag whose last word is one of these takes a secret (--api-key, --hf-token,
# --password); --max-tokens, --tokenizer or --api-key-file (a path: the right way) do not.
_FLAG_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "pass", "pwd", "auth", "credential",
               "credentials", "bearer"}


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[-_]+", name) if w]


def name_is_secret(name: str) -> bool:
    for word in _words(name.upper()):
        if word in _NAME_WORDS or (len(word) > 5 and word.endswith(("KEY", "TOKEN"))):
            return True
    return False


def _secret_flag(flag: str) -> bool:
    if not flag.startswith("-"):
        return False
    words = _words(flag.lower())
    return bool(words) and words[-1] in _FLAG_WORDS


def _key_like(run: str) -> bool:
    digits = sum(ch.isdigit() for ch in run)
    return digits >= 2 and len(run) - digits >= 2


def value_problem(value: str) -> str | None:
    """What makes ``value`` look like a secret (never the value itself), or None."""
    if _PREFIX_RE.search(value):
        return "looks like an API token"
    if _SCHEME_RE.search(value):
        return "looks like an Authorization header value"
    if _URL_CREDS_RE.search(value):
        return "is a URL with a password in it"
    if _URL_QUERY_RE.search(value):
        return "is a URL with a key or token in its query"
    if any(_key_like(run) for run in _RUN_RE.findall(value)):
        return "looks like a key (a long random-looking run of letters and digits)"
    return None


def flag_problems(args: list[str]) -> list[tuple[int, str]]:
    """(index, reason) for each argv word that passes a secret on the command line."""
    out: list[tuple[int, str]] = []
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if _secret_flag(flag):
            if eq and value:
                out.append((i, f"{flag} passes a secret on the command line"))
            elif not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
                out.append((i + 1, f"the value of {flag} is a secret on the command line"))
        reason = value_problem(arg)
        if reason and not any(index == i for index, _ in out):
            out.append((i, reason))
    return out


def redact(text: str) -> str:
    """``text`` with anything that looks like a secret replaced by ``<redacted>``."""
    text = _PREFIX_RE.sub("<redacted>", text)
    text = _SCHEME_RE.sub(lambda m: m.group(1) + " <redacted>", text)
    text = _URL_CREDS_RE.sub(lambda m: m.group(0).split("://", 1)[0] + "://<redacted>@", text)
    text = _URL_QUERY_RE.sub(lambda m: m.group(0).split("=", 1)[0] + "=<redacted>", text)
    return _RUN_RE.sub(lambda m: "<redacted>" if _key_like(m.group(0)) else m.group(0), text)
