"""Where things live: the repository root and the folders the harness reads and writes by default."""

from pathlib import Path

HARNESS_DIR = Path(__file__).resolve().parent
REPO_ROOT = HARNESS_DIR.parent
DATASETS_DIR = REPO_ROOT / "datasets"  # data cards (committed) and their builds (ignored by git)
CACHE_DIR = REPO_ROOT / ".cache"  # built models and other rebuildable things (ignored by git)
ASSETS_DIR = HARNESS_DIR / "assets"  # committed checkpoints
SUITES_DIR = HARNESS_DIR / "suites"
