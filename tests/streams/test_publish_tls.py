"""`publish-audio --config` against a real mosquitto TLS listener (certificates made here)."""

from __future__ import annotations

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from edge.cli import cli
from tests.alerts.helpers import Recorder
from tests.mqtt_broker import Mosquitto, make_pki


def test_publish_audio_takes_tls_from_the_config_and_names_a_missing_client_cert(tmp_path):
    """`--config` took host, port and credentials but not `tls`: against the daemon's TLS
    broker publish-audio spoke plain MQTT and said "refused the connection (anonymous; give
    --username and the password): Unspecified error" - neither the cause nor the fix."""
    pki = make_pki(tmp_path / "pki")
    b = Mosquitto(tmp_path, tls=pki, require_client_cert=True).start()
    rec = tmp_path / "r.wav"
    sf.write(rec, np.zeros(16000 * 3, np.float32), 16000, subtype="PCM_16")
    sub = Recorder(b, ["fe/audio/#"], tls=pki)
    try:
        def config(name: str, client_cert: bool) -> str:
            tls = f"{{enabled: true, ca_file: '{pki.ca_cert}'"
            if client_cert:
                tls += f", cert_file: '{pki.client_cert}', key_file: '{pki.client_key}'"
            p = tmp_path / name
            p.write_text(f"mqtt: {{host: localhost, port: {b.port}, topic_prefix: fe, tls: {tls}}}}}\n"
                         "streams: [{id: press, source: mqtt}]\n")
            return str(p)

        args = ["publish-audio", str(rec), "--stream", "press", "--speed", "0"]
        res = CliRunner().invoke(cli, [*args, "--config", config("no-cert.yaml", False)])
        assert res.exit_code == 1, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and "requires a client certificate" in lines[0], res.output
        assert "tls.cert_file" in lines[0] and "tls.key_file" in lines[0]
        assert "anonymous" not in lines[0] and "(0 frames published to fe/audio/press)" in lines[0]

        res = CliRunner().invoke(cli, [*args, "--config", config("cert.yaml", True), "--qos", "1"])
        assert res.exit_code == 0, res.output
        assert "published 30 frames to fe/audio/press" in res.output
        assert sub.wait_for(lambda: len(sub.on("fe/audio/press")) == 30, 10)
    finally:
        sub.close()
        b.stop()
