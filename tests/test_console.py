"""The browser console, in a real Chromium (Debian's, driven by Playwright) against a real `vault
serve` on the local store. The page reads the logs itself, through the server's read-only log
route, with its own decoder written from docs/format.md: what it shows must be what vault_core
reads. Each view's screenshot is saved under build/screenshots/."""

from __future__ import annotations

import filecmp
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from urllib.parse import quote

import httpx
import pytest
from crc32c import crc32c
from playwright.sync_api import Browser, Page, sync_playwright

import vault_core
from tests.support import ROOT
from tests.support.damage import flip_byte
from tests.support.served import Served
from vault_core import Message
from vault_core import format as fmt
from vault_core.client import VaultClient

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = ROOT / "build" / "screenshots"
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM, "Chromium is missing: scripts/bootstrap.sh dev installs it (apt-get install chromium)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def orders_batches() -> list[list[Message]]:
    """Values of every kind the page formats: JSON, text, binary, empty, 1 MiB; a key that starts
    with a byte-order mark (part of the key)."""
    return [
        [Message("order-created", json.dumps({"order": n, "items": [1, 2]}).encode()) for n in range(3)],
        [Message("order-paid", b"paid in full"), Message("\ufeffbom-key", b"\x00\xff\x10binary")],
        [Message("order-shipped", b""), Message("\u00e9t\u00e9", b"x" * (1024 * 1024))],
        [Message("order-paid", json.dumps({"order": 7}).encode())],
    ]


