"""`make bench`: run every benchmark and write docs/benchmarks.md with the figures and the machine."""

from __future__ import annotations

import datetime
import json
import sys

from bench import delivery, infra, intake, reconcile, recovery, soak, storage_ops, storm
from bench.harness import ROOT, machine

OUT = ROOT / "docs" / "benchmarks.md"
RAW = ROOT / "docs" / "benchmarks.json"


# What profiling found where figures miss their aims (py-spy, cProfile and SQLite timings taken on the
# same 2-core machine on 2026-11-26, while writing these benchmarks). Kept here, beside the code that
# measures, so that the next person re-checks it after a change.
FINDINGS = """## Where the aims are missed, and why

- **Intake's commits moved out of the event loop's process** (2026-12-03, the 2-core AMD EPYC machine,
  `bench.intake`'s hot load, timed inside the store): on the writer thread a batch of ~16 events waited
  1.5 ms for the thread to get the GIL and took 2.5 ms where it needs ~1 ms alone (Python's sqlite3 takes
  the GIL back after every SQLite step, and each time waits for the busy loop to let go of it), so a
  commit cycle was 4.2 ms and the event loop sat idle ~40 % of the time (py-spy) with every request
  waiting on a commit. A shorter GIL switch interval (0.5 and 0.1 ms) did not help, and committing on
  the loop itself (no thread) was slower (1,900-2,800 req/s: the loop blocks in each fsync). In a commit
  process of its own (`relay/store/sqlite_commits.py`) the loop only writes the batch to a socket: intake
  alone went from 3,400-4,400 to 6,200-6,400 req/s in A/B runs, p99 from 15-23 to 13-15 ms. Two more
  steps followed. The loop's side of a 0.4 ms commit measured 2-5 ms: awaiting the answer took a pass of
  the loop's ready queue per hop (task wake-up, gather, stream reader), so the protocol now runs in the
  socket's callbacks, and the parent sends each pass's accepts at once while the child commits every
  frame that reached it in one transaction (7,500-11,600 req/s). And a 175-220 ms p99 in every run's
  later phases was the WAL: SQLite starts it over only when a write finds it wholly checkpointed, which
  under writes that never pause never happened, so it grew to 800 MB in 25 s and the write that finally
  started it over (truncating it) took 70-290 ms; each checkpoint now ends with a short pass under the
  write turn (hot p99 12-14 ms, 7,600-13,000 req/s in the same alternating-phase runs). What is left
  per request is the loop's own Python (py-spy, main thread: aiohttp's request and response handling
  ~45 %, of which writing the response to the socket ~18 %; the JSON parse with the duplicate-key hook
  ~14 %; the common-schema model ~8 %; the store's accept ~5 %). For scale: Azure sends at most 1,500
  webhook calls a minute per subscription (25 a second).
- **The storm's intake p99** was the relay's one event loop being full (py-spy, 2026-12-02: the main
  thread busy ~95 %, a third in intake, a sixth in delivery). Delivery now runs in a process of its own
  (`RELAY_DELIVERY_PROCESS=separate`, the default), and intake's commits in another: in A/B storm runs
  on 2026-12-03 intake's p99 went from 65-112 ms (one process) to 28-31 ms (delivery process) to
  15-18 ms (and the commit process), incidents/s from 272 to 534-552 to 572-583. Inside the commit
  process during a storm, its wait for the write turn (the delivery process commits the same file) was
  0.4 ms on average, 7 ms at p99. Found and fixed on the way there: full garbage collections of
  30-50 ms (the start-up heap is frozen), SQLite's automatic checkpoint inside a commit (now on a thread
  of its own), and the two processes' writers starving each other in SQLite's busy handler (they take
  turns through a flock).
- **Backlog drain**: with 10,000 events queued, a claim reads only the SQLite store's `heads` table
  (one index range scan per priority; tests/test_sqlite_store.py counts SQLite's steps at backlogs of
  100 and 10,000), and the delivery process's writes are group-committed too, so the drain rate does
  not depend on the backlog's size. On paper the drain is bounded by the target: `max_concurrency` 64 slots
  and 2 calls of ~55 ms per incident open at most ~580 incidents/s, so 10,000 take at least ~17 s, plus
  up to `backoff_max_seconds` (5 s) before the last backed-off events come due. Figures up to
  2026-12-02 08:00 UTC (10 s, 972/s) measured no backlog at all: the benchmark injected its 503 outage
  after the fake's 50 ms delay, and the fake applies the first matching fault, so the target never went
  down; the relay delivered the alerts as they arrived and the figure timed only the tail left when the
  last one had been posted. `bench/delivery.py` now puts the outage first, stops if any incident opened
  during it, and reports how many calls the fake refused.
- **The Pulumi program at 1,000 rules** grows about linearly (~8-10 ms per alert rule); cProfile puts
  the time in the Pulumi SDK's per-resource serialization (`transfer_properties`, `Output` machinery,
  asyncio task churn), not in our code.
- **Against the bare program** (the same 1,000 metric alerts under the same mocks; cProfile of both and
  fresh-process CPU seconds, 2026-12-02, on the 2-core machine shared with other work): ours is about
  1.2x (11.0-12.2 s of CPU against 9.0-9.7 s; 19.8 M Python calls against 16.6 M). Of the 3.2 M extra
  calls, 1.9 M are fixed: the rest of the stack (27 resources: Container Apps, storage, Key Vault,
  registry, Entra) and, above all, the azure-native modules it loads on first use. The per-rule rest,
  ~1,250 calls on top of ~16,000 per rule (8 %), is spread through the SDK: its cycle check walks each
  rule's dependency on the action group, which waits on the Container App and the Entra resources
  (~140 calls per rule), plus the Output and asyncio work of a child of a component. Our own code per
  rule (reading and validating its config, building the criteria) is ~30 calls, under 1 %.
"""


