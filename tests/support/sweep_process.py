"""One OS process running the deadline sweep on a database, for the test of
two cases processes sweeping one SQLite file (sqlite3 blocks a whole process
while it waits for a lock, so two green threads of one process cannot show it).

    python -m tests.support.sweep_process URL NOW BATCH PAUSE

prints "ready", sweeps once a line arrives on stdin, then prints how many
alerts it staged. PAUSE seconds after each committed batch let the other
process in between batches, as the work between two batches would.
"""
import json
import sys
import time
from datetime import datetime

from sqlalchemy.orm import sessionmaker

from servicekit.database import make_engine
from services.cases.domain.deadlines import AlertPolicy
from services.cases.service_layer.sweep import sweep


def main() -> None:
    url, now, batch, pause = sys.argv[1], datetime.fromisoformat(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    engine = make_engine(url)
    print("ready", flush=True)
    sys.stdin.readline()
    staged = sweep(sessionmaker(engine), AlertPolicy(), now=now, batch=batch, counted=lambda kinds: time.sleep(pause))
    engine.dispose()
    print(json.dumps({"staged": staged}), flush=True)


if __name__ == "__main__":
    main()
