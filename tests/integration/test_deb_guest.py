"""The package's whole life on a Debian 13 terminal, booted: QEMU (TCG) with systemd as
PID 1 over a debootstrapped trixie root where ``apt-get install ./scanfleet_….deb``
ran (as an SD-image build does), a FAT boot partition carrying a claim, the config and
the fleet CA, an FTDI serial scanner on QEMU's USB, and the fleet's own broker and
enrollment service (the package's ``scanfleet fleet`` tooling, in the guest: the guest
has no network but its loopback).

The guest boots; the unit runs ``scanfleet firstboot`` (claim/config/CA off the FAT),
the daemon enrolls against the fleet service, restarts with its certificate and
delivers the scanner's code to the broker; then ``apt-get install`` of a newer build
upgrades it in place (config check, restart) and the next scan continues the journal's
sequence. Host and guest share the root (9p), so results are read from it afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanfleet.daemon.journal.reader import open_readonly
from support.debian_root import base_root, build_deb, chroot, chroot_output, copy_root
from support.ftdi_scanner import FtdiScanner
from support.prereq import missing, require_executable

pytestmark = [
    pytest.mark.hil,
    pytest.mark.slow,
    # About ten minutes under TCG on two cores: `make hil` runs it, `make test` (CI) not.
    pytest.mark.skipif(
        not os.environ.get("SCANFLEET_DEB_GUEST"),
        reason="the booted package test runs in `make hil` (SCANFLEET_DEB_GUEST=1)",
    ),
]

OLD, NEW = "0.1.0+g1", "0.1.0+g2"
SITE = "pharmacy-12"
CODE_A, CODE_B = "81234567890123456789", "81234567890123456790"
GUEST_TIMEOUT = float(os.environ.get("SCANFLEET_DEB_GUEST_TIMEOUT", "1500"))

TERMINAL_CONFIG = f"""[identity]
site = "{SITE}"

[broker]
url = "mqtts://127.0.0.1:8883"
ca_file = "/etc/scanfleet/fleet-ca.pem"

[station]
name = "counter-1"
operation = "retail_sale"

[[devices]]
name = "counter-scanner"
driver = "serial"
port = "/dev/ttyUSB0"
baudrate = 115200
framing = "cr"
aim_prefix = false
"""

UNITS = {
    # docs/fleet.md: Debian's mosquitto.service runs the generated device broker (its
    # ExecStartPre makes /run/mosquitto, the admin socket's directory, for the account),
    # the generated scanfleet-enroll-broker.service the enrollment broker (both
    # installed in _install_brokers), and fleet serve talks to the latter's service
    # listener and to the former's admin socket.
    "mosquitto.service.d/fleet.conf": """[Unit]
Before=scanfleet.service
[Service]
ExecStart=
ExecStart=/usr/sbin/mosquitto -c /srv/fleet/broker/mosquitto.conf
""",
    "sf-fleet.service": """[Unit]
Description=the fleet's enrollment service (scanfleet fleet serve)
Wants=mosquitto.service scanfleet-enroll-broker.service
After=mosquitto.service scanfleet-enroll-broker.service
Before=scanfleet.service
[Service]
ExecStart=/usr/bin/scanfleet fleet --fleet-dir /srv/fleet serve \
  --broker mqtts://127.0.0.1:8885 --identity ops \
  --public-broker-url mqtts://127.0.0.1:8883 \
  --admin-socket /run/mosquitto/scanfleet-admin.sock \
  --reload-command 'systemctl reload mosquitto scanfleet-enroll-broker'
Restart=on-failure
RestartSec=2s
[Install]
WantedBy=multi-user.target
""",
    # vng's boot ignores /etc/fstab: mount the boot partition the way fstab would on the
    # terminal (Raspberry Pi OS: PARTUUID=… /boot/firmware vfat), before the unit starts.
    # The root is 9p, where SQLite's WAL (shared memory) fails with "disk I/O error":
    # the journal's and the fleet registry's directories get tmpfs copies, as a
    # terminal's ext4 would hold them; the script copies the journal out at the end.
    "sf-bootfs.service": """[Unit]
