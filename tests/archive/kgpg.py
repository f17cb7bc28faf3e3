"""kgpg - a private PostgreSQL for the archive tests and the bench.

    pg = PrivatePg()      initdb + pg_ctl start as the `postgres` user, in a
                          temp dir, listening only on a Unix socket there
    pg.conninfo           what `archive postgresql:...` takes
    pg.stop() / start()   stop (fast shutdown) and start again, same data
    pg.close()            stop it (by the postmaster's PID), remove the dir
    pg.sql(text)          runs SQL through psql, returns its rows as lists

Needs Debian's postgresql (PG_BIN, default /usr/lib/postgresql/<ver>/bin)
and root (to run the server as `postgres`), or to be run as `postgres`.
"""
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time


def pg_bin():
    if os.environ.get("PG_BIN"):
        return os.environ["PG_BIN"]
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def available():
    return pg_bin() is not None and (os.geteuid() == 0 or
                                     pwd.getpwuid(os.geteuid()).pw_name == "postgres")


class PrivatePg:
    def __init__(self, port=5432):
        self.bin = pg_bin()
        self.tmp = tempfile.mkdtemp(prefix="kgpg")
        os.chmod(self.tmp, 0o755)
        self.data = os.path.join(self.tmp, "data")
        self.log = os.path.join(self.tmp, "pg.log")
        self.port = port
        self.conninfo = "host=%s port=%d dbname=postgres user=postgres" % (self.tmp, port)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
        try:
            self._as_pg([os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "postgres",
                         "--auth=trust", "-E", "UTF8", "--no-sync"], quiet=True)
            self.start()
        except BaseException:
            self.close()
            raise

    def _as_pg(self, argv, quiet=False, input=None):
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        return subprocess.run(argv, check=True, capture_output=True, text=True, input=input,
                              cwd=self.tmp).stdout

    def start(self):
        opts = "-k %s -c listen_addresses='' -p %d -c fsync=off -c full_page_writes=off" % (
            self.tmp, self.port)
        self._as_pg([os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l", self.log, "-o",
                     opts, "-w", "-t", "30", "start"])

    def pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def stop(self):
        """Fast shutdown by the postmaster's PID; waits for it to go."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        for _ in range(300):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def sql(self, text):
        out = self._as_pg([os.path.join(self.bin, "psql"), "-X", "-q", "-A", "-t", "-F", "\t",
                           "-h", self.tmp, "-p", str(self.port), "-U", "postgres", "-d",
                           "postgres", "-c", text])
        return [line.split("\t") for line in out.splitlines() if line]

    def close(self):
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
