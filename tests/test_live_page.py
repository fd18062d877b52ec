"""The live-captions page in headless Debian chromium, its microphone a committed recording
(--use-file-for-fake-audio-capture): press Start, and the page's final captions hold the clip's words,
through the AudioWorklet, the WebSocket and the fleet; a refused microphone gets a clear message."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cdp import Chromium
from tests.conftest import Fleet
from tests.helpers import DATA, wait_for, words_of

MIC = DATA / "speech_long.wav"  # "Good morning everyone. Today we talk about the weather. ..."
FAKE_MIC = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")
#: The screenshot is kept for a person to look at: under pytest's basetemp, or ARTIFACTS_DIR when set.
ARTIFACT = "live_captions.png"


def _up(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/api/status", timeout=2) as answer:
            return bool(json.load(answer)["workers"])
    except (OSError, ValueError, KeyError):
        return False


@pytest.fixture
def page_url(serving_fleet: Fleet) -> str:
    assert wait_for(lambda: _up(serving_fleet.http), 60, 0.2)
    return f"http://{serving_fleet.http}/live"


@pytest.fixture
def browser(page_url: str, tmp_path: Path) -> Iterator[Chromium]:
    chromium = Chromium(page_url, tmp_path / "profile", *FAKE_MIC, f"--use-file-for-fake-audio-capture={MIC}")
    try:
        yield chromium
    finally:
        chromium.close()


FINALS = "Array.from(document.querySelectorAll('#captions .final .text')).map(e => e.textContent).join(' ')"


def test_start_turns_the_microphone_into_final_captions(browser: Chromium, tmp_path: Path) -> None:
    assert browser.wait_js("document.querySelector('#language option[value=en]') !== null", 15)
    browser.js("document.getElementById('start').click()")
    said = browser.wait_js(f"(() => {{ const t = {FINALS}; return t.includes('weather') && t; }})()", 45)
    assert said, (browser.js(FINALS), browser.js("document.getElementById('status').textContent"))
    words = words_of(said)
    assert {"good", "morning", "today", "weather"} <= set(words), said
    assert browser.js("document.getElementById('status').className") == "live"
    assert browser.js("document.querySelector('#captions .final .time').textContent").startswith("00:0")
    srt = browser.js("window.scribeLive.asSrt()")
    assert srt.startswith("1\n00:00:0") and "-->" in srt and "weather" in srt
    assert browser.js("window.scribeLive.asVtt()").startswith("WEBVTT")
    shot = browser.screenshot(tmp_path / ARTIFACT)
    assert shot.stat().st_size > 10_000
    if os.environ.get("ARTIFACTS_DIR"):
        keep = Path(os.environ["ARTIFACTS_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / ARTIFACT)
    browser.js("document.getElementById('start').click()")  # Stop: the socket closes after the last final
    assert browser.wait_js("document.getElementById('start').textContent === 'Start'", 10)


def test_a_refused_microphone_says_so(page_url: str, tmp_path: Path) -> None:
    chromium = Chromium(
        page_url, tmp_path / "profile", "--use-fake-device-for-media-stream", "--deny-permission-prompts"
    )
    try:
        origin = page_url.rsplit("/live", 1)[0]
        chromium.send("Browser.setPermission", permission={"name": "microphone"}, setting="denied", origin=origin)
        assert chromium.wait_js("document.querySelector('#language option[value=en]') !== null", 15)
        chromium.js("document.getElementById('start').click()")
        message = chromium.wait_js(
            "(() => { const s = document.getElementById('status'); return s.className === 'error' && s.textContent; })()",
            15,
        )
        assert message and "Microphone access was refused" in message, message
        assert chromium.js("document.getElementById('start').textContent") == "Start"
    finally:
        chromium.close()
