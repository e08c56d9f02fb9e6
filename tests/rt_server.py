"""A throwaway Request Tracker 5 for the end-to-end suite: SQLite database, site config and server in
one directory, REST2 on a free loopback port. Needs Debian's `request-tracker5` and `rt5-db-sqlite`
(`.ci/install-rt.sh`); nothing outside the directory is read or written except RT's own install.

Run it by hand for a demo: `python -m tests.rt_server .rt` prints the URL and a token and serves
until interrupted.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

RT_SERVER_CANDIDATES = (
    "/usr/share/request-tracker5/libexec/rt-server",
    "/usr/local/share/request-tracker5/libexec/rt-server",
)
SETUP_DATABASE = "rt-setup-database-5"
PLACKUP = "plackup"
ROOT_PASSWORD = "password"  # what rt-setup-database gives root when no password file is passed
QUEUE = "Azure Alerts"
CUSTOM_FIELD = "AzureAlertId"
CATALOG = "Azure resources"
# A person working the queue (not the relay's account): two-way sync's tests resolve tickets as them.
OPERATOR = "operator"
OPERATOR_PASSWORD = "operator-password"
READY_TIMEOUT_SECONDS = 90.0

SITE_CONFIG = """\
Set($rtname, 'relay-e2e');
Set($Organization, 'relay-e2e');
Set($Timezone, 'UTC');
Set($DatabaseType, 'SQLite');
Set($DatabaseName, '{db}');
Set($WebDomain, '127.0.0.1');
Set($WebPort, {port});
Set($WebPath, '');
Set($WebBaseURL, 'http://127.0.0.1:{port}');
Set($MailCommand, 'testfile');
Set($LogToSTDERR, 'warning');
Set($LogToSyslog, undef);
Set($LogToFile, undef);
Set($MasonDataDir, '{dir}/mason');
Set($MasonSessionDir, '{dir}/sessions');
1;
"""

# RT initialdata (see the package's docs/initialdata): the queue, the correlation custom field applied
# to it, a catalog for the assets that stand in for CIs, an auth token for root, and a privileged operator
# who may see and change the queue's tickets (a person, for two-way sync's tests).
SEED = """\
@Queues = ({{ Name => '{queue}', Description => 'Azure Monitor alerts relayed by secure-export' }});
@CustomFields = ({{
    Name => '{cf}', Type => 'FreeformSingle', LookupType => 'RT::Queue-RT::Ticket',
    ApplyTo => ['{queue}'], Description => 'Correlation key of the Azure alert',
}});
@Catalogs = ({{ Name => '{catalog}', Description => 'Azure resources, named by ARM id' }});
@Users = ({{ Name => '{operator}', Password => '{operator_password}', RealName => 'Queue operator',
            EmailAddress => '{operator}@example.com', Privileged => 1 }});
@ACL = ({{ UserId => '{operator}', Queue => '{queue}',
          Right => ['SeeQueue', 'ShowTicket', 'ModifyTicket', 'SeeCustomField', 'ReplyToTicket', 'CommentOnTicket'] }});
