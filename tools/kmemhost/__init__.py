"""Host-side tools for kmem: board profiles, .mpy builds and test targets."""
from pathlib import Path

# tools/kmemhost/__init__.py -> repository root
ROOT = Path(__file__).resolve().parents[2]