Description=the FAT boot partition at /boot/firmware; tmpfs for SQLite WAL
DefaultDependencies=no
After=systemd-udev-settle.service local-fs.target
Wants=systemd-udev-settle.service
Before=scanfleet.service sf-fleet.service sysinit.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'mkdir -p /boot/firmware; \
  for i in $(seq 120); do [ -b /dev/vda ] && break; sleep 1; done; \
  modprobe vfat; mount -t vfat /dev/vda /boot/firmware; \
  for d in /var/lib/scanfleet /srv/fleet; do \
    mkdir -p /run/sfrw$$d; cp -a $$d/. /run/sfrw$$d/; mount --bind /run/sfrw$$d $$d; \
  done'
[Install]
WantedBy=sysinit.target
""",
    "sf-test.service": """[Unit]
Description=scanfleet package test: scans, upgrade, results, power off
After=mosquitto.service
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
ExecStart=/srv/sf-test.sh
StandardOutput=journal+console
TimeoutStartSec=infinity
[Install]
WantedBy=multi-user.target
""",
}

GUEST_SCRIPT = r"""#!/bin/sh
OUT=/srv/out
UNITS="scanfleet mosquitto scanfleet-enroll-broker sf-fleet"
JOURNAL_UNITS=$(for u in $UNITS; do printf ' -u %s' $u; done)
mkdir -p $OUT
exec > $OUT/test.log 2>&1
wait_for() {  # wait_for PATTERN FILE SECONDS
  t=0
  until grep -q "$1" "$2" 2>/dev/null; do
    t=$((t+1)); [ $t -gt $3 ] && return 1; sleep 1
  done
}
# The backend's subscription (persistent session, QoS 1), started again until the
# broker is up; it runs until power-off.
( until mosquitto_sub --cafile /srv/fleet/ca/ca.pem --cert @CERT@ --key @KEY@ \
    -h 127.0.0.1 -p 8883 -i backend-test -c -q 1 -v -t 'scanfleet/v1/+/+/scans' \
    >> $OUT/scans.txt 2>> $OUT/sub.err; do sleep 1; done ) &
( while sleep 20; do
    journalctl -b --no-pager $JOURNAL_UNITS -u sf-bootfs \
      > $OUT/journal-live.txt 2>&1
  done ) &
