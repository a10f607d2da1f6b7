"""README's bench table, written from ``bench/results/latest.json`` (``python -m bench`` does it after a
run): per bench its headline figures (median over the repeats, min-max in brackets), its in-run
baseline and costs per operation, and what each figure measures, from where to where."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"
START = "<!-- bench table: written by python -m bench from bench/results/latest.json -->"
END = "<!-- end of bench table -->"


def fig(e: dict[str, Any], key: str, unit: str = "") -> str:
    """``median (min-max) unit`` of a headline key (the range left out when it is one value)."""
    v, lo, hi = e.get(key), e.get(f"{key}_min"), e.get(f"{key}_max")
    if v is None:
        return "n/a"
    text = f"**{v:,}**" if isinstance(v, int | float) else f"**{v}**"
    if lo is not None and hi is not None and lo != hi:
        text += f" ({lo:,}-{hi:,})"
    return text + (f" {unit}" if unit else "")


def plays(passed: list[int] | None) -> str:
    """``[passed, played]`` as words."""
    return f"{passed[0]} of {passed[1]} plays" if passed else "no play"


def late(pooled: dict[str, Any] | None) -> str:
    """The alerts slower than twice their play's idle p99, of all the plays' (the rush's ``over_2x_idle_p99``)."""
    over = (pooled or {}).get("over_2x_idle_p99")
    return f"{over['slower']} of {over['alerts']}" if over else "n/a"


def costs(d: dict[str, Any] | None) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in (d or {}).items() if v is not None) or "n/a"


