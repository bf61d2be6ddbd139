"""The ``it0`` command.

Data commands (tenant, user, apikey, audit) work directly against the configured database
(``IT0_DATA_DIR`` / ``IT0_DATABASE_URL``), which is how a fresh install is bootstrapped and
administered on the machine that runs it. Given ``--url`` (or ``IT0_URL``) and an API key
(``--key`` / ``IT0_API_KEY``) they talk to a running server over its API instead.
``tasks``, ``approvals``, ``orders``, ``runbooks``, ``ask`` and ``chat`` act as a person, so
they always talk to a running server with that person's API key.
"""

from __future__ import annotations

import typer

from it0.bench import app as bench_app
from it0.cli.agent import ask, chat
from it0.cli.approvals import approvals_app
from it0.cli.audit import audit_app
from it0.cli.call import call
from it0.cli.inventory import clusters_app, servers_app
from it0.cli.orders import orders_app
from it0.cli.policy import app as policy_app
from it0.cli.runbooks import runbooks_app
from it0.cli.serve import migrate, serve
from it0.cli.tasks import tasks_app
from it0.cli.tenancy import apikey_app, tenant_app, user_app
from it0.cli.vault import credentials_app, vault_app

app = typer.Typer(help="IT0: AI-powered operations for server clusters.", no_args_is_help=True)
app.command()(serve)
app.command()(migrate)
app.command()(ask)
app.command()(chat)
app.command()(call)
app.add_typer(tenant_app, name="tenant")
app.add_typer(user_app, name="user")
app.add_typer(apikey_app, name="apikey")
app.add_typer(audit_app, name="audit")
app.add_typer(servers_app, name="servers")
app.add_typer(clusters_app, name="clusters")
app.add_typer(credentials_app, name="credentials")
app.add_typer(vault_app, name="vault")
app.add_typer(tasks_app, name="tasks")
app.add_typer(approvals_app, name="approvals")
app.add_typer(orders_app, name="orders")
app.add_typer(policy_app, name="policy")
app.add_typer(runbooks_app, name="runbooks")
app.add_typer(bench_app, name="bench")


def main() -> None:
    app()
