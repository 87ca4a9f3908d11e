"""A real Postfix relay on loopback: the mail server most Moodle sites hand their mail to.

Debian's ``postfix`` package, installed by scripts/setup.sh with no system configuration (where no other mail server
is installed). Each relay here is an instance of its own (``postfix -c DIR``): its own main.cf and master.cf, queue,
data and log in a new directory, one smtpd on a loopback port, and everything it takes relayed to ``relay_to`` (the
test's mail sink). Postfix's master starts as root and runs its daemons as the ``postfix`` user: so do these tests.
"""

from __future__ import annotations

import os
import re
import shutil
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

POSTFIX = "/usr/sbin/postfix"
MASTER = "/usr/lib/postfix/sbin/master"  # Debian's daemon_directory: how a running instance's master is told
START_ATTEMPTS = 3  # a port taken between picking and binding: a new port, at most this many times

# The daemons a relay uses, none chrooted (a chroot would need copies of /etc files in the queue directory).
_MASTER_CF = """\
{address} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
tlsmgr    unix  - - n 1000? 1 tlsmgr
"""

GONE = "gone@example.org"
BUSY = "busy@example.org"
ACCESS = {GONE: "550 5.1.1 No such user here", BUSY: "450 4.2.0 Mailbox temporarily unavailable"}

_CONNECT = re.compile(r"postfix/smtpd\[\d+\]: connect from ", re.MULTILINE)
_DISCONNECT = re.compile(r"postfix/smtpd\[\d+\]: disconnect from \S+ (.*)$", re.MULTILINE)
_MESSAGE_ID = re.compile(r"postfix/cleanup\[\d+\]: ([0-9A-F]+): message-id=(<[^>]*>)", re.MULTILINE)


@dataclass(frozen=True)
class Submission:
    """A relay on a site's submission terms: STARTTLS with ``tls``'s certificate, then AUTH (PLAIN or LOGIN, only
    once the session is encrypted) as one of ``users`` (name -> password); nothing relayed without it."""

    tls: ServerTls
    users: dict[str, str]


@dataclass(frozen=True)
class PostfixRelay:
    port: int
    home: Path
    hostname: str  # this instance's own, in its greeting and the Received header it adds

    @property
    def log_file(self) -> Path:
        return self.home / "postfix.log"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def message_ids(self) -> dict[str, str]:
        """Each message Postfix took, by its queue id (what it answers "queued as"): its Message-ID."""
        return dict(_MESSAGE_ID.findall(self.log()))

    def sessions(self) -> list[dict[str, str]]:
        """The command counts smtpd logs as each client session ends, e.g. {"mail": "24", "bdat": "23/24"}."""
        return [dict(part.split("=", 1) for part in counts.split()) for counts in _DISCONNECT.findall(self.log())]

    def open_sessions(self) -> int:
        """Client sessions smtpd has taken and not yet logged the end of."""
        log = self.log()
        return len(_CONNECT.findall(log)) - len(_DISCONNECT.findall(log))

    def change(self, **settings: str) -> None:
        """Set main.cf parameters and reload, as a site's admin mends a relay: sessions opened from then on have
        them; a session already open keeps what it had until it ends."""
        conf = str(self.home / "conf")
        subprocess.run(["postconf", "-c", conf, "-e", *(f"{name}={value}" for name, value in settings.items())],
                       check=True, capture_output=True, timeout=60)
        reloaded = _postfix(self.home / "conf", "reload")
        if reloaded.returncode != 0:
            raise RuntimeError(f"postfix reload failed: {reloaded.stderr}")


def _unavailable() -> str | None:
    if not os.path.exists(POSTFIX):
        return f"{POSTFIX} is not installed (scripts/setup.sh installs it where no other mail server is)"
    if os.geteuid() != 0:
        return "Postfix's master runs as root, and these tests do not"
    return None


