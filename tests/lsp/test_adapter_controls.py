"""What the editor's status menu asks of the server: the adapter store's versions, a rollback (which the
server then hot-swaps to), and "retrain now" (refused, with a reason, while background training is paused)."""

from __future__ import annotations

import pytest
from pygls.exceptions import JsonRpcException

pytestmark = pytest.mark.asyncio


async def test_adapters_lists_versions_and_rollback_swaps_to_the_older_one(start_server, state, tiny_adapter_dir):
    from trainer.store import AdapterStore

    store = AdapterStore(state)
    report = state / "reports" / "r1" / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html>evaluation</html>")
    store.publish(tiny_adapter_dir, extra={"gate": {"ok": True, "report": str(report)}})
    store.publish(tiny_adapter_dir, extra={"commit": "fedcba9876543210", "gate": {"ok": True, "report": str(state / "gone.html")}})
    (store.root / "v0003").mkdir()  # a half-written version: listed as unusable, never served
    session = await start_server()
    await session.status(lambda s: (s.get("adapter") or {}).get("version") == "v0002")

    listed = await session.request("swespot/adapters", {})
    assert listed["current"] == "v0002" and listed["serving"] == "v0002"
    by_name = {v["version"]: v for v in listed["versions"]}
    assert list(by_name) == ["v0001", "v0002", "v0003"]
    assert by_name["v0001"]["usable"] and by_name["v0001"]["commit"] == "0123456789abcdef"
    assert by_name["v0002"]["commit"] == "fedcba9876543210" and by_name["v0002"]["publishedAt"] > 0
    assert not by_name["v0003"]["usable"] and "missing" in by_name["v0003"]["problem"]
    assert by_name["v0001"]["report"] == str(report) and "report" not in by_name["v0002"]  # a deleted report is not offered

    rolled = await session.request("swespot/rollback", {"version": "v0001"})
    assert rolled == {"version": "v0001", "commit": "0123456789abcdef"}
    swapped = await session.status(lambda s: (s.get("adapter") or {}).get("version") == "v0001")
    assert swapped["message"].startswith("switched to adapter v0001")
    assert store.current_name() == "v0001"


async def test_rollback_to_an_unknown_or_damaged_version_is_refused_and_nothing_changes(start_server, state, tiny_adapter_dir):
    from trainer.store import AdapterStore

    store = AdapterStore(state)
    store.publish(tiny_adapter_dir)
    (store.root / "v0002").mkdir()
    session = await start_server()
    await session.status(lambda s: (s.get("adapter") or {}).get("version") == "v0001")
    for version, reason in (("v0009", "no version v0009"), ("v0002", "version v0002 is damaged"), ("latest", "not a version name")):
        with pytest.raises(JsonRpcException, match=reason):
            await session.request("swespot/rollback", {"version": version})
    with pytest.raises(JsonRpcException, match="invalid parameters for swespot/rollback"):
        await session.request("swespot/rollback", {})
    assert store.current_name() == "v0001"
    assert (await session.request("swespot/getStatus", {}))["adapter"]["version"] == "v0001"


async def test_retrain_is_refused_with_a_reason_while_training_is_paused(start_server, state):
    # (with training on, the request is written for the real daemon, which starts a run at once; that
    # path is the daemon's to test: here it would train the default model on the test's CPU)
    session = await start_server()
    with pytest.raises(JsonRpcException, match="background training is paused; resume it"):
        await session.request("swespot/retrain", {})
    assert not (state / "retrain.request").exists()
