"""Which broker URL and MQTT protocol version the next connection attempt uses.

``[broker] url`` may list several URLs: :class:`BrokerDialer` tries the current one
and the publisher moves it on after a failure (ordered failover).

With ``[broker] protocol = "auto"`` the publisher tries MQTT 5 first and falls back
to 3.1.1 in the same attempt when the broker refuses version 5 (RabbitMQ 3.10 and
NATS 2.9 speak only 3.1.1). The fallback is written to
``<state_dir>/broker-protocol.json`` so a restart does not pay the refused MQTT 5
attempt again, and it is trusted only for ``reprobe_interval_s``: after that MQTT 5
is tried again (a broker upgraded to MQTT 5 is noticed within a day by default).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scanfleet.daemon.core.config import BrokerConfig, BrokerProtocol, MqttVersion
from scanfleet.daemon.core.errors import BrokerRefusedError
from scanfleet.daemon.core.mqtt import Connection, versions_to_try

log = logging.getLogger(__name__)

FILE_NAME = "broker-protocol.json"


class ProtocolMemory:
    """Per broker URL: the protocol version that worked, and when it was last probed.

    Args:
        path: the JSON file (None: remember in memory only).
        reprobe_interval: seconds a 3.1.1 fallback is trusted before MQTT 5 is tried again.
        clock: wall-clock seconds (the file outlives the process, so not monotonic).
    """

    def __init__(
        self,
        path: Path | None,
        reprobe_interval: float,
        clock: Any = time.time,
    ) -> None:
        self.path = path
        self.reprobe_interval = reprobe_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded: dict[str, dict[str, Any]] | None = None

    @property
    def _known(self) -> dict[str, dict[str, Any]]:
        # Read at the first use (the publisher's first connection), not when built;
        # callers hold self._lock.
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            # Only a cache: a damaged file costs one refused MQTT 5 attempt, nothing more.
            log.warning("ignoring %s: %s", self.path, err)
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            url: entry
            for url, entry in data.items()
            if isinstance(entry, dict)
            and entry.get("protocol") in ("5", "3.1.1")
            and isinstance(entry.get("probed_at"), int | float)
        }

    def remembered(self, url: str) -> MqttVersion | None:
        """The protocol that last worked on *url*, if any."""
        with self._lock:
            entry = self._known.get(url)
        if entry is None:
            return None
        value: MqttVersion = "5" if entry["protocol"] == "5" else "3.1.1"
        return value

    def reprobe_due(self, url: str) -> bool:
        """True when *url* fell back to 3.1.1 longer than ``reprobe_interval`` ago."""
        with self._lock:
            entry = self._known.get(url)
        if entry is None or entry["protocol"] != "3.1.1":
            return False
        return bool(self._clock() - entry["probed_at"] >= self.reprobe_interval)

    def attempts(self, url: str, configured: BrokerProtocol) -> list[MqttVersion]:
        """The protocol versions to try on *url*, in order, for one connection attempt."""
        if configured == "auto" and self.remembered(url) == "3.1.1" and not self.reprobe_due(url):
            return ["3.1.1"]
        return versions_to_try(configured)

    def remember(self, url: str, protocol: MqttVersion, *, probed: bool) -> None:
        """Record that *protocol* works on *url*; *probed*: MQTT 5 was tried just now."""
        with self._lock:
            entry = self._known.get(url)
            if entry is not None and entry["protocol"] == protocol and not probed:
                return
            self._known[url] = {"protocol": protocol, "probed_at": self._clock()}
            snapshot = dict(self._known)
        self._save(snapshot)

    def _save(self, snapshot: dict[str, dict[str, Any]]) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(snapshot, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as err:
            log.warning("cannot remember the broker protocol in %s: %s", self.path, err)


class BrokerDialer:
    """The broker URL list, the current URL, and the protocol choice for one attempt.

    Args:
        broker: the configuration (URLs in order, ``protocol``, ``reprobe_interval_s``).
        memory_path: where :class:`ProtocolMemory` keeps what each URL speaks.
    """

    def __init__(self, broker: BrokerConfig, memory_path: Path | None) -> None:
        self.broker = broker
        self.urls = broker.urls
        self.index = 0
        self.memory = ProtocolMemory(memory_path, broker.reprobe_interval_s)
        self.protocol: MqttVersion | None = None
        """The MQTT version of the current (or last) attempt; None before the first."""

    @property
    def url(self) -> str:
        """The URL of the current (or next) attempt."""
        return self.urls[self.index]

    def next_url(self) -> None:
        """Move on to the next URL (after a failed attempt or a lost connection)."""
        if len(self.urls) > 1:
            self.index = (self.index + 1) % len(self.urls)
            log.info("failing over to broker %s", self.url)

    def dial(
        self, make: Callable[[BrokerConfig, MqttVersion], Connection], timeout: float
    ) -> Connection:
        """Open a connection to the current URL, falling back from MQTT 5 when refused.

        *make* builds the (unopened) connection for one URL and protocol version.
        Raises what the last attempt raised.
        """
        url = self.url
        broker = self.broker.at(url)
        attempts = self.memory.attempts(url, self.broker.protocol)
        for protocol in attempts:
            self.protocol = protocol
            conn = make(broker, protocol)
            try:
                conn.open(timeout)
            except BrokerRefusedError as err:
                if err.cause != "protocol_version" or protocol == attempts[-1]:
                    raise
                log.warning(
                    "broker %s refuses MQTT %s (%s); trying MQTT 3.1.1", url, protocol, err.reason
                )
                continue
            if self.broker.protocol == "auto":
                self.memory.remember(url, protocol, probed=attempts[0] == "5")
            return conn
        raise AssertionError("unreachable: the last attempt raises or returns")

    def reprobe_due(self) -> bool:
        """True when the current connection fell back to 3.1.1 long enough ago."""
        return (
            self.protocol == "3.1.1"
            and self.broker.protocol == "auto"
            and self.memory.reprobe_due(self.url)
        )
