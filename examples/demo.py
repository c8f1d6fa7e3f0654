"""`make demo`: the whole story on this machine, by hand, in your own browser.

Starts the Entra-like OpenID Provider of the e2e tier, the broker (embedded SQLite under
var/demo) and the example frontend; seeds a company, its administrator, an enabled Entra
provider and three users; prints the URL to open. Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.op_process import OpenIDProvider, node_available  # noqa: E402
from tests.e2e.stack import TENANT_ID, Broker, free_port, seed, start_frontend, stop  # noqa: E402

BROKER_PORT = int(os.environ.get("DEMO_BROKER_PORT", "8000"))
FRONTEND_PORT = int(os.environ.get("DEMO_FRONTEND_PORT", "3000"))


def main() -> int:
    if not node_available():
        print(
            "make demo needs Node.js and `npm ci` in tests/e2e/op (make e2e-deps)", file=sys.stderr
        )
        return 1
    workdir = REPO / "var" / "demo"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    op = OpenIDProvider(workdir / "op", TENANT_ID, port=free_port())
    op.start()
    broker_url = f"http://127.0.0.1:{BROKER_PORT}"
    frontend_url = f"http://127.0.0.1:{FRONTEND_PORT}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("SSO_BROKER_")}
    env.update(
        {
            "SSO_BROKER_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/sso-broker.db",
            "SSO_BROKER_PUBLIC_URL": broker_url,
            "SSO_BROKER_FRONTEND_URL": frontend_url,
            "SSO_BROKER_ENTRA_AUTHORITY": op.authority,
        }
    )
    broker = Broker(env, BROKER_PORT, workdir / "broker.log")
    frontend = None
    try:
        broker.start()
        seeded = seed(broker, op, "Contoso demo")
        frontend = start_frontend(
            FRONTEND_PORT, broker_url, workdir / "frontend.log", seeded.provider["id"]
        )
        accounts = ", ".join(
            f"{login} ({'associated' if login != 'outsider' else 'not associated'})"
            for login in op.ACCOUNTS
        )
        print(
            f"""
sso-broker demo is running.

  Open {frontend_url}/ and click "Sign in with SSO"
  (or open {seeded.provider["urls"]["initiate_sign_in_url"]} directly, as Entra's
  My Apps tile does: the broker sends the browser through {frontend_url}/sso/start,
  which makes the PKCE challenge the login code is bound to).

  At the identity provider sign in as one of: {accounts}; any password.
  Administrator token (for curl against {broker_url}/api/v1/...):
    {seeded.admin_token}

  Logs: {workdir}/broker.log, {workdir}/op/op.log. Ctrl-C stops everything.
""",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        if frontend is not None:
            stop(frontend)
        broker.stop()
        op.stop()


if __name__ == "__main__":
    sys.exit(main())
