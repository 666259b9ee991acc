"""A real RTSP server for the camera tests: GStreamer's gst-rtsp-server through PyGObject.

Run with Debian's system python (``/usr/bin/python3``, which has ``python3-gi``)::

    /usr/bin/python3 rtsp_server.py '{"port": 0, "mounts": [{"path": "/tone", "launch": "..."}]}'

Each mount is a media factory built from a gst-launch description whose payloader is named
``pay0``; ``user``/``password`` on a mount make the server require HTTP Basic authentication
(for all of its mounts, so tests run a separate server for those). Every
client gets its own pipeline (not shared), so a recording starts from its beginning for each
connection; ``"shared": true`` on a mount serves every client from one pipeline (benchmarks
with many clients). The server prints ``READY <port>`` once listening and
``PLAYING <path> <unix time>`` whenever a media pipeline reaches PLAYING (the UTC of the
recording's first sample, for the tests' expected event times). It runs until killed.
"""

import json
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402 - after gi.require_version


def main() -> None:
    cfg = json.loads(sys.argv[1])
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(cfg.get("port", 0)))
    mounts = server.get_mount_points()
    auth = None
    if any(m.get("user") for m in cfg["mounts"]):
        # a server with any user requires Basic authentication for all of its mounts
        auth = GstRtspServer.RTSPAuth()
        server.set_auth(auth)
    for m in cfg["mounts"]:
        f = GstRtspServer.RTSPMediaFactory()
        f.set_launch(f"( {m['launch']} )")
        f.set_shared(bool(m.get("shared", False)))  # shared: one pipeline for all clients
        f.set_eos_shutdown(False)
        path = m["path"]

        def on_configure(_factory, media, path=path):
            def on_state(_media, state, path=path):
                if state == Gst.State.PLAYING:
                    print(f"PLAYING {path} {time.time():.6f}", flush=True)
            media.connect("new-state", on_state)

        f.connect("media-configure", on_configure)
        if auth is not None:
            token = GstRtspServer.RTSPToken()
            token.set_string("media.factory.role", m["user"])
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(m["user"], m["password"]), token)
            f.add_role_from_structure(Gst.Structure.new_from_string(
                f"{m['user']}, media.factory.access=(boolean)true, "
                "media.factory.construct=(boolean)true"))
        mounts.add_factory(path, f)
    if server.attach(None) == 0:
        print("ERROR cannot attach", flush=True)
        sys.exit(1)
    print(f"READY {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
