"""The HTTP session for a DICOMweb server: who we are and which certificates we trust.

Credentials never come from the command line (it shows in ``ps`` and shell history). In order:

1. ``MEDREFINE_DICOMWEB_TOKEN``: an OAuth/bearer token, sent as ``Authorization: Bearer ...``;
2. ``MEDREFINE_DICOMWEB_USER`` and ``MEDREFINE_DICOMWEB_PASSWORD``: HTTP basic authentication;
3. a netrc entry for the server's host (the file named by ``NETRC``, else ``~/.netrc``);
4. none.

TLS certificates are always checked, against the system's CAs or ``--ca-bundle``.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

import requests

from medrefine.errors import ConfigError
from medrefine.pacs.config import DicomwebConfig

logger = logging.getLogger(__name__)

TOKEN_ENV = "MEDREFINE_DICOMWEB_TOKEN"
USER_ENV = "MEDREFINE_DICOMWEB_USER"
PASSWORD_ENV = "MEDREFINE_DICOMWEB_PASSWORD"
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def build_session(config: DicomwebConfig) -> requests.Session:
    """A ``requests.Session`` with the credentials found and TLS verification on."""
    session = requests.Session()
    session.verify = str(config.ca_bundle) if config.ca_bundle else True
    session.headers["User-Agent"] = "medrefine"
    source = _apply_credentials(session, config.host)
    if source and config.url.startswith("http://") and config.host not in _LOOPBACK:
        logger.warning(
            "%s: sending credentials (%s) over plain http; use https outside a test setup",
            config.url,
            source,
        )
    logger.info("DICOMweb %s: credentials from %s", config.url, source or "nowhere (none sent)")
    return session


def credential_source(host: str) -> str | None:
    """Where the credentials for ``host`` come from (for messages), or None."""
    return _apply_credentials(requests.Session(), host)


def _apply_credentials(session: requests.Session, host: str) -> str | None:
    token = os.environ.get(TOKEN_ENV)
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
        return TOKEN_ENV
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if user or password:
        if not (user and password is not None):
            raise ConfigError(
                f"{USER_ENV} and {PASSWORD_ENV}: set both (or neither, to use a netrc file)"
            )
        session.auth = (user, password)
        return f"{USER_ENV}/{PASSWORD_ENV}"
    found = _netrc_login(host)
    if found is not None:
        session.auth = found[:2]
        return found[2]
    return None


def _netrc_login(host: str) -> tuple[str, str, str] | None:
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not path.is_file():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError) as err:
        raise ConfigError(f"{path}: cannot read the netrc file ({err}); fix or remove it") from err
    if entry is None:
        return None
    login, _, password = entry
    return login or "", password or "", f"netrc ({path})"
