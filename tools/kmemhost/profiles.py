"""Board profiles: boards/<name>.json describes a board (or the unix port emulating one)."""
import json
import re

from . import ROOT

BOARDS_DIR = ROOT / "boards"
REQUIRED_KEYS = ("name", "board_id", "mpy_arch", "heap_size", "arena_size", "usb_vid_pid", "flash")


class ProfileError(LookupError):
    pass


def list_profiles():
    return sorted(p.stem for p in BOARDS_DIR.glob("*.json"))


def load_profile(name):
    """Return the profile dict for `name`; ProfileError if unknown or incomplete."""
    path = BOARDS_DIR / f"{name}.json"
    # The name regex keeps "../x" and friends from escaping boards/.
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name or "") or not path.is_file():
        raise ProfileError(
            f"unknown board profile {name!r}; available: {', '.join(list_profiles())}")
    profile = json.loads(path.read_text())
    missing = [k for k in REQUIRED_KEYS if k not in profile]
    if missing:
        raise ProfileError(f"{path}: missing keys {', '.join(missing)}")
    if profile["name"] != name:
        raise ProfileError(f"{path}: name is {profile['name']!r}, expected {name!r}")
    return profile