def recovery_section(r: dict | None) -> list[str]:
    if not r:
        return []
    k, a = r["sqlite_sigkill"], r["azurite_replica_death"]
    return [
        "## 3a. Recovery after a crash (default lease)",
        "",
        "A stream of alerts (about 100 a second) to the ServiceNow fake (50 ms a call); every setting but the "
        "target is the default. SQLite: `relay serve` is SIGKILLed mid-stream and restarted on the same "
        "database. Azure Storage (Azurite): one of two replicas is SIGKILLed; the other carries on.",
        "",
        "| what | acknowledged | without incident at the restart | all applied and recorded | "
        "retries held by a dead process's create intent | duplicates |",
        "|---|---|---|---|---|---|",
        f"| SQLite, SIGKILL and restart | {k['alerts_acknowledged']} | {k['without_incident_at_restart']} | "
        f"{k['restart_to_all_applied_seconds']:.1f} s after the restart ({k['kill_to_all_applied_seconds']:.1f} s "
        f"after the kill) | {k.get('held_for_a_crashed_intent', '-')} | {k['duplicates']} |",
        f"| Azurite, one of two replicas SIGKILLed | {a['alerts_acknowledged']} | - | "
        f"{a['kill_to_all_applied_seconds']:.1f} s after the kill | {a.get('held_for_a_crashed_intent', '-')} | "
        f"{a['duplicates']} |",
        "",
        "A kill between a create intent's commit and its create leaving the process leaves an intent the "
        "relay cannot tell from a create on its way: the restart holds that key for one call timeout "
        "(30 s by default; docs/lifecycle.md, \"After a crash\"), so a run that hits that window takes "
        "about 30 s, one that does not a few seconds. Azure Storage: the dead replica's leased events "
        "wait out their lease (30 s) before the survivor takes them.",
        "",
        "Aim: within 30 s of the restart (SQLite), within 45 s of a replica's death (Azure Storage).",
        "",
    ]


def soak_section(r: dict | None) -> list[str]:
    if not r:
        return []
    lat = r["latency_ms"]
    return [
        f"## 3b. Soak: {r['rate']} events a second for {r['seconds'] / 60:.0f} minutes",
        "",
        "Each alert fires, then resolves 5 s later; SQLite, default settings, the ServiceNow fake at 50 ms a call.",
        "",
        "| what | first minute | last minute |",
        "|---|---|---|",
        f"| resident set size{'' if r.get('rss_scope') == 'tree' else ' (the serving process alone)'} | "
        f"{r['rss_mib']['start']:.0f} MiB | {r['rss_mib']['end']:.0f} MiB |",
        f"| store on disk (database + WAL) | {r['store_mib']['start']:.1f} MiB | {r['store_mib']['end']:.1f} MiB |",
        f"| 202 p50 / p99 | {lat['start_p50']:.1f} / {lat['start_p99']:.1f} ms | "
        f"{lat['end_p50']:.1f} / {lat['end_p99']:.1f} ms |",
        "",
        f"{r['events']:,} events, {r['incidents']:,} incidents. The store grows about "
        f"{r['store_bytes_per_event']:,} bytes per event until retention applies (delivered events are kept "
        f"14 days by default): at this rate it levels off near {r['plateau_gib_at_default_retention']:.1f} GiB. "
        "That it stays flat once retention applies is shown by a test with short ages.",
        "",
    ]


