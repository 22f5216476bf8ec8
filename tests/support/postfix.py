"""Debian's Postfix as Verimail's submission server, a throwaway instance under one folder.

deploy/production/postfix-main.cf is the deployable part (STARTTLS required, SASL AUTH from a
sasldb, relaying only for authenticated clients); the test-only part below adds what only the
test bed needs: its own queue and data folders and log file, a loopback port, and one Maildir
that receives every recipient of any domain (`virtual_mailbox_domains = static:all`).

How it runs without touching /etc/postfix or the system's queue:

- `master -c FOLDER/config -d` runs in the foreground as our child, in a session of its own, so
  SIGTERM (what `postfix stop` sends) stops it and every daemon of its process group. The
  `postfix` command is not used: it logs only to syslog or a terminal, and as non-root it would
  want FOLDER listed in alternate_config_directories of /etc/postfix/main.cf.
- Every name is this instance's own: its files in `FOLDER/postfix-PORT/`, queue_directory, data_directory, syslog_name,
  multi_instance_name, maillog_file (written by postlogd, no syslog) and the smtpd port.
- The daemons run as the `postfix` user, which cannot enter a folder under pytest's 0700
  tmp_path. Everything they open after dropping root (data_directory, the sasldb, the Maildir)
  therefore sits inside the queue directory and is named through `/proc/self/cwd`: each daemon's
  working directory is the queue directory, and that link leads there without searching the
  folders above it. What root opens (main.cf, certificates, the log) may be anywhere.
- Debian's Postfix reads Cyrus SASL's smtpd.conf from `$config_directory/sasl/` whatever
  cyrus_sasl_config_path says (debian/patches/07_sasl_config).

The master must start as root; as any other user `start()` raises PostfixNeedsRoot.
"""

from __future__ import annotations

import contextlib
import email
import grp
import os
import pwd
import secrets
import signal
import subprocess
import time
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

from tests.support.binaries import require
from tests.support.nginx import fill
from verimail_shared.embedded import free_port, wait_for_port

DEPLOY_MAIN_CF = Path(__file__).resolve().parents[2] / "deploy" / "production" / "postfix-main.cf"
REALM = "verimail.test"
MYHOSTNAME = "mail.verimail.test"

# Only the test bed's: loopback, private folders, and every recipient into one Maildir.
_TEST_MAIN_CF = """\

# --- the test bed's own settings (tests/support/postfix.py) ---
compatibility_level = 3.6
queue_directory = {queue}
# The daemons reach these through their working directory, the queue directory (see above).
data_directory = /proc/self/cwd/data
syslog_name = {name}
multi_instance_name = {name}
maillog_file = {folder}/postfix.log
maillog_file_prefixes = {folder}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydomain = verimail.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
relay_domains =
relayhost =
alias_maps =
alias_database =
virtual_mailbox_domains = static:all
virtual_mailbox_base = /proc/self/cwd
virtual_mailbox_maps = static:Maildir/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
readme_directory = no
"""

# master.cf: the services the submission path uses, none chrooted, smtpd on our port only.
_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

_SMTPD_CONF = """\
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN LOGIN
sasldb_path: /proc/self/cwd/sasl/sasldb2
"""

# The queue's folders that only the mail owner may enter (Postfix's postfix-files).
_PRIVATE_QUEUE_FOLDERS = (
    *("active", "bounce", "corrupt", "defer", "deferred", "flush"),
    *("hold", "incoming", "private", "saved", "trace"),
)


class PostfixNeedsRoot(RuntimeError):
    """Postfix's master runs only as root; a test should skip with this message."""


