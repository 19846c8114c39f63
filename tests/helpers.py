"""Shared test helpers: the repository root, and where the team's `../shared/` folder lives."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The team's reference files live beside the repository (`../shared/`); CI lays a copy
# there. A user's clone does not have it, so tests that need it skip with a reason.
SHARED = Path(os.environ.get('BIGGAN_SHARED', ROOT.parent / 'shared'))


def shared_file(relpath: str) -> Path:
    """Path of a file under ../shared/, or skip the test saying what is missing."""
    path = SHARED / relpath
    if not path.exists():
        pytest.skip(f'reference file {path} is absent (it lives in the team\'s shared/ folder '
                    f'beside the repository; set BIGGAN_SHARED to point elsewhere)')
    return path