Row = tuple[Callable[[dict[str, Any]], str], str]
ROWS: dict[str, Row] = {
    "streams": (lambda e: (
        f"{fig(e, 'streams_per_core', 'streams per core')} at {e.get('streams')} streams ({e.get('confirmed')}); "
        f"naive NeuroKit2 {fig(e, 'naive_streams_per_core')} per core: ratio {fig(e, 'ratio', 'x')} end to end, "
        f"{fig(e, 'analysis_only_ratio', 'x')} analysis only ({e.get('project_us_per_stream_s')} vs "
        f"{e.get('naive_us_per_stream_s')} µs CPU per stream-second; rates agree to "
        f"{e.get('naive_hr_agreement_bpm')}/min); watcher p99 {fig(e, 'watcher_p99_ms', 'ms')}, delivered "
        f"{fig(e, 'delivered_ratio')}; top reached: {e.get('top_reached')}; cores {costs(e.get('cpu_cores'))}"),
        "Streams kept in real time (newest analysis lag < 1.5 s: newest samples' arrival → analysis back from the "
        "worker; watcher frame p99 < 100 ms: device send → watcher receipt; ≥ 99% of frames delivered) ÷ the cores "
        "the server side used (server + analysis worker + store, /proc), over 6 s windows; naive: CPU time per "
        "stream-second of NeuroKit2 calls on the last 60 s each second, in-process"),
    "alerts": (lambda e: (
        f"e2e p99 {fig(e, 'e2e_p99_ms_idle', 'ms')} idle, {fig(e, 'e2e_p99_ms_load', 'ms')} under 70% of "
        f"capacity ({e.get('alerts_per_configuration')} alerts each; p99 over all {e.get('e2e_p99_ms_idle_all')} / "
        f"{e.get('e2e_p99_ms_load_all')} ms); capacity {fig(e, 'capacity_readings_per_s', 'readings/s')}; per "
        f"reading: CPU µs {costs(e.get('cpu_us_per_reading'))}, {e.get('store_commands_per_reading')} store commands; "
        f"per alert: {e.get('store_commands_per_alert')} store commands"),
        "Crisis reading sent → the last of 1,000 caregivers' sockets (2 processes) has `alert:new`, at idle and "
        "under readings at 70% of capacity; capacity: readings/s acknowledged with ack p99 (send → ack) < 1 s"),
    "events": (lambda e: (
        f"rt/s: project (its event loop putting urgent work first) 1 process {fig(e, 'rt_per_s_1')}, 2 workers "
        f"{fig(e, 'rt_per_s_2')}, bare python-socketio (orjson, uvloop) {fig(e, 'bare_python_rt_per_s')}, Node "
        f"socket.io {fig(e, 'node_rt_per_s')}; "
        f"server CPU µs per rt {costs(e.get('cpu_us_per_rt'))}; failed {costs(e.get('failed'))}"),
        "Round trips per second: the Node client's emit → its ack, 10 connections x 8 in flight, 4 s windows; "
        "CPU per rt: the server's processes (+ Redis for 2 workers) over the window"),
    "scale": (lambda e: (
        f"scale-out efficiency {fig(e, 'scale_efficiency')} (ops per server-CPU-second: "
        f"{fig(e, 'ops_per_server_cpu_s_2')} on 2 workers with Redis, {fig(e, 'ops_per_server_cpu_s_1')} on 1); "
        f"store commands per op {costs(e.get('store_commands_per_op'))}; Redis per op (2 workers) "
        f"{costs(e.get('redis_per_op_2'))}; ops/s {fig(e, 'ops_per_s_1')} / {fig(e, 'ops_per_s_2')}"),
        "Mixed workload (live ECG, call signaling, BP readings, alerts): operations acknowledged ok in the window ÷ "
        "the CPU seconds of the server processes (and Redis) in it; efficiency = 2 workers ÷ 1 process"),
    "rush": (lambda e: (
        f"{fig(e, 'patients', 'patients')} with issue 18's settings on, {fig(e, 'patients_off')} with them off "
        f"(same run; that N passed {plays(e.get('plays_passed'))} on, {plays(e.get('plays_passed_off'))} off); "
        f"at that N: reminder p99 {e.get('reminder_p99_ms')} ms, BP ack p99 {e.get('bp_ack_p99_ms')} ms, "
        f"alert e2e p99 {e.get('alert_e2e_p99_ms_on')} ms (idle {e.get('alert_e2e_p99_ms_idle')} ms); against idle, "
        f"median of {len(e.get('alert_e2e_ratios') or [])} {e.get('alert_e2e_ratio')} x, range "
        f"{e.get('alert_e2e_ratio_range')}, all plays pooled p90 / p99 "
        f"{(e.get('alert_e2e_pooled') or {}).get('ratio', {}).get('p90')} / "
        f"{(e.get('alert_e2e_pooled') or {}).get('ratio', {}).get('p99')} x, slower than 2x their play's idle p99 "
        f"{late(e.get('alert_e2e_pooled'))} (off: {e.get('alert_e2e_p99_ms_off')} / "
        f"{e.get('alert_e2e_p99_ms_idle_off')} ms; median of {len(e.get('alert_e2e_ratios_off') or [])} "
        f"{e.get('alert_e2e_ratio_off')} x, range {e.get('alert_e2e_ratio_range_off')}, slower than 2x its idle p99 "
        f"{late(e.get('alert_e2e_pooled_off'))}), "
        f"{e.get('store_cmds_per_patient')} store commands per patient (off: {e.get('store_cmds_per_patient_off')}"
        f"), CPU s server {e.get('server_cpu_s')} / store {e.get('store_cpu_s')}; top reached: {e.get('top_reached')}"),
        "The morning rush on one server + embedded store, 08:00-08:05 compressed (`window_s`): a dose due for every "
        "patient at once (due → `dose:due` on the phone), one reading each (send → ack; 1% crisis: send → "
        "caregiver's `alert:new`), 10% ECG watched, 2% calls; the largest N meeting every limit; off and on take "
        "turns, each step once the shared store has settled; the alert ratio: under the rush against idle alerts "
        "timed just before, for the largest step and each repeat of it"),
    "reminders": (lambda e: (
        f"lag p50 {fig(e, 'lag_p50_ms', 'ms')}, p99 {fig(e, 'lag_p99_ms', 'ms')}, max {fig(e, 'lag_max_ms', 'ms')} "
        f"for {e.get('doses'):,} doses ({fig(e, 'missing')} missing); {fig(e, 'doses_per_s', 'doses/s')}; "
        f"{fig(e, 'notifications_stored')} notifications stored in {fig(e, 'notifications_s', 's')}; "
        f"{fig(e, 'store_commands_per_dose')} store commands per dose; CPU µs per dose "
        f"{costs(e.get('cpu_us_per_dose'))}; store cores with the doses reminded and nothing due: "
        f"{e.get('idle_store_cores')}"),
        "10,000 doses due at one instant: due time → the patient's socket receives `dose:due`, every dose; "
        "notifications: due time → the last reminder notification stored; store cores: its CPU over 3 s after the "
        "round (null if the round was cut before every notification was stored)"),
    "calls": (lambda e: (
        f"setup p50 {fig(e, 'setup_p50_ms', 'ms')} vs direct aiortc {fig(e, 'direct_setup_p50_ms', 'ms')}; "
        f"{e.get('max_relayed_calls')} relayed calls < 1% loss (top reached: {e.get('top_reached')}); CPU ms per "
        f"relayed call-second {costs(e.get('cpu_ms_per_relayed_call_s'))}; "
        f"{e.get('signaling_events_per_s'):,} signaling events/s"),
        "Setup: `call:invite` → first audible frame at both ends (direct: offer → same, no signaling); relayed: "
        "frames lost at the receivers over 5 s, peers in their own process"),
    "dashboard": (lambda e: (
        f"{fig(e, 'fps', 'fps')} drawn; JS heap +{e.get('heap_growth_mb')} MB over {e.get('duration_s')} s"),
        "requestAnimationFrame draws per second of the live view while a patient streams; JS heap after forced GC, "
        "start → end of the window"),
    "ml": (lambda e: (
        f"prediction p50 {fig(e, 'predict_p50_ms', 'ms')}, p99 {fig(e, 'predict_p99_ms', 'ms')}; MAE sys "
        f"{e.get('mae_sys')} vs baseline {e.get('baseline_mae_sys')}, dia {e.get('mae_dia')} vs "
        f"{e.get('baseline_mae_dia')}, AUC {e.get('auc')} vs {e.get('baseline_auc')}; kept: {e.get('kept')}"),
        "One prediction in-process (features + the three boosters); quality on the synthetic cohort's test split"),
    "rooms": (lambda e: (
        f"CPU per disconnect at {e.get('sockets'):,} sockets: python-socketio's manager "
        f"{fig(e, 'socketio_us_per_disconnect', 'µs')}, ours (rooms indexed) "
        f"{fig(e, 'indexed_us_per_disconnect', 'µs')}; from {e.get('smaller'):,} sockets, per disconnect "
        f"x{e.get('socketio_growth')} vs x{e.get('indexed_growth')}"),
        "Every socket disconnecting in turn from a manager holding them (in-process, thread CPU, from the first "
        "disconnect to the last), each socket in 3 rooms"),
    "device_transports": (lambda e: (
        f"heartbeat p50 {fig(e, 'sio_heartbeat_p50_ms', 'ms')} (Socket.IO) / {fig(e, 'mqtt_heartbeat_p50_ms', 'ms')} "
        f"(MQTT); {fig(e, 'sio_frames_per_s')} vs {fig(e, 'mqtt_frames_per_s')} acked frames/s; CPU µs per frame "
        f"Socket.IO {costs((e.get('cpu_us_per_frame') or {}).get('sio'))}, MQTT "
        f"{costs((e.get('cpu_us_per_frame') or {}).get('mqtt'))}"),
        "Heartbeat: device send → ack (a store write each); frames: acknowledged `stream:frame` per second"),
    "accuracy": (lambda e: (
        f"{len(e.get('recordings', []))} real recordings through the server: worst recording within 5/min on "
        f"{fig(e, 'worst_within_5')} of clean windows, coverage {fig(e, 'worst_coverage')}, "
        f"{fig(e, 'rates_on_pulseless')} rates on pulseless windows; all meet the goals: {e.get('all_meet_goals')}"),
        "Each recording streamed as 1 s device frames; every `live:analysis` a watcher receives judged against the "
        "recording's reference beats (goals: >= 95% within 5/min and coverage, 0 rates without a pulse)"),
    "push": (lambda e: (
        f"alert → push p50 {fig(e, 'alert_to_push_p50_ms', 'ms')}, p99 {fig(e, 'alert_to_push_p99_ms', 'ms')}, "
        f"{fig(e, 'pushes_per_s', 'pushes/s')} to {e.get('devices'):,} offline phones, outbox depth max "
        f"{fig(e, 'outbox_depth_max')}; sent straight (no outbox): {fig(e, 'baseline_pushes_per_s', 'pushes/s')}, "
        f"p50 {fig(e, 'baseline_p50_ms', 'ms')}: ratio {fig(e, 'pushes_per_s_ratio', 'x')}; "
        f"{fig(e, 'store_commands_per_push')} store commands and CPU µs {costs(e.get('cpu_us_per_push'))} per push"),
        "A crisis reading sent → the local APNs receiver (HTTP/2) answering each phone's push; straight: the same "
        "pushes from a process with the same number of senders, first send → each answer"),
    "startup": (lambda e: (
        f"cold {fig(e, 'cold_start_s', 's')}, warm {fig(e, 'warm_start_s', 's')}; idle RSS server "
        f"{e.get('server_rss_mb')} MB, stores {e.get('store_rss_mb')} MB"),
        "Process start → first 200 from `/readyz`"),
}


