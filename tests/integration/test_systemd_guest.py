"""The installed, hardened unit really runs the daemon: a QEMU guest booted with systemd
as init (``vng --systemd``), the ``make install`` tree deployed into it like a package,
a serial scanner on QEMU's FTDI (ftdi_sio → /dev/ttyUSB0 → /dev/scanfleet/ link from our
udev rules), and a mosquitto on the guest's loopback.

``vng --systemd`` does not run ``--exec``, and the guest's systemd ignores the kernel
command line (``systemd.run=``, ``systemd.unit=``): it sees the host root's /.dockerenv
and believes it runs in a container. What it does read is the unit directory vng makes
for each run and puts first in ``SYSTEMD_UNIT_PATH``; the test adds a ``default.target``
there, right after vng creates it and before the guest's systemd starts, that pulls
in only basic.target and a oneshot running the guest script, which powers the guest off
when it ends. Results come back through the shared rwdir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanfleet.drivers.feedback import HONEYWELL_BEEP
from support.ftdi_scanner import FtdiScanner
from support.prereq import missing

pytestmark = [pytest.mark.hil, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CODE = b"81234567890123456789"
BOOT_AND_RUN_TIMEOUT = float(os.environ.get("SCANFLEET_HIL_SYSTEMD_TIMEOUT", "900"))

GUEST_SCRIPT = r"""#!/bin/sh
# Runs in the guest as kernel-command-line.service (systemd is PID 1).
RW=@RW@
# vng's own init would mount the rwdir; with systemd as init nobody does: mount its 9p tag.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 virtme.initmount0 "$RW"
exec > "$RW/guest.log" 2>&1
set -x
# The host root is read-only 9p and vng's init (which lays overlays) did not run: give
# /usr, /etc and /var a tmpfs upper layer so the package can be installed.
mkdir -p /run/sfov
mount -t tmpfs tmpfs /run/sfov
for d in usr etc var; do
  mkdir -p /run/sfov/$d/upper /run/sfov/$d/work
  mount -t overlay overlay \
    -o lowerdir=/$d,upperdir=/run/sfov/$d/upper,workdir=/run/sfov/$d/work /$d
done
set -e  # from here on, a failing step ends the script, and the guest with it
# Deploy the staged `make install` tree as a package would (/usr, /etc are overlays).
# The venv (thousands of files) is bind-mounted at its final path instead of copied
# through 9p under TCG; everything else is copied.
mkdir -p /usr/lib/scanfleet
mount --bind "$RW/stage/usr/lib/scanfleet" /usr/lib/scanfleet
(cd "$RW/stage" && find . -path ./usr/lib/scanfleet -prune -o -type f -print \
  | cpio -pdm --quiet /)
systemd-sysusers /usr/lib/sysusers.d/scanfleet.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/scanfleet.conf
# udevd runs with PrivateMounts=: restarted, it sees the new rules in the /usr overlay.
systemctl restart systemd-udevd
modprobe ftdi_sio || true
udevadm trigger --action=add --subsystem-match=usb --subsystem-match=usb-serial \
  --subsystem-match=tty
udevadm settle --timeout=60
udevadm info /dev/ttyUSB0 || true
ls -l /dev/scanfleet/ > "$RW/devlinks.txt"
PORT=$(ls /dev/scanfleet/serial-0403_6001-* | head -n 1)
cat > /etc/scanfleet/scanfleet.toml <<EOF
[identity]
site = "site-hil"
device = "dev-hil"

[broker]
url = "mqtt://127.0.0.1:1883"

[station]
name = "counter-1"
operation = "retail_sale"

[[devices]]
name = "counter-scanner"
driver = "serial"
port = "$PORT"
baudrate = 115200
framing = "cr"
aim_prefix = false
feedback = "honeywell"
EOF
chgrp scanfleet /etc/scanfleet/scanfleet.toml
chmod 0640 /etc/scanfleet/scanfleet.toml
systemd-run --unit=hil-mosquitto /usr/sbin/mosquitto -p 1883
sleep 3
mosquitto_sub -h 127.0.0.1 -p 1883 -t 'scanfleet/v1/+/+/scans' -C 1 -W 300 > "$RW/scans.json" &
SUB=$!
systemctl daemon-reload
systemctl start scanfleet.service
echo "start=$?" > "$RW/start.txt"
systemctl show scanfleet.service -p ActiveState -p SubState -p StatusText -p User \
  -p MainPID > "$RW/show-started.txt"
touch "$RW/send-scans"
wait $SUB
echo "sub=$?" >> "$RW/start.txt"
sleep 2
systemctl show scanfleet.service -p ActiveState -p StatusText -p NRestarts \
  > "$RW/show-scanned.txt"
PID=$(systemctl show scanfleet.service -p MainPID --value)
grep -E '^(Uid|Gid|Groups|NoNewPrivs|Seccomp|CapEff):' /proc/$PID/status > "$RW/proc-status.txt"
journalctl -u scanfleet.service -o json --no-pager > "$RW/journal.json"
systemctl stop scanfleet.service
systemctl show scanfleet.service -p ActiveState -p Result -p ExecMainStatus \
  > "$RW/show-stopped.txt"
