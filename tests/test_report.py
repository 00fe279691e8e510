"""The HTML report: self-contained, and its numbers are the ledger's own answers (checked in real Chromium)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest

from artifact_ledger import open_ledger
from artifact_ledger.facade import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# .ci/run installs Debian's chromium and sets this, so there the browser checks cannot silently skip.
REQUIRE_BROWSER = os.environ.get("ARTIFACT_LEDGER_REQUIRE_BROWSER") == "1"


def _png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(buf, format="PNG")
    return buf.getvalue()


async def _build(root: Path, tmp: Path) -> dict:
    """Two runs of one project plus a run of another: images, ties, a cost metric, pins and unpins."""
    async with open_ledger(root) as led:
        a = led.artifacts(run_id="r1", graph_id="g", node_id="n", project_id="p")
        b = led.artifacts(run_id="r2", graph_id="g", node_id="n", project_id="p")
        c = led.artifacts(run_id="r3", graph_id="g", node_id="n", project_id="q")
        ids = {}
        for i, (facade, acc, loss) in enumerate([(a, 0.5, 2.0), (a, 0.7, 1.5), (b, 0.9, 1.7), (a, 0.9, 0.9),
                                                 (c, 0.99, 3.0), (b, 0.6, 0.8)]):
            p = tmp / f"img{i}.png"
            p.write_bytes(_png((40 * i, 100, 200)))
            art = await facade.save(str(p), kind="image", labels={"i": i, "note": "<b>&"}, metrics={"acc": acc})
            ids[f"img{i}"] = art.artifact_id
            m = tmp / f"model{i}.bin"
            m.write_bytes(os.urandom(64))
            art = await facade.save(str(m), kind="model", metrics={"val_loss": loss, "acc": acc})
            ids[f"model{i}"] = art.artifact_id
        await a.pin(ids["img1"])
        await b.pin(ids["model2"])
        await a.pin(ids["img1"], False)
        ids["mid_seq"] = 7
        return ids


def _run(fn, *args):
    """anyio.run in a thread of its own: Playwright's sync API keeps an asyncio loop in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, fn, *args).result()


def _report(root: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "artifact_ledger", "-C", str(root), "report", "--out", str(out),
                           *args], capture_output=True, text=True)


async def _answers(root: Path, boards: list[tuple[str, str, str]], *, seq: int | None = None,
                   run: str | None = None, project: str | None = None) -> dict:
    """best() for each (kind, metric, mode), from the API, in the scope the report was built for."""
    async with open_ledger(root) as led:
        src = led if seq is None else await led.as_of(seq=seq)
        facade = src.artifacts(run_id=run or "-", graph_id="-", node_id="-", project_id=project)
        scope = "run" if run else "project" if project else "all"
        out = {}
        for kind, metric, mode in boards:
            best = await facade.best(kind=kind, metric=metric, mode=mode, scope=scope)
            out[(kind, metric)] = (best.artifact_id, best.metrics[metric])
        return out


def test_cost_metrics_rank_lowest_first_and_overrides_are_checked():
    assert report.default_mode("val_loss") == "min" and report.default_mode("error-rate") == "min"
    assert report.default_mode("acc") == "max" and report.default_mode("lossless_ratio") == "max"
    assert report.parse_modes(["acc"], ["f1"]) == {"acc": "min", "f1": "max"}
    with pytest.raises(ValueError, match="'acc'.*both"):
        report.parse_modes(["acc"], ["acc"])


def test_leaders_change_on_ties_as_best_ranks_them():
    board = report.Board("k", "acc", "max")
    from datetime import datetime, timezone

    t = datetime.now(timezone.utc)
    for seq, (aid, v) in enumerate([("a", 1), ("b", 0.5), ("c", 1), ("d", 2)], 1):
        board.offer(seq, t, aid, v)
    assert [c.artifact_id for c in board.changes] == ["a", "c", "d"]


def test_report_file_is_self_contained_and_escapes_user_text(root, tmp_path):
    anyio.run(_build, root, tmp_path)
    out = tmp_path / "report.html"
    proc = _report(root, out)
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    assert "<b>&amp;" not in page or "&lt;b&gt;&amp;" in page
    assert "<b>&</b>" not in page and "&lt;b&gt;&amp;" in page  # the label value is shown as text
    # Nothing is fetched: no external URL is referenced by any loading attribute or CSS.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    summary = json.loads(re.search(r'<script type="application/json" id="summary">(.*?)</script>', page).group(1))
    assert summary["verified"] is True and summary["artifacts"] == 12


