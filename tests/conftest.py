import sys
from pathlib import Path

# run from a source checkout without installing, too
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import os  # noqa: E402
import tempfile  # noqa: E402

# the CPU peak cache (nanotune.results.cpu_peak) goes to a throwaway folder, never the user's ~/.cache
os.environ.setdefault("NANOTUNE_CACHE", tempfile.mkdtemp(prefix="nanotune-cache-"))
