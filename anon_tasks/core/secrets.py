"""Recognising credentials by their name or their value, so that none is taken as a setting.

Errs on the side of yes: a setting refused for looking like a credential can be renamed or
moved to a credentials block; a credential accepted would be shown in the Prefect UI and logs.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping

__all__ = ["looks_like_secret_name", "looks_like_secret_value"]

#: Marks of a credential's name, found anywhere in it once case and separators are gone
#: (``AWS_SECRET_ACCESS_KEY``, ``accessKeyId``, ``aws.secret``, ``apikey``, ``sasToken``).
_SECRET_KEY = re.compile(
    r"secret|token|pass|pwd|psw|cred|auth|session|signature|private|bearer|cookie|key"
    r"|connectionstring|connstr|hmac"
)
#: Short marks that count only as a whole word of the name (``sas_url``, ``sig``, ``pw``).
_SECRET_WORDS = frozenset({"sas", "sig", "pw", "jwt", "otp", "pat"})
_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
#: Values that are credentials whatever their name: an AWS access key id, a private key, an
#: Azure account key or SAS signature, GitHub/Slack/Google tokens, a JWT, a URL with a password.
_SECRET_VALUE = re.compile(
    r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY"
    r"|(?i:accountkey=|sharedaccesssignature=|(?:^|[?&])sig=)"
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_|\bxox[abprs]-"
    r"|\bAIza[0-9A-Za-z_-]{35}|\bya29\.|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]"
    r"|[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]+@"
    r"|(?i:[?&][^=&\s]*(?:token|signature|credential|secret|key|sig|password)[^=&\s]*=)"
)
#: A run of characters a random key is written in, long enough to be one.
_RANDOM_RUN = re.compile(r"[A-Za-z0-9+/=_-]{32,}")
#: Bits per character above which a mixed-case run with digits counts as random: random
#: base64 of 40 characters (an AWS secret key) has ~4.8; paths and names stay below ~4.3.
_RANDOM_BITS_PER_CHAR = 4.3


def looks_like_secret_name(name: str) -> bool:
    """Whether an option or field name looks like it holds a credential.

    Errs on the side of yes: any name with ``secret``, ``token``, ``pass``, ``pwd``,
    ``cred``, ``auth``, ``session``, ``signature``, ``private``, ``bearer``, ``cookie``,
    ``key``, ``hmac`` or ``connection_string`` in it, whatever its case and separators
    (``_``, ``-``, ``.``, camelCase), and names with the word ``sas``, ``sig``, ``pw``,
    ``jwt``, ``otp`` or ``pat``.
    """
    name = unicodedata.normalize("NFKC", name)
    if not name.isascii():  # option names are identifiers; look-alike letters hide words
        return True
    if _SECRET_KEY.search(re.sub(r"[^a-z0-9]", "", name.lower())):
        return True
    words = re.split(r"[^a-z0-9]+", _WORD_BOUNDARY.sub("_", name).lower())
    return not _SECRET_WORDS.isdisjoint(words)


def looks_like_secret_value(value: object) -> bool:
    """Whether a value (a string, or strings inside lists and mappings) looks like a credential.

    Known shapes (an AWS access key id ``AKIA...``/``ASIA...``, a PEM private key, an Azure
    account key or SAS ``sig=``, GitHub, Slack and Google tokens, a JWT, a URL with a
    password); a run of 32 or more hex digits with letters among them (a hex key); and any run
    of 32 or more base64 characters mixing upper case, lower case and digits whose entropy is
    above 4.3 bits per character (a random key: an AWS secret key has ~4.8; paths and names
    stay below). Short human passwords cannot be told from words: their names give them away.
    """
    return _looks_secret(value, depth=0)


def _looks_secret(value: object, depth: int) -> bool:
    if isinstance(value, str):
        text = unicodedata.normalize("NFKC", value)
        return bool(_SECRET_VALUE.search(text)) or any(
            _is_random(run) for run in _RANDOM_RUN.findall(text)
        )
    if isinstance(value, bytes):
        return _looks_secret(value.decode("utf-8", "replace"), depth)
    if depth >= 8:
        return False
    if isinstance(value, Mapping):
        return any(
            (isinstance(key, str) and looks_like_secret_name(key))
            or _looks_secret(key, depth + 1)
            or _looks_secret(item, depth + 1)
            for key, item in value.items()
        )
    if isinstance(value, list | tuple | set | frozenset):
        return any(_looks_secret(item, depth + 1) for item in value)
    return False


def _is_random(run: str) -> bool:
    if run.isdigit():
        return False
    hexadecimal = all(char in "0123456789abcdefABCDEF" for char in run)
    if hexadecimal and any(char.isalpha() for char in run):
        return True  # a hex key or digest of 128 bits or more
    if not (
        any(char.isupper() for char in run)
        and any(char.islower() for char in run)
        and any(char.isdigit() for char in run)
    ):
        return False
    counts = Counter(run)
    bits = -sum(count / len(run) * math.log2(count / len(run)) for count in counts.values())
    return bits > _RANDOM_BITS_PER_CHAR
