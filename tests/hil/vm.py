"""Boot and tear down the HIL guest: ``vng`` (virtme-ng) over the host's own root.

One guest per test session. Always TCG (``--disable-kvm --disable-microvm``): this
machine type's /dev/kvm is a paravirtual backend a stock kernel cannot use. The generic
Debian kernel is required; the cloud kernel has no USB, uinput or 9p.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hil.guest import Guest, GuestGone
from hil.qmp import Qmp
from hil.streams import ByteStream

log = logging.getLogger(__name__)

AGENT = Path(__file__).resolve().with_name("agent.py")
REPO = AGENT.parents[2]
#: QOM ids of the devices every guest has; tests address them through QMP.
USB_BUS = "xhci.0"
KEYBOARD_ID = "kbd0"
FTDI_ID = "ftdi0"
FTDI_CHARDEV = "ftdi"
FTDI_PROPS = f"id={FTDI_ID},bus={USB_BUS},chardev={FTDI_CHARDEV},always-plugged=on"
#: Below pytest-timeout's 300 s, so a slow boot fails with the console log attached.
BOOT_TIMEOUT = float(os.environ.get("SCANFLEET_HIL_BOOT_TIMEOUT", "240"))


class HilBootError(RuntimeError):
    """The guest did not come up; the message carries the console log's tail."""


@dataclass(frozen=True)
class Prerequisites:
    """Host programs and files a HIL boot needs."""

    vng: str
    qemu: str
    busybox: str
    kernel: Path


def _version_key(path: Path) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", path.name)]