def test_report_refuses_a_bad_position_before_writing(root, tmp_path):
    anyio.run(_build, root, tmp_path)
    out = tmp_path / "r.html"
    proc = _report(root, out, "--as-of", "999")
    assert proc.returncode == 2 and "999" in proc.stderr and not out.exists()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright (no browser download: the system binary)."""
    if CHROMIUM is None or not _has_playwright():
        if REQUIRE_BROWSER:
            pytest.fail("ARTIFACT_LEDGER_REQUIRE_BROWSER=1 but chromium or playwright is missing")
        pytest.skip("Debian's chromium (and the playwright test extra) is needed for the browser checks")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield b
        b.close()


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def _open_in_browser(browser, path: Path, shot: Path) -> dict:
    page = browser.new_page()
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    page.screenshot(path=str(shot), full_page=True)
    dom = page.evaluate("""() => ({
        boards: [...document.querySelectorAll('section.board')].map(s => ({
            kind: s.dataset.kind, metric: s.dataset.metric, mode: s.dataset.mode, id: s.dataset.bestId,
            value: s.dataset.bestValue, shown: s.querySelector('.best-value').textContent,
            shownId: s.querySelector('.best-id').textContent,
            leaders: s.querySelectorAll('svg circle.leader').length})),
        thumbs: [...document.querySelectorAll('img.thumb')].map(i => ({id: i.dataset.artifact,
            ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth})),
        head: {...document.getElementById('head').dataset},
        runs: [...document.querySelectorAll('details.run')].map(d => d.dataset.run),
        pinned: [...document.querySelectorAll('table.pins tbody tr')].map(t => t.dataset.artifact),
        timeline: document.querySelectorAll('table.timeline tbody tr').length,
    })""")
    page.close()
    dom["problems"], dom["requests"] = problems, requests
    return dom


def _check_page(dom: dict, page: Path, answers: dict) -> None:
    assert dom["problems"] == []
    assert dom["requests"] == [page.as_uri()] or all(
        u == page.as_uri() or u.startswith("data:") for u in dom["requests"]), dom["requests"]
    shown = {(b["kind"], b["metric"]): (b["id"], float(b["value"])) for b in dom["boards"]}
    assert shown == {k: (aid, float(v)) for k, (aid, v) in answers.items()}
    for b in dom["boards"]:
        assert b["shownId"] == b["id"] and float(b["shown"]) == pytest.approx(float(b["value"]))
        assert b["leaders"] >= 1
    assert dom["thumbs"] and all(t["ok"] and t["w"] == 24 for t in dom["thumbs"])


def test_report_in_chromium_shows_the_ledgers_own_answers(browser, root, tmp_path):
    ids = _run(_build, root, tmp_path)
    out = tmp_path / "report.html"
    assert _report(root, out).returncode == 0
    dom = _open_in_browser(browser, out, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 1000
    boards = [(b["kind"], b["metric"], b["mode"]) for b in dom["boards"]]
    assert sorted(boards) == [("image", "acc", "max"), ("model", "acc", "max"), ("model", "val_loss", "min")]
    _check_page(dom, out, _run(lambda: _answers(root, boards)))
    assert len(dom["thumbs"]) == 6 and dom["runs"] == ["r1", "r2", "r3"]
    assert dom["pinned"] == [ids["model2"]]
    async def head():
        async with open_ledger(root) as led:
            return led.head
    seq, digest = _run(head)
    assert dom["head"]["verified"] == "true" and dom["head"]["headSeq"] == str(seq)
    assert dom["head"]["headHash"] == digest and dom["timeline"] == seq


def test_report_of_a_past_position_and_of_one_run(browser, root, tmp_path):
    ids = _run(_build, root, tmp_path)
    past = tmp_path / "past.html"
    assert _report(root, past, "--as-of", str(ids["mid_seq"])).returncode == 0
    dom = _open_in_browser(browser, past, tmp_path / "past.png")
    boards = [(b["kind"], b["metric"], b["mode"]) for b in dom["boards"]]
    _check_page(dom, past, _run(lambda: _answers(root, boards, seq=ids["mid_seq"])))
    assert dom["head"]["asOfSeq"] == str(ids["mid_seq"]) and dom["timeline"] == ids["mid_seq"]

    one = tmp_path / "r2.html"
    assert _report(root, one, "--run", "r2", "--minimize", "acc").returncode == 0
    dom = _open_in_browser(browser, one, tmp_path / "r2.png")
    boards = [(b["kind"], b["metric"], b["mode"]) for b in dom["boards"]]
    assert ("image", "acc", "min") in boards
    _check_page(dom, one, _run(lambda: _answers(root, boards, run="r2")))
    assert dom["runs"] == ["r2"]


def test_report_in_chromium_with_retired_leaders_still_shows_best(browser, root, tmp_path):
    ids = _run(_build, root, tmp_path)

    async def lifecycle():
        async with open_ledger(root) as led:
            a = led.artifacts(run_id="r1", graph_id="g", node_id="n", project_id="p")
            b = led.artifacts(run_id="r2", graph_id="g", node_id="n", project_id="p")
            c = led.artifacts(run_id="r3", graph_id="g", node_id="n", project_id="q")
            await c.retire(ids["img4"], "the best image acc, retired")  # the lead passes to a 0.9 image
            await b.retire(ids["model5"], "the best val_loss, retired")
            await a.alias(ids["model3"], "production", protected=True)
            await a.relate(ids["model1"], ids["model0"], relation="consumed")
            await led.gc(None, dry_run=False, grace=0)
            return led.head[0]
    head = _run(lifecycle)
    out = tmp_path / "life.html"
    assert _report(root, out).returncode == 0
    dom = _open_in_browser(browser, out, tmp_path / "life.png")
    boards = [(b["kind"], b["metric"], b["mode"]) for b in dom["boards"]]
    answers = _run(lambda: _answers(root, boards))
    assert answers[("image", "acc")][0] != ids["img4"] and answers[("model", "val_loss")][0] != ids["model5"]
    _check_page(dom, out, answers)
    assert dom["timeline"] == head
