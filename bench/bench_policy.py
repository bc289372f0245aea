"""Policy resolution throughput, with and without the cache, on a large book.

    python -m bench.bench_policy [--orgs 10000] [--bots-per-org 5] [--lookups 200000] [--seed 1]

Prints one JSON object on stdout (progress on stderr). The book comes from a generated config
file (10,000 orgs and 50,000 bot settings by default), so the config loader is timed too.
Lookups are drawn uniformly over the configured (org, bot, env, category) plus 20% of
unconfigured orgs, with creation times moving forward as in a live stream. Passes:

* ``uncached``: ``cache_size=0``, every resolution walks the scopes and the rules;
* ``cached_cold``: first pass over a fresh cache (every key a miss once);
* ``cached_warm``: the same lookups again, the cache full;
* ``cached_with_updates``: warm, with one org policy update every 1,000 resolutions;
* ``hot_set_*``: a warm pass over the keys of 1% of the orgs, on the full book and on a book
  holding only those orgs: equal rates show that a hit costs the same however many orgs and
  bots are configured.

And the runtime updates (``expiry.policies``) of one scope: ``--versions`` appended in time
order, then ``--backdated`` versions each dated before most of them (``effective_from``),
as a producer that replays a policy history would send them (before round 26 each one
recomputed every later version: 2,000 into 100,000 took 51 s).

Each pass is run ``--repeat`` times and the best rate is kept (the least disturbed run).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson

from stream_expiry.config import Config, parse_config
from stream_expiry.model import DEFAULT_CATEGORIES, Identity
from stream_expiry.policy import PolicyBook

if TYPE_CHECKING:
    from collections.abc import Callable

ENV = {"MAX_CONVERSATION_TTL_IN_MINUTES": "43200", "INSIGHTS_MAX_SESSIONS_TTL_IN_MINUTES": "0"}
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def config_text(orgs: int, bots_per_org: int, rng: random.Random) -> str:
    """A realistic file: a cap, defaults, a value per org, a few per bot, live and draft."""
    lines = [
        'preset = "cognigy"',
        "[retention.cap]",
        'max = "2y"',
        "[retention.defaults]",
        'session = "30d"',
        'error = "90d"',
    ]
    for o in range(orgs):
        lines += [f"[retention.orgs.org{o}]", f'conversation = "{rng.randint(1, 400)}d"']
    for o in range(orgs):
        for b in range(bots_per_org):
            env = "live" if b % 2 == 0 else "draft"
            lines += [f"[retention.bots.org{o}.bot{b}.{env}]", f'session = "{rng.randint(1, 48)}h"']
    return "\n".join(lines) + "\n"


def lookups(orgs: int, bots_per_org: int, n: int, rng: random.Random) -> list[tuple[Identity, int]]:
    found = []
    for i in range(n):
        o = rng.randrange(int(orgs * 1.2))  # the last 20% are orgs with no settings at all
        b = rng.randrange(bots_per_org)
        env = "live" if b % 2 == 0 else "draft"
        category = rng.choice(DEFAULT_CATEGORIES)
        found.append((Identity(f"org{o}", f"bot{b}", env, category, f"r{i}"), T0 + i))
    return found


def rate(book: PolicyBook, work: list[tuple[Identity, int]], updates_every: int = 0) -> float:
    """Resolutions per second over ``work``; with ``updates_every``, an org update between chunks."""
    resolve = book.resolve
    update = orjson.dumps({"scope": "org", "org": "org1", "ttl": {"conversation": "7d"}})
    step = updates_every or len(work)
    chunks = [work[i : i + step] for i in range(0, len(work), step)]
    start = time.perf_counter()
    for chunk in chunks:
        if updates_every:
            book.apply_update(b"org/org1", update, chunk[0][1])
        for ident, at in chunk:
            resolve(ident, at)
    return len(work) / (time.perf_counter() - start)


def fresh_rate(
    repeat: int, make: Callable[[], PolicyBook], work: list[tuple[Identity, int]]
) -> float:
    """Best rate of ``repeat`` passes, each on a new book (for passes that must start cold)."""
    return max(rate(make(), work) for _ in range(repeat))


def warm_rate(book: PolicyBook, work: list[tuple[Identity, int]], repeat: int, **kw: int) -> float:
    rate(book, work)
    return max(rate(book, work, **kw) for _ in range(repeat))


def update_rates(versions: int, backdated: int, config: Config) -> tuple[float, float]:
    """Updates per second of one org scope: appended in time order, then back-dated."""
    book = PolicyBook(config, ENV)
    start = time.perf_counter()
    for i in range(versions):
        ttl = {"session": f"{i % 50 + 1}h"}
        book.apply_update(
            b"org/org1", orjson.dumps({"scope": "org", "org": "org1", "ttl": ttl}), T0 + i
        )
    appended = versions / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(backdated):
        at = T0 + i * max(1, versions // max(1, backdated))
        value = {"scope": "org", "org": "org1", "ttl": {"session": "1h"}, "effective_from": at}
        book.apply_update(b"org/org1", orjson.dumps(value), T0 + 2 * versions)
    return appended, backdated / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--orgs", type=int, default=10_000)
    p.add_argument("--bots-per-org", type=int, default=5)
    p.add_argument("--lookups", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--versions", type=int, default=100_000, help="updates of one scope, in order")
    p.add_argument("--backdated", type=int, default=2_000, help="then back-dated among them")
    args = p.parse_args()
    rng = random.Random(args.seed)

    text = config_text(args.orgs, args.bots_per_org, rng)
    start = time.perf_counter()
    config: Config = parse_config(text, path="bench.toml")
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    PolicyBook(config, ENV)
    build_s = time.perf_counter() - start
    log(
        f"config: {len(text) / 1e6:.1f} MB, loaded in {load_s:.2f} s, book built in {build_s:.2f} s"
    )
    work = lookups(args.orgs, args.bots_per_org, args.lookups, rng)

    uncached = fresh_rate(args.repeat, lambda: PolicyBook(config, ENV, cache_size=0), work)
    log(f"uncached: {uncached:,.0f}/s")
    cold = fresh_rate(args.repeat, lambda: PolicyBook(config, ENV), work)
    log(f"cached, cold: {cold:,.0f}/s")
    book = PolicyBook(config, ENV)
    warm = warm_rate(book, work, args.repeat)
    log(f"cached, warm: {warm:,.0f}/s ({book.cache_misses:,} misses in {args.repeat + 1} passes)")
    churn = warm_rate(book, work, args.repeat, updates_every=1_000)
    log(f"cached, 1 org update per 1,000: {churn:,.0f}/s")

    # Same hot workload (100 orgs' keys) on the full book and on a book of 1% of its size.
    hot_orgs = max(1, args.orgs // 100)
    hot = lookups(hot_orgs, args.bots_per_org, args.lookups, rng)
    small_config = parse_config(config_text(hot_orgs, args.bots_per_org, rng))
    hot_big = warm_rate(PolicyBook(config, ENV), hot, args.repeat)
    hot_small = warm_rate(PolicyBook(small_config, ENV), hot, args.repeat)
    log(f"hot set of {hot_orgs} orgs, warm: full book {hot_big:,.0f}/s, 1% book {hot_small:,.0f}/s")

    appended, backdated = update_rates(args.versions, args.backdated, config)
    log(
        f"one scope: {args.versions:,} updates in order {appended:,.0f}/s, "
        f"{args.backdated:,} back-dated among them {backdated:,.0f}/s"
    )

    result: dict[str, Any] = {
        "benchmark": "policy_resolution",
        "orgs": args.orgs,
        "bot_settings": args.orgs * args.bots_per_org,
        "lookups_per_pass": args.lookups,
        "distinct_keys": len({(i.org, i.bot, i.env, i.category) for i, _ in work}),
        "config_bytes": len(text),
        "config_load_s": round(load_s, 3),
        "book_build_s": round(build_s, 3),
        "resolutions_per_s": {
            "uncached": round(uncached),
            "cached_cold": round(cold),
            "cached_warm": round(warm),
            "cached_with_updates": round(churn),
            "hot_set_cached_warm_full_book": round(hot_big),
            "hot_set_cached_warm_small_book": round(hot_small),
        },
        "hot_set_orgs": hot_orgs,
        "scope_updates_per_s": {
            "versions": args.versions,
            "in_order": round(appended),
            "backdated": args.backdated,
            "backdated_among_them": round(backdated),
        },
        "speedup_warm_vs_uncached": round(warm / uncached, 2),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