@pytest.fixture(scope="module")
def vault(tmp_path_factory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("console") / "store"
    store = vault_core.open_store(str(root))
    with store.writer("orders") as writer:
        for n, batch in enumerate(orders_batches()):
            writer.append(batch, batch_id=f"orders-{n}")
            time.sleep(0.01)
    with store.writer("big") as writer:  # over 1 MiB: a time search probes
        for n in range(60):
            writer.append([Message(f"event-{n % 5}", bytes([n]) * 1000) for _ in range(40)])
            time.sleep(0.003)
    with store.writer("damaged") as writer:
        positions = [writer.append([Message("k", f"value-{n}".encode() * 20)]).position for n in range(3)]
    flip_byte(store, "damaged", fmt.data_at(positions[0] + 60))  # inside the second batch
    with store.writer("live") as writer:
        writer.append([Message("first", b"1")])
    checkpoints = store.checkpoints("billing")
    checkpoints.save("orders", store.reader("orders").read(0, max_messages=3).next_position, expected=None)
    served = Served(str(root), None)
    yield served
    served.stop()


@contextmanager
def served_page(browser: Browser, target: str, container: str | None = None) -> Iterator[Page]:
    """A `vault serve` of `target` and a console page on it (its groups view, which reads no log)."""
    served = Served(target, container)
    try:
        page = open_view(browser, served, "#/groups")
        yield page
        page.close()
    finally:
        served.stop()


def recording_page(browser: Browser) -> tuple[Page, list[str]]:
    """A new page, and the URLs of every request it makes."""
    page = browser.new_page()
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    return page, urls


def open_view(browser: Browser, vault: Served, view: str) -> Page:
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.goto(f"{vault.url}/api/console/{view}")
    page.wait_for_function(f"document.body.dataset.ready === {json.dumps(view)}", timeout=WAIT_MS)
    return page


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def shown_messages(page: Page) -> list[tuple[int, str]]:
    rows = page.locator("#messages tr[data-offset]")
    return [(int(r.get_attribute("data-offset")), r.get_attribute("data-key")) for r in rows.all()]


def read_in_the_page(page: Page, stream: str) -> dict:
    """Every message of the stream as the page's decoder reads it (a checksum of each value), and
    the damage it reports, if any."""
    return page.evaluate(
        """async (stream) => {
            const { LogReader, httpSource, CorruptData, crc32c } = await import("./decoder.js");
            const reader = new LogReader(httpSource(`/api/streams/${stream}/log`));
            const messages = [];
            try {
                const commit = await reader.commit();
                for await (const { messages: batch } of reader.batches(0, commit.position)) {
                    for (const m of batch) {
                        messages.push([m.offset, m.timestampMs, m.key, m.value.length, crc32c(m.value)]);
                    }
                }
                return { messages, damage: null };
            } catch (error) {
                if (!(error instanceof CorruptData)) throw error;
                return { messages, damage: error.position };
            }
        }""",
        stream,
    )


def seek_in_the_page(page: Page, stream: str, when: datetime) -> dict:
    """Where the page's time search answers, or the damage it reports."""
    return page.evaluate(
        """async ([stream, whenMs]) => {
            const { LogReader, httpSource, CorruptData } = await import("./decoder.js");
            const reader = new LogReader(httpSource(`/api/streams/${stream}/log`));
            try {
                return { offset: await reader.seekTime(whenMs) };
            } catch (error) {
                if (!(error instanceof CorruptData)) throw error;
                return { damage: error.position };
            }
        }""",
        [stream, fmt.to_ms(when)],
    )


def seek_by_vault_core(store: vault_core.Store, stream: str, when: datetime) -> dict:
    try:
        return {"offset": store.reader(stream).seek_time(when)}
    except vault_core.CorruptDataError as error:
        return {"damage": error.position}


def read_by_vault_core(store: vault_core.Store, stream: str) -> dict:
    messages = []
    try:
        for m in store.reader(stream).replay():
            messages.append([m.offset, m.timestamp_ms, m.key, len(m.value), crc32c(m.value)])
    except vault_core.CorruptDataError as error:
        return {"messages": messages, "damage": error.position}
    return {"messages": messages, "damage": None}


@pytest.mark.parametrize("stream", ["orders", "big", "damaged", "live"])
def test_the_pages_decoder_reads_what_vault_core_reads(browser, vault, stream):
    page = open_view(browser, vault, "#/groups")
    assert read_in_the_page(page, stream) == read_by_vault_core(vault.store(), stream)
    page.close()


def test_the_pages_decoder_agrees_on_wrapped_rings_huge_batches_and_successive_writers(browser, tmp_path):
    root = tmp_path / "store"
    store = vault_core.open_store(str(root))
    for writer_run in range(3):  # three successive writers
        with store.writer("edge") as writer:
            batches = [
                vault_core.Batch([Message(f"w{writer_run}", b"")], f"id-{writer_run}-{n}") for n in range(400)
            ]
            writer.append_all(batches)  # 1,200 batch ids: the ring of 1,024 wraps
            writer.append([Message("huge", bytes([n]) * (1024 * 1024)) for n in range(20)])  # a 20 MiB batch
    with served_page(browser, str(root)) as page:
        assert read_in_the_page(page, "edge") == read_by_vault_core(store, "edge")
        ring = page.evaluate(
            """async () => {
                const { LogReader, httpSource } = await import("./decoder.js");
                const commit = await new LogReader(httpSource("/api/streams/edge/log")).commit();
                return commit.ring.map((entry) => entry.batchStart);
            }"""
        )
        assert ring == [start for _, start in fmt.ring_entries(store.reader("edge").commit_record().ring)]


def test_the_pages_decoder_finds_every_flipped_byte_where_vault_core_does(browser, tmp_path):
    root = tmp_path / "store"
    store = vault_core.open_store(str(root))
    with store.writer("flips") as writer:
        for n in range(3):
            writer.append(
                [Message(f"key-{n}", f"value-{n}".encode()), Message("\u00e9", b"")], batch_id=f"b-{n}"
            )
    end = store.reader("flips").position()
    with served_page(browser, str(root)) as page:
        disagreements = []
        for position in range(end):  # every byte of every header, id, record, key and value
            flip_byte(store, "flips", fmt.data_at(position))
            if read_in_the_page(page, "flips") != read_by_vault_core(store, "flips"):
                disagreements.append(position)
            flip_byte(store, "flips", fmt.data_at(position))
        assert disagreements == []


def test_the_pages_decoder_finds_a_log_cut_short_where_vault_core_does(browser, tmp_path):
    root = tmp_path / "store"
    store = vault_core.open_store(str(root))
    with store.writer("cut") as writer:
        ends = []
        for n in range(1, 6):
            ends.append(writer.append([Message(f"k{n}", bytes(300 * n))]).position)
            time.sleep(0.002)  # each batch its own time
    times = [batch.messages[0].timestamp for batch in store.reader("cut").batches()]
    log = root / "cut" / "log"
    whole = log.read_bytes()
    with served_page(browser, str(root)) as page:
        # At batch ends, inside headers and records, and before the data.
        for end in [0, 10, ends[0], ends[0] + 3, ends[1] + 45, ends[2] + 500, ends[3] - 1]:
            log.write_bytes(whole[: fmt.data_at(end)])
            assert read_in_the_page(page, "cut") == read_by_vault_core(store, "cut"), end
            for when in times:  # a time search answers only from whole batches
                assert seek_in_the_page(page, "cut", when) == seek_by_vault_core(store, "cut", when), end


def test_on_a_blob_store_the_page_reads_the_log_where_the_browser_may(browser, azurite):
    """vault serve on the emulator: its read URLs have no CORS rule for the page's origin, so the
    page falls back to the server's log route; what it shows is still vault_core's reading."""
    store = vault_core.open_store(azurite.connection_string, container="console")
    with store.writer("orders") as writer:
        writer.append([Message("order-created", b'{"order": 1}')])
    served = Served(azurite.connection_string, "console")
    try:
        page, urls = recording_page(browser)
        page.goto(f"{served.url}/api/console/#/stream/orders?offset=0")
        page.wait_for_function("document.body.dataset.ready !== undefined", timeout=WAIT_MS)
        assert shown_messages(page) == [(m.offset, m.key) for m in store.reader("orders").replay()]
        assert any("/console-orders/orders/log?" in url for url in urls)  # the SAS URL was tried first
        assert any(url.startswith(f"{served.url}/api/streams/orders/log") for url in urls)
        page.close()
    finally:
        served.stop()


def test_the_streams_view_lists_every_stream_with_its_position(browser, vault):
    page = open_view(browser, vault, "#/")
    page.wait_for_selector("#streams tr[data-stream='live'][data-position]", timeout=WAIT_MS)
    shown = {
        row.get_attribute("data-stream"): int(row.get_attribute("data-position"))
        for row in page.locator("#streams tr[data-position]").all()
    }
    store = vault.store()
    assert shown == {name: store.reader(name).position() for name in store.streams()}
    screenshot(page, "streams")
    page.close()


def test_the_streams_view_shows_each_streams_append_rate_and_p99_from_get_metrics(browser, vault):
    client = VaultClient(vault.url)
    client.publish("metered", [Message("m", b"0")])  # listed when the page opens
    page = open_view(browser, vault, "#/")
    rate = page.locator("#streams tr[data-stream='metered'] td.rate")
    rate.wait_for(timeout=WAIT_MS)
    sent, deadline = 0, time.monotonic() + 30
    while not float(rate.get_attribute("data-rate") or 0) and time.monotonic() < deadline:  # bounded
        client.publish("metered", [Message("m", b"x" * 100) for _ in range(5)])
        sent += 5
    shown = float(rate.get_attribute("data-rate") or 0)
    assert 0 < shown <= sent  # messages a second, over a window of a few seconds
    p99 = float(page.locator("#streams tr[data-stream='metered'] td.p99").get_attribute("data-seconds"))
    assert 0 < p99 < 5
    assert page.locator("#streams tr[data-stream='orders'] td.p99").text_content() == "-"  # no appends
    screenshot(page, "streams-figures")
    page.close()


def test_a_streams_messages_from_an_offset_are_vault_cores(browser, vault):
    reader = vault.store().reader("orders")
    offset = reader.read(0, max_messages=2).next_position  # the third message
    page = open_view(browser, vault, f"#/stream/orders?offset={offset}")
    expected = reader.read(offset, max_messages=200).messages
    assert shown_messages(page) == [(m.offset, m.key) for m in expected]
    kinds = page.locator("#messages .kind").all_inner_texts()
    assert {"json", "text", "hex"} <= set(kinds)  # JSON formatted, text as text, binary as hex
    assert page.locator("#messages tr[data-key='\ufeffbom-key']").count() == 1  # the mark is kept
    screenshot(page, "messages")
    page.close()


def test_a_streams_messages_from_a_time_start_where_vault_core_finds_it(browser, vault):
    reader = vault.store().reader("big")
    batches = list(reader.batches())
    when = batches[37].messages[0].timestamp
    page = open_view(browser, vault, f"#/stream/big?time={quote(when.isoformat(timespec='milliseconds'))}")
    first = reader.seek_time(when)
    expected = reader.read(first, max_messages=200).messages
    assert shown_messages(page) == [(m.offset, m.key) for m in expected]
    page.close()


def test_the_key_filter_shows_only_matching_keys(browser, vault):
    page = open_view(browser, vault, "#/stream/orders?offset=0&key=order-paid")
    keys = [key for _, key in shown_messages(page)]
    assert keys == ["order-paid", "order-paid"]
    page.close()


def test_a_message_appended_while_the_tail_is_open_appears(browser, vault):
    page = open_view(browser, vault, "#/stream/live?live=1")
    page.wait_for_function("document.getElementById('status').dataset.next !== undefined", timeout=WAIT_MS)
    with VaultClient(f"{vault.url}/api") as client:
        result = client.publish("live", [Message("appended-later", b'{"late": true}')])
    page.wait_for_selector(f"#messages tr[data-offset='{result.offsets[0]}']", timeout=5_000)
    assert shown_messages(page)[-1] == (result.offsets[0], "appended-later")
    screenshot(page, "tail")
    page.close()


def test_the_groups_view_shows_each_groups_lag(browser, vault):
    page = open_view(browser, vault, "#/groups")
    [lag] = vault_core.group_lags(vault.store(), "billing")
    row = page.locator("#groups tr[data-group='billing'][data-stream='orders']")
    assert int(row.get_attribute("data-lag")) == lag.lag_bytes > 0
    screenshot(page, "groups")
    page.close()


def test_a_damaged_stream_shows_the_damage_where_vault_core_finds_it(browser, vault):
    page = open_view(browser, vault, "#/stream/damaged?offset=0")
    with pytest.raises(vault_core.CorruptDataError) as damage:
        list(vault.store().reader("damaged").replay())
    assert int(page.locator(".damage").get_attribute("data-position")) == damage.value.position
    before = vault.store().reader("damaged").read(0, max_messages=1).messages
    assert shown_messages(page) == [(m.offset, m.key) for m in before]  # what precedes the damage
    screenshot(page, "damage")
    page.close()


def test_with_an_api_key_the_page_asks_for_it_and_keeps_it_out_of_urls(browser, tmp_path):
    root = tmp_path / "store"
    with vault_core.open_store(str(root)).writer("orders") as writer:
        writer.append([Message("k", b"v")])
    served = Served(str(root), None, "--api-key", "s3cret-key")
    try:
        page, urls = recording_page(browser)
        page.goto(f"{served.url}/api/console/")
        page.wait_for_selector("#key-form:not([hidden])", timeout=WAIT_MS)
        page.fill("#key", "s3cret-key")
        page.click("#key-form button")
        page.wait_for_selector("#streams tr[data-stream='orders'][data-position]", timeout=WAIT_MS)
        assert not [url for url in urls if "s3cret" in url]
        page.close()
    finally:
        served.stop()


def test_the_log_route_serves_byte_ranges_read_only(vault):
    store = vault.store()
    log = (store.backend.root / "orders" / "log").read_bytes()
    url = f"{vault.url}/api/streams/orders/log"
    part = httpx.get(url, headers={"Range": "bytes=65536-65599"})
    assert (part.status_code, part.content) == (206, log[65536:65600])
    assert part.headers["content-range"] == f"bytes 65536-65599/{len(log)}"
    assert httpx.head(url).headers["content-length"] == str(len(log))
    assert httpx.get(url, headers={"Range": f"bytes={len(log)}-"}).status_code == 416
    ignored = httpx.get(url, headers={"Range": "pages=1-2"})  # another unit: the whole log
    assert (ignored.status_code, ignored.content) == (200, log)
    assert httpx.get(f"{vault.url}/api/streams/nowhere/log").status_code == 404
    assert httpx.post(url, content=b"x").status_code in (404, 405)
    assert (store.backend.root / "orders" / "log").read_bytes() == log


def test_the_vendored_packages_are_the_locked_ones():
    vendor = ROOT / "vault_core" / "console" / "vendor"
    copies = {
        "crc32c.js": "crc-32/crc32c.js",
        "uPlot.iife.min.js": "uplot/dist/uPlot.iife.min.js",
        "uPlot.min.css": "uplot/dist/uPlot.min.css",
    }
    for name, source in copies.items():
        assert filecmp.cmp(vendor / name, ROOT / "node_modules" / source, shallow=False), (
            f"{name} is not node_modules/{source}: run scripts/vendor.sh"
        )


def test_the_console_is_served_at_the_root(vault):
    answer = httpx.get(f"{vault.url}/", follow_redirects=True)
    assert answer.status_code == 200 and "Message Vault console" in answer.text
    assert "http" not in answer.text  # it loads nothing from elsewhere: it works offline


def test_a_segmented_and_trimmed_stream_shows_from_where_it_starts(browser, tmp_path):
    store = vault_core.open_store(str(tmp_path / "store"))
    with store.writer("seg", segment_bytes=8192) as writer:
        ends = [writer.append([Message(f"m-{n}", b"v" * 300)]).position for n in range(90)]
        first = writer.trim(ends[40])
    served = Served(str(tmp_path / "store"), None)
    try:
        page = open_view(browser, served, "#/stream/seg?offset=0")
        expected = store.reader("seg").read(0, max_messages=200).messages
        assert expected[0].offset > first > 0
        assert shown_messages(page) == [(m.offset, m.key) for m in expected]
        page.close()
        # A time before all that is left finds the stream's first message, as vault_core does.
        page = open_view(browser, served, "#/stream/seg?time=2000-01-01T00:00:00Z")
        assert shown_messages(page) == [(m.offset, m.key) for m in expected]
        page.close()
        # Below the start: said, not shown as damage.
        trimmed_offset = vault_core.open_store(str(tmp_path / "store")).reader("seg").first_position() - 1
        page = open_view(browser, served, f"#/stream/seg?offset={trimmed_offset}")
        assert f"trimmed away: the stream starts at {first} now" in page.locator(".damage").inner_text()
        page.close()
        # The streams view charts it from where it starts, with no error.
        page = open_view(browser, served, "#/")
        page.wait_for_selector("#streams tr[data-stream='seg'][data-position]", timeout=WAIT_MS)
        assert page.locator("#streams .damage").count() == 0
        assert int(page.locator("#streams tr[data-stream='seg']").get_attribute("data-position")) == ends[-1]
        page.close()
    finally:
        served.stop()
