"""Certificates and a TLS broker for tests, made by the product's own fleet CA.

``make_fleet(tmp_path)`` gives a fleet directory with a CA, a broker server
certificate for 127.0.0.1/localhost and helpers for device and role certificates.
``FleetBroker`` is a real mosquitto started with the configuration that
``scanfleet fleet broker-config`` generates (TLS device listener with client
certificates and ACLs, admin socket), plus the second mosquitto process that
configuration runs for enrollment, on free loopback ports.
``TLSClient`` is a small MQTT 5 test client that reports CONNACK, PUBACK reason
codes and received messages.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scanfleet.provisioning.broker import BrokerLayout, write_broker_config
from scanfleet.provisioning.ca import (
    FleetCA,
    Role,
    cert_pem,
    key_pem,
    new_private_key,
    role_common_name,
    write_private,
    write_public,
)
from support.broker import Mosquitto, free_port


@dataclass(frozen=True)
class Credentials:
    """A client certificate and its key on disk."""

    cert: Path
    key: Path
    serial: int


class Fleet:
    """A fleet directory with a CA and a broker server certificate."""

    def __init__(self, root: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> None:
        self.root = root
        self.ca = FleetCA.init(root)
        self.ca.issue_server(list(hosts))
        self.ca_file = self.ca.paths.ca_cert

    def device(self, site: str, device: str, *, days: int = 90) -> Credentials:
        """Key and certificate for ``{site}/{device}`` (the key made here, for tests only)."""
        key = new_private_key()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
            .sign(key, hashes.SHA256())
        )
        cert = self.ca.sign_device_csr(csr, site, device, days=days)
        out = self.root / "test-devices"
        cert_path, key_path = out / f"{site}.{device}.pem", out / f"{site}.{device}.key"
        write_private(key_path, key_pem(key))
        write_public(cert_path, cert_pem(cert))
        return Credentials(cert_path, key_path, cert.serial_number)

    def role(self, role: Role, name: str) -> Credentials:
        """A backend or fleet identity."""
        cert_path, key_path = self.ca.issue_role(role, name)
        serial = x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number
        return Credentials(cert_path, key_path, serial)

    def role_cn(self, role: Role, name: str) -> str:
        """The MQTT username of a role identity."""
        return role_common_name(role, name)


def make_fleet(tmp_path: Path) -> Fleet:
    """A fresh fleet in ``tmp_path/fleet``."""
    return Fleet(tmp_path / "fleet")


class _ConfiguredMosquitto(Mosquitto):
    """A mosquitto started from a configuration file written by someone else."""

    def __init__(self, executable: str, workdir: Path, port: int, conf: Path, log: Path) -> None:
        super().__init__(executable, workdir, port=port)
        self.conf_path = conf
        self.log_path = log

    def write_config(self) -> None:
        """The configuration is the product's; nothing to write."""


