"""The Responses API's SQLite store (server/responses/store.py): records survive a reopened file,
input items page as `GET /v1/responses/{id}/input_items` says, old responses expire."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from hearth.errors import InvalidRequestError, NotFoundError
from hearth.server.responses.store import DB_FILENAME, ResponseStore, StoredResponse
from hearth.settings import hearth_home


def item(n: int) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{n}",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_text", "text": f"message {n} · ünïcödé"}],
    }


def record(
    response_id: str = "resp_1", *, created_at: float = 1000.0, items: int = 3
) -> StoredResponse:
    return StoredResponse(
        id=response_id,
        created_at=created_at,
        model="smollm2:135m",
        response={"id": response_id, "object": "response", "status": "completed", "output": []},
        input_items=[item(n) for n in range(items)],
        conversation=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}],
        previous_response_id="resp_0",
    )


@pytest.fixture
def store(tmp_path: Path) -> ResponseStore:
    return ResponseStore(tmp_path / DB_FILENAME)


def test_put_get_delete(store: ResponseStore) -> None:
    assert store.get("resp_1") is None
    store.put(record())
    assert store.get("resp_1") == record()
    assert store.delete("resp_1") is True
    assert store.get("resp_1") is None
    assert store.delete("resp_1") is False
    with pytest.raises(NotFoundError):
        store.input_items("resp_1")  # its items went with it
    store.close()


def test_put_replaces_a_record_with_the_same_id(store: ResponseStore) -> None:
    store.put(record(items=5))
    store.put(record(items=2))
    stored = store.get("resp_1")
    assert stored is not None and [i["id"] for i in stored.input_items] == ["msg_0", "msg_1"]
    assert store.input_items("resp_1", order="asc") == (stored.input_items, False)
    store.close()


def test_a_reopened_file_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "home" / DB_FILENAME  # the directory is created
    with ResponseStore(path) as store:
        store.put(record())
        store.put(record("resp_2", items=0))
    with ResponseStore(path) as reopened:
        assert reopened.get("resp_1") == record()
        assert reopened.get("resp_2") == record("resp_2", items=0)
        assert reopened.input_items("resp_2") == ([], False)
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    with pytest.raises(RuntimeError, match="closed"):
        reopened.get("resp_1")


def ids(page: tuple[list[dict[str, Any]], bool]) -> tuple[list[str], bool]:
    items, has_more = page
    return [i["id"] for i in items], has_more


def test_input_items_pages(store: ResponseStore) -> None:
    store.put(record(items=5))
    # Default: the last item first, 20 to a page.
    assert ids(store.input_items("resp_1")) == (
        ["msg_4", "msg_3", "msg_2", "msg_1", "msg_0"],
        False,
    )
    assert ids(store.input_items("resp_1", order="asc", limit=2)) == (["msg_0", "msg_1"], True)
    assert ids(store.input_items("resp_1", order="asc", limit=5)) == (
        [f"msg_{n}" for n in range(5)],
        False,
    )
    # `after` pages on in the listing order, whichever it is.
    assert ids(store.input_items("resp_1", order="asc", after="msg_1", limit=2)) == (
        ["msg_2", "msg_3"],
        True,
    )
    assert ids(store.input_items("resp_1", order="asc", after="msg_2", limit=2)) == (
        ["msg_3", "msg_4"],
        False,
    )
    assert ids(store.input_items("resp_1", after="msg_3", limit=2)) == (["msg_2", "msg_1"], True)
    assert ids(store.input_items("resp_1", after="msg_0")) == ([], False)
    # `before` gives the items just before the cursor, still in the listing order.
    assert ids(store.input_items("resp_1", order="asc", before="msg_4", limit=2)) == (
        ["msg_2", "msg_3"],
        True,
    )
    assert ids(store.input_items("resp_1", order="asc", before="msg_2", limit=5)) == (
        ["msg_0", "msg_1"],
        False,
    )
    assert ids(store.input_items("resp_1", before="msg_1", limit=2)) == (["msg_3", "msg_2"], True)
    # Both: the items between them.
    assert ids(store.input_items("resp_1", order="asc", after="msg_0", before="msg_4")) == (
        ["msg_1", "msg_2", "msg_3"],
        False,
    )
    assert ids(store.input_items("resp_1", after="msg_4", before="msg_0", limit=2)) == (
        ["msg_3", "msg_2"],
        True,
    )
    store.close()


def test_walking_every_page_visits_each_item_once(store: ResponseStore) -> None:
    store.put(record(items=7))
    for order in ("asc", "desc"):
        seen: list[str] = []
        after: str | None = None
        while True:
            page, has_more = store.input_items("resp_1", after=after, limit=3, order=order)
            seen += [i["id"] for i in page]
            if not has_more:
                break
            after = page[-1]["id"]
        expected = [f"msg_{n}" for n in range(7)]
        assert seen == (expected if order == "asc" else expected[::-1])
    store.close()


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"after": "msg_9"}, "after"),
        ({"before": "msg_9"}, "before"),
    ],
)
def test_bad_page_arguments_are_named(
    store: ResponseStore, arguments: dict[str, Any], param: str
) -> None:
    store.put(record())
    with pytest.raises(InvalidRequestError) as caught:
        store.input_items("resp_1", **arguments)
    assert caught.value.param == param
    with pytest.raises(NotFoundError):
        store.input_items("resp_unknown")
    store.close()


def test_expire_deletes_only_older_responses(store: ResponseStore) -> None:
    store.put(record("resp_old", created_at=1000.0))
    store.put(record("resp_edge", created_at=1500.0))
    store.put(record("resp_new", created_at=1900.0))
    assert store.expire(500.0, now=2000.0) == 1  # created 1500 is exactly 500 s old: kept
    assert store.get("resp_old") is None
    assert store.get("resp_edge") is not None and store.get("resp_new") is not None
    assert store.expire(500.0, now=2000.0) == 0
    assert store.expire(0.5) == 2  # now: the clock
    with pytest.raises(NotFoundError):
        store.input_items("resp_new")
    store.close()


def test_threads_share_one_store(store: ResponseStore) -> None:
    def work(n: int) -> None:
        for k in range(20):
            store.put(record(f"resp_{n}_{k}", items=2))
            assert store.get(f"resp_{n}_{k}") is not None

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.expire(0.0, now=10_000.0) == 80
    store.close()


def test_the_file_lives_in_the_hearth_home() -> None:
    # conftest gives every test its own HEARTH_HOME; the server opens the store there.
    path = hearth_home() / DB_FILENAME
    with ResponseStore(path) as store:
        store.put(record())
    assert path.is_file()
