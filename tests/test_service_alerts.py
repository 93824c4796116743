"""The service's [[alerts]] tables become real sinks: a webhook receiver on loopback gets
the signed alert of a service that went down."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.service_helpers import ServiceProcess, receiver, run_cli, wait_for
from xnai_core.alerting import verify_signature
from xnai_core.service import ConfigError, load_config
from xnai_core.service.sinks import build_sinks

pytestmark = pytest.mark.slow

SECRET = "hook-hmac-secret-4242"


def config_text(hook: str, dead: str) -> str:
    return textwrap.dedent(
        f"""
        [monitor]
        check_interval = 0.3
        failure_threshold = 1

        [[services]]
        name = "down"
        type = "http"
        url = "{dead}"
        timeout = 1

        [[alerts]]
        type = "webhook"
        url = "{hook}/hook"
        secret_env = "XNAI_TEST_HOOK_SECRET"
        min_severity = "warning"
        """
    )


def test_a_webhook_sink_from_the_config_delivers_a_signed_alert(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/health"
    with receiver() as (hook, got):
        path = tmp_path / "s.toml"
        path.write_text(config_text(hook, dead))
        shown = run_cli("config", "check", str(path), env={"XNAI_TEST_HOOK_SECRET": SECRET})
        assert shown.code == 0, shown.err
        assert SECRET not in shown.out
        proc = ServiceProcess(path, env={"XNAI_TEST_HOOK_SECRET": SECRET}).start()
        try:
            assert wait_for(lambda: bool(got), 20), proc.log()
            first = got[0]
            assert first.path == "/hook"
            assert verify_signature(
                SECRET,
                first.body,
                first.headers.get("X-Xnai-Timestamp"),
                first.headers.get("X-Xnai-Signature"),
            )
            assert (
                verify_signature(
                    "wrong-secret",
                    first.body,
                    first.headers.get("X-Xnai-Timestamp"),
                    first.headers.get("X-Xnai-Signature"),
                )
                is False
            )
            assert "down" in json.dumps(json.loads(first.body))
        finally:
            proc.stop()
        assert SECRET not in proc.log()


def test_a_sink_that_refuses_its_options_names_the_table(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[[alerts]]\ntype = "slack"\nwebhook_url_env = "XNAI_TEST_SLACK_URL"\n')
    config = load_config(path, env={"XNAI_TEST_SLACK_URL": "not-a-url-secretpart"})
    with pytest.raises(ConfigError) as caught:
        build_sinks(config.alerts)
    assert str(caught.value).startswith("<config>: alerts[0]: ")
    assert "secretpart" not in str(caught.value)