def _versus_bare(v: dict | None) -> list[str]:
    """Section 4's second table: our program against bench/bare_program.py on the same alerts."""
    if v is None:
        return []
    ours, bare = v["ours"], v["bare"]
    return [
        "",
        f"The same {v['rules']:,} static metric alerts on one action group, declared by our program (the dev stack "
        f"with its `vm-cpu-high` rule repeated) and by a bare program (`bench/bare_program.py`: no config model, no "
        f"components) under the same mocks; fastest of {v['runs']} alternating runs each:",
        "",
        "| program | resources | program run | CPU |",
        "|---|---|---|---|",
        f"| ours | {ours['resources']:,} | {ours['seconds']:.2f} s | {ours['cpu_seconds']:.2f} s |",
        f"| bare | {bare['resources']:,} | {bare['seconds']:.2f} s | {bare['cpu_seconds']:.2f} s |",
        f"| **ratio** | | **{v['ratio']:.2f}x** | {v['cpu_ratio']:.2f}x |",
        "",
        f"Aim: at most {v['aim_ratio']}x the bare program.",
    ]


def remeasured_note(remeasured: dict | None) -> list[str]:
    """Which sections a later `python -m bench.run --only` run re-measured (on the same machine), and when."""
    if not remeasured:
        return []
    parts = ", ".join(f"{name} ({when})" for name, when in sorted(remeasured.items()))
    return [f"Re-measured since on the same machine with `python -m bench.run --only`: {parts}; those sections' "
            "figures come from those runs."]


def render(results: dict, when: str, host: str) -> str:
    i, d, f = results["intake"], results["delivery"], results["infra"]
    ceiling, hot, cold, full = i["ceiling"], i["intake_hot"], i["intake_cold"], i["relay_hot"]

    def ratio(r: dict) -> str:
        return f"{r['rps'] / ceiling['rps']:.0%}"

    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {when}, on {host}. Load generator (wrk) and servers share the machine.",
        "Raw figures: `docs/benchmarks.json`. Every figure below comes from that run; none is asserted by a test.",
        *remeasured_note(results.get("remeasured")),
        "",
        "## 1. Intake: `POST /alerts`",
        "",
        f"wrk, {i['connections']} connections, {i['seconds']} s, a {i['body_bytes']:,}-byte common-schema body with a "
        "new alert id per request (so every request is a 202 and a durable commit), SQLite with "
        "`synchronous=FULL`. The ceiling is a bare aiohttp handler that reads the body and answers 202, "
        "measured in the same run.",
        "",
        "| what | requests/s | ratio to ceiling | p50 | p99 | non-2xx |",
        "|---|---|---|---|---|---|",
        f"| ceiling: bare aiohttp handler | {ceiling['rps']:,.0f} | 100% | {ceiling['p50_ms']:.2f} ms | "
        f"{ceiling['p99_ms']:.2f} ms | {ceiling['non_2xx']} |",
        f"| intake, token reused (as Azure does) | {hot['rps']:,.0f} | {ratio(hot)} | {hot['p50_ms']:.2f} ms | "
        f"{hot['p99_ms']:.2f} ms | {hot['non_2xx']} |",
        f"| intake, a new token every request (RSA verify each; {i['cold_tokens']:,} distinct tokens) | "
        f"{cold['rps']:,.0f} | {ratio(cold)} | {cold['p50_ms']:.2f} ms | {cold['p99_ms']:.2f} ms | {cold['non_2xx']} |",
        f"| whole relay (intake + delivery worker to a dry-run target) | {full['rps']:,.0f} | {ratio(full)} | "
        f"{full['p50_ms']:.2f} ms | {full['p99_ms']:.2f} ms | {full['non_2xx']} |",
        "",
        "Aim: at least half the ceiling, p99 at or under 10 ms.",
        "",
        "## 2. Delivery",
        "",
        f"`relay serve` on SQLite delivering to the ServiceNow fake (`tests/fakes/servicenow.py`), which answers "
        f"every call after {d['fake_latency_ms']:.0f} ms; target `max_concurrency: {d['max_concurrency']}`.",
        "",
        "| what | figure |",
        "|---|---|",
        f"| incidents per second ({d['throughput']['alerts']:,} alerts posted at once) | "
        f"{d['throughput']['incidents_per_second']:.0f} ({d['throughput']['calls_per_incident']:.1f} ServiceNow calls "
        "per incident: a find and a create; CI lookups come from the CMDB cache) |",
        f"| 202 to incident created at {d['latency']['rate']} alerts/s, p50 | {d['latency']['p50_ms']:.0f} ms |",
        f"| same, p99 | {d['latency']['p99_ms']:.0f} ms (max {d['latency']['max_ms']:.0f} ms) |",
        "",
        "## 3. Backlog",
        "",
        f"The fake answers 503 while {d['backlog']['events']:,} alerts arrive; then it recovers. Delivery settings: "
        f"`{json.dumps(d['backlog']['delivery'])}`.",
        "",
        f"Time from recovery to the last incident created: **{d['backlog']['drain_seconds']:.0f} s** "
        f"({d['backlog']['incidents_per_second']:.0f} incidents/s)"
        + (f"; the fake refused {d['backlog']['calls_refused_during_outage']:,} calls during the outage."
           if "calls_refused_during_outage" in d["backlog"] else "."),
        "",
        *recovery_section(results.get("recovery")),
        *soak_section(results.get("soak")),
        *storm_section(results.get("storm")),
        "## 4. Infrastructure: the Pulumi program under mocks",
        "",
        "The dev stack's alert rules (one of every kind) repeated to the count:",
        "",
        "| alert rules | resources | program run | whole process (imports included) |",
        "|---|---|---|---|",
        *[f"| {n} | {r['resources']:,} | {r['program_seconds']:.2f} s | {r['process_seconds']:.2f} s |"
          for n, r in f.get("by_rules", f).items() if n.isdigit()],
        "",
        "Aim: linear growth, under 10 s at 1,000 rules.",
        *_versus_bare(f.get("versus_bare")),
        "",
        "## 5. Memory",
        "",
        *(["Each figure sums a process and its helpers: intake's commit process, and for the whole relay the "
           "delivery process too."] if i.get("rss_scope") == "tree" else
          ["Each figure is the serving process alone (this run predates summing its helper processes)."]),
        "",
        "| what | resident set size |",
        "|---|---|",
        f"| intake idle | {i['rss_idle_mib']:.0f} MiB |",
        f"| intake at peak under load 1 | {i['rss_load_mib']:.0f} MiB |",
        f"| whole relay (intake, delivery process) idle | {i['relay_rss_idle_mib']:.0f} MiB |",
        "",
        *storage_ops_section(results.get("storage_ops")),
        *reconcile_section(results.get("reconcile")),
        FINDINGS,
    ]
    return "\n".join(lines)