@Final = (sub {{
    my $root = RT::User->new(RT->SystemUser);
    $root->Load('root');
    my $token = RT::AuthToken->new(RT::CurrentUser->new($root));
    my ($ok, $msg, $auth) = $token->Create(Owner => $root->id, Description => 'relay e2e');
    die "auth token: $msg" unless $ok;
    open my $fh, '>', '{token_file}' or die "$!";
    print $fh $auth;
    close $fh;
}});
1;
"""


class RTUnavailable(Exception):
    """RT is not installed here, or would not start; the message says which and what to do."""


@dataclass
class RunningRT:
    url: str
    token: str
    directory: Path
    process: subprocess.Popen[bytes]
    timings: dict[str, float] = field(default_factory=dict)
    queue: str = QUEUE
    custom_field: str = CUSTOM_FIELD
    catalog: str = CATALOG
    root_password: str = ROOT_PASSWORD
    operator: str = OPERATOR
    operator_password: str = OPERATOR_PASSWORD

    @property
    def log_path(self) -> Path:
        return self.directory / "rt-server.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server this module started (its own process group only)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def find_rt_server() -> str:
    """The package's rt-server script, or RTUnavailable saying how to install RT."""
    missing = [tool for tool in (SETUP_DATABASE, PLACKUP) if shutil.which(tool) is None]
    server = next((p for p in RT_SERVER_CANDIDATES if os.path.exists(p)), None)
    if missing or server is None:
        what = ", ".join(missing + ([] if server else ["libexec/rt-server"]))
        raise RTUnavailable(
            f"Request Tracker 5 is not installed (missing {what}); "
            "run .ci/install-rt.sh (Debian: request-tracker5 rt5-db-sqlite)"
        )
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_rt(directory: Path, port: int | None = None) -> RunningRT:
    """Initialise a fresh database under `directory` and serve RT on 127.0.0.1; RTUnavailable on failure."""
    server = find_rt_server()
    directory = directory.resolve()
    for sub in ("mason", "sessions", "site.d"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    db = directory / "rt5.db"
    token_file = directory / "root.token"
    for stale in (db, token_file):
        stale.unlink(missing_ok=True)
    (directory / "RT_SiteConfig.pm").write_text(SITE_CONFIG.format(db=db, port=port, dir=directory))
    (directory / "seed.pl").write_text(
        SEED.format(queue=QUEUE, cf=CUSTOM_FIELD, catalog=CATALOG, token_file=token_file, operator=OPERATOR,
                    operator_password=OPERATOR_PASSWORD)
    )
    env = {
        **os.environ,
        # Only our site config: never /etc/request-tracker5's (which points at /var/lib).
        "RT_SITE_CONFIG": str(directory / "RT_SiteConfig.pm"),
        "RT_SITE_CONFIG_DIR": str(directory / "site.d"),
    }
    timings: dict[str, float] = {}
    started = time.monotonic()
    _run([SETUP_DATABASE, "--action", "init", "--skip-create"], env, directory, "initialise the database")
    timings["init_database"] = time.monotonic() - started
    mark = time.monotonic()
    _run(
        [SETUP_DATABASE, "--action", "insert", "--datafile", str(directory / "seed.pl")],
        env,
        directory,
        "seed the queue, custom field, catalog and token",
    )
    timings["seed"] = time.monotonic() - mark
    token = token_file.read_text().strip()
    mark = time.monotonic()
    log = open(directory / "rt-server.log", "wb")  # the child keeps writing to it
    process = subprocess.Popen(
        [PLACKUP, "-s", "HTTP::Server::PSGI", "--host", "127.0.0.1", "--port", str(port), server],
        env=env,
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    rt = RunningRT(url=f"http://127.0.0.1:{port}", token=token, directory=directory, process=process)
    try:
        _wait_ready(rt)
    except BaseException:
        rt.stop()
        raise
    timings["serve"] = time.monotonic() - mark
    timings["total"] = time.monotonic() - started
    rt.timings = timings
    return rt


def _run(argv: list[str], env: dict[str, str], cwd: Path, what: str) -> None:
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise RTUnavailable(f"RT is installed but could not {what} ({' '.join(argv)}):\n{tail}")


def _wait_ready(rt: RunningRT) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    request = urllib.request.Request(f"{rt.url}/REST/2.0/rt", headers={"Authorization": f"token {rt.token}"})
    while time.monotonic() < deadline:
        if rt.process.poll() is not None:
            raise RTUnavailable(f"rt-server exited with {rt.process.returncode}:\n{rt.log_tail()}")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RTUnavailable(f"rt-server did not answer within {READY_TIMEOUT_SECONDS:g}s:\n{rt.log_tail()}")


def main(argv: list[str]) -> int:
    directory = Path(argv[1] if len(argv) > 1 else ".rt")
    port = int(argv[2]) if len(argv) > 2 else None
    try:
        rt = start_rt(directory, port)
    except RTUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    print(
        f"RT_URL={rt.url}\nRT_TOKEN={rt.token}\n# queue {QUEUE!r}, custom field {CUSTOM_FIELD!r}, "
        f"catalog {CATALOG!r}; root/{ROOT_PASSWORD}; started in {rt.timings['total']:.1f}s",
        flush=True,
    )
    try:
        rt.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        rt.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
