"""SIGKILL under webhook load: every acknowledged item survives, once.

Concurrent signed POSTs (1-20 text messages each) hit a real server, which is
killed mid-load and restarted on the same data. Every item of an acknowledged
POST must be projected; unacknowledged POSTs are redelivered, as Meta would,
after which every item must be present exactly once.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import server_env
from tests.e2e.server import DISPLAY_NUMBER, PHONE_NUMBER_ID, Server, sign

SENDERS = 8
KILL_AFTER_ACKS = 15
MAX_POSTS = 2000
LOAD_DEADLINE = 20.0
CONTACTS = [
    ("16505551234", "Sheena Nelson"),
    ("447700900123", "Oliver Hughes"),
    ("4915123456789", "Jonas Weber"),
    ("33612345678", "Camille Martin"),
    ("5511987654321", "Ana Souza"),
    ("819012345678", "山田 太郎"),
]
TEXTS = [
    "Does it come in another color?",
    "Hi, is the shop open on Sunday?",
    "Hello, I'd like to change my delivery address.",
    "Can you send me the statement for March please",
    "Ok thanks, I'll transfer the deposit today 👍",
    "明日の予約を確認できますか?",
    "What is the fee if I close the account early?",
]


@dataclass
class Post:
    """One webhook delivery: its bytes, the items it carries, and what became of it."""

    body: bytes
    items: dict[str, dict[str, Any]]
    status: int | None = None
    error: str | None = None

    @property
    def acked(self) -> bool:
        return self.status == 200


@dataclass
class Load:
    posts: list[Post]
    next_index: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def take(self) -> Post | None:
        with self.lock:
            if self.stop.is_set() or self.next_index >= len(self.posts):
                return None
            self.next_index += 1
            return self.posts[self.next_index - 1]

    @property
    def sent(self) -> list[Post]:
        return self.posts[: self.next_index]


def _post(rng: random.Random, run: str, number: int, count: int) -> Post:
    people = rng.sample(CONTACTS, 2)
    messages: list[dict[str, Any]] = [
        {
            "from": people[i % 2][0],
            "id": f"wamid.HBgL{run}{number:05d}{i:02d}",
            "timestamp": str(1763700000 + number),
            "type": "text",
            "text": {"body": rng.choice(TEXTS)},
        }
        for i in range(count)
    ]
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": DISPLAY_NUMBER,
                                "phone_number_id": PHONE_NUMBER_ID,
                            },
                            "contacts": [
                                {"profile": {"name": name}, "wa_id": wa_id}
                                for wa_id, name in people
                            ],
                            "messages": messages,
                        },
                    }
                ],
            }
        ],
    }
    return Post(json.dumps(payload).encode(), {m["id"]: m for m in messages})


def _sender(server: Server, load: Load) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        while (post := load.take()) is not None:
            headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(post.body)}
            try:
                response = client.post("/webhooks/whatsapp", content=post.body, headers=headers)
            except httpx.TransportError as exc:  # the server died under this request
                post.error = type(exc).__name__
                return
            post.status = response.status_code


def _load_and_kill(server: Server, load: Load) -> None:
    """Post concurrently; SIGKILL the server once enough POSTs are acknowledged."""
    threads = [threading.Thread(target=_sender, args=(server, load)) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + LOAD_DEADLINE
    while time.monotonic() < deadline and any(t.is_alive() for t in threads):
        if sum(p.acked for p in load.sent) >= KILL_AFTER_ACKS:
            break
        time.sleep(0.01)
    server.kill()
    load.stop.set()
    for thread in threads:
        thread.join(timeout=15)
    assert not any(t.is_alive() for t in threads)


def _settled(server: Server, sentinel: Post) -> dict[str, list[dict[str, Any]]]:
    """Message records by wamid, once projection has passed ``sentinel``.

    The projector works through the journal in order, so once the sentinel (the
    last entry) is projected, every earlier entry has been projected too.
    """
    response = server.post_webhook(sentinel.body)
    assert response.status_code == 200, response.text
    sentinel_id = next(iter(sentinel.items))
    # A generous bound, not a performance claim: projection is slow on a loaded CI host.
    server.wait_for(
        lambda: server.get("/api/v1/messages", wamid=sentinel_id).status_code == 200,
        timeout=120,
    )
    by_wamid: dict[str, list[dict[str, Any]]] = {}
    for record in server.all_records(server.account_id, kind="message", limit="500"):
        by_wamid.setdefault(record["wamid"], []).append(record)
    return by_wamid


def _check(posts: list[Post], by_wamid: dict[str, list[dict[str, Any]]]) -> None:
    """Every item of ``posts`` is present verbatim, and no wamid has two records."""
    missing = [w for p in posts for w in p.items if w not in by_wamid]
    assert not missing, f"{len(missing)} acknowledged items lost, e.g. {missing[:5]}"
    duplicated = {w: len(r) for w, r in by_wamid.items() if len(r) > 1}
    assert not duplicated, f"wamids with more than one record: {duplicated}"
    for post in posts:
        for wamid, item in post.items.items():
            assert by_wamid[wamid][0]["content"]["item"] == item, wamid


def test_acknowledged_posts_survive_sigkill(database_name: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = Server(server_env(data_dir, database_name), data_dir, tmp_path / "log")
    rng = random.Random(20261121)
    run = uuid.uuid4().hex[:8].upper()
    load = Load([_post(rng, run, n, rng.randint(1, 20)) for n in range(MAX_POSTS)])
    try:
        server.start()
        server.bootstrap_users()
        server.account_id = server.add_account()
        _load_and_kill(server, load)
        sent = load.sent
        acked = [p for p in sent if p.acked]
        unacked = [p for p in sent if not p.acked]
        refused = Counter(p.status for p in unacked if p.status is not None)
        assert not refused, f"the server answered without acknowledging: {refused}"
        assert acked, "nothing was acknowledged before the kill"

        server.start()  # the same data directory and database
        _check(acked, _settled(server, _post(rng, run, MAX_POSTS, 1)))

        for post in unacked:  # Meta redelivers whatever was not acknowledged
            response = server.post_webhook(post.body)
            assert response.status_code == 200, response.text
        final = _settled(server, _post(rng, run, MAX_POSTS + 1, 1))
        _check(sent, final)
        ours = {w for p in sent for w in p.items}
        assert set(final) - ours == {
            f"wamid.HBgL{run}{n:05d}00" for n in (MAX_POSTS, MAX_POSTS + 1)
        }
    finally:
        server.close()