def storm_section(s: dict | None) -> list[str]:
    """Section 3c: the storm (bench/storm.py); absent from figures written before it existed."""
    if s is None:
        return []
    means = ", ".join(f"{call} {ms:.0f} ms" for call, ms in s.get("call_mean_ms", {}).items())
    return [
        "## 3c. Storm",
        "",
        f"{s['alerts']:,} distinct Fired alerts on one resource (one CI), posted at once by {s['senders']} "
        f"senders (wrk) through the intake (signed tokens), while `relay serve` on SQLite delivers them to the "
        f"ServiceNow fake answering every call after {s['fake_latency_ms']:.0f} ms; "
        f"target `max_concurrency: {s['max_concurrency']}`.",
        "",
        "| what | figure |",
        "|---|---|",
        f"| incidents per second | {s['incidents_per_second']:.0f} (all {s['alerts']:,} in {s['seconds']:.1f} s) |",
        f"| ServiceNow calls per incident | {s['calls_per_incident']:.2f} (`{json.dumps(s['calls'])}`) |",
        *([f"| mean target call as the relay timed it | {means} |"] if means else []),
        f"| intake p50 / p99 while the worker delivers | {s['intake_p50_ms']:.0f} ms / {s['intake_p99_ms']:.0f} ms |",
        f"| duplicates | {s['duplicates']} ({s['incidents']:,} incidents, {s['bound_to_the_ci']:,} bound to the CI) |",
        "",
        *([f"{s['runs']} storms, each on a new relay and store; the table is the one with the median intake p99. "
           f"All of them: intake p99 {' / '.join(f'{v:.0f}' for v in s['runs_intake_p99_ms'])} ms, "
           f"{' / '.join(f'{v:.0f}' for v in s['runs_incidents_per_second'])} incidents/s, "
           f"{' / '.join(str(v) for v in s['runs_duplicates'])} duplicates.", ""] if "runs" in s else []),
        "Aims (issue 11): at least 450 incidents/s, 2 calls per incident, intake p99 at or under 25 ms, no duplicate.",
        "",
    ]


