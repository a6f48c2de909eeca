"""What `pytest m6_prefix` checks beyond the files beside this one: every behaviour the engine keeps, HF parity included
(written once in tests/kept/ and run here for this engine)."""

from tests.kept.batching import *  # noqa: F403
from tests.kept.chunked import *  # noqa: F403
from tests.kept.cli import *  # noqa: F403
from tests.kept.every import *  # noqa: F403
from tests.kept.flash import *  # noqa: F403
from tests.kept.long_context import *  # noqa: F403
from tests.kept.paged import *  # noqa: F403
from tests.kept.prefix import *  # noqa: F403

ENGINE = "m6_prefix"
