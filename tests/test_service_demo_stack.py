"""The README's main job: the demo stack and ``xnai-core serve`` watching it, started by one
command, a killed toy RAG API restarted by the service, and Ctrl-C stopping everything."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import SHARED_REDIS_URL, free_port
from tests.service_helpers import REPO, demo_stack, demo_stack_up, drop_shared_keys, wait_for

pytestmark = pytest.mark.slow


def test_the_main_job_watches_the_demo_stack_restarts_it_and_stops_on_ctrl_c(
    tmp_path: Path, key_prefix: str
) -> None:
    # examples/stack.toml as shipped, with this test's own key prefixes (the shared Redis
    # is not ours to write defaults into) and a quicker check interval.
    text = (REPO / "examples" / "stack.toml").read_text()
    text = text.replace('key_prefix = "xnai:cb:"', f'key_prefix = "{key_prefix}:cb:"')
    text = text.replace("check_interval = 5", "check_interval = 1")
    text += f'\n[recovery]\nkey_prefix = "{key_prefix}:recovery"\n'
    config = tmp_path / "stack.toml"
    config.write_text(text)
    stack_dir = tmp_path / "stack"
    env = {
        **os.environ,
        "XNAI_DEMO_STACK_DIR": str(stack_dir),
        "XNAI_CONTROL_TOKEN": "",
        "XNAI_REDIS_URL": SHARED_REDIS_URL,
    }
    port = free_port()
    up = demo_stack_up(port, config, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []

    def read() -> None:
        assert up.stdout is not None
        lines.extend(line.rstrip("\n") for line in up.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"

    def status(name: str) -> str | None:
        try:
            state = httpx.get(f"{url}/api/state", timeout=2).json()
        except httpx.HTTPError:
            return None
        return next((s["status"] for s in state.get("services", []) if s["name"] == name), None)

    try:
        assert wait_for(lambda: any(f"dashboard: {url}/" in line for line in lines), 60), lines
        assert wait_for(lambda: any("serving http://" in line for line in lines), 60), lines
        assert any("control token for the dashboard" in line for line in lines)
        assert wait_for(lambda: status("rag_api") == "healthy", 30), lines
        assert wait_for(lambda: status("chainlit_ui") == "healthy", 30), lines
        page = httpx.get(url + "/", timeout=5)
        assert page.status_code == 200

        demo_stack("kill", "rag_api", env=env)
        restarts = stack_dir / "rag_api.restarts"
        assert wait_for(restarts.exists, 60), "\n".join(lines)
        assert wait_for(lambda: status("rag_api") == "healthy", 30), "\n".join(lines)

        pids = [int((stack_dir / f"{name}.pid").read_text()) for name in ("rag_api", "chainlit_ui")]
        up.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert up.wait(timeout=20) == 0, "\n".join(lines)
        reader.join(timeout=5)
        assert any("demo stack stopped" in line for line in lines)

        def all_gone() -> bool:
            alive = 0
            for pid in pids:
                try:
                    os.kill(pid, 0)
                    alive += 1
                except ProcessLookupError:
                    pass
            return alive == 0

        assert wait_for(all_gone, 10)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/", timeout=2)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(timeout=10)
        reader.join(timeout=5)
        if up.stdout is not None:
            up.stdout.close()
        for name in ("rag_api", "chainlit_ui"):
            demo_stack("kill", name, env=env, check=False)
        drop_shared_keys(key_prefix)
