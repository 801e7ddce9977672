#!/usr/bin/env python3
"""Holds N read-your-writes requests open on the query API, for the bench.

    waiters.py HOST PORT N IDS_FILE

Opens N connections, each sending `GET /api/v1/timestamp/<id>` with
`Prefer: wait=30` for a fresh random id, which the view does not hold; writes
the ids to IDS_FILE (one per line) and prints `sent N` once every request is
written. Then it reads the answers: the bench ends the wait by putting the ids
into the view, and each request must then be answered `200` with
`Preference-Applied: wait=30`, which only a request that was waiting in the
server gets. It exits when every request is answered, or 45 s after sending
(longer than any wait), printing one line:

    answered=N waited=N others=0 unanswered=0 held_min=S held_max=S

`waited` counts the 200s with `Preference-Applied: wait=30`; `held_*` are the
seconds from `sent` to the first and last answer.
"""

import asyncio
import sys
import time
import uuid

WAIT = 30


async def send(host, port, rid):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /api/v1/timestamp/{rid} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Prefer: wait={WAIT}\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer


async def answer(reader, writer, answers):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        answers.append(("closed", False, time.monotonic()))
        return
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ")[1] if " " in lines[0] else lines[0]
    applied = any(
        line.lower().startswith("preference-applied:")
        and line.split(":", 1)[1].strip() == f"wait={WAIT}"
        for line in lines[1:]
    )
    answers.append((status, applied, time.monotonic()))
    writer.close()


async def main(host, port, n, ids_file):
    ids = [str(uuid.uuid4()) for _ in range(n)]
    with open(ids_file, "w") as f:
        f.write("".join(f"{rid}\n" for rid in ids))
    # Every connection open and its request written, or the bench fails here.
    connections = await asyncio.gather(*(send(host, port, rid) for rid in ids))
    sent = time.monotonic()
    print(f"sent {n}", flush=True)
    answers = []
    tasks = [asyncio.create_task(answer(r, w, answers)) for r, w in connections]
    _, pending = await asyncio.wait(tasks, timeout=WAIT + 15)
    for task in pending:
        task.cancel()
    waited = sum(1 for status, applied, _ in answers if status == "200" and applied)
    held = [at - sent for _, _, at in answers] or [0.0]
    print(
        f"answered={len(answers)} waited={waited} others={len(answers) - waited} "
        f"unanswered={n - len(answers)} held_min={min(held):.1f} held_max={max(held):.1f}",
        flush=True,
    )


if __name__ == "__main__":
    host, port, n, ids_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    asyncio.run(main(host, port, n, ids_file))
