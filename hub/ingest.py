"""One ingest worker: broker → PostgreSQL, acknowledged only after commit.

The worker keeps a persistent MQTT 5 session (fixed client id, clean start off,
session expiry) on a shared subscription, so N workers share the fleet's messages and a
restarted worker resumes its own queue. Messages are acknowledged by hand (paho
``manual_ack``) after the transaction that stored them committed; the broker never
sends more than ``window`` unacknowledged messages (MQTT 5 Receive Maximum). When the
database fails, the batch is dropped unacknowledged and the MQTT connection closed, so
the broker redelivers everything once both are back: nothing is ever acked unstored.

It subscribes again on every connect: mosquitto 2.0.11 does not restore ``$share``
subscriptions from its persistence file after a restart (docs/backend-contract.md).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scanfleet.daemon.core.backoff import Backoff
from scanfleet.daemon.core.config import BrokerConfig
from scanfleet.daemon.core.errors import BrokerConnectionError
from scanfleet.daemon.core.mqtt import Connection
from scanfleet.hub.db import HubDatabaseError, connect, require_current
from scanfleet.hub.records import MessageError, Topic, parse_json_object, parse_scans, parse_topic
from scanfleet.hub.repair import Repairer, RepairSettings
from scanfleet.hub.store import Batch, StoreResult, alert, store

log = logging.getLogger(__name__)

RESPONSE_TOPIC = "scanfleet/v1/+/+/cmd/resend/response"
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
"""The database (or our connection to it) failed, not the data: reconnect, redeliver."""
ROLLBACK_RETRIES = 5


def store_retrying(db: psycopg.Connection[tuple[Any, ...]], batch: Batch) -> StoreResult:
    """:func:`store`, again when PostgreSQL rolled the transaction back (deadlock)."""
    for attempt in range(ROLLBACK_RETRIES):
        try:
            return store(db, batch)
        except psycopg.errors.TransactionRollback as err:
            if attempt == ROLLBACK_RETRIES - 1:
                raise
            log.info("batch rolled back by PostgreSQL (%s); retrying", err)
    raise AssertionError("unreachable")


def subscriptions(group: str) -> list[str]:
    """The shared subscriptions plus the two every worker needs alone.

    Shared subscriptions get no retained messages (MQTT 5 §4.8.2), so the devices'
    retained state (their ``delivered_seq``) comes through a plain subscription; resend
    replies are addressed to whoever asked.
    """
    shared = [f"$share/{group}/scanfleet/v1/+/+/{c}" for c in ("scans", "state", "health")]
    return [*shared, "scanfleet/v1/+/+/state", RESPONSE_TOPIC]


def derive_client_id(host: str, group: str, index: int) -> str:
    """Stable client id of worker *index* of *group* on *host*: a restart resumes its session."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{host}-{group}")
    return f"hub-{safe}-{index}"[:200]


def default_client_id(group: str, index: int) -> str:
    """:func:`derive_client_id` for this machine."""
    return derive_client_id(socket.gethostname(), group, index)


@dataclass(frozen=True)
class IngestSettings:
    """How one worker connects, batches and repairs."""

    dsn: str
    broker: BrokerConfig
    client_id: str
    group: str = "scanfleet-hub"
    window: int = 1000
    """Receive Maximum: unacknowledged messages the broker may send before waiting."""
    batch_max: int = 500
    batch_wait: float = 0.05
    """Seconds a batch may keep reading before it commits even though more keep coming."""
    session_expiry: int = 7 * 24 * 3600
    repair: RepairSettings = field(default_factory=RepairSettings)


@dataclass
class Counters:
    """What a worker has done (logged at exit, used by benchmarks)."""

    messages: int = 0
    batches: int = 0
    stored: StoreResult = field(default_factory=StoreResult)


