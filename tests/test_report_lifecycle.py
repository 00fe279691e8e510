"""The HTML report shows the lifecycle: alias moves, retirements and purges with reasons, lineage, gc.

Its best-so-far boards skip retired artifacts as ``best()`` does, now and on a past view. No browser needed.
"""

from __future__ import annotations

import html
import os
import re

import anyio

from artifact_ledger import open_ledger
from artifact_ledger.facade import report

R1 = {"run_id": "r1", "graph_id": "g", "node_id": "n", "project_id": "p"}
R2 = {"run_id": "r2", "graph_id": "g", "node_id": "n", "project_id": "p"}


async def _build(root, tmp) -> dict:
    async with open_ledger(root, fsync=False) as led:
        a, b = led.artifacts(**R1), led.artifacts(**R2)
        ids: dict = {}

        async def save(fa, name, **kw):
            p = tmp / f"{name}.bin"
            p.write_bytes(os.urandom(32))
            ids[name] = (await fa.save(str(p), kind="model", **kw)).artifact_id
        await save(a, "low", metrics={"acc": 0.5})
        await save(a, "top", metrics={"acc": 0.9})
        await save(a, "child", metrics={"acc": 0.7}, derived_from=[ids["low"]])
        await save(b, "other", metrics={"acc": 0.95})
        await a.alias(ids["top"], "production", protected=True)
        await a.alias(ids["child"], "production", force=True)  # moves it
        await a.alias(ids["low"], "candidate")
        await a.unalias("candidate")
        await a.relate(ids["child"], ids["top"], relation="consumed")
        ids["before_retire"] = led.head[0]
        await a.retire(ids["top"], "trained on <leaked> test data")
        await a.purge(ids["child"], "GDPR erasure request", force=True)  # aliased: needs force
        await b.retire(ids["other"], "r2 reason")
        ids["before_low"] = led.head[0]
        await a.retire(ids["low"], "first retired")  # then purged: the purge comes after the retirement
        await a.purge(ids["low"], "then purged")
        await led.gc(None, dry_run=False, grace=0)
        ids["head"] = led.head[0]
        return ids


async def _report(root, **kw) -> str:
    async with open_ledger(root, fsync=False) as led:
        return report.render(await report.gather(led, **kw))


async def _best(root, seq=None, run=None):
    async with open_ledger(root, fsync=False) as led:
        src = led if seq is None else await led.as_of(seq=seq)
        fa = src.artifacts(run_id=run or "-", graph_id="-", node_id="-", project_id="p")
        best = await fa.best(kind="model", metric="acc", mode="max", scope="run" if run else "all")
        return None if best is None else best.artifact_id


def _board(page: str) -> str:
    return re.search(r'<section class="board" data-kind="model" data-metric="acc"[^>]*data-best-id="([^"]*)"',
                     page).group(1)


def _timeline(page: str) -> list[str]:
    body = page.split("<table class='timeline'>", 1)[1]
    return [html.unescape(re.sub(r"<[^>]+>", "", m)) for m in re.findall(r"<tr data-seq=\"\d+\">(.*?)</tr>", body)]


def test_report_timeline_describes_every_lifecycle_event(root, tmp_path):
    ids = anyio.run(_build, root, tmp_path)
    page = anyio.run(_report, root)
    lines = _timeline(page)
    assert len(lines) == ids["head"]  # every event is listed
    short = {k: v[:12] for k, v in ids.items() if isinstance(v, str)}
    text = "\n".join(lines)
    assert f"alias p/production set → {short['top']} (protected)" in text
    assert f"alias p/production moved {short['top']} → {short['child']} (forced)" in text
    assert f"alias p/candidate removed (was {short['low']})" in text
    assert f"lineage: {short['child']} consumed {short['top']}" in text
    assert f"retired {short['top']}: trained on <leaked> test data" in text
    assert "&lt;leaked&gt;" in page and "<leaked>" not in page  # the reason is shown as text
    assert f"purged (bytes collectable once unreferenced) {short['child']}: GDPR erasure request (forced)" in text
    assert re.search(r"gc plan \w+: policy none \(only unreferenced blobs\); purges 0 artifact\(s\); "
                     r"expects to delete 2 blob\(s\)", text), text
    assert re.search(r"gc result of plan \w+: deleted 2 blob\(s\)", text), text
    assert "no effect" not in text
    # The runs table says which artifacts are retired or purged, and why.
    row = re.search(rf'<tr data-artifact="{ids["child"]}" class="purged">.*?<td class="status">(.*?)</td>', page)
    assert html.unescape(row.group(1)).startswith("purged at seq ") and "GDPR erasure request" in row.group(1)
    row = re.search(rf'<tr data-artifact="{ids["top"]}" class="retired">.*?<td class="status">(.*?)</td>', page)
    assert "retired at seq" in row.group(1)
    row = re.search(rf'<tr data-artifact="{ids["low"]}" class="purged">.*?<td class="status">(.*?)</td>', page)
    assert "purged at seq" in row.group(1) and "then purged" in row.group(1)
    assert f"retired {short['low']}: first retired" in text
    assert f"purged (bytes collectable once unreferenced) {short['low']}: then purged" in text
    assert 'data-run="r1" data-live="0"' in page and "3 artifacts (3 retired)" in page
    # The aliases section: production points at the purged child (forced), candidate nowhere.
    assert re.findall(r'<tr data-alias="([^"]+)" data-artifact="([^"]+)"', page) == [("p/production", ids["child"])]


def test_report_best_skips_retired_artifacts_as_best_does(root, tmp_path):
    ids = anyio.run(_build, root, tmp_path)
    page = anyio.run(_report, root)
    assert _board(page) == "" and anyio.run(_best, root) is None  # every artifact is retired by the head
    past_gc = anyio.run(lambda: _report(root, upto=ids["before_low"]))
    assert _board(past_gc) == anyio.run(lambda: _best(root, ids["before_low"])) == ids["low"]
    assert "after <code>" in page  # the leader changes the retirements caused are listed
    past = anyio.run(lambda: _report(root, upto=ids["before_retire"]))
    assert _board(past) == anyio.run(lambda: _best(root, ids["before_retire"])) == ids["other"]
    one = anyio.run(lambda: _report(root, upto=ids["before_retire"], run="r1"))
    assert _board(one) == anyio.run(lambda: _best(root, ids["before_retire"], "r1")) == ids["top"]
    assert "retired" not in "\n".join(_timeline(past))
    # Only r2's artifact ever had the metric in r2: once it is retired no live artifact leads.
    r2 = anyio.run(lambda: _report(root, run="r2"))
    assert _board(r2) == "" and anyio.run(lambda: _best(root, None, "r2")) is None
    assert "every artifact with this metric is retired" in r2
    # A report of one run leaves out the lifecycle events of the other run's artifacts.
    r1 = "\n".join(_timeline(anyio.run(lambda: _report(root, run="r1"))))
    assert "r2 reason" not in r1 and "GDPR erasure request" in r1 and "gc result" not in r1
