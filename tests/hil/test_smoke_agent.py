"""The harness itself: the guest boots the stock kernel and runs functions in-process."""

from __future__ import annotations

import os
import platform
import queue
from pathlib import Path

import pytest

from hil.guest import Guest, GuestError
from hil.vm import HilVm


def describe_guest() -> dict[str, object]:
    """Runs in the guest."""
    return {"kernel": platform.release(), "pid": os.getpid(), "blob": bytes(range(256))}


def fail_in_guest(value: int) -> None:
    """Runs in the guest and raises."""
    raise ValueError(f"guest rejected {value}")


def test_guest_runs_functions_in_one_long_lived_agent(guest: Guest) -> None:
    first = guest.run(describe_guest)
    second = guest.run(describe_guest)
    assert first["pid"] == second["pid"]
    assert first["kernel"].endswith("-amd64")
    assert first["blob"] == bytes(range(256))


def test_guest_exceptions_reach_the_host_with_the_guest_traceback(guest: Guest) -> None:
    with pytest.raises(GuestError, match=r"ValueError.*guest rejected 7") as raised:
        guest.run(fail_in_guest, 7)
    assert "fail_in_guest" in raised.value.guest_traceback


def round_trip_on_guest_broker(port: int, topic: str, payload: bytes) -> bytes:
    """In the guest: publish to and receive from the mosquitto on the guest's loopback."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    received: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hil-smoke")
    client.on_message = lambda _c, _u, message: received.put(bytes(message.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        # Retained, so the message arrives whether or not the SUBACK came first.
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
        return received.get(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_mosquitto_in_the_guest_relays_a_message_on_loopback(
    guest: Guest, guest_mosquitto: int
) -> None:
    payload = b'{"gtin":"03400934567891"}'
    assert guest.run(round_trip_on_guest_broker, guest_mosquitto, "hil/smoke", payload) == payload


def write_result_file(directory: str, content: str) -> str:
    """In the guest: write into the shared writable directory."""
    path = os.path.join(directory, "guest-result.json")
    with open(path, "w", encoding="utf-8") as out:
        out.write(content)
    return path


def test_the_writable_shared_directory_carries_files_from_the_guest(
    guest: Guest, hil_vm: HilVm
) -> None:
    path = guest.run(write_result_file, str(hil_vm.rwdir), '{"seq": 1}')
    assert Path(path).read_text(encoding="utf-8") == '{"seq": 1}'
