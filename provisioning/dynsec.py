"""Disconnect the open sessions of a revoked identity, through mosquitto's dynsec plugin.

mosquitto re-reads its CRL on SIGHUP but never re-checks connections that are already
open, so a revoked certificate that is connected stays connected. mosquitto 2.0 has one
way to throw a client off without restarting the broker: the dynamic-security plugin
disconnects every connection of a username (``mosquitto_kick_client_by_username``,
broker-wide, on every listener) when a dynsec client of that name is deleted.

The device broker loads the plugin on an admin Unix socket only
(``per_listener_settings``), where the only dynsec client is ``scanfleet-admin``
(password in ``{fleet}/broker/admin.secret``, 0600) whose only right is the
``$CONTROL/dynamic-security`` API. To disconnect an identity the fleet service sends,
in one message, ``createClient`` and ``deleteClient`` for its CN: the dynsec client
exists for microseconds, without a password, and the delete disconnects every session
whose username (= certificate CN, ``use_identity_as_username``) is that CN. Devices,
backends and fleet tools are never dynsec clients; their access stays in the ACL file.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import logging
import os
import pwd
import secrets
from pathlib import Path
from typing import Any

from scanfleet.daemon.core.errors import ScanfleetError
from scanfleet.daemon.core.mqtt_client import Session, open_session
from scanfleet.provisioning.ca import FleetCA, write_private

log = logging.getLogger(__name__)

ADMIN_USERNAME = "scanfleet-admin"
"""No certificate CN can be this: device CNs hold a ``/``, role CNs a ``.``."""
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
PBKDF2_ITERATIONS = 10_000
"""The plugin stores the count per client; its own default (101) is weaker."""
_FALLBACK_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


class DynsecError(ScanfleetError):
    """The broker's admin socket could not disconnect an identity."""


def admin_secret_path(ca: FleetCA) -> Path:
    """The admin password file of the device broker's dynsec plugin."""
    return ca.paths.root / "broker" / "admin.secret"


def admin_password(ca: FleetCA) -> str:
    """The admin password, made (0600, with its final mode) the first time."""
    path = admin_secret_path(ca)
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        password = secrets.token_urlsafe(32)
        write_private(path, password.encode() + b"\n")
        return password


def dynsec_plugin() -> str:
    """Path of Debian's ``mosquitto_dynamic_security.so`` for this machine's architecture."""
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so"))
    return found[0] if found else _FALLBACK_PLUGIN


def dynsec_config(password: str, salt: bytes | None = None) -> dict[str, Any]:
    """The plugin's JSON: one admin client, allowed the control API and nothing else."""
    salt = salt or os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    control = [
        {"acltype": kind, "topic": f"{CONTROL_TOPIC}/#", "allow": True}
        for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")
    ]
    return {
        "clients": [
            {
                "username": ADMIN_USERNAME,
                "textName": "scanfleet fleet service: disconnects revoked identities",
                "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(),
                "iterations": PBKDF2_ITERATIONS,
                "roles": [{"rolename": "scanfleet-admin"}],
            }
        ],
        "roles": [{"rolename": "scanfleet-admin", "acls": control}],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
    }


def write_dynsec_config(ca: FleetCA, path: Path, owner: str | None) -> Path:
    """Write the plugin's JSON to *path*, 0600 and owned by the broker's account *owner*
    (mosquitto reads it after dropping privileges, and rewrites it there)."""
    write_private(path, json.dumps(dynsec_config(admin_password(ca)), indent=1).encode())
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam(owner or "mosquitto")
        except KeyError:
            log.warning("no account %s: %s stays owned by root", owner or "mosquitto", path)
        else:
            os.chown(path, account.pw_uid, account.pw_gid)
    return path


def disconnect_identities(
    socket_path: Path, password: str, usernames: list[str], *, timeout: float = 10.0
) -> None:
    """Disconnect every open session of each username (certificate CN), broker-wide.

    Raises :class:`DynsecError` when the socket cannot be reached or the plugin refuses.
    """
    if not usernames:
        return
    commands: list[dict[str, str]] = []
    for name in usernames:
        commands += [
            {"command": "createClient", "username": name},
            {"command": "deleteClient", "username": name},
        ]
    replies: list[dict[str, Any]] = []
    session: Session | None = None
    try:
        session = open_session(
            str(socket_path),
            1883,  # unused on a unix socket
            client_id=ADMIN_USERNAME,
            protocol="5",
            username=ADMIN_USERNAME,
            password=password,
            transport="unix",
            timeout=timeout,
        )
        reply = session.exchange(
            CONTROL_TOPIC,
            json.dumps({"commands": commands}).encode(),
            RESPONSE_TOPIC,
            lambda message: True,
            timeout,
        )
        if reply is None:
            raise DynsecError("no answer from the broker's admin socket in time")
        replies.append(json.loads(reply.payload))
    except (OSError, ValueError) as err:
        raise DynsecError(f"broker admin socket {socket_path}: {err}") from err
    finally:
        if session is not None:
            session.close()
    failed = [
        r
        for r in replies[0].get("responses", [])
        if r.get("error") and r.get("command") == "deleteClient"
    ]
    if failed:
        raise DynsecError(f"broker refused to disconnect: {failed}")
    log.info("disconnected the open sessions of %s", ", ".join(usernames))
