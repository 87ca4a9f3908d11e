"""A real Exim relay on loopback: the mail server Debian installs by default, and that of many hosting panels.

The binary of Debian's ``exim4-daemon-light`` (/usr/sbin/exim4 where the package is installed; else scripts/setup.sh
unpacks it to /usr/local/lib/offload-tests, and adds the user it runs as, Debian-exim). Each relay here is an
instance of its own: ``exim4 -C`` with its own configuration, spool and logs in a new directory, a daemon on a
loopback port, and everything it takes relayed to the test's sink. As on a site, the daemon starts as root; these
instances also deliver as Debian-exim (``deliver_drop_privilege``), so a pipe runs as that user.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.devstack.process import stop_pid
from tests.support.relays import greeting
from tests.support.stack import free_port
from tests.support.tls import ServerTls

BINARIES = ("/usr/sbin/exim4", "/usr/local/lib/offload-tests/exim4")  # the package's; unpacked by scripts/setup.sh
USER = "Debian-exim"  # Debian's build looks this user up before it reads any configuration
START_ATTEMPTS = 3  # a port taken between picking and binding: a new port, at most this many times

# Debian's own configuration says the same to a host it does not relay for ("relay not permitted").
_CONFIG = """\
exim_path = {binary}
exim_user = {user}
exim_group = {user}
spool_directory = {home}/spool
log_file_path = {home}/log/%slog
pid_file_path = {home}/exim.pid
primary_hostname = {hostname}
daemon_smtp_ports = {port}
local_interfaces = 127.0.0.1
daemon_startup_retries = 0
deliver_drop_privilege = true
keep_environment =
host_lookup =
{tls}
{limits}
hostlist relay_from_hosts = {relay_from_hosts}
acl_smtp_rcpt = acl_check_rcpt

begin acl
acl_check_rcpt:
{verify_sender}{refuse}{authenticated}  accept  hosts = +relay_from_hosts
  deny    message = relay not permitted
{authenticators}
begin routers
{routers}smarthost:
  driver = manualroute
  route_list = * 127.0.0.1::{relay_to}
  transport = remote_smtp
  self = send

begin transports
remote_smtp:
  driver = smtp
  hosts_override
  allow_localhost
{transports}
begin retry
*  *  F,1h,1s
"""

# A sender whose domain does not route: Exim's sender verification ("require verify = sender", in Debian's
# configuration too) refuses every RCPT of its mail.
_UNROUTABLE_SENDER = """\
unroutable_sender:
  driver = redirect
  domains = {domain}
  verify_only
  allow_fail
  data = :fail: Unrouteable address
"""

# The envelope sender's mail to the transport named offload_bounces (docs/suppression.md).
_BOUNCES_ROUTER = """\
offload_bounces:
  driver = accept
  condition = ${{if eqi{{$local_part@$domain}}{{{address}}}}}
  transport = offload_bounces
"""

# STARTTLS with the test CA's server certificate, and AUTH PLAIN offered only once the session is encrypted (as
# Debian's exim4-config does): a submission relay for a client that logs in, not one that trusts its address.
_TLS = """\
tls_advertise_hosts = *
tls_certificate = {home}/tls/server.pem
tls_privatekey = {home}/tls/server.key
auth_advertise_hosts = ${{if eq{{$tls_in_cipher}}{{}}{{}}{{*}}}}"""

_AUTHENTICATORS = """
begin authenticators
plain_server:
  driver = plaintext
  public_name = PLAIN
  server_condition = ${{if and{{{{eq{{$auth2}}{{{user}}}}}{{eq{{$auth3}}{{{password}}}}}}}}}
  server_set_id = $auth2
  server_prompts = :