def reconcile_section(r: dict | None) -> list[str]:
    """Reconciliation with Azure (bench/reconcile.py): one pass over 10,000 listed alerts."""
    if not r:
        return []
    rows = []
    for label, what in (("all_missed", "every alert missed (each Fired, and half Resolved, stored)"),
                        ("all_held", "every event already held (the steady state)"),
                        ("quarter_new", "a quarter more alerts fired since")):
        p = r["passes"][label]
        stored = sum(p["accepted"].values()) if isinstance(p["accepted"], dict) else p["accepted"]
        rows.append(f"| {what} | {p['listed']:,} | {stored:,} | {p['duplicates']:,} | {p['seconds']:.1f} s |")
    return [
        f"## 7. Reconciliation: a pass over {r['listed_alerts']:,} listed alerts",
        "",
        f"The real Alerts Management SDK over HTTPS against the fake (`tests/fakes/alerts_management.py`), "
        f"{r['page_size']} alerts a page ({r['list_calls']} list calls in all), into a real SQLite store.",
        "",
        "| pass | listed | events stored | already held | seconds |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Steady state: {r['alerts_per_second_all_held']:,} listed alerts a second. Each event costs one store "
        "`accept`, duplicates included.",
        "",
    ]


def storage_ops_section(s: dict | None) -> list[str]:
    """Azure Storage operations per event (bench/storage_ops.py), on Azurite."""
    if s is None:
        return []
    storm = s["storm"]
    return [
        "## 6. Azure Storage operations per event",
        "",
        "Counted on Azurite by the store's request hook (`AzureStorageStore.operations`; see docs/storage.md).",
        "",
        "| what | operations |",
        "|---|---|",
        f"| one Fired, accept to complete | {s['fired_total']} |",
        f"| its Resolved, accept to complete | {s['resolved_total']} |",
        f"| a Fired with a body over 32 KiB | {s['large_body_fired_total']} |",
        f"| a storm of {storm['alerts']} Fired, claimed {storm['claim_batch']} at a time: accept / deliver, "
        f"per event | {storm['fired_accept_per_event']} / {storm['fired_delivery_per_event']} |",
        f"| then their Resolved: accept / deliver, per event | {storm['resolved_accept_per_event']} / "
        f"{storm['resolved_delivery_per_event']} |",
        f"| a lease renewal (every 10 s while a delivery runs) | "
        f"{sum(s['single']['renew (every 10 s while a delivery runs)'].values())} |",
        f"| an idle poll | {sum(s['single']['idle poll'].values())} |",
        f"| an expire pass deleting {s['expire']['events_deleted']} events | {s['expire']['operations']} |",
        "",
    ]


BENCHMARKS = {"intake": intake, "delivery": delivery, "storm": storm, "infra": infra, "recovery": recovery,
              "soak": soak, "storage_ops": storage_ops, "reconcile": reconcile}


def main() -> int:
    args = sys.argv[1:]
    if args == ["--render"]:  # rewrite the page from the last run's figures (after editing FINDINGS)
        raw = json.loads(RAW.read_text())
        OUT.write_text(render(raw, raw["when"], raw["machine"]))
        return 0
    host = machine()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if args[:1] == ["--only"] and len(args) == 2:
        # Re-measure some benchmarks on this machine, keeping the others' figures from the last full run;
        # the page says which figures come from which run.
        names = args[1].split(",")
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            print(f"bench: unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}",
                  file=sys.stderr)
            return 2
        raw = json.loads(RAW.read_text())
        if raw["machine"] != host:
            print(f"bench: the last full run was on another machine ({raw['machine']}): run `make bench`",
                  file=sys.stderr)
            return 2
        for name in names:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            raw[name] = BENCHMARKS[name].run()
            raw.setdefault("remeasured", {})[name] = when
        RAW.write_text(json.dumps(raw, indent=2) + "\n")
        OUT.write_text(render(raw, raw["when"], host))
        print(OUT.read_text())
        return 0
    if args:
        print("usage: python -m bench.run [--render | --only NAME[,NAME...]]", file=sys.stderr)
        return 2
    results = {}
    for name, module in BENCHMARKS.items():
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        results[name] = module.run()
    RAW.write_text(json.dumps({"machine": host, "when": when, **results}, indent=2) + "\n")
    OUT.write_text(render(results, when, host))
    print(OUT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