class Postfix:
    """A Postfix instance accepting submissions on a free loopback port, delivering to a Maildir."""

    def __init__(
        self,
        folder: Path,
        *,
        cert_file: Path,
        key_file: Path,
        username: str = "verimail",
        password: str | None = None,
    ) -> None:
        self._port = free_port()
        # A folder of its own, so that other servers (or another Postfix) may share `folder`.
        self.folder = folder.resolve() / f"postfix-{self._port}"
        self.cert_file = cert_file.resolve()
        self.key_file = key_file.resolve()
        self._username = username
        self._password = password if password is not None else secrets.token_urlsafe(18)
        self._name = f"postfix-verimail-{secrets.token_hex(4)}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def username(self) -> str:
        """The SMTP_USERNAME to log in with; `username@REALM` works too."""
        return self._username

    @property
    def password(self) -> str:
        return self._password

    @property
    def realm(self) -> str:
        return REALM

    @property
    def config_directory(self) -> Path:
        return self.folder / "config"

    @property
    def queue_directory(self) -> Path:
        return self.folder / "queue"

    @property
    def maildir(self) -> Path:
        return self.queue_directory / "Maildir"

    @property
    def log_file(self) -> Path:
        return self.folder / "postfix.log"

    def start(self) -> None:
        """Write the configuration (first time only), start master, wait for smtpd's port."""
        if os.geteuid() != 0:
            raise PostfixNeedsRoot("Postfix's master must start as root; this runs as non-root")
        if self._process is not None and self._process.poll() is None:
            return
        if not (self.config_directory / "main.cf").exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            self._prepare()
        self._check()
        with (self.folder / "master.out").open("ab") as out:
            self._process = subprocess.Popen(
                [self._daemon("master"), "-c", str(self.config_directory), "-d"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.queue_directory,
                start_new_session=True,
            )
        try:
            self._wait_until_listening(15)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM to master, as `postfix stop` sends; then wait until no daemon of it is left."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self._wait_for_group_exit(process.pid, 10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def messages(self) -> list[EmailMessage]:
        """Every message delivered so far, oldest first (Maildir names start with the time)."""
        files = [
            path
            for sub in ("new", "cur")
            if (self.maildir / sub).is_dir()
            for path in (self.maildir / sub).iterdir()
        ]
        parsed: list[EmailMessage] = []
        for path in sorted(files, key=lambda path: path.name):
            message = email.message_from_bytes(path.read_bytes(), policy=default_policy)
            assert isinstance(message, EmailMessage)
            parsed.append(message)
        return parsed

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def _prepare(self) -> None:
        postfix = pwd.getpwnam(self._config("mail_owner"))
        postdrop_gid = grp.getgrnam(self._config("setgid_group")).gr_gid
        self._make_queue(postfix.pw_uid, postfix.pw_gid, postdrop_gid)
        self._write_config(postfix.pw_uid, postfix.pw_gid)
        self._create_sasl_user(postfix.pw_gid)

    def _make_queue(self, uid: int, gid: int, postdrop_gid: int) -> None:
        """The queue as postfix-files lays it out, plus the folders the daemons reach from it."""

        def folder(name: str, owner: int, group: int, mode: int) -> None:
            path = self.queue_directory / name
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, owner, group)
            path.chmod(mode)

        folder("", 0, 0, 0o755)
        for name in _PRIVATE_QUEUE_FOLDERS:
            folder(name, uid, 0, 0o700)
        folder("maildrop", uid, postdrop_gid, 0o730)
        folder("public", uid, postdrop_gid, 0o710)
        folder("pid", 0, 0, 0o755)
        folder("data", uid, gid, 0o700)
        folder("Maildir", uid, gid, 0o700)
        folder("sasl", 0, 0, 0o755)

    def _write_config(self, uid: int, gid: int) -> None:
        config = self.config_directory
        (config / "sasl").mkdir(parents=True, exist_ok=True)
        deployable = fill(
            DEPLOY_MAIN_CF.read_text(),
            {
                "myhostname": MYHOSTNAME,
                "cert_file": str(self.cert_file),
                "key_file": str(self.key_file),
                "sasl_realm": REALM,
            },
        )
        test_only = fill(
            _TEST_MAIN_CF,
            {
                "queue": str(self.queue_directory),
                "folder": str(self.folder),
                "name": self._name,
                "uid": str(uid),
                "gid": str(gid),
            },
        )
        (config / "main.cf").write_text(deployable + test_only)
        (config / "master.cf").write_text(fill(_MASTER_CF, {"port": str(self._port)}))
        (config / "sasl" / "smtpd.conf").write_text(_SMTPD_CONF)
        # Postfix waits while main.cf is under 2 s old (it might still be being edited).
        settled = time.time() - 10
        for path in (config / "main.cf", config / "master.cf"):
            os.utime(path, (settled, settled))

    def _create_sasl_user(self, postfix_gid: int) -> None:
        sasldb = self.queue_directory / "sasl" / "sasldb2"
        subprocess.run(
            [require("saslpasswd2"), "-f", str(sasldb), "-c", "-p", "-u", REALM, self._username],
            input=self._password.encode(),
            capture_output=True,
            timeout=30,
            check=True,
        )
        # smtpd opens it as the postfix user, at each AUTH.
        os.chown(sasldb, 0, postfix_gid)
        sasldb.chmod(0o640)

    def _check(self) -> None:
        """postconf reads main.cf as the daemons will; its warnings mean a broken instance."""
        result = subprocess.run(
            [require("postconf"), "-c", str(self.config_directory), "-n"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0 or "warning" in result.stderr:
            raise RuntimeError(f"Postfix configuration refused:\n{result.stderr.strip()}")

    def _wait_until_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"Postfix master exited with {self._process.returncode}:\n{self._tail()}"
                )
            with contextlib.suppress(TimeoutError):
                wait_for_port(self._port, 0.2)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix not listening after {timeout}s:\n{self._tail()}")

    def _wait_for_group_exit(self, pgid: int, timeout: float) -> None:
        """The daemons leave on their own once master is gone; kill any left at the deadline."""
        deadline = time.monotonic() + timeout
        while _group_alive(pgid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                return
            time.sleep(0.05)

    def _config(self, parameter: str) -> str:
        """A built-in default of this Postfix (not /etc/postfix's value)."""
        result = subprocess.run(
            [require("postconf"), "-d", "-h", parameter],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout.strip()

    def _daemon(self, name: str) -> str:
        return str(Path(self._config("daemon_directory")) / name)

    def _tail(self) -> str:
        lines = self.log_text().splitlines()[-20:]
        out = self.folder / "master.out"
        if out.exists():
            lines += out.read_text(errors="replace").splitlines()[-20:]
        return "\n".join(lines) or "(nothing logged: see the system log for master's own errors)"


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is left that is not a zombie waiting for init."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
