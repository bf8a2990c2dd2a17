"""RELP, the Reliable Event Logging Protocol (librelp, rsyslog's ``imrelp``): syslog
messages with application-level acknowledgements, so the forwarder moves its cursor
only past what the receiver itself has taken, not what its kernel acknowledged.

A frame is ``TXNR SP COMMAND SP DATALEN [SP DATA] LF``: the client numbers its
frames 1, 2, ... (after 999999999 again from 1), opens the session with ``open``
(offering ``relp_version=0`` and the ``syslog`` command), sends each message as a
``syslog`` frame and reads one ``rsp`` frame per frame it sent, carrying the same
number and a status (``200 OK``); ``close`` ends the session.  At most ``WINDOW``
frames are unanswered at a time.
"""

from __future__ import annotations

import re
import socket

#: frames sent before their answers are read (librelp's default window is 128)
WINDOW = 100
MAX_TXNR = 999_999_999
#: the longest answer read (an answer is a status line, and for ``open`` the offers)
MAX_ANSWER = 64 * 1024
OPEN_OFFERS = b"relp_version=0\nrelp_software=auditlog\ncommands=syslog"


_HEADER = re.compile(rb"(\d{1,9}) ([a-z]{1,32}) (\d{1,9})([ \n])")
#: what the start of a header may look like while more of it is still to come
_HEADER_START = re.compile(rb"\d{0,9}( [a-z]{0,32}( \d{0,9})?)?$")


class RelpError(OSError):
    """The receiver refused a frame, answered out of turn or closed the session."""


def frame(txnr: int, command: bytes, data: bytes = b"") -> bytes:
    if data:
        return b"%d %s %d %s\n" % (txnr, command, len(data), data)
    return b"%d %s 0\n" % (txnr, command)


class RelpSession:
    """One RELP session over a connected socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.txnr = 0
        self.acked = 0
        self._buf = b""

    def _next(self) -> int:
        self.txnr = self.txnr % MAX_TXNR + 1
        return self.txnr

    def _read_frame(self) -> tuple[int, bytes, bytes]:
        """``(txnr, command, data)`` of the next frame from the receiver."""
        while True:
            m = _HEADER.match(self._buf)
            if m is not None:
                break
            if len(self._buf) >= 64 or (self._buf and not _HEADER_START.match(self._buf)):
                raise RelpError(f"not a RELP frame from the receiver: {self._buf[:80]!r}")
            self._fill()
        txnr, command, n, sep = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        if n > MAX_ANSWER or (sep == b"\n" and n):
            raise RelpError("a RELP frame from the receiver with a bad length")
        if sep == b"\n":
            self._buf = self._buf[m.end() :]
            return txnr, command, b""
        while len(self._buf) < m.end() + n + 1:
            self._fill()
        data, end = self._buf[m.end() : m.end() + n], self._buf[m.end() + n : m.end() + n + 1]
        if end != b"\n":
            raise RelpError("a RELP frame from the receiver does not end in a newline")
        self._buf = self._buf[m.end() + n + 1 :]
        return txnr, command, data

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RelpError("the receiver closed the RELP session")
        self._buf += chunk

    def _expect_ok(self, txnr: int) -> bytes:
        got, command, data = self._read_frame()
        if command == b"serverclose":
            raise RelpError("the receiver is closing the RELP session")
        if command != b"rsp" or got != txnr:
            raise RelpError(f"the receiver answered {command.decode(errors='replace')} {got}, not rsp {txnr}")
        if not data.startswith(b"200"):
            raise RelpError(f"the receiver refused frame {txnr}: {data[:200].decode(errors='replace')}")
        return data

    def open(self) -> None:
        n = self._next()
        self.sock.sendall(frame(n, b"open", OPEN_OFFERS))
        offers = self._expect_ok(n)
        if b"commands=" in offers and b"syslog" not in offers.split(b"commands=", 1)[1].split(b"\n", 1)[0]:
            raise RelpError("the receiver does not take the syslog command")

    def send(self, messages: list[bytes]) -> None:
        """Send the messages and wait for every answer.  ``acked`` counts, in order, those
        the receiver took: when this raises, the rest go again."""
        self.acked = 0
        while self.acked < len(messages):
            window = messages[self.acked : self.acked + WINDOW]
            numbers = [self._next() for _ in window]
            self.sock.sendall(b"".join(frame(n, b"syslog", m) for n, m in zip(numbers, window)))
            for n in numbers:
                self._expect_ok(n)
                self.acked += 1

    def close(self) -> None:
        try:
            n = self._next()
            self.sock.sendall(frame(n, b"close"))
            self._expect_ok(n)
        except OSError:
            pass
