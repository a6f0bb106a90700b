"""Zero failed requests while `portablectl reattach --now` swaps v1 for v2 behind a host socket.

The socket unit lives on the host, so systemd keeps it listening and queues connections while
the service is replaced. ab (no keep-alive) and a per-request probe load the service inside
the guest from before the reattach until v2 has answered for a while.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from vm.config import Settings
from vm.load import LoadRun
from vm.log import log
from vm.portable import ATTACHED_STATES, NAME, PORTABLES, PortableService
from vm.report import plot_timeline, scenario_record
from vm.verdict import SocketObservation, counter_consistent, zero_downtime_problems

pytestmark = pytest.mark.vm


def test_host_socket_reattach_loses_no_request(
    portable: PortableService, settings: Settings, artifacts: Path, record_scenario: Any
) -> None:
    scenario = "host-socket-no-keepalive"
    load_cfg = settings.load
    portable.attach(version=1)
    portable.wait_for_greeting("Hello")
    socket_before = portable.socket_active_since()

    load = LoadRun(portable.machine, load_cfg, keepalive=False)
    with log.nested(f"{scenario}: load, reattach v1 -> v2, load until v2 served "
                    f"{load_cfg.post_switch_s:g} s"):
        load.start()
        log.info(f"load: {load.command} (+ probe every 0.2 s)")
        time.sleep(load_cfg.switch_after_s)
        with log.nested("portablectl reattach --now (v2)"):
            reattach = portable.reattach(version=2)
        log.info(f"reattach took {reattach.duration_s:.1f} s: {reattach.command}")
        load.wait_until_serving("Hola", load_cfg.post_switch_s)
        outcome = load.stop(old="Hello", new="Hola")
    log.info(f"ab: {outcome.ab.describe()}")

    socket = SocketObservation(
        socket_before, portable.socket_active_since(),
        portable.machine.unit_state("portable-walkthrough.socket"),
    )
    final_count = portable.counter()
    problems = zero_downtime_problems(
        outcome, reattach, socket, final_count, load_cfg.min_complete, load_cfg.post_switch_s
    )
    # Like systemd's TEST-29: after the reattach v2 is attached and v1 is not.
    v1, v2 = (portable.attachment_state(f"{PORTABLES}/{NAME}_{v}.raw") for v in (1, 2))
    if v2 not in ATTACHED_STATES or v1 != "detached":
        problems.append(f"after the reattach v1 is {v1!r} and v2 is {v2!r}")
    record_scenario(scenario_record(
        scenario, settings.box, portable.systemd_major, keepalive=False, proxy=None,
        socket_location="host", outcome=outcome, reattach=reattach,
        counter_ok=not counter_consistent(outcome, final_count),
        verdict="pass" if not problems else "FAIL", problems=problems,
    ))
    plot_timeline(artifacts / f"{scenario}.png", f"{scenario} (systemd {portable.systemd_major})",
                  outcome, reattach)
    assert not problems, "no zero-downtime upgrade:\n- " + "\n- ".join(problems)
