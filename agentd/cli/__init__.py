"""The `agentd` command line (DESIGN section 11), one module per command group.

Exit codes: 0 ok, 1 check failed / not found, 2 usage or bad input, 3 daemon unreachable.
Read-only commands read SQLite directly, so they work while the daemon is stopped.
Heavy runtimes (onnxruntime, cel, rich) are imported only by the commands that use them.
"""

from __future__ import annotations

from agentd.cli import _common, audit, decisions, fleet, labels, models, node, ops, quality, report, tools
from agentd.cli._common import main

ops.register(main, _common)
report.register(main, _common)
quality.register(main, _common)

__all__ = ["audit", "decisions", "fleet", "labels", "main", "models", "node", "tools"]

if __name__ == "__main__":
    main()