def find_kernel(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> Path | None:
    """Newest generic Debian kernel (``vmlinuz-*-amd64``, not ``-cloud-``) with its modules."""
    candidates = [
        k
        for k in boot.glob("vmlinuz-*-amd64")
        if "-cloud-" not in k.name and (modules / k.name.removeprefix("vmlinuz-")).is_dir()
    ]
    return max(candidates, key=_version_key) if candidates else None


def find_prerequisites() -> Prerequisites | str:
    """What a boot needs, or the reason it cannot boot (for ``support.prereq.missing``)."""
    venv_bin = Path(sys.executable).parent
    vng = shutil.which("vng", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    if vng is None:
        return "virtme-ng (vng) is not installed in the venv: pip install -e '.[dev]'"
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return "qemu-system-x86_64 is not installed: .ci/sysdeps hil"
    busybox = shutil.which("busybox")
    if busybox is None:
        return "busybox (virtme-ng's initramfs needs it) is not installed: .ci/sysdeps hil"
    kernel = find_kernel()
    if kernel is None:
        return (
            "no generic Debian kernel /boot/vmlinuz-*-amd64 with /lib/modules "
            "(the cloud kernel has no USB, uinput or 9p): .ci/sysdeps hil"
        )
    return Prerequisites(vng=vng, qemu=qemu, busybox=busybox, kernel=kernel)


def _copy_to_file(source: BinaryIO | None, path: Path) -> None:
    assert source is not None
    with path.open("wb") as sink:
        # read1: return what the pipe has now instead of waiting for 64 KiB.
        while chunk := source.read1(65536):  # type: ignore[attr-defined]
            sink.write(chunk)
            sink.flush()


class HilVm:
    """A running guest with its host-side handles: QMP, serial sockets and the agent."""

    def __init__(self, prereqs: Prerequisites, workdir: Path, cpus: int = 2) -> None:
        self.prereqs = prereqs
        self.workdir = workdir
        self.cpus = cpus
        self.rwdir = workdir / "rw"
        self.console_path = workdir / "console.log"
        self.sock = {n: str(workdir / f"{n}.sock") for n in ("qmp", "agent", "ftdi", "uart")}
        self.process: subprocess.Popen[bytes] | None = None
        self.qmp: Qmp | None = None
        self.guest: Guest | None = None
        self.ftdi: ByteStream | None = None
        self.uart: ByteStream | None = None
        self._pump: threading.Thread | None = None

    def qemu_options(self) -> list[str]:
        """Devices on top of what vng adds; all host ends are unix sockets in workdir."""
        s = self.sock
        return [
            "-qmp", f"unix:{s['qmp']},server=on,wait=off",
            "-pidfile", str(self.workdir / "qemu.pid"),
            "-device", "qemu-xhci,id=xhci",
            "-device", f"usb-kbd,id={KEYBOARD_ID},bus={USB_BUS}",
            "-chardev", f"socket,id={FTDI_CHARDEV},path={s['ftdi']},server=on,wait=off",
            "-device", f"usb-serial,{FTDI_PROPS}",
            "-chardev", f"socket,id=uart,path={s['uart']},server=on,wait=off",
            "-device", "isa-serial,id=uart1,chardev=uart",
            "-device", "virtio-serial-pci,id=hilbus",
            "-chardev", f"socket,id=agent,path={s['agent']},server=on,wait=off",
            "-device", "virtserialport,bus=hilbus.0,chardev=agent,name=scanfleet.agent",
        ]  # fmt: skip

    def command(self) -> list[str]:
        """The ``vng`` command line."""
        agent = shlex.join(
            ["env", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", sys.executable, str(AGENT)]
        )
        return [
            self.prereqs.vng,
            "--run", str(self.prereqs.kernel),
            "--disable-kvm", "--disable-microvm",
            # Debian's qemu ships the C virtiofsd, which vng tries, fails and abandons
            # after ~3 s (and a stray background daemon); 9p works from the start.
            "--force-9p",
            "--verbose",
            "--cpus", str(self.cpus),
            "--memory", "1G",
            "--busybox", self.prereqs.busybox,
            "--qemu", self.prereqs.qemu,
            "--rwdir", str(self.rwdir),
            "--exec", agent,
            "--qemu-opts=" + shlex.join(self.qemu_options()),
        ]  # fmt: skip

    def console_tail(self, lines: int = 60) -> str:
        """Last *lines* of the guest console and vng output."""
        try:
            text = self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no console log)"
        # vng draws a spinner with carriage returns; keep only lines with content.
        kept = [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
        tail = "\n".join(kept[-lines:])
        return f"--- last {lines} lines of {self.console_path} ---\n{tail}"

    def alive(self) -> bool:
        """True while vng/QEMU runs."""
        return self.process is not None and self.process.poll() is None

    def start(self, boot_timeout: float = BOOT_TIMEOUT) -> None:
        """Boot and connect every handle; on failure stop and raise :class:`HilBootError`."""
        self.rwdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # vng runs virtme-run through PATH; both live in the venv's bin.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        log.info("booting HIL guest: %s", shlex.join(self.command()))
        # A pipe, not the log file itself: QEMU reopens its stdio through /proc/self/fd
        # with its own file offset, which would overwrite what vng logged before it.
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,  # one process group: vng, sh, QEMU die together
        )
        self._pump = threading.Thread(
            target=_copy_to_file, args=(self.process.stdout, self.console_path), daemon=True
        )
        self._pump.start()
        atexit.register(self.stop)
        try:
            self._wait_for_qemu(boot_timeout)
            self.qmp = Qmp(self.sock["qmp"], timeout=30)
            self.ftdi = ByteStream(self.sock["ftdi"], "usb-serial")
            self.uart = ByteStream(self.sock["uart"], "uart")
            self.guest = Guest(self.sock["agent"], self.console_tail)
            self.guest.wait_hello(boot_timeout, self.alive)
        except (OSError, TimeoutError, GuestGone, RuntimeError) as err:
            self.stop()
            raise HilBootError(
                f"HIL guest failed to boot: {err}\ncommand: {shlex.join(self.command())}\n"
                f"{self.console_tail()}"
            ) from err
        except BaseException:
            self.stop()  # pytest-timeout or ^C mid-boot: still no QEMU left behind
            raise

    def _wait_for_qemu(self, timeout: float) -> None:
        # QEMU creates every chardev socket before it starts the guest; a vng or QEMU
        # that exits first (bad kernel, bad option) is reported at once, not at timeout.
        deadline = time.monotonic() + timeout
        while not all(os.path.exists(path) for path in self.sock.values()):
            if not self.alive():
                raise GuestGone("vng/QEMU exited before creating its sockets")
            if time.monotonic() > deadline:
                raise TimeoutError(f"QEMU sockets not created within {timeout} s")
            time.sleep(0.1)

    def stop(self) -> None:
        """Power off and reap QEMU; kill the process group if it does not go quietly."""
        if self.process is None:
            return
        process, self.process = self.process, None
        for handle in (self.ftdi, self.uart):
            if handle is not None:
                handle.close()
        if self.guest is not None:
            self.guest.close(exit_agent=False)
        if self.qmp is not None:
            if process.poll() is None:
                try:
                    self.qmp.execute("quit", timeout=5)
                except (OSError, TimeoutError, RuntimeError) as err:
                    log.debug("QMP quit: %s", err)
            self.qmp.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.warning("HIL guest did not quit; killing process group %d", process.pid)
        # Whatever is left in the group (QEMU if vng died first) goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        if self._pump is not None:
            self._pump.join(timeout=10)  # the console log is complete once QEMU's pipe closed
        if process.stdout is not None:
            process.stdout.close()
        atexit.unregister(self.stop)
        log.info("HIL guest stopped")