class FleetBroker(Mosquitto):
    """The generated fleet brokers: device broker (this process) and enrollment broker."""

    def __init__(self, executable: str, workdir: Path, fleet: Fleet) -> None:
        super().__init__(executable, workdir)
        self.fleet = fleet
        ports = {self.port}
        while len(ports) < 3:
            ports.add(free_port())
        self.enroll_port, self.service_port = sorted(ports - {self.port})
        # A Unix socket path must stay under 108 bytes: not below pytest's tmp_path.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="sf-admin-"))
        self.layout = BrokerLayout(
            device_port=self.port,
            enroll_port=self.enroll_port,
            service_port=self.service_port,
            bind_address=self.host,
            persistence_dir=workdir,
            admin_socket=self._socket_dir / "admin.sock",
            log_file=self.log_path,
            # Started as root (CI), mosquitto would drop to 'mosquitto', which cannot
            # read the test's key files.
            user="root" if os.geteuid() == 0 else None,
        )
        self.files = write_broker_config(fleet.ca, workdir / "conf", self.layout)
        enroll_log = self.layout.enroll_log_file
        assert enroll_log is not None
        self.enroll = _ConfiguredMosquitto(
            executable, workdir / "enroll", self.enroll_port, self.files.enroll_conf, enroll_log
        )

    @property
    def admin_socket(self) -> Path:
        """The device broker's dynsec admin socket."""
        return self.layout.admin_socket

    def write_config(self) -> None:
        """Write the product-generated configuration (regenerated on every start/reload)."""
        self.files = write_broker_config(self.fleet.ca, self.workdir / "conf", self.layout)
        self.conf_path = self.files.conf

    def start(self, timeout: float = 10.0) -> None:
        """Start both processes, and wait until every listener is open (logs "running").

        The base class only probes the first port; a second listener that failed to
        bind (a port taken meanwhile) makes mosquitto exit just after that probe.
        """
        super().start(timeout)
        _wait_running(self, timeout)
        if not self.enroll.running:
            self.enroll.start(timeout)
            _wait_running(self.enroll, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop both processes."""
        super().stop(sig, timeout)
        self.enroll.stop(sig, timeout)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Restart the device broker only (the enrollment broker keeps running)."""
        Mosquitto.stop(self, sig)
        self.start()

    def close(self) -> None:
        """Stop both and remove the socket directory."""
        self.stop()
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP with a regenerated config, and wait until mosquitto has reloaded.

        The signal is handled asynchronously: a client connecting right after
        ``kill`` may still meet the old ACLs and CRL.
        """
        before = [b.log().count("Reloading config.") for b in (self, self.enroll)]
        super().reload()
        assert self.enroll.proc is not None
        self.enroll.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        for broker, count in zip((self, self.enroll), before, strict=True):
            while broker.log().count("Reloading config.") == count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mosquitto did not reload: {broker.log()}")
                time.sleep(0.02)


def _wait_running(broker: Mosquitto, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while " running" not in broker.log():
        if not broker.running or time.monotonic() > deadline:
            broker.stop()
            raise RuntimeError(f"mosquitto did not come up: {broker.log()}")
        time.sleep(0.02)


class TLSClient:
    """An MQTT 5 client over TLS that records what the broker answers."""

    def __init__(
        self,
        port: int,
        ca_file: Path | None,
        creds: Credentials | None = None,
        *,
        client_id: str,
        host: str = "127.0.0.1",
        tls: bool = True,
        username: str | None = None,
        clean_start: bool = True,
        session_expiry: int = 0,
    ) -> None:
        self.connack: Any = None
        self.error: str | None = None
        self.pubacks: dict[int, int] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = 0
        self._cond = threading.Condition()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        if username is not None:
            client.username_pw_set(username)
        if tls:
            client.tls_set(
                ca_certs=str(ca_file) if ca_file else None,
                certfile=str(creds.cert) if creds else None,
                keyfile=str(creds.key) if creds else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        self.client = client
        props = None
        if session_expiry:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
        try:
            client.connect(host, port, keepalive=30, clean_start=clean_start, properties=props)
        except (OSError, ssl.SSLError) as err:
            self.error = repr(err)
            return
        client.loop_start()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _on_connect(self, c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        self.connack = rc
        self._notify()

    def _on_disconnect(self, c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        self.error = self.error or f"disconnected: {rc}"
        self._notify()

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
        self.pubacks[mid] = rc.value
        self._notify()

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: Any, p: Any) -> None:
        self.subscribed += 1
        self._notify()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait(self, predicate: Any, timeout: float = 30.0) -> bool:
        """Wait until *predicate()* holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def connected(self, timeout: float = 30.0) -> bool:
        """True after a successful CONNACK; False when refused or the TLS handshake failed."""
        self.wait(lambda: self.connack is not None or self.error is not None, timeout)
        return self.connack is not None and not self.connack.is_failure

    def publish(
        self, topic: str, payload: bytes, timeout: float = 30.0, *, retain: bool = False
    ) -> int:
        """QoS 1 publish; return the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert self.wait(lambda: info.mid in self.pubacks, timeout), f"no PUBACK for {topic}"
        return self.pubacks[info.mid]

    def subscribe(self, topic: str, timeout: float = 30.0) -> None:
        """QoS 1 subscribe and wait for the SUBACK."""
        before = self.subscribed
        self.client.subscribe(topic, qos=1)
        assert self.wait(lambda: self.subscribed > before, timeout), f"no SUBACK for {topic}"

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()
