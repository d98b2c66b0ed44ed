"""``python -m pacs_node COMMAND --config node.json``: the MOTFM DICOM node (see README.md).

serve [--KEY VALUE ...]   receive studies, process them with the deploy app, send the new series back
                          (--KEY VALUE overrides a key of the configuration file)
status [--as_json]        the studies in the spool: pending (incoming, queue, outbox), done and failed
retry JOB                 process a failed study again, send a done one again, or send an outbox one now
remove JOB                delete a study from the spool (e.g. one whose destination will never accept it)
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime
from typing import Any

import fire

from .config import NodeConfig
from .node import serve
from .spool import STATES, Spool, SpooledStudy


def details(study: SpooledStudy, now: float) -> str:
    """One line about a study, from its record (a study the node moves meanwhile shows what is left)."""
    record = study.record
    if study.state == "incoming":
        age = now - (study.path / "input").stat().st_mtime
        return f"{len(study.files('input'))} instances, the last {age:.0f} s ago"
    if study.state == "queue":
        return f"{record.get('instances')} instances"
    if study.state == "failed":
        return f"FAILED: {record.get('error')}"
    series = record.get("series", [])
    text = f"{len(series)} series ({sum(s['instances'] for s in series)} instances)"
    if record.get("problems"):
        text += f", {len(record['problems'])} problems: {'; '.join(record['problems'])}"
    if study.state == "done":
        return f"{text}, sent {datetime.fromtimestamp(record.get('sent', 0)):%Y-%m-%d %H:%M:%S}"
    if record.get("attempts"):
        wait = max(0.0, record.get("next_attempt", now) - now)
        text += f"; attempt {record['attempts']} failed: {record.get('last_error')}; next in {wait:.0f} s"
    return text


class Commands:
    """The node's commands; each reads the configuration file given with --config."""

    def serve(self, config: str, **overrides: Any) -> None:
        """Runs the node until SIGTERM or SIGINT."""
        serve(NodeConfig.read(config, **overrides))

    def status(self, config: str, as_json: bool = False) -> str:
        """Every study in the spool, by state, with what happened to it."""
        spool = Spool(NodeConfig.read(config).spool)
        studies = {state: spool.studies(state) for state in STATES}
        if as_json:
            listing = {
                state: [{"job": s.name, "study": s.uid, **s.record} for s in found] for state, found in studies.items()
            }
            return json.dumps(listing, indent=1)
        now = time.time()
        lines = [f"{s.state:9} {s.name}  {details(s, now)}" for found in studies.values() for s in found]
        pending = sum(len(studies[s]) for s in ("incoming", "queue", "outbox"))
        counts = ", ".join(f"{s} {len(found)}" for s, found in studies.items())
        done, failed = len(studies["done"]), len(studies["failed"])
        return "\n".join([*lines, f"{pending} pending, {done} done, {failed} failed ({counts})"])

    def retry(self, job: str, config: str) -> str:
        """A failed study back to the queue, a done one back to the outbox, an outbox one due now."""
        spool = Spool(NodeConfig.read(config).spool)
        found = spool.find(job)
        if found.state == "failed":
            spool.move(found, "queue", error=None, problems=None)
            return f"{job}: failed -> queue (to be processed again)"
        if found.state == "done":
            spool.move(found, "outbox", attempts=None, next_attempt=None, last_error=None, sent=None)
            return f"{job}: done -> outbox (to be sent again)"
        if found.state == "outbox":
            spool.update(found, next_attempt=None)
            return f"{job}: to be sent now"
        return f"{job} is {found.state}: it is pending already"

    def remove(self, job: str, config: str) -> str:
        """Deletes a study (and its results) from the spool."""
        spool = Spool(NodeConfig.read(config).spool)
        found = spool.find(job)
        spool.remove(found)
        return f"{job}: removed from {found.state}"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        fire.Fire(Commands, name="python -m pacs_node")
    except (ValueError, OSError) as e:
        logging.getLogger("pacs_node").error(str(e))
        sys.exit(1)


if __name__ == "__main__":
    main()