systemd-analyze security scanfleet.service --no-pager > "$RW/security.txt" 2>&1
touch "$RW/done"
"""


def _vng_supports_systemd(vng: str) -> bool:
    result = subprocess.run([vng, "--help"], capture_output=True, text=True, check=False)
    return "--systemd" in result.stdout


DEFAULT_TARGET = """[Unit]
Description=scanfleet HIL: basic system plus the guest script, nothing else
Requires=basic.target scanfleet-hil.service
After=basic.target scanfleet-hil.service
AllowIsolate=yes
"""

HIL_SERVICE = """[Unit]
Description=scanfleet HIL guest script
After=basic.target systemd-udevd.service systemd-journald.service
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=@SCRIPT@
TimeoutStartSec=infinity
"""


def _plant_default_target(
    cache: Path, before: set[Path], script: Path, vm: subprocess.Popen[bytes]
) -> None:
    """Put our default.target into the unit directory vng just made for this guest."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and vm.poll() is None:
        new = set(cache.iterdir()) - before if cache.is_dir() else set()
        if new:
            (unitdir,) = new
            (unitdir / "scanfleet-hil.service").write_text(
                HIL_SERVICE.replace("@SCRIPT@", str(script)), encoding="utf-8"
            )
            (unitdir / "default.target").write_text(DEFAULT_TARGET, encoding="utf-8")
            return
        time.sleep(0.01)
    raise AssertionError("vng made no per-run unit directory (has virtme-ng changed?)")


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not under /tmp or /var: vng lays fresh overlays over those in the guest, hiding the
    # rwdir. Short: QEMU's unix socket paths are limited to 108 bytes.
    parent = Path.home() / ".cache" / "scanfleet-hil"
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="sfsd-", dir=parent))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(BOOT_AND_RUN_TIMEOUT + 900)
def test_installed_unit_runs_the_daemon_in_a_systemd_guest_and_delivers_a_scan(
    workdir: Path,
) -> None:
    from hil.vm import Prerequisites, find_prerequisites

    prereqs = find_prerequisites()
    if not isinstance(prereqs, Prerequisites):
        missing(prereqs)
    if not _vng_supports_systemd(prereqs.vng):
        missing("this virtme-ng has no --systemd")
    python = "/usr/bin/python3"  # the guest's venv must use a Python outside /root
    if not Path(python).exists() or shutil.which("mosquitto_sub") is None:
        missing("needs Debian's python3 (python3-venv) and mosquitto-clients")
    rw = workdir / "rw"
    stage = rw / "stage"
    rw.mkdir()
    make = ["make", "-s", "-C", str(ROOT)]
    if "systemd/install.mk" not in (ROOT / "Makefile").read_text(encoding="utf-8"):
        make += ["-f", "systemd/install.mk"]
    subprocess.run(
        [*make, "install", f"DESTDIR={stage}", "PREFIX=/usr", f"INSTALL_PYTHON={python}"],
        check=True,
        capture_output=True,
        timeout=900,
    )
    script = rw / "run.sh"
    script.write_text(GUEST_SCRIPT.replace("@RW@", str(rw)), encoding="utf-8")
    script.chmod(0o755)
    ftdi = workdir / "ftdi.sock"
    qemu_opts = (
        "-device qemu-xhci,id=xhci "
        f"-chardev socket,id=ftdi,path={ftdi},server=on,wait=off "
        "-device usb-serial,id=ftdi0,bus=xhci.0,chardev=ftdi,always-plugged=on"
    )
    command = [
        prereqs.vng, "--run", str(prereqs.kernel), "--disable-kvm", "--disable-microvm",
        "--force-9p", "--verbose", "--cpus", "2", "--memory", "1G",
        "--busybox", prereqs.busybox, "--qemu", prereqs.qemu, "--rwdir", str(rw), "--systemd",
            f"--qemu-opts={qemu_opts}",
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    go = rw / "send-scans"
    scanner = FtdiScanner(ftdi, lambda: [CODE + b"\r"] if go.exists() else [])
    console = workdir / "console.log"
    cache = Path.home() / ".cache/virtme-ng/guest"
    before = set(cache.iterdir()) if cache.is_dir() else set()
    with console.open("wb") as out:
        vm = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        _plant_default_target(cache, before, script, vm)
        vm.wait(BOOT_AND_RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(vm.pid, 9)
        vm.wait(30)
    finally:
        scanner.stop()

    def read(name: str) -> str:
        path = rw / name
        return path.read_text(errors="replace") if path.exists() else f"(no {name})"

    report = "\n".join(
        f"--- {n}\n{read(n)}"
        for n in ("guest.log", "start.txt", "show-started.txt", "show-scanned.txt")
    )
    tail = console.read_text(errors="replace")[-4000:]
    assert (rw / "done").exists(), report + "\n--- console\n" + tail
    assert "start=0" in read("start.txt"), report  # Type=notify: start waits for READY=1
    started = read("show-started.txt")
    assert "ActiveState=active" in started
    assert "User=scanfleet" in started
    assert "1 device (1 bound)" in started, started  # STATUS= from the daemon
    assert "sub=0" in read("start.txt"), report
    assert CODE.decode() in read("scans.json")
    assert HONEYWELL_BEEP in scanner.received  # the good-read beep went back to the scanner
    assert "serial-0403_6001-" in read("devlinks.txt")
    status = read("proc-status.txt")
    assert "NoNewPrivs:\t1" in status, status
    assert "Seccomp:\t2" in status, status
    assert '"SCANFLEET_SEQ"' in read("journal.json")
    stopped = read("show-stopped.txt")
    assert "Result=success" in stopped, stopped
    assert "ExecMainStatus=0" in stopped, stopped
