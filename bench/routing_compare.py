"""Routers side by side (`python -m bench.routing`): workloads, measurements, tables.

This module is the pure half of the comparison: it builds the two chat workloads, turns what the
servers and the client saw into one row per run, pools the runs of each router, and writes the
markdown. Starting servers and routers, and driving the load, is `bench.routing_fleet`.

Every number about the servers comes from the servers themselves, never from the proxy under test:

- hit rate: delta of `vllm:prefix_cache_hits_total` over delta of
  `vllm:prefix_cache_queries_total`, summed over the servers, between a scrape before and one
  after the run;
- requests per backend: delta of `vllm:request_success_total` (all finish reasons) per server;
- which server served each request (hence the share of turns that stayed on their session's
  server): every request carries its own `X-Request-Id`; real vLLM names it in its request log
  (`Received request chatcmpl-<id>`, `--enable-log-requests`), and each server writes its own log,
  so the log a request id appears in is the server that ran it. The simulators say it in every
  response (`x-sim-backend`, set by the simulator, passed through by the routers). The per-server
  count of attributed requests is checked against the server's own counter delta.
- TTFT: the client's clock, from sending a request to the first content event of its stream.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from itertools import pairwise

# Common English words: about 2 tokens a word with the tiny model's tokenizer (a 2048-token
# vocabulary; a word is one token for the simulators), so 420 words of system prompt are ~850
# tokens, 6 full blocks of vLLM's 128, and a fifth turn ~1,400 tokens.
VOCAB = ["the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as", "with", "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but", "not", "what", "all", "were", "we", "when", "your", "can", "said", "there", "use", "an", "each", "which", "she", "do", "how", "their", "if", "will", "up", "other", "about", "out", "many", "then", "them", "these", "so", "some", "her", "would", "make", "like", "him", "into", "time", "has", "look", "two", "more", "write", "go", "see", "number", "no", "way", "could", "people", "my", "than", "first", "water", "been", "call", "who", "oil", "its", "now", "find", "long", "down", "day", "did", "get", "come", "made", "may", "part", "over", "new", "sound", "take", "only", "little", "work", "know", "place", "year", "live", "me", "back", "give", "most", "very", "after", "thing", "our", "just", "name", "good", "sentence", "man", "think", "say", "great", "where", "help", "through", "much", "before", "line", "right", "too", "mean", "old", "any", "same", "tell", "boy", "follow", "came", "want", "show", "also", "around", "form", "three", "small", "set", "put", "end", "does", "another", "well", "large", "must", "big", "even", "such", "because", "turn", "here", "why", "ask", "went", "men", "read", "need", "land", "different", "home", "us", "move", "try", "kind", "hand", "picture", "again", "change", "off", "play", "spell", "air", "away", "animal", "house", "point", "page", "letter", "mother", "answer", "found", "study", "still", "learn", "should", "world", "high", "every", "near", "add", "food", "between", "own", "below", "country", "plant", "last", "school", "father", "keep", "tree", "never", "start", "city", "earth", "eye", "light", "thought", "head", "under", "story", "saw", "left", "few", "while", "along", "might", "close", "something", "seem", "next", "hard", "open", "example", "begin", "life", "always", "those", "both", "paper", "together", "got", "group", "often", "run", "important", "until", "children", "side", "feet", "car", "mile", "night", "walk", "white", "sea", "began", "grow", "took", "river", "four", "carry", "state", "once", "book", "hear", "stop", "without", "second", "later", "miss", "idea", "enough", "eat", "face"]


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    groups: tuple[int, ...]  # sessions per system prompt
    turns: int
    concurrency: int  # sessions played at once
    about: str

    @property
    def sessions(self) -> int:
        return sum(self.groups)


WORKLOADS = {
    "even": WorkloadSpec("even", (6, 6, 6, 6), 5, 8,
                         "24 sessions in 4 system-prompt groups of 6, 8 at once"),
    "skewed": WorkloadSpec("skewed", (21, 4, 4, 3), 5, 16,
                           "32 sessions, 21 on one hot system prompt, 4/4/3 on three others, 16 at once"),
}
QUICK = {
    "even": WorkloadSpec("even", (2, 2, 2, 2), 3, 4, "8 sessions in 4 groups of 2, 4 at once (--quick)"),
    "skewed": WorkloadSpec("skewed", (6, 2, 1, 1), 3, 6, "10 sessions, 6 on the hot prompt, 6 at once (--quick)"),
}


@dataclass
class Session:
    index: int
    id: str  # X-Session-ID and, as user-<index>, the OpenAI `user` field
    group: int  # its system prompt
    bodies: list[bytes] = field(default_factory=list)  # one request body per turn, in order


@dataclass
class Workload:
    spec: WorkloadSpec
    sessions: list[Session]
    prompt_words: list[int]  # words in the last turn's messages, per session

    @property
    def requests(self) -> int:
        return sum(len(s.bodies) for s in self.sessions)


def build_workload(spec: WorkloadSpec, seed: int, model: str, max_tokens: int, system_words: int,
                   user_words: int, assistant_words: int, turns: int | None = None) -> Workload:
    """The sessions of one workload, each turn's body as bytes, fixed by the seed: every router
    gets the same bytes. A turn resends the conversation: the system prompt, every earlier question
    and answer, and a new question. The answers are seeded text of about ``max_tokens`` tokens,
    not what the model said, so that the bytes never depend on which server answered."""
    import json

    rng = random.Random(f"{seed}-{spec.name}")

    def words(n: int) -> str:
        return " ".join(rng.choice(VOCAB) for _ in range(n))

    systems = [f"You are assistant number {k}. " + words(system_words) for k in range(len(spec.groups))]
    groups = [g for g, n in enumerate(spec.groups) for _ in range(n)]
    rng.shuffle(groups)  # the hot prompt's sessions spread over the run, not all first
    sessions, last_words = [], []
    for s, g in enumerate(groups):
        sid = f"{spec.name}-session-{s}"
        history = [{"role": "system", "content": systems[g]}]
        session = Session(s, sid, g)
        for t in range(turns or spec.turns):
            history = history + [{"role": "user", "content": f"Question {s}.{t}: " + words(user_words) + "?"}]
            body = {"model": model, "messages": history, "max_tokens": max_tokens, "stream": True,
                    "stream_options": {"include_usage": True}, "user": f"user-{s}"}
            session.bodies.append(json.dumps(body, separators=(",", ":")).encode())
            history = history + [{"role": "assistant", "content": words(assistant_words)}]
        sessions.append(session)
        last_words.append(sum(len(m["content"].split()) for m in history[:-1]))
    return Workload(spec, sessions, last_words)


# -- what the servers say -----------------------------------------------------------------------

HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"
SUCCESS = "vllm:request_success_total"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {family name: value summed over its label sets}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            name = key.split("{", 1)[0]
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                continue
    return out


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


LOG_REQUEST = re.compile(rb"Received request (?:chatcmpl|cmpl)-([A-Za-z0-9._:-]+?):? params")


def ids_in_log(chunk: bytes) -> list[str]:
    """The request ids real vLLM logged as received (`--enable-log-requests`), in order."""
    return [m.group(1).decode() for m in LOG_REQUEST.finditer(chunk)]


# -- one run --------------------------------------------------------------------------------------


@dataclass
class Sent:
    """One request as the client saw it."""

    session: int
    turn: int
    rid: str
    ttft_ms: float | None
    error: str | None
    backend: str = ""  # x-sim-backend (simulators only)


def stay_share(sent: list[Sent], served_by: dict[str, str]) -> tuple[int, int]:
    """(follow-up turns served by the server that served the session's previous turn, follow-up
    turns whose server and previous turn's server are both known)."""
    by_session: dict[int, list[Sent]] = {}
    for s in sent:
        by_session.setdefault(s.session, []).append(s)
    stayed = known = 0
    for turns in by_session.values():
        turns.sort(key=lambda s: s.turn)
        for prev, cur in pairwise(turns):
            a, b = served_by.get(prev.rid), served_by.get(cur.rid)
            if a and b:
                known += 1
                stayed += a == b
    return stayed, known


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def run_row(router: str, workload: str, run: int, servers: list[str], sent: list[Sent],
            served_by: dict[str, str], before: dict[str, dict], after: dict[str, dict],
            seconds: float) -> dict:
    """One router on one workload, one run: the numbers of the tables."""
    hits = {n: delta(before[n], after[n], HITS) for n in servers}
    queries = {n: delta(before[n], after[n], QUERIES) for n in servers}
    served = {n: round(delta(before[n], after[n], SUCCESS)) for n in servers}
    attributed = {n: 0 for n in servers}
    for s in sent:
        n = served_by.get(s.rid)
        if n in attributed:
            attributed[n] += 1
    counts = list(served.values())
    mean = sum(counts) / len(counts) if counts else 0
    stayed, known = stay_share(sent, served_by)
    ttfts = [s.ttft_ms for s in sent if s.ttft_ms is not None and s.error is None]
    errors = [f"{s.rid}: {s.error}" for s in sent if s.error]
    q = sum(queries.values())
    return {
        "router": router,
        "workload": workload,
        "run": run,
        "seconds": round(seconds, 2),
        "requests": len(sent),
        "errors": len(errors),
        "error_samples": errors[:3],
        "hit_rate": round(sum(hits.values()) / q, 4) if q else None,
        "hit_tokens": int(sum(hits.values())),
        "query_tokens": int(q),
        "served": served,
        "served_max_over_mean": round(max(counts) / mean, 3) if mean else None,
        "attributed": attributed,
        "unattributed": len(sent) - sum(attributed.values()),
        # a server's log or header and its own counter disagree: the attribution is not trusted
        "attribution_mismatch": {n: [attributed[n], served[n]] for n in servers if attributed[n] != served[n]},
        "stayed": stayed,
        "follow_ups": known,
        "stay_share": round(stayed / known, 4) if known else None,
        "ttft_p50_ms": _r(pct(ttfts, 50)),
        "ttft_p99_ms": _r(pct(ttfts, 99)),
        "ttft_ms": [round(t, 1) for t in ttfts],
    }


def _r(x, digits=1):
    return None if x is None else round(x, digits)


def pool(rows: list[dict]) -> dict:
    """The runs of one router on one workload, pooled: counters summed, TTFTs merged."""
    first = rows[0]
    servers = list(first["served"])
    served = {n: sum(r["served"].get(n, 0) for r in rows) for n in servers}
    hits, queries = sum(r["hit_tokens"] for r in rows), sum(r["query_tokens"] for r in rows)
    stayed, known = sum(r["stayed"] for r in rows), sum(r["follow_ups"] for r in rows)
    ttfts = [t for r in rows for t in r["ttft_ms"]]
    per_run = [r["hit_rate"] for r in rows if r["hit_rate"] is not None]
    spread = [r["served_max_over_mean"] for r in rows if r["served_max_over_mean"] is not None]
    return {
        "router": first["router"],
        "workload": first["workload"],
        "runs": len(rows),
        "requests": sum(r["requests"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "hit_rate": round(hits / queries, 4) if queries else None,
        "hit_rate_runs": per_run,
        "served": served,
        "served_max_over_mean": round(sum(spread) / len(spread), 3) if spread else None,
        "stay_share": round(stayed / known, 4) if known else None,
        "unattributed": sum(r["unattributed"] for r in rows),
        "attribution_mismatches": sum(1 for r in rows if r["attribution_mismatch"]),
        "ttft_p50_ms": _r(pct(ttfts, 50)),
        "ttft_p99_ms": _r(pct(ttfts, 99)),
        "seconds_per_run": round(sum(r["seconds"] for r in rows) / len(rows), 1),
    }


# -- the report -----------------------------------------------------------------------------------


def _pcent(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def workload_table(pooled: list[dict], bound_name: str) -> list[str]:
    bound = next((p["hit_rate"] for p in pooled if p["router"] == bound_name), None)
    out = [
        "| router | prefix-cache hit rate | runs | of bound | requests per backend | max/mean "
        "| turns that stayed | TTFT p50 ms | TTFT p99 ms | errors | s/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in pooled:
        runs = ", ".join(f"{h:.1%}" for h in p["hit_rate_runs"]) or "-"
        of = f"{p['hit_rate'] / bound:.0%}" if bound and p["hit_rate"] is not None else "-"
        served = " / ".join(str(v) for v in p["served"].values())
        flag = ""
        if p["unattributed"] or p["attribution_mismatches"]:
            flag = f" ({p['unattributed']} unattributed, {p['attribution_mismatches']} runs mismatched)"
        out.append(
            f"| {p['router']} | {_pcent(p['hit_rate'])} | {runs} | {of} | {served} | "
            f"{p['served_max_over_mean'] if p['served_max_over_mean'] is not None else '-'} | "
            f"{_pcent(p['stay_share'])}{flag} | {p['ttft_p50_ms']} | {p['ttft_p99_ms']} | "
            f"{p['errors']} | {p['seconds_per_run']} |"
        )
    return out


def runs_table(rows: list[dict]) -> list[str]:
    out = [
        "| run | workload | router | hit rate | requests per backend | stayed | TTFT p50 | TTFT p99 | errors | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        served = " / ".join(str(v) for v in r["served"].values())
        out.append(
            f"| {r['run']} | {r['workload']} | {r['router']} | {_pcent(r['hit_rate'])} | {served} | "
            f"{_pcent(r['stay_share'])} | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} | {r['errors']} | {r['seconds']} |"
        )
    return out


def markdown(meta: dict, workloads: dict[str, Workload], pooled: dict[str, list[dict]], rows: list[dict],
             notes: list[str]) -> str:
    out = [
        f"# Routing quality, routers side by side on {meta['target']}, {meta['date']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine_line']}.",
        "",
        f"Servers: {meta['servers_line']}",
        "",
        f"Routers: {meta['routers_line']}",
        "",
        f"Each router ran each workload {meta['runs']} time(s), interleaved (run 1 of every router, then "
        "run 2, ...; the router order rotates each run), on servers whose prefix caches were emptied "
        f"before every run ({meta['reset']}), with a fresh router process each run.",
        "",
    ]
    for name, w in workloads.items():
        spec = w.spec
        words = sorted(w.prompt_words)
        out += [
            f"## Workload `{name}`: {spec.about}",
            "",
            f"{spec.sessions} sessions x {len(w.sessions[0].bodies)} turns = {w.requests} streamed chat "
            f"completions per run; each turn resends the whole conversation and adds a question; "
            f"`X-Session-ID` and `user` set per session; {meta['max_tokens']} tokens generated per turn. "
            f"Prompt of the last turn: {words[0]}{'' if words[0] == words[-1] else '-' + str(words[-1])} words "
            f"({meta['tokens_note']}).",
            "",
            *workload_table(pooled[name], meta["bound_name"]),
            "",
        ]
    out += [
        "Columns: hit rate = delta `vllm:prefix_cache_hits_total` / delta `vllm:prefix_cache_queries_total` "
        "summed over the servers (pooled over the runs; each run's own value beside it). Requests per "
        "backend = delta `vllm:request_success_total` per server, summed over the runs (servers in "
        f"order {', '.join(meta['server_names'])}); max/mean = the busiest server's share over the mean, averaged over "
        "the runs. Turns that stayed = share of follow-up turns served by the server that served the "
        "session's previous turn (which server served a request: " + meta["attribution"] + "). TTFT = "
        "client-side time from sending the request to the first content event, pooled over the runs.",
        "",
    ]
    for n in notes:
        out.append(f"- {n}")
    if notes:
        out.append("")
    out += ["## Every run", "", *runs_table(rows), ""]
    return "\n".join(out)