def _submission_settings(home: Path, conf: Path, hostname: str, submission: Submission) -> dict[str, str]:
    """main.cf's TLS and SASL parameters, with Cyrus SASL's config and password database (sasldb) beside it."""
    sasldb, sasl_conf = home / "sasldb2", conf / "sasl"
    # Debian's Postfix reads Cyrus's config from $config_directory/sasl whatever cyrus_sasl_config_path says;
    # Postfix's own reads it from cyrus_sasl_config_path: the same directory for both.
    sasl_conf.mkdir(exist_ok=True)
    (sasl_conf / "smtpd.conf").write_text(
        f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {sasldb}\n")
    for user, password in submission.users.items():
        # The realm is the server's name: Postfix passes myhostname, and no smtpd_sasl_local_domain.
        subprocess.run(["saslpasswd2", "-c", "-p", "-f", str(sasldb), "-u", hostname, user], input=password,
                       text=True, check=True, capture_output=True, timeout=30)
    shutil.chown(sasldb, "postfix")
    cert, key = conf / "server.pem", conf / "server.key"  # in the instance's own directory, which smtpd can reach
    shutil.copyfile(submission.tls.cert_file, cert)
    shutil.copyfile(submission.tls.key_file, key)
    key.chmod(0o600)
    return {
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(cert),
        "smtpd_tls_key_file": str(key),
        "smtpd_tls_auth_only": "yes",
        "smtpd_tls_loglevel": "1",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "cyrus",
        "smtpd_sasl_path": "smtpd",
        "cyrus_sasl_config_path": str(sasl_conf),
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
    }


def _write_config(home: Path, *, port: int, hostname: str, relay_to: int, access: dict[str, str],
                  submission: Submission | None, settings: dict[str, str], services: str) -> Path:
    conf = home / "conf"
    conf.mkdir(exist_ok=True)
    (conf / "recipient_access").write_text("".join(f"{address} {action}\n" for address, action in access.items()))
    main = {
        "compatibility_level": "3.6",
        "queue_directory": str(home / "queue"),
        "data_directory": str(home / "data"),
        "maillog_file_prefixes": str(home),
        "maillog_file": str(home / "postfix.log"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": hostname,
        "mydestination": "",
        "local_recipient_maps": "",
        "alias_maps": "",
        "alias_database": "",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "relayhost": f"[127.0.0.1]:{relay_to}",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "smtpd_recipient_restrictions": f"check_recipient_access texthash:{conf / 'recipient_access'}",
        "biff": "no",
        **(_submission_settings(home, conf, hostname, submission) if submission else {}),
        **settings,
    }
    (conf / "main.cf").write_text("".join(f"{name} = {value}\n" for name, value in main.items()))
    (conf / "master.cf").write_text(_MASTER_CF.format(address=f"127.0.0.1:{port}") + services)
    return conf


def _listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:``port``. Postfix binds with SO_REUSEPORT, so a second instance on the
    same port would start without an error and take half the connections."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return sum(1 for line in table.readlines()[1:] if line.split()[1] == wanted and line.split()[3] == "0A")


def _postfix(conf: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([POSTFIX, "-c", str(conf), command], capture_output=True, text=True, timeout=120)


def _start(home: Path, conf: Path, port: int, hostname: str) -> bool:
    """Start the instance on ``port``; False if the port turned out to be someone else's (then it is stopped)."""
    log_file = home / "postfix.log"
    logged = log_file.stat().st_size if log_file.exists() else 0  # what earlier attempts wrote
    checked = _postfix(conf, "check")  # also makes the queue's directories, with Postfix's owners and modes
    started = _postfix(conf, "start") if checked.returncode == 0 else checked
    with open(log_file, "a+", errors="replace") as opened:
        opened.seek(logged)
        log = opened.read()
    if started.returncode != 0:
        if "Address already in use" in log:
            return False
        raise RuntimeError(f"postfix {started.args[-1]} failed: {started.stderr}{log}")
    wrapped = "smtpd_tls_wrappermode = yes" in (conf / "main.cf").read_text().splitlines()
    said = greeting(port, time.monotonic() + 30, wrapped=wrapped)
    if _listeners(port) != 1 or hostname not in said:
        _stop(home)
        return False
    return True


def _stop(home: Path) -> None:
    """Stop the instance's master (SIGTERM, as ``postfix stop`` sends; SIGKILL after 30 s), by the pid it wrote;
    its daemons exit with it."""
    pid_file = home / "queue" / "pid" / "master.pid"
    if pid_file.exists():
        stop_pid(int(pid_file.read_text()), [MASTER], "postfix", log=lambda _: None)


@contextmanager
def postfix_relay(relay_to: int, *, access: dict[str, str] | None = None, submission: Submission | None = None,
                  settings: dict[str, str] | None = None, services: str = "",
                  keep_log: Path | None = None) -> Iterator[PostfixRelay]:
    """A Postfix instance relaying to 127.0.0.1:``relay_to``, stopped (by its master's pid) and removed afterwards.

    ``access``: recipient address -> what smtpd answers its RCPT instead of taking it (an access-table action such as
    ``550 5.1.1 No such user``). ``submission``: STARTTLS and AUTH required. ``settings``: more main.cf parameters. ``services``: more master.cf
    lines (such as a pipe). ``keep_log``: where its log is copied at the end, for a failed test's reader.
    """
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("OFFLOAD_TEST_REQUIRE_POSTFIX"):  # .ci/run sets it: there a test never skips for want of it
            raise RuntimeError(f"OFFLOAD_TEST_REQUIRE_POSTFIX is set, but {reason}")
        pytest.skip(reason)
    home = Path(tempfile.mkdtemp(prefix="offload-postfix-"))
    home.chmod(0o755)  # the daemons, running as postfix, reach their queue and log through it
    hostname = f"relay-{uuid.uuid4().hex[:8]}.offload-test.invalid"
    conf: Path | None = None
    try:
        (home / "queue").mkdir()
        (home / "data").mkdir()
        shutil.chown(home / "data", "postfix")
        for _ in range(START_ATTEMPTS):
            port = free_port()
            conf = _write_config(home, port=port, hostname=hostname, relay_to=relay_to, access=access or {},
                                 submission=submission, settings=settings or {}, services=services)
            if _start(home, conf, port, hostname):
                break
        else:
            raise RuntimeError(f"postfix found no free port in {START_ATTEMPTS} attempts")
        yield PostfixRelay(port=port, home=home, hostname=hostname)
    finally:
        if conf is not None:
            _stop(home)
        if keep_log is not None and (home / "postfix.log").exists():
            keep_log.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(home / "postfix.log", keep_log)
        shutil.rmtree(home, ignore_errors=True)
