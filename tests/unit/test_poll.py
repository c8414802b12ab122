"""twotier.poll: the one wait loop (fake clock: no real waiting)."""
import pytest
from kubefake import Clock

from twotier.poll import Timeout, poll


def test_returns_the_first_truthy_result_and_reports_progress_between_tries():
    clock, answers, waits = Clock(), iter([None, [], {"ready": True}]), []
    assert poll(lambda: next(answers), timeout=10, what="x", interval=2, on_wait=waits.append,
                clock=clock, sleep=clock.sleep) == {"ready": True}
    assert waits == [0.0, 2.0] and clock.t == 4.0


def test_times_out_with_what_was_awaited_and_the_hint():
    clock = Clock()
    with pytest.raises(Timeout) as info:
        poll(lambda: False, timeout=5, what="the pods going away", hint="kubectl describe", interval=1,
             clock=clock, sleep=clock.sleep)
    assert info.value.message == "the pods going away: not done after 5s"
    assert info.value.hint == "kubectl describe"
    assert clock.t == 5.0


def test_a_check_that_raises_stops_at_once():
    clock = Clock()

    def crashed():
        raise RuntimeError("CrashLoopBackOff")

    with pytest.raises(RuntimeError, match="CrashLoopBackOff"):
        poll(crashed, timeout=60, what="x", clock=clock, sleep=clock.sleep)
    assert clock.t == 0
