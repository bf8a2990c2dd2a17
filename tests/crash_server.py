"""A real ``auditlog serve`` that dies inside a commit which rolls to a new segment (not a test module).

    crash_server.py WHEN auditlog-args...

Runs the CLI (``cli.main``) with the given arguments, after arranging that the
first commit which makes its active segment roll kills the process with
SIGKILL, as a power cut or an OOM kill would:

* ``WHEN=before-create``: the frames written to the old segment are durable
  (written and fsynced), the next segment does not exist yet;
* ``WHEN=after-create``: the next segment has been created (durably), none of
  the commit's frames are in it yet.

Nothing of the commit was acknowledged: the process dies before it answers.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from auditlog.engine.writer import LogWriter  # noqa: E402


def arm(when: str) -> None:
    original = LogWriter._create_segment

    def create_segment(self, first_seq, prev_sig, prev_mac, *args):
        in_commit = self._new_segments is not None  # a roll inside a commit, not at open
        if in_commit and when == "before-create":
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, first_seq, prev_sig, prev_mac, *args)
        if in_commit and when == "after-create":
            os.kill(os.getpid(), signal.SIGKILL)

    LogWriter._create_segment = create_segment


if __name__ == "__main__":
    arm(sys.argv[1])
    from auditlog.cli.main import cli

    cli(sys.argv[2:], prog_name="auditlog")
