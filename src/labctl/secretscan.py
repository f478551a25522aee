"""Recognising secrets pasted where they do not belong, and keeping them out of output.

An inventory is read by people, kept in git, and rendered into 0644 unit files and
process command lines; a secret belongs in a 0600 environment file referenced by path.
This module looks at three things:

- variable names (``HF_AUTH``, ``REDIS_PASS``, ``DB_PWD``, ``X_AUTHORIZATION`` ...);
- values: known token prefixes (``sk-``, ``hf_``, ``ghp_``, ``Bearer `` ...), credentials
  in a URL (``https://user:pass@host``), a secret-named pair anywhere in the text
  (``password=x``, ``api_key: x``, ``--opts=user=a,token=b``), UUIDs (the shape many
  services give their keys), and key-like runs (a run of 20 or more letters and digits
  mixing both, as random keys are and model names, paths and words are not);
- command-line flags that carry a secret (``--api-key X``, ``--token=X``; a ``*-file``
  flag naming a file is the right way and is allowed): :func:`arg_problem`.

:func:`redact` masks exactly what the value rules flag, in any text on its way to a terminal
or ``--json``: what :func:`value_problem` would refuse never survives :func:`redact`.
"""

from __future__ import annotations

import bisect
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
# The scheme is bounded: unbounded, every word of "a-a-a-..." started a scan to the end
# (quadratic; a megabyte of it in a LiteLLM setting took the better part of an hour).
_URL_CREDS_RE = re.compile(r"(?i)\b[a-z][a-z0-9+.-]{0,31}://[^/\s:@]*:[^/\s@]+@")
# "<redacted>" is what redact() leaves: never a secret itself.
_URL_QUERY_RE = re.compile(r"(?i)[?&](api[_-]?key|key|token|access_token|secret|password|pass|sig|signature)"
                           r"=(?!<redacted>)[^&\s]+")
_UUID_RE = re.compile(r"(?<![A-Za-z0-9])[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
                      r"(?![A-Za-z0-9])")
_RUN_RE = re.compile(r"[A-Za-z0-9]{20,}")

# A flag (or a NAME= inside a value) whose last word is one of these takes a secret
# (--api-key, --hf-token, --password, password=); --max-tokens, --tokenizer or
# --api-key-file (a path: the right way) do not.
_FLAG_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "pass", "pwd", "auth", "credential",
               "credentials", "bearer", "passphrase"}
# NAME=VALUE or NAME: VALUE inside a text (an argument's sub-options, a DSN, a pasted
# header) where NAME's last word is one of _FLAG_WORDS. NAME starts a word (not the tail
# of tokenizer.ggml.add_bos_token or of monkey); VALUE runs to the next _VALUE_END. The
# pattern stops at the separator and the value's end is looked up, so that pairs chained
# in one another's values (key:key:key:...) cost linear time, not quadratic.
_PAIR_RE = re.compile(r"(?i)(?<![A-Za-z0-9_.-])(?P<name>-{0,2}(?:[A-Za-z0-9]+[-_]+)*(?:"
                      + "|".join(sorted(_FLAG_WORDS, key=len, reverse=True))
                      + r"))(?P<sep>\s*[=:]\s*[\"']?)")
_VALUE_END = re.compile(r"[\s,;&'\"<>()\[\]]")
# Words that are prose on their own before a colon ("primary key: id", "token: 512"); as
# KEY=VALUE, or inside a longer name (api_key: ...), they still name a secret.
_PROSE_WORDS = {"key", "pass", "auth", "token"}
# A secret-named pair whose value says "nothing here" or points elsewhere ($VAR, ${VAR},
# LiteLLM's os.environ/VAR) carries no secret.
# Values that set nothing secret; "unused" is the word labctl writes as the key of a backend
# that checks none (the OpenAI client insists on some key).
_EMPTY_VALUES = {"true", "false", "yes", "no", "on", "off", "none", "null", "0", "1", "unused"}
_EMPTY_MAX = max(map(len, _EMPTY_VALUES))
_REFERENCE_RE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|os\.environ/[A-Za-z_][A-Za-z0-9_]*")


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


def _secret_pairs(text: str) -> list[tuple[int, int]]:
    """The (start, end) of each secret-named pair's value, merged where they overlap; a pair
    inside another's value (``key: password=x``, ``--opts=token=x``) counts too. No value
    is copied or scanned whole: a chain of pairs stays linear."""
    ends = [m.start() for m in _VALUE_END.finditer(text)] + [len(text)]
    braces = [m.start() for m in re.finditer(r"\{", text)]
    spans: list[tuple[int, int]] = []
    for m in _PAIR_RE.finditer(text):
        start = m.end()
        if spans and start < spans[-1][1]:
            continue  # inside a value already found: its end is that value's end
        if "=" not in m.group("sep") and m.group("name").lower() in _PROSE_WORDS:
            continue
        end = ends[bisect.bisect_left(ends, start)]
        if bisect.bisect_left(braces, end) == bisect.bisect_left(braces, start):
            while end > start and text[end - 1] == "}":  # the end of a {name: value} mapping
                end -= 1
        reference = _REFERENCE_RE.match(text, start)
        if end == start or (reference is not None and reference.end() == end):
            continue
        if end - start <= _EMPTY_MAX and text[start:end].lower() in _EMPTY_VALUES:
            continue
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


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
    if _secret_pairs(value):
        return "sets a secret-named parameter (password=, token=, api_key: ...)"
    if _UUID_RE.search(value):
        return "looks like a key (a UUID)"
    if any(_key_like(run) for run in _RUN_RE.findall(value)):
        return "looks like a key (a long random-looking run of letters and digits)"
    return None


def arg_problem(arg: str, before: str | None) -> str | None:
    """What passes a secret in the argv word ``arg`` (``before`` is the word before it), or None."""
    flag, eq, value = arg.partition("=")
    if _secret_flag(flag) and eq and value:
        return f"{flag} passes a secret on the command line"
    if before is not None and _secret_flag(before) and "=" not in before and not arg.startswith("-"):
        return f"the value of {before} is a secret on the command line"
    return value_problem(arg)


def redact(text: str) -> str:
    """``text`` with anything that looks like a secret replaced by ``<redacted>``."""
    text = _PREFIX_RE.sub("<redacted>", text)
    text = _SCHEME_RE.sub(lambda m: m.group(1) + " <redacted>", text)
    text = _URL_CREDS_RE.sub(lambda m: m.group(0).split("://", 1)[0] + "://<redacted>@", text)
    text = _URL_QUERY_RE.sub(lambda m: m.group(0).split("=", 1)[0] + "=<redacted>", text)
    for start, end in reversed(_secret_pairs(text)):
        text = text[:start] + "<redacted>" + text[end:]
    text = _UUID_RE.sub("<redacted>", text)
    return _RUN_RE.sub(lambda m: "<redacted>" if _key_like(m.group(0)) else m.group(0), text)