"""

_ARRIVAL = re.compile(r"^\S+ \S+ (\S+) <= .* id=(\S+)$", re.MULTILINE)


@dataclass
class EximRelay:
    port: int
    home: Path
    hostname: str
    binary: str
    relay_to: int
    relay_from_hosts: str
    unroutable_sender: str | None = None  # a domain whose senders fail verification
    refused: tuple[str, ...] = ()  # recipients it refuses ("550 5.1.1 No such user here")
    bounces: tuple[str, str] | None = None  # (the envelope sender's address, its transport) for its mail
    login: tuple[ServerTls, str, str] | None = None  # STARTTLS with these files, and AUTH as (user, password)
    max_per_host: int | None = None  # sessions it takes from one client host at a time (smtp_accept_max_per_host)

    def log(self) -> str:
        main = self.home / "log" / "mainlog"
        return main.read_text(errors="replace") if main.exists() else ""

    def rejected(self) -> str:
        """What Exim refused, as its reject log says."""
        rejects = self.home / "log" / "rejectlog"
        return rejects.read_text(errors="replace") if rejects.exists() else ""

    def message_ids(self) -> dict[str, str]:
        """Each message Exim took, by its id (what it answers "OK id="): its Message-ID."""
        return {queue_id: f"<{message_id}>" for queue_id, message_id in _ARRIVAL.findall(self.log())}

    def change(self, *, relay_from_hosts: str) -> None:
        """Write the configuration anew and send the daemon SIGHUP, as a site's admin mends a relay: the daemon
        starts again and the sessions it takes from then on have it; one already open keeps what it had."""
        self.relay_from_hosts = relay_from_hosts
        _write_config(self)
        started = self.log().count(" daemon started")
        os.kill(_pid(self.home), signal.SIGHUP)  # the daemon execs itself again, keeping its pid
        deadline = time.monotonic() + 30
        while self.log().count(" daemon started") == started:
            if time.monotonic() > deadline:
                raise RuntimeError("exim's daemon did not start again after SIGHUP")
            time.sleep(0.05)
        greeting(self.port, deadline)


def _binary() -> str | None:
    return next((path for path in BINARIES if os.access(path, os.X_OK)), None)


def _unavailable() -> str | None:
    if _binary() is None:
        return f"no Exim binary at {' or '.join(BINARIES)} (scripts/setup.sh unpacks Debian's)"
    if os.geteuid() != 0:
        return "Exim's daemon starts as root, and these tests do not"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no user {USER}, which Debian's Exim runs as (scripts/setup.sh adds it)"
    return None


def _write_config(relay: EximRelay) -> None:
    routers = _UNROUTABLE_SENDER.format(domain=relay.unroutable_sender) if relay.unroutable_sender else ""
    transports, tls, authenticators = "", "tls_advertise_hosts =", ""
    if relay.login is not None:
        files, user, password = relay.login
        tls_home = relay.home / "tls"
        tls_home.mkdir(exist_ok=True)
        for name, source in (("server.pem", files.cert_file), ("server.key", files.key_file)):
            shutil.copyfile(source, tls_home / name)
            shutil.chown(tls_home / name, USER)  # read by the session's process, which runs as Debian-exim
            (tls_home / name).chmod(0o600)
        tls = _TLS.format(home=relay.home)
        authenticators = _AUTHENTICATORS.format(user=user, password=password)
    if relay.bounces is not None:
        address, transport = relay.bounces
        routers += _BOUNCES_ROUTER.format(address=address)
        transports = transport
    (relay.home / "exim.conf").write_text(_CONFIG.format(
        binary=relay.binary, user=USER, home=relay.home, hostname=relay.hostname, port=relay.port,
        relay_from_hosts=relay.relay_from_hosts, relay_to=relay.relay_to, routers=routers, transports=transports,
        tls=tls, authenticators=authenticators,
        limits=f"smtp_accept_max_per_host = {relay.max_per_host}" if relay.max_per_host else "",
        authenticated="  accept  authenticated = *\n" if relay.login else "",
        verify_sender="  require verify = sender\n" if relay.unroutable_sender else "",
        refuse=(f"  deny    recipients = {' : '.join(relay.refused)}\n          message = 5.1.1 No such user here\n"
                if relay.refused else "")))


def _pid(home: Path) -> int:
    return int((home / "exim.pid").read_text().split()[0])


def _start(relay: EximRelay) -> bool:
    """Start the daemon; False if its port turned out to be taken. ``exim -bd`` returns at once and the daemon
    binds after it detached: it writes its pid file once it listens, or says in its panic log why it gave up."""
    _write_config(relay)
    panic = relay.home / "log" / "paniclog"
    said_before = panic.stat().st_size if panic.exists() else 0  # an earlier attempt's
    started = subprocess.run([relay.binary, "-C", str(relay.home / "exim.conf"), "-bd", "-q1s"],
                             capture_output=True, text=True, timeout=60)
    deadline = time.monotonic() + 30
    while True:
        said = started.stderr
        if panic.exists():
            with open(panic, errors="replace") as log:
                log.seek(said_before)
                said += log.read()
        if "Address already in use" in said:
            return False
        if started.returncode != 0 or said:
            raise RuntimeError(f"exim did not start: {said}")
        if (relay.home / "exim.pid").exists():
            break
        if time.monotonic() > deadline:
            raise RuntimeError("exim's daemon wrote no pid file in 30 s")
        time.sleep(0.05)
    if relay.hostname in greeting(relay.port, deadline):
        return True
    _stop(relay.home)
    return False


@contextmanager
def exim_relay(relay_to: int, *, relay_from_hosts: str = "127.0.0.1", unroutable_sender: str | None = None,
               refused: tuple[str, ...] = (), bounces: tuple[str, str] | None = None,
               login: tuple[ServerTls, str, str] | None = None, max_per_host: int | None = None,
               keep_log: Path | None = None) -> Iterator[EximRelay]:
    """An Exim instance relaying to 127.0.0.1:``relay_to``, stopped (by its daemon's pid) and removed afterwards.

    ``relay_from_hosts``: the hosts it relays for. ``unroutable_sender``: a domain its sender verification fails.
    ``refused``: recipients its RCPT ACL refuses, as a relay refuses a local user that does not exist.
    ``bounces``: (address, transport): that address's mail goes to the transport named ``offload_bounces``.
    ``login``: (TLS files, user, password): it offers STARTTLS, then AUTH PLAIN, and relays for whoever logs in.
    ``max_per_host``: how many sessions it takes from one client host at a time (Exim's default: no limit).
    ``keep_log``: where its main log is copied at the end, for a failed test's reader."""
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("OFFLOAD_TEST_REQUIRE_EXIM"):  # .ci/run sets it: there a test never skips for want of it
            raise RuntimeError(f"OFFLOAD_TEST_REQUIRE_EXIM is set, but {reason}")
        pytest.skip(reason)
    binary = _binary()
    assert binary is not None
    home = Path(tempfile.mkdtemp(prefix="offload-exim-"))
    home.chmod(0o755)  # its processes, running as Debian-exim, read the configuration and write spool and logs
    for directory in ("spool", "log"):
        (home / directory).mkdir()
        shutil.chown(home / directory, USER)
    relay = EximRelay(port=0, home=home, hostname=f"relay-{uuid.uuid4().hex[:8]}.offload-test.invalid",
                      binary=binary, relay_to=relay_to, relay_from_hosts=relay_from_hosts,
                      unroutable_sender=unroutable_sender, refused=refused, bounces=bounces, login=login,
                      max_per_host=max_per_host)
    try:
        for _ in range(START_ATTEMPTS):
            relay.port = free_port()
            if _start(relay):
                break
        else:
            raise RuntimeError(f"exim found no free port in {START_ATTEMPTS} attempts")
        yield relay
    finally:
        _stop(home)
        if keep_log is not None and (home / "log" / "mainlog").exists():
            keep_log.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(home / "log" / "mainlog", keep_log)
        shutil.rmtree(home, ignore_errors=True)


def _stop(home: Path) -> None:
    """Stop the daemon (SIGTERM; SIGKILL after 30 s) by the pid it wrote, then what it forked and is still running
    (sessions, queue runs, deliveries: the daemon's process group, its own since it detached), so that none of
    them writes to the instance's directory once it is removed."""
    if not (home / "exim.pid").exists():
        return
    pid = _pid(home)
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        group = None
    stop_pid(pid, [str(home / "exim.conf")], "exim", log=lambda _: None)
    if group is None or group == os.getpgrp():
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 10
        try:
            os.killpg(group, sig)
            while time.monotonic() < deadline:
                time.sleep(0.05)
                os.killpg(group, 0)
        except ProcessLookupError:
            return
