"""The RELP client (``export.relp``) against a peer that answers wrongly: every
refusal is an error naming what went wrong, and ``acked`` counts only the messages
the receiver answered 200 for, in order.  (Against a real rsyslog ``imrelp``:
``tests/test_syslog.py``.)"""

from __future__ import annotations

import re
import socket
import threading

import pytest

from auditlog.export.relp import WINDOW, RelpError, RelpSession, frame

FRAME = re.compile(rb"(\d+) ([a-z]+) (\d+)[ \n]")


def _serve(answer):
    """A socket pair; the far end reads frames and answers each with ``answer(txnr, cmd)``
    (bytes to send, or None to send nothing)."""
    a, b = socket.socketpair()
    a.settimeout(5)

    def run():
        buf = b""
        try:
            while True:
                m = FRAME.match(buf)
                if m is None:
                    chunk = b.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    continue
                n = int(m.group(3))
                end = m.end() + (n + 1 if n else 0)
                while len(buf) < end:
                    buf += b.recv(65536)
                buf = buf[end:]
                out = answer(int(m.group(1)), m.group(2))
                if out is not None:
                    b.sendall(out)
        except OSError:
            return

    threading.Thread(target=run, daemon=True).start()
    return a, b


def test_a_receiver_that_acknowledges_everything():
    a, b = _serve(lambda t, cmd: frame(t, b"rsp", b"200 OK" + (b"\\ncommands=syslog" if cmd == b"open" else b"")))
    s = RelpSession(a)
    s.open()
    s.send([b"m%d" % i for i in range(WINDOW * 2 + 7)])
    assert s.acked == WINDOW * 2 + 7
    s.close()
    a.close()
    b.close()


@pytest.mark.parametrize(
    "bad, needle",
    [
        (lambda t, cmd: frame(t, b"rsp", b"500 no"), "refused frame"),
        (lambda t, cmd: frame(t + 1, b"rsp", b"200 OK"), "not rsp"),
        (lambda t, cmd: frame(0, b"serverclose"), "closing"),
        (lambda t, cmd: b"HTTP/1.1 400 Bad Request\\r\\n\\r\\n", "not a RELP frame"),
        (lambda t, cmd: b"%d rsp 999999999 200" % t, "bad length"),
        (lambda t, cmd: b"%d rsp 6 200 OKX" % t, "newline"),
    ],
)
def test_a_receiver_that_answers_wrongly_is_an_error(bad, needle):
    def answer(t, cmd):
        return frame(t, b"rsp", b"200 OK") if cmd == b"open" or t < 4 else bad(t, cmd)

    a, b = _serve(answer)
    s = RelpSession(a)
    s.open()
    with pytest.raises(RelpError, match=needle):
        s.send([b"one", b"two", b"three", b"four"])
    assert s.acked == 2  # frames 2 and 3 were answered 200; frame 4 was not
    a.close()
    b.close()


def test_a_receiver_that_goes_away():
    a, b = _serve(lambda t, cmd: frame(t, b"rsp", b"200 OK") if cmd == b"open" else None)
    s = RelpSession(a)
    s.open()
    b.close()
    with pytest.raises(OSError):
        s.send([b"lost"])
    assert s.acked == 0
    a.close()
