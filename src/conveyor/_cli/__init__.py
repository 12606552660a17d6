"""The ``conveyor`` command line (``conveyor --help``; docs/cli.md).

Commands live beside what they do: ``_admin`` (queues and jobs), ``_worker_command`` (a worker
stopped by signals), ``_demo``; ``_app`` holds the group, the shared options and the error
lines; ``_output`` the JSON shapes and tables.
"""

from . import _admin as _admin
from . import _demo as _demo
from . import _worker_command as _worker_command
from ._app import cli as cli
from ._app import main as main