class IngestWorker:
    """Consume, store, acknowledge; reconnect both ends with backoff until *stop* is set."""

    def __init__(self, settings: IngestSettings, stop: threading.Event) -> None:
        self.settings = settings
        self.stop = stop
        self.counters = Counters()
        self._pending: list[mqtt.MQTTMessage] = []
        self._first_at = 0.0

    def run(self) -> None:
        """Work until :attr:`stop` is set; in-flight messages stay unacknowledged."""
        backoff = Backoff(0.2, 10.0)
        while not self.stop.is_set():
            conn: Connection | None = None
            db: psycopg.Connection[tuple[Any, ...]] | None = None
            try:
                db = connect(self.settings.dsn)
                require_current(db)
                db.commit()
                conn = self._connect()
                backoff.reset()
                self._serve(conn, db)
            except (BrokerConnectionError, HubDatabaseError, OSError, *CONNECTION_ERRORS) as err:
                log.warning("ingest %s: %s; reconnecting", self.settings.client_id, err)
            finally:
                self._pending.clear()
                if conn is not None:
                    conn.disconnect()
                if db is not None:
                    db.close()
            if not self.stop.is_set():
                self.stop.wait(backoff.next())
        log.info(
            "ingest %s stopped: %d messages, %d records stored, %d duplicates",
            self.settings.client_id,
            self.counters.messages,
            self.counters.stored.inserted,
            self.counters.stored.duplicates,
        )

    def _connect(self) -> Connection:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.settings.session_expiry
        props.ReceiveMaximum = self.settings.window
        conn = Connection(
            self.settings.broker,
            self.settings.client_id,
            inflight=20,
            will=None,
            on_ack=lambda mid, code, reason: None,
            on_raw_message=self._receive,
            clean_start=False,
            connect_properties=props,
            manual_ack=True,
        )
        conn.open(timeout=10.0)
        # Every connect, not only the first: see the module docstring.
        conn.subscribe(subscriptions(self.settings.group))
        log.info("ingest %s connected and subscribed", self.settings.client_id)
        return conn

    def _receive(self, msg: mqtt.MQTTMessage) -> None:
        self._pending.append(msg)

    def _serve(self, conn: Connection, db: psycopg.Connection[tuple[Any, ...]]) -> None:
        repairer = Repairer(db, conn.publish, self.settings.repair)
        while not self.stop.is_set():
            before = len(self._pending)
            # Natural batching: read while messages keep coming (they pile up during a
            # commit under load), commit as soon as the socket has nothing more, so a
            # quiet fleet's scan is stored within milliseconds and a busy one in big batches.
            conn.pump(0 if before else 0.2)
            if before == 0 and self._pending:
                self._first_at = time.monotonic()
            if self._pending and (
                len(self._pending) == before
                or len(self._pending) >= self.settings.batch_max
                or time.monotonic() - self._first_at >= self.settings.batch_wait
            ):
                self._flush(conn, db)
            repairer.tick()

    def _flush(self, conn: Connection, db: psycopg.Connection[tuple[Any, ...]]) -> None:
        messages, self._pending = self._pending, []
        started = time.monotonic()
        batch, bad = build_batch(messages)
        try:
            result = store_retrying(db, batch)
        except CONNECTION_ERRORS:
            raise
        except psycopg.Error as err:
            # Not the connection: one message breaks the batch. Store them one by one so
            # the rest commit and the culprit is set aside with an alert, not redelivered
            # forever.
            log.warning("batch of %d messages failed (%s); storing one by one", len(messages), err)
            result = StoreResult()
            for msg in messages:
                single, single_bad = build_batch([msg])
                try:
                    part = store_retrying(db, single)
                except CONNECTION_ERRORS:
                    raise
                except psycopg.Error as one_err:
                    bad.append((msg, str(one_err)))
                    continue
                for name in ("inserted", "duplicates", "conflicts", "breaks"):
                    setattr(result, name, getattr(result, name) + getattr(part, name))
                bad += single_bad
        if bad:
            with db.transaction():
                for msg, why in bad:
                    alert(
                        db,
                        "bad_message",
                        None,
                        None,
                        f"unusable message on {msg.topic}: {why}",
                        topic=msg.topic,
                        payload=bytes(msg.payload[:65536]).decode("utf-8", "replace"),
                    )
        log.debug(
            "batch: %d messages, %d records new, %d duplicate, in %.1f ms",
            len(messages),
            result.inserted,
            result.duplicates,
            (time.monotonic() - started) * 1000,
        )
        # Committed: now, and only now, the broker may forget them.
        for msg in messages:
            conn.ack(msg.mid, msg.qos)
        self.counters.messages += len(messages)
        self.counters.batches += 1
        for name in ("inserted", "duplicates", "conflicts", "breaks"):
            setattr(
                self.counters.stored,
                name,
                getattr(self.counters.stored, name) + getattr(result, name),
            )


def build_batch(
    messages: list[mqtt.MQTTMessage],
) -> tuple[Batch, list[tuple[mqtt.MQTTMessage, str]]]:
    """Parse *messages* into one batch; the unusable ones with why."""
    batch = Batch()
    bad: list[tuple[mqtt.MQTTMessage, str]] = []
    for msg in messages:
        try:
            if msg.topic.endswith("/cmd/resend/response"):
                _response(batch, msg)
                continue
            topic = parse_topic(msg.topic)
            payload = bytes(msg.payload)
            if topic.channel == "scans":
                batch.rows.extend(parse_scans(topic, payload))
            elif topic.channel == "state":
                if payload:  # a cleared retained state is no message
                    batch.states.append((topic, parse_json_object(payload)))
            else:
                batch.healths.append((topic, parse_json_object(payload)))
        except MessageError as err:
            bad.append((msg, str(err)))
    return batch, bad


def _response(batch: Batch, msg: mqtt.MQTTMessage) -> None:
    props = getattr(msg, "properties", None)
    correlation = getattr(props, "CorrelationData", None)
    if not correlation:
        return  # another client's command; not ours to record
    batch.responses.append(
        (bytes(correlation).decode("ascii", "replace"), parse_json_object(bytes(msg.payload)))
    )


__all__ = ["IngestSettings", "IngestWorker", "Topic", "default_client_id", "subscriptions"]
