"""SessionControl: the one handler of HELLO/ESTOP/CLEAR/BYE/HEARTBEAT/unexpected for both ends."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from policyrt.protocol import Encoder, ErrorTally, MsgType, decode
from policyrt.session_control import Control, SessionControl

log = logging.getLogger("test_session_control")


def control(mtype: MsgType):
    return decode(bytes(Encoder().control(mtype)))


def make(side: str, **kwargs) -> tuple[SessionControl, ErrorTally]:
    errors = ErrorTally(log, side)
    return SessionControl(side, errors, log, **kwargs), errors


def test_robot_side_hello_starts_a_session_and_bye_ends_it():
    ctl, errors = make("robot")
    assert not ctl.connected
    assert ctl.handle(control(MsgType.HELLO)) is Control.HELLO
    assert ctl.connected
    assert ctl.handle(control(MsgType.HELLO)) is Control.HELLO  # a restarted controller
    assert ctl.handle(control(MsgType.HEARTBEAT)) is Control.NONE
    assert ctl.handle(control(MsgType.BYE)) is Control.BYE
    assert not ctl.connected
    assert errors.counts == {}


def test_robot_side_counts_a_bye_without_a_session_as_unexpected(caplog):
    ctl, errors = make("robot")
    with caplog.at_level(logging.WARNING):
        assert ctl.handle(control(MsgType.BYE)) is Control.NONE
    assert errors.counts == {"unexpected": 1}
    assert "BYE from the controller before HELLO" in caplog.text


def test_estop_latches_logs_once_per_change_and_counts_latches(caplog):
    ctl, errors = make("robot", where=lambda: "step 7")
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # before any HELLO too: an operator may stop a robot with no controller
            assert ctl.handle(control(MsgType.ESTOP)) is Control.NONE
        assert ctl.estop and ctl.estops == 1
        ctl.handle(control(MsgType.CLEAR))
        ctl.handle(control(MsgType.CLEAR))
        assert not ctl.estop
        assert ctl.set_estop(True) and not ctl.set_estop(True)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "step 7: emergency stop latched; holding the safe action until CLEAR",
        "step 7: emergency stop cleared; following the controller again",
        "step 7: emergency stop latched; holding the safe action until CLEAR",
    ]
    assert ctl.estops == 2 and errors.counts == {}


def test_controller_side_bye_ends_and_a_hello_or_data_of_the_wrong_direction_is_unexpected(caplog):
    ctl, errors = make("controller", cleared_means="policy state reset")
    assert ctl.connected  # the controller's driver starts with the handshake done
    act = decode(bytes(Encoder(act_dim=1).act(np.zeros(1), ack=1)))
    with caplog.at_level(logging.WARNING):
        assert ctl.handle(control(MsgType.HELLO)) is Control.NONE
        assert ctl.handle(act) is Control.NONE
        ctl.handle(control(MsgType.ESTOP))
        ctl.handle(control(MsgType.CLEAR))
    assert errors.counts == {"unexpected": 2}
    assert "HELLO from the robot" in caplog.text  # the first of a kind is logged, the rest counted
    assert "emergency stop cleared; policy state reset" in caplog.text
    assert ctl.handle(control(MsgType.BYE)) is Control.BYE
    assert ctl.handle(control(MsgType.BYE)) is Control.BYE  # still the robot ending it


def test_unknown_side_is_refused():
    with pytest.raises(ValueError, match="side must be one of"):
        SessionControl("operator", ErrorTally(log, "x"), log)


def test_the_final_bye_still_leaves_after_the_link_is_closed():
    """A Link closes with LINGER 0; a BYE still queued then would be dropped. Here the peer binds
    only after the close: the BYE reaches it all the same."""
    import time

    from wire_helpers import endpoint_for

    from policyrt.link import Link
    from policyrt.session_control import send_final_bye

    ep = endpoint_for("ipc")
    controller = Link(ep, bind=False)  # queues for a robot that is not there yet
    send_final_bye(controller, Encoder(), flush_ms=5000)
    assert controller.sock.closed
    time.sleep(0.1)
    with Link(ep, bind=True) as robot:
        msg = robot.recv(5.0)
    assert msg is not None and msg.type is MsgType.BYE
