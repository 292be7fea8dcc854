"""Session control: what either end of a session does with the messages that are not its data.

A driver receives two kinds of message. Its data (OBS/OBS_BATCH on the controller, ACT/ACT_BATCH
on the robot) it handles itself, on its hot path. Everything else -- HELLO, ESTOP, CLEAR, BYE,
HEARTBEAT, and any valid message that has no business arriving -- goes to `SessionControl.handle`,
so the e-stop latch, its log lines and the counting of unexpected messages are the same for the
lockstep and real-time drivers of both ends (docs/PROTOCOL.md, section 1).

`handle` returns what the driver must act on (`Control`): HELLO (robot side: a controller starts
or restarts the session: answer SPEC, start over) and BYE (the peer ended the session). ESTOP and
CLEAR are handled here: they latch and release `estop`, logged on every change; `estops` counts
the latches. A driver that must react to a change (repeat it to its peer, reset its policy) compares
`estop` before and after. HEARTBEAT is liveness only: nothing to do here (a driver that tracks
contact reads the message's type itself). Anything else is counted as an "unexpected" protocol
error in the shared `ErrorTally` (logged once per kind there) and otherwise ignored.

An ESTOP always latches, whether or not a session is up: an operator (`policyrt estop`) may stop a
robot before any controller connected. A BYE only counts while a session is up (robot side: after
a HELLO): a BYE from nobody in particular is unexpected.

Board-side module: standard library only (plus the protocol module), Python 3.10.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from policyrt.protocol import ErrorTally, Message, MsgType, ProtocolError

SIDES = ("controller", "robot")
# How long closing a link may wait for the final BYE to leave (a vanished peer costs this once).
BYE_FLUSH_MS = 200


class Control(enum.Enum):
    """What the driver must act on after `SessionControl.handle`."""

    NONE = 0  # nothing: handled here, ignored, or counted as unexpected
    HELLO = 1  # robot side: a controller (re)starts the session
    BYE = 2  # the peer ends the session on purpose


# What a latch / release means at each end, for the log line (a driver may say more).
_LATCHED = {"controller": "sending the fallback action until CLEAR", "robot": "holding the safe action until CLEAR"}
_CLEARED = {"controller": "following the policy again", "robot": "following the controller again"}


class SessionControl:
    """Control messages of a session (HELLO, ESTOP, CLEAR, BYE, HEARTBEAT, anything unexpected),
    for either end.

    side: "controller" (its peer is a robot) or "robot" (its peer is a controller, or an operator
    sending ESTOP/CLEAR). where: called for a prefix of each log line and unexpected-message detail
    (e.g. "step 120" or "tick 5: robot tcp://... (slot 0)"), so the lines say when and who.
    cleared_means: the log text after "emergency stop cleared; " (default: the side's generic one),
    for drivers that do more on a release (e.g. reset the policy state).
    """

    def __init__(
        self,
        side: str,
        errors: ErrorTally,
        log: logging.Logger,
        *,
        where: Callable[[], str] | None = None,
        cleared_means: str | None = None,
    ):
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        self.side = side
        self.peer = "robot" if side == "controller" else "controller"
        self.errors, self.log = errors, log
        self._where = where
        self._latched_means = _LATCHED[side]
        self._cleared_means = cleared_means if cleared_means is not None else _CLEARED[side]
        self.estop = False  # latched by ESTOP, released by CLEAR
        self.estops = 0  # times the e-stop was latched
        # Robot side: a controller said HELLO and has not said BYE. The controller side has its
        # session from the handshake on (its driver only starts then).
        self.connected = side == "controller"

    def handle(self, msg: Message) -> Control:
        """Act on one message that is not the driver's data message; say what the driver must do."""
        mtype = msg.type
        if mtype is MsgType.HEARTBEAT:
            return Control.NONE
        if mtype is MsgType.ESTOP:
            self.set_estop(True)
            return Control.NONE
        if mtype is MsgType.CLEAR:
            self.set_estop(False)
            return Control.NONE
        if mtype is MsgType.HELLO and self.side == "robot":
            self.connected = True
            return Control.HELLO
        if mtype is MsgType.BYE and self.connected:
            self.connected = self.side == "controller"
            return Control.BYE
        self.unexpected(f"{mtype.name} from the {self.peer}" + ("" if self.connected else " before HELLO"))
        return Control.NONE

    def set_estop(self, on: bool) -> bool:
        """Latch (on) or release the e-stop, logging the change; True when it changed. Drivers call
        it directly for an e-stop signalled inside a data message (the lockstep sim latches on an
        ACT flagged ESTOP)."""
        if on == self.estop:
            return False
        self.estop = on
        if on:
            self.estops += 1
            self.log.warning("%semergency stop latched; %s", self._prefix(), self._latched_means)
        else:
            self.log.warning("%semergency stop cleared; %s", self._prefix(), self._cleared_means)
        return True

    def unexpected(self, what: str) -> None:
        """Count a valid message that cannot be used now (the driver's own cases use it too)."""
        self.errors.add(ProtocolError("unexpected", self._prefix() + what))

    def _prefix(self) -> str:
        return f"{self._where()}: " if self._where is not None else ""


def send_final_bye(link, encoder, flush_ms: int = BYE_FLUSH_MS) -> None:
    """BYE as the session's last frame, then close the link so that the BYE leaves: a Link closes
    with LINGER 0, which drops a frame still queued in ZeroMQ (the peer would wait for its timeout
    instead of hearing the BYE); this close waits up to `flush_ms` for it. The link is closed after."""
    link.send(encoder.control(MsgType.BYE))
    link.close(flush_ms)


def release_global_context(flush_ms: int = BYE_FLUSH_MS) -> None:
    """Let the last frames leave before the process exits; for the end of a command that ran a
    session (`run`, `serve`, `sim serve`). pyzmq does not terminate its global context at
    interpreter exit, so a final BYE still queued on a link closed with a linger would be lost and
    the peer would wait for its timeout. Closes every socket of that context: process exit only.
    The CURVE authenticator threads (controllers/auth.py) are stopped first: they use it too."""
    import zmq

    from policyrt.controllers.auth import stop_authenticators

    stop_authenticators()
    zmq.Context.instance().destroy(linger=flush_ms)
