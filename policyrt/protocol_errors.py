"""Rejected wire messages: the kinds of rejection, the error decoders raise, and the per-kind tally loops keep.

Split from policyrt/protocol.py (which re-exports every name here) so each stays small; the loops on
both ends import these names from policyrt.protocol.

Board-side module: standard library only, Python 3.10.
"""

from __future__ import annotations

import logging

# Everything `ProtocolError.kind` can be. Decoding raises the first ten; "multipart" is raised by
# the link (policyrt/link.py) for a message of several ZeroMQ frames; the last two by the loops on
# both ends for well-formed messages that arrive at the wrong moment.
ERROR_KINDS = (
    "truncated",  # fewer bytes than the header, or than the header's payload_len announces
    "seq",  # seq 0: never a sequence number (docs/PROTOCOL.md, section 6)
    "length",  # more bytes than announced, or a payload size that type can never have
    "magic",
    "version",
    "type",  # unknown message type
    "flags",  # flag bits not defined for the type
    "dims",  # OBS/ACT float count disagrees with the SPEC
    "nonfinite",  # NaN or infinity where a finite value is required
    "spec",  # SPEC content invalid (dims, rate, bounds, JSON, frames that cannot fit MAX_FRAME_BYTES)
    "multipart",  # a message of several ZeroMQ frames: every policyrt message is one frame
    "unexpected",  # a valid message the receiver cannot use in its current state
    "stale",  # an ACT answering an OBS other than the one outstanding
)


class ProtocolError(Exception):
    """A message was rejected. `kind` is one of ERROR_KINDS; `detail` says what was seen."""

    def __init__(self, kind: str, detail: str):
        assert kind in ERROR_KINDS, kind
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class ErrorTally:
    """Counts rejected messages per kind and logs only the first of each kind, so a peer that
    floods garbage cannot flood the log or slow the loop down with formatting."""

    def __init__(self, logger: logging.Logger, who: str):
        self.counts: dict[str, int] = {}
        self._log, self._who = logger, who

    def add(self, error: ProtocolError) -> None:
        seen = self.counts.get(error.kind, 0)
        self.counts[error.kind] = seen + 1
        if not seen:
            self._log.warning(
                "%s: rejected a message (%s): %s; further '%s' errors are only counted",
                self._who,
                error.kind,
                error.detail,
                error.kind,
            )

    @property
    def total(self) -> int:
        return sum(self.counts.values())
