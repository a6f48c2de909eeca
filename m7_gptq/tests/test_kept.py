"""What `pytest m7_gptq` checks beyond the files beside this one: every behaviour the engine keeps, HF parity included
(written once in tests/kept/ and run here for this engine, on the full-precision bundled model).

m7 carries m6's attention, backends, kernel and CLI files unchanged (test_engine.py checks that they are
byte-identical but for the package name), so the kept tests of those files (tests/kept/flash.py, cli.py,
long_context.py) run for m6 and are not repeated here. What m7 changed, the engine, runs all the others.
"""

from tests.kept.batching import *  # noqa: F403
from tests.kept.chunked import *  # noqa: F403
from tests.kept.every import *  # noqa: F403
from tests.kept.paged import *  # noqa: F403
from tests.kept.prefix import *  # noqa: F403

ENGINE = "m7_gptq"
