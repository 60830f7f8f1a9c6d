"""USB devices behind pyusb's own backend interface, for the usbhid and idcard_usb drivers.

python-can's gs_usb tests patch ``usb.core.find``; this goes one layer lower so the
drivers run against real pyusb. :func:`install` makes ``usb.core.find`` search a
:class:`FakeUsbBackend` (a ``usb.backend.IBackend``, the interface pyusb's libusb1
backend implements), so ``find`` builds real ``usb.core.Device`` objects with real
Configuration/Interface/Endpoint descriptors, ``usb.util`` claims and releases through
pyusb's resource manager, and the errors are pyusb's (``USBTimeoutError`` when an
interrupt read times out, ``USBError`` with errno ENODEV once the device is unplugged).

Only libusb is replaced. A :class:`UsbDeviceModel` is the device's firmware: one
interface with an interrupt IN endpoint (0x81) and optionally an interrupt OUT one
(0x01); it queues IN reports and answers OUT reports and control transfers
(subclasses speak HID POS or the ID-card reader's 64-byte wrapper).
"""

from __future__ import annotations

import array
import errno
import functools
import threading
import time
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest
import usb.backend
import usb.core

LIBUSB_ERROR_NO_DEVICE = -4
LIBUSB_ERROR_TIMEOUT = -7
LIBUSB_ERROR_PIPE = -9
GET_DESCRIPTOR = 0x06
DT_STRING = 0x03
EP_IN, EP_OUT = 0x81, 0x01
INTERRUPT = 0x03


def no_device() -> usb.core.USBError:
    """What libusb1 raises for a vanished device (LIBUSB_ERROR_NO_DEVICE)."""
    return usb.core.USBError("No such device (it may have been disconnected)", -4, errno.ENODEV)


class UsbDeviceModel:
    """One USB device: descriptors, kernel-driver state, report queues and a firmware hook."""

    def __init__(
        self,
        vid: int,
        pid: int,
        *,
        serial: str = "",
        product: str = "scanfleet test device",
        interface_class: int = 3,
        packet_size: int = 64,
        has_out: bool = True,
    ) -> None:
        self.vid, self.pid = vid, pid
        self.strings = {1: "scanfleet", 2: product, 3: serial}
        self.interface_class = interface_class
        self.packet_size = packet_size
        self.endpoints = (EP_IN, EP_OUT) if has_out else (EP_IN,)
        self.present = True
        self.kernel_driver_active = True
        """As enumerated: usbhid (or hid-generic) is bound until the driver detaches it."""
        self.configuration = 1
        self.claimed: set[int] = set()
        self.out_reports: list[bytes] = []
        """Every OUT-endpoint write, in order."""
        self.control_out: list[tuple[int, int, int, int, bytes]] = []
        """Host-to-device control transfers: (bmRequestType, bRequest, wValue, wIndex, data)."""
        self._in: deque[bytes] = deque()
        self._cond = threading.Condition()

    # -- the test's side ------------------------------------------------------------

    def queue_in(self, *reports: bytes) -> None:
        """Reports the device sends on its IN endpoint, in order."""
        with self._cond:
            self._in.extend(reports)
            self._cond.notify_all()

    def unplug(self) -> None:
        """The cable is pulled: every transfer fails with ENODEV, find() no longer sees it."""
        with self._cond:
            self.present = False
            self._cond.notify_all()

    # -- firmware hooks -------------------------------------------------------------

    def on_out(self, data: bytes) -> None:
        """An OUT report arrived (called after it is logged)."""

    def on_control_out(
        self, request_type: int, request: int, value: int, index: int, data: bytes
    ) -> None:
        """A host-to-device control transfer arrived (raise ``stall()`` to refuse it)."""

    # -- what the backend calls -----------------------------------------------------

    def check_present(self) -> None:
        if not self.present:
            raise no_device()

    def read_in(self, size: int, timeout_ms: int) -> bytes:
        deadline = time.monotonic() + timeout_ms / 1000
        with self._cond:
            while True:
                self.check_present()
                if self._in:
                    return self._in.popleft()[:size]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise usb.core.USBTimeoutError(
                        "Operation timed out", LIBUSB_ERROR_TIMEOUT, errno.ETIMEDOUT
                    )
                self._cond.wait(remaining)

    def string(self, index: int) -> bytes:
        if index == 0:
            return bytes((4, DT_STRING, 0x09, 0x04))  # LANGID en-US
        text = self.strings.get(index, "").encode("utf-16-le")
        return bytes((2 + len(text), DT_STRING)) + text


def stall() -> usb.core.USBError:
    """A STALLed control request (LIBUSB_ERROR_PIPE)."""
    return usb.core.USBError("Pipe error", LIBUSB_ERROR_PIPE, errno.EPIPE)


