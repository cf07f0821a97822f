"""The review before promotion answered as a person answers it: in the Prefect UI, in headless Chromium.

A `prefect server start` (the UI included) and a tiny round run by `rrhf pipeline` against it with gate.human:
required; the round pauses; the browser opens the flow run, presses Resume, picks the challenger on pair 1 and the
champion on pair 2, approves, writes a note and submits; the round goes on and its decision holds that answer. The
form's screenshot is kept under runs/test-artifacts/ui/."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_pipeline import tiny_config

from conftest import free_port, stop_group, wait_until_answers

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("RRHF_TEST_ARTIFACTS", ROOT / "runs" / "test-artifacts")) / "ui"


def _paused_run(api: str, proc: subprocess.Popen, log: Path, timeout_s: float = 900) -> str:
    body = json.dumps({"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}).encode()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the round ended before pausing:\n{log.read_text()[-3000:]}")
        req = urllib.request.Request(
            f"{api}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            runs = json.load(r)
        if runs:
            return runs[0]["id"]
        time.sleep(2.0)
    raise AssertionError("no flow run paused for review")


@pytest.mark.integration
@pytest.mark.slow
def test_a_reviewer_answers_the_form_in_the_prefect_ui(tmp_path: Path, tiny_model_dir: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_UI_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    server_log, round_log = tmp_path / "server.log", tmp_path / "round.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=server_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    work, prompts = tmp_path / "w", tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"write some letters, case {i}"}) + "\n" for i in range(12))
    )
    cfg = tiny_config(work, prompts, tiny_model_dir)
    gate = {"human": "required", "human_pairs": 2, "human_timeout_s": 900, "min_reward_gain": -1.0,
            "min_win_rate": 0.0, "max_length_ratio": 100.0, "max_empty_increase": 1.0}  # fmt: skip
    config = tmp_path / "round.yaml"
    config.write_text(json.dumps({**cfg.model_dump(mode="json", exclude_unset=True), "gate": gate}))
    round_env = {**env, "PREFECT_API_URL": api,
                 "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}  # fmt: skip
    rnd = None
    try:
        wait_until_answers(f"{api}/health", server, 300, server_log)
        rnd = subprocess.Popen(
            [sys.executable, "-m", "rrhf_cli", "pipeline", "--config", str(config)],
            env=round_env, cwd=tmp_path, stdout=round_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        run_id = _paused_run(api, rnd, round_log)
        sheet = json.loads(next((work / "reviews").glob("*.sheet.json")).read_text())
        challenger = sheet[0]["candidate_is"]
        champion = "B" if sheet[1]["candidate_is"] == "A" else "A"
        SHOTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)  # the UI renders slowly on a busy 2-core machine
            page.goto(f"http://127.0.0.1:{port}/runs/flow-run/{run_id}")
            page.get_by_role("button", name="Resume").first.click()
            dialog = page.get_by_role("dialog")
            expect(dialog.get_by_text("Review before promotion")).to_be_visible()
            expect(
                dialog.get_by_text(sheet[0]["prompt"][:30]).first
            ).to_be_visible()  # the side-by-side sheet
            for i, choice in enumerate([challenger, champion]):
                control = dialog.locator(".p-select-button__control").nth(i)
                control.focus()
                page.keyboard.press("ArrowDown")  # opens the choice list
                page.locator(".p-select-option__text", has_text=re.compile(f"^{choice}$")).click()
                expect(control).to_have_text(choice)
            approve = dialog.locator(".p-toggle__control").first
            approve.click()
            expect(approve).to_have_attribute("aria-checked", "true")
            dialog.locator("textarea").fill("answered in the browser")
            page.screenshot(path=str(SHOTS / "prefect-review-form.png"), full_page=True)
            dialog.get_by_role("button", name="Submit").click()
            browser.close()
        assert rnd.wait(timeout=600) == 0, round_log.read_text()[-3000:]
    finally:
        for proc in (rnd, server):
            if proc is not None:
                stop_group(proc)
    summary = json.loads((work / "last_summary.json").read_text())
    review = summary["promotion"]["review"]
    assert (
        review["status"] == "answered" and review["approve"] and review["note"] == "answered in the browser"
    )
    assert (review["wins"], review["ties"], review["losses"]) == (1, 0, 1)
    assert summary["promotion"]["promoted"]
    assert json.loads(next((work / "reviews").glob("*.review.json")).read_text())["approve"] is True
