"""Demo of the main job on the embedded default: two runs, a pin, search and best.

Run with ``make demo`` (or ``python -m artifact_ledger.facade.demo [ROOT]``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import anyio

from . import open_ledger


async def run_demo(root: Path) -> None:
    """Save artifacts across two runs, pin one, print queries and the head."""
    async with open_ledger(root) as ledger:
        for run, accs in (("run-1", (0.71, 0.78)), ("run-2", (0.74, 0.81))):
            ctx = ledger.context(run_id=run, graph_id="train", node_id="fit", project_id="demo")
            arts = ctx.artifacts()
            for epoch, acc in enumerate(accs):
                # writer() streams bytes into the store; labels and metrics are optional extras.
                async with arts.writer(kind="model", planned_ext=".bin", labels={"epoch": epoch},
                                       metrics={"val_acc": acc}) as w:
                    w.write(f"weights of {run} epoch {epoch}".encode())
                staged = await arts.stage(".json")
                Path(staged).write_text(json.dumps({"run": run, "epoch": epoch, "val_acc": acc}))
                await arts.ingest(staged, kind="json", labels={"epoch": epoch})
            notes = Path(tempfile.mkdtemp()) / "notes.txt"
            notes.write_text(f"{run}: trained {len(accs)} epochs")
            await arts.save(str(notes), kind="text", labels={"stage": "final"})
        arts = ledger.context(run_id="run-2", graph_id="train", node_id="fit", project_id="demo").artifacts()
        best_run = await arts.best(kind="model", metric="val_acc", mode="max")
        best_project = await arts.best(kind="model", metric="val_acc", mode="max", scope="project")
        assert best_run is not None and best_project is not None
        await arts.pin(best_project.id)
        print(f"ledger at {root}")
        print(f"artifacts in run-2: {len(await arts.list())}; in the project: {len(await arts.list(scope='project'))}")
        for a in await arts.search(kind="json", labels={"epoch": 1}, scope="all"):
            print(f"  json epoch=1  run={a.run_id}  seq={a.seq}  -> {await arts.load_artifact(a.uri)}")
        print(f"best model in run-2:       {best_run.id} val_acc={best_run.metrics['val_acc']}")
        print(f"best model in the project: {best_project.id} val_acc={best_project.metrics['val_acc']} (now pinned)")
        pinned = [a.id for a in await arts.list(scope="all") if a.pinned]
        print(f"pinned: {pinned}")
        seq, digest = ledger.head
        print(f"ledger head: seq={seq} sha256={digest}")


def main() -> None:
    """Entry point of ``make demo``."""
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="artifact-ledger-demo-")) / "ledger"
    anyio.run(run_demo, root)


if __name__ == "__main__":
    main()