class FakeUsbBackend(usb.backend.IBackend):
    """pyusb's backend interface over :class:`UsbDeviceModel` objects (no libusb)."""

    def __init__(self, *devices: UsbDeviceModel) -> None:
        self.devices = list(devices)

    def enumerate_devices(self) -> list[UsbDeviceModel]:
        return [d for d in self.devices if d.present]

    def get_device_descriptor(self, dev: UsbDeviceModel) -> SimpleNamespace:
        return SimpleNamespace(
            bLength=18,
            bDescriptorType=1,
            bcdUSB=0x0200,
            bDeviceClass=0,
            bDeviceSubClass=0,
            bDeviceProtocol=0,
            bMaxPacketSize0=64,
            idVendor=dev.vid,
            idProduct=dev.pid,
            bcdDevice=0x0100,
            iManufacturer=1,
            iProduct=2,
            iSerialNumber=3 if dev.strings[3] else 0,
            bNumConfigurations=1,
            address=self.devices.index(dev) + 2,
            bus=1,
            port_number=self.devices.index(dev) + 1,
            port_numbers=(self.devices.index(dev) + 1,),
            speed=2,
        )

    def get_configuration_descriptor(self, dev: UsbDeviceModel, config: int) -> SimpleNamespace:
        if config != 0:
            raise IndexError(config)
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=2,
            wTotalLength=9 + 9 + 7 * len(dev.endpoints),
            bNumInterfaces=1,
            bConfigurationValue=1,
            iConfiguration=0,
            bmAttributes=0x80,
            bMaxPower=50,
            extra_descriptors=[],
        )

    def get_interface_descriptor(
        self, dev: UsbDeviceModel, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        if (intf, alt, config) != (0, 0, 0):
            raise IndexError((intf, alt, config))
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=4,
            bInterfaceNumber=0,
            bAlternateSetting=0,
            bNumEndpoints=len(dev.endpoints),
            bInterfaceClass=dev.interface_class,
            bInterfaceSubClass=0,
            bInterfaceProtocol=0,
            iInterface=0,
            extra_descriptors=[],
        )

    def get_endpoint_descriptor(
        self, dev: UsbDeviceModel, ep: int, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        if (intf, alt, config) != (0, 0, 0) or ep >= len(dev.endpoints):
            raise IndexError((ep, intf, alt, config))
        return SimpleNamespace(
            bLength=7,
            bDescriptorType=5,
            bEndpointAddress=dev.endpoints[ep],
            bmAttributes=INTERRUPT,
            wMaxPacketSize=dev.packet_size,
            bInterval=1,
            bRefresh=0,
            bSynchAddress=0,
            extra_descriptors=[],
        )

    def open_device(self, dev: UsbDeviceModel) -> UsbDeviceModel:
        dev.check_present()
        return dev

    def close_device(self, dev_handle: UsbDeviceModel) -> None:
        pass

    def set_configuration(self, dev_handle: UsbDeviceModel, config_value: int) -> None:
        dev_handle.check_present()
        dev_handle.configuration = config_value

    def get_configuration(self, dev_handle: UsbDeviceModel) -> int:
        dev_handle.check_present()
        return dev_handle.configuration

    def set_interface_altsetting(self, dev_handle: UsbDeviceModel, intf: int, alt: int) -> None:
        dev_handle.check_present()

    def claim_interface(self, dev_handle: UsbDeviceModel, intf: int) -> None:
        dev_handle.check_present()
        if dev_handle.kernel_driver_active:
            raise usb.core.USBError("Resource busy", -6, errno.EBUSY)
        dev_handle.claimed.add(intf)

    def release_interface(self, dev_handle: UsbDeviceModel, intf: int) -> None:
        dev_handle.check_present()
        dev_handle.claimed.discard(intf)

    def intr_read(
        self, dev_handle: UsbDeviceModel, ep: int, intf: int, buff: array.array[int], timeout: int
    ) -> int:
        self._check_claimed(dev_handle, intf)
        data = dev_handle.read_in(len(buff), timeout)
        buff[: len(data)] = array.array("B", data)
        return len(data)

    def intr_write(
        self, dev_handle: UsbDeviceModel, ep: int, intf: int, data: array.array[int], timeout: int
    ) -> int:
        self._check_claimed(dev_handle, intf)
        report = bytes(data)
        dev_handle.out_reports.append(report)
        dev_handle.on_out(report)
        return len(report)

    def ctrl_transfer(
        self,
        dev_handle: UsbDeviceModel,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array.array[int],
        timeout: int,
    ) -> int:
        dev_handle.check_present()
        if bmRequestType & 0x80:  # device to host
            if bRequest == GET_DESCRIPTOR and wValue >> 8 == DT_STRING:
                reply = dev_handle.string(wValue & 0xFF)[: len(data)]
                data[: len(reply)] = array.array("B", reply)
                return len(reply)
            raise stall()
        payload = bytes(data)
        dev_handle.control_out.append((bmRequestType, bRequest, wValue, wIndex, payload))
        dev_handle.on_control_out(bmRequestType, bRequest, wValue, wIndex, payload)
        return len(payload)

    def is_kernel_driver_active(self, dev_handle: UsbDeviceModel, intf: int) -> bool:
        dev_handle.check_present()
        return dev_handle.kernel_driver_active

    def detach_kernel_driver(self, dev_handle: UsbDeviceModel, intf: int) -> None:
        dev_handle.check_present()
        dev_handle.kernel_driver_active = False

    def attach_kernel_driver(self, dev_handle: UsbDeviceModel, intf: int) -> None:
        dev_handle.check_present()
        if dev_handle.claimed:
            raise usb.core.USBError("Resource busy", -6, errno.EBUSY)
        dev_handle.kernel_driver_active = True

    @staticmethod
    def _check_claimed(dev_handle: UsbDeviceModel, intf: int) -> None:
        dev_handle.check_present()
        if intf not in dev_handle.claimed:
            raise usb.core.USBError("interface not claimed", -5, errno.ENOENT)


def install(monkeypatch: pytest.MonkeyPatch, backend: FakeUsbBackend) -> None:
    """Make ``usb.core.find`` (as the drivers call it) search *backend*."""
    real_find: Any = usb.core.find
    monkeypatch.setattr(usb.core, "find", functools.partial(real_find, backend=backend))