set -x
findmnt /boot/firmware > $OUT/boot-mount.txt 2>&1
touch $OUT/send-a
wait_for @CODE_A@ $OUT/scans.txt 600; echo "scan_a=$?" >> $OUT/result.txt
systemctl status --no-pager $UNITS sf-bootfs > $OUT/status1.txt 2>&1
rm -f $OUT/send-a
systemctl show scanfleet -p ActiveState -p NRestarts -p StatusText > $OUT/show1.txt
ls -la /boot/firmware/scanfleet > $OUT/boot-after.txt 2>&1
ls -la /etc/scanfleet /var/lib/scanfleet > $OUT/dirs.txt 2>&1
sleep 3
apt-get install -y -q /srv/debs/@NEW_DEB@ > $OUT/upgrade.log 2>&1
echo "upgrade=$?" >> $OUT/result.txt
dpkg-query -W scanfleet >> $OUT/result.txt
systemctl show scanfleet -p ActiveState -p NRestarts > $OUT/show2.txt
touch $OUT/send-b
wait_for @CODE_B@ $OUT/scans.txt 600; echo "scan_b=$?" >> $OUT/result.txt
rm -f $OUT/send-b
journalctl -b --no-pager $JOURNAL_UNITS > $OUT/journal.txt 2>&1
systemctl stop scanfleet
mkdir -p $OUT/state && cp -a /var/lib/scanfleet/. $OUT/state/
echo done >> $OUT/result.txt
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short: QEMU's unix socket paths are limited to 108 bytes.
    parent = Path.home() / ".cache" / "scanfleet-hil"
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="sfdeb-", dir=parent))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _fat_image(path: Path, files: dict[str, bytes]) -> None:
    subprocess.run(["mkfs.vfat", "-C", "-n", "SFBOOT", str(path), "32768"], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(["mmd", "-i", str(path), "::/scanfleet"], check=True)
    for name, data in files.items():
        src = path.with_name(name)
        src.write_bytes(data)
        subprocess.run(["mcopy", "-i", str(path), str(src), f"::/scanfleet/{name}"], check=True)
        src.unlink()


def _install_brokers(root: Path, log: Path) -> None:
    """The two brokers as docs/fleet.md installs them on the broker host: Debian's
    mosquitto.service (pointed at the generated mosquitto.conf by a drop-in in UNITS;
    the base root disabled it) and the generated enrollment broker unit."""
    unit = "scanfleet-enroll-broker.service"
    shutil.copy2(root / "srv/fleet/broker" / unit, root / "etc/systemd/system" / unit)
    chroot(root, "systemctl", "enable", "mosquitto.service", unit, log=log)


def _fleet(root: Path, *args: str) -> str:
    done = chroot_output(root, "scanfleet", "fleet", "--fleet-dir", "/srv/fleet", *args)
    return done.stdout


@pytest.mark.timeout(GUEST_TIMEOUT + 1200)
def test_package_boots_enrolls_from_the_boot_partition_delivers_and_upgrades(
    workdir: Path, tmp_path: Path
) -> None:
    from hil.vm import Prerequisites, find_prerequisites

    prereqs = find_prerequisites()
    if not isinstance(prereqs, Prerequisites):
        missing(prereqs)
    for tool in ("mkfs.vfat", "mcopy", "mdir"):
        require_executable(tool, "/usr/sbin", "/sbin")
    timings: dict[str, float] = {}
    started = time.monotonic()
    base = base_root()
    timings["base_root"] = time.monotonic() - started
    debs = tmp_path / "debs"
    started = time.monotonic()
    old, new = build_deb(OLD, debs), build_deb(NEW, debs)
    timings["make_deb_x2"] = time.monotonic() - started

    started = time.monotonic()
    root = copy_root(base.path, workdir / "root")
    (root / "srv/debs").mkdir(parents=True)
    for deb in (old, new):
        shutil.copy2(deb, root / "srv/debs" / deb.name)
    log = workdir / "chroot.log"
    chroot(root, "apt-get", "install", "-y", "-q", f"/srv/debs/{old.name}", log=log)
    timings["apt_install"] = time.monotonic() - started

    # The fleet side, with the package's own tooling (in the root, for the guest).
    _fleet(root, "ca", "init")
    _fleet(root, "identity", "--role", "fleet", "--name", "ops")
    backend = _fleet(root, "identity", "--role", "backend", "--name", "trace").split()
    cert, key = backend[1], backend[2]
    _fleet(root, "broker-config", "--out", "/srv/fleet/broker", "--host", "127.0.0.1",
           "--persistence-dir", "/var/lib/mosquitto")  # fmt: skip
    # docs/fleet.md: the account mosquitto runs as must read the server key.
    chroot(root, "chown", "mosquitto", "/srv/fleet/broker/server.key", log=log)
    token = _fleet(root, "claim", "create", "--site", SITE, "--enroll-url",
                   "mqtts://127.0.0.1:8884").strip()  # fmt: skip
    assert token.startswith("scanfleet-claim://")

    # The guest's own setup: test units, the FAT boot partition in fstab, kernel modules.
    for name, text in UNITS.items():
        (root / "etc/systemd/system" / name).parent.mkdir(exist_ok=True)
        (root / "etc/systemd/system" / name).write_text(text, encoding="utf-8")
        if name.endswith(".d/fleet.conf"):
            continue
        target = "sysinit" if name == "sf-bootfs.service" else "multi-user"
        wants = root / "etc/systemd/system" / f"{target}.target.wants"
        wants.mkdir(exist_ok=True)
        (wants / name).symlink_to(f"/etc/systemd/system/{name}")
    _install_brokers(root, log)
    script = (
        GUEST_SCRIPT.replace("@CERT@", cert)
        .replace("@KEY@", key)
        .replace("@CODE_A@", CODE_A)
        .replace("@CODE_B@", CODE_B)
        .replace("@NEW_DEB@", new.name)
    )
    (root / "srv/sf-test.sh").write_text(script, encoding="utf-8")
    (root / "srv/sf-test.sh").chmod(0o755)
    with (root / "etc/fstab").open("a", encoding="utf-8") as fstab:
        # As Raspberry Pi OS mounts its boot partition (for a boot that reads fstab).
        fstab.write("LABEL=SFBOOT /boot/firmware vfat defaults,nofail 0 2\n")
    # Test infrastructure only: nothing here needs binfmt or a login on the console,
    # and waiting for them costs minutes under TCG.
    for unit in ("systemd-binfmt.service", "serial-getty@ttyS0.service"):
        (root / "etc/systemd/system" / unit).symlink_to("/dev/null")
    # Under TCG every Python start takes tens of seconds: the unit's 60 s start timeout
    # and 30 s watchdog are for real hardware. A drop-in, as a site would add one.
    dropin = root / "etc/systemd/system/scanfleet.service.d"
    dropin.mkdir(parents=True)
    (dropin / "tcg.conf").write_text(
        "[Service]\nTimeoutStartSec=900\nWatchdogSec=300\n", encoding="utf-8"
    )
    modules = Path("/lib/modules") / prereqs.kernel.name.removeprefix("vmlinuz-")
    (root / "lib/modules").mkdir(exist_ok=True)
    # Hard links: instant, and the guest only reads them.
    subprocess.run(["cp", "-al", str(modules), str(root / "lib/modules/")], check=True)
    boot = workdir / "boot.img"
    _fat_image(
        boot,
        {
            "claim": token.encode() + b"\n",
            "scanfleet.toml": TERMINAL_CONFIG.encode(),
            "fleet-ca.pem": (root / "srv/fleet/ca/ca.pem").read_bytes(),
        },
    )

    out = root / "srv/out"
    ftdi = workdir / "ftdi.sock"
    qemu_opts = (
        f"-drive file={boot},format=raw,if=virtio "
        "-device qemu-xhci,id=xhci "
        f"-chardev socket,id=ftdi,path={ftdi},server=on,wait=off "
        "-device usb-serial,id=ftdi0,bus=xhci.0,chardev=ftdi,always-plugged=on"
    )
    command = [
        prereqs.vng, "--run", str(prereqs.kernel), "--root", str(root), "--rw", "--force-9p",
        "--disable-kvm", "--disable-microvm", "--cpus", "2", "--memory", "1536M",
        "--busybox", prereqs.busybox, "--qemu", prereqs.qemu, "--systemd", "--verbose",
        f"--qemu-opts={qemu_opts}",
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    (out).mkdir(parents=True, exist_ok=True)
    codes = (("send-a", CODE_A), ("send-b", CODE_B))
    scanner = FtdiScanner(
        ftdi, lambda: [code.encode() + b"\r" for flag, code in codes if (out / flag).exists()]
    )
    console = workdir / "console.log"
    started = time.monotonic()
    with console.open("wb") as sink:
        vm = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        vm.wait(GUEST_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(vm.pid, 9)
        vm.wait(30)
    finally:
        scanner.stop()
    timings["guest"] = time.monotonic() - started
    print("deb guest timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))

    def read(name: str) -> str:
        path = out / name
        return path.read_text(errors="replace") if path.exists() else f"(no {name})"

    report = "\n".join(
        f"--- {n}\n{read(n)[-4000:]}"
        for n in ("result.txt", "boot-mount.txt", "status1.txt", "upgrade.log", "journal.txt")
    )
    report += "\n--- console\n" + console.read_text(errors="replace")[-3000:]
    result = read("result.txt")
    assert "done" in result, report
    assert "scan_a=0" in result, report
    assert "upgrade=0" in result, report
    assert f"scanfleet\t{NEW}" in result, report
    assert "scan_b=0" in result, report

    # The FAT partition no longer holds the claim (nor the config and CA it carried).
    listing = subprocess.run(["mdir", "-b", "-i", str(boot), "::/scanfleet"],
                             capture_output=True, text=True, check=False).stdout  # fmt: skip
    assert "claim" not in listing, listing
    assert (root / "etc/scanfleet/scanfleet.toml").read_text(encoding="utf-8") == TERMINAL_CONFIG

    # Delivered to the broker, under the enrolled site, from the enrolled device.
    scans = [line.split(" ", 1) for line in read("scans.txt").splitlines() if " " in line]
    records = [r for _, payload in scans for r in json.loads(payload)["scans"]]
    assert all(topic.startswith(f"scanfleet/v1/{SITE}/") for topic, _ in scans)
    assert any(r.get("value") == CODE_A for r in records)
    assert any(r.get("value") == CODE_B for r in records)

    # The journal: the enrollment from the boot partition, then the scans, with one
    # gapless sequence across the upgrade.
    with open_readonly(out / "state/journal.sqlite3") as reader:
        journal = [r.as_dict() for r in reader.read_after(0, limit=10000, max_bytes=1 << 26)]
    seqs = [r["seq"] for r in journal]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    enrolled = [r for r in journal if r.get("action") == "enroll" and r["verdict"] == "accepted"]
    assert enrolled, journal
    assert enrolled[0]["origin"] == "config"
    last_a = max(r["seq"] for r in journal if r.get("value") == CODE_A)
    first_b = min(r["seq"] for r in journal if r.get("value") == CODE_B)
    assert first_b > last_a
    assert token.split(":")[2].split("@")[0] not in json.dumps(journal), "the claim's secret"