def table(doc: dict[str, Any]) -> str:
    results = doc.get("results", {})
    m = next((r["machine"] for r in results.values() if "calibration" in r.get("machine", {})), doc.get("machine", {}))
    cal = m.get("calibration", {})
    lines = [f"Run of {(doc.get('when') or 'none yet')[:10]} on {m.get('cores')} cores ({m.get('cpu')}), "
             f"Python {m.get('python')}; "
             f"calibration (in each line of latest.json): pure-Python loop {cal.get('python_loop_ms')} ms, numpy "
             f"kernel {cal.get('numpy_kernel_ms')} ms. Figures: median over the repeats **in bold**, min-max in "
             "brackets.", "", "| bench | figures | what is measured (from → to) |", "| --- | --- | --- |"]
    for name, (cells, measures) in ROWS.items():
        e = results.get(name)
        if e is None:
            text = "not run"
        elif "run_failed" in e:
            text = f"FAILED ({e['run_failed']}) on {e.get('when', '?')[:10]}"
        else:
            text = cells(e)
            if e.get("stopped_on_budget"):
                text += f"; stopped on its {e.get('budget_s')} s budget: {', '.join(e.get('cut_for_budget', []))}"
        lines.append(f"| {name} | {text} | {measures} |")
    return "\n".join(lines)


def write_readme(doc: dict[str, Any], readme: Path = README) -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README has no bench table markers ({START})")
    readme.write_text(pattern.sub(lambda _: f"{START}\n{table(doc)}\n{END}", text))
