from __future__ import annotations

from relay.cli import main

raise SystemExit(main())
